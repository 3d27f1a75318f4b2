"""Grad-CAM++ (Chattopadhay et al., 2018)."""

from __future__ import annotations

import torch

from ..base import register
from .families import GradientCAM, spatial_sum


@register("gradcam++", "gradcampp", "gradcamplusplus")
class GradCAMPlusPlus(GradientCAM):
    r"""Grad-CAM++: pixel-wise weighted positive gradients.

    .. math::
        \alpha_{k,ij} = \frac{g_{k,ij}^2}{2 g_{k,ij}^2 + \big(\sum_{ab} A_{k,ab}\big)\, g_{k,ij}^3},
        \quad w_k = \sum_{ij} \alpha_{k,ij}\,\mathrm{ReLU}(g_{k,ij}),
        \quad L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

    (the exponential-score closed form of the paper, as pytorch-grad-cam and Captum users
    know it). No epsilon: where the denominator is exactly 0, :math:`\alpha` is 0.
    pytorch-grad-cam (1.5.7) adds 1e-6 to the denominator, which makes its maps depend on the
    gradient's scale; torchcam's version loses the denominator and reduces to
    :math:`\sum \mathrm{ReLU}(g)^3`.
    """

    def channel_weights(self, act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        g2 = grad * grad
        total = spatial_sum(act).view(*act.shape[:2], *([1] * (act.dim() - 2)))
        denom = 2 * g2 + total * g2 * grad
        nonzero = denom != 0
        alpha = torch.where(nonzero, g2 / torch.where(nonzero, denom, 1), 0)
        return spatial_sum(alpha * grad.clamp_min(0))
