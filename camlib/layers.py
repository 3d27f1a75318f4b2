"""Finding the layer to explain: by dotted name, by module object, or automatically.

A layer is named as in ``model.named_modules()`` (``"layer4.1.conv2"``, ``"features.28"``;
``"features[28]"`` and negative indices such as ``"blocks[-1]"`` work too), and two
suffixes reach what a plain name cannot:

* ``"name@K"`` - the K-th call of a module that runs several times per forward (a shared
  activation); ``@-1`` is its last call, ``@0`` its first.
* ``"name:input"`` - the tensor the module receives instead of the one it returns
  (Captum's ``attribute_to_layer_input``), e.g. ``"blocks.11.norm1:input"``.

They combine: ``"act@-1:input"``. The automatic choice runs one probe forward pass on
(the first image of) the real input, so it works for any input shape.
"""

from __future__ import annotations

import difflib
import re
import threading
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import LayerError, warn

LayerSpec = str | nn.Module | None
"""What users may pass as ``target_layer``: a dotted name, a module, or ``"auto"``/``None``."""

_INDEX = re.compile(r"\[(-?\d+)\]")
_SUFFIX = re.compile(r"^(?P<name>.*?)(?:@(?P<call>-?\d+))?(?::(?P<input>input))?$")


@dataclass(frozen=True)
class LayerRef:
    """One place in the forward pass to capture: a module, which call, output or input."""

    module: nn.Module
    name: str
    """The module's dotted name."""
    call: int | None = None
    """Which call of the module (Python indexing; ``None``: it must run exactly once)."""
    input: bool = False
    """Capture the module's first input instead of its output."""

    @property
    def spec(self) -> str:
        """The full name, with its ``@call`` and ``:input`` suffixes."""
        call = "" if self.call is None else f"@{self.call}"
        return f"{self.name}{call}{':input' if self.input else ''}"


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


def _walk(model: nn.Module, name: str) -> tuple[nn.Module, str] | None:
    """Follow a dotted path, with negative indices into containers; ``None`` if absent."""
    module, parts = model, []
    for part in name.split("."):
        children = dict(module.named_children())
        if part in children:
            module = children[part]
        elif part.lstrip("-").isdigit() and part.startswith("-") and children:
            keys = list(children)
            index = int(part)
            if -index > len(keys):
                return None
            part = keys[index]
            module = children[part]
        else:
            return None
        parts.append(part)
    return module, ".".join(parts)


def resolve_layer(
    model: nn.Module, layer: str | nn.Module, *, what: str = "target_layer"
) -> nn.Module:
    """Return the submodule of ``model`` named by ``layer`` (suffixes are ignored here).

    Args:
        model: the network.
        layer: a dotted path as listed by ``model.named_modules()`` (``"layer4.1.conv2"``,
            ``"features.28"``; ``"features[28]"`` and ``"blocks[-1]"`` are accepted too) or
            a module of ``model``.
        what: the argument being resolved, for error messages (``"fc_layer"`` for CAM).

    Raises:
        LayerError: the name does not exist (the message suggests the closest real names
            and lists the model's top-level children), the module is not in ``model``, or
            it is ``model`` itself.
    """
    return parse_layer(model, layer, what=what).module


