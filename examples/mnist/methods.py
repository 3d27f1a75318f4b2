"""Every registered camlib method on the same images: the comparison table and the
class-discriminative two-digit test.

Each method explains the improved model's layer ``block3`` (methods without a layer, such
as Guided Backprop, the input). Signed methods (Guided Backprop, Guided Grad-CAM) give
(N, C, H, W) maps in [-1, 1]; where a metric needs a heatmap they are reduced to
:math:`\\sum_c |M_c|`, as is customary. Score-CAM and Ablation-CAM cost one forward pass
per (image, channel), so they run on the first ``n_perturbation`` images of each test;
the tables give each method's ``n``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

import camlib
from camlib import metrics
from camlib.methods.families import PerturbationCAM

from .data import batches, paste_pairs

LABELS = {
    "cam": "CAM",
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "xgradcam": "XGrad-CAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "eigencam": "Eigen-CAM",
    "scorecam": "Score-CAM",
    "ablationcam": "Ablation-CAM",
    "guided_gradcam": "Guided Grad-CAM",
    "guided_backprop": "Guided Backprop",
}
"""Display names, in the order the tables list the built-in methods."""


def label(name: str) -> str:
    return LABELS.get(name, name)


def method_names() -> list[str]:
    """``camlib.available_methods()``, built-ins in :data:`LABELS` order, plugins last."""
    names = camlib.available_methods()
    order = {name: i for i, name in enumerate(LABELS)}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def is_perturbation(name: str) -> bool:
    return issubclass(camlib.get_method(name), PerturbationCAM)


def is_signed(name: str) -> bool:
    return bool(getattr(camlib.get_method(name), "signed", False))


def make(model: nn.Module, name: str, layer: str) -> camlib.Explainer:
    cls = camlib.get_method(name)
    return cls(model, target_layer=layer) if cls.uses_layer else cls(model)


def heatmaps(
    model: nn.Module,
    name: str,
    x: torch.Tensor,
    targets: torch.Tensor,
    layer: str,
    chunk: int,
    *,
    upsample: bool = True,
) -> torch.Tensor:
    """(N, H, W) maps of ``name`` for ``targets``, ``chunk`` images per call; signed maps
    as :math:`\\sum_c |M_c|`. With ``upsample=False`` (layer methods only): the raw maps."""
    ex = make(model, name, layer)
    kw = {} if upsample else {"upsample": False, "normalize": False}
    out = []
    for idx in batches(len(x), chunk):
        m = ex(x[idx], targets=targets[idx], **kw)
        out.append(m.abs().sum(1) if is_signed(name) else m)
    return torch.cat(out)


@dataclass
class Sizes:
    """How many images each method explains in one test."""

    n: int
    n_perturbation: int

    def of(self, name: str) -> int:
        return min(self.n, self.n_perturbation) if is_perturbation(name) else self.n


def _mean(x: torch.Tensor) -> float | None:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if len(x) else None


# -- the comparison table ---------------------------------------------------------------------


def pointing_table(
    model: nn.Module,
    layer: str,
    canvases: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    sizes: Sizes,
    chunk: int,
    cell: int,
    bar: Callable = iter,
) -> dict:
    """The pointing game on translated digits (true class), every method; also how far
    each method's normalised maps are from Grad-CAM's on the same canvases."""
    out = {}
    ref = heatmaps(model, "gradcam", canvases, labels, layer, chunk)
    for name in bar(method_names()):
        n = sizes.of(name)
        maps = heatmaps(model, name, canvases[:n], labels[:n], layer, chunk)
        diff = (camlib.normalize_minmax(maps) - camlib.normalize_minmax(ref[:n])).abs()
        out[name] = {
            "max_abs_diff_to_gradcam": float(diff.max()),
            "hit": float(metrics.pointing_game(maps, boxes[:n]).float().mean()),
            "hit_one_cell": float(
                metrics.pointing_game(maps, boxes[:n], tolerance=cell).float().mean()
            ),
            "energy_in_box": _mean(metrics.box_energy_fraction(maps, boxes[:n])),
            "n": n,
        }
    return out


def randomisation_table(
    trained: nn.Module,
    randomised: nn.Module,
    layer: str,
    x: torch.Tensor,
    y: torch.Tensor,
    sizes: Sizes,
    chunk: int,
    bar: Callable = iter,
) -> dict:
    """Spearman rank correlation between the maps of the trained and of the fully
    re-initialised model, every method (true class)."""
    out = {}
    for name in bar(method_names()):
        n = sizes.of(name)
        a = heatmaps(trained, name, x[:n], y[:n], layer, chunk)
        b = heatmaps(randomised, name, x[:n], y[:n], layer, chunk)
        rho = metrics.rank_correlation(a, b)
        out[name] = {
            "rank_corr": _mean(rho),
            "abs_rank_corr": _mean(rho.abs()),
            "undefined_constant_maps": int(rho.isnan().sum()),
            "n": n,
        }
    return out


class _ForwardCounter:
    """Counts the images the model's forward sees (a forward hook, removed on exit)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.images = model, 0

    def __enter__(self) -> _ForwardCounter:
        def hook(module, args, output) -> None:
            self.images += int(args[0].shape[0])

        self.handle = self.model.register_forward_hook(hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def time_per_image(
    model: nn.Module,
    layer: str,
    x: torch.Tensor,
    y: torch.Tensor,
    repeats: int,
    bar: Callable = iter,
) -> dict:
    """Wall time of one call on the same batch (``time.perf_counter``, median of
    ``repeats`` after a warm-up call on two images), divided by the batch size; and the
    model forward passes per image, counted in a separate call."""
    out = {}
    for name in bar(method_names()):
        ex = make(model, name, layer)
        ex(x[:2], targets=y[:2])  # warm-up: first-call allocations, lazy imports
        with _ForwardCounter(model) as counter:
            ex(x, targets=y)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            ex(x, targets=y)
            times.append(time.perf_counter() - t0)
        out[name] = {
            "ms_per_image": 1000 * statistics.median(times) / len(x),
            "forwards_per_image": counter.images / len(x),
            "batch": len(x),
            "repeats": repeats,
        }
    base = out.get("gradcam", {}).get("ms_per_image")
    for r in out.values():
        r["relative_to_gradcam"] = r["ms_per_image"] / base if base else None
    return out


# -- the two-digit test -----------------------------------------------------------------------


def two_digit_canvases(
    x: torch.Tensor, y: torch.Tensor, n: int, size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` canvases with two test digits of *different* classes at random, non-overlapping
    places. Returns canvases, the two (M, 4) boxes and the two (M,) labels."""
    first = torch.randperm(len(x), generator=generator)[:n]
    second = torch.randint(0, len(x), (len(first),), generator=generator)
    same = y[second] == y[first]
    while same.any():  # redraw the partners of the same class
        second[same] = torch.randint(0, len(x), (int(same.sum()),), generator=generator)
        same = y[second] == y[first]
    canvases, box_a, box_b, kept = paste_pairs(x[first], x[second], size, generator)
    return canvases, box_a, box_b, y[first][kept], y[second][kept]


def two_digit_test(
    model: nn.Module,
    layer: str,
    canvases: torch.Tensor,
    boxes: tuple[torch.Tensor, torch.Tensor],
    labels: tuple[torch.Tensor, torch.Tensor],
    sizes: Sizes,
    chunk: int,
    cell: int,
    shown: int = 4,
    bar: Callable = iter,
) -> tuple[dict, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Explain each of the two digits' classes in turn; a hit is the map's maximum inside
    that class's digit box.

    Returns the per-method rates and the maps of the first ``shown`` canvases for the
    figure (``{method: (maps for the first digit, maps for the second)}``).
    """
    box_a, box_b = boxes
    y_a, y_b = labels
    out, examples = {}, {}
    for name in bar(method_names()):
        n = sizes.of(name)
        ma = heatmaps(model, name, canvases[:n], y_a[:n], layer, chunk)
        mb = heatmaps(model, name, canvases[:n], y_b[:n], layer, chunk)
        examples[name] = (ma[:shown], mb[:shown])
        hit = {}
        for key, tol in (("hit", 0), ("hit_one_cell", cell)):
            ha = metrics.pointing_game(ma, box_a[:n], tolerance=tol)
            hb = metrics.pointing_game(mb, box_b[:n], tolerance=tol)
            hit[key] = float(torch.cat([ha, hb]).float().mean())
            if tol == 0:
                hit["both_hit"] = float((ha & hb).float().mean())
        wrong = torch.cat(
            [metrics.pointing_game(ma, box_b[:n]), metrics.pointing_game(mb, box_a[:n])]
        )
        same = (ma.flatten(1).argmax(1) == mb.flatten(1).argmax(1)).float().mean()
        out[name] = {
            **hit,
            "other_digit": float(wrong.float().mean()),
            "same_peak_for_both_classes": float(same),
            "n_canvases": n,
            "n_maps": 2 * n,
        }
    return out, examples


@torch.no_grad()
def model_view(model: nn.Module, canvases: torch.Tensor, y_a, y_b, chunk: int) -> dict:
    """What the model itself makes of the two-digit canvases."""
    logits = torch.cat([model(canvases[idx]) for idx in batches(len(canvases), chunk)])
    top2 = logits.topk(2, dim=1).indices
    pred = top2[:, 0]
    both = ((top2 == y_a[:, None]).any(1) & (top2 == y_b[:, None]).any(1)).float().mean()
    return {
        "predicted_one_of_the_two": float(((pred == y_a) | (pred == y_b)).float().mean()),
        "top2_are_the_two": float(both),
        "predicted_class_counts": torch.bincount(pred, minlength=10).tolist(),
    }


def order_for_table(rows: dict, names: Sequence[str] | None = None) -> list[str]:
    """Method names of ``rows`` in table order."""
    names = list(names or method_names())
    return [n for n in names if n in rows] + sorted(set(rows) - set(names))
