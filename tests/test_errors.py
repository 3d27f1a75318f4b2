"""Every error camlib raises on bad input: its type, what its message says, and that the
model is left exactly as it was (ModelState) and the grad mode restored."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import camlib

from conftest import (
    LAYER_METHODS,
    METHOD_NAMES,
    batch,
    left_alone,
    make,
    small,
)


@functools.cache
def resnet18() -> nn.Module:
    """Shared seeded resnet18 with 10 classes, eval mode; every test checks it is left alone."""
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


@functools.cache
def vgg16_meta() -> nn.Module:
    """VGG16's module tree without allocating its weights (name lookups only)."""
    with torch.device("meta"):
        return torchvision.models.vgg16(weights=None)


def message(info: pytest.ExceptionInfo) -> str:
    return str(info.value)


def test_error_hierarchy():
    assert issubclass(camlib.LayerError, camlib.CamlibError)
    assert issubclass(camlib.LayerError, ValueError)
    assert issubclass(camlib.TargetError, camlib.CamlibError)
    assert issubclass(camlib.TargetError, ValueError)
    assert issubclass(camlib.InputError, camlib.CamlibError)
    assert issubclass(camlib.InputError, TypeError)


# --------------------------------------------------------------------------------------
# layer names and modules
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LAYER_METHODS)
def test_unknown_layer_names_it_suggests_and_lists_children(name):
    model = resnet18()
    with (
        left_alone(model),
        pytest.raises(camlib.LayerError, match="no layer named 'layer5'") as info,
    ):
        make(name, model, "layer5")
    text = message(info)
    assert "Did you mean" in text
    assert "'layer4'" in text
    assert "Top-level children:" in text
    for child in (
        "conv1 (Conv2d)",
        "bn1 (BatchNorm2d)",
        "layer1 (Sequential)",
        "avgpool",
        "fc (Linear)",
    ):
        assert child in text


def test_unknown_nested_layer_suggests_close_names():
    model = resnet18()
    with left_alone(model), pytest.raises(camlib.LayerError, match="'layer4.1.conv3'") as info:
        camlib.GradCAM(model, "layer4.1.conv3")
    text = message(info)
    assert "Did you mean" in text
    assert "'layer4.1.conv2'" in text and "'layer4.1.conv1'" in text
    assert "layer4 (Sequential)" in text


def test_unknown_layer_through_resolve_layer_and_explain():
    model = resnet18()
    with left_alone(model):
        with pytest.raises(camlib.LayerError, match="Did you mean"):
            camlib.resolve_layer(model, "layer5")
        with pytest.raises(camlib.LayerError, match="no layer named 'lyaer4'"):
            camlib.explain(model, torch.randn(1, 3, 64, 64), target_layer="lyaer4")


def test_name_without_any_close_match_still_lists_children():
    model = small()
    with (
        left_alone(model),
        pytest.raises(camlib.LayerError, match="no layer named 'zzzzzz'") as info,
    ):
        camlib.GradCAM(model, "zzzzzz")
    assert "Did you mean" not in message(info)
    assert "conv1 (Conv2d)" in message(info) and "fc (Linear)" in message(info)


def test_bracket_form_is_accepted():
    vgg = vgg16_meta()
    for spec in ("features[28]", "features.28"):
        explainer = camlib.GradCAM(vgg, spec)
        assert explainer.target_layer is vgg.features[28]
        assert explainer.layer_name == "features.28"
    model = resnet18()
    assert camlib.GradCAM(model, "layer4[1].conv2").target_layer is model.layer4[1].conv2
    assert camlib.GradCAM(model, "layer4[1]").layer_name == "layer4.1"


@pytest.mark.parametrize("name", LAYER_METHODS)
def test_module_not_in_model(name):
    model = small()
    foreign = nn.Conv2d(16, 16, 3)
    with left_alone(model), pytest.raises(camlib.LayerError, match="not part of the model") as info:
        make(name, model, foreign)
    assert "Conv2d" in message(info) and "SmallConvNet" in message(info)


@pytest.mark.parametrize(
    "spec", [3, 2.5, [3], torch.zeros(1)], ids=["int", "float", "list-of-int", "tensor"]
)
def test_target_layer_of_wrong_type(spec):
    model = small()
    with left_alone(model), pytest.raises(camlib.LayerError, match="target_layer must be") as info:
        camlib.GradCAM(model, spec)
    inner = spec[0] if isinstance(spec, list) else spec
    assert type(inner).__name__ in message(info)


