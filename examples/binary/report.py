"""The binary example's figures (:mod:`camlib.viz` overlays) and ``report.md``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from camlib import viz

DPI = 100
SHOW = 100
"""Side in pixels at which the 25 x 25 images are drawn (bilinear upscaling)."""


def _big(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, 25, 25) or (N, 25, 25) -> the same at SHOW x SHOW, bilinear."""
    four = x if x.dim() == 4 else x[:, None]
    big = F.interpolate(four.float(), size=(SHOW, SHOW), mode="bilinear", align_corners=False)
    return big if x.dim() == 4 else big[:, 0]


def _panel(image: torch.Tensor, m: torch.Tensor) -> np.ndarray:
    if m.dim() == 3:  # signed (C, H, W): on its own, zero is mid-grey
        scale = torch.quantile(m.abs().flatten(), 0.995).clamp_min(1e-12)
        return viz.signed_to_rgb(_big((m / scale).clamp(-1, 1)[None])[0])
    return viz.overlay(image, m, alpha=0.45)


def _grid(rows: list[list[np.ndarray]], titles: list[list[str]], path: Path, title: str) -> None:
    nrows, ncols = len(rows), len(rows[0])
    fig = Figure(figsize=(1.35 * ncols, 1.5 * nrows + 0.4), layout="constrained")
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False))
    for i in range(nrows):
        for j in range(ncols):
            ax = axes[i, j]
            ax.axis("off")
            ax.imshow(rows[i][j])
            ax.set_title(titles[i][j], fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=DPI)


def write_figures(
    out: Path,
    images01: torch.Tensor,
    labels: torch.Tensor,
    logits: torch.Tensor,
    maps: dict[str, tuple[torch.Tensor, torch.Tensor]],
    n_shown: int,
) -> dict[str, str]:
    """``explanations.png`` (held-out images, each method's class-1 and class-0 maps) and
    ``mean_maps.png`` (Grad-CAM averaged over the held-out faces and non-faces)."""
    big = _big(images01.cpu())
    up = {m: (_big(a), _big(b)) if a.dim() == 3 else (a, b) for m, (a, b) in maps.items()}
    shown = [int(i) for c in (1, 0) for i in torch.nonzero(labels == c).flatten()[:n_shown]]
    p_face = torch.sigmoid(logits).cpu()
    rows, titles = [], []
    for i in shown:
        row, tit = (
            [viz.to_rgb_uint8(big[i])],
            [f"{'face' if labels[i] else 'not a face'}\np(face) {p_face[i]:.2f}"],
        )
        for m, (m0, m1) in up.items():
            row += [_panel(big[i], m1[i]), _panel(big[i], m0[i])]
            tit += [f"{m}\ntargets=1 (face)", f"{m}\ntargets=0 (not)"]
        rows.append(row)
        titles.append(tit)
    _grid(
        rows,
        titles,
        out / "explanations.png",
        "Held-out images: evidence for 'face' (targets=1) and for 'not a face' (targets=0)",
    )
    figs = {"explanations": "explanations.png"}
    if "gradcam" in maps:
        m0, m1 = maps["gradcam"]
        faces, others = labels == 1, labels == 0
        panels = [
            viz.to_rgb_uint8(big[faces].mean(0)),
            viz.overlay(big[faces].mean(0), _big(m1[faces].mean(0)[None])[0], normalize=False),
            viz.overlay(big[faces].mean(0), _big(m0[faces].mean(0)[None])[0], normalize=False),
            viz.to_rgb_uint8(big[others].mean(0)),
            viz.overlay(big[others].mean(0), _big(m0[others].mean(0)[None])[0], normalize=False),
            viz.overlay(big[others].mean(0), _big(m1[others].mean(0)[None])[0], normalize=False),
        ]
        names = [
            "mean face",
            "Grad-CAM 'face'\n(mean over faces)",
            "Grad-CAM 'not a face'\n(mean over faces)",
            "mean non-face",
            "Grad-CAM 'not a face'\n(mean over non-faces)",
            "Grad-CAM 'face'\n(mean over non-faces)",
        ]
        fig = Figure(figsize=(9, 2.0), layout="constrained")
        for ax, img, name in zip(fig.subplots(1, 6), panels, names, strict=True):
            ax.axis("off")
            ax.imshow(img)
            ax.set_title(name, fontsize=7)
        fig.savefig(out / "mean_maps.png", dpi=DPI)
        figs["mean_maps"] = "mean_maps.png"
    return figs


