r"""Metrics for explanations, and the registry :func:`camlib.evaluate` runs them from.

Two layers:

* **functions** - batched and torch-only: they take (N, ...) tensors and return one number
  per image (or one curve per image) on the inputs' device, with no Python loop over
  images; they work on any maps, from camlib or elsewhere (:func:`pointing_game`,
  :func:`deletion_curve`, :func:`rank_correlation`, ...);
* **registered metrics** - :class:`Metric` subclasses that read a
  :class:`MetricContext` (model, inputs, targets, maps, boxes, masks, a way to re-explain)
  and declare their category, direction, needs and cost; :func:`camlib.evaluate` ranks
  methods with them. Add your own with :func:`register`.

Conventions: ``maps`` are (N, H, W) saliency maps (larger means more important); boxes
are (N, 4) ``x0, y0, x1, y1`` in pixels with exclusive upper bounds; ``size`` is ``(H, W)``.

Categories (one module each): :mod:`~camlib.metrics.faithfulness`,
:mod:`~camlib.metrics.localisation`, :mod:`~camlib.metrics.sanity`,
:mod:`~camlib.metrics.robustness`, :mod:`~camlib.metrics.complexity`,
:mod:`~camlib.metrics.cost`.
"""

from __future__ import annotations

from . import complexity, cost, faithfulness, localisation, robustness, sanity
from .complexity import entropy, gini_index
from .faithfulness import (
    auc,
    cam_mult_scores,
    deletion_curve,
    faithfulness_correlation,
    gaussian_blur,
    insertion_curve,
    noisy_linear_imputation,
    road_curve,
)
from .localisation import (
    box_area_fraction,
    box_energy_fraction,
    boxes_from_masks,
    masks_from_boxes,
    pointing_game,
)
from .registry import (
    CATEGORIES,
    METRICS,
    NEEDS,
    Metric,
    MetricContext,
    available_metrics,
    get_metric,
    register,
)
from .robustness import max_sensitivity
from .sanity import average_ranks, rank_correlation, ssim

__all__ = [
    "ssim",
    "road_curve",
    "noisy_linear_imputation",
    "max_sensitivity",
    "masks_from_boxes",
    "gini_index",
    "faithfulness_correlation",
    "entropy",
    "cam_mult_scores",
    "CATEGORIES",
    "METRICS",
    "NEEDS",
    "Metric",
    "MetricContext",
    "auc",
    "complexity",
    "cost",
    "faithfulness",
    "localisation",
    "robustness",
    "sanity",
    "available_metrics",
    "average_ranks",
    "box_area_fraction",
    "box_energy_fraction",
    "boxes_from_masks",
    "deletion_curve",
    "gaussian_blur",
    "get_metric",
    "insertion_curve",
    "pointing_game",
    "rank_correlation",
    "register",
]
