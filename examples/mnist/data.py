"""MNIST as in-memory tensors: loading, batching, augmentation and translated canvases.

The whole data set is read once through ``torchvision.datasets.MNIST`` (``dataset.data``
and ``dataset.targets``), scaled to [0, 1] and normalised with the usual MNIST mean and
standard deviation. Batches are cut by tensor indexing and augmented on whole batches
with ``F.affine_grid`` / ``F.grid_sample``: no per-sample transforms, no DataLoader.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import torch
import torch.nn.functional as F

MEAN = 0.1307
STD = 0.3081
BACKGROUND = (0.0 - MEAN) / STD
"""The normalised value of a black (empty) pixel, about -0.424."""

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DatasetMissing(Exception):
    """MNIST is not under the data root and could not be downloaded."""


@dataclass
class Mnist:
    """Normalised images (N, 1, 28, 28) float32 and labels (N,) int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    n_train_available: int
    """Training images in the files (the study may use fewer)."""


def normalize(images01: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> the model's input scale."""
    return (images01 - MEAN) / STD


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Model inputs -> [0, 1] images for display."""
    return (x * STD + MEAN).clamp(0.0, 1.0)


def missing_message(root: Path, reason: str) -> str:
    raw = root / "MNIST" / "raw"
    files = "\n".join(f"    {raw / name}" for name in RAW_FILES)
    return (
        f"MNIST was not found under {root} ({reason}).\n"
        f"Put the four uncompressed MNIST files here (gunzip the .gz archives):\n{files}\n"
        f"(from e.g. https://ossci-datasets.s3.amazonaws.com/mnist/), or run once with network "
        f"access and without --no-download so torchvision downloads them; then pass "
        f"--data-root {root}"
    )


def load_mnist(
    root: str | Path,
    *,
    download: bool = True,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    timeout_s: float = 30.0,
) -> Mnist:
    """Read MNIST under ``root`` (``root/MNIST/raw/...``), downloading it if allowed.

    Args:
        root: the torchvision data root.
        download: let torchvision fetch missing files (network sockets time out after
            ``timeout_s``). ``False`` fails at once when the files are absent.
        n_train: use a random subset of this many training images (all if ``None``).
        n_test: use the first ``n_test`` test images (all 10,000 if ``None``).
        seed: for the training subset.

    Raises:
        DatasetMissing: with a message that says where to put the files.
    """
    from torchvision.datasets import MNIST

    root = Path(root)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        train = MNIST(str(root), train=True, download=download)
        test = MNIST(str(root), train=False, download=download)
    except (RuntimeError, URLError, OSError, EOFError, ValueError) as exc:
        if download:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = f"the download failed: {lines[-1] if lines else type(exc).__name__}"
        else:
            reason = "downloading is off: --no-download"
        raise DatasetMissing(missing_message(root, reason)) from exc
    finally:
        socket.setdefaulttimeout(old_timeout)

    train_x = normalize(train.data.float().div_(255.0)).unsqueeze(1)
    test_x = normalize(test.data.float().div_(255.0)).unsqueeze(1)
    train_y, test_y = train.targets.long(), test.targets.long()
    available = train_x.shape[0]
    if n_train is not None and n_train < available:
        keep = torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:n_train]
        train_x, train_y = train_x[keep], train_y[keep]
    if n_test is not None:
        test_x, test_y = test_x[:n_test], test_y[:n_test]
    return Mnist(train_x.contiguous(), train_y, test_x.contiguous(), test_y, available)


def batches(
    n: int, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
) -> Iterator[torch.Tensor]:
    """Index tensors for one pass over ``n`` samples (the last batch may be smaller)."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    yield from order.split(batch_size)


def random_affine(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    max_rotation_deg: float = 10.0,
    max_scale: float = 0.1,
    max_shift_px: float = 2.0,
) -> torch.Tensor:
    """Light augmentation of a normalised batch: rotation, scaling and translation.

    One random affine map per image, applied with ``F.affine_grid`` / ``F.grid_sample``
    (bilinear). Pixels shifted in from outside are black (:data:`BACKGROUND`).
    """
    n, _, h, w = x.shape
    u = torch.rand(n, 4, generator=generator) * 2 - 1  # uniform in [-1, 1]
    angle = u[:, 0] * math.radians(max_rotation_deg)
    scale = 1.0 + u[:, 1] * max_scale
    tx, ty = u[:, 2] * (2 * max_shift_px / w), u[:, 3] * (2 * max_shift_px / h)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], dim=1
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    moved = F.grid_sample(x - BACKGROUND, grid, mode="bilinear", align_corners=False)
    return moved + BACKGROUND


