"""Guided Backprop and Guided Grad-CAM: numbers against Captum and against hand computations,
functional ReLUs guided too, nothing left patched, one forward pass, models left alone."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from captum.attr import GuidedGradCam as CaptumGuidedGradCam
from torch import nn
from torchvision.models.densenet import DenseNet

import camlib

from conftest import FunctionalConvNet, ModelState, SmallConvNet, twin

# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def mode_stack_depth() -> int:
    """How many TorchFunctionModes are active (0 when none; 0 if torch cannot tell)."""
    length = getattr(torch._C, "_len_torch_function_stack", None)
    return length() if length is not None else 0


def max_rel_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|; the reference must not be all zeros."""
    peak = ref.abs().max()
    assert peak > 0, "reference map is all zeros: the comparison would be vacuous"
    return ((ours - ref).abs().max() / peak).item()


def assert_rel_close(ours: torch.Tensor, ref: torch.Tensor, rel: float = 1e-5) -> None:
    assert ours.shape == ref.shape
    diff = max_rel_diff(ours, ref)
    assert diff <= rel, f"max relative difference {diff:.3g} > {rel:g}"


def captum_gbp(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum's hook / requires_grad notices
        return CaptumGuidedBackprop(model).attribute(x.clone(), target=targets).detach()


def captum_ggc(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (
            CaptumGuidedGradCam(model, layer)
            .attribute(x.clone(), target=targets, interpolate_mode="bilinear")
            .detach()
        )


def input_gradient(model: nn.Module, x: torch.Tensor, targets) -> torch.Tensor:
    """The ordinary d(score)/d(input), with plain autograd."""
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(x)
        t = torch.as_tensor(targets) if targets is not None else out.argmax(1)
        (grad,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), x)
    return grad


def top_classes(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


TARGETS = [1, 5, 7]


def make_explainer(method: str, model: nn.Module, layer: str = "relu3") -> camlib.Explainer:
    if method == "gbp":
        return camlib.GuidedBackprop(model)
    return camlib.GuidedGradCAM(model, layer)


@functools.cache
def zoo(name: str) -> tuple[nn.Module, torch.Tensor]:
    """Seeded, randomly initialised models in eval mode and a (3, 3, 64, 64) batch
    ((3, 3, 32, 32) for densenet121, to keep the runtime down).

    Shared between tests: tests must not change them (most check that with ModelState)."""
    torch.manual_seed(0)
    if name == "small":
        model = SmallConvNet(in_ch=3)
    elif name == "densenet121":
        model = torchvision.models.densenet121(weights=None)
    else:
        model = getattr(torchvision.models, name)(weights=None)
    torch.manual_seed(1)
    size = 32 if name == "densenet121" else 64
    return model.eval(), torch.randn(3, 3, size, size)


def fresh_small(cls: type[SmallConvNet] = SmallConvNet) -> SmallConvNet:
    torch.manual_seed(0)
    return cls(in_ch=3).eval()


def small_batch(n: int = 3) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, 3, 32, 32)


# The ordinary gradient of a ReLU net, computed at import time - before any camlib call in
# this process (pytest imports every test module before it runs any test).
_PLAIN_BEFORE = {
    cls.__name__: input_gradient(fresh_small(cls), small_batch(), TARGETS)
    for cls in (SmallConvNet, FunctionalConvNet)
}


# --------------------------------------------------------------------------------------
# 1. Numbers against Captum
# --------------------------------------------------------------------------------------

GBP_MODELS = ["resnet18", "vgg11", "small"]
GGC_CASES = [  # targets=None is checked at the first layer of each model (runtime)
    ("resnet18", "layer4", TARGETS),
    ("resnet18", "layer4", None),
    ("resnet18", "layer3", TARGETS),
    ("resnet18", "layer4.1.conv2", TARGETS),
    ("vgg11", "features.18", TARGETS),
    ("vgg11", "features.18", None),
    ("vgg11", "features.10", TARGETS),
    ("small", "relu3", TARGETS),
    ("small", "relu3", None),
    ("small", "conv2", TARGETS),
]


@pytest.mark.parametrize("targets", [TARGETS, None], ids=["targets", "top"])
@pytest.mark.parametrize("name", GBP_MODELS)
def test_guided_backprop_matches_captum(name, targets):
    model, x = zoo(name)
    before = ModelState.of(model) if name != "vgg11" else None  # 530 MB state_dict
    explainer = camlib.GuidedBackprop(model)
    ours = explainer(x, targets, normalize=False)
    expected_classes = torch.tensor(TARGETS) if targets is not None else top_classes(model, x)
    assert torch.equal(explainer.classes, expected_classes)
    ref = captum_gbp(model, x, expected_classes)
    assert_rel_close(ours, ref)
    if before is not None:
        before.assert_unchanged(model)


@pytest.mark.parametrize(
    ("name", "layer", "targets"),
    GGC_CASES,
    ids=[f"{n}-{layer}-{'top' if t is None else 'targets'}" for n, layer, t in GGC_CASES],
)
def test_guided_gradcam_matches_captum(name, layer, targets):
    model, x = zoo(name)
    before = ModelState.of(model) if name != "vgg11" else None  # 530 MB state_dict
    explainer = camlib.GuidedGradCAM(model, layer)
    ours = explainer(x, targets, normalize=False)
    expected_classes = torch.tensor(TARGETS) if targets is not None else top_classes(model, x)
    assert torch.equal(explainer.classes, expected_classes)
    ref = captum_ggc(model, camlib.resolve_layer(model, layer), x, expected_classes)
    assert_rel_close(ours.detach(), ref)
    if before is not None:
        before.assert_unchanged(model)


# --------------------------------------------------------------------------------------
# 2. Functional ReLUs are guided too
# --------------------------------------------------------------------------------------


def test_functional_twin_gives_the_same_guided_map():
    model, x = fresh_small(), small_batch()
    functional = twin(model)
    before = ModelState.of(functional)
    ours_module = camlib.GuidedBackprop(model)(x, TARGETS, normalize=False)
    ours_functional = camlib.GuidedBackprop(functional)(x, TARGETS, normalize=False)
    torch.testing.assert_close(ours_functional, ours_module, rtol=1e-6, atol=1e-12)
    # ... and both equal Captum on the module network (Captum hooks nn.ReLU modules)
    assert_rel_close(ours_functional, captum_gbp(model, x, torch.tensor(TARGETS)))
    before.assert_unchanged(functional)


@pytest.mark.parametrize("layer", ["conv2", "pool", "conv3"])
def test_functional_twin_gives_the_same_guided_gradcam(layer):
    model, x = fresh_small(), small_batch()
    functional = twin(model)
    before = ModelState.of(functional)
    ours_module = camlib.GuidedGradCAM(model, layer)(x, TARGETS, normalize=False)
    ours_functional = camlib.GuidedGradCAM(functional, layer)(x, TARGETS, normalize=False)
    torch.testing.assert_close(ours_functional, ours_module, rtol=1e-6, atol=1e-12)
    ref = captum_ggc(model, camlib.resolve_layer(model, layer), x, torch.tensor(TARGETS))
    assert_rel_close(ours_functional.detach(), ref)
    before.assert_unchanged(functional)


def test_guided_map_differs_from_plain_gradient():
    functional = twin(fresh_small())
    x = small_batch()
    guided = camlib.GuidedBackprop(functional)(x, TARGETS, normalize=False)
    plain = input_gradient(functional, x, TARGETS)
    assert max_rel_diff(guided, plain) > 1e-2
    assert not torch.allclose(guided, plain)


def test_captum_misses_functional_relus():
    """Documents the peer bug camlib fixes: Captum's GuidedBackprop hooks ``nn.ReLU``
    modules only, so on a network with functional ReLUs it returns the plain gradient."""
    functional = twin(fresh_small())
    x = small_batch()
    captum = captum_gbp(functional, x, torch.tensor(TARGETS))
    plain = input_gradient(functional, x, TARGETS)
    torch.testing.assert_close(captum, plain, rtol=1e-5, atol=1e-7)
    ours = camlib.GuidedBackprop(functional)(x, TARGETS, normalize=False)
    assert max_rel_diff(ours, captum) > 1e-2


class DenseNetModuleReLU(DenseNet):
    """densenet121 whose final functional ``F.relu`` in ``forward`` is an ``nn.ReLU`` module,
    so Captum's module hooks see every ReLU; same parameters as torchvision's."""

    def __init__(self) -> None:
        super().__init__(32, (6, 12, 24, 16), 64)
        self.final_relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.final_relu(self.features(x))
        out = F.adaptive_avg_pool2d(features, (1, 1))
        return self.classifier(torch.flatten(out, 1))


def test_densenet121_functional_relu_is_guided():
    model, x = zoo("densenet121")
    before = ModelState.of(model)
    modular = DenseNetModuleReLU().eval()
    modular.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(modular(x), model(x))
    targets = torch.tensor(TARGETS)
    ours = camlib.GuidedBackprop(model)(x, TARGETS, normalize=False)
    assert_rel_close(ours, captum_gbp(modular, x, targets))
    # Captum on torchvision's densenet121 misses the F.relu in forward and differs
    assert max_rel_diff(ours, captum_gbp(model, x, targets)) > 1e-2
    before.assert_unchanged(model)


RELU_FLAVOURS = {
    "F.relu": lambda t: F.relu(t),
    "F.relu-inplace": lambda t: F.relu(t, inplace=True),
    "F.relu_": F.relu_,
    "torch.relu": torch.relu,
    "torch.relu_": torch.relu_,
    "Tensor.relu": lambda t: t.relu(),
    "Tensor.relu_": lambda t: t.relu_(),
    "nn.ReLU": nn.ReLU(),
    "nn.ReLU-inplace": nn.ReLU(inplace=True),
}


class ConvReLULinear(nn.Module):
    """x -> conv -> relu (any flavour) -> linear."""

    def __init__(self, relu) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.relu = relu
        self.fc = nn.Linear(3 * 6 * 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).flatten(1))


