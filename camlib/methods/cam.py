"""Class Activation Mapping (Zhou et al., 2016) for GAP + linear heads."""

from __future__ import annotations

import torch
from torch import nn

from ..base import register
from ..capture import Capture
from ..errors import LayerError
from ..layers import LayerSpec, layer_name, resolve_layer
from ..targets import class_logits
from .families import ActivationCAM, weighted_sum


def classifier_weights(fc: nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(K, C) weight and (K,) bias (detached) of a Linear or 1x1 Conv2d classifier."""
    bias = fc.bias.detach() if getattr(fc, "bias", None) is not None else None
    if isinstance(fc, nn.Linear):
        return fc.weight.detach(), bias
    if isinstance(fc, nn.Conv2d) and fc.kernel_size == (1, 1) and fc.groups == 1:
        return fc.weight.detach().flatten(1), bias
    raise LayerError(
        f"fc_layer {name!r} is a {type(fc).__name__}; CAM needs an nn.Linear or a 1x1 nn.Conv2d "
        f"classifier after global average pooling"
    )


def _in_out(m: nn.Module) -> tuple[int, int] | None:
    """(inputs, outputs) of a Linear or 1x1 Conv2d classifier candidate, else ``None``."""
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1:
        return m.in_channels, m.out_channels
    return None


@register("cam")
class CAM(ActivationCAM):
    r"""CAM: :math:`L^c = \mathrm{ReLU}(\sum_k w^c_k A^k)` with the classifier's weights.

    Valid when the logits are :math:`y^c = \frac{1}{hw}\sum_{ij}\sum_k w^c_k A^k_{ij} + b^c`
    (global average pooling then a linear layer, in either order). camlib checks that
    identity on every call and raises if the head is anything else. On such heads
    ``CAM == GradCAM * (h * w)`` before normalisation. Needs no gradient at all; explains
    class scores only. For a one-logit binary head, class 0's weights are minus the logit's.

    Args:
        fc_layer: the classifier (name or module). ``"auto"``/``None``: the last
            ``nn.Linear`` or 1x1 ``nn.Conv2d`` whose input width matches the layer's channels.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec = "auto",
        *,
        fc_layer: LayerSpec = "auto",
        **options,
    ) -> None:
        super().__init__(model, target_layer, **options)
        self.fc_layer: nn.Module | None = None
        self.fc_name: str | None = None
        self._auto_fc = fc_layer is None or fc_layer == "auto"
        if not self._auto_fc:
            self.fc_layer = resolve_layer(model, fc_layer, what="fc_layer")  # type: ignore[arg-type]
            self.fc_name = layer_name(model, self.fc_layer)

    class_targets_only = True

    def combine(self, act: torch.Tensor, layer: int, cap: Capture) -> torch.Tensor:
        logits = class_logits(cap.output, act.shape[0])
        fc, name = self._classifier(act.shape[1], logits.shape[1])
        if self._auto_fc:  # the classifier found for this layer, for the caller to see
            self.fc_layer, self.fc_name = fc, name
        weight, bias = classifier_weights(fc, name)
        if weight.shape[1] != act.shape[1]:
            raise LayerError(
                f"fc_layer {name!r} takes {weight.shape[1]} features but layer "
                f"{self.layers[layer].spec!r} has {act.shape[1]} channels; CAM needs the "
                f"classifier that directly follows global pooling of this layer"
            )
        classes = cap.classes
        if weight.shape[0] == 1:  # binary head: class 1 is the logit, class 0 minus it
            sign = torch.where(classes == 1, 1.0, -1.0).to(act.dtype)[:, None]
            w = weight.to(act.dtype).expand(act.shape[0], -1) * sign
            b = None if bias is None else bias.to(act.dtype).expand(act.shape[0]) * sign[:, 0]
        else:
            w = weight[classes].to(act.dtype)  # (N, C)
            b = None if bias is None else bias[classes].to(act.dtype)
        maps = weighted_sum(w, act)
        self._check_head(maps, act, w, b, cap, name, layer)
        return maps.relu_()

    def _classifier(self, channels: int, num_classes: int) -> tuple[nn.Module, str]:
        if not self._auto_fc:
            return self.fc_layer, self.fc_name  # type: ignore[return-value]
        found = None
        for name, m in self.model.named_modules():
            if _in_out(m) == (channels, num_classes):
                found = (m, name)
        if found is None:
            raise LayerError(
                f"CAM found no classifier for layer {self.layer_name!r}: no nn.Linear or 1x1 "
                f"nn.Conv2d maps its {channels} channels to the {num_classes} outputs. The head is "
                f"not global-average-pooling + linear; pass fc_layer= or use GradCAM."
            )
        return found

    def _check_head(
        self,
        maps: torch.Tensor,
        act: torch.Tensor,
        w: torch.Tensor,
        bias: torch.Tensor | None,
        cap: Capture,
        name: str,
        layer: int,
    ) -> None:
        """Check y^c == mean_ij(sum_k w_k^c A^k_ij) + b^c, i.e. that the head is GAP + linear.

        The tolerance scales with the size of the terms being summed,
        mean_ij(sum_k |w_k^c A^k_ij|) + |b^c|, so it holds for tiny and huge logits alike.
        """
        implied = maps.flatten(1).mean(1)
        size = torch.einsum("nc,nc->n", w.abs(), act.abs().flatten(2).mean(2))
        if bias is not None:
            implied = implied + bias.to(implied.dtype)
            size = size + bias.abs().to(size.dtype)
        gap = (implied - cap.scores.to(implied.dtype)).abs()
        # Rounding grows with the working precision: 1e-4 in float32, more in half types.
        coarsest = max(
            torch.finfo(cap.scores.dtype).eps,
            torch.finfo(act.dtype).eps,
            torch.finfo(cap.activations[layer].dtype).eps,
        )
        rtol = max(1e-4, 64 * coarsest)
        if not bool((gap <= rtol * size + torch.finfo(size.dtype).tiny).all()):
            worst = float((gap / size.clamp_min(torch.finfo(size.dtype).tiny)).max())
            mode = (
                " The model is in training mode: dropout and batch statistics change the "
                "logits; call model.eval() first."
                if self.model.training
                else ""
            )
            raise LayerError(
                f"CAM needs logits y = fc(global_avg_pool(A)) with A the output of layer "
                f"{self.layers[layer].spec!r} and fc = {name!r}, but the model's scores differ from that by "
                f"up to {worst:.3g} of their size. The head is not global-average-pooling + linear "
                f"(or the layer is not the last feature map); use GradCAM, which works for any "
                f"head.{mode}"
            )
