"""What camlib promises never to do to a model, for every registered method, on every exit
path (normal calls, bad inputs, exceptions raised inside the model's forward), plain and
inside ``with``; grad-mode handling; no graph kept; the captured activation is the
layer's true output even when an in-place op follows; layers that run twice or never."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import camlib

from conftest import (
    LAYER_METHODS,
    METHOD_NAMES,
    SharedReluNet,
    SmallConvNet,
    count_hooks,
    left_alone,
    make,
    small,
)

# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------

STYLES = ["plain", "with"]


def test_all_methods_are_covered():
    assert set(METHOD_NAMES) >= {"cam", "gradcam", "guided_backprop", "guided_gradcam"}


def call(name, model, x, style="plain", layer="relu3", **kwargs) -> torch.Tensor:
    explainer = make(name, model, layer)
    if style == "with":
        with explainer as e:
            return e(x, **kwargs)
    return explainer(x, **kwargs)


def batch(n: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, 1, 16, 16)


@functools.cache
def resnet18() -> nn.Module:
    """Shared, seeded resnet18 (10 classes) in eval mode; tests must leave it alone."""
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


@functools.cache
def reference(name: str, layer: str = "relu3") -> torch.Tensor:
    """The method's maps for small()/batch() called the ordinary way."""
    return call(name, small(), batch(), layer=layer, targets=[3, 7])


class RaisingNet(SmallConvNet):
    """Raises before any layer runs, after the target layer ran, or on its second call."""

    def __init__(self, fail_at: str) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_at == "before":
            raise RuntimeError("boom before")
        x = self.relu1(self.conv1(x))
        x = self.pool(self.relu2(self.conv2(x)))
        x = self.relu3(self.conv3(x))
        if self.fail_at == "after" or (self.fail_at == "second" and self.calls >= 2):
            raise RuntimeError("boom after")
        return self.fc(self.gap(x).flatten(1))


class UnusedLayerNet(SmallConvNet):
    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Conv2d(16, 16, 1)


# --------------------------------------------------------------------------------------
# normal calls, bad inputs, exceptions inside forward
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_normal_calls_leave_model_alone(name, style):
    model, x = small(), batch()
    user_calls = []
    model.conv2.register_forward_hook(lambda m, i, o: user_calls.append(1))
    targets = [None, 4, [3, 7], torch.tensor([1, 2])]
    if not camlib.METHODS[name].class_targets_only:
        targets.append(lambda out: out[:, 3] - out[:, 5])
    with left_alone(model):
        for t in targets:
            maps = call(name, model, x, style, targets=t)
            assert torch.isfinite(maps).all()
        maps = call(name, model, x, style, layer="auto", upsample=False, normalize=False)
    assert count_hooks(model) == 1  # the user's hook is still there ...
    assert len(user_calls) >= len(targets)  # ... and it kept running during camlib's calls


BAD_CALLS = {
    "3-D inputs": lambda e, x: e(x[0]),
    "int inputs": lambda e, x: e(x.long()),
    "empty batch": lambda e, x: e(x[:0]),
    "not a tensor": lambda e, x: e(x.numpy()),
    "class out of range": lambda e, x: e(x, targets=10),
    "one class out of range": lambda e, x: e(x, targets=[1, 99]),
    "negative class": lambda e, x: e(x, targets=-1),
    "wrong number of targets": lambda e, x: e(x, targets=[1, 2, 3]),
    "float targets": lambda e, x: e(x, targets=torch.tensor([1.0, 2.0])),
    "callable wrong shape": lambda e, x: e(x, targets=lambda out: out),
}


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_bad_inputs_leave_model_alone(name, style):
    model, x = small(), batch()
    for bad in BAD_CALLS.values():
        with left_alone(model):
            explainer = make(name, model)
            with pytest.raises(camlib.CamlibError):
                if style == "with":
                    with explainer as e:
                        bad(e, x)
                else:
                    bad(explainer, x)
    # and the model still explains normally afterwards
    torch.testing.assert_close(call(name, model, x, targets=[3, 7]), reference(name))


@pytest.mark.parametrize("grad_enabled", [True, False], ids=["grad", "nograd"])
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("fail_at", ["before", "after"])
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_exception_in_forward_leaves_model_alone(name, fail_at, style, grad_enabled):
    torch.manual_seed(0)
    model, x = RaisingNet(fail_at).eval(), batch()
    with torch.set_grad_enabled(grad_enabled), left_alone(model):
        with pytest.raises(RuntimeError, match=f"boom {fail_at}"):
            call(name, model, x, style)
        assert model.calls == 1
        assert torch.is_grad_enabled() == grad_enabled


@pytest.mark.parametrize("fail_at", ["after", "second"])
@pytest.mark.parametrize("name", LAYER_METHODS)
def test_exception_with_auto_layer_leaves_model_alone(name, fail_at):
    """'after': the probe pass itself raises; 'second': the probe succeeds, the real pass raises."""
    torch.manual_seed(0)
    model, x = RaisingNet(fail_at).eval(), batch()
    with left_alone(model), pytest.raises(RuntimeError, match="boom after"):
        call(name, model, x, layer="auto")
    assert model.calls == (1 if fail_at == "after" else 2)


