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
import math
import re
import threading
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import LayerError
from .layouts import Arrangement, read_layout, remember
from .targets import logits_of

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
    parents: tuple[int, ...] = ()
    """The probe indices of the module calls running when this one ran (outermost first);
    filled in when they complete, so they are indices into ``LayerProbe.calls``."""
    leaf: bool = False
    """The module has no submodules."""
    maps_done: int = 0
    """How many working leaf calls (with a multi-position output or weights of their own,
    not pass-throughs) had completed when this one did: the execution order "early" uses."""
    takes_maps: bool = False
    """Its first argument is a list or tuple of several tensors (a multi-scale head)."""
    returns_sequence: bool = False
    """It returned a tuple or list (a block handing on extra values, e.g. MViT, HF layers)."""


@dataclass
class LayerProbe:
    """What one probe forward pass saw: modules in completion order and how often each ran."""

    calls: list[_Call] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    outputs: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    """Outputs kept for the gradient check (``probe_layers(..., grad=True)`` only)."""
    output: object = field(default=None, repr=False)
    """The model's output (``grad=True`` only)."""


def _is_spatial(t: object, rank: int, batch: int) -> bool:
    return (
        isinstance(t, torch.Tensor)
        and t.dim() == rank
        and t.shape[0] == batch
        and t.shape[2:].numel() > 1
    )


def _is_tokens(t: object, rank: int, batch: int) -> bool:
    return (
        isinstance(t, torch.Tensor)
        and rank in (4, 5)
        and t.dim() == 3
        and t.shape[0] == batch
        and t.shape[1] > 1
    )


_RESAMPLE = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)


def probe_layers(
    model: nn.Module, inputs: torch.Tensor, forward_args: tuple = (), *, grad: bool = False
) -> LayerProbe:
    """Run one forward on ``inputs`` recording every module's output, in completion order.

    Without ``grad`` the pass runs under ``no_grad`` and keeps no tensors. With ``grad``
    it records the graph from a copy of the input and keeps the outputs that could be maps
    (and the model's output) for the gradient check of the automatic choice. Only this thread's forward
    pass is recorded (other threads may share the model); the model's buffers are put
    back when it is in training mode.
    """
    probe = LayerProbe()
    owner = threading.get_ident()
    versions: dict[str, list[int]] = {}
    rank, batch = inputs.dim(), inputs.shape[0]
    running: list[list[int]] = []  # per running call: the probe indices of its descendants
    leaves = {n for n, m in model.named_modules() if n and next(m.children(), None) is None}
    maps_done = [0]

    def pre_hook(name: str):
        def remember(module: nn.Module, args: tuple) -> None:
            if threading.get_ident() != owner:
                return
            first = args[0] if args else None
            version = first._version if isinstance(first, torch.Tensor) else -1
            versions.setdefault(name, []).append(version)
            running.append([])

        return remember

    def hook(name: str):
        def record(module: nn.Module, args: tuple, output: object) -> None:
            if threading.get_ident() != owner:
                return
            index = probe.counts.get(name, 0)
            probe.counts[name] = index + 1
            first = args[0] if args else None
            version = versions[name].pop()
            descendants = running.pop() if running else []
            # Identity / eval Dropout hand back their input untouched (an in-place ReLU
            # hands it back modified: its version moved, so it is a real layer).
            untouched = (
                output is first and isinstance(first, torch.Tensor) and first._version == version
            )
            # A head's adaptive pool only resamples the previous map (VGG's 7x7 pool).
            resample = isinstance(module, _RESAMPLE)
            is_tensor = isinstance(output, torch.Tensor)
            spatial = _is_spatial(output, rank, batch)
            tokens = _is_tokens(output, rank, batch)
            leaf = name in leaves
            weighted = leaf and next(module.parameters(recurse=False), None) is not None
            if leaf and (spatial or tokens or weighted) and not (untouched or resample):
                maps_done[0] += 1
            takes_maps = (
                isinstance(first, (list, tuple))
                and len(first) > 1
                and all(isinstance(a, torch.Tensor) for a in first)
            )
            me = len(probe.calls)
            probe.calls.append(
                _Call(
                    name,
                    me,
                    spatial,
                    tokens,
                    untouched or resample,
                    tuple(output.shape) if is_tensor else None,
                    type(module).__name__,
                    index,
                    leaf=leaf,
                    maps_done=maps_done[0],
                    takes_maps=takes_maps,
                    returns_sequence=isinstance(output, (tuple, list)),
                )
            )
            for d in descendants:
                probe.calls[d].parents = (me, *probe.calls[d].parents)
            if running:
                running[-1].extend([*descendants, me])
            if grad and is_tensor and (spatial or tokens or output.dim() >= 3):
                probe.outputs[me] = output

        return record

    named = [(n, m) for n, m in model.named_modules() if n]
    # A model in training mode updates its BatchNorm statistics on every forward: the
    # probe puts every buffer back, so only the explained call itself counts.
    saved = [(b, b.clone()) for b in model.buffers()] if model.training else []
    handles = [m.register_forward_pre_hook(pre_hook(n)) for n, m in named]
    handles += [m.register_forward_hook(hook(n)) for n, m in named]
    try:
        with torch.inference_mode(False), torch.set_grad_enabled(grad):
            fed = inputs.clone() if inputs.is_inference() or grad else inputs
            if grad:
                fed = inputs.detach().requires_grad_(True).clone()
            output = model(fed, *forward_args)
            if grad:
                probe.output = output
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
    return probe


