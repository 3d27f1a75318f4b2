"""CAM: the identity CAM == Grad-CAM x (h*w) on GAP + linear heads, hand-computed maps, and
clear errors where CAM does not apply (hidden layers in the head, Flatten + Linear heads,
wrong classifier layers, callable targets)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import camlib

from conftest import ModelState, SmallConvNet


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared, busy CPU two spinning threads run many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def mobilenet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.mobilenet_v3_small(weights=None).eval()


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 3, 64, 64)


def raw(explainer: camlib.Explainer, x: torch.Tensor, targets=None) -> torch.Tensor:
    return explainer(x, targets, upsample=False, normalize=False)


def assert_cam_is_gradcam_times_hw(cam: torch.Tensor, grad: torch.Tensor) -> None:
    h, w = cam.shape[-2:]
    assert cam.abs().max() > 0, "degenerate: every CAM is zero"
    expected = grad.detach() * (h * w)
    torch.testing.assert_close(cam, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


# -- the identity CAM == Grad-CAM x hw -----------------------------------------------------


@pytest.mark.parametrize("targets", [None, [3, 0, 7, 9]])
def test_small_net_cam_equals_gradcam_times_hw(small_net, digits, targets):
    before = ModelState.of(small_net)
    explainer = camlib.CAM(small_net, "relu3")
    cam = raw(explainer, digits, targets)
    assert explainer.fc_layer is small_net.fc  # found automatically, on each call
    logits = small_net(digits).detach()
    classes = logits.argmax(1) if targets is None else torch.tensor(targets)
    assert torch.equal(explainer.classes, classes)
    torch.testing.assert_close(explainer.scores, logits.gather(1, classes[:, None]).squeeze(1))

    grad = raw(camlib.GradCAM(small_net, "relu3"), digits, targets)
    assert_cam_is_gradcam_times_hw(cam, grad)
    for fc in ("fc", small_net.fc):
        by_fc = camlib.CAM(small_net, "relu3", fc_layer=fc)
        assert by_fc.fc_name == "fc"
        assert torch.equal(raw(by_fc, digits, targets), cam)
    before.assert_unchanged(small_net)


def test_small_net_cam_by_hand(small_net, digits):
    """CAM = ReLU(sum_k w_ck A^k) with A the relu3 output computed directly from the weights."""
    m = small_net
    with torch.no_grad():
        a = F.relu(m.conv1(digits))
        a = F.max_pool2d(F.relu(m.conv2(a)), 2)
        a = F.relu(m.conv3(a))  # (N, 16, 14, 14)
    targets = [1, 2, 3, 4]
    w = m.fc.weight.detach()[targets]  # (N, 16)
    expected = F.relu((w[:, :, None, None] * a).sum(1))
    cam = raw(camlib.CAM(m, "relu3"), digits, targets)
    torch.testing.assert_close(cam, expected, rtol=1e-5, atol=1e-6)


def test_resnet18_cam_equals_gradcam_times_hw(resnet18, photos):
    before = ModelState.of(resnet18)
    targets = [3, 500, 999]
    auto_fc = camlib.CAM(resnet18, "layer4")
    cam = raw(auto_fc, photos, targets)
    assert cam.shape == (3, 2, 2)
    by_name = raw(camlib.CAM(resnet18, "layer4", fc_layer="fc"), photos, targets)
    assert torch.equal(cam, by_name)
    auto_all = camlib.CAM(resnet18)
    assert torch.equal(raw(auto_all, photos, targets), cam)
    assert auto_all.layer_name == "layer4"

    grad = raw(camlib.GradCAM(resnet18, "layer4"), photos, targets)
    assert_cam_is_gradcam_times_hw(cam, grad)

    top = raw(auto_fc, photos)  # targets=None: the top class
    assert torch.equal(auto_fc.classes, resnet18(photos).argmax(1))
    assert_cam_is_gradcam_times_hw(top, raw(camlib.GradCAM(resnet18, "layer4"), photos))
    before.assert_unchanged(resnet18)


class ConvThenPool(nn.Module):
    """Features -> 1x1 Conv2d(C, K) classifier -> global average pooling -> flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(6, 5, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.classifier(self.features(x))).flatten(1)


