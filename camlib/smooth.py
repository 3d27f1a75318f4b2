"""Smoothing around any method: SmoothGrad-style noise and horizontal-flip averaging.

:class:`Smooth` wraps an explainer (a built-in or a registered one) and averages its
un-normalised maps over copies of the input, then normalises once::

    smooth = camlib.Smooth(camlib.GradCAM(model, "layer4"), samples=16, noise=0.1, flip=True)
    maps = smooth(images)

.. math:: \\bar L(x) = \\frac{1}{|T|} \\sum_{t \\in T} t^{-1}\\big(L(t(x) + \\epsilon_t)\\big),
          \\quad \\epsilon_t \\sim \\mathcal{N}(0, \\sigma^2), \\;
          \\sigma = \\text{noise} \\cdot (\\max x - \\min x)

with T the identity (and, with ``flip=True``, the horizontal flip, whose map is flipped
back). The targets are fixed on the clean input first, so every copy explains the same
class. One sample with no noise and no flip is exactly the plain method.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Explainer, MethodError, _as_args
from .capture import run_forward
from .inputs import check_inputs
from .targets import Targets, check_targets


class Smooth:
    """Average an explainer's maps over noisy and/or flipped copies of the input.

    Args:
        explainer: any :class:`~camlib.Explainer`.
        samples: noisy copies per image.
        noise: the noise's standard deviation as a fraction of each image's value range
            (``max - min``); 0 for none.
        flip: also explain the horizontally flipped copies (their maps flipped back).
        batch_size: images per call of the explainer (``None``: all copies at once). An
            explainer whose maps depend on the whole batch (``batch_independent = False``:
            DFF) needs every copy in one call, so a smaller ``batch_size`` or a callable
            target (one copy per call) raises :class:`~camlib.errors.MethodError`.
        seed: seeds the noise, so a call is reproducible.

    Attributes:
        classes, scores: as for the wrapped explainer, from the clean input.
    """

    def __init__(
        self,
        explainer: Explainer,
        *,
        samples: int = 8,
        noise: float = 0.1,
        flip: bool = False,
        batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(explainer, Explainer):
            raise MethodError(
                f"Smooth wraps an explainer such as camlib.GradCAM(model, layer), got "
                f"{type(explainer).__name__}"
            )
        if not isinstance(samples, int) or samples < 1:
            raise MethodError(f"samples must be a positive int, got {samples!r}")
        if not noise >= 0:
            raise MethodError(f"noise must be >= 0 (a fraction of the input range), got {noise!r}")
        if batch_size is not None and batch_size < 1:
            raise MethodError(f"batch_size must be a positive int or None, got {batch_size!r}")
        self.explainer, self.samples, self.noise, self.flip = explainer, samples, noise, flip
        self.batch_size, self.seed = batch_size, seed
        self.classes: torch.Tensor | None = None
        self.scores: torch.Tensor | None = None

    def __enter__(self) -> Smooth:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.explainer.close()

    def __repr__(self) -> str:
        return (
            f"Smooth({self.explainer!r}, samples={self.samples}, noise={self.noise}, "
            f"flip={self.flip})"
        )

    def __call__(
        self,
        inputs: torch.Tensor,
        targets: Targets = None,
        *,
        upsample: bool = True,
        normalize: bool = True,
        additional_forward_args: Any = None,
    ) -> torch.Tensor:
        """Explain a batch as the wrapped explainer does (same arguments, same output)."""
        ex = self.explainer
        self.classes = self.scores = None
        inputs = check_inputs(ex.model, inputs, ex._first_conv)
        n = inputs.shape[0]
        checked = check_targets(targets, n)
        self._check_one_call(checked, n)
        args = _as_args(additional_forward_args)
        with torch.inference_mode(False), torch.no_grad():
            inputs = inputs.clone() if inputs.is_inference() else inputs
            if not callable(checked):  # fix the classes on the clean input
                cap = run_forward(ex.model, inputs, checked, graph="none", forward_args=args)
                self.classes, self.scores = cap.classes, cap.scores
                checked = cap.classes.tolist()  # type: ignore[union-attr]
            copies = self._copies(inputs)
        per = len(copies)
        step = per if self.batch_size is None else max(1, self.batch_size // n)
        total = None
        for start in range(0, per, step):
            chunk = copies[start : start + step]
            batch = torch.cat([x for x, _ in chunk])
            if callable(checked):
                parts = [
                    ex(
                        x,
                        checked,
                        upsample=upsample,
                        normalize=False,
                        additional_forward_args=additional_forward_args,
                    )
                    for x, _ in chunk
                ]
            else:
                big = ex(
                    batch,
                    checked * len(chunk),
                    upsample=upsample,
                    normalize=False,
                    additional_forward_args=_repeat(args, len(chunk), n),
                )
                parts = list(big.split(n))
            for (_, flipped), maps in zip(chunk, parts, strict=True):
                maps = maps.flip(-1) if flipped else maps
                total = maps.clone() if total is None else total.add_(maps)
        if callable(checked):
            self.classes, self.scores = ex.classes, ex.scores
        mean = total / per  # type: ignore[operator]
        return ex.normalize_maps(mean) if normalize else mean

    def _check_one_call(self, targets: Targets, n: int) -> None:
        """An explainer whose maps depend on the whole batch (``batch_independent = False``,
        e.g. DFF, whose concepts are factorised jointly) must see every copy in one call:
        maps of separate calls do not correspond, so their average would mean nothing."""
        if getattr(self.explainer, "batch_independent", True):
            return
        copies = self.samples * (2 if self.flip else 1)
        per_call = 1 if callable(targets) else copies
        if self.batch_size is not None:
            per_call = min(per_call, max(1, self.batch_size // n))
        if per_call >= copies:
            return
        how = (
            "a callable target, which Smooth evaluates one copy per call"
            if callable(targets)
            else f"batch_size={self.batch_size}, which explains {per_call} of the {copies} "
            f"copies of these {n} image(s) per call"
        )
        raise MethodError(
            f"Smooth cannot split the copies of {type(self.explainer).__name__} over several "
            f"calls ({how}): it explains each call's batch jointly (batch_independent = "
            f"False), so maps of separate calls do not correspond and cannot be averaged. Use "
            f"batch_size=None and class targets."
        )

    def _copies(self, inputs: torch.Tensor) -> list[tuple[torch.Tensor, bool]]:
        gen = torch.Generator(device=inputs.device).manual_seed(self.seed)
        span = (inputs.flatten(1).amax(1) - inputs.flatten(1).amin(1)).view(
            -1, *[1] * (inputs.dim() - 1)
        )
        copies = []
        for _ in range(self.samples):
            x = inputs
            if self.noise > 0:
                eps = torch.randn(
                    inputs.shape, generator=gen, device=inputs.device, dtype=inputs.dtype
                )
                x = inputs + eps * (self.noise * span)
            copies.append((x, False))
            if self.flip:
                copies.append((x.flip(-1), True))
        return copies


def _repeat(args: tuple, times: int, batch: int) -> Any:
    """Batched forward arguments repeated for ``times`` stacked copies of the batch."""
    if not args:
        return None
    out = tuple(
        a.repeat(times, *[1] * (a.dim() - 1))
        if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == batch
        else a
        for a in args
    )
    return out
