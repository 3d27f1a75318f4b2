"""The report's figures. Maps are drawn with :mod:`camlib.viz` (``overlay``,
``signed_to_rgb``, ``show_grid``); plain charts with matplotlib's object API (no pyplot,
so no display or global state is needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
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


def deletion_insertion(
    deletion: dict[str, torch.Tensor], insertion: dict[str, torch.Tensor], path: Path
) -> Path:
    """Mean deletion and insertion curves per method, AUC in the legend."""
    many = len(deletion) > 6
    fig = Figure(figsize=(12, 5.2) if many else (11, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    colors = [matplotlib.colormaps["tab20"](i / 20) for i in range(0, 20, 2)] + [
        matplotlib.colormaps["tab20"](i / 20) for i in range(1, 20, 2)
    ]
    for ax, curves, name, better in (
        (axes[0], deletion, "Deletion", "lower"),
        (axes[1], insertion, "Insertion", "higher"),
    ):
        for j, (method, c) in enumerate(curves.items()):
            frac = np.linspace(0, 1, c.shape[1])
            mean = c.mean(0).cpu().numpy()
            area = float(((c.sum(1) - 0.5 * (c[:, 0] + c[:, -1])) / (c.shape[1] - 1)).mean())
            style = {"color": "k", "ls": "--"} if method.startswith("random") else {}
            ax.plot(
                frac,
                mean,
                label=f"{method} ({area:.3f})",
                color=style.get("color", colors[j % len(colors)]),
                ls=style.get("ls", "-"),
                lw=1.3,
            )
        verb = "removed" if name == "Deletion" else "inserted"
        ax.set(
            xlabel=f"fraction of pixels {verb} (most salient first)",
            ylabel="p(true class)",
            ylim=(-0.02, 1.02),
            title=f"{name} ({better} AUC is better; AUC in the legend)",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7 if many else 8, ncols=2 if many else 1)
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


def method_bars(rows: dict[str, dict], names: dict[str, str], path: Path) -> Path:
    """Every method on four tests: the two pointing games, deletion/insertion AUC,
    randomisation rank correlation, and time per image (log scale)."""
    fig = Figure(figsize=(13, 4.6), layout="constrained")
    axes = fig.subplots(1, 4)
    keys = list(rows)
    y = np.arange(len(keys))[::-1]
    shown = [names[k] for k in keys]

    def bars(ax, values, offset, height, label, color) -> None:
        v = np.array([np.nan if x is None else x for x in values], dtype=float)
        ax.barh(y + offset, v, height, label=label, color=color)

    ax = axes[0]
    bars(ax, [100 * rows[k]["pointing"] for k in keys], 0.2, 0.4, "one digit", "tab:blue")
    bars(ax, [100 * rows[k]["two_digit"] for k in keys], -0.2, 0.4, "two digits", "tab:orange")
    ax.axvline(90, color="k", lw=0.8, ls=":")
    ax.set(xlabel="hit rate (%)", title="Pointing game", xlim=(0, 100))
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2)
    ax = axes[1]
    bars(ax, [rows[k]["deletion_auc"] for k in keys], 0.2, 0.4, "deletion (lower)", "tab:red")
    bars(ax, [rows[k]["insertion_auc"] for k in keys], -0.2, 0.4, "insertion (higher)", "tab:green")
    ax.set(xlabel="AUC", title="Deletion / insertion", xlim=(0, 1))
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2)
    ax = axes[2]
    bars(ax, [rows[k]["randomization_rank_corr"] for k in keys], 0, 0.6, "", "tab:purple")
    ax.axvline(0, color="k", lw=0.8)
    ax.set(xlabel="Spearman rank corr.", title="Randomisation (|.| small is good)", xlim=(-1, 1))
    ax = axes[3]
    ms = [rows[k]["ms_per_image"] for k in keys]
    bars(ax, ms, 0, 0.6, "", "tab:gray")
    for yy, t in zip(y, ms, strict=True):
        ax.text(t, yy, f" {t:,.0f}" if t >= 10 else f" {t:.2g}", va="center", fontsize=7)
    ax.set(xscale="log", xlabel="ms per image (indicative)", title="Time per image")
    ax.set_xlim(min(ms) / 2, max(ms) * 8)
    for ax in axes:
        ax.set_yticks(y)
        ax.set_yticklabels(shown if ax is axes[0] else [], fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Every camlib method on the improved MNIST model (layer block3)", fontsize=10)
    return save(fig, path)
