"""Round 2 (b) methods against independent formulas and their peers (issue 18).

SS-CAM, IS-CAM, Smooth Grad-CAM++, Finer-CAM, SESS, RefineCAM and LeGrad. Each is checked
against a reference written here from its formula (hooks, one forward per image/channel,
no camlib code) and against torchcam 0.5.0 / pytorch-grad-cam 1.5.7 on the same model,
input and layer, their randomness replaced by the very noise camlib draws. Where a peer
computes something else, a test pins down what it computes (its formula reproduced to
1e-6, epsilons included) and that camlib differs. Models are float64 with random weights;
pytorch-grad-cam works in float32 (NumPy, OpenCV), hence 1e-5 against it.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import torch
import torch.nn.functional as F
import torchcam.methods as tcm
import torchvision
from pytorch_grad_cam.refine_cam import RefineCAM as PgcRefineCAM
from pytorch_grad_cam.sess import SESS as PgcSESS
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import camlib
from camlib.methods.sscam import ssc_noise

from conftest import SmallConvNet, count_forwards, left_alone

RTOL = 1e-6
CLASSES = [3, 7]


@functools.cache
def net() -> SmallConvNet:
    torch.manual_seed(0)
    return SmallConvNet().double().eval()


def images(n: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, 1, 16, 16, dtype=torch.float64)


def rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


def check(ours: torch.Tensor, ref: torch.Tensor, rtol: float = RTOL) -> float:
    assert ours.shape == ref.shape
    assert ref.abs().max() > 0, "the reference is all zero: the case tells nothing"
    err = rel(ours, ref)
    assert err <= rtol, f"max relative difference {err:.3g} > {rtol}"
    return err


def raw(name: str, model: nn.Module, layer, x: torch.Tensor, targets=CLASSES, **options):
    return camlib.METHODS[name](model, layer, **options)(
        x, targets, upsample=False, normalize=False
    )


def capture(model: nn.Module, layer: str, x: torch.Tensor, score) -> tuple:
    """(A, g, output): the layer's output, d(sum score)/dA and the model output."""
    store = []

    def hook(m, args, out):
        leaf = out.detach().clone().requires_grad_(True)
        store.append(leaf)
        return leaf.clone()

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.enable_grad():
            out = model(x)
            (g,) = torch.autograd.grad(score(out).sum(), store[0])
    finally:
        handle.remove()
    return store[0].detach(), g, out.detach()


def pick(classes):
    t = torch.tensor(classes)
    return lambda out: out.gather(1, t[: out.shape[0], None])[:, 0]


