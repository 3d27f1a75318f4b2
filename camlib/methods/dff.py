"""Deep Feature Factorization (Collins, Achanta & Süsstrunk, ECCV 2018)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..base import LayerError, MethodError, register
from ..capture import Capture
from ..layers import LayerSpec, layer_name, resolve_layer
from ..maps import upsample
from ..targets import logits_of
from .cam import _in_out, classifier_weights
from .families import ActivationCAM, work


@dataclass
class Concepts:
    """What :class:`DeepFeatureFactorization` found in a batch: K concepts shared by all
    its images.

    Concept k is a direction ``weights[k]`` in the layer's channel space; ``maps[:, k]``
    says where, in each image, the activations contain it.
    """

    maps: torch.Tensor
    """(N, K, *size): where each concept is, per image (what the call returned)."""
    weights: torch.Tensor
    """(K, C): each concept's activation vector at full strength (the NMF factor W,
    scaled so that each concept's raw map peaks at 1 over the batch)."""
    scores: torch.Tensor | None
    """(K, num_classes): the classifier applied to each concept's vector,
    ``fc(weights[k])`` (bias included), when the model has a linear classifier taking
    the layer's channels (see ``fc_layer``); else ``None``."""
    error: torch.Tensor
    r"""0-d: the relative reconstruction error :math:`\|V - WH\|_F / \|V\|_F`."""