def shift(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Translate each image by whole pixels (dx right, dy down), filling with black."""
    n, c, h, w = x.shape
    pad = int(max(dx.abs().max(), dy.abs().max()))
    big = F.pad(x, (pad, pad, pad, pad), value=BACKGROUND)
    rows = (pad - dy)[:, None] + torch.arange(h)  # (N, H)
    cols = (pad - dx)[:, None] + torch.arange(w)  # (N, W)
    idx = torch.arange(n)[:, None, None]
    return big[idx, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def paste_on_canvas(
    digits: torch.Tensor, size: int, generator: torch.Generator, ink_threshold: float = 0.5 / 255
) -> tuple[torch.Tensor, torch.Tensor]:
    """Translated MNIST: paste each 28x28 digit at a random place on a blank canvas.

    Args:
        digits: (N, 1, 28, 28) normalised digits.
        size: the canvas side (e.g. 56).
        generator: for the positions.
        ink_threshold: a pixel belongs to the digit when its [0, 1] intensity is above this
            (default: any non-zero pixel of the 8-bit original).

    Returns:
        ``(canvases, boxes)``: (N, 1, size, size) normalised images and (N, 4) tight
        ``x0, y0, x1, y1`` boxes (exclusive) around each digit's ink, on the canvas.
    """
    from camlib.metrics import boxes_from_masks

    n, _, h, w = digits.shape
    oy = torch.randint(0, size - h + 1, (n,), generator=generator)
    ox = torch.randint(0, size - w + 1, (n,), generator=generator)
    canvas = torch.full((n, 1, size, size), BACKGROUND, dtype=digits.dtype)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]  # (N, h, 1)
    cols = (ox[:, None] + torch.arange(w))[:, None, :]  # (N, 1, w)
    canvas[torch.arange(n)[:, None, None], 0, rows, cols] = digits[:, 0]
    boxes = boxes_from_masks(denormalize(digits[:, 0]) > ink_threshold)
    boxes = boxes + torch.stack([ox, oy, ox, oy], dim=1)
    return canvas, boxes


def paste_pairs(
    first: torch.Tensor,
    second: torch.Tensor,
    size: int,
    generator: torch.Generator,
    *,
    min_gap: int = 8,
    tries: int = 64,
    ink_threshold: float = 0.5 / 255,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two digits per canvas, at random places whose ink boxes do not overlap.

    For pair ``n``, ``tries`` random offsets of both 28x28 digits are drawn at once; the
    first draw whose two tight ink boxes are at least ``min_gap`` pixels apart (left/right
    or above/below) is kept. The frames may overlap; the digits are combined by the pixel
    maximum, so background never covers ink. Pairs with no valid draw are dropped.

    Args:
        first, second: (N, 1, 28, 28) normalised digits.
        size: the canvas side (e.g. 56).
        generator: for the positions.
        min_gap: the smallest gap between the two ink boxes, in pixels (with 8 and a
            tolerance of up to 4 px the grown boxes still do not overlap).

    Returns:
        ``(canvases, box_first, box_second, kept)``: (M, 1, size, size) canvases, two (M, 4)
        ``x0, y0, x1, y1`` boxes (exclusive) and the (M,) indices of the kept pairs.
    """
    from camlib.metrics import boxes_from_masks

    n, _, h, w = first.shape
    span = size - h + 1
    box_a = boxes_from_masks(denormalize(first[:, 0]) > ink_threshold)  # (N, 4), in the frame
    box_b = boxes_from_masks(denormalize(second[:, 0]) > ink_threshold)
    off = torch.randint(0, span, (n, tries, 4), generator=generator)  # oxa, oya, oxb, oyb
    a = box_a[:, None, :] + off[..., [0, 1, 0, 1]]  # (N, tries, 4) on the canvas
    b = box_b[:, None, :] + off[..., [2, 3, 2, 3]]
    apart = (
        (a[..., 2] + min_gap <= b[..., 0])
        | (b[..., 2] + min_gap <= a[..., 0])
        | (a[..., 3] + min_gap <= b[..., 1])
        | (b[..., 3] + min_gap <= a[..., 1])
    )
    kept = apart.any(dim=1).nonzero()[:, 0]
    pick = apart.int().argmax(dim=1)[kept]  # the first valid draw
    off = off[kept, pick]
    box_a, box_b = a[kept, pick], b[kept, pick]
    m = len(kept)
    canvas = torch.full((m, 1, size, size), BACKGROUND, dtype=first.dtype)
    idx = torch.arange(m)[:, None, None]
    for digits, ox, oy in (
        (first[kept], off[:, 0], off[:, 1]),
        (second[kept], off[:, 2], off[:, 3]),
    ):
        rows = (oy[:, None] + torch.arange(h))[:, :, None]
        cols = (ox[:, None] + torch.arange(w))[:, None, :]
        canvas[idx, 0, rows, cols] = torch.maximum(canvas[idx, 0, rows, cols], digits[:, 0])
    return canvas, box_a, box_b, kept
