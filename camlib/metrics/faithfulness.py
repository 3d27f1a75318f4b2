r"""Faithfulness: does removing what the map ranks first change the model's output?

Two layers, as in the rest of :mod:`camlib.metrics`:

* functions on tensors - :func:`deletion_curve`, :func:`insertion_curve`, :func:`auc`,
  :func:`cam_mult_scores`, :func:`noisy_linear_imputation`, :func:`road_curve`,
  :func:`faithfulness_correlation`;
* registered metrics read by :func:`camlib.evaluate` - ``"deletion"``, ``"insertion"``,
  ``"average_drop"``, ``"increase_in_confidence"``, ``"road_morf"``, ``"road_lerf"``,
  ``"faithfulness_correlation"``.

Every function runs on the inputs' device, batched over images (one model call per step,
never one per image), under ``torch.no_grad()``, and leaves the model as it was (mode,
hooks, parameters, ``.grad``). The class followed is read from the logits like camlib's
explainers read it (a tensor, ``{"logits"}``/``{"out"}``, ``.logits``; a one-logit binary
head is the two classes ``logit`` and ``-logit``); ``softmax=True`` follows its
probability (sigmoid for a binary head), ``softmax=False`` the raw score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MetricError, warn
from ..targets import class_logits, class_probabilities, class_scores
from ._checks import _check_maps, _target_tensor
from .registry import Metric, MetricContext, register

Baseline = float | str | torch.Tensor
Targets = int | Sequence[int] | torch.Tensor


# -- shared checks and scoring ---------------------------------------------------------------
def _check_images(inputs: torch.Tensor, maps: torch.Tensor) -> tuple[int, int, int]:
    """(N, H, W) after checking ``inputs`` is (N, C, H, W) and ``maps`` is (N, H, W)."""
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise MetricError(f"inputs must be (N, C, H, W) images, got shape {shape}")
    try:
        _check_maps(maps)
    except ValueError as e:
        raise MetricError(str(e)) from None
    n, _, h, w = inputs.shape
    if maps.shape != (n, h, w):
        raise MetricError(
            f"maps must be (N, H, W) = {(n, h, w)} to match the inputs of shape "
            f"{tuple(inputs.shape)}, got {tuple(maps.shape)}; upsample them to the input size "
            f"first (camlib methods do by default)"
        )
    if not maps.dtype.is_floating_point:
        raise MetricError(f"maps must be floating point, got dtype {maps.dtype}")
    return n, h, w


def _targets(targets: Targets, n: int, device: torch.device) -> torch.Tensor:
    try:
        return _target_tensor(targets, n, device)
    except ValueError as e:
        raise MetricError(str(e)) from None


def _check_target_range(logits: torch.Tensor, tgt: torch.Tensor) -> None:
    """Raise if a target is not a class of ``logits`` (one host sync, on the first output)."""
    k = logits.shape[1]
    valid = 2 if k == 1 else k
    lo, hi = int(tgt.min()), int(tgt.max())
    if lo < 0 or hi >= valid:
        bad = lo if lo < 0 else hi
        image = int((tgt == bad).nonzero()[0, 0])
        what = "a one-logit binary head" if k == 1 else f"a model with {k} outputs"
        raise MetricError(
            f"target class {bad} (image {image}) is out of range for {what}: valid classes "
            f"are 0..{valid - 1}"
        )


def _score(
    model: nn.Module, x: torch.Tensor, tgt: torch.Tensor, softmax: bool, check: bool = False
) -> torch.Tensor:
    """(N,) score of class ``tgt`` for the batch ``x`` (probability or raw score)."""
    logits = class_logits(model(x), x.shape[0])
    if check:
        _check_target_range(logits, tgt)
    return class_probabilities(logits, tgt) if softmax else class_scores(logits, tgt)


def _positions(maps: torch.Tensor, descending: bool = True) -> torch.Tensor:
    """(N, H*W) rank of each pixel in the map's order (0 = first; ties by pixel index)."""
    flat = maps.detach().flatten(1)
    n, m = flat.shape
    order = flat.argsort(dim=1, descending=descending, stable=True)
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(m, device=flat.device).expand(n, m))
    return position


