"""Models, inputs and targets a new user brings that the other suites do not list:
half-precision heads, 1x1 layers, NumPy class indices, TorchScript, token stages,
models that modify their input in place, training-mode probes."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import camlib

from conftest import METHOD_NAMES, SmallConvNet, batch, left_alone, make, small

# --------------------------------------------------------------------------------------
# maps of a 1x1 layer, and constant maps after upsampling
# --------------------------------------------------------------------------------------


def test_upsampling_a_1x1_map_is_exact():
    raw = torch.tensor([[[2.7731]], [[0.0]]])
    up = camlib.upsample(raw, (37, 64))
    assert up.shape == (2, 37, 64)
    assert torch.equal(up[0], torch.full((37, 64), 2.7731))
    assert torch.equal(up[1], torch.zeros(37, 64))


def test_rounding_noise_of_a_constant_map_is_not_stretched():
    # Bilinear upsampling of a constant 2x2 map leaves 1-ulp noise; min-max must not
    # blow that up to [0, 1].
    up = camlib.upsample(torch.full((1, 2, 2), 2.7731), (64, 64))
    assert torch.equal(camlib.normalize_minmax(up), torch.zeros(1, 64, 64))


@pytest.mark.parametrize("name", ["gradcam", "cam", "scorecam", "eigencam"])
def test_a_named_1x1_layer_is_refused_with_its_name_and_shape(name):
    """A single-position map is constant: refused, as "auto" never picks one."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)  # layer4 is 1x1 at 32 px
    with (
        left_alone(model),
        pytest.raises(
            camlib.LayerError,
            match=r"layer 'layer4' gives a map with a single position.*\(2, 512, 1, 1\)",
        ),
    ):
        camlib.explain(model, x, name, "layer4")


# --------------------------------------------------------------------------------------
# CAM in half precision, and what CAM tells the caller
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cam_accepts_gap_linear_heads_in_half_precision(dtype):
    """The head check's tolerance follows the dtype: a true GAP + linear head passes."""
    for seed in range(8):
        torch.manual_seed(seed)
        model = torchvision.models.resnet18(weights=None, num_classes=10).eval().to(dtype)
        x = torch.randn(2, 3, 64, 64).to(dtype)
        maps = camlib.CAM(model, "layer4")(x)
        assert maps.dtype == torch.float32 and maps.shape == (2, 64, 64)  # maps in float32


def test_cam_reports_the_classifier_it_found(small_net, digits):
    cam = camlib.CAM(small_net, "relu3")
    assert cam.fc_name is None
    cam(digits)
    assert cam.fc_name == "fc" and cam.fc_layer is small_net.fc


def test_wrong_fc_layer_name_says_fc_layer(small_net, digits):
    with pytest.raises(camlib.LayerError, match="fc_layer: no layer named 'nope'"):
        camlib.explain(small_net, digits, method="cam", target_layer="relu3", fc_layer="nope")


def test_cam_in_training_mode_with_dropout_says_so():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(8, 10),
    ).train()
    with (
        left_alone(model),
        pytest.warns(UserWarning, match="training mode"),
        pytest.raises(camlib.LayerError, match=r"training mode.*model\.eval\(\)"),
    ):
        camlib.CAM(model, "1")(batch(4))


# --------------------------------------------------------------------------------------
# targets: NumPy integers and arrays, bad dtypes
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "targets",
    [
        np.int64(3),
        np.array([3, 3, 3]),
        [np.int32(3), np.int64(3), 3],
        torch.tensor(3, dtype=torch.int32),
        [torch.tensor(3), torch.tensor(3), torch.tensor(3)],
        np.array([3, 3, 3], dtype=np.uint8),
    ],
    ids=["np.int64", "np.array", "list of np ints", "0-d int32", "list of 0-d", "uint8 array"],
)
def test_numpy_and_tensor_class_indices(targets):
    model, x = small(), batch()
    cam = camlib.GradCAM(model, "relu3")
    maps = cam(x, targets=targets)
    assert cam.classes.tolist() == [3, 3, 3]
    torch.testing.assert_close(maps, camlib.GradCAM(model, "relu3")(x, targets=3))


@pytest.mark.parametrize(
    ("targets", "match"),
    [
        (torch.tensor([1, 2, 3], dtype=torch.complex64), "integer class indices.*complex64"),
        (torch.tensor([1, 2, 3], dtype=torch.complex128), "integer class indices.*complex128"),
        (np.array([1.0, 2.0, 3.0]), "integer class indices.*float64"),
        (np.array([[1, 2, 3]]), r"1-D.*\(1, 3\)"),
        (np.bool_(True), "not booleans"),
        (torch.empty(3, dtype=torch.long, device="meta"), "meta device"),
        ([1, 2.0, 3], r"integer class indices, got 2\.0"),
    ],
    ids=[
        "complex64",
        "complex128",
        "float array",
        "2-D array",
        "np.bool_",
        "meta",
        "float in list",
    ],
)
def test_bad_target_types_are_named(targets, match):
    model = small()
    with left_alone(model), pytest.raises(camlib.TargetError, match=match):
        camlib.GradCAM(model, "relu3")(batch(), targets=targets)


