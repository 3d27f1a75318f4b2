"""Random-CAM: random channel weights, the baseline every evaluation needs."""

from __future__ import annotations

import torch
from torch import nn

from ..base import MethodError, register
from ..capture import Capture
from ..layers import LayerSpec
from .families import ActivationCAM, weighted_sum


def random_weights(channels: int, seed: int, like: torch.Tensor) -> torch.Tensor:
    """(channels,) weights uniform in [-1, 1) drawn on the CPU from a generator seeded with
    ``seed`` (in float64, so the draw is the same for every device and precision), then
    moved to ``like``'s device and dtype."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.rand(channels, generator=gen, dtype=torch.float64).mul_(2).sub_(1)
    return w.to(device=like.device, dtype=like.dtype)


@register("randomcam", "random-cam", "random")
class RandomCAM(ActivationCAM):
    r"""Random-CAM: :math:`L = \mathrm{ReLU}\big(\sum_k w_k A_k\big)`, :math:`w_k \sim
    U[-1, 1)`.

    The weights come from a generator seeded with ``seed`` at every call, so a call is
    reproducible and an image's map does not depend on the batch it is in: every image
    (and every target layer with the same number of channels) gets the same weights.
    pytorch-grad-cam's ``RandomCAM`` draws fresh unseeded weights per (image, channel)
    from NumPy's global generator. The weights ignore the class (``targets`` only choose
    ``classes``/``scores``): a metric that cannot tell a method from this baseline
    measures nothing. No gradient, no graph.

    Args:
        seed: seeds the weights (an int).
    """

    nondifferentiable_reason = "it is a random baseline, read from activations with no graph"

    def __init__(
        self, model: nn.Module, target_layer: LayerSpec = "auto", *, seed: int = 0, **options
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise MethodError(f"RandomCAM: seed must be an int, got {seed!r}")
        super().__init__(model, target_layer, **options)
        self.seed = seed

    def combine(self, act: torch.Tensor, layer: int, cap: Capture) -> torch.Tensor:
        w = random_weights(act.shape[1], self.seed, act)
        return weighted_sum(w.expand(act.shape[0], -1), act).relu_()
