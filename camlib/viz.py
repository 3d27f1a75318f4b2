"""Visualisation: the only place camlib touches numpy, OpenCV and matplotlib.

**Images** may be torch tensors (C, H, W) (also channels-last (H, W, C) and a batch of one
(1, C, H, W)), numpy arrays (H, W, C) / (H, W) / (C, H, W), or PIL images, with 1 or 3
channels. uint8 images are used as they are; float images in [0, 1] likewise, other float
ranges (a normalised network input) are min-max scaled for display.

**Maps** are one heatmap (H, W) or (1, H, W), as ``cam(x)[i]`` or ``cam(x[i:i+1])`` give
them; a batch of several is refused with a message saying to index it (or to use
:func:`show_grid`). Signed (C, H, W) maps (Guided Backprop, Guided Grad-CAM) are drawn by
:func:`signed_to_rgb`.

**Colormaps** (``colormap=``) are an OpenCV name (``"jet"``, ``"viridis"``, ``"turbo"``,
...; case-insensitive) or constant (``cv2.COLORMAP_HOT``), any matplotlib colormap name
(``"RdBu_r"``, ``"gray"``, ...), or a ``matplotlib.colors.Colormap``. OpenCV names win
where both libraries have one (``"jet"``, ``"viridis"``).

**Figures** (:func:`show_grid`, :func:`plot_signal`, :func:`volume_slices`,
:func:`mistakes`) are created through pyplot, so ``plt.show()`` (or ``fig.show()``) displays
them from a script and Jupyter shows them inline; save them with ``fig.savefig(path)``, and
call ``plt.close(fig)`` when making many in a loop.

**Errors**: everything this module refuses raises :class:`~camlib.errors.VizError`, a
:class:`camlib.CamlibError` and a ``ValueError`` (never a raw ``cv2.error``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from .errors import VizError, warn

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure
    from torch import nn


_COLORMAPS = {
    name[len("COLORMAP_") :].lower(): getattr(cv2, name)
    for name in dir(cv2)
    if name.startswith("COLORMAP_")
}

_RAW_MAX = 0.5
"""With ``normalize=None``, a map whose largest value is below this is taken as raw."""
_ASPECT_TOLERANCE = 0.05
"""Relative aspect-ratio difference above which an overlay warns (and > 1 map cell)."""


# --------------------------------------------------------------------------------------
# arrays in, checked
# --------------------------------------------------------------------------------------


def _to_numpy(x: object, what: str = "image") -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        x = x.float() if x.is_floating_point() or x.dtype == torch.bool else x
        return x.cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - anything numpy cannot read
        raise VizError(f"cannot read the {what} ({type(x).__name__}) as an array: {exc}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise VizError(
            f"the {what} must be a torch tensor, a numpy array or a PIL image of numbers, "
            f"got {type(x).__name__} ({arr.dtype})"
        )
    return arr


def _check_finite(arr: np.ndarray, what: str) -> None:
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(arr.size - np.isfinite(arr).sum())
        if bad:
            raise VizError(f"the {what} has {bad} non-finite values (NaN or Inf) of {arr.size}")


def _image_hwc(image: object) -> np.ndarray:
    """An image as (H, W) or (H, W, C) with C in (1, 3), from the forms users have."""
    shape = tuple(getattr(image, "shape", ()) or ())
    is_tensor = isinstance(image, torch.Tensor)
    img = _to_numpy(image)
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if img.ndim == 4:
        raise VizError(
            f"expected one image, got a batch of {img.shape[0]} with shape {shape or img.shape}; "
            f"pass images[i] (or draw the batch with show_grid)"
        )
    if img.ndim == 3:
        first, last = img.shape[0] in (1, 3), img.shape[2] in (1, 3)
        if first and (is_tensor or not last):  # (C, H, W): tensors, or arrays that must be
            img = img.transpose(1, 2, 0)
        elif not last:
            raise VizError(
                f"expected an image of shape (C, H, W) or (H, W[, C]) with 1 or 3 channels, got "
                f"{shape or img.shape}"
                + ("; convert RGBA images with .convert('RGB')" if img.shape[2] == 4 else "")
            )
    elif img.ndim != 2:
        raise VizError(
            f"expected an image of shape (C, H, W) or (H, W[, C]) with 1 or 3 channels, got "
            f"{shape or img.shape}"
        )
    if img.size == 0:
        raise VizError(f"the image is empty (shape {shape or img.shape})")
    _check_finite(img, "image")
    return img


def to_rgb_uint8(image: torch.Tensor | np.ndarray | Any) -> np.ndarray:
    """An image as an (H, W, 3) uint8 RGB array (see the module notes for the accepted forms).

    uint8 images are returned as they are; float images in [0, 1] are scaled by 255, other
    float ranges are min-max scaled first.
    """
    img = _image_hwc(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    img = img.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    if lo < 0.0 or hi > 1.0:
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return (img * 255.0 + 0.5).astype(np.uint8)


def _one_map(heatmap: object, rank: int = 2, what: str = "map") -> np.ndarray:
    """One map of ``rank`` dimensions, accepting leading dimensions of size 1."""
    shape = tuple(getattr(heatmap, "shape", ()) or ())
    m = _to_numpy(heatmap, what).astype(np.float32)
    while m.ndim > rank and m.shape[0] == 1:
        m = m[0]
    if m.ndim != rank:
        dims = {1: "(L,)", 2: "(H, W)", 3: "(D, H, W)"}[rank]
        got, n = shape or m.shape, m.shape[0] if m.ndim else 0
        if m.ndim == rank + 1:
            more = " (or draw them all with show_grid(images, maps))" if rank == 2 else ""
            if rank == 2 and n == 3:
                more += "; a signed (C, H, W) map (Guided Backprop) is drawn by signed_to_rgb"
            raise VizError(
                f"expected a single {dims} {what} (or (1, ...)); got a batch of {n} maps (shape "
                f"{got}): this draws one map, so pass maps[i]{more}"
            )
        raise VizError(f"expected a single {dims} {what} (or (1, ...)); got shape {got}")
    if m.size == 0:
        raise VizError(f"the {what} is empty (shape {shape or m.shape})")
    _check_finite(m, what)
    return m


def _scale_map(m: np.ndarray, normalize: bool | None, where: str) -> np.ndarray:
    """A map in [0, 1] for display.

    ``True``: min-max (a constant map becomes zeros, as in :func:`camlib.normalize_minmax`).
    ``False``: clipped to [0, 1]. ``None``: as it is when it looks normalised; min-max with a
    warning when values lie outside [0, 1] or the largest is below 0.5 (a raw map).
    """
    lo, hi = float(m.min()), float(m.max())
    if normalize is None:
        outside = lo < -1e-4 or hi > 1.0 + 1e-4
        faint = 0.0 < hi < _RAW_MAX and hi > lo
        if outside or faint:
            why = (
                f"its values span [{lo:.3g}, {hi:.3g}], outside [0, 1]"
                if outside
                else f"its largest value is {hi:.3g}, far below 1"
            )
            warn(
                f"{where}: the map looks raw ({why}); it was min-max normalised for display. "
                f"Pass normalize=True to do so silently, or normalize=False to clip it to [0, 1] "
                f"(for maps on a shared scale)."
            )
            normalize = True
    if normalize:
        return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    return np.clip(m, 0.0, 1.0)


# --------------------------------------------------------------------------------------
# colour
# --------------------------------------------------------------------------------------


def _opencv_lut(code: int) -> np.ndarray:
    ramp = np.arange(256, dtype=np.uint8)[:, None]
    return cv2.cvtColor(cv2.applyColorMap(ramp, code), cv2.COLOR_BGR2RGB)[:, 0, :]


def _matplotlib_lut(cmap: Colormap) -> np.ndarray:
    rgba = np.asarray(cmap(np.linspace(0.0, 1.0, 256)), dtype=np.float64)
    return (rgba[:, :3] * 255.0 + 0.5).astype(np.uint8)


@functools.lru_cache(maxsize=64)
def _named_lut(name: str | int) -> np.ndarray:
    if isinstance(name, int):
        return _opencv_lut(name)
    if name.lower() in _COLORMAPS:
        return _opencv_lut(_COLORMAPS[name.lower()])
    import matplotlib

    known = {n.lower(): n for n in matplotlib.colormaps}
    if name in matplotlib.colormaps or name.lower() in known:
        return _matplotlib_lut(matplotlib.colormaps[known.get(name.lower(), name)])
    raise VizError(
        f"unknown colormap {name!r}; OpenCV has {', '.join(sorted(_COLORMAPS))}; any matplotlib "
        f"colormap name (e.g. 'magma', 'RdBu_r', 'gray') or matplotlib.colors.Colormap also works"
    )


def colormap_lut(colormap: str | int | Colormap = "jet") -> np.ndarray:
    """The (256, 3) uint8 RGB table a colormap maps the levels 0..255 to.

    ``colormap`` is an OpenCV name or ``cv2.COLORMAP_*`` constant, a matplotlib colormap
    name, or a ``matplotlib.colors.Colormap`` (see the module notes).
    """
    if isinstance(colormap, (bool, np.bool_)):
        raise VizError(f"colormap must be a name, an OpenCV code or a Colormap, got {colormap!r}")
    if isinstance(colormap, (int, np.integer)):
        code = int(colormap)
        if code not in _COLORMAPS.values():
            raise VizError(
                f"unknown OpenCV colormap code {code}; valid codes are "
                f"{min(_COLORMAPS.values())}..{max(_COLORMAPS.values())} (cv2.COLORMAP_*)"
            )
        return _named_lut(code)
    if isinstance(colormap, str):
        return _named_lut(colormap)
    from matplotlib.colors import Colormap

    if isinstance(colormap, Colormap):
        return _matplotlib_lut(colormap)
    raise VizError(
        f"colormap must be an OpenCV name or cv2.COLORMAP_* code, a matplotlib colormap name, or "
        f"a matplotlib.colors.Colormap; got {type(colormap).__name__}"
    )


def _to_levels(m: np.ndarray) -> np.ndarray:
    return (np.clip(m, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def colorize(
    heatmap: torch.Tensor | np.ndarray, colormap: str | int | Colormap = "jet"
) -> np.ndarray:
    """An (H, W) (or (1, H, W)) map in [0, 1] as an (H, W, 3) uint8 RGB image.

    Values are clipped to [0, 1] and quantised to 256 levels, then looked up in the
    colormap's table (:func:`colormap_lut`).
    """
    lut = colormap_lut(colormap)
    return lut[_to_levels(_one_map(heatmap))]


def _mpl_colormap(colormap: str | int | Colormap):
    from matplotlib.colors import ListedColormap

    return ListedColormap(colormap_lut(colormap) / 255.0)


# --------------------------------------------------------------------------------------
# overlays
# --------------------------------------------------------------------------------------


def _check_aspect(map_hw: tuple[int, ...], image_hw: tuple[int, ...], where: str) -> None:
    (h, w), (H, W) = map_hw, image_hw
    if (h, w) == (H, W):
        return
    expected_w = h * W / H  # the map's width if it had the image's aspect ratio
    off_cells = abs(w - expected_w)
    off_rel = abs(w / h - W / H) / (W / H)
    if off_cells > 1.0 and off_rel > _ASPECT_TOLERANCE:
        warn(
            f"{where}: the map is {h}x{w} (aspect {w / h:.2f}) but the image is {H}x{W} "
            f"(aspect {W / H:.2f}); stretching the map over the image misplaces the evidence. If "
            f"the model saw a resized centre crop, overlay the map onto that crop (the "
            f"preprocessed input) instead of the full photo."
        )


def _resize(m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if m.shape == hw:
        return m
    try:
        return cv2.resize(m, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    except cv2.error as exc:  # pragma: no cover - shapes are checked before
        raise VizError(f"cannot resize a {m.shape} map to {hw}: {exc}") from None


def overlay(
    image: torch.Tensor | np.ndarray | Any,
    heatmap: torch.Tensor | np.ndarray,
    alpha: float = 0.5,
    colormap: str | int | Colormap = "jet",
    *,
    normalize: bool | None = None,
) -> np.ndarray:
    """Blend a map over an image: ``(1 - alpha) * image + alpha * colormap(map)``.

    Args:
        image: one image (see the module notes for the forms accepted).
        heatmap: one (H, W) or (1, H, W) map; a batch of several raises :class:`~camlib.errors.VizError`.
            It is resized bilinearly to the image if their sizes differ, with a warning when
            their aspect ratios differ (a map of a centre crop stretched over the photo).
        alpha: weight of the coloured map, in [0, 1].
        colormap: an OpenCV or matplotlib colormap name, a ``cv2.COLORMAP_*`` code, or a
            ``matplotlib.colors.Colormap``.
        normalize: ``None`` (default) draws a map in [0, 1] as it is and min-max normalises,
            with a warning, a raw one (values outside [0, 1], or a largest value below 0.5);
            ``True`` always min-max normalises (silently); ``False`` clips to [0, 1].

    Returns:
        An (H, W, 3) uint8 RGB array.
    """
    if not 0.0 <= alpha <= 1.0:
        raise VizError(f"alpha must be in [0, 1], got {alpha}")
    rgb = to_rgb_uint8(image)
    m = _one_map(heatmap)
    lut = colormap_lut(colormap)
    _check_aspect(m.shape, rgb.shape[:2], "overlay")
    m = _resize(_scale_map(m, normalize, "overlay"), rgb.shape[:2])
    heat = lut[_to_levels(m)]
    return cv2.addWeighted(rgb, 1.0 - alpha, heat, alpha, 0.0)


def signed_to_rgb(
    gradient: torch.Tensor | np.ndarray,
    contrast: str | None = "percentile",
    *,
    percentile: float = 99.0,
    std_range: float = 5.0,
) -> np.ndarray:
    r"""A signed (C, H, W) map (Guided Backprop, Guided Grad-CAM) as (H, W, 3) uint8 RGB.

    Zero is mid-grey, positive values brighter, negative darker:
    :math:`0.5 + 0.5\,\mathrm{clip}(g / s, -1, 1)` with the scale :math:`s` set by
    ``contrast``:

    * ``"percentile"`` (default): the ``percentile``-th percentile of :math:`|g|` (99: the
      top 1 % saturate). Gradients are heavy-tailed, so a few extreme pixels would otherwise
      leave the image flat grey; this shows the edges, as the Guided Grad-CAM paper's
      figures do.
    * ``"std"``: ``std_range`` standard deviations of :math:`g` (5:
      :math:`0.5 + 0.1\,g/\sigma`, pytorch-grad-cam's ``deprocess_image`` with zero kept at
      mid-grey).
    * ``None``: the largest :math:`|g|` (nothing saturates; faint on real photos).

    If the chosen scale is 0 (a very sparse map) the largest :math:`|g|` is used.
    One-channel maps become grey; (H, W) and (1, C, H, W) are accepted.
    """
    shape = tuple(getattr(gradient, "shape", ()) or ())
    g = _to_numpy(gradient, "signed map").astype(np.float32)
    if g.ndim == 4 and g.shape[0] == 1:
        g = g[0]
    if g.ndim == 2:
        g = g[None]
    if g.ndim != 3 or g.shape[0] not in (1, 3):
        hint = (
            f"; got a batch of {g.shape[0]} maps: pass maps[i]"
            if g.ndim == 4
            else f"; got shape {shape or g.shape}"
        )
        raise VizError(f"expected a signed (C, H, W) map with 1 or 3 channels{hint}")
    _check_finite(g, "signed map")
    magnitude = np.abs(g)
    peak = float(magnitude.max()) if g.size else 0.0
    if contrast is None:
        scale = peak
    elif contrast == "percentile":
        if not 0.0 < percentile <= 100.0:
            raise VizError(f"percentile must be in (0, 100], got {percentile}")
        scale = float(np.percentile(magnitude, percentile))
    elif contrast == "std":
        if not std_range > 0:
            raise VizError(f"std_range must be positive, got {std_range}")
        scale = std_range * float(g.std())
    else:
        raise VizError(f"contrast must be 'percentile', 'std' or None, got {contrast!r}")
    if scale <= 0.0:
        scale = peak
    g = 0.5 + 0.5 * (np.clip(g / scale, -1.0, 1.0) if scale > 0 else g)
    return to_rgb_uint8(g.transpose(1, 2, 0))


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------


def _new_figure(figsize: tuple[float, float]) -> Figure:
    import matplotlib.pyplot as plt

    return plt.figure(figsize=figsize, layout="constrained")


def _are_signed(maps: object, n: int) -> bool:
    """Auto rule of :func:`show_grid`: signed when the maps are (C, H, W) per image with C > 1,
    or (1, H, W) with negative values."""
    for i in range(n):
        m = _to_numpy(maps[i], "map")  # type: ignore[index]
        if m.ndim == 3 and (m.shape[0] > 1 or (m.size and float(m.min()) < 0.0)):
            return True
    return False


def show_grid(
    images: torch.Tensor | Sequence,
    maps: torch.Tensor | Sequence | None = None,
    labels: Sequence[str] | None = None,
    *,
    ncols: int = 8,
    alpha: float = 0.5,
    colormap: str | int | Colormap = "jet",
    cell: float = 1.8,
    title: str | None = None,
    normalize: bool | None = None,
    signed: bool | None = None,
    contrast: str | None = "percentile",
) -> Figure:
    """A figure of images with their maps, each image titled *above* it by its label.

    Args:
        images: (N, C, H, W) tensor or a sequence of images (any form :func:`overlay` takes,
            e.g. already rendered (H, W, 3) uint8 arrays).
        maps: ``None`` to show the images alone; (N, H, W) heatmaps (or (N, 1, H, W)),
            overlaid on the images; or signed (N, C, H, W) maps (Guided Backprop, Guided
            Grad-CAM), drawn alone with :func:`signed_to_rgb`.
        labels: N titles, drawn above the images (e.g. ``"true 7 / pred 1 (0.93)"``).
        ncols: images per row.
        alpha, colormap, normalize: as in :func:`overlay`.
        signed: whether ``maps`` are signed maps; ``None`` decides: (C, H, W) maps with
            C > 1, or (1, H, W) maps with negative values, are signed.
        contrast: the contrast of signed maps (see :func:`signed_to_rgb`).
        cell: size of one panel in inches; ``title`` goes above the whole figure.

    Returns:
        A pyplot-managed ``matplotlib.figure.Figure``: ``plt.show()`` displays it,
        ``fig.savefig(path)`` saves it, ``plt.close(fig)`` releases it. Every shape is
        checked before the figure is opened.
    """
    n = len(images)
    if n == 0:
        raise VizError("show_grid got no images")
    if maps is not None and len(maps) != n:
        raise VizError(f"got {len(maps)} maps for {n} images")
    if labels is not None and len(labels) != n:
        raise VizError(f"got {len(labels)} labels for {n} images")
    if ncols < 1:
        raise VizError(f"ncols must be at least 1, got {ncols}")
    if maps is None:
        panels = [to_rgb_uint8(images[i]) for i in range(n)]
    elif _are_signed(maps, n) if signed is None else signed:
        panels = [signed_to_rgb(maps[i], contrast) for i in range(n)]
    else:
        panels = [
            overlay(images[i], maps[i], alpha, colormap, normalize=normalize) for i in range(n)
        ]
    return _grid(panels, list(labels) if labels is not None else None, ncols, cell, title)


def _grid(
    panels: list[np.ndarray],
    labels: list[str] | None,
    ncols: int,
    cell: float,
    title: str | None,
    fontsize: float = 8,
) -> Figure:
    n = len(panels)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig = _new_figure((cell * ncols, cell * nrows + (0.4 if title else 0.0)))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(panels[i])
        if labels is not None and labels[i]:
            ax.set_title(labels[i], fontsize=fontsize)
    if title:
        fig.suptitle(title)
    return fig


def _signal_channels(signal: object) -> np.ndarray:
    shape = tuple(getattr(signal, "shape", ()) or ())
    s = _to_numpy(signal, "signal").astype(np.float64)
    while s.ndim > 2 and s.shape[0] == 1:
        s = s[0]
    if s.ndim == 1:
        s = s[None]
    if s.ndim != 2 or s.shape[1] < 2:
        raise VizError(
            f"expected a signal of shape (L,) or (C, L) (or (1, C, L)) with L >= 2, got "
            f"{shape or s.shape}"
        )
    _check_finite(s, "signal")
    return s


def _resample(m: np.ndarray, length: int) -> np.ndarray:
    """Linear interpolation of a 1-D map to ``length`` samples (``align_corners=False``)."""
    if m.shape[0] == length:
        return m
    centres = (np.arange(length) + 0.5) * m.shape[0] / length - 0.5
    return np.interp(centres, np.arange(m.shape[0]), m).astype(np.float32)


def plot_signal(
    signal: torch.Tensor | np.ndarray,
    heatmap: torch.Tensor | np.ndarray,
    *,
    x: torch.Tensor | np.ndarray | Sequence[float] | None = None,
    colormap: str | int | Colormap = "jet",
    alpha: float = 0.6,
    normalize: bool | None = None,
    channel_names: Sequence[str] | None = None,
    title: str | None = None,
    figsize: tuple[float, float] = (8.0, 2.5),
) -> Figure:
    """A 1-D map drawn as a colour band behind the signal it explains.

    Args:
        signal: (L,) or (C, L) (one line per channel; (1, C, L) accepted).
        heatmap: one (L,) or (1, L) map (e.g. ``cam(x)[i]`` for (N, C, L) inputs); a map of
            another length is resampled linearly to L.
        x: the L sample positions (e.g. time in seconds); default ``0..L-1``. Each sample's
            band spans halfway to its neighbours.
        colormap, alpha, normalize: as in :func:`overlay`.
        channel_names: C names for the legend.

    Returns:
        A pyplot-managed figure; ``fig.axes[0].collections[0]`` is the band (a QuadMesh whose
        array is the map as drawn, in [0, 1]).
    """
    if not 0.0 <= alpha <= 1.0:
        raise VizError(f"alpha must be in [0, 1], got {alpha}")
    s = _signal_channels(signal)
    length = s.shape[1]
    m = _resample(_one_map(heatmap, rank=1), length)
    m = _scale_map(m, normalize, "plot_signal")
    cmap = _mpl_colormap(colormap)
    if x is None:
        xs = np.arange(length, dtype=np.float64)
    else:
        xs = _to_numpy(x, "x").astype(np.float64).ravel()
        if xs.shape[0] != length:
            raise VizError(f"x has {xs.shape[0]} positions for a signal of {length} samples")
        if not np.all(np.diff(xs) > 0):
            raise VizError("x must be strictly increasing")
    if channel_names is not None and len(channel_names) != s.shape[0]:
        raise VizError(f"got {len(channel_names)} channel names for {s.shape[0]} channels")
    mid = (xs[1:] + xs[:-1]) / 2
    edges = np.concatenate([[2 * xs[0] - mid[0]], mid, [2 * xs[-1] - mid[-1]]])
    lo, hi = float(s.min()), float(s.max())
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    fig = _new_figure(figsize)
    ax = fig.add_subplot()
    band = ax.pcolormesh(
        edges, [lo - pad, hi + pad], m[None, :], cmap=cmap, vmin=0.0, vmax=1.0, alpha=alpha,
        shading="flat", zorder=0,
    )  # fmt: skip
    for c in range(s.shape[0]):
        label = channel_names[c] if channel_names is not None else None
        ax.plot(xs, s[c], lw=1.0, color="black" if s.shape[0] == 1 else None, label=label)
    if channel_names is not None:
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(lo - pad, hi + pad)
    fig.colorbar(band, ax=ax, label="map", pad=0.01)
    if title:
        ax.set_title(title)
    return fig


def _volume(volume: object) -> np.ndarray:
    """(D, H, W) or (D, H, W, C) with C in (1, 3) from (D, H, W) / (C, D, H, W) / (1, C, D, H, W)."""
    shape = tuple(getattr(volume, "shape", ()) or ())
    v = _to_numpy(volume, "volume")
    if v.ndim == 5 and v.shape[0] == 1:
        v = v[0]
    if v.ndim == 4 and v.shape[0] in (1, 3):
        v = np.moveaxis(v, 0, -1)
    elif v.ndim != 3:
        raise VizError(
            f"expected a volume of shape (D, H, W) or (C, D, H, W) with 1 or 3 channels, got "
            f"{shape or v.shape}"
        )
    _check_finite(v, "volume")
    if v.dtype != np.uint8:
        v = v.astype(np.float32)
        lo, hi = float(v.min()), float(v.max())
        if lo < 0.0 or hi > 1.0:  # one scale for the whole volume, so slices compare
            v = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
        v = (v * 255.0 + 0.5).astype(np.uint8)
    return v


def _pick_slices(size: int, n: int, peak: int) -> list[int]:
    """``n`` evenly spaced indices of ``range(size)``, the nearest to ``peak`` replaced by it."""
    if n >= size:
        return list(range(size))
    picks = [int(round(i)) for i in np.linspace(0, size - 1, n)]
    nearest = min(range(n), key=lambda j: abs(picks[j] - peak))
    picks[nearest] = peak
    return sorted(set(picks))


def volume_slices(
    volume: torch.Tensor | np.ndarray,
    heatmap: torch.Tensor | np.ndarray,
    axis: int = 0,
    n: int = 8,
    *,
    slices: Sequence[int] | None = None,
    ncols: int = 4,
    alpha: float = 0.5,
    colormap: str | int | Colormap = "jet",
    normalize: bool | None = None,
    cell: float = 2.0,
    title: str | None = None,
) -> Figure:
    """A 3-D map as a grid of slices overlaid on the volume it explains.

    Args:
        volume: (D, H, W), or (C, D, H, W) with 1 or 3 channels ((1, C, D, H, W) accepted).
            Float volumes outside [0, 1] are min-max scaled with one scale for all slices.
        heatmap: one (D, H, W) or (1, D, H, W) map (e.g. ``cam(x)[i]`` for (N, C, D, H, W)
            inputs); resized trilinearly to the volume if the sizes differ.
        axis: the axis sliced (0, 1 or 2 of (D, H, W); negative counts from the end).
        n: how many slices: evenly spaced along ``axis``, with the one nearest the map's
            maximum replaced by the slice holding it (titled "peak").
        slices: the indices to show instead.
        alpha, colormap, normalize: as in :func:`overlay`; the map is normalised over the
            whole volume, so slices compare.

    Returns:
        A pyplot-managed figure, one panel per slice, titled ``"axis {axis} = {index}"``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise VizError(f"alpha must be in [0, 1], got {alpha}")
    v = _volume(volume)
    m = _one_map(heatmap, rank=3)
    if not -3 <= axis < 3:
        raise VizError(f"axis must be 0, 1 or 2 (of (D, H, W)), got {axis}")
    axis %= 3
    if m.shape != v.shape[:3]:
        with torch.no_grad():
            t = torch.from_numpy(m)[None, None]
            m = torch.nn.functional.interpolate(
                t, size=v.shape[:3], mode="trilinear", align_corners=False
            )[0, 0].numpy()
    m = _scale_map(m, normalize, "volume_slices")
    size = v.shape[axis]
    peak = int(np.unravel_index(int(np.argmax(m)), m.shape)[axis])
    if slices is None:
        if n < 1:
            raise VizError(f"n must be at least 1, got {n}")
        picks = _pick_slices(size, n, peak)
    else:
        picks = [int(i) for i in slices]
        bad = [i for i in picks if not -size <= i < size]
        if bad or not picks:
            raise VizError(f"slices {bad or picks} out of range for axis {axis} of size {size}")
        picks = [i % size for i in picks]
    lut = colormap_lut(colormap)
    panels, labels = [], []
    for i in picks:
        img = np.take(v, i, axis=axis)
        heat = lut[_to_levels(np.take(m, i, axis=axis))]
        panels.append(cv2.addWeighted(to_rgb_uint8(img), 1.0 - alpha, heat, alpha, 0.0))
        labels.append(f"axis {axis} = {i}" + (" (peak)" if i == peak else ""))
    return _grid(panels, labels, ncols, cell, title)


