"""Score-CAM (Wang et al., 2020)."""

from __future__ import annotations

import torch

from ..base import register
from ..capture import Capture
from ..layouts import Arrangement
from ..targets import Targets, class_probabilities
from .families import PerturbationCAM, _index_args, constant_channels, minmax_masks


@register("scorecam", "score-cam")
class ScoreCAM(PerturbationCAM):
    r"""Score-CAM: each channel weighted by the score of the input masked with it.

    .. math:: H_k = \mathrm{minmax}\big(\mathrm{up}(A_k)\big), \quad
              w_k = \mathrm{softmax}\big(f(X \odot H_k)\big)_c, \quad
              L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

    ``up`` is bilinear (``align_corners=False``) to the input size. A constant
    :math:`H_k` is skipped (weight 0, no forward pass spent). For a one-logit binary head
    the softmax is the sigmoid of the class's score; for a callable target,
    :math:`w_k` is the target's score on the masked input. Costs one forward pass per
    (image, channel), ``batch_size`` at a time.
    """

    def channel_weights(
        self,
        inputs: torch.Tensor,
        act: torch.Tensor,
        layer: int,
        arrangement: Arrangement,
        cap: Capture,
        targets: Targets,
    ) -> torch.Tensor:
        size, n = tuple(inputs.shape[2:]), inputs.shape[0]
        args = self._forward_args

        def run(rows: torch.Tensor, channels: torch.Tensor) -> object:
            masks = minmax_masks(act, rows, channels, size).to(inputs.dtype)
            return self.model(inputs.index_select(0, rows) * masks, *_index_args(args, rows, n))

        return self.evaluate(
            inputs, ~constant_channels(act), cap, targets, run, class_probabilities
        )