def _baseline(baseline: Baseline, inputs: torch.Tensor, blur_sigma: float = 5.0) -> torch.Tensor:
    """The canvas removed pixels take, broadcast to ``inputs``."""
    if isinstance(baseline, str):
        if baseline == "blur":
            return gaussian_blur(inputs, blur_sigma, kernel_size=2 * math.ceil(blur_sigma) + 1)
        if baseline == "black":
            return inputs.flatten(1).amin(1).view(-1, 1, 1, 1).expand_as(inputs)
        if baseline == "mean":
            return inputs.flatten(1).mean(1).view(-1, 1, 1, 1).expand_as(inputs)
        raise MetricError(
            f"baseline must be a number, a tensor, 'blur', 'black' or 'mean', got {baseline!r}"
        )
    base = torch.as_tensor(baseline, dtype=inputs.dtype, device=inputs.device)
    try:
        return base.expand_as(inputs)
    except RuntimeError:
        raise MetricError(
            f"baseline of shape {tuple(base.shape)} does not broadcast to the inputs of shape "
            f"{tuple(inputs.shape)}"
        ) from None


def _model_of(ctx: MetricContext, name: str) -> nn.Module:
    if ctx.model is None:
        raise MetricError(f"metric {name!r} runs the model, but the context has no model")
    return ctx.model


# -- deletion and insertion --------------------------------------------------------------------
def _saliency_curve(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    targets: Targets,
    steps: int,
    baseline: Baseline,
    batch_size: int | None,
    insert: bool,
    softmax: bool,
) -> torch.Tensor:
    n, h, w = _check_images(inputs, maps)
    if steps < 1:
        raise MetricError(f"steps must be >= 1, got {steps}")
    device = inputs.device
    tgt = _targets(targets, n, device)
    base = _baseline(baseline, inputs)
    position = _positions(maps.to(device)).view(n, 1, h, w)
    chunk = batch_size or n
    columns = []
    with torch.no_grad():
        for k in range(steps + 1):
            changed = position < round(k * h * w / steps)  # the k/steps most salient pixels
            x = torch.where(changed, inputs, base) if insert else torch.where(changed, base, inputs)
            columns.append(
                torch.cat(
                    [
                        _score(model, x[s : s + chunk], tgt[s : s + chunk], softmax, k == 0)
                        for s in range(0, n, chunk)
                    ]
                )
            )
    return torch.stack(columns, dim=1)


def deletion_curve(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    targets: Targets,
    steps: int = 20,
    baseline: Baseline = 0.0,
    *,
    batch_size: int | None = None,
    softmax: bool = True,
) -> torch.Tensor:
    r"""Deletion curve: the target probability as the most salient pixels are removed.

    Pixels are ordered by decreasing map value (ties by pixel index, row-major). At step
    :math:`k = 0..K` the first :math:`\mathrm{round}(k\,HW/K)` pixels (all channels) are
    replaced by the baseline :math:`b`:

    .. math::
        x^{(k)} = m_k \odot b + (1 - m_k) \odot x, \qquad
        c_k = \mathrm{softmax}(f(x^{(k)}))_{t}

    A faithful map makes the probability fall fast, so a *lower* :func:`auc` is better.
    The model runs ``steps + 1`` times on the batch (under ``torch.no_grad``); put it in
    ``eval()`` mode first.

    Args:
        model: classifier returning (N, K) logits.
        inputs: (N, C, H, W) images, already normalised as the model expects.
        maps: (N, H, W) saliency maps at the input size.
        targets: the class to follow: one int, or N ints / an (N,) tensor.
        steps: number of steps :math:`K`; the curve has ``steps + 1`` points, at removed
            fractions ``0, 1/K, ..., 1``.
        baseline: what removed pixels become: a number (e.g. the normalised value of a
            black pixel), a tensor broadcastable to ``inputs`` (a blurred copy, noise),
            ``"blur"`` (the RISE canvas: :func:`gaussian_blur` with :math:`\sigma = 5`,
            11x11 kernel), ``"black"`` (each image's minimum) or ``"mean"`` (its mean).
        batch_size: run the model on at most this many images at a time (default: all).
        softmax: follow softmax probabilities (default) or, if ``False``, raw logits.

    Returns:
        (N, steps + 1) tensor; column 0 is the score of the intact image.

    Raises:
        MetricError: inputs not (N, C, H, W), maps not (N, H, W) at the input size, a
            target out of range (checked on the first model output).
    """
    return _saliency_curve(
        model, inputs, maps, targets, steps, baseline, batch_size, insert=False, softmax=softmax
    )


