"""camlib.viz: overlays, colour maps, signed maps and the figure grid (Agg backend)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from camlib import viz  # noqa: E402


def jet(m8: np.ndarray, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """OpenCV's colour map of a uint8 (H, W) map, as RGB."""
    return cv2.cvtColor(cv2.applyColorMap(m8, colormap), cv2.COLOR_BGR2RGB)


def to_u8(m: np.ndarray) -> np.ndarray:
    return (np.clip(m, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@pytest.fixture
def heat() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random((12, 10)).astype(np.float32)


@pytest.fixture
def rgb_u8() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------
# overlay
# --------------------------------------------------------------------------------------


def test_overlay_shape_and_dtype(rgb_u8, heat):
    out = viz.overlay(rgb_u8, heat)
    assert out.shape == (12, 10, 3) and out.dtype == np.uint8


def test_overlay_alpha_zero_is_the_image(rgb_u8, heat):
    assert np.array_equal(viz.overlay(rgb_u8, heat, alpha=0.0), rgb_u8)


def test_overlay_alpha_one_is_the_colormap(rgb_u8, heat):
    out = viz.overlay(rgb_u8, heat, alpha=1.0)
    assert np.array_equal(out, jet(to_u8(heat)))
    assert np.array_equal(viz.colorize(heat), jet(to_u8(heat)))
    assert not np.array_equal(out, jet(to_u8(heat))[..., ::-1]), "RGB, not BGR"


def test_overlay_half_blend(rgb_u8, heat):
    out = viz.overlay(rgb_u8, heat, alpha=0.5).astype(np.int32)
    expected = 0.5 * rgb_u8.astype(np.float64) + 0.5 * jet(to_u8(heat)).astype(np.float64)
    assert np.abs(out - expected).max() <= 1


def test_overlay_other_colormap(rgb_u8, heat):
    out = viz.overlay(rgb_u8, heat, alpha=1.0, colormap="viridis")
    assert np.array_equal(out, jet(to_u8(heat), cv2.COLORMAP_VIRIDIS))
    assert np.array_equal(
        viz.overlay(rgb_u8, heat, alpha=1.0, colormap=cv2.COLORMAP_HOT),
        jet(to_u8(heat), cv2.COLORMAP_HOT),
    )


def test_overlay_tensor_three_channels(heat):
    torch.manual_seed(0)
    image = torch.rand(3, 12, 10)
    expected = (image.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    assert np.array_equal(viz.overlay(image, torch.from_numpy(heat), alpha=0.0), expected)
    out = viz.overlay(image, torch.from_numpy(heat), alpha=1.0)
    assert out.shape == (12, 10, 3) and out.dtype == np.uint8
    assert np.array_equal(out, jet(to_u8(heat)))


def test_overlay_tensor_one_channel_is_grey(heat):
    torch.manual_seed(0)
    image = torch.rand(1, 12, 10)
    out = viz.overlay(image, heat, alpha=0.0)
    grey = (image[0].numpy() * 255.0 + 0.5).astype(np.uint8)
    assert out.shape == (12, 10, 3)
    for c in range(3):
        assert np.array_equal(out[..., c], grey)


def test_overlay_numpy_hwc_float_and_grey(heat):
    rng = np.random.default_rng(2)
    image = rng.random((12, 10, 3)).astype(np.float32)
    assert np.array_equal(viz.overlay(image, heat, alpha=0.0), to_u8(image))
    grey = rng.random((12, 10)).astype(np.float32)
    out = viz.overlay(grey, heat, alpha=0.0)
    assert out.shape == (12, 10, 3)
    assert np.array_equal(out[..., 1], to_u8(grey))
    assert np.array_equal(viz.overlay(grey[..., None], heat, alpha=0.0), out)


def test_overlay_scales_out_of_range_float_images(heat):
    """A normalised image (values outside [0, 1]) is min-max scaled for display."""
    torch.manual_seed(0)
    image = torch.randn(3, 12, 10) * 2.0
    out = viz.overlay(image, heat, alpha=0.0)
    assert out.min() == 0 and out.max() == 255


def test_overlay_resizes_map_to_image():
    image = np.zeros((32, 48, 3), np.uint8)
    small = np.zeros((4, 6), np.float32)
    small[:, :3] = 1.0  # left half hot
    out = viz.overlay(image, small, alpha=1.0)
    assert out.shape == (32, 48, 3)
    resized = cv2.resize(small, (48, 32), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(out, jet(to_u8(resized)))
    hot, cold = jet(np.full((1, 1), 255, np.uint8))[0, 0], jet(np.zeros((1, 1), np.uint8))[0, 0]
    assert np.array_equal(out[0, 0], hot) and np.array_equal(out[-1, -1], cold)
    # a constant map stays constant after resizing
    const = viz.overlay(image, np.full((3, 3), 0.4, np.float32), alpha=1.0)
    assert np.array_equal(const, jet(np.full((32, 48), to_u8(np.float32(0.4)), np.uint8)))


def test_overlay_with_camlib_map_tensor():
    torch.manual_seed(0)
    image = torch.rand(3, 16, 16)
    cam = torch.rand(1, 4, 4)[0]
    out = viz.overlay(image, cam)
    assert out.shape == (16, 16, 3)


def test_overlay_rejects_bad_alpha_and_images(rgb_u8, heat):
    for alpha in (-0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            viz.overlay(rgb_u8, heat, alpha=alpha)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        viz.overlay(np.zeros((12, 10, 4), np.uint8), heat)


# --------------------------------------------------------------------------------------
# colorize, signed_to_rgb
# --------------------------------------------------------------------------------------


def test_colorize_unknown_colormap_lists_names(heat):
    with pytest.raises(ValueError, match="unknown colormap 'nosuchmap'") as info:
        viz.colorize(heat, "nosuchmap")
    for name in ("jet", "viridis", "inferno", "hot"):
        assert name in str(info.value)


def test_colorize_is_case_insensitive_and_clips(heat):
    assert np.array_equal(viz.colorize(heat, "JET"), viz.colorize(heat, "jet"))
    over = np.array([[-1.0, 2.0]], np.float32)
    assert np.array_equal(viz.colorize(over), jet(np.array([[0, 255]], np.uint8)))


def test_colorize_rejects_non_2d():
    with pytest.raises(ValueError, match="single"):
        viz.colorize(np.zeros((1, 4, 4), np.float32))


def test_signed_to_rgb_zero_is_mid_grey_and_extremes():
    g = torch.zeros(3, 4, 4)
    g[0, 0, 0] = 2.0
    g[1, 0, 1] = -2.0
    g[2, 1, 1] = 1.0
    out = viz.signed_to_rgb(g)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert len(set(out[3, 3].tolist())) == 1 and out[3, 3, 0] in (127, 128)  # zero: mid-grey
    assert out[0, 0, 0] == 255  # the max
    assert out[0, 1, 1] == 0  # the min (-max)
    assert out[1, 1, 2] in (191, 192)  # half of the max
    zero = out[2, 2, 0]
    assert zero in (127, 128)
    assert (out[..., 0] == zero).sum() == 15


def test_signed_to_rgb_one_channel_is_grey_and_all_zero():
    torch.manual_seed(0)
    g = torch.randn(1, 5, 5)
    out = viz.signed_to_rgb(g.numpy())
    assert out.shape == (5, 5, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    peak = g.abs().max()
    i = int(g.flatten().abs().argmax())
    assert out.reshape(-1, 3)[i, 0] == (255 if g.flatten()[i] == peak else 0)
    zeros = viz.signed_to_rgb(np.zeros((3, 2, 2), np.float32))
    assert set(np.unique(zeros).tolist()) <= {127, 128}
    assert np.unique(zeros).size == 1


def test_signed_to_rgb_rejects_non_chw():
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        viz.signed_to_rgb(np.zeros((4, 4), np.float32))


# --------------------------------------------------------------------------------------
# show_grid
# --------------------------------------------------------------------------------------


def shown_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.images]


def test_show_grid_axes_and_titles():
    torch.manual_seed(0)
    images = torch.rand(5, 3, 8, 8)
    maps = torch.rand(5, 8, 8)
    labels = [f"true {i} / pred {i + 1}" for i in range(5)]
    fig = viz.show_grid(images, maps, labels, ncols=3, title="mistakes")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 6  # 2 rows x 3 columns
    axes = shown_axes(fig)
    assert len(axes) == 5
    assert [ax.get_title() for ax in axes] == labels
    assert fig.axes[5].get_title() == "" and not fig.axes[5].images
    assert fig.get_suptitle() == "mistakes"
    shown = np.asarray(axes[2].images[0].get_array())
    assert np.array_equal(shown, viz.overlay(images[2], maps[2]))
    fig.savefig(io.BytesIO(), format="png")  # renders with Agg


def test_show_grid_images_only_and_single_row():
    torch.manual_seed(0)
    images = torch.rand(3, 1, 6, 6)
    fig = viz.show_grid(images)
    assert len(fig.axes) == 3 and len(shown_axes(fig)) == 3
    assert all(ax.get_title() == "" for ax in fig.axes)
    shown = np.asarray(fig.axes[1].images[0].get_array())
    assert np.array_equal(shown, viz.to_rgb_uint8(images[1]))
    fig = viz.show_grid([np.zeros((4, 4, 3), np.uint8)] * 10, ncols=4)
    assert len(fig.axes) == 12 and len(shown_axes(fig)) == 10


def test_show_grid_length_mismatch_raises():
    images = torch.rand(3, 3, 4, 4)
    with pytest.raises(ValueError, match="got 2 maps for 3 images"):
        viz.show_grid(images, torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match="got 4 labels for 3 images"):
        viz.show_grid(images, torch.rand(3, 4, 4), ["a", "b", "c", "d"])
