r"""Faithfulness: does removing what the map ranks first change the model's output?"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import _check_maps, _target_tensor

Baseline = float | torch.Tensor


def _saliency_curve(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    targets: int | Sequence[int] | torch.Tensor,
    steps: int,
    baseline: Baseline,
    batch_size: int | None,
    insert: bool,
    softmax: bool,
) -> torch.Tensor:
    if inputs.dim() != 4:
        raise ValueError(f"inputs must be (N, C, H, W), got shape {tuple(inputs.shape)}")
    _check_maps(maps)
    n, _, h, w = inputs.shape
    if maps.shape != (n, h, w):
        raise ValueError(
            f"maps must be (N, H, W) = {(n, h, w)} to match the inputs, got {tuple(maps.shape)}; "
            f"upsample them to the input size first (camlib methods do by default)"
        )
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = inputs.device
    tgt = _target_tensor(targets, n, device)
    base = torch.as_tensor(baseline, dtype=inputs.dtype, device=device).expand_as(inputs)
    # position[n, p] = where pixel p comes in the map's descending order (ties: pixel index)
    order = maps.detach().to(device).flatten(1).argsort(dim=1, descending=True, stable=True)
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(h * w, device=device).expand(n, h * w))
    position = position.view(n, 1, h, w)
    chunk = batch_size or n
    curve = torch.empty(n, steps + 1, device=device)
    with torch.no_grad():
        for k in range(steps + 1):
            changed = position < round(k * h * w / steps)  # the k/steps most salient pixels
            x = torch.where(changed, inputs, base) if insert else torch.where(changed, base, inputs)
            for s in range(0, n, chunk):
                out = model(x[s : s + chunk])
                out = out.softmax(dim=1) if softmax else out
                curve[s : s + chunk, k] = out.gather(1, tgt[s : s + chunk, None])[:, 0]
    return curve


def deletion_curve(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    targets: int | Sequence[int] | torch.Tensor,
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
            black pixel) or a tensor broadcastable to ``inputs`` (a blurred copy, noise).
        batch_size: run the model on at most this many images at a time (default: all).
        softmax: follow softmax probabilities (default) or, if ``False``, raw logits.

    Returns:
        (N, steps + 1) tensor; column 0 is the score of the intact image.
    """
    return _saliency_curve(
        model, inputs, maps, targets, steps, baseline, batch_size, insert=False, softmax=softmax
    )


def insertion_curve(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    targets: int | Sequence[int] | torch.Tensor,
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
    a black pixel) or a blurred copy of the images, ``gaussian_blur(inputs, sigma)``, as in
    RISE (Petsiuk et al., 2018).

    Args:
        model, inputs, maps, targets, steps, batch_size, softmax: as in
            :func:`deletion_curve`.
        baseline: the starting canvas: a number or a tensor broadcastable to ``inputs``.

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