def up(a: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(a[None, None], size, mode="bilinear", align_corners=False)[0, 0]


def cam_of(w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return torch.relu(torch.einsum("nc,nchw->nhw", w, a))


# --------------------------------------------------------------------------------------
# SS-CAM and IS-CAM
# --------------------------------------------------------------------------------------


def ref_sampled_scorecam(model, x, a, classes, perturb, samples) -> torch.Tensor:
    """w_k = mean_s softmax(f(X * T_s(H_k)))_c; H_k = minmax(up(A_k)); constant A_k -> 0."""
    n, c = a.shape[:2]
    w = torch.zeros(n, c, dtype=a.dtype)
    with torch.no_grad():
        for i in range(n):
            for k in range(c):
                if a[i, k].max() == a[i, k].min():
                    continue
                u = up(a[i, k], x.shape[2:])
                h = (u - u.min()) / (u.max() - u.min())
                for s in range(samples):
                    out = model(x[i : i + 1] * perturb(h, s))
                    w[i, k] += torch.softmax(out, 1)[0, classes[i]] / samples
    return cam_of(w, a)


@pytest.mark.parametrize("layer", ["relu3", "conv1"])
def test_sscam_matches_formula(layer):
    x, samples, std = images(), 4, 0.7
    a, _, _ = capture(net(), layer, x, pick(CLASSES))
    gen = torch.Generator().manual_seed(5)
    noise = torch.randn(samples, 1, 16, 16, generator=gen, dtype=torch.float64) * std
    ref = ref_sampled_scorecam(net(), x, a, CLASSES, lambda h, s: h + noise[s, 0], samples)
    ours = raw("sscam", net(), layer, x, samples=samples, std=std, seed=5, batch_size=7)
    check(ours, ref)


@pytest.mark.parametrize("layer", ["relu3", "conv1"])
def test_iscam_matches_formula(layer):
    x, samples = images(), 3
    a, _, _ = capture(net(), layer, x, pick(CLASSES))
    ref = ref_sampled_scorecam(net(), x, a, CLASSES, lambda h, s: h * (s + 1) / samples, samples)
    check(raw("iscam", net(), layer, x, samples=samples, batch_size=5), ref)


def test_sscam_and_iscam_reduce_to_scorecam():
    x = images()
    score = raw("scorecam", net(), "relu3", x)
    check(raw("iscam", net(), "relu3", x, samples=1), score, rtol=1e-12)
    check(raw("sscam", net(), "relu3", x, samples=3, std=0.0), score, rtol=1e-12)
    assert rel(raw("sscam", net(), "relu3", x, samples=3), score) > 1e-3


def test_sscam_batching_and_reproducibility():
    """samples x non-constant pairs rows, batch_size at a time; the noise is seeded and
    shared by every image, so batch_size and the batch an image is in change nothing."""
    x = images(3)
    a, _, _ = capture(net(), "relu3", x, pick(CLASSES + [1]))
    pairs = int((a.flatten(2).amax(-1) != a.flatten(2).amin(-1)).sum())
    maps = []
    for bs in (5, 1000):
        with count_forwards(net()) as sizes:
            maps.append(raw("sscam", net(), "relu3", x, CLASSES + [1], samples=3, batch_size=bs))
        assert sizes[0] == 3 and sum(sizes[1:]) == 3 * pairs and max(sizes[1:]) <= bs
    check(maps[1], maps[0], rtol=1e-12)
    alone = raw("sscam", net(), "relu3", x[1:2], [7], samples=3)
    check(alone[0], maps[0][1], rtol=1e-12)
    other_seed = raw("sscam", net(), "relu3", x, CLASSES + [1], samples=3, seed=1)
    assert rel(other_seed, maps[0]) > 1e-3


def torchcam_masks(a: torch.Tensor, size) -> torch.Tensor:
    """torchcam's masks: each channel min-max scaled at its own size (+1e-8), upsampled."""
    flat = a.flatten(2)
    lo, hi = flat.amin(-1)[..., None, None], flat.amax(-1)[..., None, None]
    m = (a - lo) / (hi - lo + 1e-8)
    return F.interpolate(m, size, mode="bilinear", align_corners=False)


def torchcam_run(cls, x, classes, **options):
    with cls(net(), target_layer="relu3", **options) as extractor:
        net()(x)
        (cam,) = extractor(class_idx=classes, normalized=False)
    return cam


def test_torchcam_sscam_softmaxes_over_channels(monkeypatch):
    """torchcam's SSCAM, fed camlib's noise: w = softmax_k(mean_s y_c(X (M_k + d_s)) - y_c(X))
    (over channels, logits not probabilities), reproduced to 1e-6; not camlib's weights."""
    x, samples, std = images(), 3, 0.5
    noise = ssc_noise(samples, x, std, seed=0)
    draws = iter(noise)

    def sample(self, shape):  # every image and channel gets camlib's noise map s
        return next(draws).expand(shape).clone()

    monkeypatch.setattr(torch.distributions.normal.Normal, "sample", sample)
    theirs = torchcam_run(tcm.SSCAM, x, CLASSES, batch_size=16, num_samples=samples, std=std)
    a, _, out = capture(net(), "relu3", x, pick(CLASSES))
    masks = torchcam_masks(a, x.shape[2:])
    c = torch.tensor(CLASSES)
    gain = torch.zeros(2, a.shape[1], dtype=a.dtype)
    with torch.no_grad():
        for s in range(samples):
            for k in range(a.shape[1]):
                y = net()(x * (masks[:, k : k + 1] + noise[s]))
                gain[:, k] += (
                    y.gather(1, c[:, None])[:, 0] - out.gather(1, c[:, None])[:, 0]
                ) / samples
    check(theirs, cam_of(torch.softmax(gain, 1), a))
    ours = raw("sscam", net(), "relu3", x, samples=samples, std=std)
    assert rel(ours, theirs) > 1e-2


def test_torchcam_iscam_scales_masks_by_cumulative_sums():
    """torchcam's ISCAM scales M_k by sum_{j<=s} j/S (up to (S+1)/2, past the full mask) and
    softmaxes the mean score gain over channels; reproduced to 1e-6; not camlib's."""
    x, samples = images(), 4
    theirs = torchcam_run(tcm.ISCAM, x, CLASSES, batch_size=16, num_samples=samples)
    a, _, out = capture(net(), "relu3", x, pick(CLASSES))
    masks = torchcam_masks(a, x.shape[2:])
    c, coeff = torch.tensor(CLASSES), 0.0
    gain = torch.zeros(2, a.shape[1], dtype=a.dtype)
    with torch.no_grad():
        for s in range(samples):
            coeff += (s + 1) / samples
            for k in range(a.shape[1]):
                y = net()(coeff * (x * masks[:, k : k + 1]))
                gain[:, k] += (
                    y.gather(1, c[:, None])[:, 0] - out.gather(1, c[:, None])[:, 0]
                ) / samples
    assert coeff == (samples + 1) / 2
    check(theirs, cam_of(torch.softmax(gain, 1), a))
    assert rel(raw("iscam", net(), "relu3", x, samples=samples), theirs) > 1e-2


# --------------------------------------------------------------------------------------
# Smooth Grad-CAM++
# --------------------------------------------------------------------------------------


def noise_of(x: torch.Tensor, samples: int, noise: float, seed: int) -> list[torch.Tensor]:
    """The noise camlib.Smooth draws: per sample, randn(x.shape) * noise * (max - min)."""
    gen = torch.Generator().manual_seed(seed)
    span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, 1, 1, 1)
    return [
        torch.randn(x.shape, generator=gen, dtype=x.dtype) * noise * span for _ in range(samples)
    ]


def ref_smoothgradcampp(layer, x, classes, eps_list):
    a, _, _ = capture(net(), layer, x, pick(classes))
    grads = [capture(net(), layer, x + e, pick(classes))[1] for e in eps_list]
    d1, d2, d3 = (sum(g**p for g in grads) / len(grads) for p in (1, 2, 3))
    denom = 2 * d2 + a.sum((2, 3), keepdim=True) * d3
    alpha = torch.where(denom != 0, d2 / torch.where(denom != 0, denom, 1), 0)
    return cam_of((alpha * torch.relu(d1)).sum((2, 3)), a), a, grads


@pytest.mark.parametrize("layer", ["relu3", "conv2"])
def test_smoothgradcampp_matches_formula(layer):
    x, samples, noise = images(), 4, 0.2
    ref, _, _ = ref_smoothgradcampp(layer, x, CLASSES, noise_of(x, samples, noise, 3))
    for bs in (None, 3):
        ours = raw(
            "smoothgradcampp", net(), layer, x, samples=samples, noise=noise, seed=3, batch_size=bs
        )
        check(ours, ref)


def test_smoothgradcampp_one_clean_sample_is_gradcampp_and_callable_targets():
    x = images()
    check(
        raw("smoothgradcampp", net(), "conv2", x, samples=1, noise=0.0),
        raw("gradcam++", net(), "conv2", x),
        rtol=1e-12,
    )
    target = pick(CLASSES)  # as a callable: one sample (N images) per forward
    with count_forwards(net()) as sizes:
        by_callable = raw("smoothgradcampp", net(), "conv2", x, target, samples=3)
    assert sizes == [2, 2, 2, 2]
    check(by_callable, raw("smoothgradcampp", net(), "conv2", x, samples=3), rtol=1e-12)


def test_torchcam_smoothgradcampp_is_another_formula(monkeypatch):
    """torchcam's SmoothGradCAMpp, fed camlib's noise, computes
    alpha = D2 / (2 D2 + sum_ij(A D3) + 1e-8), w = sum alpha ReLU(g_last), L = ReLU(w . A_last)
    with g_last, A_last those of the *last* noisy copy (reproduced to 1e-6): neither the
    paper's averaged gradient nor the clean activation."""
    x, samples, noise = images(), 3, 0.2
    eps_list = noise_of(x, samples, noise, 0)
    draws = iter(eps_list)

    def sample(self, shape):  # camlib's noise for sample s (std=1 keeps it as it is)
        return next(draws)

    monkeypatch.setattr(torch.distributions.normal.Normal, "sample", sample)
    with tcm.SmoothGradCAMpp(net(), target_layer="conv2", num_samples=samples, std=1.0) as ex:
        net()(x)
        (theirs,) = ex(class_idx=CLASSES, normalized=False)
    ours, a, grads = ref_smoothgradcampp("conv2", x, CLASSES, eps_list)
    a_last, g_last, _ = capture(net(), "conv2", x + eps_list[-1], pick(CLASSES))
    d2, d3 = (sum(g**p for g in grads) / samples for p in (2, 3))
    alpha = d2 / (2 * d2 + (d3 * a).sum((2, 3), keepdim=True) + 1e-8)
    check(theirs, cam_of((alpha * torch.relu(g_last)).sum((2, 3)), a_last))
    check(raw("smoothgradcampp", net(), "conv2", x, samples=samples, noise=noise, seed=0), ours)
    assert rel(ours, theirs) > 1e-2


# --------------------------------------------------------------------------------------
# Finer-CAM
# --------------------------------------------------------------------------------------


def finer_score(classes, references: int = 3, alpha: float = 1.0):
    """y_c - alpha sum_d softmax_D(y)_d y_d over the `references` logits closest to y_c."""

    def score(out):
        c = torch.tensor(classes) if classes is not None else out.argmax(1)
        y = out.gather(1, c[:, None])[:, 0]
        dist = (out - y[:, None]).abs().detach()
        dist[torch.arange(len(c)), c] = float("inf")
        refs = dist.argsort(1)[:, :references]
        rivals = out.gather(1, refs)
        return y - alpha * (torch.softmax(rivals, 1) * rivals).sum(1)

    return score


@pytest.mark.parametrize(("method", "ref"), [("gradcam", "grad"), ("layercam", "layer")])
def test_finercam_matches_formula(method, ref):
    x = images()
    a, g, _ = capture(net(), "relu3", x, finer_score(CLASSES, alpha=0.6))
    expected = (
        cam_of(g.mean((2, 3)), a) if ref == "grad" else torch.relu((torch.relu(g) * a).sum(1))
    )
    ex = camlib.METHODS["finercam"](net(), "relu3", method=method, alpha=0.6)
    check(ex(x, CLASSES, upsample=False, normalize=False), expected)
    assert ex.classes.tolist() == CLASSES and ex.references.shape == (2, 3)
    assert not (ex.references == ex.classes[:, None]).any()


def pgc_finer_raw(x, **kwargs):
    model = copy.deepcopy(net())
    cam = pgc.FinerCAM(model, [model.relu3])
    got, original = [], cam.base_cam.get_cam_image
    cam.base_cam.get_cam_image = lambda *a, **k: got.append(original(*a, **k)) or got[-1]
    with cam:
        cam(x, **kwargs)
    return torch.relu(torch.as_tensor(np.asarray(got[0])))


@pytest.mark.parametrize("target_idx", [None, 4])
def test_finercam_equals_pytorch_grad_cam(target_idx):
    """pytorch-grad-cam's FinerCAM (GradCAM base, alpha=1, comparison classes 1-3 of the
    classes sorted by |y_d - y_c|, softmax-probability weights + 1e-9): camlib's map."""
    x = images()
    theirs = pgc_finer_raw(x, target_idx=target_idx)
    targets = None if target_idx is None else target_idx
    check(raw("finercam", net(), "relu3", x, targets), theirs)


def test_torchcam_finercam_subtracts_the_mean():
    """torchcam's FinerCAM: y_c - gamma * mean of the 3 closest logits (gamma=0.6), no
    softmax weights: reproduced to 1e-6; camlib (pytorch-grad-cam's weights) differs."""
    x = images()
    with tcm.FinerCAM(net(), "relu3") as ex, torch.enable_grad():
        scores = net()(x)
        (theirs,) = ex(CLASSES, scores, normalized=False)

    def mean_score(out):
        c = torch.tensor(CLASSES)
        y = out.gather(1, c[:, None])[:, 0]
        dist = (out - y[:, None]).abs().detach()
        dist[torch.arange(2), c] = float("inf")
        return y - 0.6 * out.gather(1, dist.argsort(1)[:, :3]).mean(1)

    a, g, _ = capture(net(), "relu3", x, mean_score)
    check(theirs.detach(), cam_of(g.mean((2, 3)), a))
    assert rel(raw("finercam", net(), "relu3", x, alpha=0.6), theirs.detach()) > 1e-3


def test_finercam_refusals():
    with pytest.raises(camlib.MethodError, match="GradientCAM"):
        camlib.METHODS["finercam"](net(), "relu3", method="scorecam")
    with pytest.raises(camlib.TargetError, match="class scores only"):
        camlib.METHODS["finercam"](net(), "relu3")(images(), lambda out: out[:, 0])
    binary = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1)
    ).eval()
    with left_alone(binary), pytest.raises(camlib.TargetError, match="single logit"):
        camlib.METHODS["finercam"](binary, "1")(images().float())


