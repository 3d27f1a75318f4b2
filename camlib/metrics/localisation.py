r"""Localisation: does the map point at the object?

Boxes are (N, 4) integer tensors ``x0, y0, x1, y1`` in pixels with **exclusive** upper
bounds, as in slicing: the box covers ``image[y0:y1, x0:x1]``. Masks are (N, *size)
boolean tensors at the maps' size.

Two layers, as everywhere in :mod:`camlib.metrics`: batched functions on tensors
(:func:`pointing_game`, :func:`pointing_hit_rate`, :func:`mass_fraction`,
:func:`rank_accuracy`, ...) and the registered metrics :func:`camlib.evaluate` runs:

| name | paper | region used | better |
| --- | --- | --- | --- |
| ``pointing_game`` | Zhang et al., 2018 | masks, else boxes | higher |
| ``energy_pointing_game`` | Wang et al., 2020 (Score-CAM) | boxes, else masks' boxes | higher |
| ``relevance_mass`` | Arras et al., 2022 (CLEVR-XAI) | masks, else boxes | higher |
| ``relevance_rank`` | Arras et al., 2022 (CLEVR-XAI) | masks, else boxes | higher |

Each needs object masks *or* boxes (``needs = {"boxes", "masks"}`` means either one;
``needs_any`` says so explicitly). The first kind listed is used when both are given; see
:func:`object_regions`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from ..errors import MetricError, warn
from ._checks import _check_boxes, _check_maps
from .registry import Metric, MetricContext, register


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


# -- object regions ------------------------------------------------------------------------

REGIONS = ("auto", "masks", "boxes")
"""Values of the ``region`` option of the localisation metrics."""


def masks_from_boxes(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) bool masks, ``True`` inside each box: the inverse of
    :func:`boxes_from_masks` for rectangles. Batched, on the boxes' device.

    Example:
        >>> masks_from_boxes(torch.tensor([[1, 0, 3, 2]]), (3, 4)).int().tolist()
        [[[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]]
    """
    _check_boxes(boxes)
    h, w = int(size[0]), int(size[1])
    b = boxes.long()
    ys = torch.arange(h, device=b.device)[None, :, None]
    xs = torch.arange(w, device=b.device)[None, None, :]
    return (
        (xs >= b[:, 0, None, None])
        & (xs < b[:, 2, None, None])
        & (ys >= b[:, 1, None, None])
        & (ys < b[:, 3, None, None])
    )


def check_regions(
    shape: tuple[int, ...] | torch.Size,
    boxes: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
) -> None:
    """Check boxes and masks against maps of ``shape`` = (N, *size), before any work.

    Masks must be (N, *size), boolean or 0/1. Boxes must be (N, 4) whole-pixel
    ``x0, y0, x1, y1`` with ``0 <= x0 < x1 <= W`` and ``0 <= y0 < y1 <= H``, for 2-D maps.
    Raises :class:`~camlib.errors.MetricError` naming the first bad image, its shape or
    box, and what is allowed (:func:`camlib.evaluate` can call this before any forward
    pass). Empty masks pass: the metrics give NaN for those images.
    """
    shape = tuple(int(s) for s in shape)
    n, size = shape[0], shape[1:]
    if masks is not None:
        if not isinstance(masks, torch.Tensor):
            raise MetricError(
                f"masks must be a tensor of shape {shape}, got {type(masks).__name__}"
            )
        if tuple(masks.shape) != shape:
            raise MetricError(
                f"masks have shape {tuple(masks.shape)} but the maps are {shape}: give one "
                f"mask per image, masks[i] of shape {size} (the maps' and inputs' size)"
            )
        if masks.dtype != torch.bool:
            flat = masks.reshape(n, -1)
            bad = (flat != 0) & (flat != 1)
            if bool(bad.any()):
                i = int(bad.any(dim=1).nonzero()[0, 0])
                value = flat[i][bad[i]][0].item()
                raise MetricError(
                    f"masks[{i}] holds the value {value}; masks must be boolean or 0/1 "
                    f"(True/1 marks the object)"
                )
    if boxes is not None:
        if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
            got = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
            raise MetricError(f"boxes must be an ({n}, 4) tensor of x0, y0, x1, y1, got {got}")
        if boxes.shape[0] != n:
            raise MetricError(f"got {boxes.shape[0]} boxes for {n} maps; give one box per image")
        if len(size) != 2:
            raise MetricError(
                f"boxes need 2-D maps (N, H, W), got maps of shape {shape}; give masks instead"
            )
        h, w = size
        if boxes.is_floating_point():
            frac = (boxes != boxes.round()).any(dim=1)
            if bool(frac.any()):
                i = int(frac.nonzero()[0, 0])
                raise MetricError(
                    f"boxes[{i}] = {boxes[i].tolist()} is not in whole pixels; boxes are "
                    f"integer x0, y0, x1, y1 (round them first)"
                )
        b = boxes.long()
        ok = (b[:, 0] >= 0) & (b[:, 0] < b[:, 2]) & (b[:, 2] <= w)
        ok &= (b[:, 1] >= 0) & (b[:, 1] < b[:, 3]) & (b[:, 3] <= h)
        if not bool(ok.all()):
            i = int((~ok).nonzero()[0, 0])
            raise MetricError(
                f"boxes[{i}] = {b[i].tolist()} (x0, y0, x1, y1) does not fit image {i} of "
                f"size {h}x{w}: need 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h} (upper "
                f"bounds exclusive)"
            )


