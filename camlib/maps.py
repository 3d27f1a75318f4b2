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
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def normalize_minmax(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map to [0, 1]: (m - min) / (max - min); a constant map becomes zeros.

    Works on (N, ...) tensors, one map per leading index; never returns NaN.
    """
    flat = maps.flatten(1)
    lo = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)
    return out.view_as(maps)


def normalize_absmax(maps: torch.Tensor) -> torch.Tensor:
    """Scale each signed map by its largest absolute value, to [-1, 1]; zeros stay zeros."""
    flat = maps.flatten(1)
    peak = flat.abs().amax(dim=1, keepdim=True)
    out = torch.where(peak > 0, flat / peak.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)
    return out.view_as(maps)
