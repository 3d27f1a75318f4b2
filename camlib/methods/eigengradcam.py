"""EigenGrad-CAM: Eigen-CAM (Muhammad & Yeasin, 2020) of the gradient-weighted activations."""

from __future__ import annotations

import torch

from ..base import register
from .eigencam import first_component
from .families import GradientCAM


@register("eigengradcam", "eigengrad-cam")
class EigenGradCAM(GradientCAM):
    r"""EigenGrad-CAM: the first principal direction of :math:`A \odot g`.

    .. math:: M_n = \big[(A \odot g)_{n,k,ij}\big]_{(ij),\,k} \in \mathbb{R}^{hw \times C},
              \quad L_n = \mathrm{ReLU}\big(\pm M_n v_1\big)

    with :math:`v_1` the first right singular vector of :math:`M_n`, not centred, the sign
    chosen so that :math:`\sum_{ij} M_n v_1 \geq 0`: exactly camlib's Eigen-CAM (see
    :class:`~camlib.methods.eigencam.EigenCAM`) applied to :math:`A \odot g`, so the map is
    class-specific. The method is pytorch-grad-cam's (``EigenGradCAM``, no paper); it
    centres :math:`M_n` and leaves the sign to the SVD, so its maps can come out inverted.
    Costs Grad-CAM's passes plus one C x C (or hw x hw) eigen-decomposition per image.
    """

    differentiable = False
    nondifferentiable_reason = (
        "its map is an eigenvector whose sign is fixed by a discontinuous rule, and whose "
        "gradient is undefined at repeated eigenvalues"
    )

    def combine(self, act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return first_component(act * grad).relu_()
