"""Grad-CAM element-wise (pytorch-grad-cam's ``GradCAMElementWise``)."""

from __future__ import annotations

import torch

from ..base import register
from .families import GradientCAM


@register("gradcam_elementwise", "gradcamelementwise", "gradcam-elementwise")
class GradCAMElementWise(GradientCAM):
    r"""Grad-CAM element-wise: each position's gradient-activation product, its negative
    part dropped before the channels are summed.

    .. math:: L = \mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}(g_k \odot A_k)\Big)

    Unlike HiResCAM (:math:`\mathrm{ReLU}(\sum_k g_k \odot A_k)`) a channel cannot cancel
    another at a position; unlike LayerCAM the sign of :math:`A` counts too. There is no
    paper: the method is pytorch-grad-cam's (Gildenblat et al.), whose formula this is.
    Costs what Grad-CAM costs.
    """

    def combine(self, act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return (grad * act).clamp_min_(0).sum(1)
