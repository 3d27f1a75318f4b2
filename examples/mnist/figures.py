"""The report's figures. Maps are drawn with :mod:`camlib.viz` (``overlay``,
``signed_to_rgb``, ``show_grid``); plain charts with matplotlib's object API (no pyplot,
so no display or global state is needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from camlib import viz

from .data import denormalize

DPI = 110


def save(fig: Figure, path: Path) -> Path:
    """Save and release the figure (``camlib.viz`` figures are pyplot-managed)."""
    fig.savefig(path, dpi=DPI)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def display(x: torch.Tensor) -> torch.Tensor:
    """A normalised (C, H, W) or (N, C, H, W) input as a [0, 1] image for display."""
    return denormalize(x.detach().cpu())


def training_curves(histories: dict[str, dict[str, list[float]]], path: Path) -> Path:
    """Loss and accuracy per epoch, train (dashed) and test (solid), for every model."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for color, (name, h) in zip(colors, histories.items(), strict=False):
        epochs = np.arange(1, len(h["test_loss"]) + 1)
        ax_loss.plot(epochs, h["train_loss"], "--", color=color, label=f"{name} train")
        ax_loss.plot(epochs, h["test_loss"], "-o", color=color, ms=3, label=f"{name} test")
        ax_acc.plot(
            epochs, 100 * np.array(h["train_accuracy"]), "--", color=color, label=f"{name} train"
        )
        ax_acc.plot(
            epochs,
            100 * np.array(h["test_accuracy"]),
            "-o",
            color=color,
            ms=3,
            label=f"{name} test",
        )
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    lo = min(min(h["test_accuracy"] + h["train_accuracy"]) for h in histories.values())
    ax_acc.set_ylim(max(100 * lo - 0.5, 90.0 if lo > 0.9 else 0.0), 100)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        "Training curves (train: running average over the epoch's batches; test: after each epoch)",
        fontsize=10,
    )
    return save(fig, path)