# -- the automatic choice ------------------------------------------------------------------
_ATTENTION = re.compile(r"attention|attn|^[a-z]*msa$|^gpsa$", re.IGNORECASE)
_WHOLE_BLOCK = re.compile(r"block|layer|stage", re.IGNORECASE)
_POSITION_NAME = re.compile(r"^(attn|attention)|rel_?pos|relative_position|crpe|^rpe", re.I)
EARLY = 0.5
"""A layer that completes within this fraction of the model's working leaf calls (those
with a map output or weights, pass-throughs excluded) is early (the stem): ``"auto"``
never picks it."""


@dataclass(frozen=True)
class Candidate:
    """One module call whose output could be a map, as ``"auto"`` judged it.

    ``verdict`` is ``"chosen"``, ``"eligible"`` (it qualifies, but a later layer does too)
    or ``"rejected"``; ``reason`` says why.
    """

    name: str
    """The call as ``target_layer`` takes it (``"act@-1"`` for a reused module)."""
    kind: str
    shape: tuple[int, ...]
    layout: str
    """How camlib reads it: ``channels_first``, ``channels_last``, ``tokens+P`` (P
    prefix tokens), or ``-`` when no reading fits."""
    grid: tuple[int, ...]
    position: float
    """The fraction of the model's map-producing layers done when it completed."""
    verdict: str
    reason: str


def _attention_parent(probe: LayerProbe, call: _Call) -> _Call | None:
    """The innermost running module that is an attention module (not a whole block)."""
    for p in reversed(call.parents):
        parent = probe.calls[p]
        last = parent.name.rsplit(".", 1)[-1]
        kind_is = _ATTENTION.search(parent.kind) and not _WHOLE_BLOCK.search(parent.kind)
        if kind_is or _ATTENTION.fullmatch(last) or last.startswith(("attn", "attention")):
            return parent
    return None


def _channels(shape: tuple[int, ...], arrangement: Arrangement) -> int:
    return shape[1] if arrangement.kind == "channels_first" else shape[-1]


def _probe_score(output: object, batch: int) -> torch.Tensor | None:
    """The score the gradient check differentiates: the top class (as ``targets=None``
    explains) for (N, K) logits, else a fixed random projection of every output tensor
    (a segmentation map, raw detections), so any dependence shows."""
    logits = logits_of(output)
    if isinstance(logits, torch.Tensor) and logits.requires_grad and logits.dim() <= 2:
        flat = logits.reshape(batch, -1)
        return flat.gather(1, flat.argmax(1, keepdim=True)).sum()
    found: list[torch.Tensor] = []

    def collect(value: object, depth: int = 0) -> None:
        if isinstance(value, torch.Tensor):
            if value.requires_grad and value.dtype.is_floating_point:
                found.append(value)
        elif depth < 4 and isinstance(value, dict):
            for v in value.values():
                collect(v, depth + 1)
        elif depth < 4 and isinstance(value, (list, tuple)):
            for v in value:
                collect(v, depth + 1)

    collect(logits if logits is not None else output)
    if not found and hasattr(output, "values"):
        collect(dict(output))  # type: ignore[call-overload]
    if not found:
        return None
    gen = torch.Generator().manual_seed(0)
    return sum(  # type: ignore[return-value]
        (t * torch.randn(t.shape, generator=gen).to(t.device, t.dtype)).sum() for t in found
    )


