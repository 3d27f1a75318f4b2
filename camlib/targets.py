"""Turning ``targets=`` into one differentiable score per image.

``targets`` may be:

* ``None`` - each image's top-scoring class;
* an integer (``int``, a NumPy integer, a 0-d integer tensor) - that class for every image;
* a sequence, NumPy array or 1-D integer tensor of N classes - one per image;
* a callable ``output -> (N,)`` tensor of scores - anything else (a segmentation
  mask score, a difference of logits, ...).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .errors import TargetError

Targets = int | Sequence[int] | torch.Tensor | np.ndarray | Callable[[object], torch.Tensor] | None
ClassList = list[int]


def _as_index(value: object) -> int:
    """``value`` as a Python int when it is an integer (not a bool), else a TargetError."""
    if isinstance(value, (bool, np.bool_)) or (
        isinstance(value, torch.Tensor) and value.dtype == torch.bool
    ):
        raise TargetError(f"targets must be integer class indices, not booleans (got {value!r})")
    try:
        return operator.index(value)  # int, NumPy integers, 0-d integer tensors
    except TypeError:
        raise TargetError(
            f"targets must be integer class indices, got {value!r} ({type(value).__name__})"
        ) from None


def check_targets(targets: Targets, batch: int) -> Callable[[object], torch.Tensor] | ClassList | None:
    """Validate ``targets`` for a batch of ``batch`` images before any forward pass.

    Returns ``None``, the callable, or a list of ``batch`` class indices (an integer
    is repeated for every image). Raises :class:`TargetError` naming what is wrong.
    """
    if targets is None or callable(targets):
        return targets
    if isinstance(targets, (torch.Tensor, np.ndarray)):
        dtype = targets.dtype
        is_int = (
            not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)
            if isinstance(targets, torch.Tensor)
            else np.issubdtype(dtype, np.integer)
        )
        if not is_int:
            raise TargetError(f"target tensor must hold integer class indices, got dtype {dtype}")
        if targets.ndim > 1:
            raise TargetError(
                f"target tensor must be 1-D with one class per image, got shape "
                f"{tuple(targets.shape)}"
            )
        if isinstance(targets, torch.Tensor) and targets.device.type == "meta":
            raise TargetError("target tensor is on the meta device and holds no values")
        values = targets.tolist()
    elif isinstance(targets, Sequence) and not isinstance(targets, str):
        values = [_as_index(v) for v in targets]
    elif isinstance(targets, (bool, np.bool_)):
        values = _as_index(targets)  # raises: not a boolean
    else:
        try:
            values = operator.index(targets)  # int, NumPy integers, 0-d integer tensors
        except TypeError:
            raise TargetError(
                "targets must be None, an int, a sequence or 1-D tensor of ints, or a callable "
                f"output -> (N,) scores; got {type(targets).__name__}"
            ) from None
    if isinstance(values, int):
        values = [values] * batch
    elif len(values) != batch:
        raise TargetError(
            f"got {len(values)} targets for a batch of {batch} images; give one per image "
            f"(or a single int for all)"
        )
    negative = [v for v in values if v < 0]
    if negative:
        raise TargetError(f"target class {negative[0]} is negative; classes are 0..K-1")
    return values


def select_scores(
    output: object, targets: Callable[[object], torch.Tensor] | ClassList | None, batch: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return ``(scores, classes)``: the (N,) scores to explain and the (N,) classes (or
    ``None`` for a callable target). ``targets`` is what :func:`check_targets` returned."""
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
        too_big = [v for v in targets if v >= num_classes]
        if too_big:
            raise TargetError(
                f"target class {too_big[0]} is out of range for a model with {num_classes} "
                f"outputs (valid classes: 0..{num_classes - 1})"
            )
        classes = torch.tensor(targets, dtype=torch.long, device=output.device)
    return output.gather(1, classes[:, None]).squeeze(1), classes