def insertion_curve(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    targets: Targets,
    steps: int = 20,
    baseline: Baseline = 0.0,
    *,
    batch_size: int | None = None,
    softmax: bool = True,
) -> torch.Tensor:
    r"""Insertion curve: the target probability as the most salient pixels are added back.

    The reverse of :func:`deletion_curve`: start from the baseline canvas :math:`b` and
    copy in the first :math:`\mathrm{round}(k\,HW/K)` pixels of the map's order:

    .. math::
        x^{(k)} = m_k \odot x + (1 - m_k) \odot b, \qquad
        c_k = \mathrm{softmax}(f(x^{(k)}))_{t}

    A faithful map makes the probability rise fast, so a *higher* :func:`auc` is better.
    The baseline is whatever you pass: a constant canvas (``baseline=0.0``, or the value of
    a black pixel) or a blurred copy of the images (``"blur"``, or
    ``gaussian_blur(inputs, sigma)``), as in RISE (Petsiuk et al., 2018).

    Args:
        model, inputs, maps, targets, steps, batch_size, softmax: as in
            :func:`deletion_curve`.
        baseline: the starting canvas: as in :func:`deletion_curve`.

    Returns:
        (N, steps + 1) tensor; column 0 is the score of the baseline, the last column the
        score of the intact image.
    """
    return _saliency_curve(
        model, inputs, maps, targets, steps, baseline, batch_size, insert=True, softmax=softmax
    )


def auc(curve: torch.Tensor) -> torch.Tensor:
    r"""Area under each curve sampled at evenly spaced points of [0, 1] (trapezoidal rule).

    With :math:`K + 1` points :math:`c_0..c_K` at :math:`x_k = k / K`,

    .. math:: \mathrm{AUC} = \frac{1}{K}\Big(\sum_{k=0}^{K} c_k - \frac{c_0 + c_K}{2}\Big)

    so a constant curve :math:`c` has area :math:`c`.

    Args:
        curve: (N, K + 1) curves (from :func:`deletion_curve` / :func:`insertion_curve`),
            or a single (K + 1,) curve.

    Returns:
        (N,) tensor (a 0-d tensor for a single curve).
    """
    if curve.shape[-1] < 2:
        raise ValueError(f"a curve needs at least 2 points, got {curve.shape[-1]}")
    k = curve.shape[-1] - 1
    return (curve.sum(dim=-1) - 0.5 * (curve[..., 0] + curve[..., -1])) / k


def gaussian_blur(
    inputs: torch.Tensor, sigma: float, kernel_size: int | None = None
) -> torch.Tensor:
    r"""Blur (N, C, H, W) images with a separable Gaussian, reflecting at the borders.

    Kernel :math:`g(u) \propto \exp(-u^2 / 2\sigma^2)` for :math:`|u| \le r`, normalised
    to sum 1, with radius :math:`r = \lceil 3\sigma \rceil` unless ``kernel_size`` is
    given (odd). Used as the insertion start canvas (:func:`insertion_curve`).
    """
    if inputs.dim() != 4:
        raise ValueError(f"inputs must be (N, C, H, W), got shape {tuple(inputs.shape)}")
    if sigma <= 0:
        return inputs.clone()
    size = kernel_size or 2 * math.ceil(3 * sigma) + 1
    if size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {size}")
    r = size // 2
    u = torch.arange(-r, r + 1, device=inputs.device, dtype=inputs.dtype)
    g = torch.exp(-(u**2) / (2 * sigma**2))
    g = g / g.sum()
    c = inputs.shape[1]
    mode = "reflect" if min(inputs.shape[-2:]) > r else "replicate"
    x = F.pad(inputs, (r, r, r, r), mode=mode)
    x = F.conv2d(x, g.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)
    return F.conv2d(x, g.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)


class _CurveMetric(Metric):
    insert: bool = False

    def __init__(
        self, steps: int = 20, baseline: float | str = 0.0, softmax: bool = True, **unknown: Any
    ) -> None:
        super().__init__(**unknown)
        if int(steps) < 1:
            raise MetricError(f"metric {self.name!r}: steps must be >= 1, got {steps}")
        if isinstance(baseline, str) and baseline not in ("blur", "black", "mean"):
            raise MetricError(
                f"metric {self.name!r}: baseline must be a number, 'blur', 'black' or 'mean', "
                f"got {baseline!r}"
            )
        self.steps, self.baseline, self.softmax = int(steps), baseline, bool(softmax)

    def forwards_per_image(self) -> int:
        return self.steps + 1

    def __call__(self, ctx: MetricContext) -> torch.Tensor:
        model = _model_of(ctx, self.name)
        curve = _saliency_curve(
            model,
            ctx.inputs,
            ctx.maps,
            ctx.targets,
            self.steps,
            self.baseline,
            None,
            insert=self.insert,
            softmax=self.softmax,
        )
        return auc(curve)


