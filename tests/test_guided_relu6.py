"""Guided ReLU6 (MobileNet, EfficientNet-Lite): the rule max(g, 0) * [0 < x < max_val] for
nn.ReLU6, F.relu6, hardtanh(0, m) and their in-place forms, against a hand-computed guided
gradient; the ordinary rule when the switch is off; the recorded counter; activation_types."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import camlib
from camlib.guided_relu import GuidedReLUMode, GuideSwitch, activation_types

# x covers every region of ReLU6: below 0, exactly 0, inside, exactly the top, above it
X = torch.tensor([-2.0, 0.0, 0.5, 3.0, 6.0, 7.5, -0.1, 5.9])
G = torch.tensor([1.0, 2.0, -3.0, 4.0, 5.0, 6.0, 7.0, -8.0])  # upstream gradient, both signs

FLAVOURS = {
    "nn.ReLU6": (lambda t: nn.ReLU6()(t), 6.0),
    "nn.ReLU6(inplace)": (lambda t: nn.ReLU6(inplace=True)(t), 6.0),
    "F.relu6": (lambda t: F.relu6(t), 6.0),
    "F.relu6(inplace)": (lambda t: F.relu6(t, inplace=True), 6.0),
    "F.hardtanh(0, 6)": (lambda t: F.hardtanh(t, 0.0, 6.0), 6.0),
    "F.hardtanh(kw, inplace)": (
        lambda t: F.hardtanh(t, min_val=0.0, max_val=6.0, inplace=True),
        6.0,
    ),
    "F.hardtanh_(0, 6)": (lambda t: F.hardtanh_(t, 0.0, 6.0), 6.0),
    "nn.Hardtanh(0, 4)": (lambda t: nn.Hardtanh(0, 4)(t), 4.0),
    "torch._C._nn.relu6": (lambda t: torch._C._nn.relu6(t), 6.0),
}


def grad_of(fn, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    leaf = x.clone().requires_grad_(True)
    y = fn(leaf * 1.0)  # a non-leaf, so the in-place flavours are allowed
    (grad,) = torch.autograd.grad(y, leaf, g)
    return grad


@pytest.mark.parametrize("name", list(FLAVOURS))
def test_every_relu6_flavour_is_guided_and_counted(name):
    fn, top = FLAVOURS[name]
    switch = GuideSwitch()
    with GuidedReLUMode(switch):
        ours = grad_of(fn, X, G)
        y = fn(X.clone().requires_grad_(True) * 1.0)
    expected = G.clamp_min(0) * ((X > 0) & X.lt(top))
    assert torch.equal(ours, expected)
    assert torch.equal(y.detach(), X.clamp(0, top))  # the forward value is unchanged
    assert switch.recorded == 2  # one node per call that needed a gradient
    # by hand, for the default ReLU6 top of 6: only x = 3.0 (g=4) and x = 0.5 (g=-3 -> 0),
    # x = 5.9 (g=-8 -> 0) are inside; so the guided gradient is [0, 0, 0, 4, 0, 0, 0, 0]
    if top == 6.0:
        assert ours.tolist() == [0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("name", list(FLAVOURS))
def test_switch_off_gives_torch_own_gradient_exactly(name):
    fn, top = FLAVOURS[name]
    plain = grad_of(fn, X, G)  # no mode at all
    switch = GuideSwitch(guided=False)
    with GuidedReLUMode(switch):
        ours = grad_of(fn, X, G)
    assert torch.equal(ours, plain)
    assert switch.recorded == 1
    if top == 6.0:  # torch's rule: g * [0 < x < 6], negative gradients included
        assert plain.tolist() == [0.0, 0.0, -3.0, 4.0, 0.0, 0.0, 0.0, -8.0]


@pytest.mark.parametrize(
    "fn",
    [lambda t: F.hardtanh(t), lambda t: F.hardtanh(t, -1.0, 6.0), lambda t: nn.Hardtanh(0.5, 6)(t)],
    ids=["hardtanh(-1,1)", "hardtanh(-1,6)", "Hardtanh(0.5,6)"],
)
def test_hardtanh_with_another_lower_bound_keeps_its_gradient(fn):
    plain = grad_of(fn, X, G)
    switch = GuideSwitch()
    with GuidedReLUMode(switch):
        ours = grad_of(fn, X, G)
    assert torch.equal(ours, plain)
    assert (plain < 0).any()  # a negative gradient passed: really not guided
    assert switch.recorded == 0


def test_nothing_recorded_without_gradients():
    switch = GuideSwitch()
    with GuidedReLUMode(switch):
        F.relu6(X)  # no requires_grad
        with torch.no_grad():
            F.relu6(X.clone().requires_grad_(True))
            torch.relu(X.clone().requires_grad_(True))
    assert switch.recorded == 0


# --------------------------------------------------------------------------------------
# A two-layer ReLU6 network: conv -> ReLU6 -> global average pool -> linear
# --------------------------------------------------------------------------------------


class TwoLayer(nn.Module):
    """``fc(mean_hw(act(conv(x))))``; ``act`` is chosen by name to compare the flavours."""

    def __init__(self, act: str = "module") -> None:
        super().__init__()
        self.act = act
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.relu6 = nn.ReLU6(inplace=act == "module_inplace")
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(x)
        if self.act.startswith("module"):
            a = self.relu6(z)
        elif self.act == "functional":
            a = F.relu6(z)
        elif self.act == "functional_inplace":
            a = F.relu6(z, inplace=True)
        elif self.act == "hardtanh_":
            a = F.hardtanh_(z, 0.0, 6.0)
        else:
            raise AssertionError(self.act)
        return self.fc(a.mean((2, 3)))


def two_layer(act: str = "module") -> TwoLayer:
    torch.manual_seed(0)
    model = TwoLayer(act).eval()
    return model


def relu6_input() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 3, 8, 8) * 12.0  # about 50 % below 0, 30 % inside, 17 % above 6


TARGETS = [0, 2, 3]


def hand_guided(model: TwoLayer, x: torch.Tensor, targets: list[int]) -> torch.Tensor:
    """The guided gradient written out: s_n = w[c_n] . mean_hw(relu6(z_n)) + b, so
    ds/da[k, h, w] = w[c, k] / (H W); the guided ReLU6 keeps max(., 0) where 0 < z < 6; the
    convolution's input gradient is the transposed convolution with the same weights."""
    with torch.no_grad():
        z = model.conv(x)
        hw = z.shape[2] * z.shape[3]
        w = model.fc.weight[targets]  # (N, 6)
        upstream = (w / hw)[:, :, None, None].expand_as(z)
        guided = upstream.clamp_min(0) * ((z > 0) & (z < 6))
        return F.conv_transpose2d(guided, model.conv.weight, padding=1)


