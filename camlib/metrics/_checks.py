"""Argument checks shared by the metrics: shapes, boxes, targets."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _check_maps(maps: torch.Tensor, name: str = "maps") -> None:
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"{name} must be an (N, H, W) tensor, got {shape}")


def _check_boxes(boxes: torch.Tensor, n: int | None = None) -> None:
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be an (N, 4) tensor of x0, y0, x1, y1, got {shape}")
    if n is not None and boxes.shape[0] != n:
        raise ValueError(f"got {boxes.shape[0]} boxes for {n} maps")


def _target_tensor(targets: int | Sequence[int] | torch.Tensor, n: int, device) -> torch.Tensor:
    t = torch.as_tensor(targets, dtype=torch.long, device=device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"got {t.numel()} targets for {n} images; give one per image or one int")
    return t
