"""Smooth Grad-CAM++ (Omeiza et al., 2019, "Smooth Grad-CAM++: An Enhanced Inference Level
Visualization Technique for Deep Convolutional Neural Network Models")."""

from __future__ import annotations

import torch
from torch import nn

from ..base import MethodError, register
from ..targets import Targets
from .families import GradientCAM, spatial_sum, weighted_sum, work


def noisy_copies(inputs: torch.Tensor, samples: int, noise: float, seed: int) -> torch.Tensor:
    r"""(S * N, ...) copies :math:`x + \epsilon`, sample-major, with
    :math:`\epsilon \sim \mathcal{N}(0, \sigma^2)` and :math:`\sigma` = ``noise`` times each
    image's value range: the very noise :class:`camlib.Smooth` draws with the same seed."""
    gen = torch.Generator(device=inputs.device).manual_seed(seed)
    flat = inputs.flatten(1)
    span = (flat.amax(1) - flat.amin(1)).view(-1, *[1] * (inputs.dim() - 1))
    copies = []
    for _ in range(samples):
        x = inputs
        if noise > 0:
            eps = torch.randn(inputs.shape, generator=gen, device=inputs.device, dtype=inputs.dtype)
            x = inputs + eps * (noise * span)
        copies.append(x)
    return torch.cat(copies)


@register("smoothgradcampp", "smoothgradcam++", "smoothgradcamplusplus")
class SmoothGradCAMPlusPlus(GradientCAM):
    r"""Smooth Grad-CAM++: Grad-CAM++ weights from gradients averaged over noisy copies.

    .. math::
        D_p = \frac{1}{S}\sum_{s=1}^{S} g(x + \epsilon_s)^p, \quad
        \alpha_{k,ij} = \frac{D_{2,k,ij}}{2 D_{2,k,ij} + \big(\sum_{ab} A_{k,ab}\big) D_{3,k,ij}},
        \quad w_k = \sum_{ij} \alpha_{k,ij}\,\mathrm{ReLU}(D_{1,k,ij}),
        \quad L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

    with :math:`g(x) = \partial y_c / \partial A` at the noisy copy, :math:`A` the clean
    input's activation, the class c fixed on the clean input, and
    :math:`\epsilon_s \sim \mathcal{N}(0, \sigma^2)`, :math:`\sigma` = ``noise`` times each
    image's value range (:class:`camlib.Smooth`'s noise with the same seed). No epsilon:
    where the denominator is exactly 0, :math:`\alpha = 0`. With one sample and
    ``noise=0`` it is Grad-CAM++. torchcam's ``SmoothGradCAMpp`` departs from this: its
    weights use the *last* noisy gradient instead of :math:`D_1`, its denominator sums
    :math:`A \cdot D_3` over positions per channel, it adds 1e-8, and it combines them with
    the last noisy copy's activation.

    Cost: one no-grad forward of the clean batch, then forwards (graph from the layer) and
    one backward of the N * S noisy copies, ``batch_size`` rows at a time (``None``: all at
    once). A callable target is evaluated one sample (N images) at a time.

    Args:
        samples: noisy copies per image (default 8).
        noise: the noise's standard deviation as a fraction of each image's value range.
        seed: seeds the noise.
        batch_size: rows per forward (``None``: all N * S copies at once).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer="auto",
        *,
        samples: int = 8,
        noise: float = 0.1,
        seed: int = 0,
        batch_size: int | None = None,
        **options,
    ) -> None:
        super().__init__(model, target_layer, **options)
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise MethodError(
                f"SmoothGradCAMPlusPlus: samples must be a positive int, got {samples!r}"
            )
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
            raise MethodError(f"SmoothGradCAMPlusPlus: noise must be a number >= 0, got {noise!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise MethodError(
                f"SmoothGradCAMPlusPlus: batch_size must be a positive int or None, got {batch_size!r}"
            )
        self.samples, self.noise, self.seed, self.batch_size = (
            samples,
            float(noise),
            seed,
            batch_size,
        )

    def attribute(self, inputs: torch.Tensor, targets: Targets) -> list[torch.Tensor]:
        cap = self.forward(inputs, targets, graph="none")  # the clean A; classes fixed here
        acts, arrangements = self.feature_maps(cap)
        n = inputs.shape[0]
        copies = noisy_copies(inputs, self.samples, self.noise, self.seed)
        moments = [[torch.zeros_like(work(a)) for _ in range(3)] for a in acts]  # sums of g^p
        if callable(targets):
            chunks = [
                (torch.arange(s * n, (s + 1) * n, device=inputs.device), targets)
                for s in range(self.samples)
            ]
        else:
            classes = cap.classes.tolist()  # type: ignore[union-attr]
            step = len(copies) if self.batch_size is None else self.batch_size
            rows = torch.arange(len(copies), device=inputs.device)
            chunks = [
                (rows[i : i + step], [classes[r % n] for r in range(i, min(i + step, len(copies)))])
                for i in range(0, len(copies), step)
            ]
        args = self._forward_args
        for rows, chunk_targets in chunks:
            images = rows.remainder(n)
            fwd = tuple(
                a.index_select(0, images)
                if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == n
                else a
                for a in args
            )
            noisy = self.forward(
                copies.index_select(0, rows), chunk_targets, forward_args=fwd, record=False
            )
            grads = self.gradients(noisy.scores, noisy.activations)  # type: ignore[arg-type]
            for sums, a, grad in zip(moments, arrangements, grads, strict=True):
                g = work(a.apply(grad))
                sums[0].index_add_(0, images, g)
                sums[1].index_add_(0, images, g * g)
                sums[2].index_add_(0, images, g * g * g)
        return [
            self.combine_moments(work(act), *(m / self.samples for m in sums))
            for act, sums in zip(acts, moments, strict=True)
        ]

    @staticmethod
    def combine_moments(
        act: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor, d3: torch.Tensor
    ) -> torch.Tensor:
        """The map from the clean activation and the averaged powers of the gradient."""
        total = spatial_sum(act).view(*act.shape[:2], *([1] * (act.dim() - 2)))
        denom = 2 * d2 + total * d3
        nonzero = denom != 0
        alpha = torch.where(nonzero, d2 / torch.where(nonzero, denom, 1), 0)
        return weighted_sum(spatial_sum(alpha * d1.clamp_min(0)), act).relu_()
