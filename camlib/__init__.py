"""camlib: class activation maps for PyTorch models.

>>> import camlib
>>> with camlib.GradCAM(model, target_layer="layer4") as cam:   # doctest: +SKIP
...     maps = cam(images)                                      # (N, H, W) in [0, 1]
"""

from __future__ import annotations

from . import layouts, metrics, targets, viz
from .base import METHODS, Explainer, available_methods, explain, get_method, register
from .errors import (
    CamlibError,
    InputError,
    LayerError,
    MethodError,
    MetricError,
    TargetError,
    VizError,
)
from .evaluation import Evaluator, Leaderboard, evaluate
from .layers import find_target_layer, layer_name, resolve_layer
from .maps import fuse, normalize_absmax, normalize_minmax, upsample
from .methods import (
    CAM,
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    GuidedBackprop,
    GuidedGradCAM,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from .smooth import Smooth
from .targets import DetectionTarget, SegmentationTarget

__version__ = "0.2.0"

__all__ = [
    "CAM",
    "METHODS",
    "AblationCAM",
    "CamlibError",
    "DetectionTarget",
    "EigenCAM",
    "Evaluator",
    "Explainer",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "InputError",
    "LayerCAM",
    "LayerError",
    "Leaderboard",
    "MethodError",
    "MetricError",
    "ScoreCAM",
    "SegmentationTarget",
    "Smooth",
    "TargetError",
    "VizError",
    "XGradCAM",
    "available_methods",
    "evaluate",
    "explain",
    "find_target_layer",
    "fuse",
    "get_method",
    "layer_name",
    "layouts",
    "metrics",
    "normalize_absmax",
    "normalize_minmax",
    "register",
    "resolve_layer",
    "targets",
    "upsample",
    "viz",
]
