"""Finding the layer to explain: dotted names (Sequential / ModuleList indices), module
objects, and target_layer="auto" on torchvision and small models for several input shapes."""

from __future__ import annotations

import functools
import logging

import pytest
import torch
import torchvision
from torch import nn

import camlib

from conftest import ModelState, SharedReluNet, small


@functools.cache
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


@functools.cache
def vgg11() -> nn.Module:
    """A real (CPU) vgg11 that is cheap to build: allocated uninitialised from the meta
    device, the convolutions and the last classifier layer filled with small random
    weights, the two big classifier matrices with zeros (enough for layer lookups)."""
    with torch.device("meta"):
        model = torchvision.models.vgg11(weights=None, num_classes=10)
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("classifier.0", "classifier.3")):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


@functools.cache
def vgg16_meta() -> nn.Module:
    with torch.device("meta"):
        return torchvision.models.vgg16(weights=None)


def images(*shape: int) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(*shape)


# --------------------------------------------------------------------------------------
# resolve_layer / layer_name
# --------------------------------------------------------------------------------------


def test_resolve_dotted_names_resnet():
    model = resnet18()
    assert camlib.resolve_layer(model, "layer4.1.conv2") is model.layer4[1].conv2
    assert camlib.resolve_layer(model, "layer4") is model.layer4
    assert camlib.resolve_layer(model, "layer3.0.downsample.0") is model.layer3[0].downsample[0]
    assert camlib.resolve_layer(model, " layer4.1.conv2 ") is model.layer4[1].conv2
    assert camlib.resolve_layer(model, "layer4[1].conv2") is model.layer4[1].conv2


def test_resolve_sequential_index_vgg():
    vgg = vgg16_meta()
    assert camlib.resolve_layer(vgg, "features.28") is vgg.features[28]
    assert isinstance(vgg.features[28], nn.Conv2d)
    assert camlib.resolve_layer(vgg, "features[28]") is vgg.features[28]
    assert camlib.resolve_layer(vgg, "classifier.6") is vgg.classifier[6]


class ModuleListNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()) for _ in range(3)
        )
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean((2, 3)))


def test_resolve_module_list_index():
    torch.manual_seed(0)
    model = ModuleListNet().eval()
    assert camlib.resolve_layer(model, "blocks.2") is model.blocks[2]
    assert camlib.resolve_layer(model, "blocks.2.0") is model.blocks[2][0]
    assert camlib.resolve_layer(model, "blocks[1][0]") is model.blocks[1][0]
    explainer = camlib.GradCAM(model, "blocks.1.1")
    assert explainer.target_layer is model.blocks[1][1]
    assert camlib.GradCAM(model)(images(2, 1, 12, 12)).shape == (2, 12, 12)


def test_every_named_module_round_trips():
    model = resnet18()
    for name, module in model.named_modules():
        if name:
            assert camlib.resolve_layer(model, name) is module
            assert camlib.layer_name(model, module) == name
    assert camlib.layer_name(model, model) == ""


def test_module_object_as_target_layer():
    model = resnet18()
    assert camlib.resolve_layer(model, model.layer4[1]) is model.layer4[1]
    explainer = camlib.GradCAM(model, model.layer4[1].conv2)
    assert explainer.layer_name == "layer4.1.conv2"
    assert explainer.target_layer is model.layer4[1].conv2
    assert "layer4.1.conv2" in repr(explainer)


# --------------------------------------------------------------------------------------
# find_target_layer / target_layer="auto"
# --------------------------------------------------------------------------------------


def test_auto_resnet18_is_layer4():
    model = resnet18()
    state = ModelState.of(model)
    assert camlib.find_target_layer(model, images(2, 3, 64, 64)) == "layer4"
    state.assert_unchanged(model)


def test_auto_resnet18_96px():
    model = resnet18()
    explainer = camlib.GradCAM(model)
    assert explainer.layer_name is None
    raw = explainer(images(1, 3, 96, 96), upsample=False, normalize=False)
    assert explainer.layer_name == "layer4"
    assert explainer.target_layer is model.layer4
    assert raw.shape == (1, 3, 3)


def test_auto_vgg11_is_features():
    model = vgg11()
    x = images(1, 3, 64, 64)
    explainer = camlib.GradCAM(model)
    maps = explainer(x)  # runs find_target_layer on x
    assert explainer.layer_name == "features"
    assert explainer.target_layer is model.features
    assert maps.shape == (1, 64, 64)
    assert all(not m.training for m in model.modules())


def test_auto_small_net_28px():
    model = small()
    assert camlib.find_target_layer(model, images(2, 1, 28, 28)) == "relu3"
    explainer = camlib.GradCAM(model, "auto")
    maps = explainer(images(2, 1, 28, 28))
    assert explainer.layer_name == "relu3" and explainer.target_layer is model.relu3
    assert maps.shape == (2, 28, 28)


def test_auto_small_net_3x96():
    model = small(in_ch=3)
    explainer = camlib.GradCAM(model, None)
    raw = explainer(images(1, 3, 96, 96), upsample=False)
    assert explainer.layer_name == "relu3"
    assert raw.shape == (1, 48, 48)


