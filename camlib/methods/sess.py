"""SESS (Tursun et al., 2022, "SESS: Saliency Enhancing with Scaling and Sliding", ECCV)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..base import MethodError, register
from ..errors import InputError
from ..targets import Targets, class_logits, class_probabilities
from .families import _index_args, _split_output, work
from .wrapped import WrappedCAM


def window_starts(length: int, step: int, window: int) -> list[int]:
    """Left edges of the windows covering ``length``; the last one is moved back inside."""
    starts = []
    for start in range(0, length, step):
        if start + window >= length:
            starts.append(max(length - window, 0))
            break
        starts.append(start)
    return starts


def gaussian_blur(maps: torch.Tensor, size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """(N, H, W) maps blurred with a normalised ``size`` x ``size`` Gaussian, borders
    reflected without repeating the edge (OpenCV's default ``BORDER_REFLECT_101``)."""
    x = torch.arange(size, device=maps.device, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(x * x) / (2 * sigma * sigma))
    k = (k / k.sum()).to(maps.dtype)
    half = size // 2
    out = F.pad(maps[:, None], (half, half, half, half), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1))
    return F.conv2d(out, k.view(1, 1, -1, 1))[:, 0]


@register("sess")
class SESS(WrappedCAM):
    r"""SESS: a base method's maps of sliding windows over several scales, fused.

    The images are resized (bilinear) so their shorter side is each of the ``scales``; a
    ``window`` x ``window`` window slides over each with stride ``step`` (the last window of
    a row or column is moved back inside). Every patch j gets a score :math:`s_j` (the
    target class's softmax probability on the patch; a callable target's value, clipped at
    0) and its base map :math:`L_j \in [0, 1]` (``method=``, min-max normalised at the
    patch size). The lowest ``pre_filter`` fraction of patches by score is dropped; each
    kept map is weighted by :math:`w_j = s_j / \max_i s_i` (all 1 when every score is 0),
    pasted into its scale's frame, resized to the input (bilinear) as :math:`P_j`, and

    .. math:: L(p) = \frac{\sum_j P_j(p)\,[P_j(p) > \theta]}{\sum_j [P_j(p) > \theta]}
              \quad (0 \text{ where no patch exceeds } \theta)

    (``pool="mean"``; ``"max"`` takes :math:`\max_j P_j(p)`), then a Gaussian blur
    (11 x 11, sigma 5) when ``smooth``. The defaults are pytorch-grad-cam's (the paper's
    for 224 px inputs): the window is the shorter side, 12 scales from it in steps of 2/7
    of it (224, 288, ..., 928), non-overlapping windows.

    Batched: all patches of all images are scored in no-grad forwards of ``batch_size``
    rows, and explained by the base method ``batch_size`` at a time (a callable target:
    one window position, all N images, per call). Cost: one forward of the batch, one
    forward per patch, and the base method's cost per kept patch.

    Args:
        method: the base method (default ``"gradcam"``).
        scales: sizes of the shorter side (default: see above); each at least ``window``.
        num_scales, scale_step: the default scales, ``window + round(window * scale_step) * i``.
        window: window size (default: the input's shorter side).
        step: window stride (default: ``window``).
        pre_filter: fraction of the lowest-scoring patches dropped, in [0, 1).
        theta: threshold of the mean fusion.
        pool: ``"mean"`` or ``"max"``.
        smooth: blur the fused map.
        batch_size: patches per forward and per base call.
        **options: the base method's options.
    """

    flip_equivariant: ClassVar[bool] = False
    """The windows are laid from the top-left edge (the last one of a row or column moved
    back inside), so a mirrored image is covered by other windows where a scale has three or
    more of them: the map of a mirrored image need not be the mirrored map, even for a
    mirror-symmetric network. Methods without this attribute are flip-equivariant."""

    def __init__(
        self,
        model: nn.Module,
        target_layer="auto",
        *,
        scales: Sequence[int] | None = None,
        num_scales: int = 12,
        scale_step: float = 2.0 / 7.0,
        window: int | None = None,
        step: int | None = None,
        pre_filter: float = 0.0,
        theta: float = 0.0,
        pool: str = "mean",
        smooth: bool = True,
        batch_size: int = 32,
        **options,
    ) -> None:
        if pool not in ("mean", "max"):
            raise MethodError(f"SESS: pool must be 'mean' or 'max', got {pool!r}")
        if not 0.0 <= pre_filter < 1.0:
            raise MethodError(f"SESS: pre_filter must be in [0, 1), got {pre_filter!r}")
        for what, v in (("num_scales", num_scales), ("batch_size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise MethodError(f"SESS: {what} must be a positive int, got {v!r}")
        for what, v in (("window", window), ("step", step)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise MethodError(f"SESS: {what} must be a positive int or None, got {v!r}")
        if scales is not None and (
            not scales
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in scales)
        ):
            raise MethodError(f"SESS: scales must be a list of positive ints, got {scales!r}")
        super().__init__(model, target_layer, **options)
        self.scales = None if scales is None else list(scales)
        self.num_scales, self.scale_step = num_scales, scale_step
        self.window, self.step, self.pre_filter, self.theta = window, step, pre_filter, theta
        self.pool, self.smooth, self.batch_size = pool, smooth, batch_size

    def _resolve_layers(self, inputs: torch.Tensor) -> None:
        """The base method resolves its layers on the patches, not on the whole image."""

    def plan(self, h: int, w: int) -> tuple[int, int, list[int]]:
        """(window, step, scales) for an h x w input; raises on sizes that cannot work."""
        win = self.window if self.window is not None else min(h, w)
        step = self.step if self.step is not None else win
        scales = self.scales or [
            win + int(round(win * self.scale_step)) * i for i in range(self.num_scales)
        ]
        if min(scales) < win:
            raise MethodError(f"SESS: every scale must be at least the window {win}; got {scales}")
        if self.smooth and min(h, w) <= 5:
            raise InputError(
                f"SESS smooths with an 11 x 11 Gaussian, which needs images of at least 6 px; "
                f"got {h} x {w} (pass smooth=False)"
            )
        return win, step, scales

    def attribute(self, inputs: torch.Tensor, targets: Targets) -> torch.Tensor:
        if inputs.dim() != 4:
            raise InputError(
                f"SESS slides windows over images (N, C, H, W); got inputs of shape "
                f"{tuple(inputs.shape)}"
            )
        n, (h, w) = inputs.shape[0], tuple(inputs.shape[2:])
        win, step, scales = self.plan(h, w)
        cap = self.forward(inputs, targets, graph="none", layers=[])  # classes fixed here
        device, dtype = inputs.device, work(inputs).dtype

        # every patch of every image, patch-major: row r is patch r // n of image r % n
        patches, frames, corners = [], [], []
        for scale in scales:
            sh, sw = (scale, int(scale * w / h)) if h <= w else (int(scale * h / w), scale)
            scaled = inputs
            if (sh, sw) != (h, w):
                scaled = F.interpolate(
                    inputs, (sh, sw), mode="bilinear", align_corners=False, antialias=True
                )
            for y in window_starts(sh, step, win):
                for x in window_starts(sw, step, win):
                    patches.append(scaled[:, :, y : y + win, x : x + win])
                    frames.append((sh, sw))
                    corners.append((y, x))
        count_p = len(patches)
        stack = torch.stack(patches).flatten(0, 1)  # (P * n, C, win, win)
        at = torch.tensor(corners, device=device)  # (P, 2) top-left corners

        scores = self._scores(stack, cap.classes, targets, n).view(count_p, n).clamp_min(0)
        keep = torch.ones_like(scores, dtype=torch.bool)
        drop = int(count_p * self.pre_filter)
        if drop:
            keep.scatter_(0, scores.argsort(dim=0, stable=True)[:drop], False)
        top = scores.amax(0, keepdim=True)
        weights = torch.where(top > 0, scores / torch.where(top > 0, top, 1), 1) * keep

        if callable(targets):  # one window position (all n images) per base call
            rows_all = torch.arange(count_p * n, device=device)
            groups = [(p * n, (p + 1) * n) for p in range(count_p)]
            host = list(range(count_p * n))
        else:
            rows_all = keep.flatten().nonzero().flatten()
            host = rows_all.tolist()  # the one synchronisation: which patches to explain
            groups, start = [], 0
            for i in range(1, len(host) + 1):
                if (
                    i == len(host)
                    or i - start == self.batch_size
                    or frames[host[i] // n] != frames[host[start] // n]
                ):
                    groups.append((start, i))
                    start = i
            classes = cap.classes.tolist()  # type: ignore[union-attr]

        total = torch.zeros(n, h, w, device=device, dtype=dtype)
        count = torch.zeros_like(total)
        span = torch.arange(win, device=device)
        for start, end in groups:
            rows = rows_all[start:end]
            patch, img = rows.div(n, rounding_mode="floor"), rows.remainder(n)
            chunk = targets if callable(targets) else [classes[r % n] for r in host[start:end]]
            args = _index_args(self._forward_args, img, n) if self._forward_args else None
            maps = self.base(stack.index_select(0, rows), chunk, additional_forward_args=args)
            # paste each weighted map into its scale's frame, resize that frame to the input
            sh, sw = frames[host[start] // n]
            b = len(rows)
            canvas = torch.zeros(b, sh, sw, device=device, dtype=dtype)
            ys = at[patch, 0].view(b, 1, 1) + span.view(1, -1, 1)
            xs = at[patch, 1].view(b, 1, 1) + span.view(1, 1, -1)
            which = torch.arange(b, device=device).view(b, 1, 1)
            canvas[which, ys, xs] = maps.to(dtype) * weights[patch, img].view(b, 1, 1)
            if (sh, sw) != (h, w):
                canvas = F.interpolate(
                    canvas[:, None], (h, w), mode="bilinear", align_corners=False
                )[:, 0]
            if self.pool == "max":
                total.scatter_reduce_(0, img.view(b, 1, 1).expand(b, h, w), canvas, "amax")
            else:
                counted = (canvas > self.theta) & keep[patch, img].view(b, 1, 1)
                total.index_add_(0, img, canvas * counted)
                count.index_add_(0, img, counted.to(dtype))
        if self.pool == "mean":
            total = torch.where(count > 0, total / torch.where(count > 0, count, 1), 0)
        self.layers = self.base.layers
        self.classes, self.scores = cap.classes, cap.scores
        return gaussian_blur(total) if self.smooth else total

    def _scores(
        self, stack: torch.Tensor, classes: torch.Tensor | None, targets: Targets, n: int
    ) -> torch.Tensor:
        """(P * n,) patch scores: the class probability, or the callable target's value."""
        out = torch.zeros(stack.shape[0], device=stack.device, dtype=work(stack).dtype)
        args, blocks = self._forward_args, stack.shape[0] // n
        with torch.no_grad():
            if callable(targets):  # blocks of all n images, as the target expects
                per = max(1, self.batch_size // n)
                for first in range(0, blocks, per):
                    m = min(per, blocks - first)
                    rows = torch.arange(first * n, (first + m) * n, device=stack.device)
                    img = rows.remainder(n)
                    output = self.model(stack.index_select(0, rows), *_index_args(args, img, n))
                    parts = _split_output(output, m, n)
                    out[rows] = torch.cat([targets(part).to(out.dtype) for part in parts])
                return out
            for first in range(0, stack.shape[0], self.batch_size):
                rows = torch.arange(
                    first, min(first + self.batch_size, stack.shape[0]), device=stack.device
                )
                img = rows.remainder(n)
                output = self.model(stack.index_select(0, rows), *_index_args(args, img, n))
                logits = class_logits(output, len(rows))
                out[rows] = class_probabilities(logits, classes[img]).to(out.dtype)  # type: ignore[index]
        return out
