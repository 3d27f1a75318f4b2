"""Post-processing of raw maps: upsampling and per-image normalisation, in torch.

Conventions (the same as Captum's ``LayerAttribution.interpolate`` with
``interpolate_mode="bilinear"``): bilinear, ``align_corners=False``, applied to the raw
map; normalisation comes after upsampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def upsample(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Resize (N, *grid) maps to (N, *size): linear for signals, bilinear for images,
    trilinear for volumes (``align_corners=False``). A one-position map is expanded exactly."""
    size = tuple(int(s) for s in size)
    if tuple(maps.shape[1:]) == size:
        return maps
    if maps.shape[1:].numel() == 1:  # exact: interpolation weights would add rounding noise
        return maps.reshape(-1, *([1] * len(size))).expand(-1, *size).contiguous()
    mode = _MODES[len(size)]
    return F.interpolate(maps[:, None], size=size, mode=mode, align_corners=False)[:, 0]


def fuse(maps: list[torch.Tensor], how: str = "mean") -> torch.Tensor:
    """Combine several layers' maps (each (N, *size), already normalised) into one:
    their mean (``"mean"``) or element-wise maximum (``"max"``)."""
    if how == "mean":
        return torch.stack(maps).mean(0)
    if how == "max":
        return torch.stack(maps).amax(0)
    raise ValueError(f"fuse must be 'mean' or 'max', got {how!r}")


def normalize_minmax(maps: torch.Tensor) -> torch.Tensor:
    r"""Scale each map to [0, 1]: (m - min) / (max - min); a constant map becomes zeros.

    Works on (N, ...) tensors, one map per leading index; never returns NaN for finite
    maps. Computed as :math:`(m/2 - \min/2) / (\max/2 - \min/2)`, which equals the plain
    formula bit for bit (halving is exact) but cannot overflow, and reaches exactly 0
    and 1 even for a subnormal span. A map whose span is within rounding of its
    magnitude (``max - min <= 8 eps max|m|``, e.g. a constant map after bilinear
    upsampling) counts as constant, so rounding noise is never stretched to [0, 1].

    Batched in a few kernels whatever N: one ``aminmax`` pass, a handful of (N, 1) ops, and
    one subtraction and one division over the maps. A constant map is divided by
    :math:`+\infty` instead of its span, which gives exact zeros without a second pass.

    Differentiable (the ``differentiable=True`` path of :class:`camlib.Explainer`): the
    gradient flows through m and through the min and max (to the positions that attain
    them, as ``torch.aminmax`` routes it). Where a map counts as constant its range is
    replaced by :math:`+\infty`, so the map is 0 with a zero gradient for that image: no
    NaN or Inf ever reaches the backward pass, and such an image adds nothing to a loss's
    gradient through the normalisation.
    """
    flat = maps.flatten(1)
    lo, hi = torch.aminmax(flat, dim=1, keepdim=True)
    lo, hi = lo * 0.5, hi * 0.5
    span = hi - lo
    # |hi| + |lo| == max(span, |hi + lo|) when hi >= lo, and span <= span * 8 eps only at 0,
    # so this is the test span <= (|hi| + |lo|) * 8 eps with two kernels fewer
    constant = span <= (hi + lo).abs_().mul_(8 * torch.finfo(flat.dtype).eps)
    out = (flat * 0.5).sub_(lo).div_(span.masked_fill_(constant, torch.inf))
    return out.view_as(maps)


def normalize_absmax(maps: torch.Tensor) -> torch.Tensor:
    """Scale each signed map by its largest absolute value, to [-1, 1]; zeros stay zeros."""
    flat = maps.flatten(1)
    peak = flat.abs().amax(dim=1, keepdim=True)
    # divide by 1 where the map is all zeros; a subnormal peak is kept (exact [-1, 1])
    return (flat / peak.masked_fill_(peak == 0, 1.0)).view_as(maps)