@register("deletion")
class Deletion(_CurveMetric):
    r"""Deletion AUC (Petsiuk et al., 2018, RISE): the area under :func:`deletion_curve`.

    .. math:: \mathrm{Del} = \frac{1}{K}\Big(\sum_{k=0}^{K} c_k - \frac{c_0 + c_K}{2}\Big),
        \quad c_k = p_t\big(x \text{ with its } \mathrm{round}(kHW/K)
        \text{ top-ranked pixels set to } b\big)

    Lower is better (the probability should collapse as soon as the top pixels go).
    Options: ``steps`` (:math:`K`, default 20; ``steps + 1`` batched forwards per batch),
    ``baseline`` (default ``0.0``; ``"blur"``, ``"black"``, ``"mean"``), ``softmax``.
    """

    category = "faithfulness"
    higher_is_better = False
    needs = frozenset({"model"})
    reference = "Petsiuk et al., 2018"
    insert = False


@register("insertion")
class Insertion(_CurveMetric):
    r"""Insertion AUC (Petsiuk et al., 2018, RISE): the area under :func:`insertion_curve`.

    .. math:: \mathrm{Ins} = \frac{1}{K}\Big(\sum_{k=0}^{K} c_k - \frac{c_0 + c_K}{2}\Big),
        \quad c_k = p_t\big(b \text{ with the } \mathrm{round}(kHW/K)
        \text{ top-ranked pixels of } x\big)

    Higher is better. Options: ``steps`` (default 20), ``baseline`` (default ``"blur"``,
    the RISE canvas: a Gaussian blur with :math:`\sigma = 5` and an 11x11 kernel,
    reflecting at the borders where RISE pads with zeros), ``softmax``.
    """

    category = "faithfulness"
    higher_is_better = True
    needs = frozenset({"model"})
    reference = "Petsiuk et al., 2018"
    insert = True

    def __init__(
        self, steps: int = 20, baseline: float | str = "blur", softmax: bool = True, **unknown: Any
    ) -> None:
        super().__init__(steps=steps, baseline=baseline, softmax=softmax, **unknown)