@pytest.mark.parametrize("flavour", list(RELU_FLAVOURS))
def test_guided_matches_hand_computation(flavour):
    """Guided gradient of x -> conv -> relu -> linear is conv^T(relu(g) * [pre > 0]), with
    g = d(score)/d(relu output), each piece differentiated separately by autograd."""
    torch.manual_seed(0)
    model = ConvReLULinear(RELU_FLAVOURS[flavour]).eval()
    x = torch.randn(3, 2, 6, 6)
    targets = [0, 3, 1]
    ours = camlib.GuidedBackprop(model)(x, targets, normalize=False)

    with torch.enable_grad():
        xs = x.clone().requires_grad_(True)
        pre = model.conv(xs)  # differentiated twice below
        post = torch.relu(pre.detach()).requires_grad_(True)
        scores = model.fc(post.flatten(1)).gather(1, torch.tensor(targets)[:, None])
        (g_out,) = torch.autograd.grad(scores.sum(), post)
        g_pre = g_out.clamp_min(0) * (pre.detach() > 0)
        (expected,) = torch.autograd.grad(pre, xs, g_pre, retain_graph=True)
        (plain,) = torch.autograd.grad(pre, xs, g_out * (pre.detach() > 0))

    assert ((g_out < 0) & (pre > 0)).any(), "no negative gradient at an active unit: vacuous"
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)
    assert max_rel_diff(ours, plain) > 1e-2


