"""Eigen-CAM (Muhammad & Yeasin, 2020)."""

from __future__ import annotations

import torch

from ..base import register
from ..capture import Capture
from .families import ActivationCAM


def first_component(act: torch.Tensor) -> torch.Tensor:
    r"""The projection of each (positions x channels) activation matrix on its first right
    singular vector, sign fixed so the map sums to >= 0: (N, C, *grid) -> (N, *grid).

    With :math:`M = U \Sigma V^\top`, :math:`Mv_1 = \sigma_1 u_1`. It is computed from the
    smaller Gram matrix (:math:`M^\top M` or :math:`MM^\top`) with ``eigh`` in float64,
    which is exact to rounding and far cheaper than an SVD of M.
    """
    n, c = act.shape[:2]
    m = act.reshape(n, c, -1).transpose(1, 2)  # (N, P, C), not centred
    if c <= m.shape[1]:
        gram = (m.transpose(1, 2) @ m).double()
        v = torch.linalg.eigh(gram).eigenvectors[..., -1].to(m.dtype)  # (N, C)
        proj = torch.bmm(m, v.unsqueeze(2)).squeeze(2)
    else:
        gram = (m @ m.transpose(1, 2)).double()
        vals, vecs = torch.linalg.eigh(gram)
        proj = (vecs[..., -1] * vals[..., -1:].clamp_min(0).sqrt()).to(m.dtype)
    sign = torch.where(proj.sum(1, keepdim=True) < 0, -1.0, 1.0).to(proj.dtype)
    return (proj * sign).view(n, *act.shape[2:])


@register("eigencam", "eigen-cam")
class EigenCAM(ActivationCAM):
    r"""Eigen-CAM: the activations' first principal direction, with no gradient.

    .. math:: M_n = \big[A_{n,k,ij}\big]_{(ij),\,k} \in \mathbb{R}^{hw \times C}, \quad
              L_n = \mathrm{ReLU}\big(\pm M_n v_1\big)

    with :math:`v_1` the first right singular vector of :math:`M_n` (not centred), the sign
    chosen so that :math:`\sum_{ij} M_n v_1 \geq 0`. The map does not depend on the class:
    ``targets`` only choose the class reported in ``classes``/``scores``. pytorch-grad-cam
    centres :math:`M_n` and leaves the sign of :math:`v_1` to the SVD, so its maps can come
    out inverted.
    """

    def combine(self, act: torch.Tensor, layer: int, cap: Capture) -> torch.Tensor:
        return first_component(act).relu_()
