"""Guided Backprop (Springenberg et al., 2015) and Guided Grad-CAM (Selvaraju et al., 2017)."""

from __future__ import annotations

import torch
from torch import nn

from ..base import Explainer, register
from ..errors import LayerError, warn
from ..guided_relu import GuideSwitch, activation_types
from ..layers import LayerSpec
from ..maps import fuse, normalize_minmax, upsample
from ..targets import Targets
from .families import work
from .gradcam import gradcam_map


class InputGradient(Explainer):
    """Signed (N, C, *size) maps of the input, from one forward pass with a full graph,
    scaled to [-1, 1] by their largest absolute value."""

    graph = "from_input"
    signed = True

    def guided_forward(self, inputs: torch.Tensor, targets: Targets, switch: GuideSwitch):
        cap = self.forward(inputs, targets, guide=switch)
        if switch.recorded == 0:
            kinds = activation_types(self.model)
            uses = f" (the model's activations: {', '.join(kinds)})" if kinds else ""
            warn(
                f"{type(self).__name__}: no activation of {type(self.model).__name__} was guided"
                f"{uses}, so the result is the plain input gradient. camlib guides ReLU, ReLU6 "
                f"and hardtanh(0, t) calls."
            )
        return cap


@register("guided_backprop", "guidedbackprop", "gbp")
class GuidedBackprop(InputGradient):
    r"""Gradient of the score w.r.t. the input where every ReLU passes back only positive
    gradients at positive inputs: :math:`\partial_x \leftarrow \max(\partial_y, 0)\,[x > 0]`.

    Every ReLU is guided: ``nn.ReLU`` modules (in-place or not) and functional
    ``F.relu``/``torch.relu``/``Tensor.relu`` calls (see :mod:`camlib.guided_relu`).
    Returns (N, C, *size) in [-1, 1] (``normalize=True`` divides each map by its largest
    absolute value). Takes no target layer.
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
        cap = self.guided_forward(inputs, targets, GuideSwitch(guided=True))
        return self.gradient(cap.scores, cap.inputs)  # type: ignore[arg-type]


@register("guided_gradcam", "guidedgradcam", "ggcam")
class GuidedGradCAM(InputGradient):
    r"""Guided Backprop times the upsampled Grad-CAM of ``target_layer``:
    :math:`G \odot \mathrm{up}(L_{\text{Grad-CAM}})`.

    One forward pass for the whole batch: the ReLUs record a switchable node, the first
    backward (score -> layer, ordinary ReLU gradients) gives Grad-CAM, the second
    (score -> input, guided gradients) gives Guided Backprop over the same graph.
    Returns (N, C, *size) in [-1, 1] (not [0, 1]: the guided gradient is signed);
    ``upsample`` is ignored (the map is at input size). With several layers, their
    Grad-CAMs are upsampled, min-max normalised and fused before the product.
    """

    def attribute(self, inputs: torch.Tensor, targets: Targets) -> torch.Tensor:
        switch = GuideSwitch(guided=False)
        cap = self.guided_forward(inputs, targets, switch)
        acts, arrangements = self.feature_maps(cap)  # shapes checked before any backward
        grads = self.gradients(cap.scores, cap.activations, retain_graph=True)  # type: ignore[arg-type]
        size = tuple(inputs.shape[2:])
        cams = [
            upsample(gradcam_map(work(act), work(a.apply(g))), size)
            for act, a, g in zip(acts, arrangements, grads, strict=True)
        ]
        cam = cams[0] if len(cams) == 1 else fuse([normalize_minmax(c) for c in cams], self.fuse)
        switch.guided = True
        guided = self.gradient(cap.scores, cap.inputs)  # type: ignore[arg-type]
        return work(guided) * cam.unsqueeze(1)