# --------------------------------------------------------------------------------------
# RefineCAM
# --------------------------------------------------------------------------------------


def minmax(m: torch.Tensor) -> torch.Tensor:
    lo, hi = m.flatten(1).amin(1)[:, None, None], m.flatten(1).amax(1)[:, None, None]
    return torch.where(hi > lo, (m - lo) / torch.where(hi > lo, hi - lo, 1), 0)


def test_refinecam_matches_formula():
    """minmax(prod_l minmax(up(L_l))) with L_l Grad-CAM++ (default base) of each layer."""
    x = images()
    product = torch.ones(2, 16, 16, dtype=torch.float64)
    for layer in ("relu3", "conv2", "relu1"):
        one = raw("gradcam++", net(), layer, x)
        product = product * minmax(F.interpolate(one[:, None], (16, 16), mode="bilinear")[:, 0])
    ours = camlib.METHODS["refinecam"](net(), ["relu3", "conv2", "relu1"])(x, CLASSES)
    check(ours, minmax(product))
    single = camlib.METHODS["refinecam"](net(), "relu3")(x, CLASSES)
    check(single, camlib.GradCAMPlusPlus(net(), "relu3")(x, CLASSES), rtol=1e-12)


@pytest.mark.parametrize("base", ["GradCAM", "LayerCAM"])
def test_refinecam_equals_pytorch_grad_cam(base):
    x, model = images(), copy.deepcopy(net())
    refine = PgcRefineCAM(model, [model.relu3, model.conv2], base_method=getattr(pgc, base))
    theirs = torch.as_tensor(refine(x, [ClassifierOutputTarget(c) for c in CLASSES])).double()
    ours = camlib.METHODS["refinecam"](net(), ["relu3", "conv2"], method=base.lower())(x, CLASSES)
    check(ours, theirs, rtol=1e-5)  # pytorch-grad-cam: float32


