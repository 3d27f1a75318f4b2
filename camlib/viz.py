"""Visualisation: the only place camlib touches numpy, OpenCV and matplotlib.

Images may be torch tensors (C, H, W) or numpy arrays (H, W, C) / (H, W); float images
in [0, 1] are shown as they are, other float ranges are min-max scaled for display,
uint8 images are used directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

_COLORMAPS = {
    name[len("COLORMAP_") :].lower(): getattr(cv2, name)
    for name in dir(cv2)
    if name.startswith("COLORMAP_")
}


def _to_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def to_rgb_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """An image as an (H, W, 3) uint8 RGB array. Tensors are (C, H, W), arrays (H, W[, C])."""
    channels_first = isinstance(image, torch.Tensor)
    img = _to_numpy(image)
    if img.ndim == 3 and channels_first:
        img = img.transpose(1, 2, 0)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(
            f"expected an image of shape (C, H, W) or (H, W[, C]) with 1 or 3 channels, got {image.shape}"
        )
    if img.dtype == np.uint8:
        return img
    img = img.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    if lo < 0.0 or hi > 1.0:
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return (img * 255.0 + 0.5).astype(np.uint8)


def colorize(heatmap: torch.Tensor | np.ndarray, colormap: str | int = "jet") -> np.ndarray:
    """An (H, W) map in [0, 1] as an (H, W, 3) uint8 RGB image through an OpenCV colormap."""
    m = _to_numpy(heatmap).astype(np.float32)
    if m.ndim != 2:
        raise ValueError(f"expected a single (H, W) map, got shape {m.shape}")
    if isinstance(colormap, str):
        try:
            colormap = _COLORMAPS[colormap.lower()]
        except KeyError:
            raise ValueError(
                f"unknown colormap {colormap!r}; OpenCV has {', '.join(sorted(_COLORMAPS))}"
            ) from None
    m8 = (np.clip(m, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(m8, colormap), cv2.COLOR_BGR2RGB)


def overlay(
    image: torch.Tensor | np.ndarray,
    heatmap: torch.Tensor | np.ndarray,
    alpha: float = 0.5,
    colormap: str | int = "jet",
) -> np.ndarray:
    """Blend a [0, 1] map over an image: ``(1 - alpha) * image + alpha * colormap(map)``.

    The map is resized bilinearly to the image if their sizes differ. Returns an
    (H, W, 3) uint8 RGB array.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = to_rgb_uint8(image)
    m = _to_numpy(heatmap).astype(np.float32)
    if m.shape != rgb.shape[:2]:
        m = cv2.resize(m, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = colorize(m, colormap)
    return cv2.addWeighted(rgb, 1.0 - alpha, heat, alpha, 0.0)


def signed_to_rgb(gradient: torch.Tensor | np.ndarray) -> np.ndarray:
    """A signed (C, H, W) map (Guided Backprop, Guided Grad-CAM) as (H, W, 3) uint8 RGB.

    Zero is mid-grey, positive values brighter, negative darker:
    ``0.5 + 0.5 * g / max|g|``. One-channel maps become grey.
    """
    g = _to_numpy(gradient).astype(np.float32)
    if g.ndim != 3:
        raise ValueError(f"expected a (C, H, W) map, got shape {g.shape}")
    peak = float(np.abs(g).max())
    g = 0.5 + 0.5 * (g / peak if peak > 0 else g)
    return to_rgb_uint8(torch.from_numpy(np.clip(g, 0.0, 1.0)))


def show_grid(
    images: torch.Tensor | Sequence,
    maps: torch.Tensor | Sequence | None = None,
    labels: Sequence[str] | None = None,
    *,
    ncols: int = 8,
    alpha: float = 0.5,
    colormap: str | int = "jet",
    cell: float = 1.8,
    title: str | None = None,
):
    """A matplotlib figure of images with their maps overlaid and a label under each.

    Args:
        images: (N, C, H, W) tensor or a sequence of images.
        maps: (N, H, W) maps in [0, 1], or ``None`` to show the images alone.
        labels: N titles (e.g. ``"true 7 / pred 1 (0.93)"``).
        ncols: images per row.

    Returns:
        The ``matplotlib.figure.Figure`` (save it with ``fig.savefig(path)``).
    """
    from matplotlib.figure import Figure

    n = len(images)
    if maps is not None and len(maps) != n:
        raise ValueError(f"got {len(maps)} maps for {n} images")
    if labels is not None and len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for {n} images")
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig = Figure(
        figsize=(cell * ncols, cell * nrows + (0.4 if title else 0.0)), layout="constrained"
    )
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i >= n:
            continue
        shown = (
            to_rgb_uint8(images[i])
            if maps is None
            else overlay(images[i], maps[i], alpha, colormap)
        )
        ax.imshow(shown)
        if labels is not None:
            ax.set_title(labels[i], fontsize=8)
    if title:
        fig.suptitle(title)
    return fig
