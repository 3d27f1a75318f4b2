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
    rounding of one grid cell (a 224 x 230 image gives a 14 x 14 ViT grid)."""
    if len(grid) != len(size) or min(grid) < 1:
        return False
    strides = [s / g for s, g in zip(size, grid, strict=True)]
    return max(strides) / min(strides) < 1 + 1 / min(grid)


def token_grid(length: int, size: tuple[int, int]) -> list[tuple[int, int, int]]:
    """The (prefix, h, w) splits of ``length`` tokens into ``prefix <= MAX_PREFIX_TOKENS``
    leading tokens and an h x w patch grid (h * w > 1) with the input's aspect ratio.

    When several splits fit within rounding, those whose strides are exactly equal are
    kept (50 tokens at 224 x 224: 1 + 7 x 7, not 8 + 6 x 7), then those whose patches tile
    the input exactly (17 tokens at 64 x 64: 1 + 4 x 4 of 16 px, not 8 + 3 x 3 of 21.3 px);
    what is still ambiguous is all returned (and refused by :func:`arrange`)."""
    found = []
    for prefix in range(min(MAX_PREFIX_TOKENS, length - 2) + 1):
        n = length - prefix
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
    many axes as ``size``. Raises :class:`~camlib.errors.LayerError` naming the layer, the shape and the
    way out when no layout fits or a token count is ambiguous.
    """
    rank, size = len(input_shape), tuple(input_shape[2:])
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
    if layout == "tokens" or (layout is None and t.dim() == 3 and rank == 4):
        if t.dim() != 3 or rank != 4:
            raise LayerError(f"{where}; layout='tokens' needs an (N, L, D) output and images")
        options = token_grid(shape[1], (size[0], size[1]))
        if len(options) != 1:
            found = (
                "; ".join(f"{p} prefix token(s) + {h}x{w} patches" for p, h, w in options)
                or "no split into prefix tokens and a patch grid with the input's aspect ratio"
            )
            raise LayerError(
                f"{where}: its {shape[1]} tokens could be {found}. Pass reshape_transform="
                f"camlib.layouts.tokens(prefix=P, grid=(h, w)) to say which."
            )
        prefix, h, w = options[0]
        return Arrangement("tokens", prefix, (h, w))
    if t.dim() != rank:
        raise LayerError(
            f"{where}; a map for these inputs has {rank} dimensions (N, C, *{len(size)} "
            f"positions). Choose another layer or pass reshape_transform=."
        )
    if layout is not None:
        return Arrangement(layout)
    if rank == 3:  # signals: (N, C, L) by convention
        return Arrangement("channels_first")
    first = _consistent(shape[2:], size)
    last = _consistent(shape[1:-1], size)
    if last and not first:
        return Arrangement("channels_last")
    if first and last:
        if module is not None and _known_channels_last(module):
            return Arrangement("channels_last")
        if shape[1] >= min(shape[2:]) or shape[-1] <= max(shape[1:-1]):
            return Arrangement("channels_first")  # the usual NCHW proportions
        warn(
            f"{where}: it reads as channels first (C={shape[1]}) or channels last "
            f"(C={shape[-1]}) alike; camlib reads it as channels first. Pass "
            f"layout='channels_last' if the channels are the last dimension."
        )
    return Arrangement("channels_first")


# -- ready-made transforms ------------------------------------------------------------------
def tokens(prefix: int = 1, grid: tuple[int, int] | None = None) -> Callable:
    """A ``reshape_transform`` for (N, L, D) tokens: drop ``prefix`` leading tokens and lay
    the rest out as (N, D, h, w); ``grid=None`` takes the square grid.

    >>> vit = camlib.GradCAM(model, "blocks.11.norm1",
    ...                      reshape_transform=camlib.layouts.tokens(prefix=1))  # doctest: +SKIP
    """

    def transform(t: torch.Tensor) -> torch.Tensor:
        n = t.shape[1] - prefix
        h, w = grid if grid is not None else (math.isqrt(n), math.isqrt(n))
        if h * w != n:
            raise LayerError(
                f"tokens(prefix={prefix}, grid={grid}): {t.shape[1]} tokens minus {prefix} is "
                f"{n}, not a {h}x{w} grid; pass grid=(h, w)"
            )
        return t[:, prefix:].transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)

    return transform


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """A ``reshape_transform`` for (N, h, w, C) (or (N, D, H, W, C)) maps."""
    return t.movedim(-1, 1)
