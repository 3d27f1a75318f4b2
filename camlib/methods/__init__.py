"""The explanation methods, one file each; importing this package registers them all.

Each method subclasses a family of :mod:`camlib.methods.families` and states its maths.
"""

from .ablationcam import AblationCAM
from .cam import CAM
from .eigencam import EigenCAM
from .families import ActivationCAM, GradientCAM, PerturbationCAM
from .gradcam import GradCAM
from .gradcampp import GradCAMPlusPlus
from .guided import GuidedBackprop, GuidedGradCAM, InputGradient
from .layercam import HiResCAM, LayerCAM
from .scorecam import ScoreCAM
from .xgradcam import XGradCAM

__all__ = [
    "CAM",
    "AblationCAM",
    "ActivationCAM",
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradientCAM",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "InputGradient",
    "LayerCAM",
    "PerturbationCAM",
    "ScoreCAM",
    "XGradCAM",
]
