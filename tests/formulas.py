"""The round-2 methods' maps written from their formulas, for the every-method suites.

Shared by tests/test_transformers.py and tests/test_signals_volumes.py. Each function takes
what a forward hook and ``torch.autograd.grad`` give at the layer, laid out by the caller as
(N, C, *grid) (any number of grid dimensions), and returns the raw (N, *grid) map; none
calls camlib. External references where one exists: scikit-learn's ``KernelPCA``
(KPCA-CAM) and ``NMF(solver="mu")`` (DFF), ``torch.autograd.functional.hvp`` (Shapley-CAM),
OpenCV's ``GaussianBlur`` (SESS). The seeded draws (Random-CAM's weights, SS-CAM's noise,
Smooth Grad-CAM++'s noisy copies) are rewritten from the documented recipe (generator,
seed, shape, dtype, order of draws). Every method's own file checks it further against
pytorch-grad-cam / torchcam.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def axes(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, t.dim()))


def up(t: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(N, *grid) -> (N, *size): linear / bilinear / trilinear, align_corners=False."""
    return F.interpolate(t[:, None], tuple(size), mode=MODES[len(size)], align_corners=False)[:, 0]


def minmax_each(t: torch.Tensor) -> torch.Tensor:
    """Each (N, ...) map (dim 0) scaled to [0, 1]."""
    flat = t.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    return ((flat - lo[:, None]) / (hi - lo)[:, None]).view_as(t)


def weighted(w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_k w_k A_k) for (N, C) or (C,) weights."""
    w = w.expand(a.shape[0], -1) if w.dim() == 1 else w
    return torch.einsum("nc,nc...->n...", w.to(a.dtype), a).relu()


# -- gradient and activation formulas --------------------------------------------------------
def gradcam_elementwise(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_k ReLU(g_k A_k)) (pytorch-grad-cam's GradCAMElementWise)."""
    return (g * a).clamp_min(0).sum(1).relu()


def _first_direction(m: torch.Tensor, centre: bool) -> torch.Tensor:
    """Projection of the positions x channels matrix on its first right singular vector."""
    if centre:
        m = m - m.mean(0, keepdim=True)
    return m @ torch.linalg.svd(m, full_matrices=False).Vh[0]


def eigen(a: torch.Tensor) -> torch.Tensor:
    """Eigen-CAM as camlib defines it: not centred, the sign making the projection sum >= 0."""
    n, c = a.shape[:2]
    maps = []
    for i in range(n):
        p = _first_direction(a[i].reshape(c, -1).T, centre=False)
        maps.append((p if p.sum() >= 0 else -p).reshape(a.shape[2:]))
    return torch.stack(maps).relu()


def eigengradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Eigen-CAM of A * g."""
    return eigen(a * g)


def segeigencam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Chung & Ying's Eq. 10-13: centred first component of |g| * A, flipped when its most
    negative value outweighs its largest."""
    n, c = a.shape[:2]
    maps = []
    for i in range(n):
        p = _first_direction((g.abs() * a)[i].reshape(c, -1).T, centre=True)
        maps.append((-p if p.min().abs() > p.max().abs() else p).reshape(a.shape[2:]))
    return torch.stack(maps).relu()


def kpcacam(a: torch.Tensor) -> torch.Tensor:
    """scikit-learn's KernelPCA (sigmoid kernel, gamma 1/C, coef0 1), first component of each
    image's positions with each channel centred over positions."""
    from sklearn.decomposition import KernelPCA

    n, c = a.shape[:2]
    maps = []
    for i in range(n):
        x = a[i].reshape(c, -1).T.double().numpy()
        x = x - x.mean(0, keepdims=True)
        proj = KernelPCA(1, kernel="sigmoid", gamma=1.0 / c, coef0=1.0).fit_transform(x)[:, 0]
        maps.append(torch.from_numpy(proj.copy()).reshape(a.shape[2:]))
    return torch.stack(maps).to(a.dtype).relu()


def fem(a: torch.Tensor, k: float = 2.0) -> torch.Tensor:
    """FEM: sum_c mean_c [A_c > mean_c + k std_c] (population std over positions)."""
    ax = axes(a)
    mean, std = a.mean(ax, keepdim=True), a.std(ax, correction=0, keepdim=True)
    return (mean * (a > mean + k * std)).sum(1).relu()


