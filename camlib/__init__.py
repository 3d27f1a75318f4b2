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
    FEM,
    ISCAM,
    KPCACAM,
    SESS,
    SSCAM,
    AblationCAM,
    Concepts,
    DeepFeatureFactorization,
    EigenCAM,
    EigenGradCAM,
    FinerCAM,
    FullGrad,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    GuidedBackprop,
    GuidedGradCAM,
    HiResCAM,
    LayerCAM,
    LeGrad,
    RandomCAM,
    RefineCAM,
    ScoreCAM,
    SegEigenCAM,
    ShapleyCAM,
    SmoothGradCAMPlusPlus,
    XGradCAM,
)
from .smooth import Smooth
from .targets import DetectionTarget, SegmentationTarget

__version__ = "0.3.0"

__all__ = [
    "CAM",
    "FEM",
    "ISCAM",
    "KPCACAM",
    "METHODS",
    "SESS",
    "SSCAM",
    "AblationCAM",
    "CamlibError",
    "Concepts",
    "DeepFeatureFactorization",
    "DetectionTarget",
    "EigenCAM",
    "EigenGradCAM",
    "Evaluator",
    "Explainer",
    "FinerCAM",
    "FullGrad",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "InputError",
    "LayerCAM",
    "LayerError",
    "LeGrad",
    "Leaderboard",
    "MethodError",
    "MetricError",
    "RandomCAM",
    "RefineCAM",
    "ScoreCAM",
    "SegEigenCAM",
    "SegmentationTarget",
    "ShapleyCAM",
    "Smooth",
    "SmoothGradCAMPlusPlus",
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
