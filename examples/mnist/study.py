"""The MNIST study, stage by stage, and its command line.

``python -m examples.mnist --data-root DIR --out DIR [--quick | --full] [--seed N]`` writes
``report.md``, its figures, ``metrics.json``, the leaderboards (``leaderboard.*``,
``two_digit/``) and the two checkpoints to ``--out``.
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

CHUNK = 500
"""Images per explainer call in the study's own stages (bounds memory)."""


@dataclass
class Settings:
    """Sizes of every stage. :meth:`default` is ``make demo`` (about 5 minutes on 2 CPU
    cores), :meth:`full` the longer study (``make demo-full``), :meth:`quick` the smoke run."""

    n_train: int | None = None
    """Training images (``None``: all in the files)."""
    n_test: int | None = None
    """Test images (``None``: all 10,000)."""
    baseline: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=6, max_lr=3e-3))
    improved: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=6, max_lr=3e-3, weight_decay=0.05, augment=True, label_smoothing=0.1
        )
    )
    n_mistakes_shown: int = 12
    n_cam_check: int = 1000
    canvas: int = 56
    n_pointing: int = 1000
    """Translated test digits for the Grad-CAM pointing figure and the canvas facts."""
    n_sanity: int = 200
    n_sanity_shown: int = 4
    methods: tuple[str, ...] | None = None
    """Methods of the leaderboards (``None``: every registered one but :attr:`skip`)."""
    skip: tuple[str, ...] = ("sscam", "iscam", "sess")
    """Left out of the default run for time: SS-CAM and IS-CAM cost 35 and 10 forward
    passes per channel (96 here) and map, SESS about 200 times Grad-CAM, each times three
    on the digits (the sanity metrics re-explain)."""
    n_digits: int = 48
    """Test digits for the leaderboard's faithfulness, sanity, complexity and cost."""
    n_canvases: int = 48
    """Translated digits (the first of the pointing figure's) for its localisation."""
    steps: int = 20
    """Deletion/insertion steps."""
    n_pairs: int = 24
    """Two-digit canvases for the class-discriminative test."""
    max_shift_px: int = 3

    @classmethod
    def default(cls) -> Settings:
        return cls()

    @classmethod
    def full(cls) -> Settings:
        """The whole study: all training images, 10 epochs each, every method, more images."""
        base = cls()
        return replace(
            base,
            n_train=None,
            baseline=replace(base.baseline, epochs=10),
            improved=replace(base.improved, epochs=10),
            n_pointing=10000,
            n_sanity=500,
            skip=(),
            n_digits=300,
            n_canvases=300,
            steps=28,
            n_pairs=200,
        )

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
            methods=("gradcam", "cam", "eigencam", "guided_backprop", "scorecam"),
            n_digits=8,
            n_canvases=8,
            steps=10,
            n_pairs=6,
        )

    def method_names(self) -> list[str]:
        """The leaderboards' methods: :attr:`methods`, or every registered one that explains
        CNNs but :attr:`skip`."""
        if self.methods is not None:
            return list(self.methods)
        return [m for m in methods.for_cnn(camlib.available_methods()) if m not in self.skip]


