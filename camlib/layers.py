"""Finding the layer to explain: by dotted name, by module object, or automatically.

The automatic choice runs one probe forward pass on (the first image of) the real
input, so it works for any input shape: 1x28x28 digits as well as 3x224x224 photos.
"""

from __future__ import annotations

import difflib
import logging
import re
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import LayerError

logger = logging.getLogger("camlib")

LayerSpec = str | nn.Module | None
"""What users may pass as ``target_layer``: a dotted name, a module, or ``"auto"``/``None``."""

_INDEX = re.compile(r"\[(-?\d+)\]")


def _normalise_name(name: str) -> str:
    """Accept ``features[28]`` and ``layer4[1].conv2`` as well as the dotted form."""
    return _INDEX.sub(r".\1", name.strip()).strip(".")


def layer_name(model: nn.Module, layer: nn.Module) -> str:
    """The dotted name of ``layer`` inside ``model`` (``""`` for the model itself)."""
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise LayerError(
        f"the module {type(layer).__name__} passed as target_layer is not part of the model "
        f"{type(model).__name__}; pass one of its submodules or a name such as "
        f"{_example_names(model)}"
    )


def _example_names(model: nn.Module, k: int = 3) -> str:
    names = [n for n, _ in model.named_children()][:k]
    return ", ".join(repr(n) for n in names) or "'<model has no submodules>'"


def resolve_layer(
    model: nn.Module, layer: str | nn.Module, *, what: str = "target_layer"
) -> nn.Module:
    """Return the submodule of ``model`` named by ``layer``.

    Args:
        model: the network.
        layer: a dotted path as listed by ``model.named_modules()`` (``"layer4.1.conv2"``,
            ``"features.28"``; ``"features[28]"`` is accepted too) or a module of ``model``.
        what: the argument being resolved, for error messages (``"fc_layer"`` for CAM).

    Raises:
        LayerError: the name does not exist (the message suggests the closest real names
            and lists the model's top-level children), the module is not in ``model``, or
            it is ``model`` itself.
    """
    if isinstance(layer, nn.Module):
        if layer is model:
            raise LayerError(
                f"{what} is the model itself; pass one of its layers, e.g. "
                f"{_example_names(model)}, or 'auto'"
            )
        layer_name(model, layer)  # raises if foreign
        return layer
    if not isinstance(layer, str):
        raise LayerError(
            f"{what} must be a layer name (str), an nn.Module of the model, or 'auto'; "
            f"got {type(layer).__name__}"
        )
    name = _normalise_name(layer)
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    children = [f"{n} ({type(m).__name__})" for n, m in model.named_children()]
    hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
    raise LayerError(
        f"{what}: no layer named {layer!r} in {type(model).__name__}.{hint} "
        f"Top-level children: {', '.join(children) or '(none)'}. "
        f"Use dotted names from model.named_modules(), e.g. 'layer4.1.conv2' or 'features.28'."
    )


@dataclass
class _Call:
    name: str
    order: int
    spatial: bool
    tokens: bool  # an (N, L, D) output with L > 1: a transformer stage
    passthrough: bool  # returns its input (Identity, eval Dropout) or only resamples it