class TwoReLUNet(nn.Module):
    """conv -> F.relu(inplace) -> conv -> torch.relu -> linear: guided rule applied twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 5 * 5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x), inplace=True)
        return self.fc(torch.relu(self.conv2(h)).flatten(1))


def test_guided_matches_hand_computation_two_relus():
    torch.manual_seed(0)
    model = TwoReLUNet().eval()
    x = torch.randn(3, 2, 5, 5)
    targets = [2, 0, 3]
    ours = camlib.GuidedBackprop(model)(x, targets, normalize=False)

    with torch.enable_grad():
        xs = x.clone().requires_grad_(True)
        pre1 = model.conv1(xs)
        h = torch.relu(pre1.detach()).requires_grad_(True)
        pre2 = model.conv2(h)
        post2 = torch.relu(pre2.detach()).requires_grad_(True)
        scores = model.fc(post2.flatten(1)).gather(1, torch.tensor(targets)[:, None])
        (g2,) = torch.autograd.grad(scores.sum(), post2)
        (g1,) = torch.autograd.grad(pre2, h, g2.clamp_min(0) * (pre2.detach() > 0))
        (expected,) = torch.autograd.grad(pre1, xs, g1.clamp_min(0) * (pre1.detach() > 0))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)


class GuidedRef(torch.autograd.Function):
    """Independent reference for the guided ReLU rule, called explicitly."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad.clamp_min(0) * (x > 0)


