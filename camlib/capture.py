"""One forward pass with the hooks an explanation needs, and nothing left behind.

:func:`run_forward` is the only place camlib registers hooks for an explanation. It
captures the target layers' true outputs (or inputs), decides how much autograd graph to
record, and removes its hooks in a ``finally`` block, so the model has exactly the hooks
it had before on every exit path. A hook acts only on the thread that registered it:
several threads may explain one shared model at once.

How much graph is recorded (``graph=``):

* ``"none"`` - everything under ``no_grad`` (CAM, Eigen-CAM, the perturbation methods).
* ``"from_layer"`` - ``no_grad`` up to the first target layer; its output is re-entered
  as a fresh leaf and grad mode switched on for the rest of the pass. Gradient methods
  then need only the graph *after* the layer: no upstream activations are kept, so a call
  costs about one inference pass in time and memory, and it works under
  ``torch.no_grad()`` and with frozen weights. A later target layer that depends on an
  earlier one stays a node of the graph, so one ``autograd.grad`` serves all of them.
* ``"from_input"`` - the full graph from a leaf copy of the input (guided methods).
* ``"full"`` - the full graph from the caller's own input, with the model's parameters,
  under grad mode (``differentiable=True`` calls of gradient methods). The captured
  outputs stay nodes of that graph, so a map computed from them (with
  ``create_graph=True`` for its gradient) carries gradient back to every parameter and to
  the input. A target layer whose output needs no gradient (nothing before it requires
  grad) is re-entered as a fresh leaf, as for ``"from_layer"``.

Downstream code always receives a *clone* of the captured tensor, so an in-place op after
the layer (``ReLU(inplace=True)``, ``out += identity``) cannot corrupt it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .errors import LayerError
from .guided_relu import GuidedReLUMode, GuideSwitch
from .layers import LayerRef
from .targets import Targets, select_scores

Graph = Literal["none", "from_layer", "from_input", "full"]
Edit = Callable[[int, torch.Tensor], torch.Tensor]
"""``edit(i, tensor) -> tensor`` replaces what target layer ``i`` hands on (Ablation-CAM)."""


@dataclass
class Capture:
    """What one forward pass produced."""

    inputs: torch.Tensor
    """The input the model saw (a leaf requiring grad when ``graph="from_input"``)."""
    activations: list[torch.Tensor]
    """Each target layer's output (or input), exactly as the layer returned (received) it."""
    output: object
    """The model's output."""
    scores: torch.Tensor | None
    """(N,) scores being explained (``None`` when no targets were selected)."""
    classes: torch.Tensor | None
    """(N,) class indices, or ``None`` for a callable target."""

    @property
    def activation(self) -> torch.Tensor:
        """The first target layer's tensor (the only one for a single layer)."""
        return self.activations[0]


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


