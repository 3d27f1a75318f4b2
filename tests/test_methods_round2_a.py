"""Round 2 (a) methods against pytorch-grad-cam (1.5.7) and formulas written here.

EigenGrad-CAM, Grad-CAM element-wise, KPCA-CAM, FEM, Seg-Eigen-CAM, FullGrad, Shapley-CAM,
Deep Feature Factorization and Random-CAM. Models are float64 with random weights:
torchvision's resnet18 (10 classes) at 64x64 and the 1-channel SmallConvNet at 16x16.
A and g come from a forward hook and one ``torch.autograd.grad`` (``capture``, shared
with test_methods_reference.py); pytorch-grad-cam runs on a copy of the model (it writes
``.grad``) and its raw map is read before its normalisation. Where pytorch-grad-cam
departs from the paper (FEM) or from camlib's conventions (EigenGrad-CAM centres), a test
shows the difference; its own formula, epsilons included, is reproduced here.

``python tests/test_methods_round2_a.py`` prints the agreement figures quoted in
docs/methods_round2_a.md.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import torch
import torch.nn.functional as F
import torchvision
from pytorch_grad_cam.feature_factorization.deep_feature_factorization import dff as pgc_dff
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
)
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning
from test_methods_reference import capture
from test_transformers import CLASSES as VIT_CLASSES
from test_transformers import TINY_VIT_LAYER, pgc_vit_reshape_transform, tiny_vit
from test_transformers import images as vit_images
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import camlib
from camlib.methods.dff import nmf
from camlib.methods.eigencam import first_component
from camlib.methods.fullgrad import effective_bias

from conftest import SmallConvNet, left_alone

RTOL = 1e-6  # agreement with pytorch-grad-cam, relative to the reference map's peak
EXACT = 1e-10  # agreement with a formula computed here in float64
CLASSES = torch.tensor([3, 7])

# --------------------------------------------------------------------------------------
# models, inputs, comparisons
# --------------------------------------------------------------------------------------


@functools.cache
def model(name: str) -> nn.Module:
    """A seeded float64 model in eval mode (shared: tests must not change it)."""
    torch.manual_seed(0)
    if name == "resnet18":
        net = torchvision.models.resnet18(weights=None, num_classes=10).double().eval()
        with torch.no_grad():  # fresh batch norms add nothing (mean 0, var 1, beta 0)
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
        return net
    if name == "smooth":
        return SmoothNet().double().eval()
    return SmallConvNet(1, 10).double().eval()


def inputs(name: str, n: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    shape = (3, 64, 64) if name == "resnet18" else (1, 16, 16)
    return torch.randn(n, *shape, dtype=torch.float64)


class SmoothNet(SmallConvNet):
    """SmallConvNet with SiLU after relu3's conv: the score is not piecewise linear in the
    relu3 activation, so its Hessian there is not 0."""

    def __init__(self) -> None:
        super().__init__(1, 10)
        self.conv4 = nn.Conv2d(16, 16, 3, padding=1)

    def tail(self, a: torch.Tensor) -> torch.Tensor:
        """The logits from relu3's output."""
        return self.fc(self.gap(F.silu(self.conv4(a))).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(x))
        x = self.pool(self.relu2(self.conv2(x)))
        return self.tail(self.relu3(self.conv3(x)))


def class_score(out: torch.Tensor) -> torch.Tensor:
    return out.gather(1, CLASSES[: out.shape[0], None])[:, 0]