def object_regions(
    ctx: MetricContext, metric: str = "metric", prefer: str = "masks"
) -> torch.Tensor:
    """The (N, *size) bool object regions a localisation metric compares ``ctx.maps`` with.

    ``prefer="masks"``: the masks when the context has them, else the filled boxes.
    ``prefer="boxes"``: the boxes when given, else each mask's bounding box
    (:func:`boxes_from_masks`). Checked with :func:`check_regions`; raises
    :class:`~camlib.errors.MetricError` when there is neither, and warns (naming the
    images) about empty masks, whose scores are NaN.
    """
    maps = ctx.maps
    if not isinstance(maps, torch.Tensor) or maps.dim() < 2:
        raise MetricError(f"{metric}: ctx.maps must be an (N, *size) tensor")
    if ctx.masks is None and ctx.boxes is None:
        raise MetricError(
            f"{metric} needs object masks or boxes (MetricContext.masks or .boxes); neither "
            f"was given"
        )
    check_regions(maps.shape, boxes=ctx.boxes, masks=ctx.masks)
    size = tuple(maps.shape[1:])
    if ctx.masks is not None and (prefer == "masks" or ctx.boxes is None):
        region = ctx.masks.to(maps.device).bool()
        if prefer == "boxes":
            if len(size) != 2:
                raise MetricError(
                    f"{metric} compares maps with boxes, which need 2-D maps; the maps are "
                    f"{tuple(maps.shape)} (use region='masks')"
                )
            region = masks_from_boxes(boxes_from_masks(region), size)
    else:
        region = masks_from_boxes(ctx.boxes.to(maps.device), size)
    empty = ~region.flatten(1).any(dim=1)
    if bool(empty.any()):
        warn(
            f"{metric}: the object mask of image(s) {empty.nonzero()[:, 0].tolist()} is "
            f"empty; their scores are NaN"
        )
    return region


def _dilate(region: torch.Tensor, tolerance: int) -> torch.Tensor:
    """Grow each (N, H, W) region by a disk of radius ``tolerance`` pixels: a pixel is in
    the result when its Euclidean distance to the region is at most ``tolerance``."""
    if tolerance == 0:
        return region
    if region.dim() != 3:
        raise MetricError(
            f"a pointing tolerance needs 2-D maps (N, H, W), got {tuple(region.shape)}; use "
            f"tolerance=0"
        )
    r = torch.arange(-tolerance, tolerance + 1, device=region.device)
    disk = ((r[:, None] ** 2 + r[None, :] ** 2) <= tolerance**2).float()[None, None]
    grown = F.conv2d(region.float()[:, None], disk, padding=tolerance)[:, 0]
    return grown > 0.5


# -- batched scores on regions -------------------------------------------------------------


def pointing_hit_rate(
    maps: torch.Tensor, region: torch.Tensor, *, tolerance: int = 0
) -> torch.Tensor:
    r"""Pointing game against object regions, with ties shared fairly.

    With :math:`P_n = \{p : M_n[p] = \max M_n\}` the maximal pixels of map :math:`n`
    and :math:`R^t_n` its region grown by a disk of radius :math:`t` (``tolerance``),

    .. math::
        \mathrm{hit}_n = \frac{|P_n \cap R^t_n|}{|P_n|}\,[\max M_n > \min M_n]

    i.e. the probability of a hit when a tie between maxima is broken at random (1 or 0
    when the maximum is unique). A constant map points nowhere: 0. An empty region: NaN.

    Args:
        maps: (N, *size) maps.
        region: (N, *size) bool object regions.
        tolerance: pixels (Euclidean) a maximum may lie outside the region (2-D maps).

    Returns:
        (N,) float64 in [0, 1] (NaN where the region is empty).
    """
    flat = maps.detach().flatten(1)
    reg = _dilate(region.to(maps.device).bool(), int(tolerance)).flatten(1)
    top = flat == flat.amax(dim=1, keepdim=True)
    share = (top & reg).sum(dim=1).double() / top.sum(dim=1).clamp_min(1).double()
    informative = flat.amax(dim=1) > flat.amin(dim=1)
    share = torch.where(informative, share, torch.zeros_like(share))
    return torch.where(region.flatten(1).any(dim=1).to(maps.device), share, torch.nan)