# -- average drop / increase in confidence ---------------------------------------------------
def cam_mult_scores(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    targets: Targets,
    *,
    softmax: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Scores of the target class on the images and on the images multiplied by the map.

    .. math:: Y_t = s_t(x), \qquad O_t = s_t(x \odot M)

    with :math:`s_t` the softmax probability of class :math:`t` (``softmax=True``) or its
    logit, and :math:`M` the map broadcast over the channels (expected in [0, 1]). Two
    batched forwards. The building block of Average Drop and Increase in Confidence
    (Chattopadhay et al., 2018); ``O - Y`` is pytorch-grad-cam's
    ``CamMultImageConfidenceChange``.

    Returns:
        ``(Y, O)``, two (N,) tensors.
    """
    n, _, _ = _check_images(inputs, maps)
    tgt = _targets(targets, n, inputs.device)
    masked = inputs * maps.to(device=inputs.device, dtype=inputs.dtype)[:, None]
    with torch.no_grad():
        y = _score(model, inputs, tgt, softmax, check=True)
        o = _score(model, masked, tgt, softmax)
    return y, o


class _CamMultMetric(Metric):
    category = "faithfulness"
    needs = frozenset({"model"})
    reference = "Chattopadhay et al., 2018"

    def __init__(self, softmax: bool = True, **unknown: Any) -> None:
        super().__init__(**unknown)
        self.softmax = bool(softmax)

    def forwards_per_image(self) -> int:
        return 2

    def _scores(self, ctx: MetricContext) -> tuple[torch.Tensor, torch.Tensor]:
        model = _model_of(ctx, self.name)
        return cam_mult_scores(model, ctx.inputs, ctx.maps, ctx.targets, softmax=self.softmax)


@register("average_drop", "avg_drop")
class AverageDrop(_CamMultMetric):
    r"""Average Drop (Chattopadhay et al., 2018, Grad-CAM++): how much of the class
    probability survives when the image is multiplied by the map.

    .. math:: \mathrm{drop}_n = \frac{\max(0,\; Y_t - O_t)}{Y_t}, \qquad
        Y_t = p_t(x_n),\; O_t = p_t(x_n \odot M_n)

    with :math:`p_t` the softmax probability of the target class (``softmax=False``: the
    logit, as some re-implementations do; then a negative :math:`Y_t` makes the ratio
    meaningless). The paper reports :math:`100 \cdot` the mean over images; this metric
    returns the per-image fraction in [0, 1] (NaN where :math:`Y_t = 0`). Lower is better.
    Two batched forwards per batch. pytorch-grad-cam's ``DropInConfidence()`` with
    ``ClassifierOutputSoftmaxTarget`` returns the numerator :math:`\max(0, Y_t - O_t)`
    (not divided by :math:`Y_t`).
    """

    higher_is_better = False

    def __call__(self, ctx: MetricContext) -> torch.Tensor:
        y, o = self._scores(ctx)
        drop = (y - o).clamp_min(0)
        return torch.where(y != 0, drop / y, torch.nan)


@register("increase_in_confidence", "increase_confidence")
class IncreaseInConfidence(_CamMultMetric):
    r"""Increase in Confidence (Chattopadhay et al., 2018, Grad-CAM++): does the class
    probability *rise* when the image is multiplied by the map?

    .. math:: \mathrm{inc}_n = [\,O_t > Y_t\,], \qquad Y_t = p_t(x_n),\;
        O_t = p_t(x_n \odot M_n)

    1.0 or 0.0 per image; the paper reports the percentage of images. Higher is better.
    Equals pytorch-grad-cam's ``IncreaseInConfidence()`` with
    ``ClassifierOutputSoftmaxTarget`` (with ``softmax=False``: with ``ClassifierOutputTarget``).
    """

    higher_is_better = True

    def __call__(self, ctx: MetricContext) -> torch.Tensor:
        y, o = self._scores(ctx)
        return (o > y).to(y.dtype)


# -- ROAD: noisy linear imputation -------------------------------------------------------------
_ROAD_KERNEL = (
    (1 / 12, 1 / 6, 1 / 12),
    (1 / 6, 0.0, 1 / 6),
    (1 / 12, 1 / 6, 1 / 12),
)


def noisy_linear_imputation(
    inputs: torch.Tensor,
    removed: torch.Tensor,
    noise: float = 0.01,
    *,
    generator: torch.Generator | None = None,
    iters: int | None = None,
    return_residual: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Noisy linear imputation of ROAD (Rong et al., 2022), batched, in torch.

    Every removed pixel becomes the weighted mean of its 8 neighbours inside the image
    (weight :math:`1/6` for the 4 edge neighbours, :math:`1/12` for the 4 corners, as in
    the authors' code), which are themselves removed or kept; for each image and channel
    this is the sparse linear system, over the removed set :math:`U`,

    .. math::
        s_i\,v_i - \sum_{j \in N(i) \cap U} w_{ij}\, v_j
            = \sum_{j \in N(i) \setminus U} w_{ij}\, x_j, \qquad
        s_i = \sum_{j \in N(i)} w_{ij}, \qquad i \in U

    then :math:`\tilde x_i = v_i + \sigma\,\varepsilon_i`, :math:`\varepsilon_i \sim
    \mathcal N(0, 1)` (``noise`` :math:`= \sigma`). Its matrix is symmetric positive
    definite whenever the image keeps one pixel, so it is solved by Jacobi-preconditioned
    conjugate gradients on all images and channels at once (the operator is a 3x3
    convolution): a fixed ``iters`` iterations with no host synchronisation, then one
    check of the relative residual, warned about above 1e-4. Kept pixels are returned
    unchanged.

    Args:
        inputs: (N, C, H, W) images.
        removed: (N, H, W) bool, ``True`` where a pixel is imputed (all its channels).
        noise: standard deviation :math:`\sigma` of the Gaussian noise added to imputed
            pixels (0 for the plain linear imputation).
        generator: CPU generator for the noise (drawn in float64 on the CPU, then moved:
            the same seed gives the same noise on any device).
        iters: conjugate-gradient iterations (default :math:`\max(64, 4\max(H, W))`).
        return_residual: also return the (N,) relative residuals of the solve.

    Returns:
        (N, C, H, W) imputed images (and the residuals if asked).
    """
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise MetricError(f"inputs must be (N, C, H, W) images, got shape {shape}")
    n, c, h, w = inputs.shape
    if not isinstance(removed, torch.Tensor) or removed.shape != (n, h, w):
        shape = tuple(removed.shape) if isinstance(removed, torch.Tensor) else type(removed)
        raise MetricError(f"removed must be an (N, H, W) = {(n, h, w)} bool mask, got {shape}")
    iters = max(64, 4 * max(h, w)) if iters is None else int(iters)
    dtype = inputs.dtype if inputs.dtype == torch.float64 else torch.float32
    x = inputs.to(dtype)
    u = removed.to(device=x.device, dtype=dtype)[:, None]  # (N, 1, H, W), 1 = unknown
    kernel = torch.tensor(_ROAD_KERNEL, dtype=dtype, device=x.device).view(1, 1, 3, 3)

    def conv(t: torch.Tensor) -> torch.Tensor:  # sum_j w_ij t_j over in-image neighbours
        return F.conv2d(t.reshape(-1, 1, h, w), kernel, padding=1).view(t.shape)

    s = conv(torch.ones(1, 1, h, w, dtype=dtype, device=x.device))  # (1, 1, H, W)

    def apply(v: torch.Tensor) -> torch.Tensor:  # A v restricted to the unknowns
        return u * (s * v - conv(u * v))

    b = u * conv((1 - u) * x)
    inv_diag = u / s
    norm_b = b.flatten(2).norm(dim=2)  # (N, C)
    # start from each channel's mean over the kept pixels
    kept = (1 - u).flatten(2).sum(2).clamp_min(1)
    mean = ((1 - u) * x).flatten(2).sum(2) / kept
    v = u * mean[..., None, None]
    r = b - apply(v)
    z = inv_diag * r
    p = z
    rz = (r * z).flatten(2).sum(2)
    for _ in range(iters):
        ap = apply(p)
        pap = (p * ap).flatten(2).sum(2)
        alpha = torch.where(pap > 0, rz / pap.clamp_min(1e-300), 0.0)
        v = v + alpha[..., None, None] * p
        r = r - alpha[..., None, None] * ap
        z = inv_diag * r
        rz_new = (r * z).flatten(2).sum(2)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-300), 0.0)
        p = z + beta[..., None, None] * p
        rz = rz_new
    residual = (b - apply(v)).flatten(2).norm(dim=2) / norm_b.clamp_min(1e-30)
    residual = residual.amax(dim=1)  # (N,)
    if noise:
        eps = torch.randn((n, c, h, w), generator=generator, dtype=torch.float64)
        v = v + noise * eps.to(device=x.device, dtype=dtype)
    out = torch.where(u > 0, v, x).to(inputs.dtype)
    if return_residual:
        return out, residual
    _warn_residual(residual, iters)
    return out