def random_weights(c: int, seed: int = 0) -> torch.Tensor:
    """Random-CAM's documented draw: U[-1, 1) from a CPU generator seeded with ``seed``,
    float64, one weight per channel shared by every image."""
    return torch.rand(c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def smooth_gradcampp(a: torch.Tensor, grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """Smooth Grad-CAM++ from the clean A and the gradients at the noisy copies."""
    g = torch.stack(list(grads))
    d1, d2, d3 = g.mean(0), (g**2).mean(0), (g**3).mean(0)
    denom = 2 * d2 + a.sum(axes(a), keepdim=True) * d3
    alpha = torch.where(denom != 0, d2 / torch.where(denom != 0, denom, 1), 0)
    return weighted((alpha * d1.clamp_min(0)).sum(axes(a)), a)


def noisy_copies(x: torch.Tensor, samples: int = 8, noise: float = 0.1, seed: int = 0):
    """Smooth Grad-CAM++'s copies (camlib.Smooth's noise): x + N(0, 1) * noise * (max - min)
    per image, one draw of x's shape per sample from a generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, *[1] * (x.dim() - 1))
    return [
        x + torch.randn(x.shape, generator=gen, dtype=x.dtype) * (noise * span)
        for _ in range(samples)
    ]


def finer_score(classes: Sequence[int], references: int = 3, alpha: float = 1.0) -> Callable:
    """Finer-CAM's score: y_c - alpha * sum_{d in D} softmax_D(y)_d y_d, with D the
    ``references`` classes whose logits are closest to y_c."""

    def score(logits: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(len(classes))
        y = logits[rows, torch.tensor(classes)]
        plain = logits.detach()
        out = []
        for i, c in enumerate(classes):
            others = [d for d in range(logits.shape[1]) if d != c]
            dist = [abs(float(plain[i, d] - plain[i, c])) for d in others]
            chosen = [others[j] for j in np.argsort(dist, kind="stable")[:references]]
            rivals = logits[i, chosen]
            out.append(y[i] - alpha * (rivals.softmax(0) * rivals).sum())
        return torch.stack(out)

    return score


def shapley_weights(
    g: torch.Tensor, hvp: torch.Tensor, to_nchw: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Shapley-CAM's weights: the spatial mean of g - H A / 2."""
    return to_nchw(g - 0.5 * hvp).flatten(2).mean(-1)


def hessian_times_activation(
    model: nn.Module, module: nn.Module, x: torch.Tensor, out: torch.Tensor, score: Callable
) -> torch.Tensor:
    """H A with ``torch.autograd.functional.hvp``: the score as a function of the layer's
    output (a forward hook hands the given tensor on), its Hessian times ``out``."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def f(z: torch.Tensor) -> torch.Tensor:
        handle = module.register_forward_hook(lambda m, args, o: z)
        try:
            return score(model(x)).sum()
        finally:
            handle.remove()

    with sdpa_kernel(SDPBackend.MATH):  # attention that can be differentiated twice
        return torch.autograd.functional.hvp(f, out.detach(), out.detach())[1]


# -- perturbation formulas -------------------------------------------------------------------
def sampled_scorecam(
    model: nn.Module,
    x: torch.Tensor,
    a: torch.Tensor,
    classes: Sequence[int],
    perturb: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """w_k = mean over the S masks perturb(H_k) of softmax(f(x * mask))_c, with H_k the
    channel upsampled to the input and min-max scaled (a constant channel: weight 0); one
    forward of every masked copy of an image (channels x S rows) per image."""
    n, c = a.shape[:2]
    w = torch.zeros(n, c, dtype=a.dtype)
    with torch.no_grad():
        for i in range(n):
            kept, masks = [], []
            for k in range(c):
                h = up(a[i, k][None], x.shape[2:])[0]
                if h.max() - h.min() <= 1e-6 * h.abs().max():
                    continue
                kept.append(k)
                masks.append(perturb((h - h.min()) / (h.max() - h.min())))  # (S, *size)
            if not kept:
                continue
            stack = torch.stack(masks)  # (K, S, *size)
            probs = model(x[i : i + 1] * stack.flatten(0, 1)[:, None].to(x.dtype)).softmax(1)
            w[i, kept] = probs[:, classes[i]].view(len(kept), -1).mean(1).to(w.dtype)
    return weighted(w, a)


def sscam_perturb(x: torch.Tensor, samples: int = 35, std: float = 2.0, seed: int = 0):
    """SS-CAM's masks H + delta_s: S noise maps (S, *size) of N(0, std^2), drawn once per call
    from a generator seeded with ``seed`` as one (S, 1, *size) tensor, shared by every image
    and channel."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((samples, 1, *x.shape[2:]), generator=gen, dtype=dtype)[:, 0] * std
    return lambda h: h[None] + noise.to(h.dtype)


def iscam_perturb(samples: int = 10):
    """IS-CAM's masks (s / S) H, s = 1 .. S."""
    return lambda h: (
        h[None] * (torch.arange(1, samples + 1, dtype=h.dtype) / samples).view(-1, *[1] * h.dim())
    )


# -- FullGrad --------------------------------------------------------------------------------
def _psi_sum(t: torch.Tensor) -> torch.Tensor:
    """sum_c rescale(|t_c|): each (image, channel) map of |t| min-max scaled to [0, 1]
    (constant: 0)."""
    m = t.abs().flatten(2)
    lo, hi = m.min(-1, keepdim=True).values, m.max(-1, keepdim=True).values
    span = hi - lo
    scaled = torch.where(span > 0, (m - lo) / torch.where(span > 0, span, 1), 0)
    return scaled.sum(1).view(t.shape[0], *t.shape[2:])


def fullgrad(
    model: nn.Module, x: torch.Tensor, classes: Sequence[int], convs: Sequence[nn.Module]
) -> torch.Tensor:
    """Srinivas & Fleuret's Eq. 7 for a network whose biased layers with spatial outputs are
    the convolutions ``convs`` (in execution order): psi(x * dy/dx) + sum_l up(psi(b_l *
    dy/dz_l))."""
    outs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda m, args, o: outs.append(o)) for m in convs]
    try:
        xg = x.clone().requires_grad_(True)
        score = model(xg)[torch.arange(len(classes)), torch.tensor(classes)].sum()
    finally:
        for h in handles:
            h.remove()
    grads = torch.autograd.grad(score, [xg, *outs])
    total = _psi_sum(grads[0] * x)
    for m, g in zip(convs, grads[1:], strict=True):
        bias = m.bias.detach().view(1, -1, *[1] * (g.dim() - 2))
        total = total + up(_psi_sum(g * bias), x.shape[2:])
    return total


