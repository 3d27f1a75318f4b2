"""Guided Backprop (Springenberg et al., 2015) and Guided Grad-CAM (Selvaraju et al., 2017)."""

from __future__ import annotations

import torch
from torch import nn

from ..base import Explainer, register
from ..errors import LayerError
from ..guided_relu import GuideSwitch
from ..layers import LayerSpec
from ..maps import normalize_absmax, upsample
from ..targets import Targets
from .gradcam import gradcam_map


class _SignedInputMap(Explainer):
    """Shared post-processing: (N, C, H, W) signed maps at input size, scaled to [-1, 1]."""

    def postprocess(
        self, raw: torch.Tensor, size: tuple[int, int], do_upsample: bool, do_normalize: bool
    ) -> torch.Tensor:
        return normalize_absmax(raw) if do_normalize else raw


@register("guided_backprop", "guided-backprop", "guidedbackprop", "gbp")
class GuidedBackprop(_SignedInputMap):
    r"""Gradient of the score w.r.t. the input where every ReLU passes back only positive
    gradients at positive inputs: :math:`\partial_x \leftarrow \max(\partial_y, 0)\,[x > 0]`.

    Every ReLU is guided: ``nn.ReLU`` modules (in-place or not) and functional
    ``F.relu``/``torch.relu``/``Tensor.relu`` calls (see :mod:`camlib.guided_relu`).
    Returns (N, C, H, W); with ``normalize=True`` each map is divided by its max |value|.
    """

    uses_layer = False

    def __init__(self, model: nn.Module, target_layer: LayerSpec = None, **options) -> None:
        if target_layer is not None and target_layer != "auto":
            raise LayerError(
                "GuidedBackprop explains the input and takes no target_layer; use "
                "GuidedGradCAM(model, target_layer=...) to combine it with Grad-CAM"
            )
        super().__init__(model, None, **options)

    def attribute(self, inputs: torch.Tensor, targets: Targets) -> torch.Tensor:
        cap = self.forward(inputs, targets, graph="from_input", guide=GuideSwitch(guided=True))
        return self.gradient(cap.scores, cap.inputs)


@register("guided_gradcam", "guided-gradcam", "guided_grad_cam", "ggcam")
class GuidedGradCAM(_SignedInputMap):
    """Guided Backprop times the bilinearly upsampled Grad-CAM of ``target_layer``.

    One forward pass for the whole batch: the ReLUs record a switchable node, the first
    backward (score -> layer, ordinary ReLU gradients) gives Grad-CAM, the second
    (score -> input, guided gradients) gives Guided Backprop over the same graph.
    Returns (N, C, H, W); ``upsample`` is ignored (the map is at input size).
    """

    def attribute(self, inputs: torch.Tensor, targets: Targets) -> torch.Tensor:
        switch = GuideSwitch(guided=False)
        cap = self.forward(inputs, targets, graph="from_input", guide=switch)
        activation = self.feature_map(cap.activation.detach())  # shape checked before backward
        grad = self.gradient(cap.scores, cap.activation, retain_graph=True)
        cam = gradcam_map(activation, self.feature_map(grad))
        switch.guided = True
        guided = self.gradient(cap.scores, cap.inputs)
        return guided * upsample(cam, (inputs.shape[-2], inputs.shape[-1]))[:, None]
