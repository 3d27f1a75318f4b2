"""Shapley-CAM (Cai et al., "CAMs as Shapley Value-based Explainers", arXiv:2501.06261, 2025)."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..base import LayerError, register
from ..targets import Targets
from .families import GradientCAM, weighted_sum, work


@register("shapleycam", "shapley-cam")
class ShapleyCAM(GradientCAM):
    r"""Shapley-CAM: Grad-CAM's weights with a second-order (Hessian-vector) correction.

    .. math:: w_k = \frac{1}{hw}\sum_{ij}\Big(g - \tfrac12\, H A\Big)_{k,ij}, \quad
              L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big), \quad
              H = \frac{\partial^2 y}{\partial A\,\partial A}

    The weights are the spatial mean of the channel's approximate Shapley value, from a
    second-order Taylor expansion of the score around the activation (Cai et al., 2025,
    arXiv:2501.06261); pytorch-grad-cam's ``ShapleyCAM`` computes the same. :math:`HA` is
    one Hessian-vector product: the gradient is taken with ``create_graph=True`` on the
    graph recorded from the layer on (nothing before it), then differentiated once more
    along :math:`A`. Where the network after the layer is piecewise linear in :math:`A`
    (ReLU, max-pool, linear head, logit target) :math:`HA = 0` and the map is Grad-CAM's;
    a softmax target or smooth activations (SiLU, GELU) make it differ. The forward pass
    runs scaled-dot-product attention with its plain ("math") kernel, the one that can be
    differentiated twice (the fused CPU and CUDA kernels cannot). Costs Grad-CAM's
    forward plus two backward passes (the second through the first's graph).
    """

    differentiable = False
    nondifferentiable_reason = (
        "its weights already need a second derivative (a Hessian-vector product); a map "
        "differentiable w.r.t. the parameters would need a third-order backward, which "
        "camlib does not record"
    )

    def attribute(self, inputs: torch.Tensor, targets: Targets) -> list[torch.Tensor]:
        with sdpa_kernel(SDPBackend.MATH):  # fused attention kernels have no double backward
            cap = self.forward(inputs, targets)
        acts, arrangements = self.feature_maps(cap)  # shapes checked before any backward
        scores = cap.scores
        if not scores.requires_grad:  # type: ignore[union-attr]
            self.gradient(scores, cap.activation)  # type: ignore[arg-type]  # its clear error
        layers = cap.activations
        grads = torch.autograd.grad(
            scores.sum(),  # type: ignore[union-attr]
            layers,
            create_graph=True,
            allow_unused=True,
        )
        if any(g is None for g in grads):
            raise LayerError(f"the target scores do not depend on {self._what()}")
        maps = []
        for i, (act, a, layer, g) in enumerate(zip(acts, arrangements, layers, grads, strict=True)):
            if g.requires_grad:  # d(g . A)/dA with A held fixed: H A
                (hvp,) = torch.autograd.grad(
                    g,
                    layer,
                    grad_outputs=layer.detach(),
                    retain_graph=i < len(layers) - 1,
                    allow_unused=True,
                )
            else:  # nothing after the layer depends on it non-linearly
                hvp = None
            corrected = g.detach() if hvp is None else g.detach() - 0.5 * hvp
            weights = work(a.apply(corrected)).flatten(2).mean(-1)
            maps.append(weighted_sum(weights, work(act)).relu_())
        return maps
