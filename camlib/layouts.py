"""Laying a layer's output out as (N, C, *grid), the shape every method works on.

Layers return maps in several layouts. camlib reads each one from its shape and the
input's, never from a guess it keeps quiet about:

* **channels first** - (N, C, h, w) convolutions (also (N, C, L) for signals and
  (N, C, D, H, W) for volumes);
* **channels last** - (N, h, w, C) (torchvision Swin stages, timm's NHWC stages);
* **tokens** - (N, L, D) transformer outputs: ``L`` is a few leading prefix tokens
  (class, distillation, register tokens) plus an h x w patch grid.

A 4-D map's layout is decided by which reading gives a grid with the input's aspect
ratio (the same stride along every axis): a swin_t stage (N, 7, 7, 768) for a 224 x 224
input is channels last, since a 7 x 768 grid is not 224 x 224 at any stride. When both
readings fit (e.g. (N, 7, 7, 7)), known channels-last modules (Swin blocks, patch merging)
decide; otherwise camlib reads channels first, and warns when the shape looks
channels-last (a "channel" count below both grid sizes and a large last dimension). State the layout with
``layout=`` on any explainer, or pass one of the ready-made transforms below as
``reshape_transform=``.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .errors import LayerError, warn

Layout = str
"""``"channels_first"``, ``"channels_last"`` or ``"tokens"`` (``None``: detect)."""

MAX_PREFIX_TOKENS = 8
"""How many leading non-patch tokens (class, distillation, registers) are looked for."""

_ALIASES = {
    "channels_first": "channels_first",
    "nchw": "channels_first",
    "ncl": "channels_first",
    "ncdhw": "channels_first",
    "channels_last": "channels_last",
    "nhwc": "channels_last",
    "ndhwc": "channels_last",
    "nlc": "channels_last",
    "tokens": "tokens",
    "nld": "tokens",
}
_CHANNELS_LAST_KINDS = ("swin", "patchmerging")


def check_layout(layout: str | None) -> str | None:
    """The canonical name of a user's ``layout=`` (``None`` stays ``None``)."""
    if layout is None:
        return None
    key = str(layout).lower().replace("-", "_")
    if key not in _ALIASES:
        raise LayerError(
            f"unknown layout {layout!r}; use 'channels_first' (NCHW), 'channels_last' (NHWC) "
            f"or 'tokens' (N, L, D), or pass reshape_transform="
        )
    return _ALIASES[key]


def _consistent(grid: tuple[int, ...], size: tuple[int, ...]) -> bool:
    """Whether ``grid`` covers ``size`` with the same stride along every axis, up to the
    rounding of one grid cell (a 224 x 230 image gives a 14 x 14 ViT grid).

    Three axes are read as (T, H, W) or (D, H, W): H and W must share a stride, the first
    axis may have its own (video models stride time less than space, r3d_18 maps 16 x 112
    x 112 to 2 x 7 x 7) as long as it is no longer than the input's."""
    if len(grid) != len(size) or min(grid) < 1:
        return False
    if len(grid) == 3 and not _same_stride(grid, size):
        return grid[0] <= size[0] and _same_stride(grid[1:], size[1:])
    return _same_stride(grid, size)


def _same_stride(grid: tuple[int, ...], size: tuple[int, ...]) -> bool:
    strides = [s / g for s, g in zip(size, grid, strict=True)]
    return max(strides) / min(strides) < 1 + 1 / min(grid)


