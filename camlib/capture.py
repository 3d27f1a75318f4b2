"""One forward pass with the hooks an explanation needs, and nothing left behind.

:func:`run_forward` is the only place camlib registers hooks. It captures the target
layer's true output, decides how much autograd graph to record, and removes its hook in
a ``finally`` block, so the model has exactly the hooks it had before on every exit path.

How much graph is recorded (``graph=``):

* ``"none"`` - everything under ``no_grad`` (CAM needs activations only).
* ``"from_layer"`` - ``no_grad`` up to the target layer; its output is re-entered as a
  fresh leaf and grad mode switched on for the rest of the pass. Grad-CAM then needs
  only the graph *after* the layer: no upstream activations are kept, so it costs about
  one inference pass in time and memory, and it works under ``torch.no_grad()`` and
  with frozen weights.
* ``"from_input"`` - the full graph from a leaf copy of the input (guided methods).

Downstream code always receives a *clone* of the captured activation, so an in-place
op after the layer (``ReLU(inplace=True)``, ``out += identity``) cannot corrupt it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .errors import LayerError
from .guided_relu import GuidedReLUMode, GuideSwitch
from .targets import Targets, select_scores

Graph = Literal["none", "from_layer", "from_input"]


@dataclass
class Capture:
    """What one forward pass produced."""

    inputs: torch.Tensor
    """The input the model saw (a leaf requiring grad when ``graph="from_input"``)."""
    activation: torch.Tensor | None
    """The target layer's output, exactly as the layer returned it."""
    output: object
    """The model's output."""
    scores: torch.Tensor
    """(N,) scores being explained."""
    classes: torch.Tensor | None
    """(N,) class indices, or ``None`` for a callable target."""


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def run_forward(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: Targets,
    *,
    layer: nn.Module | None = None,
    layer_name: str = "",
    graph: Graph = "from_layer",
    guide: GuideSwitch | None = None,
) -> Capture:
    """Run ``model(inputs)`` once, capturing ``layer``'s output and the target scores.

    Args:
        model: the network (never modified).
        inputs: (N, ...) batch on the model's device.
        targets: see :mod:`camlib.targets`.
        layer: module whose output to capture, or ``None``.
        layer_name: its name, for error messages.
        graph: how much autograd graph to record (module docstring).
        guide: when given, every ReLU records a guided node controlled by this switch.
    """
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, output: object) -> object:
        if captured:
            raise LayerError(
                f"target layer {layer_name!r} ran more than once in one forward pass (a module "
                f"reused in forward, such as a shared ReLU); its calls would be mixed. Choose a "
                f"layer that runs once, e.g. the block that contains it."
            )
        if not isinstance(output, torch.Tensor):
            raise LayerError(
                f"target layer {layer_name!r} returned {_describe(output)}; camlib needs a "
                f"single (N, C, h, w) tensor. Choose another layer."
            )
        if graph == "from_layer":
            leaf = output.detach().requires_grad_(True)
            captured.append(leaf)
            torch.set_grad_enabled(True)  # record the graph from here on; restored below
            return leaf.clone()
        captured.append(output)
        return output.clone()

    grad_before = torch.is_grad_enabled()
    handle = layer.register_forward_hook(hook) if layer is not None else None
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode(False))
            fed = inputs
            if graph == "from_input":
                stack.enter_context(torch.enable_grad())
                inputs = inputs.detach().requires_grad_(True)
                fed = inputs.clone()  # a model may modify its input in place; a leaf cannot be
            else:
                stack.enter_context(torch.no_grad())
            if guide is not None:
                stack.enter_context(GuidedReLUMode(guide))
            output = model(fed)
            if layer is not None and not captured:
                raise LayerError(
                    f"target layer {layer_name!r} did not run during the forward pass; choose "
                    f"a layer that the model's forward calls"
                )
            with torch.set_grad_enabled(graph != "none"):
                scores, classes = select_scores(output, targets, inputs.shape[0])
    finally:
        if handle is not None:
            handle.remove()
        torch.set_grad_enabled(grad_before)
    return Capture(inputs, captured[0] if captured else None, output, scores, classes)
