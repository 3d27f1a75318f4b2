"""Grad-CAM (Selvaraju et al., 2017)."""

from __future__ import annotations

import torch

from ..base import Explainer, register
from ..targets import Targets


def gradcam_map(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    r"""Grad-CAM from an (N, C, h, w) activation and its gradient.

    .. math:: L^c = \mathrm{ReLU}\Big(\sum_k \alpha_k^c A^k\Big), \quad
              \alpha_k^c = \frac{1}{hw}\sum_{i,j} \frac{\partial y^c}{\partial A^k_{ij}}
    """
    n, _, h, w = activation.shape
    weights = grad.mean(dim=(2, 3))  # (N, C)
    maps = torch.bmm(weights.unsqueeze(1).to(activation.dtype), activation.flatten(2))
    return maps.view(n, h, w).relu_()


@register("gradcam", "grad-cam", "grad_cam")
class GradCAM(Explainer):
    """Grad-CAM: channel weights are the spatially averaged gradients of the score.

    Only d(score)/d(activation) is computed, and no graph is recorded before the target
    layer, so a call costs about one inference pass. Works for any head, any target.
    """

    def attribute(self, inputs: torch.Tensor, targets: Targets) -> torch.Tensor:
        cap = self.forward(inputs, targets, graph="from_layer")
        activation = self.feature_map(cap.activation.detach())  # shape checked before backward
        grad = self.gradient(cap.scores, cap.activation)
        return gradcam_map(activation, self.feature_map(grad))
