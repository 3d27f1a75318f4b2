r"""Robustness: does the map stay put when the input barely changes?

* :func:`max_sensitivity` - a function on tensors and any ``explain(inputs, targets)``;
* ``"max_sensitivity"`` - the registered metric, re-explaining through
  :attr:`MetricContext.explain <camlib.metrics.MetricContext>`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import MetricError
from .faithfulness import _check_images, _targets
from .registry import Metric, MetricContext, register


def max_sensitivity(
    explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: int | Sequence[int] | torch.Tensor,
    maps: torch.Tensor,
    *,
    samples: int = 10,
    radius: float = 0.2,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    r"""Max-sensitivity (Yeh et al., 2019, "On the (In)fidelity and Sensitivity of
    Explanations"), relative to the map's norm as in Quantus.

    .. math::
        \mathrm{SENS}_{\max}(x) = \max_{k = 1..K}
            \frac{\lVert e(x + \delta_k) - e(x) \rVert_2}{\lVert e(x) \rVert_2},
        \qquad \delta_k \sim \mathcal U\big([-r, r]^{C \times H \times W}\big)

    i.e. :math:`K` = ``samples`` perturbations drawn uniformly in the :math:`L_\infty`
    ball of radius :math:`r` (independent uniform noise on every input element, Quantus's
    ``uniform_noise`` with ``lower_bound=r``), and the Frobenius (:math:`L_2`) norm of the
    flattened map difference. The explanation is re-run with the *same* target class
    (not the class the noisy input predicts). Lower is better. NaN where
    :math:`e(x) = 0`.

    All noisy copies of all images are explained in one call of ``explain`` on a batch
    of :math:`K N` images (or in calls of ``batch_size`` images).

    Args:
        explain: ``explain(inputs, targets) -> (N, H, W)`` maps prepared like ``maps``.
        inputs: (N, C, H, W) images.
        targets: (N,) classes explained (or one int).
        maps: (N, H, W) maps of the clean inputs, :math:`e(x)`.
        samples: :math:`K`, perturbations per image.
        radius: :math:`r`, half-width of the uniform noise.
        generator: CPU generator the noise is drawn from (float64, then moved).
        noise: optional (K, N, C, H, W) perturbations :math:`\delta` to use instead.
        batch_size: images per ``explain`` call (default: all :math:`KN` at once).

    Returns:
        (N,) sensitivities.
    """
    n, h, w = _check_images(inputs, maps)
    if noise is not None:
        if noise.dim() != 5 or noise.shape[1:] != inputs.shape:
            raise MetricError(
                f"noise must be (samples, *inputs.shape) = (K, {', '.join(map(str, inputs.shape))})"
                f", got {tuple(noise.shape)}"
            )
        samples = noise.shape[0]
    if samples < 1:
        raise MetricError(f"samples must be >= 1, got {samples}")
    if batch_size is not None and batch_size < 1:
        raise MetricError(f"batch_size must be >= 1, got {batch_size}")
    device = inputs.device
    tgt = _targets(targets, n, device)
    if noise is None:
        u = torch.rand((samples, *inputs.shape), generator=generator, dtype=torch.float64)
        noise = (2 * u - 1) * radius
    noisy = (inputs[None] + noise.to(device=device, dtype=inputs.dtype)).flatten(0, 1)
    tgt_all = tgt.repeat(samples)  # (K N,), sample-major like ``noisy``
    chunk = batch_size or samples * n
    explained = []
    for s in range(0, samples * n, chunk):
        out = explain(noisy[s : s + chunk], tgt_all[s : s + chunk])
        if not isinstance(out, torch.Tensor) or out.shape != (min(chunk, samples * n - s), h, w):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise MetricError(f"explain returned maps of shape {shape}, expected (B, {h}, {w})")
        explained.append(out.detach())
    new = torch.cat(explained).view(samples, n, h * w)
    base = maps.detach().to(device=new.device, dtype=new.dtype).flatten(1)
    diff = (new - base[None]).norm(dim=2)  # (K, N)
    den = base.norm(dim=1)
    return torch.where(den > 0, diff.amax(dim=0) / den.clamp_min(1e-30), torch.nan)


@register("max_sensitivity", "max_sens")
class MaxSensitivity(Metric):
    r"""Max-sensitivity (Yeh et al., 2019): the largest relative change of the map over
    ``samples`` uniform perturbations of radius ``radius`` (:func:`max_sensitivity`).

    .. math:: \max_{k} \frac{\lVert e(x + \delta_k) - e(x) \rVert_2}{\lVert e(x) \rVert_2},
        \quad \delta_k \sim \mathcal U([-r, r]^{CHW})

    Lower is better. Costs ``samples`` explanations per image (each a forward and, for
    gradient methods, a backward; a perturbation method such as Score-CAM pays its own
    forwards on each), run on the noisy copies of the whole batch at once. NaN for maps
    that come without a method (``ctx.explain`` is ``None``). Options:
    ``samples`` (10; Quantus's default is 200), ``radius`` (0.2, Quantus's default, in
    the units of the model's inputs), ``batch_size`` (images per explain call).
    """

    category = "robustness"
    higher_is_better = False
    needs = frozenset({"explain"})
    reference = "Yeh et al., 2019"

    def __init__(
        self,
        samples: int = 10,
        radius: float = 0.2,
        batch_size: int | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__(**unknown)
        if int(samples) < 1 or radius <= 0:
            raise MetricError(
                f"metric {self.name!r}: samples must be >= 1 and radius > 0, got "
                f"samples={samples}, radius={radius}"
            )
        self.samples, self.radius, self.batch_size = int(samples), float(radius), batch_size

    def forwards_per_image(self) -> int:
        return self.samples

    def __call__(self, ctx: MetricContext) -> torch.Tensor:
        if ctx.explain is None:  # maps without a method (e.g. a random baseline row)
            return torch.full((ctx.n,), torch.nan, device=ctx.maps.device)
        return max_sensitivity(
            ctx.explain,
            ctx.inputs,
            ctx.targets,
            ctx.maps,
            samples=self.samples,
            radius=self.radius,
            generator=ctx.generator,
            batch_size=self.batch_size,
        )


__all__ = ["max_sensitivity"]
