"""Turning ``targets=`` into one differentiable score per image.

``targets`` may be:

* ``None`` - each image's top-scoring class;
* an ``int`` - that class for every image;
* a sequence or 1-D integer tensor of N classes - one per image;
* a callable ``output -> (N,)`` tensor of scores - anything else (a segmentation
  mask score, a difference of logits, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .errors import TargetError

Targets = int | Sequence[int] | torch.Tensor | Callable[[object], torch.Tensor] | None


def check_targets(targets: Targets, batch: int) -> None:
    """Checks that need no forward pass (types, lengths), so bad input fails early."""
    if targets is None or callable(targets):
        return
    if isinstance(targets, bool):
        raise TargetError("targets must be a class index, not a bool")
    if isinstance(targets, int):
        if targets < 0:
            raise TargetError(f"target class {targets} is negative; classes are 0..K-1")
        return
    if isinstance(targets, torch.Tensor):
        if targets.dtype.is_floating_point or targets.dtype in (torch.bool, torch.complex64):
            raise TargetError(
                f"target tensor must hold integer class indices, got dtype {targets.dtype}"
            )
        if targets.dim() == 0:
            return check_targets(int(targets), batch)
        if targets.dim() != 1:
            raise TargetError(
                f"target tensor must be 1-D with one class per image, got shape {tuple(targets.shape)}"
            )
        values = targets.tolist()
    elif isinstance(targets, Sequence) and not isinstance(targets, str):
        values = list(targets)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int):
                raise TargetError(
                    f"targets must be integer class indices, got {v!r} ({type(v).__name__})"
                )
    else:
        raise TargetError(
            "targets must be None, an int, a sequence or 1-D tensor of ints, or a callable "
            f"output -> (N,) scores; got {type(targets).__name__}"
        )
    if len(values) != batch:
        raise TargetError(
            f"got {len(values)} targets for a batch of {batch} images; give one per image"
        )
    negative = [v for v in values if v < 0]
    if negative:
        raise TargetError(f"target class {negative[0]} is negative; classes are 0..K-1")


def select_scores(
    output: object, targets: Targets, batch: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return ``(scores, classes)``: the (N,) scores to explain and the (N,) classes (or
    ``None`` for a callable target)."""
    if callable(targets):
        scores = targets(output)
        if not isinstance(scores, torch.Tensor) or scores.shape != (batch,):
            shape = (
                tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            )
            raise TargetError(
                f"the custom target function returned {shape}; it must return one score per "
                f"image, a tensor of shape ({batch},)"
            )
        return scores, None
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != batch:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise TargetError(
            f"class targets need a model output of shape (N, num_classes) = ({batch}, K); the model "
            f"returned {shape}. Pass targets=callable(output) -> (N,) scores instead."
        )
    num_classes = output.shape[1]
    if targets is None:
        classes = output.argmax(dim=1)
    else:
        if isinstance(targets, torch.Tensor):
            values = targets.reshape(-1).tolist()
        else:
            values = list(targets) if isinstance(targets, Sequence) else [targets]
        values = values * batch if len(values) == 1 else values
        too_big = [v for v in values if v >= num_classes]
        if too_big:
            raise TargetError(
                f"target class {too_big[0]} is out of range for a model with {num_classes} "
                f"outputs (valid classes: 0..{num_classes - 1})"
            )
        classes = torch.tensor(values, dtype=torch.long, device=output.device)
    return output.gather(1, classes[:, None]).squeeze(1), classes