def test_auto_non_square_input():
    model = small()
    explainer = camlib.GradCAM(model)
    maps = explainer(images(2, 1, 20, 36))
    assert explainer.layer_name == "relu3"
    assert maps.shape == (2, 20, 36)
    assert explainer(images(2, 1, 20, 36), upsample=False).shape == (2, 10, 18)
    # a 2-pixel-high strip: the pooled maps are 1 x 18, still spatial (h * w > 1)
    assert camlib.find_target_layer(model, images(1, 1, 2, 36)) == "relu3"


def test_auto_depends_on_input_shape():
    """For 2x2 inputs the layers after the pool are 1x1: the last spatial layer is relu2."""
    model = small()
    assert camlib.find_target_layer(model, images(1, 1, 2, 2)) == "relu2"
    explainer = camlib.GradCAM(model)
    explainer(images(2, 1, 2, 2))
    assert explainer.layer_name == "relu2"
    explainer(images(2, 1, 28, 28))
    assert explainer.layer_name == "relu3"
    explainer(images(2, 1, 2, 2))
    assert explainer.layer_name == "relu2" and explainer.target_layer is model.relu2


def test_auto_names_the_last_call_of_a_reused_module(recwarn):
    """The last spatial map is the second call of a shared ReLU: 'auto' names that call."""
    torch.manual_seed(0)
    model = SharedReluNet().eval()
    assert camlib.find_target_layer(model, images(1, 1, 8, 8)) == "relu@-1"
    explainer = camlib.GradCAM(model)
    x = images(2, 1, 8, 8)
    maps = explainer(x, upsample=False, normalize=False)
    assert explainer.layer_name == "relu@1"  # resolved for this input: the second of two calls
    # by hand: the post-ReLU output of conv2, and the gradient of the head through its mean
    with torch.no_grad():
        act = torch.relu(model.conv2(torch.relu(model.conv1(x))))
        logits = model.fc(act.mean((2, 3)))
        cls = logits.argmax(1)
        w = model.fc.weight[cls] / 64  # d y / d act_k,ij = w_k / (h w): alpha_k = w_k / 64
    expected = torch.relu(torch.einsum("nc,nchw->nhw", w, act))
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-6)
    assert [str(w.message) for w in recwarn] == []


class PassThroughNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.drop2d = nn.Dropout2d(0.3)
        self.ident = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d((4, 4))
        self.fc = nn.Linear(4 * 16, 10)

    def forward(self, x):
        x = self.ident(self.drop2d(self.drop(self.act(self.conv(x)))))
        return self.fc(self.pool(x).flatten(1))


def test_auto_skips_identity_dropout_and_adaptive_pool():
    torch.manual_seed(0)
    model = PassThroughNet().eval()
    assert camlib.find_target_layer(model, images(1, 1, 12, 12)) == "act"
    explainer = camlib.GradCAM(model)
    explainer(images(2, 1, 12, 12))
    assert explainer.layer_name == "act"


class InplaceLastNet(nn.Module):
    """An in-place ReLU modifies its input: it is a real layer, not a pass-through."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.ident = nn.Identity()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.ident(self.act(self.conv(x))).mean((2, 3)))


def test_auto_keeps_inplace_activation():
    torch.manual_seed(0)
    model = InplaceLastNet().eval()
    assert camlib.find_target_layer(model, images(1, 1, 6, 6)) == "act"


def test_auto_without_spatial_layer_raises():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).eval()
    state = ModelState.of(model)
    with pytest.raises(camlib.LayerError, match="could not find a layer"):
        camlib.GradCAM(model)(images(1, 1, 4, 4))
    state.assert_unchanged(model)


def test_auto_logs_the_picked_layer(caplog):
    model = small()
    explainer = camlib.GradCAM(model)
    with caplog.at_level(logging.INFO, logger="camlib"):
        explainer(images(2, 1, 28, 28))
    records = [r for r in caplog.records if r.name == "camlib"]
    assert records, "no log record on logger 'camlib'"
    text = " ".join(r.getMessage() for r in records)
    assert "'relu3'" in text
    assert "GradCAM" in text
    assert "(1, 28, 28)" in text


def test_explicit_layer_sets_layer_name_at_construction():
    model = small()
    for name in ("cam", "gradcam", "guided_gradcam"):
        explainer = camlib.METHODS[name](model, "relu3")
        assert explainer.layer_name == "relu3"
        assert explainer.target_layer is model.relu3
    gbp = camlib.GuidedBackprop(model)
    gbp(images(1, 1, 8, 8))
    assert gbp.layer_name is None and gbp.target_layer is None


@pytest.mark.parametrize("name", ["cam", "gradcam", "guided_gradcam"])
def test_auto_same_for_every_layer_method(name):
    model = small()
    explainer = camlib.METHODS[name](model)
    explainer(images(2, 1, 16, 16))
    assert explainer.layer_name == "relu3"
    auto = camlib.METHODS[name](model)(images(2, 1, 16, 16), [1, 2])
    named = camlib.METHODS[name](model, "relu3")(images(2, 1, 16, 16), [1, 2])
    torch.testing.assert_close(auto, named)
