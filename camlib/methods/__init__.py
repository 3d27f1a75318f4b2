"""The explanation methods, one file each; importing this package registers them all.

Each method subclasses a family of :mod:`camlib.methods.families` (or wraps another
method, :class:`~camlib.methods.wrapped.WrappedCAM`) and states its maths.
"""

from .ablationcam import AblationCAM
from .cam import CAM
from .dff import Concepts, DeepFeatureFactorization
from .eigencam import EigenCAM
from .eigengradcam import EigenGradCAM
from .families import ActivationCAM, GradientCAM, PerturbationCAM
from .fem import FEM
from .finercam import FinerCAM
from .fullgrad import FullGrad, FullGradients
from .gradcam import GradCAM
from .gradcam_elementwise import GradCAMElementWise
from .gradcampp import GradCAMPlusPlus
from .guided import GuidedBackprop, GuidedGradCAM, InputGradient
from .iscam import ISCAM
from .kpcacam import KPCACAM
from .layercam import HiResCAM, LayerCAM
from .legrad import LeGrad
from .randomcam import RandomCAM
from .refinecam import RefineCAM
from .scorecam import ScoreCAM
from .segeigencam import SegEigenCAM
from .sess import SESS
from .shapleycam import ShapleyCAM
from .smoothgradcampp import SmoothGradCAMPlusPlus
from .sscam import SSCAM
from .wrapped import WrappedCAM
from .xgradcam import XGradCAM

__all__ = [
    "CAM",
    "FEM",
    "ISCAM",
    "KPCACAM",
    "SESS",
    "SSCAM",
    "AblationCAM",
    "ActivationCAM",
    "Concepts",
    "DeepFeatureFactorization",
    "EigenCAM",
    "EigenGradCAM",
    "FinerCAM",
    "FullGrad",
    "FullGradients",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GradientCAM",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "InputGradient",
    "LayerCAM",
    "LeGrad",
    "PerturbationCAM",
    "RandomCAM",
    "RefineCAM",
    "ScoreCAM",
    "SegEigenCAM",
    "ShapleyCAM",
    "SmoothGradCAMPlusPlus",
    "WrappedCAM",
    "XGradCAM",
]