def nmf(v: torch.Tensor, k: int, iterations: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Non-negative matrix factorisation :math:`V \approx WH` by multiplicative updates.

    :math:`V` (C, M) >= 0, :math:`W` (C, K), :math:`H` (K, M), minimising
    :math:`\|V - WH\|_F^2` with Lee & Seung's updates (W first, then H, as scikit-learn's
    ``solver="mu"``):

    .. math:: W \leftarrow W \odot \frac{V H^\top}{W H H^\top}, \qquad
              H \leftarrow H \odot \frac{W^\top V}{W^\top W H}

    for a fixed number of iterations (no convergence test, so no host synchronisation).
    An entry whose denominator is exactly 0 is left as it is (no epsilon): its numerator is
    0 too unless the entry is already 0, a fixed point of the updates. Start:
    :math:`W_0 = s\,U[0, 1)` from a CPU generator seeded with ``seed`` (float64, the same on
    every device), :math:`H_0 = s` everywhere, :math:`s = \sqrt{\bar V / K}`; a constant
    :math:`H_0` makes the result equivariant to any permutation of V's columns (positions,
    images).
    """
    c, m = v.shape
    gen = torch.Generator().manual_seed(seed)
    scale = (v.mean() / k).sqrt()
    w = torch.rand(c, k, generator=gen, dtype=torch.float64).to(v) * scale
    h = scale.expand(k, m).clone()
    for _ in range(iterations):
        num, den = v @ h.T, w @ (h @ h.T)
        w = torch.where(den > 0, w * num / den, w)
        num, den = w.T @ v, (w.T @ w) @ h
        h = torch.where(den > 0, h * num / den, h)
    return w, h


@register("dff", "deepfeaturefactorization", "deep-feature-factorization")
class DeepFeatureFactorization(ActivationCAM):
    r"""Deep Feature Factorization: K concepts shared by a batch, and where each one is.

    The layer's activations of the whole batch, :math:`V \in \mathbb{R}_{\ge 0}^{C \times
    (N\,hw)}` (one column per image and position), are factorised as :math:`V \approx WH`
    (:func:`nmf`): column k of :math:`W` is concept k's activation vector, row k of
    :math:`H` its strength at every (image, position). Each concept is scaled so that its
    strongest position has :math:`H = 1`, and concepts are ordered by the share of
    :math:`V` they reconstruct, :math:`\sum W_{:,k} H_{k,:}`, largest first (Collins et
    al., "Deep Feature Factorization for Concept Discovery", ECCV 2018; the factorisation
    pytorch-grad-cam's ``DeepFeatureFactorization`` runs with scikit-learn).

    A call returns the (N, K, *size) concept maps, not one heatmap per image; the full
    result is ``concepts`` (a :class:`Concepts`), also returned by :meth:`factorize`.
    ``upsample`` resizes every concept map (bilinear); ``normalize`` divides each concept's
    maps by their peak over the batch, so the maps stay comparable across images (a
    concept absent from an image stays near 0 there). The factorisation is joint over the
    batch, so the concepts depend on which images are explained together; ``targets``
    only choose ``classes``/``scores``. The layer must be non-negative (after a ReLU):
    NMF factorises non-negative data, and camlib refuses rather than shift or clip. One
    layer only. Costs one forward pass with no graph plus ``iterations`` updates of
    O(C K N hw) each.

    Args:
        concepts: K, the number of concepts.
        iterations: multiplicative updates.
        seed: seeds the NMF's start (see :func:`nmf`).
        fc_layer: the classifier that scores concepts: ``"auto"`` (the last
            ``nn.Linear`` or 1x1 ``nn.Conv2d`` from the layer's channels to the model's
            logits, if any), a name or module, or ``None`` for no scores.
    """

    nondifferentiable_reason = (
        "its maps come from an iterative non-negative factorisation of activations recorded "
        "with no graph"
    )
    returns: ClassVar[str] = "concepts"
    """Calls return (N, K, *size) concept maps, not (N, *size) heatmaps."""
    batch_independent: ClassVar[bool] = False
    """The concepts are factorised jointly over a call's whole batch, so an image's maps
    depend on the images explained with it: images explained in separate calls get
    unrelated concepts (:class:`camlib.Smooth` refuses to split a call's copies). Methods
    without this attribute explain each image on its own."""

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec = "auto",
        *,
        concepts: int = 5,
        iterations: int = 300,
        seed: int = 0,
        fc_layer: LayerSpec = "auto",
        **options: Any,
    ) -> None:
        for label, value, low in (("concepts", concepts, 1), ("iterations", iterations, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise MethodError(f"DFF: {label} must be an int >= {low}, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise MethodError(f"DFF: seed must be an int, got {seed!r}")
        super().__init__(model, target_layer, **options)
        if len(self.layers) > 1:
            raise LayerError(
                f"DFF factorises one layer, got {len(self.layers)}: concepts of different "
                f"layers do not correspond, so their maps cannot be fused; explain one layer "
                f"at a time"
            )
        self.k, self.iterations, self.seed = concepts, iterations, seed
        self.fc_layer: nn.Module | None = None
        self._fc = fc_layer
        if fc_layer is not None and fc_layer != "auto":
            self.fc_layer = resolve_layer(model, fc_layer, what="fc_layer")  # type: ignore[arg-type]
        self.concepts: Concepts | None = None
        self._found: dict[str, torch.Tensor | None] = {}

    def __call__(self, inputs: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Explain a batch, with a call's arguments (see :meth:`camlib.Explainer.__call__`):
        returns the (N, K, *size) concept maps and sets ``concepts``."""
        with self._lock:
            self.concepts = None
            return super().__call__(inputs, *args, **kwargs)

    def close(self) -> None:
        super().close()
        self.concepts = None

    def factorize(self, inputs: torch.Tensor, *args: Any, **kwargs: Any) -> Concepts:
        """Explain a batch as a call does (same arguments) and return its :class:`Concepts`."""
        with self._lock:
            self(inputs, *args, **kwargs)
            return self.concepts  # type: ignore[return-value]

    def combine(self, act: torch.Tensor, layer: int, cap: Capture) -> torch.Tensor:
        n, c = act.shape[:2]
        low = act.flatten(1).amin(1)
        if bool((low < 0).any()):
            which = (low < 0).nonzero().flatten().tolist()
            raise LayerError(
                f"DFF factorises non-negative activations, but layer "
                f"{self.layers[layer].spec!r} has negative values (down to "
                f"{float(low.min()):.3g}) for image(s) {which}; choose a layer after a ReLU"
            )
        v = act.transpose(0, 1).reshape(c, -1)  # (C, N * positions)
        w, h = nmf(v, self.k, self.iterations, self.seed)
        peak = h.amax(1)
        live = peak > 0
        h = h / torch.where(live, peak, 1)[:, None]
        w = w * torch.where(live, peak, 1)
        order = (w.sum(0) * h.sum(1)).argsort(descending=True)
        w, h = w[:, order], h[order]
        norm = v.norm()
        error = (v - w @ h).norm() / torch.where(norm > 0, norm, 1)
        self._found = {
            "weights": w.T.contiguous(),
            "scores": self._scores(w.T, cap),
            "error": error,
        }
        return h.view(self.k, n, *act.shape[2:]).transpose(0, 1)

    def _scores(self, weights: torch.Tensor, cap: Capture) -> torch.Tensor | None:
        """(K, classes): the classifier on each concept vector, or ``None``."""
        if self._fc is None:
            return None
        logits = logits_of(cap.output)
        c = weights.shape[1]
        if self.fc_layer is not None:
            fc, name = self.fc_layer, layer_name(self.model, self.fc_layer)
        else:
            if logits is None or logits.dim() != 2:
                return None
            found = [
                (m, nm)
                for nm, m in self.model.named_modules()
                if _in_out(m) == (c, logits.shape[1])
            ]
            if not found:
                return None
            fc, name = found[-1]
        weight, bias = classifier_weights(fc, name)
        if weight.shape[1] != c:
            raise LayerError(
                f"fc_layer {name!r} takes {weight.shape[1]} features but the layer has {c} "
                f"channels; DFF scores concepts with the classifier that follows this layer"
            )
        out = weights @ weight.to(weights).T
        return out if bias is None else out + bias.to(weights)

    def postprocess(
        self,
        raws: list[torch.Tensor],
        size: tuple[int, ...],
        do_upsample: bool,
        do_normalize: bool,
    ) -> torch.Tensor:
        """Concept maps (N, K, *grid) -> (N, K, *size) (upsampled each) -> each concept
        divided by its peak over the batch; ``concepts`` is set from them."""
        raw = work(raws[0])
        n, k = raw.shape[:2]
        maps = upsample(raw.flatten(0, 1), size).view(n, k, *size) if do_upsample else raw
        maps = self.normalize_maps(maps) if do_normalize else maps
        found = self._found
        self.concepts = Concepts(
            maps,
            found["weights"].to(maps.dtype),  # type: ignore[union-attr]
            None if found["scores"] is None else found["scores"].to(maps.dtype),
            found["error"].to(maps.dtype),  # type: ignore[union-attr]
        )
        return maps

    def normalize_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, K, *size) maps, each concept divided by its largest value over the batch
        (a concept that is zero everywhere stays zero)."""
        peak = maps.transpose(0, 1).flatten(1).amax(1)
        peak = torch.where(peak > 0, peak, 1).view(1, -1, *([1] * (maps.dim() - 2)))
        return maps / peak