def confusion_and_per_class(
    confusions: dict[str, torch.Tensor], per_class: dict[str, torch.Tensor], path: Path
) -> Path:
    """Error-only confusion matrices (the diagonal is left blank) and per-class accuracy."""
    n = len(confusions)
    fig = Figure(figsize=(5.2 * n + 5, 4.8), layout="constrained")
    axes = fig.subplots(1, n + 1, width_ratios=[1] * n + [1.1])
    for ax, (name, cm) in zip(axes, confusions.items(), strict=False):
        c = cm.cpu().numpy().astype(float)
        errors = c.copy()
        np.fill_diagonal(errors, np.nan)
        ax.imshow(errors, cmap="Reds", vmin=0, vmax=max(1.0, np.nanmax(errors)))
        for i in range(c.shape[0]):
            for j in range(c.shape[1]):
                if i != j and c[i, j] > 0:
                    dark = c[i, j] > 0.6 * np.nanmax(errors)
                    ax.text(
                        j,
                        i,
                        int(c[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if dark else "black",
                    )
        ax.set_xticks(range(c.shape[1]))
        ax.set_yticks(range(c.shape[0]))
        wrong = int(c.sum() - np.trace(c))
        ax.set(
            xlabel="predicted",
            ylabel="true",
            title=f"{name}: {wrong} errors of {int(c.sum())}\n(off-diagonal counts)",
        )
    ax = axes[-1]
    width = 0.8 / n
    for k, (name, acc) in enumerate(per_class.items()):
        ax.bar(
            np.arange(10) + (k - (n - 1) / 2) * width, 100 * acc.cpu().numpy(), width, label=name
        )
    lo = min(float(a.min()) for a in per_class.values())
    ax.set_ylim(max(0.0, 100 * lo - 1.0), 100.2)
    ax.set_xticks(range(10))
    ax.set(xlabel="digit", ylabel="accuracy (%)", title="Per-class test accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return save(fig, path)


def cam_vs_gradcam(
    images: torch.Tensor,
    cam_norm: torch.Tensor,
    gradcam_norm: torch.Tensor,
    cam_raw: torch.Tensor,
    gradcam_raw_scaled: torch.Tensor,
    max_rel_diff: float,
    hw: int,
    path: Path,
) -> Path:
    """Left: the same digits under CAM and Grad-CAM. Right: raw CAM against
    h*w x raw Grad-CAM, every cell of every map; the points lie on y = x."""
    k = len(images)
    fig = Figure(figsize=(1.6 * k + 4.6, 4.0), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1.6 * k, 4.6])
    axes = left.subplots(2, k, squeeze=False)
    imgs = display(images)
    for j in range(k):
        for row, (name, maps) in enumerate((("CAM", cam_norm), ("Grad-CAM", gradcam_norm))):
            ax = axes[row, j]
            ax.imshow(viz.overlay(imgs[j], maps[j]))
            ax.axis("off")
            ax.set_title(f"{name}", fontsize=9)
    left.suptitle("Normalised maps of the improved model (top class)", fontsize=10)
    ax = right.subplots()
    x = cam_raw.flatten().cpu().numpy()
    y = gradcam_raw_scaled.flatten().cpu().numpy()
    ax.scatter(x, y, s=2, alpha=0.3, rasterized=True)
    hi = float(max(x.max(), y.max(), 1e-6))
    ax.plot([0, hi], [0, hi], "k--", lw=1, label="y = x")
    ax.set(
        xlabel="CAM (raw)",
        ylabel=f"Grad-CAM x h*w = {hw} (raw)",
        title=f"Every map cell; max relative\ndifference {max_rel_diff:.1e}",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, path)


def pointing_examples(
    canvases: torch.Tensor,
    maps: torch.Tensor,
    boxes: torch.Tensor,
    hits: torch.Tensor,
    labels: Sequence[str],
    title: str,
    path: Path,
    ncols: int = 6,
) -> Path:
    """Translated digits with their Grad-CAM, the digit's box (green: hit, red: miss) and
    the map's maximum (white cross)."""
    imgs = display(canvases)
    fig = viz.show_grid(imgs, maps, list(labels), ncols=ncols, cell=2.0, title=title)
    w = maps.shape[-1]
    for ax, m, b, hit in zip(fig.axes, maps, boxes.tolist(), hits.tolist(), strict=False):
        x0, y0, x1, y1 = b
        color = "lime" if hit else "red"
        ax.add_patch(
            Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=color, lw=1.5)
        )
        peak = int(m.flatten().argmax())
        ax.plot(peak % w, peak // w, marker="x", color="white", ms=8, mew=2)
    return save(fig, path)


def sanity_panel(
    images: torch.Tensor,
    stages: Sequence[str],
    gradcam: Sequence[torch.Tensor],
    guided: Sequence[torch.Tensor],
    path: Path,
) -> Path:
    """Rows: the trained model, then more and more layers re-initialised (from the
    output back). Per digit: Grad-CAM (overlay) and Guided Backprop (signed, grey)."""
    imgs = display(images)
    cells, labels = [], []
    for stage, gc, gb in zip(stages, gradcam, guided, strict=True):
        for i in range(len(images)):
            cells += [viz.overlay(imgs[i], gc[i]), viz.signed_to_rgb(gb[i])]
            labels += [f"{stage}\nGrad-CAM", f"{stage}\nGuided Backprop"]
    fig = viz.show_grid(
        cells,
        labels=labels,
        ncols=2 * len(images),
        cell=1.45,
        title="Cascading randomisation (Adebayo et al., 2018):\neach row re-initialises one "
        "more layer, from the output back",
    )
    return save(fig, path)


def sanity_curve(
    stages: Sequence[str],
    corr: dict[str, Sequence[float]],
    spread: dict[str, Sequence[float]],
    path: Path,
) -> Path:
    """Mean Spearman rank correlation with the trained model's maps, per stage."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(stages))
    for name, values in corr.items():
        ax.errorbar(x, values, yerr=spread[name], marker="o", capsize=3, label=name)
    ax.axhline(0, color="k", lw=0.8)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.axhline(-0.5, color="grey", lw=0.8, ls=":")
    ax.set_xticks(x)
    ax.set_xticklabels(stages, rotation=15, fontsize=8)
    ax.set(
        ylabel="Spearman rank corr. with trained maps",
        ylim=(-1.05, 1.05),
        title="Model-parameter randomisation test (mean +- std over images)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def _mark(ax, m: torch.Tensor, box, color: str, dashed: bool = False) -> None:
    x0, y0, x1, y1 = box
    ax.add_patch(
        Rectangle(
            (x0 - 0.5, y0 - 0.5),
            x1 - x0,
            y1 - y0,
            fill=False,
            edgecolor=color,
            lw=1.2 if dashed else 1.6,
            ls="--" if dashed else "-",
        )
    )
    if m is not None:
        w = m.shape[-1]
        peak = int(m.flatten().argmax())
        ax.plot(peak % w, peak // w, marker="x", color="white", ms=8, mew=2)


def two_digit_examples(
    canvases: torch.Tensor,
    boxes: tuple[torch.Tensor, torch.Tensor],
    labels: tuple[torch.Tensor, torch.Tensor],
    maps: dict[str, tuple[torch.Tensor, torch.Tensor]],
    path: Path,
) -> Path:
    """Per canvas: the two digits, then for each method its map for each digit's class,
    with that digit's box (green: the maximum is inside, a hit; red: a miss), the other
    digit's box dashed, and the map's maximum as a white cross."""
    from camlib import normalize_minmax

    imgs = display(canvases)
    cells, titles, marks = [], [], []
    for i in range(len(canvases)):
        ya, yb = int(labels[0][i]), int(labels[1][i])
        cells.append(viz.to_rgb_uint8(imgs[i]))
        titles.append(f"digits {ya} and {yb}")
        marks.append(None)
        for name, (ma, mb) in maps.items():
            for m, y, own, other in (
                (ma[i], ya, boxes[0][i], boxes[1][i]),
                (mb[i], yb, boxes[1][i], boxes[0][i]),
            ):
                m = normalize_minmax(m[None])[0]
                cells.append(viz.overlay(imgs[i], m))
                titles.append(f"{name}\nfor {y}")
                marks.append((m, own.tolist(), other.tolist()))
    ncols = 1 + 2 * len(maps)
    fig = viz.show_grid(
        cells,
        labels=titles,
        ncols=ncols,
        cell=1.7,
        title="Two digits, each class explained in turn (box: that class's digit, green = hit, "
        "red = miss; dashed: the other digit; x: the map's maximum)",
    )
    for ax, mark in zip(fig.axes, marks, strict=False):
        if mark is None:
            continue
        m, own, other = mark
        x0, y0, x1, y1 = own
        w = m.shape[-1]
        peak = int(m.flatten().argmax())
        py, px = peak // w, peak % w
        hit = x0 <= px < x1 and y0 <= py < y1 and float(m.max()) > float(m.min())
        _mark(ax, None, other, "white", dashed=True)
        _mark(ax, m, own, "lime" if hit else "red")
    return save(fig, path)
