"""Class Activation Mapping (Zhou et al., 2016) for GAP + linear heads."""

from __future__ import annotations

import torch
from torch import nn

from ..base import Explainer, register
from ..errors import LayerError, TargetError
from ..layers import LayerSpec, layer_name, resolve_layer
from ..targets import Targets


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
class CAM(Explainer):
    r"""CAM: :math:`L^c = \mathrm{ReLU}(\sum_k w^c_k A^k)` with the classifier's weights.

    Valid when the logits are :math:`y^c = \frac{1}{hw}\sum_{ij}\sum_k w^c_k A^k_{ij} + b^c`
    (global average pooling then a linear layer, in either order). camlib checks that
    identity on every call and raises if the head is anything else. On such heads
    ``CAM == GradCAM * (h * w)`` before normalisation. Needs no gradient at all.

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
        reshape_transform=None,
    ) -> None:
        super().__init__(model, target_layer, reshape_transform=reshape_transform)
        self.fc_layer: nn.Module | None = None
        self.fc_name: str | None = None
        self._auto_fc = fc_layer is None or fc_layer == "auto"
        if not self._auto_fc:
            self.fc_layer = resolve_layer(model, fc_layer, what="fc_layer")  # type: ignore[arg-type]
            self.fc_name = layer_name(model, self.fc_layer)

    def attribute(self, inputs: torch.Tensor, targets: Targets) -> torch.Tensor:
        if callable(targets):
            raise TargetError(
                "CAM explains class scores of a GAP + linear head; a callable target needs a "
                "gradient method (GradCAM)"
            )
        cap = self.forward(inputs, targets, graph="none")
        act = self.feature_map(cap.activation)
        fc, name = self._classifier(act.shape[1], cap.output)
        if self._auto_fc:  # the classifier found for this layer, for the caller to see
            self.fc_layer, self.fc_name = fc, name
        weight, bias = classifier_weights(fc, name)
        if weight.shape[1] != act.shape[1]:
            raise LayerError(
                f"fc_layer {name!r} takes {weight.shape[1]} features but layer "
                f"{self.layer_name!r} has {act.shape[1]} channels; CAM needs the classifier that "
                f"directly follows global pooling of this layer"
            )
        w = weight[cap.classes].to(act.dtype)  # (N, C)
        maps = torch.einsum("nc,nchw->nhw", w, act)
        self._check_head(maps, act, w, bias, cap, name)
        return torch.relu(maps)

    def _classifier(self, channels: int, output: object) -> tuple[nn.Module, str]:
        if not self._auto_fc:
            return self.fc_layer, self.fc_name  # type: ignore[return-value]
        num_classes = output.shape[1]  # type: ignore[union-attr]
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
        self, maps: torch.Tensor, act: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
        cap, name: str,
    ) -> None:
        """Check y^c == mean_ij(sum_k w_k^c A^k_ij) + b^c, i.e. that the head is GAP + linear.

        The tolerance scales with the size of the terms being summed,
        mean_ij(sum_k |w_k^c A^k_ij|) + |b^c|, so it holds for tiny and huge logits alike.
        """
        implied = maps.mean(dim=(1, 2))
        size = torch.einsum("nc,nc->n", w.abs(), act.abs().mean(dim=(2, 3)))
        if bias is not None:
            implied = implied + bias[cap.classes].to(implied.dtype)
            size = size + bias[cap.classes].abs().to(size.dtype)
        gap = (implied - cap.scores.to(implied.dtype)).abs()
        # Rounding grows with the working precision: 1e-4 in float32, more in half types.
        coarsest = max(torch.finfo(cap.scores.dtype).eps, torch.finfo(act.dtype).eps)
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
                f"{self.layer_name!r} and fc = {name!r}, but the model's scores differ from that by "
                f"up to {worst:.3g} of their size. The head is not global-average-pooling + linear "
                f"(or the layer is not the last feature map); use GradCAM, which works for any "
                f"head.{mode}"
            )