def test_refinecam_torchcam_at_equal_sizes_and_its_resize_order():
    """torchcam's RefineCAM equals camlib's where no resize is needed (layers at the input's
    size); it min-max scales before resizing and never again, so with an 8 x 8 layer its
    factors do not span [0, 1] and the maps differ."""
    x = images()

    def theirs(layers):
        with tcm.RefineCAM(net(), layers, base_method=tcm.LayerCAM) as ex, torch.enable_grad():
            scores = net()(x)
            return ex(CLASSES, scores, target_shape=(16, 16))[0].detach()

    ours = camlib.METHODS["refinecam"](net(), ["conv2", "relu1"], method="layercam")(x, CLASSES)
    check(ours, theirs(["conv2", "relu1"]), rtol=1e-6)
    ours = camlib.METHODS["refinecam"](net(), ["relu3", "conv2"], method="layercam")(x, CLASSES)
    assert rel(ours, theirs(["relu3", "conv2"])) > 1e-3


# --------------------------------------------------------------------------------------
# SESS
# --------------------------------------------------------------------------------------


def pgc_sess(x, **options):
    model = copy.deepcopy(net())
    sess = PgcSESS(model, [model.relu3], base_method=pgc.GradCAM, **options)
    return torch.as_tensor(sess(x, [ClassifierOutputTarget(c) for c in CLASSES])).double()


