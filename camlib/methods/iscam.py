"""IS-CAM (Naidu et al., 2020, "IS-CAM: Integrated Score-CAM for axiomatic-based
explanations")."""

from __future__ import annotations

import torch

from ..base import register
from .sscam import SampledScoreCAM


@register("iscam", "is-cam", "integratedscorecam")
class ISCAM(SampledScoreCAM):
    r"""IS-CAM: Score-CAM's weights integrated along the path of scaled masks.

    .. math:: w_k = \frac{1}{S}\sum_{s=1}^{S}
              \mathrm{softmax}\Big(f\big(X \odot \tfrac{s}{S} H_k\big)\Big)_c, \quad
              L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

    the right Riemann sum, with S = ``samples`` steps, of the class probability along the
    straight path from the empty mask to Score-CAM's mask :math:`H_k`; with ``samples=1``
    IS-CAM is Score-CAM. Deterministic. torchcam's ``ISCAM`` scales the masks by the
    cumulative sums :math:`\sum_{j \le s} j/S` (up to :math:`(S+1)/2`, past the full mask)
    and, like its Score-CAM, softmaxes score increases across channels.
    Cost: one forward + ``samples`` no-grad forwards per (image, non-constant channel).

    Args:
        samples: integration steps S (default 10, as torchcam).
        batch_size: rows per forward pass.
    """

    def perturb(self, masks: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        scale = (sample + 1).to(masks.dtype) / self.samples
        return masks * scale.view(-1, *[1] * (masks.dim() - 1))