class ViewReLUNet(nn.Module):
    """An in-place ReLU on a channel slice (a view), then a ReLU on everything."""

    def __init__(self, reference: bool = False) -> None:
        super().__init__()
        self.reference = reference
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if self.reference:
            h = GuidedRef.apply(torch.cat([GuidedRef.apply(h[:, :3]), h[:, 3:]], 1))
        else:
            h[:, :3].relu_()
            h = torch.relu(h)
        return self.fc(h.mean((2, 3)))


def test_inplace_relu_on_a_view_is_guided():
    torch.manual_seed(0)
    model = ViewReLUNet().eval()
    reference = ViewReLUNet(reference=True).eval()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(3, 3, 8, 8)
    ours = camlib.GuidedBackprop(model)(x, [0, 1, 2], normalize=False)
    torch.testing.assert_close(ours, input_gradient(reference, x, [0, 1, 2]), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------
# 3. Nothing stays patched
# --------------------------------------------------------------------------------------


class BoomNet(SmallConvNet):
    """SmallConvNet that raises inside forward (after conv2 ran) when ``fail`` is set, and
    records how many TorchFunctionModes were active during its forward."""

    fail = False
    depth_in_forward = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.depth_in_forward = mode_stack_depth()
        x = self.relu1(self.conv1(x))
        x = self.pool(self.relu2(self.conv2(x)))
        if self.fail:
            raise RuntimeError("boom")
        x = self.relu3(self.conv3(x))
        return self.fc(self.gap(x).flatten(1))


def assert_relus_ordinary() -> None:
    """Every ReLU flavour passes a negative upstream gradient at a positive input."""
    assert mode_stack_depth() == 0
    for name, relu in RELU_FLAVOURS.items():
        x = torch.tensor([-1.0, 2.0, 0.5], requires_grad=True)
        y = relu(x * 1.0)  # a non-leaf, so the in-place flavours are allowed
        (grad,) = torch.autograd.grad(y, x, torch.tensor([-3.0, -3.0, 4.0]))
        assert torch.equal(grad, torch.tensor([0.0, -3.0, 4.0])), name
    for cls in (SmallConvNet, FunctionalConvNet):
        plain = input_gradient(fresh_small(cls), small_batch(), TARGETS)
        assert torch.equal(plain, _PLAIN_BEFORE[cls.__name__]), cls.__name__


def test_nothing_patched_after_guided_calls():
    assert_relus_ordinary()
    grad_mode = torch.is_grad_enabled()
    model = BoomNet(in_ch=3).eval()
    x = small_batch()
    camlib.GuidedBackprop(model)(x, TARGETS)
    assert model.depth_in_forward >= 1  # the guided mode was on during forward ...
    assert_relus_ordinary()  # ... and is gone after it
    model.depth_in_forward = -1
    camlib.GuidedGradCAM(model, "conv2")(x)
    assert model.depth_in_forward >= 1
    assert_relus_ordinary()
    assert torch.is_grad_enabled() == grad_mode


@pytest.mark.parametrize("method", ["gbp", "ggcam"])
def test_nothing_patched_after_exception_in_forward(method):
    model = BoomNet(in_ch=3).eval()
    model.fail = True
    before = ModelState.of(model)
    grad_mode = torch.is_grad_enabled()
    explainer = make_explainer(method, model, "conv2")
    with pytest.raises(RuntimeError, match="boom"):
        explainer(small_batch(), TARGETS)
    assert model.depth_in_forward >= 1
    assert_relus_ordinary()
    assert torch.is_grad_enabled() == grad_mode
    before.assert_unchanged(model)
    # and the explainer still works once the model behaves
    model.fail = False
    out = explainer(small_batch(), TARGETS)
    assert out.shape == (3, 3, 32, 32) and torch.isfinite(out).all()
    assert_relus_ordinary()
    before.assert_unchanged(model)


# --------------------------------------------------------------------------------------
# 4. One forward pass per call
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("targets", [TARGETS, None], ids=["targets", "top"])
@pytest.mark.parametrize(("name", "layer"), [("resnet18", "layer4"), ("small", "relu3")])
def test_one_forward_pass_per_call(name, layer, targets):
    model, x = zoo(name)
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        camlib.GuidedBackprop(model)(x, targets)
        assert calls == [3]
        calls.clear()
        camlib.GuidedGradCAM(model, layer)(x, targets)
        assert calls == [3]
    finally:
        handle.remove()


# --------------------------------------------------------------------------------------
# 5. Models left alone; no_grad, frozen, train mode, batch sizes, normalisation
# --------------------------------------------------------------------------------------


def test_model_state_unchanged_with_existing_grads():
    model = fresh_small()
    torch.manual_seed(2)
    for p in list(model.parameters())[::2]:
        p.grad = torch.randn_like(p)
    before = ModelState.of(model)
    x = small_batch()
    camlib.GuidedBackprop(model)(x, TARGETS)
    camlib.GuidedBackprop(model)(x)
    camlib.GuidedGradCAM(model, "relu3")(x, TARGETS)
    camlib.GuidedGradCAM(model, "conv2")(x)
    before.assert_unchanged(model)


BAD_CALLS = {
    "3d-input": (lambda x: x[0], TARGETS, camlib.InputError),
    "int-input": (lambda x: x.long(), TARGETS, camlib.InputError),
    "empty-batch": (lambda x: x[:0], None, camlib.InputError),
    "wrong-target-count": (lambda x: x, [1, 2], camlib.TargetError),
    "negative-target": (lambda x: x, [1, -2, 3], camlib.TargetError),
    "target-out-of-range": (lambda x: x, [1, 2, 10], camlib.TargetError),
    "float64-input": (lambda x: x.double(), TARGETS, RuntimeError),  # raises inside forward
    "wrong-channels": (lambda x: x[:, :2], TARGETS, camlib.InputError),  # named before forward
}


@pytest.mark.parametrize("method", ["gbp", "ggcam"])
@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_leaves_model_alone(case, method):
    make_input, targets, error = BAD_CALLS[case]
    model = fresh_small()
    before = ModelState.of(model)
    explainer = make_explainer(method, model)
    with pytest.raises(error):
        explainer(make_input(small_batch()), targets)
    before.assert_unchanged(model)
    assert mode_stack_depth() == 0
    assert torch.is_grad_enabled()


def test_resnet_with_batchnorm_and_inplace_relus_left_alone():
    model, x = zoo("resnet18")
    before = ModelState.of(model)
    camlib.GuidedBackprop(model)(x)
    camlib.GuidedGradCAM(model, "layer4")(x, TARGETS)
    with pytest.raises(camlib.TargetError):
        camlib.GuidedGradCAM(model, "layer4")(x, [1, 2, 1000])
    before.assert_unchanged(model)


@pytest.mark.parametrize("method", ["gbp", "ggcam"])
def test_works_with_frozen_weights(method):
    model, x = fresh_small(), small_batch()
    expected = make_explainer(method, model)(x, TARGETS, normalize=False).detach()
    frozen = fresh_small().requires_grad_(False)
    before = ModelState.of(frozen)
    out = make_explainer(method, frozen)(x, TARGETS, normalize=False).detach()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    before.assert_unchanged(frozen)
    assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())