def parse_layer(
    model: nn.Module, layer: str | nn.Module, *, what: str = "target_layer"
) -> LayerRef:
    """Resolve a layer spec (name with optional ``@call`` / ``:input``, or a module)."""
    if isinstance(layer, nn.Module):
        if layer is model:
            raise LayerError(
                f"{what} is the model itself; pass one of its layers, e.g. "
                f"{_example_names(model)}, or 'auto'"
            )
        return LayerRef(layer, layer_name(model, layer))  # raises if foreign
    if not isinstance(layer, str):
        raise LayerError(
            f"{what} must be a layer name (str), an nn.Module of the model, or 'auto'; "
            f"got {type(layer).__name__}"
        )
    match = _SUFFIX.match(layer.strip())
    assert match is not None  # the pattern matches every string
    name = _normalise_name(match["name"])
    found = _walk(model, name) if name else None
    if found is not None:
        call = None if match["call"] is None else int(match["call"])
        return LayerRef(found[0], found[1], call, match["input"] is not None)
    names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    children = [f"{n} ({type(m).__name__})" for n, m in model.named_children()]
    hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
    raise LayerError(
        f"{what}: no layer named {layer!r} in {type(model).__name__}.{hint} "
        f"Top-level children: {', '.join(children) or '(none)'}. "
        f"Use dotted names from model.named_modules(), e.g. 'layer4.1.conv2' or 'features.28' "
        f"('name@-1' for the last call of a reused module, 'name:input' for its input)."
    )


# -- the probe ---------------------------------------------------------------------------
@dataclass
class _Call:
    name: str
    order: int
    spatial: bool
    """A map with the input's rank, the input's batch size and more than one position."""
    tokens: bool  # an (N, L, D) output with L > 1: a transformer stage
    passthrough: bool  # returns its input (Identity, eval Dropout) or only resamples it
    shape: tuple[int, ...] | None = None
    """The output's shape (``None`` when it is not a tensor)."""
    kind: str = ""
    """The module's class name."""
    index: int = 0
    """Which call of this module it was (0 for the first)."""


@dataclass
class LayerProbe:
    """What one probe forward pass saw: modules in completion order and how often each ran."""

    calls: list[_Call] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def _is_spatial(t: object, rank: int, batch: int) -> bool:
    return (
        isinstance(t, torch.Tensor)
        and t.dim() == rank
        and t.shape[0] == batch
        and t.shape[2:].numel() > 1
    )


