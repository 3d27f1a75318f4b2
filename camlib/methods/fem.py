"""FEM, the Feature Explanation Method (Fuad et al., 2020; Bourroux et al., 2022)."""

from __future__ import annotations

import numbers

import torch
from torch import nn

from ..base import MethodError, register
from ..capture import Capture
from ..layers import LayerSpec
from .families import ActivationCAM, weighted_sum


def fem_map(act: torch.Tensor, k: float) -> torch.Tensor:
    r"""FEM of an (N, C, *grid) activation: :math:`\sum_c \mu_c\,[A_c > \mu_c + k\sigma_c]`
    with each channel's mean and (population) standard deviation over positions."""
    flat = act.flatten(2)
    mean = flat.mean(-1)  # (N, C)
    std = flat.std(-1, correction=0)
    masks = (flat > (mean + k * std).unsqueeze(-1)).to(act.dtype).view_as(act)
    return weighted_sum(mean, masks)


@register("fem", "featureexplanationmethod")
class FEM(ActivationCAM):
    r"""FEM: each channel's unusually strong positions, weighted by the channel's mean.

    .. math:: \mu_c = \frac{1}{hw}\sum_{ij} A_{c,ij}, \quad
              \sigma_c^2 = \frac{1}{hw}\sum_{ij} (A_{c,ij} - \mu_c)^2, \quad
              L = \mathrm{ReLU}\Big(\sum_c \mu_c\,\big[A_c > \mu_c + k\,\sigma_c\big]\Big)

    The k-sigma rule binarises every channel (Fuad et al., IPTA 2020, "Features
    understanding in 3D CNNs for actions recognition in video"; Bourroux et al., ICPRAI
    2022): the map sums the binary masks weighted by the channels' global average. A
    constant channel (:math:`\sigma_c = 0`) has an empty mask; no epsilon anywhere. The
    map ignores the class (``targets`` only choose ``classes``/``scores``); no gradient.

    pytorch-grad-cam's ``FEM`` computes another formula: it weights the *activations* by
    the fraction of each channel's positions above the threshold,
    :math:`\sum_c \overline{[A_c > \mu_c + k\sigma_c]}\,A_c`.

    Args:
        k: the number of standard deviations above the mean (the papers use 2).
    """

    nondifferentiable_reason = (
        "its map sums binary masks (a threshold test), whose gradient is zero almost everywhere"
    )

    def __init__(
        self, model: nn.Module, target_layer: LayerSpec = "auto", *, k: float = 2.0, **options
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, numbers.Real) or not k == k:
            raise MethodError(f"FEM: k must be a real number of standard deviations, got {k!r}")
        super().__init__(model, target_layer, **options)
        self.k = float(k)

    def combine(self, act: torch.Tensor, layer: int, cap: Capture) -> torch.Tensor:
        return fem_map(act, self.k).relu_()