def plain_gradient(model: nn.Module, x: torch.Tensor, targets: list[int]) -> torch.Tensor:
    xs = x.clone().requires_grad_(True)
    scores = model(xs).gather(1, torch.tensor(targets)[:, None]).sum()
    (grad,) = torch.autograd.grad(scores, xs)
    return grad


def test_the_input_reaches_every_region_of_relu6():
    model, x = two_layer(), relu6_input()
    with torch.no_grad():
        z = model.conv(x)
    for region in (z <= 0, (z > 0) & (z < 6), z >= 6):
        assert region.float().mean() > 0.02
    assert (model.fc.weight < 0).any() and (model.fc.weight > 0).any()


def test_guided_backprop_on_relu6_equals_the_hand_computed_guided_gradient():
    model, x = two_layer(), relu6_input()
    ours = camlib.GuidedBackprop(model)(x, TARGETS, normalize=False)
    expected = hand_guided(model, x, TARGETS)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)
    assert expected.abs().max() > 0


def test_guided_backprop_on_relu6_differs_from_the_plain_gradient():
    """Before ReLU6 was guided, Guided Backprop returned exactly the plain gradient here."""
    model, x = two_layer(), relu6_input()
    ours = camlib.GuidedBackprop(model)(x, TARGETS, normalize=False)
    plain = plain_gradient(model, x, TARGETS)
    rel = ((ours - plain).abs().max() / plain.abs().max()).item()
    assert rel > 0.2, f"guided and plain gradients differ by only {rel:.3g} of the plain peak"