def mass_fraction(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    r"""Share of each map's positive mass inside its region.

    .. math::
        \mu_n = \frac{\sum_{p \in R_n} M^+_n[p]}{\sum_p M^+_n[p]},
        \qquad M^+ = \max(M, 0)

    A map spread uniformly scores the region's area fraction. NaN where the map has no
    positive mass or the region is empty.

    Args:
        maps: (N, *size) maps (negative values count as 0).
        region: (N, *size) bool object regions.

    Returns:
        (N,) float64 in [0, 1].
    """
    pos = maps.detach().flatten(1).double().clamp_min(0)
    reg = region.to(maps.device).bool().flatten(1)
    total = pos.sum(dim=1)
    share = (pos * reg).sum(dim=1) / total.clamp_min(torch.finfo(torch.float64).tiny)
    defined = (total > 0) & reg.any(dim=1)
    return torch.where(defined, share, torch.nan)


def rank_accuracy(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    r"""Relevance rank accuracy: the share of the :math:`K_n = |R_n|` highest pixels that
    lie in the region, with ties at the cut shared fairly.

    With :math:`v_n` the :math:`K_n`-th largest value of :math:`M_n`,
    :math:`A_n = \{p : M_n[p] > v_n\}` and :math:`T_n = \{p : M_n[p] = v_n\}`,

    .. math::
        \mathrm{RRA}_n = \frac{1}{K_n}\Big(|A_n \cap R_n| +
            (K_n - |A_n|)\,\frac{|T_n \cap R_n|}{|T_n|}\Big)

    the expected hit count when the top-:math:`K_n` set is completed by drawing tied
    pixels at random. Without ties at the cut it is :math:`|\mathrm{top}_{K_n} \cap R_n|
    / K_n`. A constant map scores the region's area fraction. NaN for an empty region.

    Args:
        maps: (N, *size) maps.
        region: (N, *size) bool object regions.

    Returns:
        (N,) float64 in [0, 1].
    """
    flat = maps.detach().flatten(1)
    reg = region.to(maps.device).bool().flatten(1)
    k = reg.sum(dim=1)
    kth = flat.sort(dim=1, descending=True).values.gather(1, (k - 1).clamp_min(0)[:, None])
    above, tied = flat > kth, flat == kth
    n_above, n_tied = above.sum(dim=1), tied.sum(dim=1)
    hits = (above & reg).sum(dim=1).double()
    hits = hits + (k - n_above).double() * (tied & reg).sum(dim=1).double() / n_tied.double()
    return torch.where(k > 0, hits / k.clamp_min(1).double(), torch.nan)


# -- registered metrics --------------------------------------------------------------------


class LocalisationMetric(Metric):
    """Base of the registered localisation metrics: reads ``ctx.maps`` and the object
    regions (:func:`object_regions`), runs no forward pass.

    Args:
        region: ``"auto"`` (the metric's preferred annotation, :attr:`prefer`, when
            given, else the other), ``"masks"`` or ``"boxes"`` (that one, or an error).
    """

    category = "localisation"
    higher_is_better = True
    needs = frozenset({"boxes", "masks"})
    needs_any: ClassVar[frozenset[str]] = frozenset({"boxes", "masks"})
    """``needs`` lists alternatives: either boxes or masks suffice."""
    prefer: ClassVar[str] = "masks"
    """The annotation used when the context has both."""

    def __init__(self, *, region: str = "auto") -> None:
        super().__init__()
        if region not in REGIONS:
            raise MetricError(f"{self.name}: region must be one of {REGIONS}, got {region!r}")
        self.region = region

    def regions(self, ctx: MetricContext) -> torch.Tensor:
        """(N, *size) bool object regions for ``ctx``."""
        if self.region == "masks" and ctx.masks is None:
            raise MetricError(f"{self.name} was asked for region='masks' but got no masks")
        if self.region == "boxes" and ctx.boxes is None:
            raise MetricError(f"{self.name} was asked for region='boxes' but got no boxes")
        prefer = self.prefer if self.region == "auto" else self.region
        return object_regions(ctx, self.name, prefer)


@register("pointing_game", "pointing")
class PointingGame(LocalisationMetric):
    r"""Pointing game (Zhang et al., 2018, "Top-down neural attention by excitation
    backprop"): does the map's maximum fall on the object?

    .. math::
        \mathrm{hit}_n = \frac{|P_n \cap R^t_n|}{|P_n|}\,[\max M_n > \min M_n],
        \qquad P_n = \arg\max_p M_n[p]

    with :math:`R^t_n` the object region (mask when given, else box) grown by a disk of
    radius :math:`t` = ``tolerance`` pixels (Zhang et al. use 15 px on ~224 px images;
    the default 0 is the strict game). Tied maxima share the credit (the expected hit of a
    random tie-break); a constant map is a miss. The mean over images is the hit rate; its
    chance level is the region's area fraction. See :func:`pointing_hit_rate`.

    Quantus 0.6.0 (``quantus.PointingGame``) agrees for ``tolerance=0`` and a unique
    maximum; it counts any tied maximum in the mask as a hit (a constant map hits) and
    has no tolerance.
    """

    reference = "Zhang et al., 2018"

    def __init__(self, *, tolerance: int = 0, region: str = "auto") -> None:
        super().__init__(region=region)
        if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
            raise MetricError(f"pointing_game: tolerance must be an int >= 0, got {tolerance!r}")
        self.tolerance = tolerance

    def __call__(self, ctx: MetricContext) -> torch.Tensor:
        return pointing_hit_rate(ctx.maps, self.regions(ctx), tolerance=self.tolerance)


@register("energy_pointing_game", "energy_game")
class EnergyPointingGame(LocalisationMetric):
    r"""Energy-based pointing game (Wang et al., 2020, "Score-CAM"): the share of the
    map's energy inside the object's bounding box.

    .. math::
        E_n = \frac{\sum_{p \in B_n} M^+_n[p]}{\sum_p M^+_n[p]}

    The paper defines it on bounding boxes, so this metric uses the boxes when given and
    otherwise each mask's bounding box (``region="masks"`` uses the masks themselves,
    which is :class:`RelevanceMass`). NaN for a map with no positive mass. Quantus 0.6.0
    has no energy game; ``quantus.AttributionLocalisation`` (Kohlbrenner et al., 2020) with
    ``abs=False, positive_attributions=True`` is the same ratio up to its ``+1e-9`` in
    the denominator.
    """

    reference = "Wang et al., 2020"
    prefer = "boxes"

    def __call__(self, ctx: MetricContext) -> torch.Tensor:
        return mass_fraction(ctx.maps, self.regions(ctx))


@register("relevance_mass", "relevance_mass_accuracy")
class RelevanceMass(LocalisationMetric):
    r"""Relevance mass accuracy (Arras et al., 2022, "CLEVR-XAI"): the share of the
    map's positive mass inside the object mask (the boxes, filled, when no masks).

    .. math::
        \mathrm{RMA}_n = \frac{\sum_{p \in R_n} M^+_n[p]}{\sum_p M^+_n[p]}

    NaN for a map with no positive mass. Quantus 0.6.0 (``quantus.RelevanceMassAccuracy``)
    agrees on non-negative maps; it sums signed values (negative relevance lowers both
    sums).
    """

    reference = "Arras et al., 2022"

    def __call__(self, ctx: MetricContext) -> torch.Tensor:
        return mass_fraction(ctx.maps, self.regions(ctx))


@register("relevance_rank", "relevance_rank_accuracy")
class RelevanceRank(LocalisationMetric):
    r"""Relevance rank accuracy (Arras et al., 2022, "CLEVR-XAI"): the share of the
    :math:`K = |R|` top-ranked pixels that lie in the object mask (or filled box).

    .. math::
        \mathrm{RRA}_n = \frac{|\mathrm{top}_{K_n}(M_n) \cap R_n|}{K_n}

    with ties at the cut shared fairly (:func:`rank_accuracy`). Quantus 0.6.0
    (``quantus.RelevanceRankAccuracy``) agrees when there is no tie at the cut; it breaks
    ties by ``np.argsort`` (quicksort) order, so a map with a plateau straddling the cut
    (e.g. zeros) scores what the sort happens to put first.
    """

    reference = "Arras et al., 2022"

    def __call__(self, ctx: MetricContext) -> torch.Tensor:
        return rank_accuracy(ctx.maps, self.regions(ctx))