SESS_CASES = {
    "overlapping windows": (
        {"scales": [16, 21, 26], "step": 8},
        {"scales": [16, 21, 26], "step_size": 8},
    ),
    "max pooling": (
        {"num_scales": 3, "smooth": False, "pool": "max"},
        {"num_scales": 3, "smooth": False, "pool": "max"},
    ),
    "pre-filter, theta": (
        {"num_scales": 4, "step": 8, "pre_filter": 0.4, "theta": 0.1},
        {"num_scales": 4, "step_size": 8, "pre_filter_ratio": 0.4, "theta": 0.1},
    ),
}


@pytest.mark.parametrize("case", list(SESS_CASES))
def test_sess_equals_pytorch_grad_cam(case):
    ours_opts, theirs_opts = SESS_CASES[case]
    x = images()
    ours = camlib.METHODS["sess"](net(), "relu3", **ours_opts)(x, CLASSES)
    check(ours, pgc_sess(x, **theirs_opts), rtol=1e-5)  # pytorch-grad-cam: float32, OpenCV


def test_sess_batched_and_callable_targets():
    """Patches are scored in batch_size rows and explained batch_size at a time; a callable
    target (here the class scores) sees one window position of all N images per call."""
    x = images()
    opts = {"scales": [16, 21], "step": 8, "smooth": False}
    by_class = camlib.METHODS["sess"](net(), "relu3", batch_size=5, **opts)(x, CLASSES)
    one_go = camlib.METHODS["sess"](net(), "relu3", batch_size=1000, **opts)(x, CLASSES)
    check(one_go, by_class, rtol=1e-12)

    def probability(out):
        return torch.softmax(out, 1)[:, CLASSES].diagonal()

    with count_forwards(net()) as sizes:
        by_callable = camlib.METHODS["sess"](net(), "relu3", method="gradcam", **opts)
        callable_maps = by_callable(x, probability)
    assert all(s % 2 == 0 for s in sizes)
    assert rel(callable_maps, by_class) > 1e-3  # explains the probability, not the logit