@pytest.mark.parametrize("act", ["module_inplace", "functional", "functional_inplace", "hardtanh_"])
def test_functional_and_inplace_twins_equal_the_module_model(act):
    model, x = two_layer(), relu6_input()
    other = TwoLayer(act).eval()
    other.load_state_dict(model.state_dict())
    expected = camlib.GuidedBackprop(model)(x, TARGETS, normalize=False)
    ours = camlib.GuidedBackprop(other)(x, TARGETS, normalize=False)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    # and the ordinary rule of the same twin is torch's own gradient
    xs = x.clone().requires_grad_(True)
    switch = GuideSwitch(guided=False)
    with GuidedReLUMode(switch):
        scores = other(xs).gather(1, torch.tensor(TARGETS)[:, None]).sum()
    (ordinary,) = torch.autograd.grad(scores, xs)
    assert torch.equal(ordinary, plain_gradient(model, x, TARGETS))
    assert switch.recorded == 1


class Mixed(nn.Module):
    """ReLU6 (module and functional), an in-place ReLU and a GELU, as MobileNets mix them."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.a1 = nn.ReLU6(inplace=True)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.a2 = nn.ReLU(inplace=True)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.a3 = nn.GELU()
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a1(self.c1(x))
        x = self.a2(self.c2(x))
        x = F.relu6(self.c3(x) * 2.0)
        x = self.a3(x)
        return self.fc(x.mean((2, 3)))


def test_switch_off_on_a_mixed_network_is_torch_own_gradient_and_counts_each_call():
    torch.manual_seed(0)
    model = Mixed().eval()
    x = relu6_input()
    plain = plain_gradient(model, x, [1, 4, 0])
    for guided, count in ((False, 3), (True, 3)):
        switch = GuideSwitch(guided=guided)
        xs = x.clone().requires_grad_(True)
        with GuidedReLUMode(switch):
            scores = model(xs).gather(1, torch.tensor([[1], [4], [0]])).sum()
        (grad,) = torch.autograd.grad(scores, xs)
        assert switch.recorded == count  # ReLU6 module, ReLU module, F.relu6; not the GELU
        assert torch.equal(grad, plain) is not guided


def test_guided_gradcam_on_relu6_uses_the_guided_gradient():
    """Guided Grad-CAM = guided gradient x upsampled Grad-CAM: its sign pattern is the guided
    gradient's wherever the Grad-CAM factor is positive."""
    model, x = two_layer(), relu6_input()
    ggc = camlib.GuidedGradCAM(model, "relu6")(x, TARGETS, normalize=False)
    cam = camlib.GradCAM(model, "relu6")(x, TARGETS, normalize=False)
    expected = hand_guided(model, x, TARGETS) * cam[:, None]
    torch.testing.assert_close(ggc, expected, rtol=1e-5, atol=1e-7 * expected.abs().max().item())


def test_a_net_with_nothing_to_guide_warns_and_names_its_activations():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.GELU(), nn.Conv2d(4, 4, 3, padding=1), nn.SiLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).eval()  # fmt: skip
    x = relu6_input()
    with pytest.warns(UserWarning, match="GELU, SiLU"):
        ours = camlib.GuidedBackprop(model)(x, [0, 1, 2], normalize=False)
    torch.testing.assert_close(ours, plain_gradient(model, x, [0, 1, 2]), rtol=1e-6, atol=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ReLU6 network is guided: no warning
        camlib.GuidedBackprop(two_layer())(x, TARGETS)


# --------------------------------------------------------------------------------------
# activation_types
# --------------------------------------------------------------------------------------


class Swish(nn.Module):
    """An activation from another library (EfficientNet's Swish)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def test_activation_types_names_module_types_in_order():
    assert activation_types(Mixed()) == ["ReLU6", "ReLU", "GELU"]
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), Swish(), nn.Hardswish(), Swish(), nn.LeakyReLU(),
        nn.MultiheadAttention(4, 1), nn.Softmax(dim=1), nn.BatchNorm2d(4),
    )  # fmt: skip
    assert activation_types(model) == ["Swish", "Hardswish", "LeakyReLU"]
    assert activation_types(nn.Linear(3, 3)) == []
    assert activation_types(torchvision.models.mobilenet_v2()) == ["ReLU6"]
    assert activation_types(torchvision.models.mobilenet_v3_small()) == [
        "Hardswish",
        "ReLU",
        "Hardsigmoid",
    ]