class PoolThenConv(ConvThenPool):
    """Features -> global average pooling -> 1x1 Conv2d(C, K) classifier -> flatten."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x))).flatten(1)


@pytest.mark.parametrize("cls", [ConvThenPool, PoolThenConv])
def test_conv1x1_classifier_head(cls):
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.randn(3, 3, 10, 13)
    targets = [4, 0, 2]
    before = ModelState.of(model)
    explainer = camlib.CAM(model, "features")
    cam = raw(explainer, x, targets)
    assert cam.shape == (3, 10, 13)
    explicit = raw(camlib.CAM(model, "features", fc_layer="classifier"), x, targets)
    assert torch.equal(cam, explicit)

    grad = raw(camlib.GradCAM(model, "features"), x, targets)
    assert_cam_is_gradcam_times_hw(cam, grad)

    with torch.no_grad():
        a = model.features(x)
    w = model.classifier.weight.detach().flatten(1)[targets]  # (N, 6)
    torch.testing.assert_close(cam, F.relu(torch.einsum("nc,nchw->nhw", w, a)))
    before.assert_unchanged(model)


def test_cam_by_hand_literal_numbers():
    """A 1x1 conv with weights +1/-1 splits x into relu(x) and relu(-x); the CAM of class c
    is ReLU(w_c0 relu(x) + w_c1 relu(-x)), written out here by hand."""
    conv = nn.Conv2d(1, 2, 1, bias=False)
    fc = nn.Linear(2, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        fc.weight.copy_(torch.tensor([[2.0, 3.0], [-1.0, 1.0]]))
        fc.bias.copy_(torch.tensor([0.5, -0.5]))
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc).eval()
    x = torch.tensor([[1.0, -2.0], [3.0, 0.0]]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    # A0 = relu(x) = [[1, 0], [3, 0]], A1 = relu(-x) = [[0, 2], [0, 0]]
    explainer = camlib.CAM(model, "1")
    cam = raw(explainer, x, [0, 1])
    expected = torch.tensor(
        [
            [[2.0, 6.0], [6.0, 0.0]],  # class 0: 2*A0 + 3*A1
            [[0.0, 2.0], [0.0, 0.0]],  # class 1: ReLU(-A0 + A1) = ReLU([[-1, 2], [-3, 0]])
        ]
    )
    assert torch.equal(cam, expected)
    # The scores are the logits: mean(2*A0 + 3*A1) + 0.5 = 14/4 + 0.5 = 4 and
    # mean(-A0 + A1) - 0.5 = -2/4 - 0.5 = -1.
    torch.testing.assert_close(explainer.scores, torch.tensor([4.0, -1.0]))
    norm = explainer(x, [0, 1], upsample=False)
    assert torch.equal(norm, torch.stack([expected[0] / 6, expected[1] / 2]))


# -- where CAM does not apply --------------------------------------------------------------


def test_mobilenet_hidden_head_raises(mobilenet, photos):
    before = ModelState.of(mobilenet)
    for explainer in (camlib.CAM(mobilenet, "features"), camlib.CAM(mobilenet)):
        with pytest.raises(camlib.LayerError, match="global-average-pooling"):
            explainer(photos)
    # Naming the last Linear: it takes 1024 features, not the 576 channels of `features`.
    with pytest.raises(camlib.LayerError, match=r"classifier\.3"):
        camlib.CAM(mobilenet, "features", fc_layer="classifier.3")(photos, [1, 2, 3])
    before.assert_unchanged(mobilenet)
    # Grad-CAM works for any head.
    assert camlib.GradCAM(mobilenet, "features")(photos).shape == (3, 64, 64)


def test_mobilenet_hidden_head_named_fc_raises(mobilenet, photos):
    """Naming the first Linear of the hidden head: the shapes fit, the identity does not."""
    with pytest.raises(camlib.LayerError, match="global-average-pooling"):
        camlib.CAM(mobilenet, "features", fc_layer="classifier.0")(photos, [1, 2, 3])


def hidden_linear_head(feature_scale: float) -> nn.Module:
    """Conv -> ReLU -> GAP -> Linear(4, 5) -> Linear(5, 5), no biases in the head: the logits
    are W2 W1 mean(A), not W1 mean(A), whatever the scale of the features."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5, bias=False),
        nn.Linear(5, 5, bias=False),
    ).eval()
    with torch.no_grad():
        model[0].weight.mul_(feature_scale)
        model[0].bias.mul_(feature_scale)
    return model


@pytest.mark.parametrize(
    "feature_scale",
    [
        1.0,
        1e-5,
    ],
)
def test_head_check_is_scale_invariant(feature_scale):
    model = hidden_linear_head(feature_scale)
    x = torch.randn(3, 3, 8, 8)
    with pytest.raises(camlib.LayerError, match="global-average-pooling"):
        camlib.CAM(model, "1")(x)