def _judge(
    probe: LayerProbe, model: nn.Module, input_shape: tuple[int, ...]
) -> tuple[list[Candidate], int | None, list[tuple[int, Arrangement]]]:
    """Judge every call of a ``grad=True`` probe; return the table (latest first), the
    chosen call's index and the token arrangements settled by probe evidence."""
    modules = dict(model.named_modules())
    batch = input_shape[0]
    total = max((c.maps_done for c in probe.calls), default=0) or 1
    rank = len(input_shape)
    # temporal extents of the model's own 5-D maps settle ambiguous video token counts
    frames = set()
    # token counts of the token streams inside each module: attention weights are L x L
    lengths: dict[int, set[int]] = {}
    for call in probe.calls:
        if call.spatial and call.shape is not None and rank == 5:
            reading = read_layout(call.shape, input_shape, modules.get(call.name))
            if reading.arrangement is not None and reading.consistent:
                frames.add(_grid(call.shape, reading.arrangement)[0])
        elif call.tokens and call.shape is not None:
            reading = read_layout(call.shape, input_shape, modules.get(call.name))
            found = {call.shape[1]}
            for option in (reading.arrangement,) if reading.arrangement else reading.options:
                found.add(math.prod(option.grid))
            for p in call.parents:
                lengths.setdefault(p, set()).update(found)
    logits = logits_of(probe.output)
    dense = isinstance(logits, torch.Tensor) and logits.dim() == rank
    heads = [c for c in probe.calls if c.takes_maps and not (c.spatial or c.tokens)]
    rows: list[tuple[int, Arrangement | None, str]] = []  # (index, arrangement, reason)
    settled: dict[int, Arrangement] = {}
    for call in probe.calls:
        shape = call.shape
        if shape is None or len(shape) < 3 or shape[0] != batch:
            continue
        module = modules.get(call.name)
        reading = read_layout(shape, input_shape, module)
        arrangement = reading.arrangement
        if arrangement is None and reading.options and frames:
            fits = [o for o in reading.options if o.grid[0] in frames]
            if len(fits) == 1:
                arrangement = settled[call.order] = fits[0]
        reason = ""
        if call.passthrough:
            reason = "passes its input on (Identity, eval Dropout) or only resamples it"
        elif arrangement is None:
            reason = (
                f"{shape[1]} tokens split several ways ({_splits(reading.options)})"
                if reading.options
                else f"not a map for inputs of rank {rank}"
            )
        elif not reading.consistent and call.order not in settled:
            reason = "its positions do not have the input's aspect (not a map of the input)"
        elif math.prod(_grid(shape, arrangement)) <= 1:
            reason = "a single position"
        else:
            attn = _attention_parent(probe, call)
            last = call.name.rsplit(".", 1)[-1]
            grid = _grid(shape, arrangement)
            near = lengths.get(call.parents[-1], set()) if call.parents else set()
            square = len(set(grid)) == 1 and len(grid) == 2 and grid[0] in near
            bundle = next(
                (probe.calls[p] for p in call.parents if probe.calls[p].returns_sequence), None
            )
            if attn is not None:
                reason = f"inside the attention module {attn.name!r} ({attn.kind})"
            elif _POSITION_NAME.search(last) and not _WHOLE_BLOCK.search(call.kind):
                reason = "an attention or relative-position module"
            elif square:
                reason = "a token x token tensor (attention weights or position terms)"
            elif bundle is not None and "norm" not in call.kind.lower():
                reason = (
                    f"inside {bundle.name!r}, which returns a tuple: it may be a residual "
                    f"branch (only norms there read the whole stream)"
                )
            else:
                head = next((h for h in heads if h.order in call.parents), None)
                if head is not None:
                    reason = (
                        f"a branch inside {head.name!r}, which reads several maps and "
                        f"returns no map"
                    )
        rows.append((call.order, arrangement, reason))
    # the output layer of a dense (segmentation) model: the trailing K-channel maps
    if dense:
        k = logits.shape[1]  # type: ignore[union-attr]
        for j in range(len(rows) - 1, -1, -1):
            i, arrangement, reason = rows[j]
            if arrangement is None or reason:
                continue
            if _channels(probe.calls[i].shape, arrangement) != k:  # type: ignore[arg-type]
                break
            rows[j] = (i, arrangement, "the class scores themselves (the output layer)")
    # early layers
    for j, (i, arrangement, reason) in enumerate(rows):
        position = probe.calls[i].maps_done / total
        if not reason and position <= EARLY:
            rows[j] = (i, arrangement, f"early: {position:.0%} of the way through the layers")
    # the gradient check, on what is left: one autograd.grad for all of them
    open_ = [(j, i) for j, (i, _, reason) in enumerate(rows) if not reason]
    score = _probe_score(probe.output, batch) if probe.output is not None else None
    if open_ and score is not None and score.requires_grad:
        wanted = [probe.outputs[i] for _, i in open_]
        try:
            grads = torch.autograd.grad(score, wanted, allow_unused=True)
        except RuntimeError:  # e.g. a non-differentiable step: the check cannot run
            grads = (None,) * 0
        for (j, i), g in zip(open_, grads, strict=False):
            arrangement = rows[j][1]
            if g is None or not bool(arrangement.apply(g).any()):  # type: ignore[union-attr]
                rows[j] = (i, arrangement, "no gradient reaches it from the output")
    chosen = next((i for i, _, reason in reversed(rows) if not reason), None)
    if chosen is not None:
        later = [h for h in heads if h.order > chosen and chosen not in h.parents]
        if later:
            rows = [(i, a, r or f"feeds the multi-map head {later[0].name!r}") for i, a, r in rows]
            chosen = None
    table = []
    for i, arrangement, reason in reversed(rows):
        call = probe.calls[i]
        verdict = "rejected" if reason else "chosen" if i == chosen else "eligible"
        if verdict == "eligible":
            reason = "qualifies, but a later layer does too"
        elif verdict == "chosen":
            reason = "the last layer that qualifies"
        layout = "-"
        if arrangement is not None:
            layout = arrangement.kind + (
                f"+{arrangement.prefix}" if arrangement.kind == "tokens" else ""
            )
        table.append(
            Candidate(
                _with_call(probe, call),
                call.kind,
                call.shape,  # type: ignore[arg-type]
                layout,
                _grid(call.shape, arrangement) if arrangement is not None else (),  # type: ignore[arg-type]
                round(call.maps_done / total, 3),
                verdict,
                reason,
            )
        )
    return table, chosen, list(settled.items())