# --------------------------------------------------------------------------------------
# LeGrad
# --------------------------------------------------------------------------------------


@functools.cache
def vit() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=10,
    )
    nn.init.normal_(model.heads.head.weight)  # torchvision initialises the head to zero
    return model.double().eval()


def vit_images(n: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, 3, 32, 32, dtype=torch.float64)


BLOCKS = ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]


def torchcam_legrad(blocks, x, classes, **options):
    with tcm.LeGrad(vit(), blocks, **options) as ex, torch.enable_grad():
        vit()(x)
        (cam,) = ex(classes, normalized=False)
    return cam.detach()


@pytest.mark.parametrize("blocks", [BLOCKS, BLOCKS[1:]])
def test_legrad_equals_torchcam(blocks):
    x = vit_images()
    ours = raw("legrad", vit(), blocks if len(blocks) > 1 else blocks[0], x)
    check(ours, torchcam_legrad(blocks, x, CLASSES))
    auto = camlib.METHODS["legrad"](vit())
    assert [b.spec for b in auto.blocks] == BLOCKS


def test_legrad_class_token_pool_equals_torchcam_with_that_projection():
    x, model = vit_images(), vit()

    def cls_head(tokens):
        return model.heads(model.encoder.ln(tokens[:, 0]))

    theirs = torchcam_legrad(BLOCKS, x, CLASSES, score_projection=cls_head)
    check(raw("legrad", model, BLOCKS, x, pool="cls"), theirs)
    assert rel(raw("legrad", model, BLOCKS, x), theirs) > 1e-3


