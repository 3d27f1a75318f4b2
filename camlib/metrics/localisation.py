r"""Localisation: does the map point at the object?

Boxes are (N, 4) integer tensors ``x0, y0, x1, y1`` in pixels with **exclusive** upper
bounds, as in slicing: the box covers ``image[y0:y1, x0:x1]``.
"""

from __future__ import annotations

import torch

from ._checks import _check_boxes, _check_maps


def pointing_game(maps: torch.Tensor, boxes: torch.Tensor, *, tolerance: int = 0) -> torch.Tensor:
    r"""Pointing game (Zhang et al., 2018): does each map's maximum fall inside its box?

    For map :math:`M_n` the pointed pixel is :math:`(i_n, j_n) = \arg\max_{i,j} M_n[i, j]`
    (the first maximum in row-major order if several pixels tie), and

    .. math::
        \mathrm{hit}_n = [x_0 - t \le j_n < x_1 + t]\,[y_0 - t \le i_n < y_1 + t]\,
                         [\max M_n > \min M_n]

    with :math:`t` the ``tolerance`` in pixels. A constant map (no maximum to point
    with, e.g. an all-zero Grad-CAM) counts as a miss. The hit rate ``hits.float().mean()``
    is compared with :func:`box_area_fraction`, the expected hit rate of a uniformly random
    point.

    Args:
        maps: (N, H, W) saliency maps at the resolution of the boxes.
        boxes: (N, 4) ``x0, y0, x1, y1`` in pixels, upper bounds exclusive.
        tolerance: grow each box by this many pixels on every side (0: the strict game).

    Returns:
        (N,) bool tensor, ``True`` for a hit.

    Example:
        >>> maps = torch.zeros(1, 8, 8); maps[0, 2, 5] = 1.0     # peak at x=5, y=2
        >>> pointing_game(maps, torch.tensor([[4, 1, 7, 4]])).tolist()
        [True]
    """
    _check_maps(maps)
    _check_boxes(boxes, maps.shape[0])
    flat = maps.flatten(1)
    peak = flat.argmax(dim=1)
    w = maps.shape[2]
    y, x = peak // w, peak % w
    b = boxes.to(device=maps.device, dtype=torch.long)
    t = int(tolerance)
    inside = (x >= b[:, 0] - t) & (x < b[:, 2] + t) & (y >= b[:, 1] - t) & (y < b[:, 3] + t)
    informative = flat.amax(dim=1) > flat.amin(dim=1)
    return inside & informative


def box_area_fraction(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    r"""Fraction of the image each box covers: the hit rate of a uniformly random point.

    .. math:: a_n = \frac{(x_1 - x_0)(y_1 - y_0)}{H\,W}

    with the box first clipped to the image. Its mean over a data set is the
    random-point baseline of :func:`pointing_game`.

    Args:
        boxes: (N, 4) ``x0, y0, x1, y1`` in pixels, upper bounds exclusive.
        size: ``(H, W)`` of the image.

    Returns:
        (N,) float tensor in [0, 1].

    Example:
        >>> box_area_fraction(torch.tensor([[0, 0, 14, 28]]), (56, 56)).tolist()
        [0.125]
    """
    _check_boxes(boxes)
    h, w = int(size[0]), int(size[1])
    b = boxes.to(torch.float64)
    x0, x1 = b[:, 0].clamp(0, w), b[:, 2].clamp(0, w)
    y0, y1 = b[:, 1].clamp(0, h), b[:, 3].clamp(0, h)
    area = (x1 - x0).clamp_min(0) * (y1 - y0).clamp_min(0)
    return (area / (h * w)).to(torch.get_default_dtype())


def box_energy_fraction(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    r"""Share of each map's mass that lies inside its box (the "energy-based pointing game"
    of Wang et al., 2020, Score-CAM).

    .. math::
        E_n = \frac{\sum_{(i, j) \in B_n} M^+_n[i, j]}{\sum_{i, j} M^+_n[i, j]},
        \qquad M^+ = \max(M, 0)

    Unlike :func:`pointing_game` it credits a map for *all* of its mass, not only its
    peak; a map spread uniformly scores :func:`box_area_fraction`. A map with no positive
    mass gives NaN.

    Args:
        maps: (N, H, W) maps (negative values are ignored).
        boxes: (N, 4) ``x0, y0, x1, y1`` in pixels, upper bounds exclusive.

    Returns:
        (N,) float tensor in [0, 1] (NaN for all-zero maps).
    """
    _check_maps(maps)
    _check_boxes(boxes, maps.shape[0])
    _, h, w = maps.shape
    b = boxes.to(device=maps.device, dtype=torch.long)
    ys = torch.arange(h, device=maps.device)[None, :, None]
    xs = torch.arange(w, device=maps.device)[None, None, :]
    inside = (
        (xs >= b[:, 0, None, None])
        & (xs < b[:, 2, None, None])
        & (ys >= b[:, 1, None, None])
        & (ys < b[:, 3, None, None])
    )
    pos = maps.clamp_min(0)
    total = pos.sum(dim=(1, 2))
    share = (pos * inside).sum(dim=(1, 2)) / total.clamp_min(torch.finfo(pos.dtype).tiny)
    return torch.where(total > 0, share, torch.nan)


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Tight bounding box of each (N, H, W) mask, as (N, 4) ``x0, y0, x1, y1`` (exclusive).

    An empty mask gets the empty box ``0, 0, 0, 0``. (``torchvision.ops.masks_to_boxes``
    gives inclusive upper bounds and loops over masks; this is exclusive and batched.)

    Example:
        >>> m = torch.zeros(1, 6, 6, dtype=torch.bool); m[0, 1:3, 2:5] = True
        >>> boxes_from_masks(m).tolist()
        [[2, 1, 5, 3]]
    """
    _check_maps(masks, "masks")
    m = masks.bool()
    n, h, w = m.shape
    rows, cols = m.any(dim=2), m.any(dim=1)  # (N, H), (N, W)
    y0 = rows.int().argmax(dim=1)
    y1 = h - rows.flip(1).int().argmax(dim=1)
    x0 = cols.int().argmax(dim=1)
    x1 = w - cols.flip(1).int().argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).long()
    return torch.where(rows.any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))
