"""The method families: what each kind of method needs, written once.

A method file subclasses one family and states only its maths:

* :class:`GradientCAM` - one forward pass with no graph before the target layers, one
  ``autograd.grad`` for all of them; a method gives ``channel_weights(A, g)`` (Grad-CAM,
  Grad-CAM++, XGrad-CAM) or, for element-wise methods, ``combine(A, g)`` (LayerCAM,
  HiResCAM). Differentiable (``explainer(x, differentiable=True)``): the same code runs
  on the full graph with ``create_graph=True``, so ``channel_weights``/``combine`` must be
  made of differentiable torch ops (in-place ops that autograd accepts are fine). A
  method whose maths is not differentiable sets ``differentiable = False`` and says why in
  ``nondifferentiable_reason``; one that overrides ``GradientCAM.attribute`` is not
  differentiable unless its class says so itself.
* :class:`ActivationCAM` - activations only, no gradient (CAM, Eigen-CAM): ``combine(A)``.
  Not differentiable.
* :class:`PerturbationCAM` - batched forward passes on perturbed inputs or activations,
  ``batch_size`` at a time, under ``no_grad`` (Score-CAM, Ablation-CAM):
  ``channel_weights(inputs, A, ...)``. Not differentiable.

Notation: A is a layer's activation laid out as (N, C, *grid), g = d(score)/dA. Maps are
computed in float32 (float64 stays float64), whatever the model's precision.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils import _pytree as pytree

from ..base import Explainer, MethodError
from ..capture import Capture
from ..errors import warn
from ..layouts import Arrangement
from ..maps import normalize_minmax, upsample
from ..targets import Targets, class_logits, class_scores


def work(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the precision maps are computed in: float32, or float64 if it is."""
    return t if t.dtype == torch.float64 else t.float()