def write_report(path: Path, r: dict) -> None:
    """Write the Markdown report for the result dictionary ``r`` (see ``metrics.json``)."""
    c = r["confusion"]
    fig = r["figures"]
    s = r["settings"]
    lines: list[str] = []
    add = lines.append
    add("# A one-logit classifier with camlib: faces vs non-faces, both classes explained\n")
    if r["quick"]:
        add(
            "> **Quick run** (`--quick`): fewer epochs and methods, to check that every step runs.\n"
        )
    add(
        f"Reproduce: `python -m examples.binary --out OUT --seed {r['seed']}"
        f"{' --quick' if r['quick'] else ''}` (`make binary`). Data: scikit-image's "
        f"`lfw_subset` (100 faces, 100 non-faces from the same photos' backgrounds, 25 x 25 "
        f"greyscale), split per class with seed {r['seed']}: {r['n_train']} training and "
        f"{r['n_test']} held-out images. torch {r['versions']['torch']}, camlib "
        f"{r['versions']['camlib']}, {r['versions']['torch_threads']} thread(s); total wall "
        f"time {r['total_seconds']:.0f} s. Every number is also in `metrics.json`.\n"
    )
    add("## The model\n")
    add(
        f"`FaceNet` ({r['parameters']:,} parameters): four 3 x 3 convolutions with BatchNorm and "
        "ReLU, two 2 x 2 max-pools (25 -> 6), global average pooling and **one** linear output, "
        "so `model(x)` is an (N,) tensor of logits: positive means 'face'. Trained with AdamW "
        f"(lr {s['lr']}, weight decay {s['weight_decay']}, one-cycle schedule) on binary "
        f"cross-entropy for {s['epochs']} epochs of batch {s['batch_size']}, with random flips "
        f"and shifts of up to 2 pixels, in {r['train_seconds']:.1f} s (training loss "
        f"{r['train_loss'][0]:.3f} -> {r['train_loss'][-1]:.3f}).\n"
    )
    add("## Accuracy\n")
    add("| | result |")
    add("| --- | ---: |")
    add(f"| held-out accuracy ({r['n_test']} images) | **{100 * r['test_accuracy']:.1f} %** |")
    add(f"| training accuracy ({r['n_train']} images) | {100 * r['train_accuracy']:.1f} % |")
    add(f"| non-faces called non-face / face | {c[0][0]} / {c[0][1]} |")
    add(f"| faces called non-face / face | {c[1][0]} / {c[1][1]} |")
    add("")
    add("## Both classes of one logit\n")
    add(
        "A one-logit model has two classes: camlib explains class 1 with `targets=1` (the "
        "score is the logit) and class 0 with `targets=0` (the score is minus the logit); "
        "`targets=None` picks 1 where the logit is positive and 0 elsewhere "
        f"(here it matched the sign of the logit on {100 * r['targets_none_matches_logit_sign']:.0f} % "
        "of the held-out images).\n"
    )
    add(
        '```python\nwith camlib.GradCAM(model, target_layer="features.13") as cam:\n'
        "    face = cam(images, targets=1)      # evidence for 'face'\n"
        "    not_face = cam(images, targets=0)  # evidence for 'not a face'\n```\n"
    )
    add(
        "For Grad-CAM the two are exact opposites before the ReLU: the channel weights of "
        "minus the logit are minus those of the logit, so the raw maps are ReLU(s) and "
        "ReLU(-s) of the same weighted sum s, and a pixel is evidence for one class or the "
        f"other, never both. Measured on the raw 6 x 6 maps: the largest product of the two "
        f"at any cell is {r['gradcam_overlap_max']:.1e} (map values up to "
        f"{r['gradcam_raw_peak']:.2f}).\n"
    )
    add(
        "Held-out images, three faces and three non-faces, with each method's map for "
        "'face' and for 'not a face'. Methods: " + ", ".join(f"`{m}`" for m in r["methods"]) + ". "
        "Guided Grad-CAM panels are the signed gradient (grey is zero), scaled by its "
        "99.5th percentile of |g|.\n"
    )
    add(f"![Both classes explained]({fig['explanations']})\n")
    if "mean_maps" in fig:
        add(
            "Grad-CAM averaged over the held-out images: where the evidence for each class "
            "lies on average, all four maps on one shared [0, 1] scale (no per-panel "
            "rescaling, so a weak average stays dark).\n"
        )
        add(f"![Mean Grad-CAM maps]({fig['mean_maps']})\n")
    path.write_text("\n".join(lines), encoding="utf-8")
