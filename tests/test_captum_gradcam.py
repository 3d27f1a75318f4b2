"""Grad-CAM cross-checked against Captum's LayerGradCam on real architectures.

camlib's raw maps (``upsample=False, normalize=False``) must equal
``LayerGradCam(...).attribute(x, target, relu_attributions=True).squeeze(1)`` to 1e-5
relative, and its default output must equal Captum's map upsampled with
``LayerAttribution.interpolate(..., interpolate_mode="bilinear")`` then min-max normalised
per image. Models: the MNIST-style SmallConvNet and torchvision resnet18, vgg11_bn,
densenet121 (in-place ReLUs, concatenation) and mobilenet_v3_small, randomly initialised.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torchvision
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

import camlib

from conftest import ModelState, SmallConvNet, count_hooks

# name -> (builder, input shape, explicit per-sample targets, layers to check, auto layer)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], list[int], list[str], str]] = {
    "small": (
        SmallConvNet,
        (3, 1, 28, 28),
        [3, 0, 7],
        ["relu3", "conv3", "relu2", "conv1"],
        "relu3",
    ),
    "resnet18": (
        lambda: torchvision.models.resnet18(weights=None),
        (3, 3, 64, 64),
        [3, 500, 999],
        ["layer4", "layer3", "layer4.1.conv2", "layer2.0.bn1", "layer1"],
        "layer4",
    ),
    "vgg11_bn": (
        lambda: torchvision.models.vgg11_bn(weights=None),
        (3, 3, 64, 64),
        [3, 500, 999],
        ["features.28", "features.20", "features.10"],
        "features",
    ),
    "densenet121": (
        lambda: torchvision.models.densenet121(weights=None),
        (3, 3, 64, 64),
        [3, 500, 999],
        ["features", "features.denseblock3", "features.norm5", "features.transition2"],
        "features",
    ),
    "mobilenet_v3_small": (
        lambda: torchvision.models.mobilenet_v3_small(weights=None),
        (3, 3, 64, 64),
        [3, 500, 999],
        ["features.12", "features.8", "features.3"],
        "features",
    ),
}

# Every layer with explicit per-sample targets; targets=None (top class) on the first
# layer of each model. The default (upsampled, normalised) output is checked on the first
# two layers of each model (``check_default``), to keep the module fast on a CPU.
CASES = [
    pytest.param(
        model,
        layer,
        targets,
        i < 2,
        id=f"{model}-{layer}-{'top' if targets is None else 'explicit'}",
    )
    for model, (_, _, explicit, layers, _) in MODELS.items()
    for i, layer in enumerate(layers)
    for targets in ([explicit, None] if i == 0 else [explicit])
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared, busy CPU two spinning threads run many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Zoo:
    """Each model, its input batch and its logits, built once per module on first use."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]] = {}

    def __call__(self, name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        if name not in self._cache:
            build, shape, *_ = MODELS[name]
            torch.manual_seed(0)
            model = build().eval()
            x = torch.randn(shape)
            with torch.no_grad():
                logits = model(x)
            self._cache[name] = (model, x, logits)
        return self._cache[name]


@pytest.fixture(scope="module")
def zoo() -> Zoo:
    return Zoo()


RTOL = 1e-5


def captum_reference(
    model: Callable[[torch.Tensor], torch.Tensor],
    layer: nn.Module,
    x: torch.Tensor,
    target,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Captum's raw Grad-CAM (N, h, w) and its conditioning, sum_k |alpha_k A^k| (N, h, w)."""
    lgc = LayerGradCam(model, layer)
    ref = lgc.attribute(x, target=target, relu_attributions=True)
    assert ref.dim() == 4 and ref.shape[1] == 1
    terms = lgc.attribute(x, target=target, attr_dim_summation=False)
    return ref.detach().squeeze(1), terms.detach().abs().sum(1)


def raw_tolerance(ref: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-element tolerance: 1e-5 of the largest value in the batch, or where the channel
    sum cancels heavily, 1e-6 of sum_k |alpha_k A^k| (float32 rounding of the terms; the
    order of summation differs between the two libraries and between CPU thread counts).
    """
    return torch.clamp(1e-6 * scale, min=RTOL * float(ref.abs().max()))


def assert_raw_close(raw: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor) -> None:
    assert raw.shape == ref.shape
    diff = (raw - ref).abs()
    bad = diff > raw_tolerance(ref, scale) + RTOL * ref.abs()
    peak = float(ref.abs().max())
    assert not bad.any(), (
        f"{int(bad.sum())} of {bad.numel()} elements differ; max difference "
        f"{float(diff.max()):.3g} = {float(diff.max()) / peak:.3g} of the largest value {peak:.3g}"
    )


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max to [0, 1], zeros for a constant map (independent of camlib)."""
    out = torch.zeros_like(maps)
    for i, m in enumerate(maps):
        lo, hi = m.min(), m.max()
        if hi > lo:
            out[i] = (m - lo) / (hi - lo)
    return out


def assert_default_close(default: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor) -> None:
    """camlib's default output == Captum's map, bilinearly upsampled, min-max per image."""
    n, height, width = default.shape
    assert ref.shape[0] == n
    upsampled = LayerAttribution.interpolate(
        ref[:, None], (height, width), interpolate_mode="bilinear"
    )[:, 0]
    expected = minmax(upsampled)
    # A raw error of e moves a normalised value by at most about 3e / (max - min).
    raw_err = (raw_tolerance(ref, scale) + RTOL * ref.abs()).flatten(1).amax(1)
    span = upsampled.flatten(1).amax(1) - upsampled.flatten(1).amin(1)
    atol = torch.where(span > 0, 1e-5 + 3 * raw_err / span.clamp_min(1e-30), 1e-5)
    diff = (default - expected).abs().flatten(1).amax(1)
    assert (diff <= atol).all(), (
        f"normalised maps differ by {diff.tolist()} (allowed {atol.tolist()})"
    )
    assert default.min() >= 0 and default.max() <= 1


@pytest.mark.parametrize(("model_name", "layer", "targets", "check_default"), CASES)
def test_gradcam_equals_captum(zoo, model_name, layer, targets, check_default):
    model, x, logits = zoo(model_name)
    hooks = count_hooks(model)

    explainer = camlib.GradCAM(model, layer)
    raw = explainer(x, targets, upsample=False, normalize=False)
    expected_classes = logits.argmax(1) if targets is None else torch.tensor(targets)
    assert torch.equal(explainer.classes, expected_classes)
    torch.testing.assert_close(
        explainer.scores, logits.gather(1, expected_classes[:, None]).squeeze(1)
    )
    assert not explainer.scores.requires_grad
    assert explainer.layer_name == layer

    ref, scale = captum_reference(model, explainer.target_layer, x, expected_classes)
    assert ref.max() > 0, "degenerate reference: every map is zero"
    assert_raw_close(raw, ref, scale)

    if check_default:
        default = explainer(x, targets)
        assert default.shape == (x.shape[0], *x.shape[-2:])
        assert_default_close(default, ref, scale)
    assert count_hooks(model) == hooks


# In float64 the two libraries agree to ~1e-13 even where float32 cancels heavily
# (densenet121 features.transition2: sum |alpha_k A^k| is ~900x the largest map value).
FLOAT64_CASES = [
    ("small", "conv3"),
    ("resnet18", "layer3"),
    ("densenet121", "features.transition2"),
    ("mobilenet_v3_small", "features.12"),
]


@pytest.mark.parametrize(("model_name", "layer"), FLOAT64_CASES)
def test_gradcam_equals_captum_float64(zoo, model_name, layer):
    model32, x32, _ = zoo(model_name)
    model = copy.deepcopy(model32).double()
    x = x32.double()
    targets = MODELS[model_name][2]
    raw = camlib.GradCAM(model, layer)(x, targets, upsample=False, normalize=False)
    assert raw.dtype == torch.float64
    ref, _ = captum_reference(model, camlib.resolve_layer(model, layer), x, targets)
    assert ref.max() > 0
    peak = float(ref.abs().max())
    torch.testing.assert_close(raw, ref, rtol=1e-9, atol=1e-9 * peak)


@pytest.mark.parametrize("model_name", list(MODELS))
def test_auto_layer(zoo, model_name):
    model, x, _ = zoo(model_name)
    expected = MODELS[model_name][4]
    # A full snapshot deep-copies the state dict: too slow for the two largest models.
    full = model_name not in ("vgg11_bn", "densenet121")
    before = ModelState.of(model) if full else None
    hooks = count_hooks(model)
    auto = camlib.GradCAM(model)
    assert auto.layer_name is None  # known only once an input has been seen
    maps = auto(x, upsample=False, normalize=False)
    assert auto.layer_name == expected
    assert auto.target_layer is camlib.resolve_layer(model, expected)
    assert expected in repr(auto)
    named = camlib.GradCAM(model, expected)(x, upsample=False, normalize=False)
    assert torch.equal(maps, named)
    assert count_hooks(model) == hooks
    if before is not None:
        before.assert_unchanged(model)


@pytest.mark.parametrize("model_name", ["small", "resnet18", "mobilenet_v3_small"])
def test_module_object_and_int_target(zoo, model_name):
    model, x, _ = zoo(model_name)
    layer = MODELS[model_name][3][1]
    module = camlib.resolve_layer(model, layer)
    by_module = camlib.GradCAM(model, module)
    assert by_module.layer_name == layer
    assert by_module.target_layer is module

    by_name = camlib.GradCAM(model, layer)
    explicit = MODELS[model_name][2]
    assert torch.equal(
        by_module(x, explicit, upsample=False, normalize=False),
        by_name(x, explicit, upsample=False, normalize=False),
    )

    cls = explicit[0]
    single = by_name(x, cls)
    assert torch.equal(by_name.classes, torch.full((x.shape[0],), cls))
    assert torch.equal(single, by_name(x, [cls] * x.shape[0]))
    if model_name == "small":
        assert torch.equal(single, by_name(x, torch.tensor(cls)))
        assert torch.equal(single, by_name(x, torch.full((x.shape[0],), cls)))


def test_gradcam_maps_are_detached(zoo):
    """The maps carry no autograd history (maps.numpy() works), also under no_grad."""
    model, x, _ = zoo("small")
    explainer = camlib.GradCAM(model, "relu3")
    plain = explainer(x, upsample=False, normalize=False)
    with torch.no_grad():
        under_no_grad = explainer(x, upsample=False, normalize=False)
    assert torch.equal(plain, under_no_grad)
    for maps in (explainer(x), plain, under_no_grad):
        assert not maps.requires_grad
        assert maps.grad_fn is None
        maps.numpy()