def token_grid(length: int, size: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The (prefix, h, w) splits of ``length`` tokens into ``prefix <= MAX_PREFIX_TOKENS``
    leading tokens and an h x w patch grid (h * w > 1) with the input's aspect ratio;
    for a (T, H, W) input (video), the (prefix, t, h, w) splits with t dividing T.

    When several splits fit within rounding, those whose strides are exactly equal are
    kept (50 tokens at 224 x 224: 1 + 7 x 7, not 8 + 6 x 7), then those whose patches tile
    the input exactly (17 tokens at 64 x 64: 1 + 4 x 4 of 16 px, not 8 + 3 x 3 of 21.3 px);
    what is still ambiguous is all returned (and refused by :func:`arrange`)."""
    if len(size) == 3:
        found3 = []
        for t in range(1, size[0] + 1):
            if size[0] % t:
                continue
            for prefix, h, w in token_grid_2d(length, size[1:], t):
                found3.append((prefix, t, h, w))
        return sorted(set(found3))
    return token_grid_2d(length, (size[0], size[1]))


def token_grid_2d(
    length: int, size: tuple[int, int], frames: int = 1
) -> list[tuple[int, int, int]]:
    """:func:`token_grid` on an H x W input, the patches repeated over ``frames`` frames."""
    found = []
    for prefix in range(min(MAX_PREFIX_TOKENS, length - 2) + 1):
        if (length - prefix) % frames:
            continue
        n = (length - prefix) // frames
        if n < 2:
            continue
        h = max(1, round(math.sqrt(n * size[0] / size[1])))
        for hh in {h - 1, h, h + 1}:
            if hh >= 1 and n % hh == 0 and _consistent((hh, n // hh), size):
                found.append((prefix, hh, n // hh))
    found = sorted(set(found))
    for rule in (
        lambda h, w: size[0] * w == size[1] * h,  # exactly the input's aspect ratio
        lambda h, w: size[0] % h == 0 and size[1] % w == 0,  # whole patches
    ):
        if len(found) > 1:
            found = [(p, h, w) for p, h, w in found if rule(h, w)] or found
    return found


@dataclass(frozen=True)
class Arrangement:
    """How to turn one layer's output (and its gradient) into (N, C, *grid)."""

    kind: str
    prefix: int = 0
    grid: tuple[int, ...] = ()
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        if self.kind == "custom":
            return self.transform(t)  # type: ignore[misc]
        if self.kind == "channels_last":
            return t.movedim(-1, 1)
        if self.kind == "tokens":
            patches = t[:, self.prefix :]
            return patches.transpose(1, 2).reshape(t.shape[0], t.shape[2], *self.grid)
        return t


def _known_channels_last(module: nn.Module) -> bool:
    """A Swin block / patch merging, or a container whose last module is one."""
    while True:
        if any(k in type(module).__name__.lower() for k in _CHANNELS_LAST_KINDS):
            return True
        children = list(module.children())
        if not children:
            return False
        module = children[-1]


_HINTS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Arrangement]] = weakref.WeakKeyDictionary()
"""Token grids the automatic layer choice settled with evidence from its probe (the
temporal extent of the model's own 5-D maps), by module and input shape (N excluded)."""


def remember(module: nn.Module, input_shape: tuple[int, ...], arrangement: Arrangement) -> None:
    """Record how ``module``'s output is laid out for inputs of ``input_shape`` (N, C, ...),
    for token counts that only the probe could settle (see :func:`read_layout`)."""
    _HINTS.setdefault(module, {})[tuple(input_shape[1:])] = arrangement


def _token_options(length: int, size: tuple[int, ...]) -> list[Arrangement]:
    return [Arrangement("tokens", o[0], tuple(o[1:])) for o in token_grid(length, size)]


@dataclass(frozen=True)
class Reading:
    """What the shape of a layer's output says about its layout (see :func:`read_layout`)."""

    arrangement: Arrangement | None
    """The layout camlib uses; ``None`` when it refuses (``options`` and ``problem`` say why)."""
    consistent: bool
    """Whether the grid has the input's aspect (same stride along H and W)."""
    options: tuple[Arrangement, ...] = ()
    """Every token split that fits, when there are several."""
    problem: str = ""
    """Why the layout is refused or doubtful (empty when it is clear)."""


def read_layout(
    shape: tuple[int, ...], input_shape: tuple[int, ...], module: nn.Module | None = None
) -> Reading:
    """How an output of ``shape`` becomes (N, C, *grid) for inputs of ``input_shape``.

    A pure function of the shapes (and the module's kind for ties): :func:`arrange` and
    the automatic layer choice (:mod:`camlib.layers`) both use it, so what ``"auto"``
    judges is what the methods then read.
    """
    rank, size = len(input_shape), tuple(input_shape[2:])
    if len(shape) == 3 and rank in (4, 5):
        options = _token_options(shape[1], size)
        if len(options) == 1:
            return Reading(options[0], True)
        hint = _HINTS.get(module, {}).get(tuple(input_shape[1:])) if module is not None else None
        if hint is not None and hint in options:
            return Reading(hint, True)
        return Reading(None, False, tuple(options), "tokens")
    if len(shape) != rank:
        return Reading(None, False, problem="rank")
    if rank == 3:  # signals: (N, C, L) by convention
        return Reading(Arrangement("channels_first"), True)
    first = _consistent(shape[2:], size)
    last = _consistent(shape[1:-1], size)
    if last and not first:
        return Reading(Arrangement("channels_last"), True)
    if first and last:
        if module is not None and _known_channels_last(module):
            return Reading(Arrangement("channels_last"), True)
        if shape[1] >= min(shape[2:]) or shape[-1] <= max(shape[1:-1]):
            return Reading(Arrangement("channels_first"), True)  # the usual NCHW proportions
        return Reading(Arrangement("channels_first"), True, problem="ambiguous")
    return Reading(Arrangement("channels_first"), first)


