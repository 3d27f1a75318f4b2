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
    weights, the two big classifier matrices with a scaled identity on their diagonal
    (cheap, and the gradient still reaches the features, as "auto" checks)."""
    with torch.device("meta"):
        model = torchvision.models.vgg11(weights=None, num_classes=10)
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("classifier.0", "classifier.3")):
                p.zero_()
                if p.dim() == 2:
                    p.fill_diagonal_(0.5)
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


# --------------------------------------------------------------------------------------
# issue 17: what "auto" must never pick, the candidate table, the cache, input checks
# --------------------------------------------------------------------------------------
class TalkingHeads(nn.Module):
    """Attention whose weights pass through a module (CaiT's talking heads): (N, L, L, h)."""

    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj_w = nn.Linear(heads, heads)
        self.heads = heads

    def forward(self, x):
        n, length, d = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.heads, d // self.heads).unbind(2)
        attn = torch.einsum("nqhd,nkhd->nqkh", q, k).softmax(2)
        attn = self.proj_w(attn)  # (N, L, L, heads): reads as an L x L channels-last "map"
        return torch.einsum("nqkh,nkhd->nqhd", attn, v).reshape(n, length, d)


class TinyTokenNet(nn.Module):
    """Patch stem (16 px) -> two token blocks with talking-heads attention -> mean -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 16, stride=16)
        self.norms = nn.ModuleList(nn.LayerNorm(8) for _ in range(2))
        self.attn = nn.ModuleList(TalkingHeads(8) for _ in range(2))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)
        for norm, attn in zip(self.norms, self.attn, strict=False):
            t = t + attn(norm(t))
        return self.head(t.mean(1))


def test_auto_rejects_attention_weights_and_the_stem():
    torch.manual_seed(0)
    model = TinyTokenNet().eval()
    x = images(2, 3, 64, 64)  # 4 x 4 = 16 tokens; attention weights (N, 16, 16, 2)
    table = {c.name: c for c in camlib.layers.layer_candidates(model, x)}
    assert table["attn.1.proj_w"].verdict == "rejected"
    assert "attention" in table["attn.1.proj_w"].reason  # inside attention / token x token
    assert table["stem"].verdict == "rejected" and table["stem"].reason.startswith("early")
    assert camlib.find_target_layer(model, x) == "attn.1"  # the last block's token stream out
    assert table["attn.1"].layout == "tokens+0" and table["attn.1"].grid == (4, 4)
    raw = camlib.GradCAM(model)(x, upsample=False, normalize=False)
    assert raw.shape == (2, 4, 4)
    assert "chosen" in camlib.layers.format_candidates(list(table.values()))


class StemOnly(nn.Module):
    """The only map is the stem; then a flatten-MLP: nothing for 'auto' to explain."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.fc1 = nn.Linear(4 * 64, 32)
        self.fc2 = nn.Linear(32, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.stem(x).flatten(1))))


def test_auto_refuses_with_the_candidates_when_none_qualifies():
    torch.manual_seed(0)
    model = StemOnly().eval()
    state = ModelState.of(model)
    with pytest.raises(camlib.LayerError, match=r"could not find a layer") as info:
        camlib.GradCAM(model)(images(1, 1, 8, 8))
    assert "stem (1, 4, 8, 8)" in str(info.value)
    state.assert_unchanged(model)


class DeadBranchNet(nn.Module):
    """A spatial branch computed last but unused by the output: zero gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 4, 3, padding=1)
        self.aux = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))
        self.aux(h)  # computed, never used
        return self.fc(h.mean((2, 3)))


def test_auto_skips_a_layer_without_gradient():
    torch.manual_seed(0)
    model = DeadBranchNet().eval()
    table = {c.name: c for c in camlib.layers.layer_candidates(model, images(1, 1, 8, 8))}
    assert table["aux"].reason == "no gradient reaches it from the output"
    assert camlib.find_target_layer(model, images(1, 1, 8, 8)) == "conv3"


class SpaceToDepthNet(nn.Module):
    """TResNet's stem: space-to-depth (3 -> 12 channels) before the first convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.s2d = nn.PixelUnshuffle(2)
        self.conv = nn.Conv2d(12, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv(self.s2d(x))))).mean((2, 3)))


def test_space_to_depth_stem_is_accepted_and_wrong_channels_still_refused():
    torch.manual_seed(0)
    model = SpaceToDepthNet().eval()
    maps = camlib.GradCAM(model)(images(2, 3, 16, 16))
    assert maps.shape == (2, 16, 16)
    plain = small(in_ch=3)
    with pytest.raises(camlib.InputError, match="first convolution takes 3"):
        camlib.GradCAM(plain)(images(1, 1, 16, 16))


def test_non_finite_inputs_are_counted():
    x = images(2, 1, 8, 8)
    x[0, 0, 1, 1] = float("nan")
    x[1, 0, 2, 2] = float("inf")
    with pytest.raises(camlib.InputError, match=r"2 non-finite value\(s\)"):
        camlib.GradCAM(small())(x)
    huge = torch.full((1, 1, 8, 8), 3e38)  # the sum overflows; every value is finite
    assert camlib.GradCAM(small())(huge).shape == (1, 8, 8)


def test_auto_choice_is_cached_across_explainers_and_invalidated():
    model = small()
    calls = []
    handle = model.conv1.register_forward_hook(lambda *a: calls.append(1))
    try:
        x = images(2, 1, 12, 12)
        camlib.GradCAM(model)(x)
        first = len(calls)
        camlib.GradCAM(model)(x)  # a new explainer: no second probe
        assert len(calls) - first == 1
        model.relu3 = nn.ReLU()  # the modules changed: probed again
        camlib.GradCAM(model)(x)
        assert len(calls) - first == 3
    finally:
        handle.remove()
        model.relu3 = nn.ReLU(inplace=True)


def test_video_tokens_with_a_class_token_read_as_t_h_w():
    """(N, 1 + t*h*w, D) tokens for (N, C, T, H, W) inputs (MViT): 17 tokens at 4x16x16
    with 2x8x8 patches could be 1 + 2x2x4 or 1 + 4x2x2 ...; the model's own 5-D patch
    map settles t = 2, and the map equals Grad-CAM by hand."""

    class TinyVideoTokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv3d(3, 8, (2, 8, 8), stride=(2, 8, 8))
            self.cls = nn.Parameter(torch.randn(1, 1, 8))
            self.norm = nn.LayerNorm(8)
            self.mix = nn.Linear(8, 8)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)
            t = torch.cat([self.cls.expand(len(x), -1, -1), t], 1)
            t = self.norm(t)
            t = t + self.mix(t)
            return self.head(t.mean(1))

    torch.manual_seed(0)
    model = TinyVideoTokens().eval()
    x = images(2, 3, 4, 16, 16)
    explainer = camlib.GradCAM(model)
    raw = explainer(x, upsample=False, normalize=False)
    assert explainer.layer_name == "mix" and raw.shape == (2, 2, 2, 2)
    out = {}
    handle = model.mix.register_forward_hook(lambda m, a, o: out.setdefault("a", o))
    logits = model(x)
    handle.remove()
    score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
    (g,) = torch.autograd.grad(score, out["a"])
    a = out["a"][:, 1:].reshape(2, 2, 2, 2, 8).permute(0, 4, 1, 2, 3)
    g = g[:, 1:].reshape(2, 2, 2, 2, 8).permute(0, 4, 1, 2, 3)
    want = torch.relu((g.mean((2, 3, 4))[:, :, None, None, None] * a).sum(1))
    torch.testing.assert_close(raw, want.detach(), rtol=1e-5, atol=1e-6)
