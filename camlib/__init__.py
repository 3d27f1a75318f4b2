"""camlib: class activation maps for PyTorch CNNs.

>>> import camlib
>>> with camlib.GradCAM(model, target_layer="layer4") as cam:   # doctest: +SKIP
...     maps = cam(images)                                      # (N, H, W) in [0, 1]
"""

from __future__ import annotations

from . import metrics, viz
from .base import METHODS, Explainer, explain, get_method, register
from .errors import CamlibError, InputError, LayerError, TargetError
from .layers import find_target_layer, layer_name, resolve_layer
from .maps import normalize_absmax, normalize_minmax, upsample
from .methods import CAM, GradCAM, GuidedBackprop, GuidedGradCAM

__version__ = "0.1.0"

__all__ = [
    "CAM",
    "METHODS",
    "CamlibError",
    "Explainer",
    "GradCAM",
    "GuidedBackprop",
    "GuidedGradCAM",
    "InputError",
    "LayerError",
    "TargetError",
    "explain",
    "find_target_layer",
    "get_method",
    "layer_name",
    "metrics",
    "normalize_absmax",
    "normalize_minmax",
    "register",
    "resolve_layer",
    "upsample",
    "viz",
]