# --------------------------------------------------------------------------------------
# training mode, existing .grad, frozen weights
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_train_mode_warns_and_never_calls_eval(name, style, monkeypatch):
    ref = reference(name)
    model, x = small().train(), batch()
    train_calls = []
    original = nn.Module.train

    def spy(self, mode=True):
        train_calls.append((type(self).__name__, mode))
        return original(self, mode)

    monkeypatch.setattr(nn.Module, "train", spy)
    with left_alone(model):  # SmallConvNet has no BatchNorm: even the state_dict is unchanged
        with pytest.warns(UserWarning, match="training mode"):
            maps = call(name, model, x, style, targets=[3, 7])
        with pytest.warns(UserWarning, match="training mode"):
            call(name, model, x, style, layer="auto")
    assert train_calls == [], f"camlib called train()/eval(): {train_calls}"
    assert all(m.training for m in model.modules())
    # no dropout or batchnorm: same maps as in eval mode
    torch.testing.assert_close(maps, ref)


def test_train_mode_with_batchnorm_and_dropout_stays_in_train_mode():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).train()
    hooks = count_hooks(model)
    for name in METHOD_NAMES:
        with pytest.warns(UserWarning, match="training mode"):
            make(name, model, "3")(batch())
        assert all(m.training for m in model.modules())
        assert count_hooks(model) == hooks


def test_no_warning_in_eval_mode():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in METHOD_NAMES:
            call(name, small(), batch())
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_existing_grads_and_mixed_requires_grad_untouched(name):
    model, x = small(), batch()
    torch.manual_seed(5)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    model.conv1.weight.grad = None  # one parameter without .grad: must stay without
    model.conv2.requires_grad_(False)
    with left_alone(model):
        maps = call(name, model, x, targets=[3, 7])
        call(name, model, x, "with", layer="auto")
    torch.testing.assert_close(maps, reference(name))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_all_parameters_frozen(name):
    model, x = small(), batch()
    model.requires_grad_(False)
    with left_alone(model):
        maps = call(name, model, x, targets=[3, 7])
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(maps, reference(name))


def test_eval_mode_resnet_state_dict_identical():
    """BatchNorm buffers (running stats, num_batches_tracked) and in-place ReLUs."""
    model = resnet18()
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    with left_alone(model):
        for name in METHOD_NAMES:
            maps = make(name, model, "layer4")(x)
            assert maps.shape[-2:] == (64, 64) and torch.isfinite(maps).all()


# --------------------------------------------------------------------------------------
# grad mode, no_grad, inference_mode, no graph kept
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("grad_enabled", [True, False], ids=["grad", "nograd"])
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_grad_mode_restored(name, grad_enabled):
    model, x = small(), batch()
    with torch.set_grad_enabled(grad_enabled):
        maps = call(name, model, x, targets=[3, 7])
        assert torch.is_grad_enabled() == grad_enabled
        call(name, model, x, "with", layer="auto")
        assert torch.is_grad_enabled() == grad_enabled
    torch.testing.assert_close(maps, reference(name))


@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_works_under_no_grad(name, frozen):
    model, x = small(), batch()
    model.requires_grad_(not frozen)
    with torch.no_grad(), left_alone(model):
        maps = call(name, model, x, targets=[3, 7])
        assert not torch.is_grad_enabled()
    torch.testing.assert_close(maps, reference(name))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_works_under_inference_mode_explicit_layer(name):
    model = small()
    with torch.inference_mode(), left_alone(model):
        x = batch()  # an inference tensor
        assert x.is_inference()
        maps = call(name, model, x, targets=[3, 7])
        assert torch.is_inference_mode_enabled()
    torch.testing.assert_close(maps.clone(), reference(name))


@pytest.mark.parametrize("name", LAYER_METHODS)
def test_works_under_inference_mode_auto_layer(name):
    model = small()
    with torch.inference_mode(), left_alone(model):
        x = batch()
        maps = call(name, model, x, layer="auto", targets=[3, 7])
    torch.testing.assert_close(maps.clone(), reference(name))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_no_graph_kept(name):
    model, x = small(), batch()
    explainer = make(name, model)
    for normalize in (True, False):
        maps = explainer(x, targets=[3, 7], normalize=normalize, upsample=normalize)
        assert explainer.scores is not None
        assert not explainer.scores.requires_grad and explainer.scores.grad_fn is None
        assert maps.grad_fn is None, f"maps keep a graph: {maps.grad_fn}"
        assert not maps.requires_grad


def test_scores_detached_for_every_method():
    model, x = small(), batch()
    for name in METHOD_NAMES:
        explainer = make(name, model)
        explainer(x)
        assert explainer.scores.grad_fn is None and not explainer.scores.requires_grad
        assert explainer.classes.grad_fn is None


