"""Each method's raw map against a reference written directly from its formula (issue 9).

The references below share no code with camlib: A and g come from a forward hook and one
``torch.autograd.grad``; Score-CAM and Ablation-CAM loop over images and channels, one
forward pass each; Eigen-CAM uses ``torch.linalg.svd``. Models are float64 with random
weights, so agreement is checked at 1e-5 of the map's peak (the figures are ~1e-15).
Also here: the perturbation methods' batching (forward passes counted with a hook).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import torch
import torch.nn.functional as F
import torchcam.methods as tcm
import torchvision
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
from torch import nn

import camlib

from conftest import SmallConvNet, count_forwards

RTOL = 1e-5

# --------------------------------------------------------------------------------------
# models: torchvision families with random weights, and the 1-channel SmallConvNet
# --------------------------------------------------------------------------------------


def _vgg11_bn() -> nn.Module:
    model = torchvision.models.vgg11_bn(weights=None, num_classes=10)
    # the stock head has 120M parameters; a smaller one keeps its shape (7x7 pool -> MLP)
    model.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, 10)
    )
    return model


FACTORIES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "resnet18": (lambda: torchvision.models.resnet18(weights=None, num_classes=10), (3, 32, 32)),
    "vgg11_bn": (_vgg11_bn, (3, 32, 32)),
    "mobilenet_v3_small": (
        lambda: torchvision.models.mobilenet_v3_small(weights=None, num_classes=10),
        (3, 32, 32),
    ),
    "efficientnet_b0": (
        lambda: torchvision.models.efficientnet_b0(weights=None, num_classes=10),
        (3, 32, 32),
    ),
    "small": (lambda: SmallConvNet(1, 10), (1, 16, 16)),
}


@functools.cache
def model(name: str) -> nn.Module:
    """A seeded float64 model in eval mode (shared: tests must not change it)."""
    torch.manual_seed(0)
    return FACTORIES[name][0]().double().eval()


def inputs(name: str, n: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, *FACTORIES[name][1], dtype=torch.float64)


CLASSES = torch.tensor([3, 7, 1])


def class_score(classes: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda out: out.gather(1, classes[: out.shape[0], None])[:, 0]


def image_score(classes: torch.Tensor) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """Image i's class score in a one-image output."""
    return lambda out, i: out[0, classes[i]]


def capture(
    net: nn.Module, layer: str, x: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, g): the layer's output and d(sum of scores)/dA, with a forward hook and one
    ``torch.autograd.grad``. The hook hands on a clone, so later in-place ops (ReLU,
    ``out += identity``) cannot touch A."""
    store: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        leaf = out.detach().clone().requires_grad_(True)
        store.append(leaf)
        return leaf.clone()

    handle = net.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.enable_grad():
            (g,) = torch.autograd.grad(score(net(x)).sum(), store[0])
    finally:
        handle.remove()
    return store[0].detach(), g


def rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest difference relative to the reference map's peak."""
    return float((ours - ref).abs().max() / ref.abs().max())


def check(ours: torch.Tensor, ref: torch.Tensor, rtol: float = RTOL) -> float:
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    assert ref.amax() > 0, "the reference map is all zero: the case cannot tell methods apart"
    err = rel(ours, ref)
    assert err <= rtol, f"max relative difference {err:.3g} > {rtol}"
    return err


def raw(name: str, net: nn.Module, layer: str, x: torch.Tensor, targets, **options):
    ex = camlib.METHODS[name](net, layer, **options)
    return ex(x, targets, upsample=False, normalize=False)


# --------------------------------------------------------------------------------------
# the formulas of issue 9, in plain torch
# --------------------------------------------------------------------------------------

SPATIAL = (2, 3)


def ref_gradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.relu(torch.einsum("nc,nchw->nhw", g.mean(SPATIAL), a))


def ref_gradcampp(
    a: torch.Tensor, g: torch.Tensor, eps: float = 0.0, mask_zero_grad: bool = False
) -> torch.Tensor:
    """alpha = g^2 / (2 g^2 + (sum A) g^3 [+ eps]); w = sum alpha ReLU(g). ``eps`` and
    ``mask_zero_grad`` reproduce pytorch-grad-cam (eps=1e-6, alpha=0 where g=0)."""
    s = a.sum(SPATIAL, keepdim=True)
    denom = 2 * g**2 + s * g**3 + eps
    alpha = torch.zeros_like(g)
    ok = denom != 0
    alpha[ok] = (g**2)[ok] / denom[ok]
    if mask_zero_grad:
        alpha = torch.where(g != 0, alpha, 0)
    w = (alpha * torch.relu(g)).sum(SPATIAL)
    return torch.relu(torch.einsum("nc,nchw->nhw", w, a))