class Stopwatch:
    """Wall and CPU time of each stage (``time.perf_counter``, ``time.process_time``: the
    CPU time of every thread of this process), printed as it ends and kept for the report.
    On a machine shared with other work the wall time grows, the CPU time much less."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.start = time.perf_counter()
        self.cpu_start = time.process_time()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        print(f"== {name}", flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        yield
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        self.cpu_seconds[name] = round(time.process_time() - c0, 2)
        print(
            f"   {name}: {self.seconds[name]:.1f} s wall, {self.cpu_seconds[name]:.1f} s CPU",
            flush=True,
        )

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 2)

    def cpu_total(self) -> float:
        return round(time.process_time() - self.cpu_start, 2)


def _bar(iterable, desc: str, progress: bool, total: int | None = None):
    return tqdm(
        iterable, desc=desc, total=total, disable=not progress, dynamic_ncols=True, leave=False
    )


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
    """Paste test digits on a blank canvas; Grad-CAM of the true class points with its
    maximum (the figure and its misses), and what the model makes of the canvases.

    Returns the results and ``(canvases, boxes, labels)`` for the leaderboard."""
    n = min(s.n_pointing, len(data.test_x))
    g = torch.Generator().manual_seed(seed)
    canvases, boxes = paste_on_canvas(data.test_x[:n], s.canvas, g)
    labels = data.test_y[:n]
    size = (s.canvas, s.canvas)
    gc_maps, rel = [], 0.0
    gradcam = camlib.GradCAM(model, target_layer=layer)
    cam = camlib.CAM(model, target_layer=layer)
    for idx in _bar(list(batches(n, CHUNK)), "pointing game", progress):
        x, t = canvases[idx], labels[idx]
        g_raw = gradcam(x, targets=t, upsample=False, normalize=False)
        c_raw = cam(x, targets=t, upsample=False, normalize=False)
        rel = max(rel, _rel_diff(c_raw, g_raw * g_raw.shape[-1] * g_raw.shape[-2]))
        gc_maps.append(camlib.upsample(g_raw, size))
    gc_maps = torch.cat(gc_maps)
    cell = s.canvas // g_raw.shape[-1]  # one cell of the layer's map, in pixels
    hits_gc = metrics.pointing_game(gc_maps, boxes)
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
    figures.pointing_examples(
        canvases[shown],
        camlib.normalize_minmax(gc_maps[shown]),
        boxes[shown],
        hits_gc[shown],
        names,
        f"Pointing game on {s.canvas}x{s.canvas} translated digits: Grad-CAM of the true class "
        f"(box: digit's ink; x: map maximum)",
        path,
    )
    return {
        "gradcam": float(hits_gc.float().mean()),
        "random_baseline": float(area.mean()),
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
    """Model-parameter randomisation test with cascading re-initialisation (Adebayo et al.),
    stage by stage for Grad-CAM and Guided Backprop (the leaderboard has every method at
    the last stage)."""
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
    return {
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


def board_result(board, **info) -> dict:
    """A leaderboard as ``metrics.json`` keeps it: the summary rows and the Markdown table."""
    return {
        "methods": board.methods,
        "metrics": [m.name for m in board.metrics],
        "summary": board.summary,
        "markdown": board.to_markdown(),
        "dropped": dict(board.dropped),
        **info,
    }


def rank_methods(
    model,
    layer: str,
    data: Mnist,
    canvases: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    s: Settings,
    seed: int,
    progress: bool,
    out: Path,
) -> dict:
    """Every method ranked by :func:`camlib.evaluate` (:func:`.methods.leaderboard`);
    writes ``leaderboard.{md,csv,png}`` and ``per_image.csv``."""
    n = min(s.n_digits, len(data.test_x))
    m = min(s.n_canvases, len(canvases[0]))
    board = methods.leaderboard(
        model,
        layer,
        s.method_names(),
        (data.test_x[:n], data.test_y[:n]),
        tuple(t[:m] for t in canvases),
        steps=s.steps,
        seed=seed,
        progress=progress,
    )
    board.save(out)
    print(board, flush=True)
    return board_result(
        board,
        n_digits=n,
        n_canvases=m,
        steps=s.steps,
        skipped=[x for x in s.skip if x in camlib.available_methods()],
    )


def two_digit(
    model, layer: str, data: Mnist, s: Settings, seed: int, progress: bool, out: Path, path: Path
) -> dict:
    """The class-discriminative test: two digits per canvas, each class explained in turn,
    every method ranked by :func:`camlib.evaluate` (:func:`.methods.two_digit_leaderboard`)."""
    g = torch.Generator().manual_seed(seed)
    canvases, box_a, box_b, y_a, y_b = methods.two_digit_canvases(
        data.test_x, data.test_y, s.n_pairs, s.canvas, g
    )
    board, both = methods.two_digit_leaderboard(
        model,
        layer,
        s.method_names(),
        canvases,
        (box_a, box_b),
        (y_a, y_b),
        seed=seed,
        progress=progress,
    )
    board.save(out / "two_digit")
    k = min(4, len(canvases))
    shown = {}
    for name in ("gradcam", "eigencam", "guided_backprop"):
        with camlib.get_method(name)(model, **_layer_kw(name, layer)) as ex:
            ma, mb = ex(canvases[:k], targets=y_a[:k]), ex(canvases[:k], targets=y_b[:k])
        shown[methods.label(name)] = tuple(t.abs().sum(1) if ex.signed else t for t in (ma, mb))
    figures.two_digit_examples(
        canvases[:k], (box_a[:k], box_b[:k]), (y_a[:k], y_b[:k]), shown, path
    )
    size = (s.canvas, s.canvas)
    return board_result(
        board,
        both_hit=both,
        model=methods.model_view(model, canvases, y_a, y_b),
        n_canvases=len(canvases),
        n_requested=s.n_pairs,
        canvas_size=s.canvas,
        min_gap_px=8,
        random_point=float(
            torch.cat(
                [metrics.box_area_fraction(box_a, size), metrics.box_area_fraction(box_b, size)]
            ).mean()
        ),
    )


def _layer_kw(name: str, layer: str) -> dict:
    return {"target_layer": layer} if camlib.get_method(name).uses_layer else {}


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
    full: bool = False,
) -> dict:
    """Run every stage and write ``out/report.md``, figures, ``metrics.json``, checkpoints
    (``quick``: the smoke run; ``full``: the longer study; neither: ``make demo``)."""
    if quick and full:
        raise ValueError("choose --quick or --full, not both")
    s = Settings.quick() if quick else Settings.full() if full else Settings.default()
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
        "mode": "quick" if quick else "full" if full else "default",
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
                CHUNK,
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

    # 4-6. checking the explanations; every method ranked by camlib.evaluate ----------
    layer = ImprovedNet.CAM_LAYER
    imp.eval()
    with clock("CAM vs Grad-CAM"):
        result["cam_vs_gradcam"] = cam_vs_gradcam(
            imp, layer, data, s.n_cam_check, figpath("cam_vs_gradcam", "cam_vs_gradcam.png")
        )
    with clock("pointing game"):
        result["pointing_game"], canvases = pointing_game(
            imp, layer, data, s, seed + 4, progress, figpath("pointing", "pointing_game.png")
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
    with clock("leaderboard"):
        result["leaderboard"] = rank_methods(imp, layer, data, canvases, s, seed + 6, progress, out)
        figpath("leaderboard", "leaderboard.png")
        del canvases
    with clock("two-digit test"):
        result["two_digit"] = two_digit(
            imp,
            layer,
            data,
            s,
            seed + 7,
            progress,
            out,
            figpath("two_digit", "two_digit.png"),
        )
        figpath("two_digit_leaderboard", "two_digit/leaderboard.png")

    with clock("report"):
        result["timings_s"] = dict(clock.seconds)
        result["cpu_seconds"] = dict(clock.cpu_seconds)
        result["total_seconds"] = clock.total()
        result["total_cpu_seconds"] = clock.cpu_total()
        result["figures"] = fig
        write_report(out / "report.md", result, s)
    result["timings_s"] = dict(clock.seconds)
    result["cpu_seconds"] = dict(clock.cpu_seconds)
    result["total_seconds"] = clock.total()
    result["total_cpu_seconds"] = clock.cpu_total()
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


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
    p.add_argument(
        "--full",
        action="store_true",
        help="the longer study (make demo-full): every training image, 10 epochs per model, "
        "every method (SS-CAM and IS-CAM too) on more images",
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
            full=args.full,
            seed=args.seed,
            download=not args.no_download,
            progress=not args.no_progress,
        )
    except DatasetMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\nTime per stage (wall, CPU of all threads):")
    for name, sec in result["timings_s"].items():
        print(f"  {name:<28} {sec:7.1f} s {result['cpu_seconds'][name]:7.1f} s")
    print(f"  {'total':<28} {time.perf_counter() - t0:7.1f} s {result['total_cpu_seconds']:7.1f} s")
    lb = {e["method"]: e for e in result["leaderboard"]["summary"]}
    print(
        f"\nbaseline {100 * result['baseline']['test_accuracy']:.2f}%  improved "
        f"{100 * result['improved']['test_accuracy']:.2f}%  pointing game (Grad-CAM) "
        f"{100 * lb['gradcam']['pointing_game']:.1f}%  best: {result['leaderboard']['methods'][0]}"
        f"  -> {args.out / 'report.md'}"
    )
    return 0
