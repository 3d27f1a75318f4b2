r"""Cost: what a map costs to compute, measured by the runner.

The runner (:func:`camlib.evaluate`) times each method's call and counts the model's
forward passes, and hands both to the metrics as ``ctx.seconds`` and ``ctx.forwards``
((N,) tensors, one value per image: the batch's total divided among its images). These
metrics report them so that cost sits in the same table as quality:

| name | value | better |
| --- | --- | --- |
| ``ms_per_map`` | :math:`1000\,s_n`, milliseconds | lower |
| ``forwards_per_map`` | :math:`f_n`, forward passes of the model | lower |

Timing depends on the machine, the batch size and what else runs; compare methods from
one run only.
"""

from __future__ import annotations

import torch

from ..errors import MetricError
from .registry import Metric, MetricContext, register


def _measured(ctx: MetricContext, field: str, metric: str) -> torch.Tensor:
    value = getattr(ctx, field)
    if value is None:
        raise MetricError(
            f"{metric} reads ctx.{field}, which the runner measures; it is None here (run "
            f"the metric through camlib.evaluate, or give MetricContext({field}=...))"
        )
    value = torch.as_tensor(value)
    if value.shape != (ctx.n,):
        raise MetricError(
            f"{metric}: ctx.{field} must hold one value per image, shape ({ctx.n},), got "
            f"{tuple(value.shape)}"
        )
    return value.to(device=ctx.maps.device, dtype=torch.float64)


@register("ms_per_map", "milliseconds")
class MsPerMap(Metric):
    r"""Milliseconds spent computing each map: :math:`1000\, s_n` with :math:`s_n` =
    ``ctx.seconds`` (measured by the runner)."""

    category = "cost"
    higher_is_better = False
    reference = "measured"

    def __call__(self, ctx: MetricContext) -> torch.Tensor:
        return 1000.0 * _measured(ctx, "seconds", "ms_per_map")


@register("forwards_per_map", "forwards")
class ForwardsPerMap(Metric):
    r"""Forward passes of the model spent on each map: :math:`f_n` = ``ctx.forwards``
    (counted by the runner; 1 for Grad-CAM, one per channel batch for Score-CAM)."""

    category = "cost"
    higher_is_better = False
    reference = "measured"

    def __call__(self, ctx: MetricContext) -> torch.Tensor:
        return _measured(ctx, "forwards", "forwards_per_map")