def weighted_sum(weights: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_k w_k A_k`: (N, C) weights and (N, C, *grid) maps -> (N, *grid), one bmm."""
    n, c = weights.shape
    out = torch.bmm(weights.unsqueeze(1), act.reshape(n, c, -1))
    return out.view(n, *act.shape[2:])


def spatial_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over every position: (N, C, *grid) -> (N, C)."""
    return t.flatten(2).sum(-1)


class GradientCAM(Explainer):
    """Methods built from the activation A and its gradient g at the target layers.

    ``differentiable = True``: with ``differentiable=True`` the forward pass records the full
    graph, A stays in it, g is taken with ``create_graph=True`` and ``combine(A, g)`` is
    differentiated through (see :meth:`camlib.Explainer.__call__`). A subclass that
    overrides ``attribute`` inherits ``differentiable = False`` unless it sets the
    attribute itself (its own passes have not been checked for a differentiable path).
    """

    graph = "from_layer"
    differentiable = True

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "attribute" in cls.__dict__ and "differentiable" not in cls.__dict__:
            cls.differentiable = False
            cls.nondifferentiable_reason = (
                "it computes its maps with passes of its own (it overrides "
                "GradientCAM.attribute), which do not record the differentiable path"
            )

    def attribute(self, inputs: torch.Tensor, targets: Targets) -> list[torch.Tensor]:
        cap = self.forward(inputs, targets)
        acts, arrangements = self.feature_maps(cap)  # shapes checked before the backward pass
        grads = self.gradients(cap.scores, cap.activations)  # type: ignore[arg-type]
        maps = []
        for i, (act, a, grad) in enumerate(zip(acts, arrangements, grads, strict=True)):
            g = a.apply(grad)
            flat = g.flatten(1).any(1)
            if not bool(flat.all()):
                which = (~flat).nonzero().flatten().tolist()
                images = "every image" if len(which) == len(flat) else f"images {which}"
                warn(
                    f"the target scores have a zero gradient everywhere at layer "
                    f"{self.layers[i].spec!r} for {images}, so {type(self).__name__}'s map is "
                    f"empty there. Either the head ignores this layer for these scores (an "
                    f"untrained head initialised to zero does: torchvision's ViT heads are), or, "
                    f"on a vision transformer, the layer lies after the last attention, where "
                    f"patch tokens get no gradient from the class token (explain the last "
                    f"block's first norm: 'auto' does)."
                )
            maps.append(self.combine(work(act), work(g)))
        return maps

    def combine(self, act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        r""":math:`\mathrm{ReLU}(\sum_k w_k A_k)` with ``w = channel_weights(A, g)``."""
        return weighted_sum(self.channel_weights(act, grad), act).relu_()

    def channel_weights(self, act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """(N, C) weights from (N, C, *grid) activations and gradients."""
        raise NotImplementedError(
            f"{type(self).__name__} must define channel_weights(act, grad) or combine(act, grad)"
        )


class ActivationCAM(Explainer):
    """Methods that need the activations only: no gradient, no graph. Not differentiable."""

    graph = "none"
    nondifferentiable_reason = (
        "it reads the activations with no autograd graph (graph='none') and takes its "
        "weights as constants (CAM: the classifier's weights, detached) or picks them by a "
        "rule with no useful derivative (Eigen-CAM: an eigenvector whose sign is fixed by a "
        "discontinuous rule, with a gradient that is undefined at repeated eigenvalues). On a "
        "global-average-pooling + linear head CAM equals Grad-CAM up to a constant factor, "
        "so use GradCAM"
    )

    def attribute(self, inputs: torch.Tensor, targets: Targets) -> list[torch.Tensor]:
        cap = self.forward(inputs, targets)
        acts, _ = self.feature_maps(cap)
        return [self.combine(work(act), i, cap) for i, act in enumerate(acts)]

    def combine(self, act: torch.Tensor, layer: int, cap: Capture) -> torch.Tensor:
        """(N, *grid) map of layer number ``layer`` from its (N, C, *grid) activation."""
        raise NotImplementedError


def _index_args(args: tuple, rows: torch.Tensor, batch: int) -> tuple:
    """Batched tensor arguments follow the rows being explained; others pass unchanged."""
    return tuple(
        a.index_select(0, rows)
        if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == batch
        else a
        for a in args
    )


def _split_output(output: object, parts: int, size: int) -> list[object]:
    """A batched model output of ``parts * size`` rows as ``parts`` outputs of ``size``."""
    if (
        isinstance(output, (list, tuple))
        and len(output) == parts * size
        and not (
            output
            and isinstance(output[0], torch.Tensor)
            and output[0].dim()
            and output[0].shape[0] == parts * size
        )
    ):
        return [output[i * size : (i + 1) * size] for i in range(parts)]  # one entry per image

    def take(i: int) -> object:
        return pytree.tree_map(
            lambda t: (
                t[i * size : (i + 1) * size]
                if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == parts * size
                else t
            ),
            output,
        )

    return [take(i) for i in range(parts)]


class PerturbationCAM(Explainer):
    """Methods that weight each channel by forward passes on perturbed copies.

    Every (image, channel) pair to evaluate is one row of a batched no-grad forward,
    ``batch_size`` rows at a time; weights are scattered back into an (N, C) tensor on the
    model's device with no host synchronisation inside the loop. Class targets batch
    pairs freely; a callable target is evaluated on blocks of all N images (one block per
    channel), so it sees the batch in its usual order.

    Not differentiable: the weights are scores of no-grad forward passes.

    Args:
        batch_size: rows per forward pass (memory grows with it, not with C).
    """

    graph = "none"
    nondifferentiable_reason = (
        "its channel weights are the scores of no-grad forward passes on perturbed copies "
        "(masked inputs or zeroed channels), run batch by batch outside the graph, so no "
        "gradient reaches the model's parameters through them"
    )

    def __init__(self, model, target_layer="auto", *, batch_size: int = 32, **options) -> None:
        super().__init__(model, target_layer, **options)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise MethodError(
                f"{type(self).__name__}: batch_size must be a positive int, got {batch_size!r}"
            )
        self.batch_size = batch_size

    def attribute(self, inputs: torch.Tensor, targets: Targets) -> list[torch.Tensor]:
        cap = self.forward(inputs, targets)
        acts, arrangements = self.feature_maps(cap)
        maps = []
        for i, (act, a) in enumerate(zip(acts, arrangements, strict=True)):
            with torch.no_grad():
                w = self.channel_weights(inputs, work(act), i, a, cap, targets).to(work(act).dtype)
            maps.append(weighted_sum(w, work(act)).relu_())
        return maps

    def channel_weights(
        self,
        inputs: torch.Tensor,
        act: torch.Tensor,
        layer: int,
        arrangement: Arrangement,
        cap: Capture,
        targets: Targets,
    ) -> torch.Tensor:
        """(N, C) channel weights."""
        raise NotImplementedError

    # -- shared machinery --------------------------------------------------------------------
    def evaluate(
        self,
        inputs: torch.Tensor,
        keep: torch.Tensor,
        cap: Capture,
        targets: Targets,
        run: Callable[[torch.Tensor, torch.Tensor], object],
        score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """Scores of the perturbed copies for every (image, channel) pair in ``keep``.

        Args:
            keep: (N, C) bool, the pairs to evaluate (others score 0).
            run: ``run(rows, channels) -> output`` runs the model on the perturbed copies
                of those images for those channels.
            score: ``score(logits, classes) -> (B,)`` for class targets.
        Returns:
            (N, C) scores.
        """
        n, c = keep.shape
        out = torch.zeros(n, c, device=inputs.device, dtype=work(inputs).dtype)
        if callable(targets):  # blocks of all N images, one per channel
            channels = keep.any(0).nonzero().flatten()
            per = max(1, self.batch_size // n)
            rows_block = torch.arange(n, device=inputs.device)
            for start in range(0, len(channels), per):
                chans = channels[start : start + per]
                rows = rows_block.repeat(len(chans))
                ks = chans.repeat_interleave(n)
                parts = _split_output(run(rows, ks), len(chans), n)
                got = torch.stack([targets(p).to(out.dtype) for p in parts], 1)  # (N, m)
                out[:, chans] = got
            return out * keep
        rows, ks = keep.nonzero(as_tuple=True)
        classes = cap.classes
        for start in range(0, len(rows), self.batch_size):
            r, k = rows[start : start + self.batch_size], ks[start : start + self.batch_size]
            logits = class_logits(run(r, k), len(r))
            out.index_put_((r, k), score(logits, classes[r]).to(out.dtype))  # type: ignore[index]
        return out


def minmax_masks(
    act: torch.Tensor, rows: torch.Tensor, channels: torch.Tensor, size: tuple[int, ...]
) -> torch.Tensor:
    """Score-CAM's masks H for (row, channel) pairs: the activation upsampled to the input
    size and min-max scaled to [0, 1]; (B, 1, *size)."""
    maps = act[rows, channels]  # (B, *grid)
    return normalize_minmax(upsample(maps, size)).unsqueeze(1)


def constant_channels(act: torch.Tensor) -> torch.Tensor:
    """(N, C) bool: channels whose map is constant (within rounding, as in
    :func:`camlib.maps.normalize_minmax`)."""
    flat = act.flatten(2)
    lo, hi = flat.amin(-1), flat.amax(-1)
    return (hi - lo) <= (hi.abs() + lo.abs()) * (8 * torch.finfo(flat.dtype).eps)


__all__ = [
    "ActivationCAM",
    "GradientCAM",
    "PerturbationCAM",
    "class_scores",
    "constant_channels",
    "minmax_masks",
    "spatial_sum",
    "weighted_sum",
    "work",
]
