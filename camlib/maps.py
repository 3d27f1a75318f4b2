"""Post-processing of raw maps: upsampling and per-image normalisation, in torch.

Conventions (the same as Captum's ``LayerAttribution.interpolate`` with
``interpolate_mode="bilinear"``): bilinear, ``align_corners=False``, applied to the raw
map; normalisation comes after upsampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize (N, h, w) maps to (N, *size) (``align_corners=False``)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    if maps.shape[-2:] == (1, 1):  # exact: bilinear weights would add rounding noise
        return maps.expand(*maps.shape[:-2], *size).contiguous()
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def normalize_minmax(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map to [0, 1]: (m - min) / (max - min); a constant map becomes zeros.

    Works on (N, ...) tensors, one map per leading index; never returns NaN for finite
    maps. A map whose span is within rounding of its magnitude (``max - min <= 8 eps
    max|m|``, e.g. a constant map after bilinear upsampling) counts as constant, so
    rounding noise is never stretched to [0, 1]. A span below the smallest normal float
    still maps to exactly [0, 1], and a map whose ``max - min`` overflows is halved first
    (exact for such large values).
    """
    flat = maps.flatten(1)
    lo, hi = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    half = torch.where(torch.isfinite(hi - lo), 1.0, 2.0).to(flat.dtype)
    lo, span = lo / half, hi / half - lo / half
    noise = 8 * torch.finfo(flat.dtype).eps * torch.maximum(lo.abs(), (hi / half).abs())
    out = torch.where(span > noise, (flat / half - lo) / _nonzero(span), 0.0)
    return out.view_as(maps)


def normalize_absmax(maps: torch.Tensor) -> torch.Tensor:
    """Scale each signed map by its largest absolute value, to [-1, 1]; zeros stay zeros."""
    flat = maps.flatten(1)
    peak = flat.abs().amax(dim=1, keepdim=True)
    return (flat / _nonzero(peak)).view_as(maps)


def _nonzero(t: torch.Tensor) -> torch.Tensor:
    """``t`` with zeros replaced by ones, as a safe divisor (subnormal values are kept)."""
    return torch.where(t > 0, t, torch.ones_like(t))