def arrange(
    t: torch.Tensor,
    input_shape: torch.Size,
    *,
    name: str,
    module: nn.Module | None = None,
    layout: str | None = None,
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Arrangement:
    """Decide how the output ``t`` of layer ``name`` becomes (N, C, *grid).

    ``input_shape`` is the explained batch's shape (N, C, *size); the grid must have as
    many axes as ``size``. (N, L, D) tokens are read for images and for videos (N, C, T,
    H, W), whose tokens are t x h x w patches (MViT). Raises
    :class:`~camlib.errors.LayerError` naming the layer, the shape and the way out when no
    layout fits or a token count is ambiguous.
    """
    rank = len(input_shape)
    shape = tuple(t.shape)
    where = f"layer {name!r} returned shape {shape} for inputs of shape {tuple(input_shape)}"
    if reshape_transform is not None:
        return Arrangement("custom", transform=reshape_transform)
    if t.dim() < 3 or t.shape[0] != input_shape[0]:
        raise LayerError(
            f"{where}; camlib needs a map with a batch dimension and positions, such as "
            f"(N, C, h, w). Choose a convolutional layer ('auto' picks the last one), or pass "
            f"reshape_transform= to turn this output into (N, C, h, w)."
        )
    if layout == "tokens" or (layout is None and t.dim() == 3 and rank in (4, 5)):
        if t.dim() != 3 or rank not in (4, 5):
            raise LayerError(
                f"{where}; layout='tokens' needs an (N, L, D) output and images or videos"
            )
        reading = read_layout(shape, tuple(input_shape), module)
        if reading.arrangement is None:
            found = (
                "; ".join(
                    f"{o.prefix} prefix token(s) + {'x'.join(map(str, o.grid))} patches"
                    for o in reading.options
                )
                or "no split into prefix tokens and a patch grid with the input's aspect ratio"
            )
            grid = "(h, w)" if rank == 4 else "(t, h, w)"
            raise LayerError(
                f"{where}: its {shape[1]} tokens could be {found}. Pass reshape_transform="
                f"camlib.layouts.tokens(prefix=P, grid={grid}) to say which."
            )
        return reading.arrangement
    if t.dim() != rank:
        raise LayerError(
            f"{where}; a map for these inputs has {rank} dimensions (N, C, *{rank - 2} "
            f"positions). Choose another layer or pass reshape_transform=."
        )
    if layout is not None:
        return Arrangement(layout)
    reading = read_layout(shape, tuple(input_shape), module)
    if reading.problem == "ambiguous":
        warn(
            f"{where}: it reads as channels first (C={shape[1]}) or channels last "
            f"(C={shape[-1]}) alike; camlib reads it as channels first. Pass "
            f"layout='channels_last' if the channels are the last dimension."
        )
    return reading.arrangement  # type: ignore[return-value]


# -- ready-made transforms ------------------------------------------------------------------
def tokens(prefix: int = 1, grid: tuple[int, ...] | None = None) -> Callable:
    """A ``reshape_transform`` for (N, L, D) tokens: drop ``prefix`` leading tokens and lay
    the rest out as (N, D, h, w) (``grid=(t, h, w)`` for video tokens: (N, D, t, h, w));
    ``grid=None`` takes the square grid.

    >>> vit = camlib.GradCAM(model, "blocks.11.norm1",
    ...                      reshape_transform=camlib.layouts.tokens(prefix=1))  # doctest: +SKIP
    """

    def transform(t: torch.Tensor) -> torch.Tensor:
        n = t.shape[1] - prefix
        dims = grid if grid is not None else (math.isqrt(n), math.isqrt(n))
        if math.prod(dims) != n:
            raise LayerError(
                f"tokens(prefix={prefix}, grid={grid}): {t.shape[1]} tokens minus {prefix} is "
                f"{n}, not a {'x'.join(map(str, dims))} grid; pass grid=(h, w)"
            )
        return t[:, prefix:].transpose(1, 2).reshape(t.shape[0], t.shape[2], *dims)

    return transform


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """A ``reshape_transform`` for (N, h, w, C) (or (N, D, H, W, C)) maps."""
    return t.movedim(-1, 1)
