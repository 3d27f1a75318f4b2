"""Turning ``targets=`` into one differentiable score per image.

``targets`` may be:

* ``None`` - each image's top-scoring class;
* an integer (``int``, a NumPy integer, a 0-d integer tensor) - that class for every image;
* a sequence, NumPy array or 1-D integer tensor of N classes - one per image;
* a callable ``output -> (N,)`` tensor of scores - anything else (a segmentation
  mask score, a detected box, a difference of logits, ...); see
  :class:`SegmentationTarget` and :class:`DetectionTarget`.

Class targets read the logits from the model's output: a tensor, a dict with
``"logits"`` or ``"out"``, an object with a ``.logits`` attribute (HuggingFace), or a
tuple/list whose first element is the logits.

**Binary heads.** A single logit per image ((N,) or (N, 1)) is a two-class model: class 1
is the logit, class 0 is minus the logit, and ``targets=None`` picks 1 where the logit is
positive and 0 otherwise.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .errors import TargetError, warn

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


def check_targets(
    targets: Targets, batch: int
) -> Callable[[object], torch.Tensor] | ClassList | None:
    """Validate ``targets`` for a batch of ``batch`` images before any forward pass.

    Returns ``None``, the callable, or a list of ``batch`` class indices (an integer
    is repeated for every image). Raises :class:`~camlib.errors.TargetError` naming
    what is wrong.
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
    return values  # negative and too-large classes are named once the output is known


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        return f"a dict with keys {list(value)[:8]}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} ({', '.join(_describe(v) for v in value[:3])})"
    return f"a {type(value).__name__}"


def logits_of(output: object) -> torch.Tensor | None:
    """The logits inside a model output (tensor, ``{"logits"}``/``{"out"}``, ``.logits``,
    or the first element of a tuple/list); ``None`` when there are none."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        for key in ("logits", "out"):
            if isinstance(output.get(key), torch.Tensor):
                return output[key]
        return None
    if isinstance(getattr(output, "logits", None), torch.Tensor):
        return output.logits  # type: ignore[union-attr]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def class_logits(output: object, batch: int) -> torch.Tensor:
    """(N, K) logits for class targets; a one-logit binary head gives (N, 1)."""
    logits = logits_of(output)
    if logits is not None and logits.dim() == 1 and logits.shape[0] == batch:
        logits = logits[:, None]
    if logits is None or logits.dim() != 2 or logits.shape[0] != batch:
        got = _describe(output)
        if logits is not None and logits is not output:
            got += f" whose logits are {_describe(logits)}"
        seg = (
            " For per-pixel outputs use targets=camlib.targets.SegmentationTarget(class_index)."
            if logits is not None and logits.dim() > 2
            else ""
        )
        raise TargetError(
            f"class targets need logits of shape (N, num_classes) = ({batch}, K) or a binary "
            f"logit ({batch},); the model returned {got}.{seg} Pass targets=callable(output) "
            f"-> ({batch},) scores instead."
        )
    return logits


def class_scores(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(N,) scores of ``classes`` in (N, K) logits; for a binary (N, 1) head, class 1 is the
    logit and class 0 minus it."""
    if logits.shape[1] == 1:
        return torch.where(classes == 1, logits[:, 0], -logits[:, 0])
    return logits.gather(1, classes[:, None]).squeeze(1)


