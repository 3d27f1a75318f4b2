"""The report's figures: grids of photos with camlib maps drawn by :mod:`camlib.viz`
(``overlay`` for [0, 1] maps, ``signed_to_rgb`` for the signed guided maps), laid out
with matplotlib's object API (no pyplot, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from camlib import viz

DPI = 100


SIGNED_CLIP = 0.995
"""Signed maps are shown scaled by this quantile of |g| (and clipped): a few extreme pixels
would otherwise leave the rest of a Guided Backprop map at mid-grey."""


def cell(photo: np.ndarray, m: torch.Tensor) -> np.ndarray:
    """One panel: a (H, W) map in [0, 1] overlaid on the photo, or a signed (C, H, W) map
    (Guided Backprop, Guided Grad-CAM) drawn on its own with zero as mid-grey, scaled by
    its :data:`SIGNED_CLIP` quantile of |g|."""
    if m.dim() == 3:
        scale = torch.quantile(m.abs().flatten().float(), SIGNED_CLIP).clamp_min(1e-12)
        return viz.signed_to_rgb((m / scale).clamp(-1, 1))
    return viz.overlay(photo, m, alpha=0.5)


def grid(
    rows: Sequence[Sequence[np.ndarray]],
    path: Path,
    *,
    col_titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    size: float = 1.9,
) -> Path:
    """Save a grid of (H, W, 3) uint8 panels; ``row_labels`` go left of each row."""
    nrows, ncols = len(rows), max(len(r) for r in rows)
    fig = Figure(figsize=(size * ncols + 0.4, size * nrows + 0.5), layout="constrained")
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False))
    for i, row in enumerate(rows):
        for j in range(ncols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(row):
                ax.imshow(row[j])
            if i == 0 and col_titles is not None and j < len(col_titles):
                ax.set_title(col_titles[j], fontsize=9)
            if j == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[i], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=DPI)
    return path
