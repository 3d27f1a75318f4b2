"""XGrad-CAM (Fu et al., 2020, "Axiom-based Grad-CAM")."""

from __future__ import annotations

import torch

from ..base import register
from .families import GradientCAM, spatial_sum


@register("xgradcam", "xgrad-cam")
class XGradCAM(GradientCAM):
    r"""XGrad-CAM: channel weights are activation-weighted gradient sums.

    .. math:: w_k = \frac{\sum_{ij} A_{k,ij}\, g_{k,ij}}{\sum_{ij} A_{k,ij}}, \quad
              L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

    A channel whose activations sum to exactly 0 gets weight 0 (no epsilon;
    pytorch-grad-cam adds 1e-7 to the denominator).
    """

    def channel_weights(self, act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        total, weighted = spatial_sum(act), spatial_sum(act * grad)
        nonzero = total != 0
        return torch.where(nonzero, weighted / torch.where(nonzero, total, 1), 0)