def _splits(options: tuple[Arrangement, ...]) -> str:
    return ", ".join(f"{o.prefix}+{'x'.join(map(str, o.grid))}" for o in options)


def _grid(shape: tuple[int, ...], arrangement: Arrangement) -> tuple[int, ...]:
    if arrangement.kind == "tokens":
        return arrangement.grid
    if arrangement.kind == "channels_last":
        return tuple(shape[1:-1])
    return tuple(shape[2:])


def _with_call(probe: LayerProbe, call: _Call) -> str:
    runs = probe.counts[call.name]
    return call.name if runs == 1 else f"{call.name}@{call.index - runs}"


@dataclass
class _Choice:
    name: str | None
    probe: LayerProbe
    table: list[Candidate]
    signature: tuple[int, ...]


_CHOICES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, _Choice]] = weakref.WeakKeyDictionary()
_CHOICES_LOCK = threading.Lock()
_CHOICES_PER_MODEL = 16


def _args_key(args: tuple) -> tuple | None:
    """A cache key for forward arguments (their shapes), ``None`` when they are not tensors."""
    key = []
    for a in args:
        if not isinstance(a, torch.Tensor):
            return None
        key.append((tuple(a.shape), a.dtype))
    return tuple(key)


def _choose(model: nn.Module, inputs: torch.Tensor, forward_args: tuple = ()) -> _Choice:
    """Probe (once per model, input shape and mode: cached) and judge every layer."""
    sample = inputs if model.training else inputs[:1]
    args = forward_args if model.training else _first_of(forward_args, inputs.shape[0])
    signature = tuple(map(id, model.modules()))
    args_key = _args_key(args)
    key = (tuple(sample.shape), sample.dtype, sample.device, model.training, args_key)
    if args_key is not None:
        with _CHOICES_LOCK:
            found = _CHOICES.get(model, {}).get(key)
        if found is not None and found.signature == signature:
            return found
    probe = probe_layers(model, sample, args, grad=True)
    try:
        table, chosen, settled = _judge(probe, model, tuple(sample.shape))
    finally:
        outputs, probe.outputs, probe.output = probe.outputs, {}, None
        del outputs
    modules = dict(model.named_modules())
    for i, arrangement in settled:
        if i == chosen:
            remember(modules[probe.calls[i].name], tuple(sample.shape), arrangement)
    name = _with_call(probe, probe.calls[chosen]) if chosen is not None else None
    choice = _Choice(name, probe, table, signature)
    if args_key is not None:
        with _CHOICES_LOCK:
            per_model = _CHOICES.setdefault(model, {})
            per_model[key] = choice
            while len(per_model) > _CHOICES_PER_MODEL:
                per_model.pop(next(iter(per_model)))
    return choice


