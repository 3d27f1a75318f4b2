"""KPCA-CAM (Karmani et al., 2024): Eigen-CAM with kernel PCA."""

from __future__ import annotations

import numbers

import torch
from torch import nn

from ..base import MethodError, register
from ..capture import Capture
from ..layers import LayerSpec
from .families import ActivationCAM

KERNELS = ("sigmoid", "rbf", "poly", "linear")


def kernel_matrix(
    x: torch.Tensor, kernel: str, gamma: float, coef0: float, degree: int
) -> torch.Tensor:
    r"""(N, P, P) kernel between the P rows of each (N, P, C) ``x`` (scikit-learn's
    definitions): sigmoid :math:`\tanh(\gamma\langle x, y\rangle + c_0)`, rbf
    :math:`\exp(-\gamma\|x - y\|^2)`, poly :math:`(\gamma\langle x, y\rangle + c_0)^d`,
    linear :math:`\langle x, y\rangle`."""
    dot = x @ x.transpose(1, 2)
    if kernel == "linear":
        return dot
    if kernel == "sigmoid":
        return torch.tanh(gamma * dot + coef0)
    if kernel == "poly":
        return (gamma * dot + coef0) ** degree
    sq = x.pow(2).sum(-1)
    dist = (sq[:, :, None] + sq[:, None, :] - 2 * dot).clamp_min_(0)
    return torch.exp(-gamma * dist)


def kernel_first_component(
    act: torch.Tensor, kernel: str, gamma: float | None, coef0: float, degree: int
) -> torch.Tensor:
    """First kernel principal component of each image's positions: (N, C, *grid) ->
    (N, *grid), computed in float64 (see :class:`KPCACAM`)."""
    n, c = act.shape[:2]
    x = act.reshape(n, c, -1).transpose(1, 2).double()  # (N, P, C)
    x = x - x.mean(1, keepdim=True)  # each channel centred over positions
    k = kernel_matrix(x, kernel, 1.0 / c if gamma is None else gamma, coef0, degree)
    k = k - k.mean(1, keepdim=True) - k.mean(2, keepdim=True) + k.mean((1, 2), keepdim=True)
    vals, vecs = torch.linalg.eigh(k)  # ascending: the last is the largest
    proj = vecs[..., -1] * vals[..., -1:].clamp_min(0).sqrt()  # (N, P)
    peak = proj.gather(1, proj.abs().argmax(1, keepdim=True))  # largest |entry| positive
    proj = torch.where(peak < 0, -proj, proj)
    return proj.to(act.dtype).view(n, *act.shape[2:])


@register("kpcacam", "kpca-cam")
class KPCACAM(ActivationCAM):
    r"""KPCA-CAM: the activations' first kernel principal component, no gradient.

    Each image's positions are the samples: :math:`x_p \in \mathbb{R}^C` (position p's
    activations, each channel centred over positions). With the kernel matrix
    :math:`K_{pq} = \kappa(x_p, x_q)` centred in feature space,
    :math:`\tilde K = K - \mathbf{1}K - K\mathbf{1} + \mathbf{1}K\mathbf{1}`
    (:math:`\mathbf{1} = \frac{1}{P}` everywhere), and its largest eigenpair
    :math:`(\lambda_1, u_1)`,

    .. math:: L = \mathrm{ReLU}\big(\pm\sqrt{\lambda_1}\, u_1\big)

    with the sign that makes the entry of largest magnitude positive (scikit-learn's
    ``KernelPCA`` convention). Kernels (scikit-learn's definitions and defaults):
    ``"sigmoid"`` (default) :math:`\tanh(\gamma\langle x, y\rangle + c_0)`, ``"rbf"``
    :math:`\exp(-\gamma\|x - y\|^2)`, ``"poly"`` :math:`(\gamma\langle x, y\rangle +
    c_0)^d`, ``"linear"`` (the centred Eigen-CAM, up to sign), with
    :math:`\gamma = 1/C` unless given, :math:`c_0 = 1`, :math:`d = 3`. Where
    :math:`\lambda_1 \le 0` (e.g. a constant map) the map is 0. Karmani et al.,
    "KPCA-CAM: Visual Explainability of Deep Computer Vision Models using Kernel PCA",
    2024; the same computation as pytorch-grad-cam's ``KPCA_CAM``. Class-agnostic.
    Costs one forward pass plus, per image, a P x P kernel and its eigen-decomposition in
    float64 (P positions: cheap at 7x7 or 14x14, O(P^3) beyond).

    Args:
        kernel: ``"sigmoid"``, ``"rbf"``, ``"poly"`` or ``"linear"``.
        gamma: the kernel's scale (``None``: 1 / channels).
        coef0: the sigmoid and poly kernels' offset.
        degree: the poly kernel's degree.
    """

    nondifferentiable_reason = (
        "its map is a kernel eigenvector whose sign is fixed by a discontinuous rule, read "
        "from activations recorded with no graph"
    )

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec = "auto",
        *,
        kernel: str = "sigmoid",
        gamma: float | None = None,
        coef0: float = 1.0,
        degree: int = 3,
        **options,
    ) -> None:
        if kernel not in KERNELS:
            raise MethodError(f"KPCACAM: kernel must be one of {KERNELS}, got {kernel!r}")
        for label, value in (("gamma", gamma), ("coef0", coef0)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value
            ):
                raise MethodError(f"KPCACAM: {label} must be a real number, got {value!r}")
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
            raise MethodError(f"KPCACAM: degree must be a positive int, got {degree!r}")
        super().__init__(model, target_layer, **options)
        self.kernel, self.gamma, self.coef0, self.degree = kernel, gamma, float(coef0), degree

    def combine(self, act: torch.Tensor, layer: int, cap: Capture) -> torch.Tensor:
        proj = kernel_first_component(act, self.kernel, self.gamma, self.coef0, self.degree)
        return proj.relu_()
