"""The explanation methods, one file each; importing this package registers them all."""

from .cam import CAM
from .gradcam import GradCAM
from .guided import GuidedBackprop, GuidedGradCAM

__all__ = ["CAM", "GradCAM", "GuidedBackprop", "GuidedGradCAM"]