@pytest.mark.parametrize("name", LAYER_METHODS)
def test_layer_with_non_spatial_output(name):
    model = resnet18()
    x = torch.randn(2, 3, 64, 64)
    with left_alone(model), pytest.raises(camlib.LayerError, match="reshape_transform") as info:
        make(name, model, "fc")(x)
    text = message(info)
    assert "(2, 10)" in text
    assert "'fc'" in text
    assert "(N, C, h, w)" in text


class TupleLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y, y.mean()


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = TupleLayer()
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        y, _ = self.block(x)
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize("name", LAYER_METHODS)
def test_layer_returning_a_tuple(name):
    torch.manual_seed(0)
    model = TupleNet().eval()
    with left_alone(model), pytest.raises(camlib.LayerError, match="returned a tuple") as info:
        make(name, model, "block")(batch())
    assert "'block'" in message(info)
    # "auto" does not guess inside a block that returns a tuple (in a real network such a
    # conv may be a residual branch): it refuses, naming the candidate and the reason ...
    with left_alone(model), pytest.raises(camlib.LayerError) as info:
        camlib.GradCAM(model)(batch())
    assert "block.conv" in message(info) and "returns a tuple" in message(info)
    # ... and the named conv works
    maps = camlib.GradCAM(model, "block.conv")(batch())
    assert maps.shape == (3, 16, 16)


# --------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------

TARGET_ERRORS = {
    "out of range": (10, r"target class 10 is out of range.*0\.\.9"),
    "one out of range": ([1, 2, 12], r"target class 12 .*0\.\.9"),
    "tensor out of range": (torch.tensor([1, 10, 2]), r"target class 10 .*0\.\.9"),
    "negative": (-1, "target class -1 is negative"),
    "negative in list": ([0, -2, 1], "target class -2 is negative"),
    "negative tensor": (torch.tensor(-3), "target class -3 is negative"),
    "too few": ([1, 2], "got 2 targets for a batch of 3"),
    "too many": ((1, 2, 3, 4), "got 4 targets for a batch of 3"),
    "tensor count": (torch.tensor([1]), "got 1 targets for a batch of 3"),
    "float tensor": (torch.tensor([1.0, 2.0, 3.0]), "integer class indices.*float32"),
    "2-D tensor": (torch.tensor([[1], [2], [3]]), r"1-D.*\(3, 1\)"),
    "bool": (True, "bool"),
    "bool in list": ([1, True, 2], "integer class indices"),
    "float in list": ([1, 2.0, 3], "integer class indices"),
    "string": ("3", "targets must be None"),
}


@pytest.mark.parametrize("case", list(TARGET_ERRORS))
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_bad_targets(name, case):
    targets, pattern = TARGET_ERRORS[case]
    model = small()
    with left_alone(model), pytest.raises(camlib.TargetError, match=pattern):
        make(name, model)(batch(), targets)


CLASS_ONLY = [n for n in METHOD_NAMES if camlib.METHODS[n].class_targets_only]
"""Methods that explain class scores only (CAM, Finer-CAM): they refuse callable targets."""


@pytest.mark.parametrize("name", [n for n in METHOD_NAMES if n not in CLASS_ONLY])
def test_callable_returning_wrong_shape(name):
    model = small()
    with left_alone(model):
        with pytest.raises(camlib.TargetError, match=r"returned \(3, 10\).*shape \(3,\)"):
            make(name, model)(batch(), lambda out: out)
        with pytest.raises(camlib.TargetError, match=r"returned \(\).*shape \(3,\)"):
            make(name, model)(batch(), lambda out: out.sum())
        with pytest.raises(camlib.TargetError, match="returned list"):
            make(name, model)(batch(), lambda out: [1.0, 2.0, 3.0])


@pytest.mark.parametrize("name", CLASS_ONLY)
def test_class_only_methods_reject_callable_targets(name):
    model = small()
    assert {"cam", "finercam"} <= set(CLASS_ONLY)
    with left_alone(model), pytest.raises(camlib.TargetError, match="class scores only") as info:
        make(name, model)(batch(), lambda out: out[:, 0])
    assert "GradCAM" in message(info) and camlib.METHODS[name].__name__ in message(info)