class _Hooks:
    """The hooks of one forward pass: one per target layer, this thread only."""

    def __init__(self, refs: Sequence[LayerRef], graph: Graph, edit: Edit | None) -> None:
        self.refs, self.graph, self.edit = list(refs), graph, edit
        self.owner = threading.get_ident()
        self.calls = [0] * len(self.refs)
        self.captured: list[torch.Tensor | None] = [None] * len(self.refs)
        self.handles: list = []

    def install(self) -> None:
        for i, ref in enumerate(self.refs):
            if ref.input:
                self.handles.append(ref.module.register_forward_pre_hook(self._pre(i)))
            else:
                self.handles.append(ref.module.register_forward_hook(self._post(i)))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _pre(self, i: int):
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            if threading.get_ident() != self.owner or not args:
                return None
            new = self._take(i, args[0], "received")
            return None if new is None else (new, *args[1:])

        return hook

    def _post(self, i: int):
        def hook(module: nn.Module, args: tuple, output: object) -> object:
            if threading.get_ident() != self.owner:
                return None
            return self._take(i, output, "returned")

        return hook

    def _take(self, i: int, value: object, verb: str) -> torch.Tensor | None:
        ref, call = self.refs[i], self.calls[i]
        self.calls[i] += 1
        wanted = ref.call if ref.call is not None else 0
        if ref.call is None and call == 1:
            raise LayerError(
                f"target layer {ref.spec!r} ran more than once in one forward pass (a module "
                f"reused in forward, such as a shared activation); its calls would be mixed. "
                f"Name one call: '{ref.name}@-1' for the last, '{ref.name}@0' for the first."
            )
        if call != wanted:
            return None
        if not isinstance(value, torch.Tensor):
            raise LayerError(
                f"target layer {ref.spec!r} {verb} {_describe(value)}; camlib needs a single "
                f"tensor such as (N, C, h, w). Choose another layer."
            )
        if self.graph in ("from_layer", "full") and not (
            torch.is_grad_enabled() and value.requires_grad
        ):
            # from_layer: the first target layer (or one that does not depend on an earlier
            # one); full: a layer with nothing before it that requires grad
            value = value.detach().requires_grad_(True)
            torch.set_grad_enabled(True)  # record the graph from here on; restored after
        self.captured[i] = value
        if self.edit is not None:
            return self.edit(i, value)
        return value.clone()

    def check_all_ran(self) -> None:
        for ref, got, calls in zip(self.refs, self.captured, self.calls, strict=True):
            if got is None:
                detail = (
                    "did not run during the forward pass"
                    if calls == 0
                    else f"ran {calls} time(s), so call {ref.call} does not exist"
                )
                raise LayerError(
                    f"target layer {ref.spec!r} {detail}; choose a layer that the model's "
                    f"forward calls"
                )


_NO_OP = contextlib.nullcontext()


def outside_inference_mode() -> contextlib.AbstractContextManager:
    """``torch.inference_mode(False)`` when inference mode is on, else a shared no-op."""
    return torch.inference_mode(False) if torch.is_inference_mode_enabled() else _NO_OP


def run_forward(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: Targets,
    *,
    layers: Sequence[LayerRef] = (),
    graph: Graph = "from_layer",
    guide: GuideSwitch | None = None,
    forward_args: tuple = (),
    edit: Edit | None = None,
    select: bool = True,
) -> Capture:
    """Run ``model(inputs, *forward_args)`` once, capturing ``layers`` and the target scores.

    Args:
        model: the network (never modified).
        inputs: (N, ...) batch on the model's device.
        targets: what :func:`camlib.targets.check_targets` returned.
        layers: where to capture (see :class:`camlib.layers.LayerRef`).
        graph: how much autograd graph to record (module docstring).
        guide: when given, every ReLU records a guided node controlled by this switch.
        forward_args: further positional arguments of the model's forward.
        edit: replaces what each target layer hands on (default: a clone of it).
        select: compute the (N,) scores of ``targets`` (else ``scores`` is ``None``).
    """
    hooks = _Hooks(layers, graph, edit)
    grad_before = torch.is_grad_enabled()
    try:
        hooks.install()
        # Grad mode is set by plain calls (restored in `finally`), and inference mode is left
        # only when it is on: a context manager per switch costs more than a small kernel.
        with outside_inference_mode(), _NO_OP if guide is None else GuidedReLUMode(guide):
            fed = inputs
            if graph == "from_input":
                torch.set_grad_enabled(True)
                inputs = inputs.detach().requires_grad_(True)
                fed = inputs.clone()  # a model may modify its input in place; a leaf cannot be
            else:
                torch.set_grad_enabled(graph == "full")
            output = model(fed, *forward_args)
            hooks.check_all_ran()
            scores = classes = None
            if select:
                torch.set_grad_enabled(graph != "none")
                scores, classes = select_scores(output, targets, inputs.shape[0])
    finally:
        hooks.remove()
        torch.set_grad_enabled(grad_before)
    return Capture(inputs, hooks.captured, output, scores, classes)  # type: ignore[arg-type]