def test_legrad_leaves_model_alone_and_output_unchanged():
    """A scoped TorchFunctionMode recomputes the attention: no hook, no patch, the model's
    output unchanged, under no_grad / inference_mode / frozen weights alike."""
    model, x = vit(), vit_images()
    ref = raw("legrad", model, "auto", x)
    with torch.no_grad():
        logits = model(x)
    with left_alone(model):
        with torch.no_grad():
            check(raw("legrad", model, "auto", x), ref, rtol=1e-12)
        with torch.inference_mode():
            check(raw("legrad", model, "auto", vit_images()).clone(), ref, rtol=1e-12)
        model.requires_grad_(False)
        try:
            ex = camlib.METHODS["legrad"](model)
            maps = ex(x)
        finally:
            model.requires_grad_(True)
    assert maps.shape == (2, 32, 32) and maps.grad_fn is None and ex.scores.grad_fn is None
    assert torch.equal(ex.classes, logits.argmax(1))
    torch.testing.assert_close(ex.scores, logits.gather(1, ex.classes[:, None])[:, 0])
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits, rtol=0, atol=0)


def test_legrad_refusals_leave_model_alone():
    model, x = vit(), vit_images()
    with left_alone(model):
        with pytest.raises(camlib.LayerError, match="no nn.MultiheadAttention"):
            camlib.METHODS["legrad"](SmallConvNet())
        with pytest.raises(camlib.TargetError, match="class scores only"):
            camlib.METHODS["legrad"](model)(x, lambda out: out[:, 0])
        with pytest.raises(camlib.TargetError):
            camlib.METHODS["legrad"](model)(x, [1, 99])
    torch.manual_seed(0)
    dropping = torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        attention_dropout=0.1,
    ).double()  # in training mode
    with (
        left_alone(dropping),
        pytest.warns(UserWarning, match="training mode"),
        pytest.raises(camlib.LayerError, match="dropout"),
    ):
        camlib.METHODS["legrad"](dropping)(x)


# --------------------------------------------------------------------------------------
# registration and wrappers' errors
# --------------------------------------------------------------------------------------


def test_registered_names():
    for name in ("sscam", "iscam", "smoothgradcampp", "finercam", "sess", "refinecam", "legrad"):
        assert camlib.METHODS[name].name == name
    assert camlib.METHODS["Smooth-Grad-CAM++"] is camlib.METHODS["smoothgradcampp"]


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("sess", {"method": "guided_backprop"}, "signed input maps"),
        ("sess", {"pool": "median"}, "pool"),
        ("sess", {"pre_filter": 1.0}, "pre_filter"),
        ("refinecam", {"method": "nope"}, "unknown method"),
        ("refinecam", {"batch_size": 3}, "batch_size"),
        ("sscam", {"std": -1.0}, "std"),
        ("iscam", {"samples": 0}, "samples"),
        ("smoothgradcampp", {"noise": -0.1}, "noise"),
    ],
)
def test_bad_options(name, options, match):
    with pytest.raises(camlib.MethodError, match=match):
        camlib.METHODS[name](net(), "relu3", **options)