def test_one_element_list_is_not_broadcast():
    with pytest.raises(camlib.TargetError, match="got 1 targets for a batch of 3"):
        camlib.GradCAM(small(), "relu3")(batch(), targets=[4])


# --------------------------------------------------------------------------------------
# models camlib cannot see into, and clearer messages
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_torchscript_models_are_refused(name):
    model = small()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated
        traced = torch.jit.trace(model, batch())
    with pytest.raises(camlib.InputError, match="TorchScript.*eager nn.Module"):
        make(name, traced, "auto")


@pytest.mark.parametrize("name", [n for n in METHOD_NAMES if camlib.METHODS[n].uses_layer])
def test_model_itself_as_target_layer_is_refused(name):
    model = small()
    with pytest.raises(camlib.LayerError, match="target_layer is the model itself"):
        make(name, model, model)


def test_reshape_transform_with_a_bad_result_is_named():
    model = small()
    explainer = camlib.GradCAM(model, "relu3", reshape_transform=lambda t: t.flatten(2))
    with pytest.raises(
        camlib.LayerError,
        match=r"reshape_transform turned the output of layer 'relu3' into \(3, 16, 64\)",
    ):
        explainer(batch())


def test_class_target_on_an_unused_layer_has_no_custom_target_hint():
    class Bypass(SmallConvNet):
        def forward(self, x):
            self.relu3(self.conv3(self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))))
            return self.fc(x.mean((2, 3)).repeat(1, 16))  # ignores relu3's output

    torch.manual_seed(0)
    model = Bypass().eval().requires_grad_(False)
    with pytest.raises(
        camlib.LayerError, match=r"do not depend on layer 'relu3' \(the model"
    ) as info:
        camlib.GradCAM(model, "relu3")(batch(), targets=1)
    assert "custom target" not in str(info.value)


# --------------------------------------------------------------------------------------
# guided methods on models that modify their input in place
# --------------------------------------------------------------------------------------


class InPlaceInput(SmallConvNet):
    def forward(self, x):
        x.sub_(0.5)  # e.g. a preprocessing step written in place
        return super().forward(x)


class CopyInput(SmallConvNet):
    def forward(self, x):
        return super().forward(x - 0.5)


@pytest.mark.parametrize("name", ["guided_backprop", "guided_gradcam"])
def test_guided_methods_on_a_model_that_modifies_its_input(name):
    torch.manual_seed(0)
    model = InPlaceInput().eval()
    reference = CopyInput().eval()
    reference.load_state_dict(model.state_dict())
    x = batch()
    got = make(name, model)(x.clone(), targets=[1, 2, 3], normalize=False)
    want = make(name, reference)(x.clone(), targets=[1, 2, 3], normalize=False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert got.abs().sum() > 0


# --------------------------------------------------------------------------------------
# "auto": training-mode probes and warnings about what it passed over
# --------------------------------------------------------------------------------------


def test_auto_probe_in_training_mode_updates_batchnorm_once():
    """With "auto" the probe forward's BatchNorm update is put back: the model ends in the
    very state a call with the layer named gives (one update per call)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).train()
    twin = copy.deepcopy(model)
    x = torch.randn(2, 3, 64, 64)
    with pytest.warns(UserWarning, match="training mode"):
        camlib.GradCAM(model, "layer4")(x)
    auto = camlib.GradCAM(twin, "auto")
    with pytest.warns(UserWarning, match="training mode"):
        auto(x)
    assert auto.layer_name == "layer4"
    assert int(twin.bn1.num_batches_tracked) == 1
    for (key, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


class TokenNet(nn.Module):
    """A patch embedding followed by a token stage (ViT-like)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, 8, 4, stride=4)
        self.mixer = nn.Linear(8, 8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (N, L, D)
        return self.fc(F.gelu(self.mixer(tokens)).mean(1))


def test_auto_picks_the_token_stage_after_the_patch_embedding(recwarn):
    """ "auto" explains the last token stream (the mixer), not the patch embedding (the
    stem): the raw map equals Grad-CAM by hand on the mixer's tokens laid out as 4 x 4."""
    torch.manual_seed(0)
    model, x = TokenNet().eval(), batch(2, 16)
    cam = camlib.GradCAM(model)
    raw = cam(x, upsample=False, normalize=False)
    assert cam.layer_name == "mixer" and [str(w.message) for w in recwarn] == []
    seen = {}
    handle = model.mixer.register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
    try:
        out = model(x)
    finally:
        handle.remove()
    score = out.gather(1, out.argmax(1, keepdim=True)).sum()
    (g,) = torch.autograd.grad(score, seen["a"])
    a = seen["a"].detach().transpose(1, 2).reshape(2, 8, 4, 4)
    g = g.transpose(1, 2).reshape(2, 8, 4, 4)
    expected = (g.mean((2, 3))[:, :, None, None] * a).sum(1).relu()
    torch.testing.assert_close(raw, expected, rtol=1e-5, atol=1e-6)


def test_auto_on_a_plain_cnn_does_not_warn(recwarn):
    camlib.GradCAM(small())(batch())
    assert [str(w.message) for w in recwarn] == []
