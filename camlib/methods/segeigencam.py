"""Seg-Eigen-CAM (Chung & Ying, 2025)."""

from __future__ import annotations

import torch

from ..base import register
from .eigencam import first_component
from .families import GradientCAM


def centred_component(m: torch.Tensor) -> torch.Tensor:
    r"""The projection of each centred (positions x channels) matrix on its first right
    singular vector, flipped when its most negative value is larger in magnitude than its
    largest: (N, C, *grid) -> (N, *grid).

    Centring subtracts each channel's mean over positions; the projection then sums to 0,
    so the sign rule looks at the extremes instead (Chung & Ying's Eq. 13; with ties, no
    flip).
    """
    flat = m.flatten(2)
    proj = first_component((flat - flat.mean(-1, keepdim=True)).view_as(m)).flatten(1)
    flip = proj.amin(1).abs() > proj.amax(1).abs()
    return torch.where(flip[:, None], -proj, proj).view(m.shape[0], *m.shape[2:])


@register("segeigencam", "seg-eigen-cam", "segeigen-cam")
class SegEigenCAM(GradientCAM):
    r"""Seg-Eigen-CAM: the first principal component of :math:`|g| \odot A`, sign-corrected.

    .. math:: M_n = \big[(|g| \odot A)_{n,k,ij}\big]_{(ij),\,k}, \quad
              \bar M_n = M_n - \mathbf{1}\,\mathrm{mean}_{ij}(M_n), \quad
              p = \bar M_n v_1, \quad L_n = \mathrm{ReLU}(s\,p),\;
              s = \begin{cases} -1 & |\min p| > |\max p| \\ 1 & \text{else} \end{cases}

    with :math:`v_1` the first right singular vector of the centred :math:`\bar M_n`
    (Chung & Ying, "Seg-Eigen-CAM: Eigen-Value-Based Visual Explanations for Semantic
    Segmentation Models", Applied Sciences 15(13), 2025; Eq. 10-13). This is what
    pytorch-grad-cam's ``SegEigenCAM`` computes (it centres, as its Eigen-CAM does);
    unlike camlib's Eigen-CAM and EigenGrad-CAM, which do not centre. The absolute
    gradient keeps positions whose gradient is negative. Works with any target (a
    :class:`~camlib.SegmentationTarget` for segmentation models). Costs Grad-CAM's passes
    plus one eigen-decomposition per image.
    """

    differentiable = False
    nondifferentiable_reason = (
        "its map is an eigenvector whose sign is fixed by a discontinuous rule, and whose "
        "gradient is undefined at repeated eigenvalues"
    )

    def combine(self, act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return centred_component(grad.abs() * act).relu_()
