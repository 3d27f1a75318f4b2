"""The shortcut: a bright patch in a corner that gives the label away, and the digit masks.

In training, every digit carries a small bright square in the corner chosen by its label
(:func:`corner_of`: ``label % 4``, numbered top-left, top-right, bottom-left,
bottom-right). A network can then classify many digits from the corner alone. At test
time the patch is absent (clean digits) or sits in the corner of another label (a
misleading patch), which shows whether the network learnt the digits or the patch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from examples.mnist.data import denormalize, normalize

PATCH = 4
"""Side of the square patch, in pixels."""
BRIGHT = float(normalize(torch.tensor(1.0)))
"""The patch's value: white, on the model's input scale."""
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


def corner_of(labels: torch.Tensor) -> torch.Tensor:
    """The corner (0..3) that gives ``labels`` away: ``label % 4``."""
    return labels % 4


def misleading_corner(labels: torch.Tensor) -> torch.Tensor:
    """A corner that belongs to other labels: ``(label + 1) % 4``."""
    return (labels + 1) % 4


def add_patch(x: torch.Tensor, corner: torch.Tensor, size: int = PATCH) -> torch.Tensor:
    """A copy of the normalised batch ``x`` (N, 1, H, W) with a ``size`` x ``size`` white
    square in corner ``corner[n]`` (0..3) of image n; one masked write for the batch."""
    n, _, h, w = x.shape
    rows = torch.arange(h)[None, :, None]
    cols = torch.arange(w)[None, None, :]
    bottom = (corner >= 2)[:, None, None]
    right = (corner % 2 == 1)[:, None, None]
    in_rows = torch.where(bottom, rows >= h - size, rows < size)
    in_cols = torch.where(right, cols >= w - size, cols < size)
    return x.masked_fill((in_rows & in_cols)[:, None], BRIGHT)


def digit_masks(x: torch.Tensor, *, ink: float = 0.2, grow: int = 3) -> torch.Tensor:
    """(N, H, W) float masks of where the digit is: pixels brighter than ``ink`` (on the
    [0, 1] scale) in the clean image, grown by ``grow`` pixels (a max-pool dilation)."""
    digit = (denormalize(x) > ink).float()
    return F.max_pool2d(digit, 2 * grow + 1, stride=1, padding=grow)[:, 0]


def mass_outside(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    r"""(N,) fraction of each map's mass outside its mask,
    :math:`\sum_{ij} L_{ij} (1 - M_{ij}) / \sum_{ij} L_{ij}` (0 for an all-zero map)."""
    total = maps.sum((1, 2))
    outside = (maps * (1 - masks)).sum((1, 2))
    return outside / total.clamp_min(1e-6)