@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
@pytest.mark.parametrize("method", ["gbp", "ggcam"])
def test_works_under_no_grad(method, frozen):
    model, x = fresh_small(), small_batch()
    expected = make_explainer(method, model)(x, TARGETS, normalize=False).detach()
    model.requires_grad_(not frozen)
    before = ModelState.of(model)
    with torch.no_grad():
        out = make_explainer(method, model)(x, TARGETS, normalize=False)
        assert not torch.is_grad_enabled()
    assert not out.requires_grad
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    before.assert_unchanged(model)


@pytest.mark.parametrize("method", ["gbp", "ggcam"])
def test_train_mode_warns_and_stays_in_train_mode(method):
    model, x = fresh_small().train(), small_batch()
    before = ModelState.of(model)
    explainer = make_explainer(method, model)
    with pytest.warns(UserWarning, match="training mode"):
        out = explainer(x, TARGETS, normalize=False)
    assert all(m.training for m in model.modules())
    before.assert_unchanged(model)
    # SmallConvNet has no BatchNorm or dropout: same maps as in eval mode
    eval_model = fresh_small()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning in eval mode
        again = make_explainer(method, eval_model)(x, TARGETS, normalize=False)
    torch.testing.assert_close(out.detach(), again.detach())


@pytest.mark.parametrize("method", ["gbp", "ggcam"])
def test_batch_sizes_shapes_and_normalisation(method):
    model = fresh_small()
    explainer = make_explainer(method, model)
    x = small_batch(5)
    raw5 = explainer(x, normalize=False).detach()
    assert raw5.shape == x.shape
    singles = [explainer(x[i : i + 1], normalize=False).detach() for i in range(5)]
    for i, single in enumerate(singles):
        assert single.shape == (1, *x.shape[1:])
        torch.testing.assert_close(single[0], raw5[i], rtol=1e-5, atol=1e-6 * raw5[i].abs().max())

    norm = explainer(x).detach()  # default normalize=True
    assert norm.shape == x.shape
    peaks = norm.abs().flatten(1).amax(1)
    torch.testing.assert_close(peaks, torch.ones(5), rtol=1e-6, atol=0)
    assert torch.equal(torch.sign(norm), torch.sign(raw5))
    scale = raw5.abs().flatten(1).amax(1)[:, None, None, None]
    torch.testing.assert_close(norm, raw5 / scale)
    assert (norm < 0).any() and (norm > 0).any()  # signed maps