def ref_xgradcam(a: torch.Tensor, g: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """w = sum(g A) / sum(A) (0 where sum(A) = 0); ``eps`` as pytorch-grad-cam (1e-7)."""
    s = a.sum(SPATIAL)
    w = torch.zeros_like(s)
    ok = s != 0
    w[ok] = (g * a).sum(SPATIAL)[ok] / (s[ok] + eps)
    return torch.relu(torch.einsum("nc,nchw->nhw", w, a))


def ref_layercam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.relu((torch.relu(g) * a).sum(1))


def ref_hirescam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.relu((g * a).sum(1))


def ref_eigencam(a: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
    """Per image: M = (h*w, C), not centred; p = M v1 (first right singular vector),
    negated if it sums to < 0; ReLU."""
    maps = []
    for act in a:
        m = act.reshape(act.shape[0], -1).T
        _, _, vh = torch.linalg.svd(m, full_matrices=False)
        p = m @ vh[0]
        if p.sum() < 0:
            p = -p
        maps.append(torch.relu(p).reshape(act.shape[1:]))
    return torch.stack(maps)


GRADIENT_REFS = {
    "gradcam": ref_gradcam,
    "gradcam++": ref_gradcampp,
    "xgradcam": ref_xgradcam,
    "layercam": ref_layercam,
    "hirescam": ref_hirescam,
    "eigencam": ref_eigencam,
}


def ref_scorecam(
    net: nn.Module, x: torch.Tensor, a: torch.Tensor, score: Callable | None, classes=None
) -> torch.Tensor:
    """H_k = minmax(bilinear(A_k)); w_k = softmax(f(X H_k))_c (or ``score`` of it for a
    callable target); a constant A_k gets w_k = 0. One forward per (image, channel)."""
    n, c = a.shape[:2]
    w = torch.zeros(n, c, dtype=a.dtype)
    with torch.no_grad():
        for i in range(n):
            for k in range(c):
                ak = a[i, k]
                if ak.max() == ak.min():
                    continue
                up = F.interpolate(
                    ak[None, None], x.shape[2:], mode="bilinear", align_corners=False
                )[0, 0]
                h = (up - up.min()) / (up.max() - up.min())
                out = net(x[i : i + 1] * h)
                if score is None:
                    w[i, k] = torch.softmax(out, 1)[0, classes[i]]
                else:
                    w[i, k] = score(out)[0]
    return torch.relu(torch.einsum("nc,nchw->nhw", w, a))


def ref_ablationcam(
    net: nn.Module, layer: str, x: torch.Tensor, a: torch.Tensor, score: Callable
) -> torch.Tensor:
    """w_k = (y - y_k) / y, y_k the score with channel k of the layer output zeroed;
    ``score(output, i)`` is image i's score in a one-image output."""
    n, c = a.shape[:2]
    w = torch.zeros(n, c, dtype=a.dtype)
    module = net.get_submodule(layer)
    with torch.no_grad():
        for i in range(n):
            xi = x[i : i + 1]
            y = score(net(xi), i)
            for k in range(c):

                def zero(m, args, out, k=k):
                    out = out.clone()
                    out[:, k] = 0
                    return out

                handle = module.register_forward_hook(zero)
                try:
                    yk = score(net(xi), i)
                finally:
                    handle.remove()
                w[i, k] = (y - yk) / y if y != 0 else 0
    return torch.relu(torch.einsum("nc,nchw->nhw", w, a))


# --------------------------------------------------------------------------------------
# gradient methods and Eigen-CAM on every family
# --------------------------------------------------------------------------------------

GRADIENT_CASES = [
    ("resnet18", "layer2"),  # 4x4 at 32 px
    ("vgg11_bn", "features.20"),  # a ReLU of the 4th block, 4x4, then a non-GAP MLP head
    ("mobilenet_v3_small", "features.3"),  # hardswish and SE blocks, 4x4
    ("efficientnet_b0", "features.3"),  # SiLU: signed activations; C=40 > 16 positions
    ("small", "relu3"),  # 1-channel input
    ("small", "conv2"),  # before a ReLU: signed activations
]


@functools.cache
def captured(name: str, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = inputs(name)
    return capture(model(name), layer, x, class_score(CLASSES))


@pytest.mark.parametrize("method", list(GRADIENT_REFS))
@pytest.mark.parametrize(("name", "layer"), GRADIENT_CASES, ids=lambda v: str(v))
def test_gradient_methods_match_formula(method, name, layer):
    a, g = captured(name, layer)
    ours = raw(method, model(name), layer, inputs(name), CLASSES[:2])
    check(ours, GRADIENT_REFS[method](a, g))


def test_cam_matches_formula():
    """CAM (GAP + linear heads): ReLU(sum_k W[c, k] A_k)."""
    torch.manual_seed(2)
    for name, layer, x in [
        ("resnet18", "layer4", torch.randn(2, 3, 64, 64, dtype=torch.float64)),  # 2x2
        ("small", "relu3", inputs("small")),
    ]:
        net = model(name)
        a, _ = capture(net, layer, x, class_score(CLASSES))
        w = net.fc.weight.detach()[CLASSES[:2]]
        ref = torch.relu(torch.einsum("nc,nchw->nhw", w, a))
        check(raw("cam", net, layer, x, CLASSES[:2]), ref)


def test_reference_cases_tell_methods_apart():
    """The cases are not degenerate: the formulas give different maps on them."""
    a, g = captured("efficientnet_b0", "features.3")
    maps = [f(a, g) for f in GRADIENT_REFS.values()]
    for i in range(len(maps)):
        for j in range(i + 1, len(maps)):
            assert rel(maps[i], maps[j]) > 1e-3


# --------------------------------------------------------------------------------------
# Score-CAM and Ablation-CAM (few channels: one forward per pair in the reference)
# --------------------------------------------------------------------------------------

PERTURBATION_CASES = [
    ("small", "relu3", 2),  # 16 channels, post-ReLU (some constant-zero channels)
    ("small", "conv1", 2),  # 8 channels, signed
    ("mobilenet_v3_small", "features.1", 2),  # 16 channels
    ("efficientnet_b0", "features.1", 1),  # 16 channels, signed (SiLU)
    ("resnet18", "layer1", 1),  # 64 channels
]


@pytest.mark.parametrize(("name", "layer", "n"), PERTURBATION_CASES, ids=lambda v: str(v))
def test_scorecam_matches_formula(name, layer, n):
    net, x = model(name), inputs(name, n)
    a, _ = capture(net, layer, x, class_score(CLASSES))
    ours = raw("scorecam", net, layer, x, CLASSES[:n], batch_size=16)
    check(ours, ref_scorecam(net, x, a, None, CLASSES))


@pytest.mark.parametrize(("name", "layer", "n"), PERTURBATION_CASES, ids=lambda v: str(v))
def test_ablationcam_matches_formula(name, layer, n):
    net, x = model(name), inputs(name, n)
    a, _ = capture(net, layer, x, class_score(CLASSES))
    ours = raw("ablationcam", net, layer, x, CLASSES[:n], batch_size=16)
    check(ours, ref_ablationcam(net, layer, x, a, image_score(CLASSES)))


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_perturbation_methods_float32(method):
    """float32 models too (the reference in float64 from the same weights)."""
    torch.manual_seed(0)
    net32 = SmallConvNet().eval()
    net64 = SmallConvNet().double().eval()
    net64.load_state_dict({k: v.double() for k, v in net32.state_dict().items()})
    x = inputs("small")
    a, _ = capture(net64, "relu3", x, class_score(CLASSES))
    ours = raw(method, net32, "relu3", x.float(), CLASSES[:2])
    if method == "scorecam":
        ref = ref_scorecam(net64, x, a, None, CLASSES)
    else:
        ref = ref_ablationcam(net64, "relu3", x, a, image_score(CLASSES))
    assert ours.dtype == torch.float32
    check(ours.double(), ref, rtol=1e-4)  # float32 rounding of scores and masks


# --------------------------------------------------------------------------------------
# Score-CAM and Ablation-CAM batching: forward passes counted, batch sizes agree
# --------------------------------------------------------------------------------------


def constant_channel_net(dtype: torch.dtype = torch.float64) -> SmallConvNet:
    """SmallConvNet whose relu3 channels 0, 1 are constant 0.5 and 2, 3 constant 0."""
    torch.manual_seed(0)
    net = SmallConvNet().to(dtype).eval()
    with torch.no_grad():
        net.conv3.weight[:4] = 0
        net.conv3.bias[:4] = torch.tensor([0.5, 0.5, -0.5, -0.5])
    return net


def evaluated_pairs(method: str, a: torch.Tensor) -> torch.Tensor:
    """(N, C) pairs that need a forward: Score-CAM skips constant maps, Ablation-CAM
    all-zero ones (zeroing them changes nothing)."""
    flat = a.flatten(2)
    if method == "scorecam":
        return flat.amax(-1) != flat.amin(-1)
    return flat.ne(0).any(-1)


def reference_for(method, net, x, a, classes=None, target=None) -> torch.Tensor:
    if method == "scorecam":
        return ref_scorecam(net, x, a, target, classes)
    score = image_score(classes) if target is None else (lambda out, i: target(out)[0])
    return ref_ablationcam(net, "relu3", x, a, score)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_perturbation_batching_class_targets(method, dtype):
    """ceil(pairs / batch_size) no-grad forwards after the capturing one; skipped channels
    cost nothing; batch sizes 1, 7 and 1000 give the same map, the formula's."""
    net, x = constant_channel_net(dtype), inputs("small", 3).to(dtype)
    classes = CLASSES[:3]
    a, _ = capture(net, "relu3", x, class_score(classes))
    keep = evaluated_pairs(method, a)
    pairs = int(keep.sum())
    assert pairs < keep.numel() - 3 * 2  # at least the two constructed channels skipped
    assert bool(keep[:, :2].any()) == (method == "ablationcam")  # constant 0.5: ablated
    maps = []
    for bs in (1, 7, 1000):
        with count_forwards(net) as sizes:
            maps.append(raw(method, net, "relu3", x, classes, batch_size=bs))
        assert sizes[0] == 3, "the capturing pass explains the whole batch"
        assert len(sizes) == 1 + math.ceil(pairs / bs), f"batch_size={bs}: {sizes}"
        assert sum(sizes[1:]) == pairs and max(sizes[1:]) <= bs
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for other in maps[1:]:
        assert rel(other, maps[0]) <= tol
    ref = reference_for(method, constant_channel_net(), inputs("small", 3), a.double(), classes)
    check(maps[0].double(), ref, rtol=RTOL if dtype == torch.float64 else 1e-4)


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_perturbation_callable_target(method):
    """A callable target that reads per-image logits: Score-CAM weights are its value on
    the masked input (no softmax), Ablation-CAM's its relative drop. Channels go in blocks
    of all N images: ceil(channels / max(1, batch_size // N)) forwards."""

    def target(out: torch.Tensor) -> torch.Tensor:
        return out[:, 3] - out[:, 0]

    net, x = constant_channel_net(), inputs("small", 3)
    a, _ = capture(net, "relu3", x, target)
    channels = int(evaluated_pairs(method, a).any(0).sum())
    maps = []
    for bs in (1, 7, 1000):
        ex = camlib.METHODS[method](net, "relu3", batch_size=bs)
        with count_forwards(net) as sizes:
            maps.append(ex(x, target, upsample=False, normalize=False))
        assert ex.classes is None
        per = max(1, bs // 3)
        assert len(sizes) == 1 + math.ceil(channels / per), f"batch_size={bs}: {sizes}"
        assert all(s % 3 == 0 for s in sizes)
    for other in maps[1:]:
        assert rel(other, maps[0]) <= 1e-10
    check(maps[0], reference_for(method, net, x, a, target=target))
    # the callable really is per image: image-wise class targets give other maps
    by_class = raw(method, net, "relu3", x, CLASSES[:3], batch_size=7)
    assert rel(by_class, maps[0]) > 1e-3


# --------------------------------------------------------------------------------------
# peers: pytorch-grad-cam and torchcam, where they implement the same formula
# --------------------------------------------------------------------------------------

# Post-ReLU layers: on SiLU nets (efficientnet_b0 features.3) a channel's sum_ij A can be
# ~1e-9, where pytorch-grad-cam's eps changes XGrad-CAM's map by 50x and Grad-CAM++'s
# denominators sit near 0, so the peers' maps are dominated by their epsilons there.
PEER_CASES = [("resnet18", "layer2"), ("small", "relu3")]


def pgc_raw(cls, net: nn.Module, layer: str, x: torch.Tensor, classes, **options):
    """pytorch-grad-cam's raw map: what its ``get_cam_image`` returns (before its ReLU,
    OpenCV resize and normalisation), then ReLU. It runs on a copy of the model: it
    writes ``.grad`` and swaps modules (Ablation-CAM)."""
    net = copy.deepcopy(net)
    cam = cls(model=net, target_layers=[net.get_submodule(layer)], **options)
    got = []
    original = cam.get_cam_image

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        got.append(out)
        return out

    cam.get_cam_image = spy
    try:
        cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        cam.activations_and_grads.release()
    return torch.relu(torch.as_tensor(np.asarray(got[0])))


def torchcam_raw(cls, net: nn.Module, layer: str, x: torch.Tensor, classes, **options):
    """torchcam's map before its normalisation (``normalized=False``; ReLU included)."""
    with cls(net, target_layer=layer) as extractor, torch.enable_grad():
        scores = net(x)
        (cam,) = extractor(
            class_idx=[int(c) for c in classes], scores=scores, normalized=False, **options
        )
    return cam.detach()


PGC_SAME_FORMULA = {
    "gradcam": "GradCAM",
    # pytorch-grad-cam adds eps=1e-7 to sum_ij A: the reference with that eps equals it
    # (below); the eps-free camlib map stays within 1e-5 of it on these cases (<= 5e-8)
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "hirescam": "HiResCAM",
}


@pytest.mark.parametrize("method", list(PGC_SAME_FORMULA))
@pytest.mark.parametrize(("name", "layer"), PEER_CASES, ids=lambda v: str(v))
def test_equal_to_pytorch_grad_cam(method, name, layer):
    net, x, classes = model(name), inputs(name), CLASSES[:2]
    theirs = pgc_raw(getattr(pgc, PGC_SAME_FORMULA[method]), net, layer, x, classes)
    ours = raw(method, net, layer, x, classes)
    if method == "xgradcam":  # their eps reproduced exactly; camlib is the eps-free formula
        a, g = captured(name, layer)
        check(ref_xgradcam(a, g, eps=1e-7), theirs, rtol=1e-9)
    check(ours, theirs)


@pytest.mark.parametrize(("name", "layer"), PEER_CASES, ids=lambda v: str(v))
def test_gradcampp_equals_pytorch_grad_cam_with_its_epsilon(name, layer):
    """pytorch-grad-cam's Grad-CAM++ is the formula with 1e-6 added to the denominator
    (and alpha = 0 where g = 0): the reference with that eps equals it; with eps = 0 it is
    camlib's (test_gradient_methods_match_formula). On gradients of order 1e-3 the eps is
    not negligible, so the two libraries differ there."""
    a, g = captured(name, layer)
    theirs = pgc_raw(pgc.GradCAMPlusPlus, model(name), layer, inputs(name), CLASSES[:2])
    check(ref_gradcampp(a, g, eps=1e-6, mask_zero_grad=True), theirs, rtol=1e-9)
    ours = raw("gradcam++", model(name), layer, inputs(name), CLASSES[:2])
    check(ours, ref_gradcampp(a, g))


def test_gradcampp_equals_pytorch_grad_cam_when_its_epsilon_is_negligible():
    """Logits scaled by 1e4 (the head's weights): g^2 ~ 1e8 x larger, so 1e-6 vanishes and
    pytorch-grad-cam's map is camlib's. Unscaled, the two differ (the eps matters)."""
    name, layer, x, classes = "resnet18", "layer2", inputs("resnet18"), CLASSES[:2]
    net = copy.deepcopy(model(name))
    unscaled = rel(
        raw("gradcam++", net, layer, x, classes),
        pgc_raw(pgc.GradCAMPlusPlus, net, layer, x, classes),
    )
    with torch.no_grad():
        net.fc.weight.mul_(1e4)
        net.fc.bias.mul_(1e4)
    ours = raw("gradcam++", net, layer, x, classes)
    check(ours, pgc_raw(pgc.GradCAMPlusPlus, net, layer, x, classes))
    assert unscaled > 1e-3, f"eps should matter on unscaled logits ({unscaled:.2g})"


def test_ablationcam_equals_pytorch_grad_cam():
    """pytorch-grad-cam zeroes the channel when the layer's minimum is 0 (a post-ReLU
    layer, as here; otherwise it sets min - 1e7, another formula) and keeps its scores in
    float32, hence a float32 model and the 1e-4 tolerance."""
    torch.manual_seed(0)
    net, x, classes = SmallConvNet().eval(), inputs("small").float(), CLASSES[:2]
    theirs = pgc_raw(pgc.AblationCAM, net, "relu3", x, classes, batch_size=16)
    check(raw("ablationcam", net, "relu3", x, classes), theirs, rtol=1e-4)


TORCHCAM_SAME_FORMULA = {
    "gradcam": ("GradCAM", {}),
    "xgradcam": ("XGradCAM", {"eps": 0.0}),  # its eps (1e-8 in sum_ij A) set to 0
    "layercam": ("LayerCAM", {}),
}


@pytest.mark.parametrize("method", list(TORCHCAM_SAME_FORMULA))
@pytest.mark.parametrize(("name", "layer"), PEER_CASES, ids=lambda v: str(v))
def test_equal_to_torchcam(method, name, layer):
    cls, options = TORCHCAM_SAME_FORMULA[method]
    net, x, classes = model(name), inputs(name), CLASSES[:2]
    theirs = torchcam_raw(getattr(tcm, cls), net, layer, x, classes, **options)
    check(raw(method, net, layer, x, classes), theirs)


@pytest.mark.parametrize(("name", "layer"), PEER_CASES, ids=lambda v: str(v))
def test_torchcam_gradcampp_reduces_to_relu_g_cubed(name, layer):
    """torchcam's GradCAMpp divides a boolean-masked *copy* of g^2 in place, so alpha stays
    g^2 and w_k = sum_ij ReLU(g)^3: not Grad-CAM++ (camlib follows the paper's formula)."""
    a, g = captured(name, layer)
    theirs = torchcam_raw(tcm.GradCAMpp, model(name), layer, inputs(name), CLASSES[:2])
    cubed = torch.relu(torch.einsum("nc,nchw->nhw", torch.relu(g).pow(3).sum(SPATIAL), a))
    check(theirs, cubed, rtol=1e-9)
    ours = raw("gradcam++", model(name), layer, inputs(name), CLASSES[:2])

    def peak1(m: torch.Tensor) -> torch.Tensor:
        return m / m.flatten(1).amax(1).clamp_min(1e-300)[:, None, None]

    assert rel(peak1(ours), peak1(theirs)) > 1e-2


def test_torchcam_scorecam_is_another_formula():
    """torchcam's ScoreCAM scales A_k at its own size, then softmaxes the score *increase*
    over channels; camlib (the paper, pytorch-grad-cam) softmaxes over classes. Its
    weights sum to 1 over channels; ours are class probabilities, one per channel."""
    torch.manual_seed(0)
    net, x, classes = SmallConvNet().eval(), inputs("small").float(), CLASSES[:2]
    with tcm.ScoreCAM(net, target_layer="relu3", batch_size=16) as extractor:
        net(x)
        (theirs,) = extractor(class_idx=[int(c) for c in classes], normalized=False)
    ours = raw("scorecam", net, "relu3", x, classes)
    assert theirs.amax() > 0 and rel(ours, theirs) > 1e-2


class ActivationIsInput(nn.Module):
    """The target layer's activation is the input itself (an Identity), then GAP + fc."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.fc = nn.Linear(channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.feat(x).mean((2, 3)))


def test_eigencam_sign_is_fixed_where_pytorch_grad_cam_inverts():
    """Non-negative activations with a bright 3x3 blob: camlib's Eigen-CAM (not centred,
    sign so the map sums >= 0) peaks on the blob for every seed; pytorch-grad-cam's
    (centred, sign left to the SVD) comes out inverted for some of them."""
    torch.manual_seed(0)
    net = ActivationIsInput(6).double().eval()
    inverted = 0
    for seed in range(30):
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(1, 6, 8, 8, generator=gen, dtype=torch.float64) * 0.3
        i, j = torch.randint(0, 5, (2,), generator=gen).tolist()
        x[0, :, i : i + 3, j : j + 3] += 0.5 + torch.rand(6, 1, 1, generator=gen, dtype=x.dtype)
        blob = torch.zeros(8, 8, dtype=torch.bool)
        blob[i : i + 3, j : j + 3] = True
        ours = raw("eigencam", net, "feat", x, None)[0]
        check(ours[None], ref_eigencam(x))
        assert ours[blob].min() > ours[~blob].max(), f"seed {seed}: camlib's map is inverted"
        theirs = torch.relu(torch.as_tensor(get_2d_projection(x.numpy())[0]))
        if theirs[blob].mean() < theirs[~blob].mean():
            inverted += 1
            assert ours.argmax() in blob.flatten().nonzero()
    assert inverted > 0, "pytorch-grad-cam never inverted: the case shows nothing"