def probe_layers(model: nn.Module, inputs: torch.Tensor, forward_args: tuple = ()) -> LayerProbe:
    """Run one no-grad forward on ``inputs`` recording every module's output, in order.

    Only this thread's forward pass is recorded (other threads may share the model).
    """
    probe = LayerProbe()
    owner = threading.get_ident()
    versions: dict[str, list[int]] = {}
    rank, batch = inputs.dim(), inputs.shape[0]

    def pre_hook(name: str):
        def remember(module: nn.Module, args: tuple) -> None:
            if threading.get_ident() != owner:
                return
            first = args[0] if args else None
            version = first._version if isinstance(first, torch.Tensor) else -1
            versions.setdefault(name, []).append(version)

        return remember

    def hook(name: str):
        def record(module: nn.Module, args: tuple, output: object) -> None:
            if threading.get_ident() != owner:
                return
            index = probe.counts.get(name, 0)
            probe.counts[name] = index + 1
            first = args[0] if args else None
            version = versions[name].pop()
            # Identity / eval Dropout hand back their input untouched (an in-place ReLU
            # hands it back modified: its version moved, so it is a real layer).
            untouched = (
                output is first and isinstance(first, torch.Tensor) and first._version == version
            )
            # A head's adaptive pool only resamples the previous map (VGG's 7x7 pool).
            resample = isinstance(
                module,
                (
                    nn.AdaptiveAvgPool1d,
                    nn.AdaptiveAvgPool2d,
                    nn.AdaptiveAvgPool3d,
                    nn.AdaptiveMaxPool1d,
                    nn.AdaptiveMaxPool2d,
                    nn.AdaptiveMaxPool3d,
                ),
            )
            is_tensor = isinstance(output, torch.Tensor)
            probe.calls.append(
                _Call(
                    name,
                    len(probe.calls),
                    _is_spatial(output, rank, batch),
                    is_tensor
                    and rank == 4
                    and output.dim() == 3
                    and output.shape[0] == batch
                    and output.shape[1] > 1,
                    untouched or resample,
                    tuple(output.shape) if is_tensor else None,
                    type(module).__name__,
                    index,
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
            model(inputs.clone() if inputs.is_inference() else inputs, *forward_args)
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
    return probe


def _attention_follows(probe: LayerProbe, i: int) -> bool:
    """Whether a module that mixes tokens (attention) runs after call ``i``."""
    return any("attention" in c.kind.lower() for c in probe.calls[i + 1 :])


def _token_layer(probe: LayerProbe) -> str | None:
    """The ViT convention: the last LayerNorm on tokens that feeds an attention module
    (the last block's first norm), so the patch tokens get gradient from the class token."""
    for i in range(len(probe.calls) - 1, -1, -1):
        call = probe.calls[i]
        if call.tokens and "norm" in call.kind.lower() and _attention_follows(probe, i):
            return _with_call(probe, call)
    return None


def _with_call(probe: LayerProbe, call: _Call) -> str:
    runs = probe.counts[call.name]
    return call.name if runs == 1 else f"{call.name}@{call.index - runs}"


def find_target_layer(
    model: nn.Module, inputs: torch.Tensor, *, stacklevel: int = 1, forward_args: tuple = ()
) -> str:
    """Name of the layer ``"auto"`` picks for ``inputs``.

    The last module call, in execution order, whose output is a map with the input's
    rank ((N, C, h, w) for images, (N, C, L) for signals, (N, C, D, H, W) for volumes;
    channels-last (N, h, w, C) maps count too) and more than one position, skipping
    modules that only pass their input through or resample it (``Identity``, eval-mode
    ``Dropout``, adaptive pooling). A container that returns its last child's tensor
    completes after that child, so the container is chosen (``layer4`` on ResNets). When
    that call belongs to a module that runs several times per forward (a shared
    activation), the answer names that call, e.g. ``"act@-1"``.

    Models whose last stages work on (N, L, D) tokens (vision transformers) get the last
    LayerNorm that feeds an attention module (the last block's first norm, e.g.
    ``"encoder.layers.encoder_layer_11.ln_1"``): the class token reads the patch tokens
    in that attention, so they receive gradient; after the last attention they get none.

    ``stacklevel`` is where warnings point, as in ``warnings.warn``: 1 is the caller.
    """
    return _pick(model, inputs, forward_args=forward_args)[0]


def _pick(
    model: nn.Module, inputs: torch.Tensor, *, forward_args: tuple = ()
) -> tuple[str, LayerProbe]:
    """:func:`find_target_layer`, also returning the probe it ran."""
    # One image is enough in eval mode; in training mode BatchNorm needs the real batch.
    sample = inputs if model.training else inputs[:1]
    args = forward_args if model.training else _first_of(forward_args, inputs.shape[0])
    probe = probe_layers(model, sample, args)
    chosen = None
    for i in range(len(probe.calls) - 1, -1, -1):
        call = probe.calls[i]
        if call.spatial and not call.passthrough:
            chosen = i
            break
    tokens_later = any(c.tokens for c in probe.calls[(chosen if chosen is not None else -1) + 1 :])
    if tokens_later:
        token = _token_layer(probe)
        if token is not None:
            return token, probe
    if chosen is None:
        raise LayerError(
            f"could not find a layer of {type(model).__name__} with an (N, C, h, w) output and "
            f"h*w > 1 for inputs of shape {tuple(inputs.shape)}; name the layer explicitly "
            f"(top-level children: {_example_names(model, 10)})"
        )
    call = probe.calls[chosen]
    if tokens_later:
        warn(
            f"target_layer='auto' picked {call.name!r} for {type(model).__name__}, but later "
            f"layers return (N, L, D) token sequences (a transformer stage) and none of them is "
            f"a norm feeding attention: the last spatial layer is then an early one. Name the "
            f"layer to explain (token outputs are laid out as (N, D, h, w) automatically)."
        )
    return _with_call(probe, call), probe


def _first_of(args: tuple, batch: int) -> tuple:
    """Cut batched tensor arguments to their first row, like the probe's input."""
    return tuple(
        a[:1] if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == batch else a
        for a in args
    )
