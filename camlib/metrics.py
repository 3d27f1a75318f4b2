r"""Metrics for explanations: localisation, sanity checks and faithfulness.

Every function is batched and torch-only: it takes (N, ...) tensors and returns one
number per image (or one curve per image), on the inputs' device, with no Python loop
over images. They work on any maps, from camlib or elsewhere.

Conventions:

* ``maps`` are (N, H, W) saliency maps; larger means more important. Every metric here
  is unchanged when a map is multiplied by a positive number.
* ``boxes`` are (N, 4) integer tensors ``x0, y0, x1, y1`` in pixels with **exclusive**
  upper bounds, as in slicing: the box covers ``image[y0:y1, x0:x1]``.
* ``size`` is ``(H, W)``.

Localisation: :func:`pointing_game`, :func:`box_area_fraction` (the hit rate of a random
point), :func:`box_energy_fraction` (the share of the map inside the box),
:func:`boxes_from_masks`.

Sanity (Adebayo et al., 2018, "Sanity Checks for Saliency Maps"):
:func:`rank_correlation` (Spearman, per image) between the maps of a trained model and of
the same model with randomised weights; a method whose maps barely change does not
explain the model. :func:`average_ranks` is the ranking it uses.

Faithfulness (Petsiuk et al., 2018, "RISE"): :func:`deletion_curve` and
:func:`insertion_curve` remove or add pixels in the map's order and follow the model's
probability of the target class; :func:`auc` summarises a curve.
:func:`gaussian_blur` makes the blurred canvas often used as the insertion start.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "auc",
    "average_ranks",
    "box_area_fraction",
    "box_energy_fraction",
    "boxes_from_masks",
    "deletion_curve",
    "gaussian_blur",
    "insertion_curve",
    "pointing_game",
    "rank_correlation",
]


# -- localisation ------------------------------------------------------------------------


def _check_maps(maps: torch.Tensor, name: str = "maps") -> None:
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"{name} must be an (N, H, W) tensor, got {shape}")


def _check_boxes(boxes: torch.Tensor, n: int | None = None) -> None:
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be an (N, 4) tensor of x0, y0, x1, y1, got {shape}")
    if n is not None and boxes.shape[0] != n:
        raise ValueError(f"got {boxes.shape[0]} boxes for {n} maps")


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


# -- sanity checks ---------------------------------------------------------------------


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    r"""Rank the entries of each row from 1 (smallest) to M, giving ties their mean rank.

    For a row :math:`v` sorted as :math:`v_{(1)} \le \dots \le v_{(M)}`, a run of tied
    values occupying sorted positions :math:`p..q` gets rank :math:`(p + q) / 2` each
    (the "average" method of ``scipy.stats.rankdata``). Fully batched: ties are found on
    the sorted rows and averaged with one ``scatter_add``.

    Args:
        values: (N, M) tensor (flatten maps with ``maps.flatten(1)``).

    Returns:
        (N, M) float64 ranks.

    Example:
        >>> average_ranks(torch.tensor([[10.0, 30.0, 20.0, 20.0]])).tolist()
        [[1.0, 4.0, 2.5, 2.5]]
    """
    if values.dim() != 2:
        raise ValueError(f"values must be (N, M), got shape {tuple(values.shape)}")
    n, m = values.shape
    sorted_vals, order = values.sort(dim=1, stable=True)
    new_group = torch.ones_like(sorted_vals, dtype=torch.bool)
    new_group[:, 1:] = sorted_vals[:, 1:] != sorted_vals[:, :-1]
    group = new_group.long().cumsum(dim=1) - 1  # 0-based group id within each row
    group = group + torch.arange(n, device=values.device)[:, None] * m  # unique across rows
    position = torch.arange(1, m + 1, device=values.device, dtype=torch.float64).expand(n, m)
    total = torch.zeros(n * m, device=values.device, dtype=torch.float64)
    count = torch.zeros(n * m, device=values.device, dtype=torch.float64)
    total.scatter_add_(0, group.reshape(-1), position.reshape(-1))
    count.scatter_add_(0, group.reshape(-1), torch.ones_like(position).reshape(-1))
    mean_rank = (total / count.clamp_min(1))[group]  # (N, M), in sorted order
    ranks = torch.empty_like(mean_rank)
    ranks.scatter_(1, order, mean_rank)
    return ranks


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r"""Spearman rank correlation between paired maps, one value per image.

    With :math:`r^a, r^b` the average ranks (:func:`average_ranks`) of the M entries of
    :math:`a_n` and :math:`b_n`,

    .. math::
        \rho_n = \frac{\sum_i (r^a_i - \bar r^a)(r^b_i - \bar r^b)}
                      {\sqrt{\sum_i (r^a_i - \bar r^a)^2}\,\sqrt{\sum_i (r^b_i - \bar r^b)^2}}

    i.e. the Pearson correlation of the ranks, which handles ties exactly as
    ``scipy.stats.spearmanr``. :math:`\rho = 1` for any strictly increasing transform of
    the same map, :math:`-1` for a reversed order. Where a map is constant its ranks have
    no spread and :math:`\rho_n` is undefined: it is returned as NaN (use ``nanmean``).

    Used for the model-parameter randomisation test of Adebayo et al. (2018): maps of a
    trained model against maps of the same architecture with re-initialised weights; a
    method that explains the model should give a low :math:`|\rho|`.

    Args:
        a, b: (N, ...) tensors of the same shape; everything after the first dimension
            is one map.

    Returns:
        (N,) float64 tensor in [-1, 1] (NaN for constant maps).
    """
    if a.shape != b.shape:
        raise ValueError(
            f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.dim() < 2:
        raise ValueError(f"expected (N, ...) batches of maps, got shape {tuple(a.shape)}")
    ra = average_ranks(a.flatten(1))
    rb = average_ranks(b.to(a.device).flatten(1))
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    num = (ra * rb).sum(dim=1)
    den = ra.pow(2).sum(dim=1).sqrt() * rb.pow(2).sum(dim=1).sqrt()
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.nan).clamp(-1.0, 1.0)


# -- faithfulness ------------------------------------------------------------------------

Baseline = float | torch.Tensor


def _target_tensor(targets: int | Sequence[int] | torch.Tensor, n: int, device) -> torch.Tensor:
    t = torch.as_tensor(targets, dtype=torch.long, device=device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"got {t.numel()} targets for {n} images; give one per image or one int")
    return t


def _saliency_curve(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    targets: int | Sequence[int] | torch.Tensor,
    steps: int,
    baseline: Baseline,
    batch_size: int | None,
    insert: bool,
    softmax: bool,
) -> torch.Tensor:
    if inputs.dim() != 4:
        raise ValueError(f"inputs must be (N, C, H, W), got shape {tuple(inputs.shape)}")
    _check_maps(maps)
    n, _, h, w = inputs.shape
    if maps.shape != (n, h, w):
        raise ValueError(
            f"maps must be (N, H, W) = {(n, h, w)} to match the inputs, got {tuple(maps.shape)}; "
            f"upsample them to the input size first (camlib methods do by default)"
        )
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = inputs.device
    tgt = _target_tensor(targets, n, device)
    base = torch.as_tensor(baseline, dtype=inputs.dtype, device=device).expand_as(inputs)
    # position[n, p] = where pixel p comes in the map's descending order (ties: pixel index)
    order = maps.detach().to(device).flatten(1).argsort(dim=1, descending=True, stable=True)
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(h * w, device=device).expand(n, h * w))
    position = position.view(n, 1, h, w)
    chunk = batch_size or n
    curve = torch.empty(n, steps + 1, device=device)
    with torch.no_grad():
        for k in range(steps + 1):
            changed = position < round(k * h * w / steps)  # the k/steps most salient pixels
            x = torch.where(changed, inputs, base) if insert else torch.where(changed, base, inputs)
            for s in range(0, n, chunk):
                out = model(x[s : s + chunk])
                out = out.softmax(dim=1) if softmax else out
                curve[s : s + chunk, k] = out.gather(1, tgt[s : s + chunk, None])[:, 0]
    return curve


def deletion_curve(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    targets: int | Sequence[int] | torch.Tensor,
    steps: int = 20,
    baseline: Baseline = 0.0,
    *,
    batch_size: int | None = None,
    softmax: bool = True,
) -> torch.Tensor:
    r"""Deletion curve: the target probability as the most salient pixels are removed.

    Pixels are ordered by decreasing map value (ties by pixel index, row-major). At step
    :math:`k = 0..K` the first :math:`\mathrm{round}(k\,HW/K)` pixels (all channels) are
    replaced by the baseline :math:`b`:

    .. math::
        x^{(k)} = m_k \odot b + (1 - m_k) \odot x, \qquad
        c_k = \mathrm{softmax}(f(x^{(k)}))_{t}

    A faithful map makes the probability fall fast, so a *lower* :func:`auc` is better.
    The model runs ``steps + 1`` times on the batch (under ``torch.no_grad``); put it in
    ``eval()`` mode first.

    Args:
        model: classifier returning (N, K) logits.
        inputs: (N, C, H, W) images, already normalised as the model expects.
        maps: (N, H, W) saliency maps at the input size.
        targets: the class to follow: one int, or N ints / an (N,) tensor.
        steps: number of steps :math:`K`; the curve has ``steps + 1`` points, at removed
            fractions ``0, 1/K, ..., 1``.
        baseline: what removed pixels become: a number (e.g. the normalised value of a
            black pixel) or a tensor broadcastable to ``inputs`` (a blurred copy, noise).
        batch_size: run the model on at most this many images at a time (default: all).
        softmax: follow softmax probabilities (default) or, if ``False``, raw logits.

    Returns:
        (N, steps + 1) tensor; column 0 is the score of the intact image.
    """
    return _saliency_curve(
        model, inputs, maps, targets, steps, baseline, batch_size, insert=False, softmax=softmax
    )


def insertion_curve(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    targets: int | Sequence[int] | torch.Tensor,
    steps: int = 20,
    baseline: Baseline = 0.0,
    *,
    batch_size: int | None = None,
    softmax: bool = True,
) -> torch.Tensor:
    r"""Insertion curve: the target probability as the most salient pixels are added back.

    The reverse of :func:`deletion_curve`: start from the baseline canvas :math:`b` and
    copy in the first :math:`\mathrm{round}(k\,HW/K)` pixels of the map's order:

    .. math::
        x^{(k)} = m_k \odot x + (1 - m_k) \odot b, \qquad
        c_k = \mathrm{softmax}(f(x^{(k)}))_{t}

    A faithful map makes the probability rise fast, so a *higher* :func:`auc` is better.
    The baseline is whatever you pass: a constant canvas (``baseline=0.0``, or the value of
    a black pixel) or a blurred copy of the images, ``gaussian_blur(inputs, sigma)``, as in
    RISE (Petsiuk et al., 2018).

    Args:
        model, inputs, maps, targets, steps, batch_size, softmax: as in
            :func:`deletion_curve`.
        baseline: the starting canvas: a number or a tensor broadcastable to ``inputs``.

    Returns:
        (N, steps + 1) tensor; column 0 is the score of the baseline, the last column the
        score of the intact image.
    """
    return _saliency_curve(
        model, inputs, maps, targets, steps, baseline, batch_size, insert=True, softmax=softmax
    )


def auc(curve: torch.Tensor) -> torch.Tensor:
    r"""Area under each curve sampled at evenly spaced points of [0, 1] (trapezoidal rule).

    With :math:`K + 1` points :math:`c_0..c_K` at :math:`x_k = k / K`,

    .. math:: \mathrm{AUC} = \frac{1}{K}\Big(\sum_{k=0}^{K} c_k - \frac{c_0 + c_K}{2}\Big)

    so a constant curve :math:`c` has area :math:`c`.

    Args:
        curve: (N, K + 1) curves (from :func:`deletion_curve` / :func:`insertion_curve`),
            or a single (K + 1,) curve.

    Returns:
        (N,) tensor (a 0-d tensor for a single curve).
    """
    if curve.shape[-1] < 2:
        raise ValueError(f"a curve needs at least 2 points, got {curve.shape[-1]}")
    k = curve.shape[-1] - 1
    return (curve.sum(dim=-1) - 0.5 * (curve[..., 0] + curve[..., -1])) / k


def gaussian_blur(
    inputs: torch.Tensor, sigma: float, kernel_size: int | None = None
) -> torch.Tensor:
    r"""Blur (N, C, H, W) images with a separable Gaussian, reflecting at the borders.

    Kernel :math:`g(u) \propto \exp(-u^2 / 2\sigma^2)` for :math:`|u| \le r`, normalised
    to sum 1, with radius :math:`r = \lceil 3\sigma \rceil` unless ``kernel_size`` is
    given (odd). Used as the insertion start canvas (:func:`insertion_curve`).
    """
    if inputs.dim() != 4:
        raise ValueError(f"inputs must be (N, C, H, W), got shape {tuple(inputs.shape)}")
    if sigma <= 0:
        return inputs.clone()
    size = kernel_size or 2 * math.ceil(3 * sigma) + 1
    if size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {size}")
    r = size // 2
    u = torch.arange(-r, r + 1, device=inputs.device, dtype=inputs.dtype)
    g = torch.exp(-(u**2) / (2 * sigma**2))
    g = g / g.sum()
    c = inputs.shape[1]
    mode = "reflect" if min(inputs.shape[-2:]) > r else "replicate"
    x = F.pad(inputs, (r, r, r, r), mode=mode)
    x = F.conv2d(x, g.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)
    return F.conv2d(x, g.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)