# -- DFF -------------------------------------------------------------------------------------
def dff(a: torch.Tensor, k: int = 5, iterations: int = 300, seed: int = 0) -> torch.Tensor:
    """(N, K, *grid) concept maps: scikit-learn's NMF(solver="mu") of V = the activations as
    (C, N * positions), from DFF's documented start (W0 = s U[0, 1) from a CPU generator
    seeded with ``seed``, H0 = s, s = sqrt(mean(V) / K)); each concept scaled so that its H
    peaks at 1, ordered by sum(W_k) * sum(H_k), largest first."""
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    n, c = a.shape[:2]
    v = a.transpose(0, 1).reshape(c, -1).double()
    s = float((v.mean() / k).sqrt())
    w0 = torch.rand(c, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * s
    h0 = torch.full((k, v.shape[1]), s, dtype=torch.float64)
    nmf = NMF(k, init="custom", solver="mu", max_iter=iterations, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        w = torch.from_numpy(nmf.fit_transform(v.numpy(), W=w0.numpy(), H=h0.numpy()))
    h = torch.from_numpy(nmf.components_.copy())
    peak = h.amax(1)
    h, w = h / peak[:, None], w * peak
    order = (w.sum(0) * h.sum(1)).argsort(descending=True)
    return h[order].view(k, n, *a.shape[2:]).transpose(0, 1).to(a.dtype)


# -- SESS ------------------------------------------------------------------------------------
def opencv_blur(maps: torch.Tensor) -> torch.Tensor:
    """OpenCV's 11 x 11 Gaussian blur, sigma 5 (what pytorch-grad-cam's SESS applies)."""
    import cv2

    return torch.stack(
        [torch.from_numpy(cv2.GaussianBlur(m.double().numpy(), (11, 11), 5)) for m in maps]
    ).to(maps.dtype)