def layer_candidates(
    model: nn.Module, inputs: torch.Tensor, *, forward_args: tuple = ()
) -> list[Candidate]:
    """Every layer ``"auto"`` considered for ``inputs``, latest first, with its verdict.

    Each :class:`Candidate` has the call's name, module type, output shape, the layout
    camlib reads, its grid, how far through the forward pass it completed, and
    ``verdict`` (``"chosen"``, ``"eligible"``, ``"rejected"``) with the ``reason``. Only
    calls returning a tensor with the batch dimension and at least 3 dimensions appear.
    :func:`format_candidates` prints the table.
    """
    return list(_choose(model, inputs, forward_args).table)


def format_candidates(table: list[Candidate], limit: int | None = 40) -> str:
    """The candidate table as aligned text, one line per layer (latest first)."""
    rows = table if limit is None else table[:limit]
    width = max((len(c.name) for c in rows), default=4)
    lines = [f"{'layer':<{width}}  {'type':<22} {'shape':<22} {'layout':<16} {'at':>5}  verdict"]
    for c in rows:
        shape = "x".join(map(str, c.shape))
        lines.append(
            f"{c.name:<{width}}  {c.kind[:22]:<22} {shape:<22} {c.layout:<16} "
            f"{c.position:>5.0%}  {c.verdict}: {c.reason}"
        )
    if limit is not None and len(table) > limit:
        lines.append(f"... {len(table) - limit} earlier layers")
    return "\n".join(lines)


def find_target_layer(
    model: nn.Module, inputs: torch.Tensor, *, stacklevel: int = 1, forward_args: tuple = ()
) -> str:
    """Name of the layer ``"auto"`` picks for ``inputs``.

    One probe forward on the first image (the whole batch in training mode) records every
    module call; one ``torch.autograd.grad`` from the output (the top class for (N, K)
    logits, else a fixed random projection of the output) tells which outputs carry
    gradient. The pick is the **last** call, in completion order, whose output

    * is a map of the input: (N, C, *grid) channels first, (N, *grid, C) channels last or
      (N, L, D) tokens (a few prefix tokens plus a patch grid; t x h x w for videos), with
      more than one position and the input's aspect (see :func:`camlib.layouts.read_layout`);
    * is not a pass-through (``Identity``, eval ``Dropout``, adaptive pooling);
    * is not attention internals: no module running inside an attention module (attention
      weights, relative-position terms, q/k/v), no ``attn``/relative-position module, no
      token x token tensor;
    * is not a branch inside a head that reads several maps and returns none (YOLO's
      ``Detect``): such a model is refused, naming the head;
    * is not the output layer of a dense model (the trailing K-channel score maps);
    * completes after the first half of the model's working leaf calls (those with a map
      output or weights of their own; never the stem);
    * receives gradient from the output on its grid (after the last attention of a ViT the
      patch tokens get none, so the last block's first norm is chosen).

    A container completes after its children, so a block is chosen over its branches
    (``layer4`` on ResNets). A call of a module that runs several times is named with its
    call (``"act@-1"``). The choice is cached per model, input shape and mode (and
    recomputed when the model's modules change). :func:`layer_candidates` returns the
    whole table with the reason for each verdict.

    Raises:
        LayerError: no layer qualifies; the message lists the latest candidates and why
            each was rejected.

    ``stacklevel`` is kept for compatibility (no warning is issued any more).
    """
    return _pick(model, inputs, forward_args=forward_args)[0]


def _pick(
    model: nn.Module, inputs: torch.Tensor, *, forward_args: tuple = ()
) -> tuple[str, LayerProbe]:
    """:func:`find_target_layer`, also returning the probe it ran (cached)."""
    choice = _choose(model, inputs, forward_args)
    if choice.name is None:
        shown = choice.table[:8]
        listed = "; ".join(f"{c.name} {tuple(c.shape)}: {c.reason}" for c in shown) or "none"
        raise LayerError(
            f"could not find a layer of {type(model).__name__} that target_layer='auto' can "
            f"explain for inputs of shape {tuple(inputs.shape)} (a map of the input, after "
            f"the stem, outside attention, with gradient from the output). Latest "
            f"candidates: {listed}. Name the layer explicitly (top-level children: "
            f"{_example_names(model, 10)}); camlib.layers.layer_candidates lists them all."
        )
    return choice.name, choice.probe


def _first_of(args: tuple, batch: int) -> tuple:
    """Cut batched tensor arguments to their first row, like the probe's input."""
    return tuple(
        a[:1] if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == batch else a
        for a in args
    )
