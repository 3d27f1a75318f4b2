"""The photos: all shipped inside scikit-image's and scikit-learn's wheels (no download).

Only images that ``skimage.data`` bundles are used; some of its other images are fetched
from the network on first use and are not available offline.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .model import SIZE, MissingExtra, crop_resize, to_tensor


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        try:
            import skimage.data
        except ImportError as exc:
            raise MissingExtra(
                "scikit-image: install the 'examples' extra (pip install -e '.[examples]')"
            ) from exc
        img = getattr(skimage.data, name)()
        if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
            img = img[0]
        return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img

    return load


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        try:
            from sklearn.datasets import load_sample_image
        except ImportError as exc:
            raise MissingExtra(
                "scikit-learn: install the 'examples' extra (pip install -e '.[examples]')"
            ) from exc
        return load_sample_image(name)

    return load


PHOTOS: dict[str, tuple[str, Callable[[], np.ndarray]]] = {
    "chelsea": ("a cat (skimage.data.chelsea)", _skimage("chelsea")),
    "coffee": ("a cup of coffee (skimage.data.coffee)", _skimage("coffee")),
    "astronaut": ("the astronaut Eileen Collins (skimage.data.astronaut)", _skimage("astronaut")),
    "rocket": ("a rocket on its launch pad (skimage.data.rocket)", _skimage("rocket")),
    "motorcycle": (
        "a motorcycle (skimage.data.stereo_motorcycle, left view)",
        _skimage("stereo_motorcycle"),
    ),
    "camera": ("the cameraman, greyscale (skimage.data.camera)", _skimage("camera")),
    "china": ("a Chinese temple (sklearn china.jpg)", _sklearn("china.jpg")),
    "flower": ("a flower (sklearn flower.jpg)", _sklearn("flower.jpg")),
}
"""Name -> (what it shows, loader returning an (H, W, 3) uint8 RGB array)."""


def load(name: str) -> torch.Tensor:
    """Photo ``name`` resized (shorter side 224) and centre-cropped: (3, 224, 224) in [0, 255]."""
    if name not in PHOTOS:
        raise KeyError(f"unknown photo {name!r}; available: {', '.join(PHOTOS)}")
    return crop_resize(to_tensor(PHOTOS[name][1]()), SIZE, SIZE)[0]


def side_by_side(left: str, right: str) -> torch.Tensor:
    """A 224 x 224 canvas: the central 224 x 112 strip of ``left`` beside that of ``right``.

    Each strip keeps its photo's aspect ratio (scaled to cover 224 x 112, then centred), so
    the left half shows only ``left`` and the right half only ``right``.
    """
    strips = [
        crop_resize(to_tensor(PHOTOS[name][1]()), SIZE, SIZE // 2)[0] for name in (left, right)
    ]
    return torch.cat(strips, dim=-1)