# --------------------------------------------------------------------------------------
# mistakes gallery
# --------------------------------------------------------------------------------------

_CHUNK = 256


def _predict(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """(N, K) logits, or (N, 1) for a one-logit binary head, computed without gradients."""
    from .targets import logits_of

    device = next((p.device for p in model.parameters()), inputs.device)
    out = []
    with torch.no_grad():
        for start in range(0, inputs.shape[0], _CHUNK):
            output = model(inputs[start : start + _CHUNK].to(device))
            logits = logits_of(output)
            if logits is None:
                raise VizError(
                    f"mistakes needs class logits, but {type(model).__name__} returned "
                    f"{type(output).__name__}; return a tensor, a dict with 'logits', or a tuple "
                    f"whose first element is the logits"
                )
            out.append(logits.detach().float())
    logits = torch.cat(out)
    if logits.dim() == 1:
        logits = logits[:, None]
    if logits.dim() != 2 or logits.shape[0] != inputs.shape[0]:
        raise VizError(
            f"mistakes needs (N, K) logits or a binary (N,) / (N, 1) one; got shape "
            f"{tuple(logits.shape)} for {inputs.shape[0]} inputs"
        )
    return logits


def confidences(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(predicted classes, their probabilities)`` from (N, K) logits (softmax), or from a
    binary (N,) / (N, 1) logit z (sigmoid: class 1 when z > 0, with probability
    sigmoid(z); class 0 otherwise, with probability 1 - sigmoid(z))."""
    if logits.dim() == 1:
        logits = logits[:, None]
    if logits.shape[1] == 1:
        z = logits[:, 0].float()
        pred = (z > 0).long()
        return pred, torch.sigmoid(torch.where(pred == 1, z, -z))
    probs = torch.softmax(logits.float(), dim=1)
    conf, pred = probs.max(dim=1)
    return pred, conf


def _class_probability(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        z = logits[:, 0].float()
        return torch.sigmoid(torch.where(classes == 1, z, -z))
    return torch.softmax(logits.float(), dim=1).gather(1, classes[:, None])[:, 0]


def _labels(labels: object, n: int, num_classes: int, binary: bool) -> torch.Tensor:
    try:
        t = torch.as_tensor(
            np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        )
    except Exception:  # noqa: BLE001
        raise VizError(f"labels must be N integer classes, got {type(labels).__name__}") from None
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise VizError(f"labels must be integer classes, got dtype {t.dtype}")
    t = t.long().flatten()
    if t.shape[0] != n:
        raise VizError(f"got {t.shape[0]} labels for {n} inputs")
    if n and (t.min() < 0 or t.max() >= num_classes):
        bad = t[(t < 0) | (t >= num_classes)][0].item()
        kind = "a one-logit binary head" if binary else f"{num_classes} classes"
        raise VizError(f"label {bad} is out of range for {kind} (0..{num_classes - 1})")
    return t


def mistakes(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor | Sequence[int] | np.ndarray,
    method: str = "gradcam",
    k: int = 8,
    target_layer: Any = "auto",
    *,
    class_names: Sequence[str] | Callable[[int], str] | None = None,
    images: torch.Tensor | Sequence | None = None,
    return_indices: bool = False,
    per_row: int = 2,
    alpha: float = 0.5,
    colormap: str | int | Colormap = "jet",
    contrast: str | None = "percentile",
    cell: float = 1.8,
    title: str | None = None,
    **options: Any,
) -> Figure | tuple[Figure, torch.Tensor]:
    """The ``k`` most confident mistakes, each with the maps of the predicted and the true class.

    The model predicts every input (without gradients, in chunks); a mistake is an input
    whose predicted class (the argmax; for a one-logit binary head, 1 when the logit is
    positive) differs from its label, and its confidence is the probability of the predicted
    class (softmax, or sigmoid for a binary head). The ``k`` mistakes with the highest
    confidence are explained with ``method`` for both classes, and drawn as rows of
    ``[input | predicted-class map | true-class map]``, ``per_row`` mistakes side by side.
    Signed methods (Guided Backprop, Guided Grad-CAM) are drawn with :func:`signed_to_rgb`,
    the others overlaid on the input.

    Args:
        model: the classifier (call ``model.eval()`` first).
        inputs: (N, C, ...) batch as the model takes it.
        labels: N true classes.
        method: a registered method name (see :func:`camlib.get_method`).
        k: how many mistakes to draw at most.
        target_layer: the layer for methods that use one (ignored by those that do not
            unless named, which they refuse as :func:`camlib.explain` does).
        class_names: names for the titles (a sequence indexed by class, or a function).
        images: what to draw for each input instead of the input itself (e.g. the photos
            before normalisation); N images in any form :func:`overlay` takes.
        return_indices: also return the indices of the drawn mistakes, most confident first.
        alpha, colormap, contrast, cell: drawing options (see :func:`overlay`,
            :func:`signed_to_rgb`).
        **options: passed to the method's constructor (e.g. ``fc_layer=`` for CAM).

    Returns:
        A pyplot-managed figure (and the (k',) indices into ``inputs`` with
        ``return_indices=True``). When there is no mistake, the figure says so and the
        indices are empty.
    """
    from .base import get_method

    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 2:
        raise VizError(f"inputs must be a batch tensor (N, C, ...), got {type(inputs).__name__}")
    if k < 1:
        raise VizError(f"k must be at least 1, got {k}")
    if per_row < 1:
        raise VizError(f"per_row must be at least 1, got {per_row}")
    n = inputs.shape[0]
    if images is not None and len(images) != n:
        raise VizError(f"got {len(images)} images for {n} inputs")
    cls = get_method(method)
    logits = _predict(model, inputs)
    num_classes = max(2, logits.shape[1])
    truth = _labels(labels, n, num_classes, logits.shape[1] == 1).to(logits.device)
    pred, conf = confidences(logits)
    wrong = torch.nonzero(pred != truth).flatten()
    order = torch.argsort(conf[wrong], descending=True, stable=True)
    chosen = wrong[order][:k].cpu()

    def name(c: int) -> str:
        if class_names is None:
            return str(c)
        return str(class_names(c) if callable(class_names) else class_names[c])

    if chosen.numel() == 0:
        fig = _new_figure((4.0, 1.0))
        fig.text(0.5, 0.5, f"no mistakes among {n} inputs", ha="center", va="center")
        return (fig, chosen) if return_indices else fig

    x = inputs[chosen]
    p, t = pred[chosen.to(pred.device)], truth[chosen.to(truth.device)]
    if cls.uses_layer:
        explainer = cls(model, target_layer, **options)
    elif target_layer is not None and target_layer != "auto":
        explainer = cls(model, target_layer, **options)  # the method refuses it, clearly
    else:
        explainer = cls(model, **options)
    with explainer as ex:
        maps = ex(torch.cat([x, x]), targets=torch.cat([p, t]).cpu()).detach().cpu()
    m_pred, m_true = maps[: len(chosen)], maps[len(chosen) :]
    p_true = _class_probability(logits[chosen.to(logits.device)], t)

    panels: list[np.ndarray] = []
    titles: list[str] = []
    signed = getattr(cls, "signed", False)
    for j, i in enumerate(chosen.tolist()):
        shown = images[i] if images is not None else inputs[i]
        draw: Callable[[torch.Tensor], np.ndarray] = (
            (lambda m: signed_to_rgb(m, contrast))
            if signed
            else (lambda m, shown=shown: overlay(shown, m, alpha, colormap, normalize=False))
        )
        panels += [to_rgb_uint8(shown), draw(m_pred[j]), draw(m_true[j])]
        titles += [
            f"#{i} true {name(int(t[j]))}",
            f"pred {name(int(p[j]))} ({float(conf[i]):.2f})",
            f"true {name(int(t[j]))} ({float(p_true[j]):.2f})",
        ]
    heading = title or (
        f"{cls.name or cls.__name__}: the {len(chosen)} most confident of {len(wrong)} "
        f"mistakes in {n} inputs"
    )
    fig = _grid(panels, titles, 3 * per_row, cell, heading, fontsize=7)
    return (fig, chosen) if return_indices else fig