@functools.cache
def captured(name: str, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    return capture(model(name), layer, inputs(name), class_score)


def raw(method: str, net: nn.Module, layer, x: torch.Tensor, targets=CLASSES, **options):
    cls = camlib.METHODS[method]
    ex = cls(net, layer, **options) if cls.uses_layer else cls(net, **options)
    return ex(x, targets, upsample=False, normalize=False)


def diff(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max abs difference, max abs difference / the reference's peak)."""
    ref = torch.as_tensor(np.asarray(ref)).to(ours.dtype) if not torch.is_tensor(ref) else ref
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    err = float((ours - ref.to(ours.dtype)).abs().max())
    return err, err / float(ref.abs().max())


def check(ours: torch.Tensor, ref, rtol: float) -> tuple[float, float]:
    ref = torch.as_tensor(np.asarray(ref)) if not torch.is_tensor(ref) else ref
    assert float(ref.abs().max()) > 0, "the reference is all zero: the case shows nothing"
    got = diff(ours, ref)
    assert got[1] <= rtol, f"max relative difference {got[1]:.3g} > {rtol}"
    return got


def peak1(m: torch.Tensor) -> torch.Tensor:
    """Each map divided by its peak (to compare maps of different scales)."""
    return m / m.flatten(1).amax(1).clamp_min(1e-300).view(-1, *[1] * (m.dim() - 1))


def pgc_targets(classes=CLASSES, target=ClassifierOutputTarget) -> list:
    return [target(int(c)) for c in classes]


def pgc_raw(
    cls, net: nn.Module, layer: str, x: torch.Tensor, classes, *, targets_cls=None, **options
):
    """pytorch-grad-cam's raw map: what its ``get_cam_image`` returns (before its resize
    and normalisation), then its ReLU; on a copy of the model (it writes ``.grad``).
    ``targets_cls``: its target class (default ``ClassifierOutputTarget``)."""
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
        cam(input_tensor=x, targets=pgc_targets(classes, targets_cls or ClassifierOutputTarget))
    finally:
        cam.activations_and_grads.release()
    return torch.relu(torch.as_tensor(np.asarray(got[0])))


PEER_VS_FORMULA: dict[tuple[str, str, str], tuple[float, float]] = {}
"""pytorch-grad-cam's raw map against the formula written here with its conventions
(epsilons, centring, sign), where camlib computes another: filled by the checks below."""

CASES = [("resnet18", "layer2"), ("resnet18", "layer3"), ("small", "relu3")]

# --------------------------------------------------------------------------------------
# formulas written here
# --------------------------------------------------------------------------------------


def first_direction(m: torch.Tensor, centre: bool) -> torch.Tensor:
    """Per image, positions x channels (optionally centred per channel), projected on the
    first right singular vector (``torch.linalg.svd``); sign as the SVD returns it."""
    out = []
    for act in m:
        x = act.reshape(act.shape[0], -1).T
        if centre:
            x = x - x.mean(0)
        out.append((x @ torch.linalg.svd(x, full_matrices=False).Vh[0]).reshape(act.shape[1:]))
    return torch.stack(out)


def sum_positive(p: torch.Tensor) -> torch.Tensor:
    """Each map's sign chosen so that it sums to >= 0 (camlib's Eigen-CAM rule)."""
    return torch.stack([q if q.sum() >= 0 else -q for q in p])


def extremes_positive(p: torch.Tensor) -> torch.Tensor:
    """Each map flipped when |min| > |max| (Seg-Eigen-CAM's Eq. 13)."""
    return torch.stack([-q if q.min().abs() > q.max().abs() else q for q in p])


def ref_fem(a: torch.Tensor, k: float = 2.0) -> torch.Tensor:
    """The FEM authors' code (NumPy, one image at a time): masks A > mean + k std (std with
    ddof 0) per channel, weighted by the channel means, summed; then camlib's ReLU."""
    out = []
    for act in a.numpy():
        mean, std = act.mean(axis=(1, 2)), act.std(axis=(1, 2))
        masks = act > (mean + k * std)[:, None, None]
        out.append((mean[:, None, None] * masks).sum(0))
    return torch.relu(torch.as_tensor(np.stack(out)))


def ref_pgc_fem(a: torch.Tensor, k: float = 2.0) -> torch.Tensor:
    """pytorch-grad-cam's FEM: the fraction of each channel's positions above the
    threshold weights the activations (not the masks)."""
    mean, std = a.mean((2, 3), keepdim=True), a.std((2, 3), correction=0, keepdim=True)
    frac = (a > mean + k * std).to(a.dtype).mean((2, 3))
    return torch.relu(torch.einsum("nc,nchw->nhw", frac, a))


def ref_elementwise(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.relu(torch.relu(g * a).sum(1))


# --------------------------------------------------------------------------------------
# Grad-CAM element-wise, EigenGrad-CAM, Seg-Eigen-CAM
# --------------------------------------------------------------------------------------


def agreement_elementwise(name: str, layer: str) -> tuple[float, float]:
    net, x = model(name), inputs(name)
    ours = raw("gradcam_elementwise", net, layer, x)
    check(ours, ref_elementwise(*captured(name, layer)), EXACT)
    return check(ours, pgc_raw(pgc.GradCAMElementWise, net, layer, x, CLASSES), RTOL)


@pytest.mark.parametrize(("name", "layer"), [*CASES, ("small", "conv2")], ids=str)
def test_gradcam_elementwise_equals_pytorch_grad_cam(name, layer):
    """ReLU(sum_k ReLU(g_k A_k)): pytorch-grad-cam's formula, no epsilon; conv2 is before
    its ReLU (signed activations), where it differs from HiResCAM."""
    agreement_elementwise(name, layer)
    if layer == "conv2":
        a, g = captured(name, layer)
        hires = torch.relu((g * a).sum(1))
        assert diff(ref_elementwise(a, g), hires)[1] > 1e-2


def agreement_eigengrad(name: str, layer: str) -> tuple[float, float]:
    """pytorch-grad-cam's EigenGrad-CAM is the *centred* first component of A g with the
    SVD's sign: the formula written here, with the sign that fits, equals it (to its
    float32 output). Returns camlib's difference from it."""
    net, x = model(name), inputs(name)
    a, g = captured(name, layer)
    theirs = pgc_raw(pgc.EigenGradCAM, net, layer, x, CLASSES)
    centred = first_direction(a * g, centre=True)
    fits = [
        min((diff(torch.relu(s * p), t)[1], s) for s in (1, -1))
        for p, t in zip(centred, theirs, strict=True)
    ]
    ref = torch.stack([torch.relu(s * p) for (_, s), p in zip(fits, centred, strict=True)])
    PEER_VS_FORMULA[("eigengradcam", name, layer)] = check(ref, theirs, 1e-6)
    ours = raw("eigengradcam", net, layer, x)
    check(ours, torch.relu(sum_positive(first_direction(a * g, centre=False))), EXACT)
    return diff(peak1(ours), peak1(theirs))


@pytest.mark.parametrize(("name", "layer"), CASES, ids=str)
def test_eigengradcam_is_eigencam_of_a_times_g(name, layer):
    """camlib: the uncentred first component of A g, sign so the map sums >= 0 (as its
    Eigen-CAM); pytorch-grad-cam centres it, which changes the maps."""
    err = agreement_eigengrad(name, layer)[1]
    assert err > 1e-2, f"centring changed nothing ({err:.2g}): the case shows nothing"
    a, g = captured(name, layer)
    ours = raw("eigengradcam", model(name), layer, inputs(name))
    check(ours, first_component(a * g).relu(), EXACT)  # camlib's Eigen-CAM of A g


def agreement_segeigen(name: str, layer: str) -> tuple[float, float]:
    net, x = model(name), inputs(name)
    a, g = captured(name, layer)
    ours = raw("segeigencam", net, layer, x)
    check(ours, torch.relu(extremes_positive(first_direction(g.abs() * a, centre=True))), EXACT)
    return check(ours, pgc_raw(pgc.SegEigenCAM, net, layer, x, CLASSES), RTOL)


@pytest.mark.parametrize(("name", "layer"), CASES, ids=str)
def test_segeigencam_equals_pytorch_grad_cam(name, layer):
    """Centred first component of |g| A, flipped when |min| > |max|; pytorch-grad-cam's
    output is float32, hence agreement to its rounding."""
    agreement_segeigen(name, layer)


def test_segeigencam_sign_rule_and_absolute_gradient():
    """A map whose most negative value outweighs its largest is flipped; with g -> -g the
    map is unchanged (|g|), unlike EigenGrad-CAM."""
    torch.manual_seed(3)
    a = torch.rand(2, 6, 5, 5, dtype=torch.float64)
    g = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    ex = camlib.SegEigenCAM if hasattr(camlib, "SegEigenCAM") else camlib.METHODS["segeigencam"]
    seg = ex(nn.Identity())
    m1, m2 = seg.combine(a, g), seg.combine(a, -g)
    torch.testing.assert_close(m1, m2, rtol=0, atol=0)
    p = first_direction(g.abs() * a, centre=True)
    for q, m in zip(p, m1, strict=True):
        want = torch.relu(-q if q.min().abs() > q.max().abs() else q)
        torch.testing.assert_close(m, want, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------
# KPCA-CAM
# --------------------------------------------------------------------------------------

KPCA_CASES = [
    ("resnet18", "layer2", {}),  # 8x8 = 64 positions: scikit-learn's dense eigh
    ("resnet18", "layer1", {"kernel": "rbf", "gamma": 0.01}),  # 256 positions: ARPACK
    ("small", "relu3", {}),
    ("small", "relu3", {"kernel": "rbf"}),
]


def agreement_kpca(name: str, layer: str, options: dict) -> tuple[float, float]:
    net, x = model(name), inputs(name)
    theirs = pgc_raw(pgc.KPCA_CAM, net, layer, x, CLASSES, **options)
    return check(raw("kpcacam", net, layer, x, **options), theirs, RTOL)


@pytest.mark.parametrize(("name", "layer", "options"), KPCA_CASES, ids=str)
def test_kpcacam_equals_pytorch_grad_cam(name, layer, options):
    """scikit-learn's KernelPCA (sigmoid kernel, gamma = 1/C, coef0 = 1 by default) on the
    channel-centred positions; pytorch-grad-cam's output is float32."""
    agreement_kpca(name, layer, options)


def test_kpcacam_linear_kernel_is_the_centred_eigencam():
    """With the linear kernel, kernel PCA is PCA: the centred first component, sign so
    the entry of largest magnitude is positive."""
    a, _ = captured("resnet18", "layer3")
    ours = raw("kpcacam", model("resnet18"), "layer3", inputs("resnet18"), kernel="linear")
    p = first_direction(a, centre=True)
    p = torch.stack([q if q.flatten()[q.abs().argmax()] > 0 else -q for q in p])
    check(ours, torch.relu(p), 1e-9)


def test_kpcacam_checks_its_options():
    for bad in [{"kernel": "cosine"}, {"gamma": "big"}, {"degree": 0}, {"coef0": float("nan")}]:
        with pytest.raises(camlib.MethodError):
            camlib.METHODS["kpcacam"](model("small"), "relu3", **bad)


# --------------------------------------------------------------------------------------
# FEM
# --------------------------------------------------------------------------------------


def agreement_fem(name: str, layer: str) -> tuple[float, float]:
    """camlib follows the FEM authors' code; pytorch-grad-cam computes another formula
    (``ref_pgc_fem``), which equals it exactly. Returns camlib's difference from it."""
    net, x = model(name), inputs(name)
    a, _ = captured(name, layer)
    ours = raw("fem", net, layer, x)
    check(ours, ref_fem(a), EXACT)
    theirs = pgc_raw(pgc.FEM, net, layer, x, CLASSES)
    PEER_VS_FORMULA[("fem", name, layer)] = check(ref_pgc_fem(a), theirs, EXACT)
    return diff(peak1(ours), peak1(theirs))


@pytest.mark.parametrize(("name", "layer"), CASES, ids=str)
def test_fem_follows_the_paper_where_pytorch_grad_cam_does_not(name, layer):
    """FEM (Fuad et al. 2020, the authors' code): sum_c mean_c [A_c > mean_c + 2 std_c].
    pytorch-grad-cam weights A_c by the fraction of positions above the threshold: the
    maps differ."""
    assert agreement_fem(name, layer)[1] > 1e-2


def test_fem_constant_channel_and_k():
    """A constant channel (std 0) never exceeds its mean: its mask is empty, no NaN; k
    moves the threshold."""
    a = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    a[0, 0] = 5.0  # constant
    a[0, 1, 1, 2] = 3.0  # one hot spot: mean 3/16, above mean + 2 std
    a[0, 2] = torch.arange(16, dtype=torch.float64).view(4, 4)
    fem = camlib.METHODS["fem"](nn.Identity())
    got = fem.combine(a, 0, None)
    want = torch.zeros(4, 4, dtype=torch.float64)
    want[1, 2] = 3.0 / 16
    torch.testing.assert_close(got[0], want, rtol=0, atol=1e-15)  # the ramp: max 15 < 7.5 + 2*4.6
    low = camlib.METHODS["fem"](nn.Identity(), k=0.5).combine(a, 0, None)[0]
    ramp = torch.arange(16, dtype=torch.float64).view(4, 4)
    torch.testing.assert_close(low, want + 7.5 * (ramp > 7.5 + 0.5 * ramp.std(correction=0)))
    with pytest.raises(camlib.MethodError, match="k must be"):
        camlib.METHODS["fem"](nn.Identity(), k=float("nan"))


# --------------------------------------------------------------------------------------
# Random-CAM
# --------------------------------------------------------------------------------------


def test_randomcam_is_seeded_uniform_weights():
    """w = 2 U[0, 1) - 1 from torch.Generator().manual_seed(seed) in float64, one weight
    per channel shared by every image; pytorch-grad-cam draws per (image, channel) from
    NumPy's global generator (reproduced with np.random.seed)."""
    net, x = model("resnet18"), inputs("resnet18")
    a, _ = captured("resnet18", "layer3")
    for seed in (0, 5):
        w = torch.rand(a.shape[1], generator=torch.Generator().manual_seed(seed), dtype=a.dtype)
        ref = torch.relu(torch.einsum("c,nchw->nhw", 2 * w - 1, a))
        check(raw("randomcam", net, "layer3", x, seed=seed), ref, EXACT)
    assert diff(raw("randomcam", net, "layer3", x, seed=0), ref)[1] > 1e-2  # seeds differ
    # the class does not matter; an image's map does not depend on its batch
    torch.testing.assert_close(
        raw("randomcam", net, "layer3", x, targets=[0, 1]), raw("randomcam", net, "layer3", x)
    )
    torch.testing.assert_close(
        raw("randomcam", net, "layer3", x[1:], CLASSES[1:]), raw("randomcam", net, "layer3", x)[1:]
    )
    np.random.seed(0)
    theirs = pgc_raw(pgc.RandomCAM, net, "layer3", x, CLASSES)
    w_np = np.random.RandomState(0).uniform(-1, 1, size=a.shape[:2])
    ref_np = torch.relu(torch.einsum("nc,nchw->nhw", torch.as_tensor(w_np), a))
    PEER_VS_FORMULA[("randomcam", "resnet18", "layer3")] = check(ref_np, theirs, EXACT)


# --------------------------------------------------------------------------------------
# Shapley-CAM
# --------------------------------------------------------------------------------------


def ref_shapley(net: SmoothNet, x: torch.Tensor, score: Callable) -> torch.Tensor:
    """w = mean_ij(g - H A / 2) with H A from torch.autograd.functional.hvp on the
    network's tail as a function of the relu3 activation."""
    with torch.no_grad():
        a = net.relu3(net.conv3(net.pool(net.relu2(net.conv2(net.relu1(net.conv1(x)))))))

    def f(act: torch.Tensor) -> torch.Tensor:
        return score(net.tail(act)).sum()

    with torch.enable_grad():
        a1 = a.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(f(a1), a1)
        _, ha = torch.autograd.functional.hvp(f, a, a)
    w = (g - 0.5 * ha).mean((2, 3))
    return torch.relu(torch.einsum("nc,nchw->nhw", w, a))


def softmax_score(out: torch.Tensor) -> torch.Tensor:
    return out.softmax(1).gather(1, CLASSES[: out.shape[0], None])[:, 0]


def agreement_shapley(name: str, layer: str, softmax: bool) -> tuple[float, float]:
    net, x = model(name), inputs(name)
    target = ClassifierOutputSoftmaxTarget if softmax else ClassifierOutputTarget
    ours = raw("shapleycam", net, layer, x, softmax_score if softmax else CLASSES)
    theirs = pgc_raw(pgc.ShapleyCAM, net, layer, x, CLASSES, targets_cls=target)
    return check(ours, theirs, RTOL)


@pytest.mark.parametrize("softmax", [False, True], ids=["logit", "softmax"])
def test_shapleycam_matches_hessian_vector_formula_and_pytorch_grad_cam(softmax):
    """SiLU after the layer: H A != 0, and the map is not Grad-CAM's."""
    net, x = model("smooth"), inputs("smooth")
    score = softmax_score if softmax else class_score
    ours = raw("shapleycam", net, "relu3", x, score if softmax else CLASSES)
    check(ours, ref_shapley(net, x, score), EXACT)
    agreement_shapley("smooth", "relu3", softmax)
    gradcam = raw("gradcam", net, "relu3", x, score if softmax else CLASSES)
    assert diff(peak1(ours), peak1(gradcam))[1] > 1e-3


def test_shapleycam_is_gradcam_where_the_head_is_piecewise_linear():
    """resnet18's layer4 -> GAP -> fc, logit target: H = 0 and Shapley-CAM is Grad-CAM;
    a softmax target makes H != 0 (and agrees with pytorch-grad-cam there too)."""
    net, x = model("resnet18"), inputs("resnet18")
    check(raw("shapleycam", net, "layer4", x), raw("gradcam", net, "layer4", x), EXACT)
    agreement_shapley("resnet18", "layer3", softmax=True)
    soft = raw("shapleycam", net, "layer4", x, softmax_score)
    assert diff(peak1(soft), peak1(raw("gradcam", net, "layer4", x, softmax_score)))[1] > 1e-6


def test_shapleycam_on_a_vision_transformer():
    """Token layout (class token dropped), GELU and softmax attention after the layer:
    camlib's map equals w = mean(g - H A / 2) with H A from torch.autograd.functional.hvp
    on the model with the layer's output replaced. camlib runs attention with the plain
    SDPA kernel: the fused CPU kernel has no double backward, which is why
    pytorch-grad-cam's ShapleyCAM raises on this model (and with the plain kernel it still
    fails: its get_cam_image receives the token activations untransformed)."""
    net, x = tiny_vit(), vit_images()
    module = net.get_submodule(TINY_VIT_LAYER)
    classes = torch.tensor(VIT_CLASSES)
    store: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, a, out: store.append(out.detach()))
    try:
        with torch.no_grad():
            net(x)
    finally:
        handle.remove()
    a0 = store[0]

    def f(a: torch.Tensor) -> torch.Tensor:
        handle = module.register_forward_hook(lambda m, args, out: a)
        try:
            return net(x).gather(1, classes[:, None]).sum()
        finally:
            handle.remove()

    with sdpa_kernel(SDPBackend.MATH), torch.enable_grad():
        a1 = a0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(f(a1), a1)
        _, ha = torch.autograd.functional.hvp(f, a0, a0)
    grid = pgc_vit_reshape_transform
    w = grid(g - 0.5 * ha).mean((2, 3))
    ref = torch.relu(torch.einsum("nc,nchw->nhw", w, grid(a0)))
    with left_alone(net):
        ours = raw("shapleycam", net, TINY_VIT_LAYER, x, classes)
    check(ours, ref, 1e-9)
    gradcam = raw("gradcam", net, TINY_VIT_LAYER, x, classes)
    assert diff(peak1(ours), peak1(gradcam))[1] > 1e-2


# --------------------------------------------------------------------------------------
# FullGrad
# --------------------------------------------------------------------------------------


def fullgrad_terms(net: nn.Module, x: torch.Tensor, score: Callable):
    """(x * dy/dx, [b * dy/dz for every Conv2d-with-bias / BatchNorm2d output z]) with
    forward hooks and one autograd.grad; eval-mode batch norm biases from running stats."""
    outs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(m: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        if isinstance(m, nn.BatchNorm2d):
            b = m.bias - m.running_mean * m.weight / torch.sqrt(m.running_var + m.eps)
        else:
            b = m.bias
        outs.append((out, b.detach()))
        return out.clone()

    layers = [
        m
        for m in net.modules()
        if isinstance(m, nn.BatchNorm2d) or (isinstance(m, nn.Conv2d) and m.bias is not None)
    ]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.enable_grad():
            xl = x.clone().requires_grad_(True)
            y = score(net(xl))
            grads = torch.autograd.grad(y.sum(), [xl, *[o for o, _ in outs]])
    finally:
        for h in handles:
            h.remove()
    bias_terms = [g * b.view(1, -1, 1, 1) for g, (_, b) in zip(grads[1:], outs, strict=True)]
    return x * grads[0], bias_terms, y.detach()


def rescale(t: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Each (image, channel) map of t to [0, 1] by min-max (``eps`` added to the span, as
    pytorch-grad-cam's scale_cam_image does); a constant map becomes 0."""
    flat = t.flatten(2)
    lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    span = hi - lo + eps
    out = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, 1), 0)
    return out.view_as(t)


def ref_fullgrad(net: nn.Module, x: torch.Tensor, score: Callable, eps: float = 0.0):
    """sum_c rescale|x g_x|_c + sum_layers sum_c up(rescale|b g_z|_c) (Eq. 7)."""
    xg, terms, _ = fullgrad_terms(net, x, score)
    size = x.shape[2:]
    total = rescale(xg.abs(), eps).sum(1)
    for t in terms:
        up = F.interpolate(rescale(t.abs(), eps), size=size, mode="bilinear", align_corners=False)
        total = total + up.sum(1)
    return total


def pgc_fullgrad_raw(net: nn.Module, x: torch.Tensor, classes=CLASSES) -> torch.Tensor:
    """pytorch-grad-cam's FullGrad before its final normalisation (the output of its
    compute_cam_per_layer, summed over layers)."""
    net = copy.deepcopy(net)
    cam = pgc.FullGrad(model=net, target_layers=[])
    got = []
    original = cam.compute_cam_per_layer

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        got.append(out)
        return out

    cam.compute_cam_per_layer = spy
    try:
        cam(input_tensor=x, targets=pgc_targets(classes))
    finally:
        cam.activations_and_grads.release()
    return torch.as_tensor(np.asarray(got[0]))[:, 0].double()


def agreement_fullgrad(name: str) -> tuple[float, float]:
    """pytorch-grad-cam = Eq. 7 with its 1e-7 in each rescale (float32 output); camlib =
    Eq. 7 with none. Returns camlib's difference from pytorch-grad-cam."""
    net, x = model(name), inputs(name)
    theirs = pgc_fullgrad_raw(net, x)
    with_eps = check(ref_fullgrad(net, x, class_score, eps=1e-7), theirs, 1e-6)
    PEER_VS_FORMULA[("fullgrad", name, "")] = with_eps
    ours = raw("fullgrad", net, None, x)
    check(ours, ref_fullgrad(net, x, class_score), EXACT)
    return diff(ours, theirs)


@pytest.mark.parametrize("name", ["resnet18", "small"])
def test_fullgrad_equals_formula_and_pytorch_grad_cam(name):
    """resnet18: 20 BatchNorm2d layers (its convolutions have no bias); SmallConvNet: 3
    biased Conv2d. pytorch-grad-cam's epsilon moves its raw map by < 1e-5 of its peak."""
    agreement_fullgrad(name)


@pytest.mark.parametrize("name", ["resnet18", "small"])
def test_fullgrad_completeness(name):
    """Srinivas & Fleuret's Eq. 2: x . dy/dx + sum of every bias term (fc included) is y,
    for ReLU networks with eval-mode batch norm."""
    net, x = model(name), inputs(name)
    fg = camlib.METHODS["fullgrad"](net)
    with left_alone(net):
        parts = fg.decompose(x, [3, 7])
    assert [t.name for t in parts.bias_terms if not t.spatial] == ["fc"]
    torch.testing.assert_close(parts.total(), parts.scores, rtol=1e-10, atol=1e-10)
    with torch.no_grad():  # the caller's grad mode does not matter
        again = fg.decompose(x, [3, 7])
    torch.testing.assert_close(again.total(), parts.total(), rtol=0, atol=0)
    expected = net(x)[[0, 1], [3, 7]]
    torch.testing.assert_close(parts.scores, expected.detach(), rtol=1e-12, atol=1e-12)
    # the terms are the ones computed here by hand
    xg, terms, _ = fullgrad_terms(net, x, class_score)
    torch.testing.assert_close(parts.input_term, xg, rtol=1e-10, atol=1e-12)
    spatial = [t.term for t in parts.bias_terms if t.spatial]
    assert len(spatial) == len(terms) == (20 if name == "resnet18" else 3)
    assert all(float(t.abs().max()) > 0 for t in terms), "a layer adds nothing: a weak case"
    for ours, ref in zip(spatial, terms, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-14)


def test_fullgrad_batchnorm_bias_with_batch_statistics():
    """In training mode batch norm adds beta - gamma mu_B / sqrt(var_B + eps), with the
    batch's statistics: bn(x) - gamma x / sqrt(var_B + eps) is exactly that bias."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4).double().train()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64) * 2 + 1
    var = x.var((0, 2, 3), correction=0)
    b = effective_bias(bn, x)
    with torch.no_grad():
        shift = bn(x) - x * (bn.weight / torch.sqrt(var + bn.eps)).view(1, -1, 1, 1)
    torch.testing.assert_close(shift, b.view(1, -1, 1, 1).expand_as(shift), rtol=1e-12, atol=1e-12)
    bn.eval()  # running statistics now
    rm, rv = bn.running_mean, bn.running_var
    torch.testing.assert_close(
        effective_bias(bn, x), bn.bias - rm * bn.weight / (rv + bn.eps).sqrt()
    )


def test_fullgrad_takes_no_layer():
    with pytest.raises(camlib.LayerError, match="no target_layer"):
        camlib.explain(model("small"), inputs("small"), method="fullgrad", target_layer="relu3")


# --------------------------------------------------------------------------------------
# Deep Feature Factorization
# --------------------------------------------------------------------------------------


def test_nmf_equals_scikit_learn_multiplicative_updates():
    """The same start, 50 Frobenius multiplicative updates (W then H): scikit-learn's
    NMF(solver="mu") gives the same factors."""
    a, _ = captured("resnet18", "layer3")
    v = a.transpose(0, 1).reshape(a.shape[1], -1)
    k, iters = 4, 50
    w, h = nmf(v, k, iters, seed=3)
    s = float((v.mean() / k).sqrt())
    w0 = torch.rand(v.shape[0], k, generator=torch.Generator().manual_seed(3), dtype=v.dtype) * s
    h0 = torch.full((k, v.shape[1]), s, dtype=v.dtype)
    model_ = NMF(k, init="custom", solver="mu", max_iter=iters, tol=0.0)
    w_sk = model_.fit_transform(v.numpy(), W=w0.numpy().copy(), H=h0.numpy().copy())
    assert model_.n_iter_ == iters
    check(w, w_sk, 1e-9)
    check(h, model_.components_, 1e-9)


def dff_agreement(name: str, layer: str, k: int = 4) -> tuple[float, float]:
    """pytorch-grad-cam's dff() (scikit-learn's coordinate descent from another start)
    finds another local optimum: compare the relative reconstruction errors
    (camlib's minus theirs, and that over theirs)."""
    a, _ = captured(name, layer)
    concepts = camlib.METHODS["dff"](model(name), layer, concepts=k).factorize(inputs(name))
    with warnings.catch_warnings():  # scikit-learn: "Maximum number of iterations reached"
        warnings.simplefilter("ignore", ConvergenceWarning)
        w, h = pgc_dff(a.numpy().copy(), n_components=k)
    v = a.transpose(0, 1).reshape(a.shape[1], -1).numpy()
    offset = v.min(axis=1, keepdims=True)  # they factorise V - offset, then add it to W
    h_flat = h.transpose(1, 0, 2, 3).reshape(k, -1)
    theirs = np.linalg.norm(v - offset - (w - offset) @ h_flat) / np.linalg.norm(v)
    ours = float(concepts.error)
    return ours - theirs, (ours - theirs) / theirs


@pytest.mark.parametrize(("name", "layer"), [("resnet18", "layer3"), ("small", "relu3")], ids=str)
def test_dff_concepts(name, layer):
    """V ~ W H: the recorded error is ||V - W H|| / ||V||, the raw maps peak at 1 per
    concept, concepts are ordered by the mass they reconstruct, scores are fc(weights), and
    the fit is about as good as pytorch-grad-cam's."""
    net, x = model(name), inputs(name)
    dff = camlib.METHODS["dff"](net, layer, concepts=4)
    with left_alone(net):
        maps = dff(x, upsample=False, normalize=False)
    c = dff.concepts
    a, _ = captured(name, layer)
    assert maps.shape == (2, 4, *a.shape[2:]) and c.weights.shape == (4, a.shape[1])
    assert torch.equal(c.maps, maps) and (maps >= 0).all() and (c.weights >= 0).all()
    v = a.transpose(0, 1).reshape(a.shape[1], -1)
    h = maps.transpose(0, 1).reshape(4, -1)
    torch.testing.assert_close(c.error, (v - c.weights.T @ h).norm() / v.norm())
    torch.testing.assert_close(h.amax(1), torch.ones(4, dtype=h.dtype))
    mass = c.weights.sum(1) * h.sum(1)
    assert torch.all(mass[:-1] >= mass[1:])
    if name == "resnet18":  # layer3 has 256 channels, the classifier takes 512
        assert c.scores is None
    else:
        torch.testing.assert_close(c.scores, c.weights @ net.fc.weight.T + net.fc.bias)
    assert dff_agreement(name, layer)[1] < 0.1


def test_dff_call_normalises_per_concept_and_explain_works():
    net, x = model("resnet18"), inputs("resnet18")
    maps = camlib.explain(net, x, method="dff", target_layer="layer3", concepts=3)
    assert maps.shape == (2, 3, 64, 64) and maps.dtype == torch.float64
    peaks = maps.transpose(0, 1).flatten(1).amax(1)
    torch.testing.assert_close(peaks, torch.ones(3, dtype=maps.dtype))
    dff = camlib.METHODS["dff"](net, "layer3", concepts=3)
    rawmaps = dff(x, upsample=False, normalize=False)
    up = F.interpolate(rawmaps, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(maps, up / up.transpose(0, 1).flatten(1).amax(1).view(1, 3, 1, 1))
    assert torch.equal(dff.factorize(x).maps, maps)


def test_dff_is_equivariant_to_batch_order_and_flips():
    """A constant H start: permuting the images or the positions of the activations
    permutes the maps the same way (up to rounding)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    net = net.double().eval()
    x = torch.randn(3, 6, 7, 9, dtype=torch.float64)
    dff = camlib.METHODS["dff"](net, "0", layout="channels_first")
    maps = dff(x, upsample=False, normalize=False)
    assert maps.shape == (3, 5, 7, 9)
    order = torch.tensor([2, 0, 1])
    close = {"rtol": 1e-9, "atol": 1e-9}
    torch.testing.assert_close(dff(x[order], upsample=False, normalize=False), maps[order], **close)
    flipped = dff(x.flip(-1), upsample=False, normalize=False)
    torch.testing.assert_close(flipped, maps.flip(-1), **close)
    perm = torch.randperm(63)
    shuffled = dff(x.flatten(2)[:, :, perm].view_as(x), upsample=False, normalize=False)
    torch.testing.assert_close(shuffled, maps.flatten(2)[:, :, perm].view_as(maps), **close)


def test_dff_refuses_negative_layers_and_several_layers():
    net, x = model("small"), inputs("small")
    with left_alone(net), pytest.raises(camlib.LayerError, match=r"negative values.*\[0, 1\]"):
        camlib.METHODS["dff"](net, "conv3")(x)
    with pytest.raises(camlib.LayerError, match="one layer"):
        camlib.METHODS["dff"](net, ["relu2", "relu3"])
    with pytest.raises(camlib.MethodError, match="concepts"):
        camlib.METHODS["dff"](net, "relu3", concepts=0)
    assert camlib.METHODS["dff"](net, "relu3", fc_layer=None).factorize(x).scores is None


# --------------------------------------------------------------------------------------
# the figures quoted in the docs
# --------------------------------------------------------------------------------------


def figures() -> list[tuple[str, str, float, float]]:
    rows = []
    for name, layer in CASES:
        rows.append(("gradcam_elementwise", f"{name} {layer}", *agreement_elementwise(name, layer)))
    for name, layer in CASES:
        rows.append(("segeigencam", f"{name} {layer}", *agreement_segeigen(name, layer)))
    for name, layer, options in KPCA_CASES:
        rows.append(("kpcacam", f"{name} {layer} {options}", *agreement_kpca(name, layer, options)))
    for name, layer, softmax in [
        ("smooth", "relu3", False),
        ("smooth", "relu3", True),
        ("resnet18", "layer3", True),
    ]:
        rows.append(
            (
                "shapleycam",
                f"{name} {layer} softmax={softmax}",
                *agreement_shapley(name, layer, softmax),
            )
        )
    for name in ("resnet18", "small"):
        rows.append(("fullgrad", name, *agreement_fullgrad(name)))
    for name, layer in CASES:
        rows.append(
            (
                "eigengradcam (peak-scaled, centring)",
                f"{name} {layer}",
                *agreement_eigengrad(name, layer),
            )
        )
    for name, layer in CASES:
        rows.append(
            ("fem (peak-scaled, other formula)", f"{name} {layer}", *agreement_fem(name, layer))
        )
    test_randomcam_is_seeded_uniform_weights()
    for name, layer in [("resnet18", "layer3"), ("small", "relu3")]:
        rows.append(("dff (error diff, ratio)", f"{name} {layer}", *dff_agreement(name, layer)))
    return rows


if __name__ == "__main__":
    for method, case, err, relerr in figures():
        print(f"camlib vs pgc  {method:38s} {case:48s} abs {err:.2e}  rel {relerr:.2e}")
    for (method, name, layer), (err, relerr) in PEER_VS_FORMULA.items():
        case = f"{name} {layer}"
        print(f"pgc vs formula {method:38s} {case:48s} abs {err:.2e}  rel {relerr:.2e}")
