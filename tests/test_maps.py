"""Upsampling and normalisation of maps (camlib.upsample, normalize_minmax, normalize_absmax)
and the shapes and ranges of what every explainer returns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import camlib

from conftest import METHOD_NAMES, make, small

UNSIGNED = [n for n in METHOD_NAMES if n in ("cam", "gradcam")]
SIGNED = [n for n in METHOD_NAMES if n in ("guided_backprop", "guided_gradcam")]

FAST = settings(max_examples=40, deadline=None, database=None)


def batch(n: int = 3, h: int = 28, w: int = 28) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, 1, h, w)


def per_image(maps: torch.Tensor, fn) -> torch.Tensor:
    return fn(maps.flatten(1), dim=1)


# --------------------------------------------------------------------------------------
# upsample
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ((7, 7), (224, 224)),
        ((14, 14), (28, 28)),
        ((3, 5), (20, 36)),
        ((9, 9), (4, 6)),
        ((1, 1), (5, 5)),
    ],
)
def test_upsample_is_bilinear_align_corners_false(src, dst):
    torch.manual_seed(0)
    maps = torch.randn(3, *src)
    ours = camlib.upsample(maps, dst)
    ref = F.interpolate(maps[:, None], size=dst, mode="bilinear", align_corners=False)[:, 0]
    assert ours.shape == (3, *dst)
    if src == (1, 1):  # camlib repeats the value exactly; bilinear weights add 1-ulp noise
        assert torch.equal(ours, maps[:, :, :1].expand(3, *dst))
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
    else:
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    other = F.interpolate(maps[:, None], size=dst, mode="bilinear", align_corners=True)[:, 0]
    if src != (1, 1):
        assert not torch.allclose(ours, other), "align_corners must matter for this case"


def test_upsample_same_size_is_identity_and_keeps_dtype():
    maps = torch.randn(2, 6, 6, dtype=torch.float64)
    out = camlib.upsample(maps, (6, 6))
    torch.testing.assert_close(out, maps, rtol=0, atol=0)
    assert camlib.upsample(maps, (12, 12)).dtype == torch.float64


def test_upsample_does_not_modify_input():
    maps = torch.rand(2, 4, 4)
    before = maps.clone()
    camlib.upsample(maps, (8, 8))
    assert torch.equal(maps, before)


# --------------------------------------------------------------------------------------
# normalize_minmax
# --------------------------------------------------------------------------------------


@FAST
@given(
    n=st.integers(1, 4),
    h=st.integers(1, 6),
    w=st.integers(2, 6),
    scale=st.sampled_from([1e-20, 1e-6, 1e-2, 1.0, 1e3, 1e12]),
    offset=st.sampled_from([0.0, -5.0, 1e4]),
    seed=st.integers(0, 2**16),
)
def test_minmax_exact_range_per_image(n, h, w, scale, offset, seed):
    gen = torch.Generator().manual_seed(seed)
    maps = torch.randn(n, h, w, generator=gen) * scale + offset * scale
    maps[:, 0, 0] += scale  # no image is constant
    before = maps.clone()
    out = camlib.normalize_minmax(maps)
    assert torch.equal(maps, before), "the input was modified"
    assert out.shape == maps.shape and out.dtype == maps.dtype
    assert not torch.isnan(out).any()
    assert torch.all(per_image(out, torch.amin) == 0.0)
    assert torch.all(per_image(out, torch.amax) == 1.0)
    assert out.min() >= 0.0 and out.max() <= 1.0
    flat = maps.flatten(1).double()
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    expected = ((flat - lo) / (hi - lo)).view_as(maps).float()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_minmax_images_are_independent_and_any_rank():
    torch.manual_seed(0)
    maps = torch.rand(2, 3, 5, 5)  # (N, C, H, W): one map per leading index
    maps[1] *= 1000.0
    out = camlib.normalize_minmax(maps)
    assert out.shape == maps.shape
    torch.testing.assert_close(out[0:1], camlib.normalize_minmax(maps[0:1]), rtol=0, atol=0)
    torch.testing.assert_close(out[1:2], camlib.normalize_minmax(maps[1:2]), rtol=0, atol=0)
    assert out[0].max() == 1.0 and out[1].max() == 1.0


@pytest.mark.parametrize("value", [0.0, 3.5, -2.0, 1e-30, 1e30])
def test_minmax_constant_maps_become_zeros(value):
    maps = torch.full((2, 4, 4), value)
    out = camlib.normalize_minmax(maps)
    assert not torch.isnan(out).any()
    assert torch.equal(out, torch.zeros_like(maps))


def test_minmax_constant_image_in_a_batch():
    maps = torch.stack([torch.zeros(3, 3), torch.arange(9.0).view(3, 3), torch.full((3, 3), 7.0)])
    out = camlib.normalize_minmax(maps)
    assert torch.equal(out[0], torch.zeros(3, 3))
    torch.testing.assert_close(out[1], torch.arange(9.0).view(3, 3) / 8.0)
    assert torch.equal(out[2], torch.zeros(3, 3))


@pytest.mark.parametrize("span", [1e-30, 1e-37, 1e-6])
def test_minmax_tiny_ranges(span):
    maps = torch.tensor([[[0.0, span], [span / 2, 0.0]]])
    out = camlib.normalize_minmax(maps)
    assert not torch.isnan(out).any()
    assert out.min() == 0.0 and out.max() == 1.0
    torch.testing.assert_close(out[0, 1, 0], torch.tensor(0.5))


def test_minmax_subnormal_range():
    out = camlib.normalize_minmax(torch.tensor([[0.0, 1e-40]]))
    assert out.max() == 1.0


def test_minmax_huge_range_no_nan():
    out = camlib.normalize_minmax(torch.tensor([[-3e38, 0.0, 3e38]]))
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.5, 1.0]]))


def test_minmax_float64_and_half():
    for dtype in (torch.float64, torch.float16):
        maps = torch.tensor([[[1.0, 2.0], [3.0, 5.0]]], dtype=dtype)
        out = camlib.normalize_minmax(maps)
        assert out.dtype == dtype
        torch.testing.assert_close(out, torch.tensor([[[0.0, 0.25], [0.5, 1.0]]], dtype=dtype))


# --------------------------------------------------------------------------------------
# normalize_absmax
# --------------------------------------------------------------------------------------


@FAST
@given(
    n=st.integers(1, 4),
    c=st.integers(1, 3),
    scale=st.sampled_from([1e-20, 1e-3, 1.0, 1e6]),
    seed=st.integers(0, 2**16),
)
def test_absmax_exact_range_and_signs(n, c, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    maps = torch.randn(n, c, 4, 5, generator=gen) * scale
    maps[:, 0, 0, 0] = 0.0
    out = camlib.normalize_absmax(maps)
    assert out.shape == maps.shape
    assert torch.all(per_image(out.abs(), torch.amax) == 1.0)
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert torch.equal(torch.sign(out), torch.sign(maps))
    assert torch.all(out[:, 0, 0, 0] == 0.0), "zeros must stay zeros"
    peak = maps.flatten(1).abs().amax(1)
    torch.testing.assert_close(out, maps / peak[:, None, None, None], rtol=1e-6, atol=0)


def test_absmax_negative_only_and_all_zero():
    maps = torch.stack([-torch.arange(1.0, 5.0).view(2, 2), torch.zeros(2, 2)])
    out = camlib.normalize_absmax(maps)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out[0], torch.tensor([[-0.25, -0.5], [-0.75, -1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))


# --------------------------------------------------------------------------------------
# what explainers return
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", UNSIGNED)
def test_default_output_is_input_size_in_unit_range(name):
    model, x = small(), batch()
    maps = make(name, model)(x, [2, 4, 5])
    raw = make(name, model)(x, [2, 4, 5], upsample=False, normalize=False)
    assert maps.shape == (3, 28, 28)
    assert raw.shape == (3, 14, 14)
    assert (raw >= 0).all(), "ReLU-ed maps"
    assert (per_image(raw, torch.amax) > 0).all(), "test needs non-constant maps"
    assert torch.all(per_image(maps, torch.amin) == 0.0)
    assert torch.all(per_image(maps, torch.amax) == 1.0)
    # upsample first, then normalise
    torch.testing.assert_close(
        maps, camlib.normalize_minmax(camlib.upsample(raw, (28, 28))), rtol=0, atol=0
    )


@pytest.mark.parametrize("name", UNSIGNED)
def test_layer_resolution_without_upsampling(name):
    model, x = small(), batch(2, 20, 36)
    maps = make(name, model)(x, upsample=False)
    assert maps.shape == (2, 10, 18)
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert torch.all(per_image(maps, torch.amax) == 1.0)
    raw = make(name, model)(x, upsample=False, normalize=False)
    torch.testing.assert_close(maps, camlib.normalize_minmax(raw), rtol=0, atol=0)
    assert make(name, model)(x).shape == (2, 20, 36)


@pytest.mark.parametrize("name", SIGNED)
def test_signed_methods_are_input_sized_in_minus_one_one(name):
    model, x = small(), batch()
    maps = make(name, model)(x, [2, 4, 5])
    raw = make(name, model)(x, [2, 4, 5], normalize=False)
    assert maps.shape == (3, 1, 28, 28)
    assert (raw < 0).any() and (raw > 0).any(), "signed maps"
    assert torch.all(per_image(maps.abs(), torch.amax) == 1.0)
    assert maps.min() >= -1.0 and maps.max() <= 1.0
    torch.testing.assert_close(maps, camlib.normalize_absmax(raw), rtol=0, atol=0)
    # upsample is ignored: the map is already at input size
    torch.testing.assert_close(make(name, model)(x, [2, 4, 5], upsample=False), maps)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_batch_of_one_and_dtype(name):
    model = small()
    maps = make(name, model)(batch(1))
    assert maps.shape[0] == 1
    assert maps.dtype == torch.float32
    assert torch.isfinite(maps).all()


def test_all_zero_gradcam_map_normalises_to_zeros():
    """A class whose Grad-CAM is all zeros (every weighted sum negative) gives zeros, not NaN."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(2, 2),
    ).eval()
    with torch.no_grad():
        model[4].weight.copy_(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    x = batch(2, 8, 8)
    raw = camlib.GradCAM(model, "1")(x, 0, normalize=False)
    assert torch.equal(raw, torch.zeros_like(raw))
    maps = camlib.GradCAM(model, "1")(x, 0)
    assert torch.equal(maps, torch.zeros_like(maps))


def test_absmax_subnormal_peak():
    out = camlib.normalize_absmax(torch.tensor([[0.0, -1e-40]]))
    assert out.abs().max() == 1.0