def class_probabilities(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(N,) probabilities of ``classes``: softmax over K logits, sigmoid for a binary head."""
    if logits.dtype != torch.float64:
        logits = logits.float()  # half-precision softmax loses the small probabilities
    if logits.shape[1] == 1:
        return torch.sigmoid(class_scores(logits, classes))
    return torch.softmax(logits, dim=1).gather(1, classes[:, None]).squeeze(1)


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
    logits = class_logits(output, batch)
    num_classes = logits.shape[1]
    if targets is None:
        classes = (logits[:, 0] > 0).long() if num_classes == 1 else logits.argmax(dim=1)
    else:
        valid = 2 if num_classes == 1 else num_classes
        what = (
            "a one-logit binary head (classes 0 and 1)"
            if num_classes == 1
            else f"a model with {num_classes} outputs (valid classes: 0..{num_classes - 1})"
        )
        negative = [v for v in targets if v < 0]
        if negative:
            raise TargetError(
                f"target class {negative[0]} is negative; class indices count from 0, and this "
                f"is {what}"
            )
        too_big = [v for v in targets if v >= valid]
        if too_big:
            raise TargetError(f"target class {too_big[0]} is out of range for {what}")
        classes = torch.tensor(targets, dtype=torch.long, device=logits.device)
    return class_scores(logits, classes), classes


# -- helpers for dense and detection outputs -------------------------------------------------
class SegmentationTarget:
    r"""Score of one class over a pixel mask, for semantic segmentation outputs.

    .. math:: s_n = \sum_{ij} M_{nij}\, y_{n,c,ij}

    with :math:`y` the (N, K, H, W) logits (a tensor, or torchvision's ``{"out": ...}``)
    and :math:`M` the mask: given as (H, W) or (N, H, W), or by default where class
    ``c`` wins (``argmax_k y_k == c``, taken from the same forward pass).

    >>> maps = camlib.GradCAM(fcn, "backbone.layer4")(x, targets=SegmentationTarget(15))  # doctest: +SKIP
    """

    def __init__(self, category: int, mask: torch.Tensor | None = None) -> None:
        self.category = _as_index(category)
        self.mask = mask

    def __call__(self, output: object) -> torch.Tensor:
        logits = logits_of(output)
        if logits is None or logits.dim() < 3:
            raise TargetError(
                f"SegmentationTarget needs per-pixel logits (N, K, H, W); the model returned "
                f"{_describe(output)}"
            )
        if not 0 <= self.category < logits.shape[1]:
            raise TargetError(
                f"SegmentationTarget class {self.category} is out of range for "
                f"{logits.shape[1]} classes (0..{logits.shape[1] - 1})"
            )
        mask = self.mask
        if mask is None:
            mask = logits.detach().argmax(1) == self.category
        mask = torch.as_tensor(mask, device=logits.device)
        if mask.shape[-2:] != logits.shape[-2:]:
            raise TargetError(
                f"SegmentationTarget mask has shape {tuple(mask.shape)}; the logits' pixels "
                f"are {tuple(logits.shape[-2:])}"
            )
        per_pixel = logits[:, self.category] * mask.to(logits.dtype)
        return per_pixel.flatten(1).sum(1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(A, B) intersection over union of (A, 4) and (B, 4) ``x1, y1, x2, y2`` boxes."""
    lo = torch.maximum(a[:, None, :2], b[None, :, :2])
    hi = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (hi - lo).clamp_min(0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp_min(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp_min(0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(inter))


class DetectionTarget:
    r"""Score of the detections that match given boxes, for torchvision detectors.

    For each image n and each given box :math:`b` with label :math:`l`, the detection of
    label :math:`l` with the highest IoU with :math:`b` (at least ``iou_threshold``)
    contributes its score; the image's score is the sum. The output is the list of
    ``{"boxes", "labels", "scores"}`` dicts that torchvision detection models return
    in eval mode. A box that matches no detection scores 0 (with a warning); when no
    box of the batch is matched, camlib reports that the target does not depend on the
    layer.

    Args:
        boxes: (B, 4) boxes ``x1, y1, x2, y2`` for every image, or a list of N such.
        labels: (B,) labels, or a list of N such.
        iou_threshold: the least IoU that counts as the same object.
    """

    def __init__(
        self,
        boxes: torch.Tensor | Sequence[torch.Tensor],
        labels: torch.Tensor | Sequence[torch.Tensor],
        iou_threshold: float = 0.5,
    ) -> None:
        self.boxes, self.labels, self.iou_threshold = boxes, labels, iou_threshold

    def _for(self, value: object, n: int, batch: int) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value
        if len(value) != batch:  # type: ignore[arg-type]
            raise TargetError(f"DetectionTarget got {len(value)} box sets for {batch} images")  # type: ignore[arg-type]
        return torch.as_tensor(value[n])  # type: ignore[index]

    def __call__(self, output: object) -> torch.Tensor:
        if not isinstance(output, (list, tuple)) or not all(
            isinstance(d, dict) and {"boxes", "labels", "scores"} <= d.keys() for d in output
        ):
            raise TargetError(
                f"DetectionTarget needs a list of {{'boxes', 'labels', 'scores'}} dicts (a "
                f"torchvision detector in eval mode); the model returned {_describe(output)}"
            )
        scores = []
        for n, det in enumerate(output):
            boxes = self._for(self.boxes, n, len(output)).to(
                det["boxes"].device, det["boxes"].dtype
            )
            labels = self._for(self.labels, n, len(output)).to(det["labels"].device)
            total = det["scores"].new_zeros(())
            if len(det["boxes"]):
                iou = box_iou(boxes.reshape(-1, 4), det["boxes"].detach())
                same = labels.reshape(-1)[:, None] == det["labels"][None, :]
                iou = torch.where(same, iou, torch.full_like(iou, -1.0))
                best, index = iou.max(1)
                hit = best >= self.iou_threshold
                if bool(hit.any()):
                    total = total + det["scores"][index[hit]].sum()
                missed = int((~hit).sum())
            else:
                missed = len(boxes.reshape(-1, 4))
            if missed:
                warn(
                    f"DetectionTarget: {missed} box(es) of image {n} match no detection of "
                    f"their label with IoU >= {self.iou_threshold}; they score 0 and add "
                    f"nothing to the map"
                )
            scores.append(total)
        return torch.stack(scores)


class YOLOTarget:
    r"""Score of one detection in the raw output of an ultralytics YOLO head (v8, 11).

    In eval mode ultralytics' ``Detect`` head returns ``(y, features)`` with ``y`` of shape
    (N, 4 + K, A): per anchor ``a``, a box ``cx, cy, w, h`` in input pixels and K class
    scores (after the sigmoid). The score explained for image n is

    .. math:: s_n = y_{n,\,4 + c_n,\,a_n}

    the class-:math:`c_n` score of anchor :math:`a_n`. The anchor is ``anchor`` when given;
    otherwise the anchor whose box best overlaps ``box`` (``x1, y1, x2, y2``, IoU), or
    else the anchor with the highest score (of ``category``, or of any class). The class
    is ``category`` when given, else the anchor's best class. The anchors and classes
    chosen by the last call are in ``anchors`` and ``classes``.

    >>> cam = camlib.GradCAM(yolo.model, "model.15")  # doctest: +SKIP
    >>> maps = cam(x, targets=camlib.targets.YOLOTarget(category=0))  # doctest: +SKIP
    """

    def __init__(
        self,
        category: int | None = None,
        *,
        anchor: int | None = None,
        box: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        self.category = None if category is None else _as_index(category)
        self.anchor = None if anchor is None else _as_index(anchor)
        self.box = None if box is None else torch.as_tensor(box, dtype=torch.float32)
        if self.box is not None and self.box.shape != (4,):
            raise TargetError(f"YOLOTarget box must be 4 numbers x1, y1, x2, y2, got {box!r}")
        self.anchors: torch.Tensor | None = None
        self.classes: torch.Tensor | None = None

    def __call__(self, output: object) -> torch.Tensor:
        raw = output[0] if isinstance(output, (tuple, list)) and output else output
        if not isinstance(raw, torch.Tensor) or raw.dim() != 3 or raw.shape[1] < 5:
            raise TargetError(
                f"YOLOTarget needs the raw YOLO head output (N, 4 + classes, anchors) (or a "
                f"tuple starting with it: ultralytics' Detect in eval mode); the model "
                f"returned {_describe(output)}"
            )
        n, width, count = raw.shape
        k = width - 4
        if self.category is not None and not 0 <= self.category < k:
            raise TargetError(f"YOLOTarget class {self.category} is out of range for {k} classes")
        if self.anchor is not None and not 0 <= self.anchor < count:
            raise TargetError(f"YOLOTarget anchor {self.anchor} is out of range for {count}")
        scores = raw[:, 4:].detach()  # (N, K, A)
        if self.anchor is not None:
            anchors = torch.full((n,), self.anchor, device=raw.device, dtype=torch.long)
        elif self.box is not None:
            xywh = raw[:, :4].detach().transpose(1, 2)  # (N, A, 4)
            boxes = torch.cat(
                [xywh[..., :2] - xywh[..., 2:] / 2, xywh[..., :2] + xywh[..., 2:] / 2], -1
            )
            box = self.box.to(raw.device, boxes.dtype)[None]
            anchors = box_iou(box, boxes.reshape(-1, 4)).view(n, count).argmax(1)
        else:
            best = scores[:, self.category] if self.category is not None else scores.amax(1)
            anchors = best.argmax(1)  # (N,)
        if self.category is not None:
            classes = torch.full((n,), self.category, device=raw.device, dtype=torch.long)
        else:
            classes = scores.gather(2, anchors[:, None, None].expand(n, k, 1))[..., 0].argmax(1)
        self.anchors, self.classes = anchors, classes
        rows = torch.arange(n, device=raw.device)
        return raw[rows, 4 + classes, anchors]