# --------------------------------------------------------------------------------------
# 6. Other activations
# --------------------------------------------------------------------------------------


class MixedActivations(nn.Module):
    """GELU, SiLU, Hardswish, LeakyReLU, ELU and one nn.ReLU (ReLU6 is guided: see
    test_guided_relu6.py)."""

    def __init__(self, only_gelu: bool = False) -> None:
        super().__init__()
        acts = [nn.GELU() for _ in range(5)] if only_gelu else [
            nn.GELU(), nn.SiLU(), nn.Hardswish(), nn.LeakyReLU(0.1), nn.ELU(),
        ]  # fmt: skip
        layers: list[nn.Module] = []
        ch = 3
        for i, act in enumerate(acts):
            layers += [nn.Conv2d(ch, 8, 3, padding=1), act]
            if i == 2 and not only_gelu:
                layers += [nn.Conv2d(8, 8, 1), nn.ReLU()]
            ch = 8
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def test_other_activations_do_not_fail_and_only_relus_are_guided():
    torch.manual_seed(0)
    model = MixedActivations().eval()
    x = torch.randn(3, 3, 16, 16)
    before = ModelState.of(model)
    ours = camlib.GuidedBackprop(model)(x, [0, 1, 4], normalize=False)
    assert_rel_close(ours, captum_gbp(model, x, torch.tensor([0, 1, 4])))
    ggc = camlib.GuidedGradCAM(model, "features.4")(x, [0, 1, 4])
    assert ggc.shape == x.shape and torch.isfinite(ggc).all()
    before.assert_unchanged(model)


