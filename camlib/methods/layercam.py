"""LayerCAM (Jiang et al., 2021) and HiResCAM (Draelos & Carin, 2020)."""

from __future__ import annotations

import torch

from ..base import register
from .families import GradientCAM


@register("layercam", "layer-cam")
class LayerCAM(GradientCAM):
    r"""LayerCAM: every position weighted by its own positive gradient.

    .. math:: L = \mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}(g_k) \odot A_k\Big)

    Suited to early, high-resolution layers, and to fusing several layers.
    """

    def combine(self, act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return (grad.clamp_min(0) * act).sum(1).relu_()


@register("hirescam", "hires-cam")
class HiResCAM(GradientCAM):
    r"""HiResCAM: the element-wise product of gradient and activation, summed over channels.

    .. math:: L = \mathrm{ReLU}\Big(\sum_k g_k \odot A_k\Big)

    Provably faithful for heads that end in global average pooling + linear: there it
    equals Grad-CAM's map at every position with the positional gradient kept.
    """

    def combine(self, act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return (grad * act).sum(1).relu_()