def _warn_residual(residual: torch.Tensor, iters: int, tol: float = 1e-4) -> None:
    worst = float(residual.max()) if residual.numel() else 0.0
    if worst > tol:
        warn(
            f"noisy linear imputation: the linear solve reached a relative residual of "
            f"{worst:.1e} after {iters} iterations (> {tol:g}); pass a larger iters="
        )


def _removed_masks(
    maps: torch.Tensor, percentages: Sequence[float], most_relevant_first: bool
) -> list[torch.Tensor]:
    n, h, w = maps.shape
    position = _positions(maps, descending=most_relevant_first).view(n, h, w)
    return [position < round(q * h * w) for q in percentages]


def _check_percentages(percentages: Sequence[float]) -> tuple[float, ...]:
    qs = tuple(float(q) for q in percentages)
    if not qs or any(not 0.0 <= q < 1.0 for q in qs):
        raise MetricError(
            f"percentages must be fractions in [0, 1) of the pixels removed, e.g. (0.1, ..., "
            f"0.9), got {list(percentages)}"
        )
    return qs


ROAD_PERCENTAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""The removal fractions of the ROAD paper (10 %, 20 %, ..., 90 %)."""


def road_curve(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    targets: Targets,
    percentages: Sequence[float] = ROAD_PERCENTAGES,
    *,
    most_relevant_first: bool = True,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    softmax: bool = True,
    iters: int | None = None,
) -> torch.Tensor:
    r"""ROAD (Rong et al., 2022, "A Consistent and Efficient Evaluation Strategy for
    Attribution Methods"): the target score as pixels are removed by noisy linear imputation.

    For each fraction :math:`q` the :math:`\mathrm{round}(q\,HW)` pixels ranked first are
    removed - the most relevant (MoRF, map descending) or the least relevant (LeRF, map
    ascending), ties by pixel index - and imputed by :func:`noisy_linear_imputation`:

    .. math:: c_q = s_t\big(\mathrm{impute}(x, U_q)\big)

    with :math:`s_t` the softmax probability (``softmax=True``) or the logit. Imputing
    from the neighbours keeps the perturbed image close to the data, so the score drop
    comes from the information removed, not from an out-of-distribution canvas (the
    deletion metric's flaw). One batched forward per fraction.

    Args:
        model: classifier returning (N, K) logits.
        inputs: (N, C, H, W) images.
        maps: (N, H, W) maps at the input size.
        targets: the class to follow, one int or one per image.
        percentages: fractions in [0, 1) of the pixels to remove (default 0.1..0.9).
        most_relevant_first: MoRF (``True``) or LeRF (``False``).
        noise, generator, iters: as in :func:`noisy_linear_imputation`.
        softmax: probabilities (default) or raw scores.

    Returns:
        (N, len(percentages)) scores.
    """
    n, _, _ = _check_images(inputs, maps)
    qs = _check_percentages(percentages)
    tgt = _targets(targets, n, inputs.device)
    masks = _removed_masks(maps.to(inputs.device), qs, most_relevant_first)
    columns, residuals = [], []
    with torch.no_grad():
        for i, removed in enumerate(masks):
            x, res = noisy_linear_imputation(
                inputs, removed, noise, generator=generator, iters=iters, return_residual=True
            )
            residuals.append(res)
            columns.append(_score(model, x, tgt, softmax, check=i == 0))
    _warn_residual(torch.stack(residuals), iters or max(64, 4 * max(inputs.shape[-2:])))
    return torch.stack(columns, dim=1)


class _RoadMetric(Metric):
    category = "faithfulness"
    needs = frozenset({"model"})
    reference = "Rong et al., 2022"
    most_relevant_first = True

    def __init__(
        self,
        percentages: Sequence[float] = ROAD_PERCENTAGES,
        noise: float = 0.01,
        softmax: bool = True,
        iters: int | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__(**unknown)
        self.percentages = _check_percentages(percentages)
        if noise < 0:
            raise MetricError(f"metric {self.name!r}: noise must be >= 0, got {noise}")
        self.noise, self.softmax, self.iters = float(noise), bool(softmax), iters

    def forwards_per_image(self) -> int:
        return len(self.percentages)

    def __call__(self, ctx: MetricContext) -> torch.Tensor:
        curve = road_curve(
            _model_of(ctx, self.name),
            ctx.inputs,
            ctx.maps,
            ctx.targets,
            self.percentages,
            most_relevant_first=self.most_relevant_first,
            noise=self.noise,
            generator=ctx.generator,
            softmax=self.softmax,
            iters=self.iters,
        )
        return curve.mean(dim=1)


@register("road_morf", "road")
class RoadMoRF(_RoadMetric):
    r"""ROAD, most relevant first (Rong et al., 2022): the mean target probability after
    removing the top :math:`q` of the pixels by noisy linear imputation (:func:`road_curve`).

    .. math:: \mathrm{MoRF}_n = \frac{1}{|Q|}\sum_{q \in Q} p_t\big(\mathrm{impute}(x_n,
        U^{\text{MoRF}}_q)\big), \qquad Q = \{0.1, 0.2, \dots, 0.9\}

    (the mean over the fractions is the normalised area under the ROAD curve). Lower is
    better. ``len(percentages)`` batched forwards per batch. Options: ``percentages``,
    ``noise`` (0.01), ``softmax`` (True), ``iters`` (conjugate-gradient iterations).
    """

    higher_is_better = False
    most_relevant_first = True


@register("road_lerf")
class RoadLeRF(_RoadMetric):
    r"""ROAD, least relevant first (Rong et al., 2022): the mean target probability after
    removing the bottom :math:`q` of the pixels by noisy linear imputation.

    .. math:: \mathrm{LeRF}_n = \frac{1}{|Q|}\sum_{q \in Q} p_t\big(\mathrm{impute}(x_n,
        U^{\text{LeRF}}_q)\big)

    Higher is better (removing what the map calls unimportant should not hurt).
    """

    higher_is_better = True
    most_relevant_first = False


# -- faithfulness correlation --------------------------------------------------------------------
def _random_subsets(
    n: int, m: int, size: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """(n, size) pixel indices: a uniform random subset of range(m) per row, no repeats."""
    keys = torch.rand((n, m), generator=generator, dtype=torch.float64)
    return keys.topk(size, dim=1).indices.to(device)


def faithfulness_correlation(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    targets: Targets,
    *,
    subset_size: int = 224,
    runs: int = 100,
    baseline: Baseline = 0.0,
    softmax: bool = False,
    generator: torch.Generator | None = None,
    subsets: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Faithfulness correlation (Bhatt et al., 2020, "Evaluating and Aggregating
    Feature-based Model Explanations").

    For :math:`R` random subsets :math:`S_r` of ``subset_size`` pixels (uniform, without
    repetition, one draw per image and run), the Pearson correlation over the runs between
    the attribution of the subset and the drop of the target score when the subset (all
    channels) is replaced by the baseline :math:`b`:

    .. math::
        \mathrm{FC}_n = \operatorname{corr}_{r=1..R}\Big(\sum_{i \in S_r} M_{n,i},\;
            s_t(x_n) - s_t\big(x_n[S_r \leftarrow b]\big)\Big)

    with :math:`s_t` the logit (default, as Quantus) or the softmax probability. Higher is
    better. NaN where either side is constant over the runs (e.g. an all-zero map).
    ``runs + 1`` batched forwards.

    Args:
        model, inputs, maps, targets: as in :func:`deletion_curve`.
        subset_size: pixels per subset :math:`|S|` (must be below :math:`HW`).
        runs: subsets per image :math:`R` (at least 2).
        baseline: a number, a tensor broadcastable to ``inputs``, ``"black"`` (each image's
            minimum, Quantus's default), ``"mean"`` or ``"blur"``.
        softmax: follow probabilities instead of logits.
        generator: CPU generator the subsets are drawn from.
        subsets: optional (runs, N, subset_size) pixel indices (row-major ``i * W + j``)
            to use instead of random draws.

    Returns:
        (N,) float64 correlations in [-1, 1].
    """
    n, h, w = _check_images(inputs, maps)
    m = h * w
    if subsets is not None:
        if subsets.dim() != 3 or subsets.shape[1] != n:
            raise MetricError(
                f"subsets must be (runs, N, subset_size) with N = {n}, got {tuple(subsets.shape)}"
            )
        runs, subset_size = subsets.shape[0], subsets.shape[2]
    if not 1 <= subset_size < m:
        raise MetricError(f"subset_size must be in 1..{m - 1} for {h}x{w} maps, got {subset_size}")
    if runs < 2:
        raise MetricError(f"runs must be >= 2 to compute a correlation, got {runs}")
    device = inputs.device
    tgt = _targets(targets, n, device)
    base = _baseline(baseline, inputs).flatten(2)  # (N, C, HW)
    flat_x = inputs.flatten(2)
    flat_m = maps.to(device=device, dtype=torch.float64).flatten(1)
    sums, drops = [], []
    with torch.no_grad():
        y = _score(model, inputs, tgt, softmax, check=True)
        for r in range(runs):
            idx = subsets[r].to(device) if subsets is not None else None
            if idx is None:
                idx = _random_subsets(n, m, subset_size, generator, device)
            chosen = torch.zeros(n, m, dtype=torch.bool, device=device)
            chosen.scatter_(1, idx, True)
            x = torch.where(chosen[:, None], base, flat_x).view_as(inputs)
            drops.append(y - _score(model, x, tgt, softmax))
            sums.append((flat_m * chosen).sum(1))
    a = torch.stack(sums, dim=1)
    d = torch.stack(drops, dim=1).to(torch.float64)
    return _pearson(a, d)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of (N, R) tensors, NaN for a constant row."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(den > 0, (a * b).sum(1) / den.clamp_min(1e-300), torch.nan).clamp(-1, 1)


@register("faithfulness_correlation", "faithfulness_corr")
class FaithfulnessCorrelation(Metric):
    r"""Faithfulness correlation (Bhatt et al., 2020): :func:`faithfulness_correlation`.

    .. math:: \mathrm{FC}_n = \operatorname{corr}_{r}\Big(\sum_{i \in S_r} M_{n,i},\;
        s_t(x_n) - s_t(x_n[S_r \leftarrow b])\Big)

    Higher is better. ``runs + 1`` batched forwards per batch. Options: ``subset_size``
    (224 pixels), ``runs`` (100), ``baseline`` (0.0; ``"black"`` is Quantus's default),
    ``softmax`` (False: logits, as Quantus). Subsets are drawn from the run's generator.
    """

    category = "faithfulness"
    higher_is_better = True
    needs = frozenset({"model"})
    reference = "Bhatt et al., 2020"

    def __init__(
        self,
        subset_size: int = 224,
        runs: int = 100,
        baseline: float | str = 0.0,
        softmax: bool = False,
        **unknown: Any,
    ) -> None:
        super().__init__(**unknown)
        if int(runs) < 2 or int(subset_size) < 1:
            raise MetricError(
                f"metric {self.name!r}: runs must be >= 2 and subset_size >= 1, got "
                f"runs={runs}, subset_size={subset_size}"
            )
        self.subset_size, self.runs = int(subset_size), int(runs)
        self.baseline, self.softmax = baseline, bool(softmax)

    def forwards_per_image(self) -> int:
        return self.runs + 1

    def __call__(self, ctx: MetricContext) -> torch.Tensor:
        return faithfulness_correlation(
            _model_of(ctx, self.name),
            ctx.inputs,
            ctx.maps,
            ctx.targets,
            subset_size=self.subset_size,
            runs=self.runs,
            baseline=self.baseline,
            softmax=self.softmax,
            generator=ctx.generator,
        )


__all__ = [
    "ROAD_PERCENTAGES",
    "auc",
    "cam_mult_scores",
    "deletion_curve",
    "faithfulness_correlation",
    "gaussian_blur",
    "insertion_curve",
    "noisy_linear_imputation",
    "road_curve",
]
