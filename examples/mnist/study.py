"""The MNIST study, stage by stage, and its command line.

``python -m examples.mnist --data-root DIR --out DIR [--quick] [--seed N]`` writes
``report.md``, its figures, ``metrics.json`` and the two checkpoints to ``--out``.
Every random choice (data subset, initialisation, batch order, augmentation, canvas
positions, random maps, re-initialised weights) comes from ``--seed``, so a rerun with
the same seed, thread count and versions gives the same numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import camlib
from camlib import metrics

from . import figures, methods
from .data import BACKGROUND, DatasetMissing, Mnist, batches, load_mnist, paste_on_canvas, shift
from .models import BaselineNet, ImprovedNet, cascade, count_parameters, randomized_copy
from .report import write_report
from .train import TrainConfig, confusion_matrix, evaluate, per_class_accuracy, train


@dataclass
class Settings:
    """Sizes of every stage. :meth:`default` is the full study, :meth:`quick` the smoke run."""

    n_train: int | None = None
    """Training images (``None``: all in the files)."""
    n_test: int | None = None
    """Test images (``None``: all 10,000)."""
    baseline: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, max_lr=3e-3))
    improved: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=10, max_lr=3e-3, weight_decay=0.05, augment=True, label_smoothing=0.1
        )
    )
    n_mistakes_shown: int = 12
    n_cam_check: int = 1000
    n_pointing: int | None = None
    """Translated test digits for the pointing game (``None``: the whole test set)."""
    canvas: int = 56
    n_sanity: int = 500
    n_sanity_shown: int = 4
    n_faithfulness: int = 300
    """Test digits for deletion/insertion (every method)."""
    steps: int = 28
    n_randomisation: int = 200
    """Test digits for the every-method randomisation test (trained vs all re-initialised)."""
    n_methods_pointing: int = 1000
    """Translated digits (the first of the pointing game's) for the every-method table."""
    n_pairs: int = 500
    """Two-digit canvases for the class-discriminative test."""
    n_perturbation: int = 100
    """At most this many canvases per test for Score-CAM and Ablation-CAM (one forward pass
    per channel and image: 96 per map)."""
    n_perturbation_digits: int | None = None
    """The same cap for the 28x28 tests (deletion/insertion, randomisation); ``None``: none."""
    n_timing: int = 32
    """Test digits in the batch every method is timed on."""
    timing_repeats: int = 3
    chunk: int = 500
    """Images per explainer call (bounds memory)."""
    max_shift_px: int = 3

    @classmethod
    def default(cls) -> Settings:
        return cls()

    @classmethod
    def quick(cls) -> Settings:
        base = cls()
        return replace(
            base,
            n_train=4000,
            n_test=2000,
            baseline=replace(base.baseline, epochs=1, batch_size=64),
            improved=replace(base.improved, epochs=2, batch_size=64),
            n_mistakes_shown=6,
            n_cam_check=64,
            n_pointing=256,
            n_sanity=32,
            n_sanity_shown=3,
            n_faithfulness=32,
            steps=10,
            n_randomisation=16,
            n_methods_pointing=24,
            n_pairs=24,
            n_perturbation=2,
            n_perturbation_digits=4,
            n_timing=4,
            timing_repeats=1,
            chunk=256,
        )


class Stopwatch:
    """Wall time of each stage, printed as it ends and kept for the report."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        print(f"   {name}: {self.seconds[name]:.1f} s", flush=True)

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 2)


def _bar(iterable, desc: str, progress: bool, total: int | None = None):
    return tqdm(
        iterable, desc=desc, total=total, disable=not progress, dynamic_ncols=True, leave=False
    )


def _chunked(n: int, chunk: int) -> list[torch.Tensor]:
    return list(batches(n, chunk))


# -- stages --------------------------------------------------------------------------------


def measure(model, data: Mnist, seed: int, max_shift: int) -> tuple[dict, object]:
    """Test accuracy, loss, per-class accuracy, confusion matrix, and accuracy under
    random shifts of up to ``max_shift`` pixels (each direction)."""
    ev = evaluate(model, data.test_x, data.test_y)
    cm = confusion_matrix(data.test_y, ev.predictions)
    per_class = per_class_accuracy(cm)
    g = torch.Generator().manual_seed(seed)
    n = len(data.test_x)
    dx = torch.randint(-max_shift, max_shift + 1, (n,), generator=g)
    dy = torch.randint(-max_shift, max_shift + 1, (n,), generator=g)
    shifted = evaluate(model, shift(data.test_x, dx, dy), data.test_y)
    result = {
        "test_accuracy": ev.accuracy,
        "test_loss": ev.loss,
        "test_errors": int((ev.predictions != data.test_y).sum()),
        "per_class_accuracy": {str(k): float(v) for k, v in enumerate(per_class)},
        "confusion_matrix": cm.tolist(),
        f"shifted_test_accuracy_max{max_shift}px": shifted.accuracy,
        "n_parameters": count_parameters(model),
    }
    return result, (ev, cm, per_class)


def explain_mistakes(
    model, layer: str, data: Mnist, ev, k: int, chunk: int, title: str, path: Path
) -> dict:
    """Grad-CAM for the predicted and the true class of every mistake (summary numbers) and
    the library's gallery (:func:`camlib.viz.mistakes`) of the ``k`` most confident ones."""
    wrong = (ev.predictions != data.test_y).nonzero()[:, 0]
    if len(wrong) == 0:
        return {"n_mistakes": 0, "n_shown": 0}
    conf = ev.probabilities[wrong, ev.predictions[wrong]]
    wrong = wrong[conf.argsort(descending=True, stable=True)]  # most confident first
    pred_all, true_all = ev.predictions[wrong], data.test_y[wrong]
    cam_pred, cam_true = [], []
    with camlib.GradCAM(model, target_layer=layer) as gradcam:
        for idx in batches(len(wrong), chunk):
            x = data.test_x[wrong[idx]]
            cam_pred.append(gradcam(x, targets=pred_all[idx]))
            cam_true.append(gradcam(x, targets=true_all[idx]))
    cam_pred, cam_true = torch.cat(cam_pred), torch.cat(cam_true)
    fig, shown = camlib.viz.mistakes(
        model,
        data.test_x,
        data.test_y,
        method="gradcam",
        k=k,
        target_layer=layer,
        images=figures.display(data.test_x),
        return_indices=True,
        per_row=3,
        cell=1.7,
        title=title,
    )
    figures.save(fig, path)

    def empty(maps: torch.Tensor) -> float:  # share of all-zero maps (no positive evidence)
        return float((maps.flatten(1).amax(1) == 0).float().mean())

    return {
        "n_mistakes": len(wrong),
        "n_shown": len(shown),
        "shown_test_indices": shown.tolist(),
        "gradcam_empty_map_fraction_pred": empty(cam_pred),
        "gradcam_empty_map_fraction_true": empty(cam_true),
        "gradcam_pred_vs_true_rank_corr_mean": _nanmean(
            metrics.rank_correlation(cam_pred, cam_true)
        ),
    }


def cam_vs_gradcam(model, layer: str, data: Mnist, n: int, path: Path) -> dict:
    """CAM and Grad-CAM on the same images: raw CAM == Grad-CAM x h*w on a GAP-linear head."""
    x = data.test_x[:n]
    cam_raw = camlib.CAM(model, target_layer=layer)(x, upsample=False, normalize=False)
    gc_raw = camlib.GradCAM(model, target_layer=layer)(x, upsample=False, normalize=False)
    hw = cam_raw.shape[-2] * cam_raw.shape[-1]
    rel = _rel_diff(cam_raw, gc_raw * hw)
    cam_n = camlib.normalize_minmax(camlib.upsample(cam_raw, x.shape[-2:]))
    gc_n = camlib.normalize_minmax(camlib.upsample(gc_raw, x.shape[-2:]))
    k = 6
    figures.cam_vs_gradcam(x[:k], cam_n[:k], gc_n[:k], cam_raw, gc_raw * hw, rel, hw, path)
    return {
        "max_rel_diff": rel,
        "max_abs_diff_normalized_maps": float((cam_n - gc_n).abs().max()),
        "h_times_w": hw,
        "n_images": len(x),
        "definition": "max over images of max|CAM - h*w*GradCAM| / max|CAM| (raw maps)",
    }


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    peak = a.flatten(1).abs().amax(1).clamp_min(1e-12)
    return float(((a - b).flatten(1).abs().amax(1) / peak).max())


def _nanmean(x: torch.Tensor) -> float | None:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if len(x) else None


def pointing_game(
    model, layer: str, data: Mnist, s: Settings, seed: int, progress: bool, path: Path
) -> tuple[dict, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Paste test digits on a blank canvas, explain the true class, point with the maximum.

    Returns the results and ``(canvases, boxes, labels)`` for the every-method table."""
    n = len(data.test_x) if s.n_pointing is None else min(s.n_pointing, len(data.test_x))
    g = torch.Generator().manual_seed(seed)
    canvases, boxes = paste_on_canvas(data.test_x[:n], s.canvas, g)
    labels = data.test_y[:n]
    size = (s.canvas, s.canvas)
    gc_maps, cam_maps, rel = [], [], 0.0
    gradcam = camlib.GradCAM(model, target_layer=layer)
    cam = camlib.CAM(model, target_layer=layer)
    for idx in _bar(_chunked(n, s.chunk), "pointing game", progress):
        x, t = canvases[idx], labels[idx]
        g_raw = gradcam(x, targets=t, upsample=False, normalize=False)
        c_raw = cam(x, targets=t, upsample=False, normalize=False)
        rel = max(rel, _rel_diff(c_raw, g_raw * g_raw.shape[-1] * g_raw.shape[-2]))
        gc_maps.append(camlib.upsample(g_raw, size))
        cam_maps.append(camlib.upsample(c_raw, size))
    gc_maps, cam_maps = torch.cat(gc_maps), torch.cat(cam_maps)
    cell = s.canvas // g_raw.shape[-1]  # one cell of the layer's map, in pixels
    hits_gc = metrics.pointing_game(gc_maps, boxes)
    hits_cam = metrics.pointing_game(cam_maps, boxes)
    area = metrics.box_area_fraction(boxes, size)
    canvas_ev = evaluate(model, canvases, labels)
    # rank of the true class among the 10 logits (1 = top): how far "1" dominates
    true_p = canvas_ev.probabilities.gather(1, labels[:, None])
    canvas_ranks = (canvas_ev.probabilities > true_p).sum(1) + 1
    blank = torch.full((1, 1, *size), BACKGROUND)
    with torch.no_grad():
        blank_class = int(model(blank).argmax(1))
    # figure: the first digits, then misses if there are any
    misses = (~hits_gc).nonzero()[:, 0][:6]
    shown = torch.cat([torch.arange(min(12 - len(misses), n)), misses])
    names = [f"digit {int(labels[i])}: {'hit' if hits_gc[i] else 'MISS'}" for i in shown]
    maps_shown = camlib.normalize_minmax(gc_maps[shown])
    figures.pointing_examples(
        canvases[shown],
        maps_shown,
        boxes[shown],
        hits_gc[shown],
        names,
        f"Pointing game on {s.canvas}x{s.canvas} translated digits: Grad-CAM of the true class "
        f"(box: digit's ink; x: map maximum)",
        path,
    )
    return {
        "gradcam": float(hits_gc.float().mean()),
        "cam": float(hits_cam.float().mean()),
        "random_baseline": float(area.mean()),
        "gradcam_energy_in_box": _nanmean(metrics.box_energy_fraction(gc_maps, boxes)),
        "cam_energy_in_box": _nanmean(metrics.box_energy_fraction(cam_maps, boxes)),
        "gradcam_tolerance_one_cell": float(
            metrics.pointing_game(gc_maps, boxes, tolerance=cell).float().mean()
        ),
        "map_cell_px": cell,
        "gradcam_misses_by_true_class": torch.bincount(labels[~hits_gc], minlength=10).tolist(),
        "canvas_accuracy": canvas_ev.accuracy,
        "canvas_predicted_class_counts": torch.bincount(
            canvas_ev.predictions, minlength=10
        ).tolist(),
        "blank_canvas_predicted_class": blank_class,
        "canvas_true_class_rank_mean": float(canvas_ranks.float().mean()),
        "canvas_true_class_top1": float((canvas_ranks == 1).float().mean()),
        "canvas_true_class_top3": float((canvas_ranks <= 3).float().mean()),
        "cam_vs_gradcam_max_rel_diff_on_canvas": rel,
        "n_images": n,
        "canvas_size": s.canvas,
        "target": "true class",
        "tolerance_px": 0,
    }, (canvases, boxes, labels)


def sanity_check(
    model,
    layer: str,
    data: Mnist,
    s: Settings,
    seed: int,
    progress: bool,
    panel_path: Path,
    curve_path: Path,
) -> dict:
    """Model-parameter randomisation test with cascading re-initialisation (Adebayo et al.)."""
    x, y = data.test_x[: s.n_sanity], data.test_y[: s.n_sanity]
    layers = cascade(model)
    short = ["trained"] + [
        (f"re-init {name}" if i == 0 else f"... + {name}")
        if i < len(layers) - 1
        else "all re-initialised"
        for i, name in enumerate(layers)
    ]
    stages = ["trained"] + [
        "re-init " + ", ".join(layers[: i + 1]) + (" (all)" if i == len(layers) - 1 else "")
        for i in range(len(layers))
    ]
    models = [model]
    for i, name in enumerate(layers):  # cumulative: each stage keeps the previous draws
        models.append(randomized_copy(models[-1], [name], seed + i))
    gc_maps, gbp_maps = [], []
    for m in _bar(models, "sanity check", progress):
        gc_maps.append(camlib.GradCAM(m, target_layer=layer)(x, targets=y))
        gbp_maps.append(camlib.GuidedBackprop(m)(x, targets=y))
    corr_gc = [metrics.rank_correlation(gc_maps[0], m) for m in gc_maps]
    corr_gbp = [
        metrics.rank_correlation(gbp_maps[0].abs().sum(1), m.abs().sum(1)) for m in gbp_maps
    ]
    k = s.n_sanity_shown
    figures.sanity_panel(
        x[:k], short, [m[:k] for m in gc_maps], [m[:k] for m in gbp_maps], panel_path
    )
    names = {"Grad-CAM": corr_gc, "Guided Backprop (|.| summed over channels)": corr_gbp}
    figures.sanity_curve(
        short,
        {name: [_nanmean(c) for c in cs] for name, cs in names.items()},
        {
            name: [float(np.nanstd(c.numpy())) if (~c.isnan()).any() else 0.0 for c in cs]
            for name, cs in names.items()
        },
        curve_path,
    )
    xr, yr = data.test_x[: s.n_randomisation], data.test_y[: s.n_randomisation]
    every = methods.randomisation_table(
        model,
        models[-1],
        layer,
        xr,
        yr,
        methods.Sizes(len(xr), s.n_perturbation_digits or len(xr)),
        s.chunk,
        lambda it: _bar(it, "randomisation, every method", progress),
    )
    return {
        "methods": every,
        "methods_n_images": len(xr),
        "gradcam_randomization_rank_corr": _nanmean(corr_gc[-1]),
        "guided_backprop_randomization_rank_corr": _nanmean(corr_gbp[-1]),
        "gradcam_randomization_abs_rank_corr": _nanmean(corr_gc[-1].abs()),
        "guided_backprop_randomization_abs_rank_corr": _nanmean(corr_gbp[-1].abs()),
        "gradcam_undefined_constant_maps": int(corr_gc[-1].isnan().sum()),
        "cascade": {
            stage: {"gradcam": _nanmean(a), "guided_backprop": _nanmean(b)}
            for stage, a, b in zip(stages, corr_gc, corr_gbp, strict=True)
        },
        "n_images": len(x),
        "statistic": "mean over images of the Spearman rank correlation between the maps of "
        "the trained and of the re-initialised model (true class)",
    }


def faithfulness(
    model, layer: str, data: Mnist, s: Settings, seed: int, progress: bool, path: Path
) -> tuple[dict, dict, dict]:
    """Deletion and insertion curves for every registered method and a random map (signed
    methods as |.| summed over channels)."""
    x, y = data.test_x[: s.n_faithfulness], data.test_y[: s.n_faithfulness]
    g = torch.Generator().manual_seed(seed)
    sizes = methods.Sizes(len(x), s.n_perturbation_digits or len(x))
    maps = {
        name: methods.heatmaps(
            model, name, x[: sizes.of(name)], y[: sizes.of(name)], layer, s.chunk
        )
        for name in _bar(methods.method_names(), "maps for deletion/insertion", progress)
    }
    maps["random"] = torch.rand(x.shape[0], *x.shape[-2:], generator=g)
    deletion, insertion = {}, {}
    for name in _bar(list(maps), "deletion/insertion", progress):
        n = len(maps[name])
        deletion[name] = metrics.deletion_curve(
            model, x[:n], maps[name], y[:n], s.steps, BACKGROUND, batch_size=s.chunk
        )
        insertion[name] = metrics.insertion_curve(
            model, x[:n], maps[name], y[:n], s.steps, BACKGROUND, batch_size=s.chunk
        )

    def shown(name: str) -> str:
        return "random map" if name == "random" else methods.label(name)

    figures.deletion_insertion(
        {shown(k): c for k, c in deletion.items()},
        {shown(k): c for k, c in insertion.items()},
        path,
    )
    del_auc = {k: float(metrics.auc(c).mean()) for k, c in deletion.items()}
    ins_auc = {k: float(metrics.auc(c).mean()) for k, c in insertion.items()}
    info = {
        "n_images": len(x),
        "steps": s.steps,
        "baseline": "black pixels (the normalised value of 0) for deletion; insertion starts "
        "from an all-black canvas",
        "target": "true class, softmax probability",
        "signed_maps": "Guided Backprop and Guided Grad-CAM as |value| summed over channels",
        "n_images_by_method": {k: len(v) for k, v in maps.items()},
    }
    return del_auc, ins_auc, info


def two_digit(
    model, layer: str, data: Mnist, s: Settings, seed: int, progress: bool, path: Path
) -> dict:
    """The class-discriminative test: two digits per canvas, each class explained in turn."""
    g = torch.Generator().manual_seed(seed)
    canvases, box_a, box_b, y_a, y_b = methods.two_digit_canvases(
        data.test_x, data.test_y, s.n_pairs, s.canvas, g
    )
    raw = camlib.GradCAM(model, target_layer=layer)(canvases[:1], upsample=False)
    cell = s.canvas // raw.shape[-1]
    rates, examples = methods.two_digit_test(
        model,
        layer,
        canvases,
        (box_a, box_b),
        (y_a, y_b),
        methods.Sizes(len(canvases), s.n_perturbation),
        s.chunk,
        cell,
        shown=4,
        bar=lambda it: _bar(it, "two-digit test", progress),
    )
    k = min(4, len(canvases))
    figures.two_digit_examples(
        canvases[:k],
        (box_a[:k], box_b[:k]),
        (y_a[:k], y_b[:k]),
        {methods.label(n): examples[n] for n in ("gradcam", "eigencam", "guided_backprop")},
        path,
    )
    return {
        "methods": rates,
        "model": methods.model_view(model, canvases, y_a, y_b, s.chunk),
        "n_canvases": len(canvases),
        "n_requested": s.n_pairs,
        "canvas_size": s.canvas,
        "min_gap_px": 8,
        "map_cell_px": cell,
        "random_baseline": float(
            torch.cat(
                [
                    metrics.box_area_fraction(box_a, (s.canvas, s.canvas)),
                    metrics.box_area_fraction(box_b, (s.canvas, s.canvas)),
                ]
            ).mean()
        ),
        "definition": "a hit is the maximum of the map for one digit's class inside that "
        "digit's ink box; both digits of every canvas are explained (2 maps per canvas)",
    }


# -- the whole study -------------------------------------------------------------------------


def versions() -> dict:
    import cv2
    import matplotlib
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "camlib": camlib.__version__,
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
        "opencv": cv2.__version__,
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def run_study(
    data_root: Path,
    out: Path,
    *,
    quick: bool,
    seed: int,
    download: bool = True,
    progress: bool = True,
) -> dict:
    """Run every stage and write ``out/report.md``, figures, ``metrics.json``, checkpoints."""
    s = Settings.quick() if quick else Settings.default()
    out.mkdir(parents=True, exist_ok=True)
    clock = Stopwatch()
    fig: dict[str, str] = {}

    def figpath(key: str, name: str) -> Path:
        fig[key] = name
        return out / name

    with clock("load data"):
        data = load_mnist(
            data_root, download=download, n_train=s.n_train, n_test=s.n_test, seed=seed
        )
    print(
        f"   {len(data.train_x)} training images (of {data.n_train_available} in the files), "
        f"{len(data.test_x)} test images",
        flush=True,
    )
    result: dict = {
        "seed": seed,
        "quick": quick,
        "n_train": len(data.train_x),
        "n_train_available": data.n_train_available,
        "n_test": len(data.test_x),
        "accuracy_unit": "fraction in [0, 1] (the report shows percent)",
        "versions": versions(),
    }

    # 1-4. the baseline, then the improved model: train, measure, explain the mistakes ----
    def study(name: str, model, config, train_seed: int, layer: str, title: str):
        with clock(f"{name}: train"):
            history = train(
                model,
                data.train_x,
                data.train_y,
                data.test_x,
                data.test_y,
                config,
                seed=train_seed,
                name=name,
                progress=progress,
            )
        with clock(f"{name}: measure"):
            res, (ev, cm, per_class) = measure(model, data, seed + 2, s.max_shift_px)
            res.update(
                architecture=repr(model),
                train_config=asdict(config),
                history=history.as_dict(),
                layer=layer,
            )
            _checkpoint(model, out / f"{name}.pt", res, seed)
        print(f"   {name} test accuracy {100 * res['test_accuracy']:.2f}%", flush=True)
        with clock(f"{name}: explain mistakes"):
            res["mistakes"] = explain_mistakes(
                model,
                layer,
                data,
                ev,
                s.n_mistakes_shown,
                s.chunk,
                title,
                figpath(f"{name}_mistakes", f"{name}_mistakes.png"),
            )
        result[name] = res
        return history, cm, per_class

    torch.manual_seed(seed)
    base_hist, base_cm, base_pc = study(
        "baseline",
        BaselineNet(),
        s.baseline,
        seed + 1,
        BaselineNet.CAM_LAYER,
        "Baseline: its most confident mistakes",
    )
    torch.manual_seed(seed)
    imp = ImprovedNet()
    imp_hist, imp_cm, imp_pc = study(
        "improved",
        imp,
        s.improved,
        seed + 3,
        ImprovedNet.CAM_LAYER,
        "Improved model: its most confident remaining mistakes",
    )
    result["improved"]["channels"] = list(imp.channels)
    figures.training_curves(
        {"baseline": base_hist.as_dict(), "improved": imp_hist.as_dict()},
        figpath("training_curves", "training_curves.png"),
    )
    figures.confusion_and_per_class(
        {"baseline": base_cm, "improved": imp_cm},
        {"baseline": base_pc, "improved": imp_pc},
        figpath("confusion", "confusion.png"),
    )

    # 4-5. checking the explanations --------------------------------------------------
    layer = ImprovedNet.CAM_LAYER
    with clock("CAM vs Grad-CAM"):
        result["cam_vs_gradcam"] = cam_vs_gradcam(
            imp, layer, data, s.n_cam_check, figpath("cam_vs_gradcam", "cam_vs_gradcam.png")
        )
    with clock("pointing game"):
        result["pointing_game"], (canvases, boxes, labels) = pointing_game(
            imp, layer, data, s, seed + 4, progress, figpath("pointing", "pointing_game.png")
        )
    with clock("pointing game, every method"):
        n = min(s.n_methods_pointing, len(canvases))
        result["pointing_game"]["methods"] = methods.pointing_table(
            imp,
            layer,
            canvases[:n],
            boxes[:n],
            labels[:n],
            methods.Sizes(n, s.n_perturbation),
            s.chunk,
            result["pointing_game"]["map_cell_px"],
            lambda it: _bar(it, "pointing game, every method", progress),
        )
        del canvases, boxes, labels
    with clock("two-digit test"):
        result["two_digit"] = two_digit(
            imp, layer, data, s, seed + 7, progress, figpath("two_digit", "two_digit.png")
        )
    with clock("sanity check"):
        result["sanity"] = sanity_check(
            imp,
            layer,
            data,
            s,
            seed + 5,
            progress,
            figpath("sanity_panel", "sanity_panel.png"),
            figpath("sanity_curve", "sanity_curve.png"),
        )
    with clock("deletion/insertion"):
        del_auc, ins_auc, info = faithfulness(
            imp,
            layer,
            data,
            s,
            seed + 6,
            progress,
            figpath("deletion_insertion", "deletion_insertion.png"),
        )
    result["deletion_auc"], result["insertion_auc"], result["deletion_insertion"] = (
        del_auc,
        ins_auc,
        info,
    )

    with clock("time per image"):
        idx = torch.arange(min(s.n_timing, len(data.test_x)))
        result["time_per_image"] = methods.time_per_image(
            imp,
            layer,
            data.test_x[idx],
            data.test_y[idx],
            s.timing_repeats,
            lambda it: _bar(it, "time per image", progress),
        )
    result["method_table"] = method_table(result)
    figures.method_bars(
        result["method_table"],
        {name: methods.label(name) for name in result["method_table"]},
        figpath("methods", "methods.png"),
    )

    with clock("report"):
        result["timings_s"] = dict(clock.seconds)
        result["total_seconds"] = clock.total()
        result["figures"] = fig
        (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        write_report(out / "report.md", result, s)
    result["timings_s"] = dict(clock.seconds)
    result["total_seconds"] = clock.total()
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def method_table(r: dict) -> dict:
    """One row per method: the numbers of every test, for the report and the docs."""
    pg, td, sn = r["pointing_game"]["methods"], r["two_digit"]["methods"], r["sanity"]["methods"]
    tp = r["time_per_image"]
    rows = {}
    for name in methods.order_for_table(pg):
        rows[name] = {
            "label": methods.label(name),
            "pointing": pg[name]["hit"],
            "pointing_n": pg[name]["n"],
            "two_digit": td[name]["hit"],
            "two_digit_one_cell": td[name]["hit_one_cell"],
            "two_digit_n_maps": td[name]["n_maps"],
            "deletion_auc": r["deletion_auc"][name],
            "insertion_auc": r["insertion_auc"][name],
            "randomization_rank_corr": sn[name]["rank_corr"],
            "ms_per_image": tp[name]["ms_per_image"],
            "forwards_per_image": tp[name]["forwards_per_image"],
            "relative_time": tp[name]["relative_to_gradcam"],
        }
    return rows


def _checkpoint(model, path: Path, res: dict, seed: int) -> None:
    torch.save(
        {
            "architecture": type(model).__name__,
            "state_dict": model.state_dict(),
            "test_accuracy": res["test_accuracy"],
            "seed": seed,
            "normalization": {"mean": 0.1307, "std": 0.3081},
        },
        path,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m examples.mnist",
        description="Train a baseline and an improved MNIST ConvNet, explain their mistakes "
        "with camlib, check the explanations, and write a report.",
    )
    p.add_argument(
        "--data-root",
        type=Path,
        default=Path("data"),
        help="torchvision data root holding MNIST/raw/ (downloaded there if "
        "missing; default: %(default)s)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/mnist"),
        help="output folder for report.md, figures, metrics.json, checkpoints "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 4,000 training and 2,000 test images, one epoch for the "
        "baseline and two for the improved model, small explanation subsets (under a "
        "minute on 2 cores)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for everything (default: 0)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (default: torch's choice, one per core)",
    )
    p.add_argument(
        "--no-download",
        action="store_true",
        help="never try the network; exit with status 2 if MNIST is missing",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        result = run_study(
            args.data_root,
            args.out,
            quick=args.quick,
            seed=args.seed,
            download=not args.no_download,
            progress=not args.no_progress,
        )
    except DatasetMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\nWall time per stage:")
    for name, sec in result["timings_s"].items():
        print(f"  {name:<28} {sec:7.1f} s")
    print(f"  {'total':<28} {time.perf_counter() - t0:7.1f} s")
    print(
        f"\nbaseline {100 * result['baseline']['test_accuracy']:.2f}%  improved "
        f"{100 * result['improved']['test_accuracy']:.2f}%  pointing game (Grad-CAM) "
        f"{100 * result['pointing_game']['gradcam']:.1f}%  -> {args.out / 'report.md'}"
    )
    return 0