def test_gelu_only_net_gives_the_plain_gradient():
    torch.manual_seed(0)
    model = MixedActivations(only_gelu=True).eval()
    x = torch.randn(3, 3, 16, 16)
    ours = camlib.GuidedBackprop(model)(x, [0, 1, 4], normalize=False)
    torch.testing.assert_close(ours, input_gradient(model, x, [0, 1, 4]), rtol=1e-6, atol=1e-9)
    ggc = camlib.GuidedGradCAM(model, "features.8")(x, [0, 1, 4])
    assert ggc.shape == x.shape and torch.isfinite(ggc).all()


def test_mobilenet_v3_small_hardswish_and_se_blocks():
    model, x = zoo("mobilenet_v3_small")
    before = ModelState.of(model)
    ours = camlib.GuidedBackprop(model)(x, TARGETS, normalize=False)
    assert_rel_close(ours, captum_gbp(model, x, torch.tensor(TARGETS)))
    ggc = camlib.GuidedGradCAM(model, "features.12")(x, TARGETS)
    assert ggc.shape == x.shape and torch.isfinite(ggc).all()
    before.assert_unchanged(model)


# --------------------------------------------------------------------------------------
# 7. Visualisation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_ch", [1, 3])
def test_signed_to_rgb_on_a_guided_map(in_ch):
    torch.manual_seed(0)
    model = SmallConvNet(in_ch=in_ch).eval()
    x = torch.randn(2, in_ch, 28, 28)
    g = camlib.GuidedBackprop(model)(x)[0]
    rgb = camlib.viz.signed_to_rgb(g, contrast=None)  # the plain max |g| scaling
    assert rgb.shape == (28, 28, 3) and rgb.dtype == np.uint8
    g_hwc = g.permute(1, 2, 0).expand(28, 28, 3).numpy()
    expected = (0.5 + 0.5 * g_hwc / np.abs(g_hwc).max()) * 255.0 + 0.5
    assert np.abs(rgb.astype(np.float64) - expected.astype(np.uint8)).max() <= 1
    assert rgb.min() < 128 < rgb.max()


# --------------------------------------------------------------------------------------
# 8. Regressions: detached maps, inference mode
# --------------------------------------------------------------------------------------


def test_guided_gradcam_returns_a_detached_map():
    model, x = fresh_small(), small_batch()
    out = camlib.GuidedGradCAM(model, "relu3")(x, TARGETS)
    assert not out.requires_grad and out.grad_fn is None
    out.numpy()


def test_guided_backprop_returns_a_detached_map():
    model, x = fresh_small(), small_batch()
    out = camlib.GuidedBackprop(model)(x, TARGETS)
    assert not out.requires_grad and out.grad_fn is None
    out.numpy()


@pytest.mark.parametrize("method", ["gbp", "ggcam"])
def test_works_inside_inference_mode(method):
    model, x = fresh_small(), small_batch()
    expected = make_explainer(method, model)(x, TARGETS).detach()
    with torch.inference_mode():
        out = make_explainer(method, model)(x, TARGETS)
    torch.testing.assert_close(out, expected)