# --------------------------------------------------------------------------------------
# the captured activation is the layer's true output
# --------------------------------------------------------------------------------------


class ConvThenInplaceRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).flatten(1))


def hand_gradcam(activation: torch.Tensor, scores_of) -> torch.Tensor:
    """Grad-CAM with plain autograd: ``scores_of(A)`` gives the (N,) scores from A."""
    a = activation.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(scores_of(a).sum(), a)
    return torch.relu((grad.mean((2, 3))[:, :, None, None] * a.detach()).sum(1))


def test_gradcam_activation_survives_inplace_relu():
    torch.manual_seed(0)
    model = ConvThenInplaceRelu().eval()
    x = torch.randn(3, 1, 6, 6)
    targets = [0, 2, 1]
    with left_alone(model):
        ours = camlib.GradCAM(model, "conv")(x, targets, upsample=False, normalize=False)
    a = model.conv(x).detach()
    assert (a < 0).any(), "the test needs negative conv outputs"
    t = torch.tensor(targets)

    def scores_of(act):
        return model.fc(F.relu(act).flatten(1)).gather(1, t[:, None])[:, 0]

    expected = hand_gradcam(a, scores_of)
    corrupted = hand_gradcam(torch.relu(a), scores_of)  # what a ReLU-ed activation would give
    assert not torch.allclose(expected, corrupted, atol=1e-4), "test would not detect corruption"
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_guided_gradcam_activation_survives_inplace_relu():
    """Guided Grad-CAM == Guided Backprop x upsampled Grad-CAM (checked by hand above)."""
    torch.manual_seed(0)
    model = ConvThenInplaceRelu().eval()
    x = torch.randn(3, 1, 6, 6)
    kw = {"targets": [0, 2, 1], "normalize": False}
    with left_alone(model):
        ggc = camlib.GuidedGradCAM(model, "conv")(x, **kw)
        gbp = camlib.GuidedBackprop(model)(x, **kw)
        cam = camlib.GradCAM(model, "conv")(x, **kw)  # 6x6 already
    assert cam.abs().max() > 0 and gbp.abs().max() > 0
    torch.testing.assert_close(ggc, gbp * cam[:, None], rtol=1e-5, atol=1e-7)


class InplaceAfterHead(nn.Module):
    """conv -> GAP -> fc, then an in-place ReLU on the conv output (after it was used)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv(x)
        y = self.fc(a.mean((2, 3)))
        a.relu_()
        return y


def test_cam_activation_survives_later_inplace_op():
    torch.manual_seed(0)
    model = InplaceAfterHead().eval()
    x = torch.randn(2, 1, 8, 8)
    with left_alone(model):
        ours = camlib.CAM(model, "conv")(x, [1, 3], upsample=False, normalize=False)
    a = model.conv(x).detach()
    assert (a < 0).any()
    w = model.fc.weight.detach()[[1, 3]]
    expected = torch.relu(torch.einsum("nc,nchw->nhw", w, a))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_gradcam_on_resnet_bn2_before_residual_add():
    """BasicBlock does ``out = bn2(out); out += identity``: in place on bn2's output."""
    model = resnet18()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    with left_alone(model):
        ours = camlib.GradCAM(model, "layer4.0.bn2")(x, [3, 8], upsample=False, normalize=False)

    store = []

    def hook(module, args, output):
        leaf = output.detach().clone().requires_grad_(True)
        store.append(leaf)
        return leaf.clone()

    handle = model.layer4[0].bn2.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            out = model(x)
            (grad,) = torch.autograd.grad(out[:, 3][0] + out[:, 8][1], store[0])
    finally:
        handle.remove()
    a = store[0].detach()
    expected = torch.relu((grad.mean((2, 3))[:, :, None, None] * a).sum(1))
    assert expected.abs().max() > 0
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------
# target layers that run twice or never
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LAYER_METHODS)
def test_layer_running_twice_raises(name):
    torch.manual_seed(0)
    model = SharedReluNet().eval()
    with left_alone(model), pytest.raises(camlib.LayerError, match="more than once"):
        make(name, model, "relu")(batch())


def test_resnet_shared_relu_raises():
    model = resnet18()
    x = torch.randn(1, 3, 64, 64)
    with left_alone(model):
        for name in LAYER_METHODS:
            with pytest.raises(camlib.LayerError, match="more than once") as info:
                make(name, model, "layer4.1.relu")(x)
            assert "layer4.1.relu" in str(info.value)


@pytest.mark.parametrize("name", LAYER_METHODS)
def test_layer_that_does_not_run_raises(name):
    torch.manual_seed(0)
    model = UnusedLayerNet().eval()
    with left_alone(model), pytest.raises(camlib.LayerError, match="did not run") as info:
        make(name, model, "unused")(batch())
    assert "unused" in str(info.value)
