"""Ablation-CAM (Desai & Ramaswamy, 2020)."""

from __future__ import annotations

import torch

from ..base import register
from ..capture import Capture, run_forward
from ..errors import LayerError
from ..layouts import Arrangement
from ..targets import Targets, class_scores
from .families import PerturbationCAM, _index_args, work


def zero_channels(t: torch.Tensor, channels: torch.Tensor, a: Arrangement) -> torch.Tensor:
    """A copy of a layer's output (in its own layout) with channel ``channels[j]`` of row j
    set to 0."""
    out = t.clone()
    rows = torch.arange(t.shape[0], device=t.device)
    if a.kind == "channels_last":
        out.movedim(-1, 1)[rows, channels] = 0
    elif a.kind == "tokens":
        out[rows, a.prefix :, channels] = 0
    else:
        out[rows, channels] = 0
    return out


@register("ablationcam", "ablation-cam")
class AblationCAM(PerturbationCAM):
    r"""Ablation-CAM: each channel weighted by the drop in score when it is zeroed.

    .. math:: w_k = \frac{y - y_k}{y}, \quad L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

    with :math:`y` the target score and :math:`y_k` the score with channel k of the layer
    output set to 0 (the rest of the network re-run on it). A channel that is already all
    zero has :math:`y_k = y` and is not re-run; where :math:`y = 0` the weights are 0.
    Costs one forward pass per (image, channel), ``batch_size`` at a time.
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
        if arrangement.kind == "custom":
            raise LayerError(
                "AblationCAM zeroes channels in the layer's own output, which a custom "
                "reshape_transform hides; pass layout='channels_first'/'channels_last'/'tokens' "
                "instead"
            )
        ref, n, args = self.layers[layer], inputs.shape[0], self._forward_args

        def run(rows: torch.Tensor, channels: torch.Tensor) -> object:
            def edit(i: int, out: torch.Tensor) -> torch.Tensor:
                return zero_channels(out, channels, arrangement)

            return run_forward(
                self.model,
                inputs.index_select(0, rows),
                None,
                layers=[ref],
                graph="none",
                forward_args=_index_args(args, rows, n),
                edit=edit,
                select=False,
            ).output

        keep = act.flatten(2).ne(0).any(-1)  # an all-zero channel cannot change the score
        ablated = self.evaluate(inputs, keep, cap, targets, run, class_scores)
        y = work(cap.scores)[:, None]  # type: ignore[union-attr]
        ablated = torch.where(keep, ablated, y)
        nonzero = y != 0
        return torch.where(nonzero, (y - ablated) / torch.where(nonzero, y, 1), 0)
