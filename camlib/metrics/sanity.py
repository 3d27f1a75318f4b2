r"""Sanity checks (Adebayo et al., 2018, "Sanity Checks for Saliency Maps"): does the map
change when the model does?"""

from __future__ import annotations

import torch


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    r"""Rank the entries of each row from 1 (smallest) to M, giving ties their mean rank.

    For a row :math:`v` sorted as :math:`v_{(1)} \le \dots \le v_{(M)}`, a run of tied
    values occupying sorted positions :math:`p..q` gets rank :math:`(p + q) / 2` each
    (the "average" method of ``scipy.stats.rankdata``). Fully batched: ties are found on
    the sorted rows and averaged with one ``scatter_add``.

    Args:
        values: (N, M) tensor (flatten maps with ``maps.flatten(1)``).

    Returns:
        (N, M) float64 ranks.

    Example:
        >>> average_ranks(torch.tensor([[10.0, 30.0, 20.0, 20.0]])).tolist()
        [[1.0, 4.0, 2.5, 2.5]]
    """
    if values.dim() != 2:
        raise ValueError(f"values must be (N, M), got shape {tuple(values.shape)}")
    n, m = values.shape
    sorted_vals, order = values.sort(dim=1, stable=True)
    new_group = torch.ones_like(sorted_vals, dtype=torch.bool)
    new_group[:, 1:] = sorted_vals[:, 1:] != sorted_vals[:, :-1]
    group = new_group.long().cumsum(dim=1) - 1  # 0-based group id within each row
    group = group + torch.arange(n, device=values.device)[:, None] * m  # unique across rows
    position = torch.arange(1, m + 1, device=values.device, dtype=torch.float64).expand(n, m)
    total = torch.zeros(n * m, device=values.device, dtype=torch.float64)
    count = torch.zeros(n * m, device=values.device, dtype=torch.float64)
    total.scatter_add_(0, group.reshape(-1), position.reshape(-1))
    count.scatter_add_(0, group.reshape(-1), torch.ones_like(position).reshape(-1))
    mean_rank = (total / count.clamp_min(1))[group]  # (N, M), in sorted order
    ranks = torch.empty_like(mean_rank)
    ranks.scatter_(1, order, mean_rank)
    return ranks


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r"""Spearman rank correlation between paired maps, one value per image.

    With :math:`r^a, r^b` the average ranks (:func:`average_ranks`) of the M entries of
    :math:`a_n` and :math:`b_n`,

    .. math::
        \rho_n = \frac{\sum_i (r^a_i - \bar r^a)(r^b_i - \bar r^b)}
                      {\sqrt{\sum_i (r^a_i - \bar r^a)^2}\,\sqrt{\sum_i (r^b_i - \bar r^b)^2}}

    i.e. the Pearson correlation of the ranks, which handles ties exactly as
    ``scipy.stats.spearmanr``. :math:`\rho = 1` for any strictly increasing transform of
    the same map, :math:`-1` for a reversed order. Where a map is constant its ranks have
    no spread and :math:`\rho_n` is undefined: it is returned as NaN (use ``nanmean``).

    Used for the model-parameter randomisation test of Adebayo et al. (2018): maps of a
    trained model against maps of the same architecture with re-initialised weights; a
    method that explains the model should give a low :math:`|\rho|`.

    Args:
        a, b: (N, ...) tensors of the same shape; everything after the first dimension
            is one map.

    Returns:
        (N,) float64 tensor in [-1, 1] (NaN for constant maps).
    """
    if a.shape != b.shape:
        raise ValueError(
            f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.dim() < 2:
        raise ValueError(f"expected (N, ...) batches of maps, got shape {tuple(a.shape)}")
    ra = average_ranks(a.flatten(1))
    rb = average_ranks(b.to(a.device).flatten(1))
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    num = (ra * rb).sum(dim=1)
    den = ra.pow(2).sum(dim=1).sqrt() * rb.pow(2).sum(dim=1).sqrt()
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.nan).clamp(-1.0, 1.0)
