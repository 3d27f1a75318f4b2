"""Grad-CAM (Selvaraju et al., 2017)."""

from __future__ import annotations

import torch

from ..base import register
from .families import GradientCAM, weighted_sum


def gradcam_map(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    r"""Grad-CAM from an (N, C, *grid) activation and its gradient.

    .. math:: L^c = \mathrm{ReLU}\Big(\sum_k \alpha_k^c A^k\Big), \quad
              \alpha_k^c = \frac{1}{hw}\sum_{i,j} \frac{\partial y^c}{\partial A^k_{ij}}
    """
    weights = grad.flatten(2).mean(-1).to(activation.dtype)  # (N, C)
    return weighted_sum(weights, activation).relu_()


@register("gradcam", "grad-cam")
class GradCAM(GradientCAM):
    r"""Grad-CAM: channel weights are the spatially averaged gradients of the score.

    .. math:: L = \mathrm{ReLU}\Big(\sum_k \alpha_k A_k\Big), \quad
              \alpha_k = \frac{1}{hw}\sum_{ij} g_{k,ij}

    Only d(score)/d(activation) is computed, and no graph is recorded before the target
    layer, so a call costs about one inference pass. Works for any head, any target.
    """

    def combine(self, act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return gradcam_map(act, grad)