@dataclass
class LayerProbe:
    """What one probe forward pass saw: modules in completion order and how often each ran."""

    calls: list[_Call] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def _is_spatial(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[2] * t.shape[3] > 1


def probe_layers(model: nn.Module, inputs: torch.Tensor) -> LayerProbe:
    """Run one no-grad forward on ``inputs`` recording every module's output, in order."""
    probe = LayerProbe()

    versions: dict[str, list[int]] = {}

    def pre_hook(name: str):
        def remember(module: nn.Module, args: tuple) -> None:
            first = args[0] if args else None
            version = first._version if isinstance(first, torch.Tensor) else -1
            versions.setdefault(name, []).append(version)

        return remember

    def hook(name: str):
        def record(module: nn.Module, args: tuple, output: object) -> None:
            probe.counts[name] = probe.counts.get(name, 0) + 1
            first = args[0] if args else None
            version = versions[name].pop()
            # Identity / eval Dropout hand back their input untouched (an in-place ReLU
            # hands it back modified: its version moved, so it is a real layer).
            untouched = (
                output is first and isinstance(first, torch.Tensor) and first._version == version
            )
            # A head's adaptive pool only resamples the previous map (VGG's 7x7 pool).
            resample = isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))
            probe.calls.append(
                _Call(
                    name,
                    len(probe.calls),
                    _is_spatial(output),
                    isinstance(output, torch.Tensor) and output.dim() == 3 and output.shape[1] > 1,
                    untouched or resample,
                )
            )

        return record

    named = [(n, m) for n, m in model.named_modules() if n]
    # A model in training mode updates its BatchNorm statistics on every forward: the
    # probe puts every buffer back, so only the explained call itself counts.
    saved = [(b, b.clone()) for b in model.buffers()] if model.training else []
    handles = [m.register_forward_pre_hook(pre_hook(n)) for n, m in named]
    handles += [m.register_forward_hook(hook(n)) for n, m in named]
    try:
        with torch.inference_mode(False), torch.no_grad():
            model(inputs.clone() if inputs.is_inference() else inputs)
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
    return probe


def find_target_layer(model: nn.Module, inputs: torch.Tensor, *, stacklevel: int = 1) -> str:
    """Name of the layer ``"auto"`` picks for ``inputs``.

    The last module, in execution order, whose output is an (N, C, h, w) tensor with
    h*w > 1, skipping modules that run more than once per forward and modules that
    only pass their input through or resample it (``Identity``, eval-mode ``Dropout``,
    adaptive pooling). A container that returns its last child's tensor completes
    after that child, so the container is chosen (``layer4`` on ResNets).

    Warns (``UserWarning``) when later spatial layers were passed over because they run
    more than once, or when a token stage (N, L, D) follows the chosen layer.
    ``stacklevel`` is where those warnings point, as in ``warnings.warn``: 1 is the
    caller of this function.
    """
    # One image is enough in eval mode; in training mode BatchNorm needs the real batch.
    probe = probe_layers(model, inputs if model.training else inputs[:1])
    for i in range(len(probe.calls) - 1, -1, -1):
        call = probe.calls[i]
        if call.spatial and not call.passthrough and probe.counts[call.name] == 1:
            _warn_if_doubtful(model, probe, i, stacklevel + 2)
            return call.name
    raise LayerError(
        f"could not find a layer of {type(model).__name__} with an (N, C, h, w) output and "
        f"h*w > 1 for inputs of shape {tuple(inputs.shape)}; name the layer explicitly "
        f"(top-level children: {_example_names(model, 10)})"
    )


def _warn_if_doubtful(model: nn.Module, probe: LayerProbe, chosen: int, stacklevel: int) -> None:
    """Warn when ``"auto"`` had to pass over later layers, or the model goes on with tokens."""
    name = probe.calls[chosen].name
    later = probe.calls[chosen + 1 :]
    reused = sorted(
        {c.name for c in later if c.spatial and not c.passthrough and probe.counts[c.name] > 1}
    )
    if reused:
        warnings.warn(
            f"target_layer='auto' picked {name!r} for {type(model).__name__}, passing over later "
            f"spatial layers that run more than once per forward ({', '.join(map(repr, reused))}); "
            f"their calls cannot be told apart. Name the layer to explain if {name!r} is not it.",
            stacklevel=stacklevel,
        )
    if any(c.tokens for c in later):
        warnings.warn(
            f"target_layer='auto' picked {name!r} for {type(model).__name__}, but later layers "
            f"return (N, L, D) token sequences (a transformer stage): the last spatial layer is "
            f"then an early one. Name the layer to explain and pass reshape_transform= to turn "
            f"its tokens into (N, C, h, w).",
            stacklevel=stacklevel,
        )
