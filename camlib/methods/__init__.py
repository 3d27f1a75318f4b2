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

# round 2 (a)
from .dff import Concepts, DeepFeatureFactorization
from .eigengradcam import EigenGradCAM
from .fem import FEM
from .fullgrad import FullGrad, FullGradients
from .gradcam_elementwise import GradCAMElementWise
from .kpcacam import KPCACAM
from .randomcam import RandomCAM
from .segeigencam import SegEigenCAM
from .shapleycam import ShapleyCAM

__all__ += [
    "FEM",
    "KPCACAM",
    "Concepts",
    "DeepFeatureFactorization",
    "EigenGradCAM",
    "FullGrad",
    "FullGradients",
    "GradCAMElementWise",
    "RandomCAM",
    "SegEigenCAM",
    "ShapleyCAM",
]

# round 2 (b)
from .finercam import FinerCAM  # noqa: E402
from .iscam import ISCAM  # noqa: E402
from .legrad import LeGrad  # noqa: E402
from .refinecam import RefineCAM  # noqa: E402
from .sess import SESS  # noqa: E402
from .smoothgradcampp import SmoothGradCAMPlusPlus  # noqa: E402
from .sscam import SSCAM  # noqa: E402
from .wrapped import WrappedCAM  # noqa: E402

__all__ += [
    "ISCAM",
    "SESS",
    "SSCAM",
    "FinerCAM",
    "LeGrad",
    "RefineCAM",
    "SmoothGradCAMPlusPlus",
    "WrappedCAM",
]