class SegNet(nn.Module):
    """Outputs (N, K, H, W) maps, not (N, K) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.head(self.relu(self.conv(x)))


@pytest.mark.parametrize("targets", [None, 1, [0, 1, 2]], ids=["none", "int", "list"])
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_class_targets_need_n_by_k_output(name, targets):
    torch.manual_seed(0)
    model = SegNet().eval()
    with left_alone(model), pytest.raises(camlib.TargetError, match="callable") as info:
        make(name, model, "relu")(batch(), targets)
    assert "(3, 3, 16, 16)" in message(info)
    # and the suggested fix works for the methods that take callable targets
    if name not in CLASS_ONLY:
        maps = make(name, model, "relu")(batch(), lambda out: out[:, 1].mean((1, 2)))
        assert torch.isfinite(maps).all()


# --------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------

INPUT_ERRORS = {
    "numpy": (lambda x: x.numpy(), "must be a torch.Tensor.*ndarray"),
    "list": (lambda x: x.tolist(), "must be a torch.Tensor.*list"),
    "3-D": (lambda x: x[0], r"\(1, 16, 16\).*unsqueeze\(0\)"),
    "2-D": (
        lambda x: x[0, 0],
        r"shape \(N, C, H, W\) for a model whose first layer is Conv2d; got \(16, 16\)",
    ),
    "5-D": (lambda x: x[None], r"\(1, 3, 1, 16, 16\)"),
    "int64": (lambda x: x.long(), "floating-point.*torch.int64"),
    "uint8": (lambda x: (x * 50).clamp(0, 255).to(torch.uint8), "floating-point.*torch.uint8"),
    "empty": (lambda x: x[:0], "empty batch"),
}


@pytest.mark.parametrize("case", list(INPUT_ERRORS))
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_bad_inputs(name, case):
    transform, pattern = INPUT_ERRORS[case]
    model = small()
    with left_alone(model), pytest.raises(camlib.InputError, match=pattern):
        make(name, model)(transform(batch()))


def test_three_d_input_has_no_hint_for_other_ranks():
    with pytest.raises(camlib.InputError) as info:
        camlib.GradCAM(small(), "relu3")(batch()[None])
    assert "unsqueeze" not in message(info)


def test_model_must_be_a_module():
    with pytest.raises(camlib.InputError, match="torch.nn.Module.*function"):
        camlib.GradCAM(lambda x: x, "conv")


# --------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------


def test_unknown_method_lists_available():
    model = small()
    with (
        left_alone(model),
        pytest.raises(camlib.CamlibError, match="unknown method 'gradcamm'") as info,
    ):
        camlib.explain(model, batch(), method="gradcamm")
    for name in camlib.available_methods():
        assert name in message(info)
    assert isinstance(info.value, ValueError)  # every error camlib raises on bad input is one
    with pytest.raises(camlib.CamlibError, match="available: ablationcam, cam, "):
        camlib.get_method("nope")


def test_method_names_are_case_insensitive():
    assert camlib.get_method("GradCAM") is camlib.GradCAM
    assert camlib.get_method("Guided_GradCAM") is camlib.GuidedGradCAM


@pytest.mark.parametrize("layer", ["relu3", "conv1"])
def test_guided_backprop_rejects_target_layer(layer):
    model = small()
    with left_alone(model), pytest.raises(camlib.LayerError, match="takes no target_layer") as info:
        camlib.GuidedBackprop(model, target_layer=layer)
    assert "GuidedGradCAM" in message(info)
    with pytest.raises(camlib.LayerError, match="takes no target_layer"):
        camlib.GuidedBackprop(model, model.conv1)
    # "auto" / None are fine, and explain() agrees with the class
    camlib.GuidedBackprop(model, "auto")
    camlib.GuidedBackprop(model, None)
    with left_alone(model):
        maps = camlib.explain(model, batch(), method="guided_backprop")
        with pytest.raises(camlib.LayerError, match="takes no target_layer"):
            camlib.explain(model, batch(), method="guided_backprop", target_layer=layer)
    assert maps.shape == (3, 1, 16, 16)


def test_cam_on_a_head_that_is_not_gap_linear():
    """CAM's exactness check: conv3 is followed by a ReLU, so logits != fc(GAP(conv3))."""
    model = small()
    with left_alone(model), pytest.raises(camlib.LayerError, match="GradCAM"):
        camlib.CAM(model, "conv3")(batch())


def test_errors_do_not_break_later_calls():
    model = small()
    explainer = camlib.GradCAM(model, "relu3")
    good = explainer(batch(), [1, 2, 3])
    for bad in ([1, 2], 10, -1):
        with pytest.raises(camlib.TargetError):
            explainer(batch(), bad)
    with pytest.raises(camlib.InputError):
        explainer(np.zeros((3, 1, 16, 16), dtype=np.float32))
    torch.testing.assert_close(explainer(batch(), [1, 2, 3]), good)
    torch.testing.assert_close(explainer.classes, torch.tensor([1, 2, 3]))
