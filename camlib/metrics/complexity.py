r"""Complexity: how concentrated is the map?

Both metrics read the absolute map only (no forward pass) and are invariant to scaling
the map by a positive constant:

| name | paper | value | better |
| --- | --- | --- | --- |
| ``sparseness`` | Chalasani et al., 2020 | Gini index of the absolute map | higher |
| ``complexity`` | Bhatt et al., 2020 | entropy of the normalised absolute map | lower |

A map with no mass (all zeros, e.g. a Grad-CAM map of a class with no positive
evidence) has neither: both give NaN for it.
"""

from __future__ import annotations

import torch

from ..errors import MetricError
from .registry import Metric, MetricContext, register


def _flat_abs(maps: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(maps, torch.Tensor) or maps.dim() < 2:
        got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise MetricError(f"{name}: maps must be an (N, *size) tensor, got {got}")
    return maps.detach().flatten(1).double().abs()


def gini_index(maps: torch.Tensor) -> torch.Tensor:
    r"""Gini index of each absolute map (Chalasani et al., 2020; Hurley & Rickard, 2009).

    With the :math:`M` values :math:`a_{(1)} \le \dots \le a_{(M)}` of :math:`|M_n|`
    sorted in ascending order,

    .. math::
        G_n = \frac{\sum_{k=1}^{M} (2k - M - 1)\, a_{(k)}}{M \sum_{k=1}^{M} a_{(k)}}

    0 for a constant map, :math:`1 - 1/M` for a single non-zero pixel (the largest value).
    NaN for an all-zero map.

    Args:
        maps: (N, *size) maps; everything after the first dimension is one map.

    Returns:
        (N,) float64 in [0, 1).
    """
    a = _flat_abs(maps, "gini_index").sort(dim=1).values
    m = a.shape[1]
    k = torch.arange(1, m + 1, device=a.device, dtype=a.dtype)
    total = a.sum(dim=1)
    g = ((2 * k - m - 1) * a).sum(dim=1) / (m * total.clamp_min(torch.finfo(a.dtype).tiny))
    return torch.where(total > 0, g, torch.nan)


def entropy(maps: torch.Tensor) -> torch.Tensor:
    r"""Shannon entropy (natural log) of each absolute map normalised to sum 1 (Bhatt et
    al., 2020).

    .. math::
        H_n = -\sum_p P_n[p] \log P_n[p], \qquad
        P_n[p] = \frac{|M_n[p]|}{\sum_q |M_n[q]|}, \qquad 0 \log 0 = 0

    0 for a single non-zero pixel, :math:`\log M` (the largest value) for a constant map.
    NaN for an all-zero map.

    Args:
        maps: (N, *size) maps.

    Returns:
        (N,) float64 in [0, log M].
    """
    a = _flat_abs(maps, "entropy")
    total = a.sum(dim=1, keepdim=True)
    p = a / total.clamp_min(torch.finfo(a.dtype).tiny)
    h = torch.special.entr(p).sum(dim=1)
    return torch.where(total[:, 0] > 0, h, torch.nan)


@register("sparseness", "gini")
class Sparseness(Metric):
    r"""Sparseness (Chalasani et al., 2020, "Concise explanations of neural networks
    using adversarial training"): the Gini index of the absolute map; higher = the mass
    sits on fewer pixels.

    .. math::
        G_n = \frac{\sum_{k=1}^{M} (2k - M - 1)\, a_{(k)}}{M \sum_k a_{(k)}},
        \qquad a_{(1)} \le \dots \le a_{(M)} \text{ the sorted } |M_n[p]|

    NaN for an all-zero map (see :func:`gini_index`). Quantus 0.6.0
    (``quantus.Sparseness``) adds ``1e-7`` to every value first, which lowers the index by
    the factor :math:`\bar a / (\bar a + 10^{-7})` and gives 0 for an all-zero map.
    """

    category = "complexity"
    higher_is_better = True
    reference = "Chalasani et al., 2020"

    def __call__(self, ctx: MetricContext) -> torch.Tensor:
        return gini_index(ctx.maps)


@register("complexity", "entropy")
class Complexity(Metric):
    r"""Complexity (Bhatt et al., 2020, "Evaluating and aggregating feature-based model
    explanations"): the entropy of the map's fractional contributions; lower = fewer
    pixels carry the mass.

    .. math::
        H_n = -\sum_p P_n[p] \log P_n[p], \qquad P_n = |M_n| / \textstyle\sum |M_n|

    Natural log; at most :math:`\log M` (:math:`M` pixels), reached by a constant map.
    NaN for an all-zero map (see :func:`entropy`). Quantus 0.6.0 (``quantus.Complexity``)
    computes :math:`-\sum P \log(P + 10^{-12})`: the same to ~1e-12.
    """

    category = "complexity"
    higher_is_better = False
    reference = "Bhatt et al., 2020"

    def __call__(self, ctx: MetricContext) -> torch.Tensor:
        return entropy(ctx.maps)