def test_hidden_layer_of_the_same_width_raises():
    """GAP -> Linear(C, K) -> ReLU -> Linear(K, K): the auto search finds Linear(C, K), whose
    shapes fit, but the logits are not its output, so the head check must catch it."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
        nn.ReLU(),
        nn.Linear(5, 5),
    ).eval()
    x = torch.randn(3, 3, 8, 8)
    with pytest.raises(camlib.LayerError, match="global-average-pooling"):
        camlib.CAM(model, "1")(x)


def test_flatten_linear_head_raises():
    """A VGG-like Flatten + Linear head is not GAP + linear: CAM must refuse it."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)
    ).eval()
    x = torch.randn(3, 3, 8, 8)
    before = ModelState.of(model)
    with pytest.raises(camlib.LayerError, match="global-average-pooling"):
        camlib.CAM(model, "1")(x)
    with pytest.raises(camlib.LayerError, match="'3'"):
        camlib.CAM(model, "1", fc_layer="3")(x)
    before.assert_unchanged(model)
    assert camlib.GradCAM(model, "1")(x).shape == (3, 8, 8)


def test_wrong_fc_layer_is_named(small_net, digits):
    with pytest.raises(camlib.LayerError, match="no layer named 'fcc'"):
        camlib.CAM(small_net, "relu3", fc_layer="fcc")
    with pytest.raises(camlib.LayerError, match="'conv1' is a Conv2d"):  # a 3x3 conv
        camlib.CAM(small_net, "relu3", fc_layer="conv1")(digits)
    with pytest.raises(camlib.LayerError, match="not part of the model"):
        camlib.CAM(small_net, "relu3", fc_layer=nn.Linear(16, 10))
    # conv2 has the 16 channels fc takes, but it is not the map that is pooled into fc.
    with pytest.raises(camlib.LayerError, match="'conv2'.*global-average-pooling"):
        camlib.CAM(small_net, "conv2", fc_layer="fc")(digits)


def test_callable_target_raises(small_net, digits):
    before = ModelState.of(small_net)
    cam = camlib.CAM(small_net, "relu3")
    with pytest.raises(camlib.TargetError, match="GradCAM"):
        cam(digits, lambda out: out[:, 0])
    before.assert_unchanged(small_net)


# -- the default output ---------------------------------------------------------------------


def test_default_output_range_and_shape(small_net, digits):
    maps = camlib.CAM(small_net, "relu3")(digits)
    assert maps.shape == (4, 28, 28)
    assert not maps.requires_grad
    assert maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() <= 1
    flat = maps.flatten(1)
    assert torch.equal(flat.amin(1), torch.zeros(4))
    torch.testing.assert_close(flat.amax(1), torch.ones(4))
    via_explain = camlib.explain(small_net, digits, method="cam", target_layer="relu3")
    assert torch.equal(maps, via_explain)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_constant_map_gives_zeros(sign):
    """Zero conv weights and a bias of 1: every activation is 1, the CAM is constant
    (positive, or zero after its ReLU for negative class weights); normalising gives 0."""
    conv = nn.Conv2d(3, 4, 3, padding=1)
    fc = nn.Linear(4, 3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(1.0)
        fc.weight.fill_(sign * 0.5)
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc).eval()
    x = torch.randn(2, 3, 6, 7)
    raw_maps = raw(camlib.CAM(model, "1"), x, 0)
    torch.testing.assert_close(raw_maps, torch.full((2, 6, 7), max(sign * 2.0, 0.0)))
    for upsample in (True, False):
        maps = camlib.CAM(model, "1")(x, 0, upsample=upsample)
        assert not maps.isnan().any()
        assert torch.equal(maps, torch.zeros(2, 6, 7))


def test_small_net_other_seed_rgb():
    """A second seed of SmallConvNet, so the identity is not checked on one set of weights."""
    torch.manual_seed(5)
    model = SmallConvNet(in_ch=3, classes=7).eval()
    x = torch.randn(3, 3, 20, 16)
    cam = raw(camlib.CAM(model, "relu3"), x, [6, 0, 3])
    grad = raw(camlib.GradCAM(model, "relu3"), x, [6, 0, 3])
    assert cam.shape == (3, 10, 8)
    assert_cam_is_gradcam_times_hw(cam, grad)


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e4])
def test_head_check_accepts_valid_heads_at_any_scale(scale):
    """A true GAP + linear head passes the check whether its logits are tiny or huge."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    x = torch.randn(3, 3, 8, 8)
    cam = camlib.CAM(model, "1")(x, upsample=False, normalize=False)
    grad = camlib.GradCAM(model, "1")(x, upsample=False, normalize=False)
    torch.testing.assert_close(cam, grad * 64, rtol=1e-5, atol=1e-30)
