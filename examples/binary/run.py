"""The binary-classifier example, step by step, and its command line.

``python -m examples.binary --out DIR [--quick] [--seed N]`` writes ``report.md``, its
figures, ``metrics.json`` and the checkpoint ``facenet.pt`` to ``--out``. The split,
the initialisation, the batch order and the augmentation all come from ``--seed``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import camlib

from .report import write_figures, write_report

CLASSES = ("not a face", "face")
"""Class 0 and class 1: the logit is the evidence for "face"."""


class MissingExtra(RuntimeError):
    """scikit-image (the ``examples`` extra) is not installed."""


@dataclass
class Settings:
    """Training and explanation sizes. :meth:`quick` is the CI run."""

    epochs: int = 40
    batch_size: int = 20
    lr: float = 3e-3
    weight_decay: float = 1e-3
    test_per_class: int = 30
    """Held-out images per class (of 100); the rest train."""
    methods: tuple[str, ...] = ("gradcam", "gradcam++", "layercam", "cam", "guided_gradcam")
    n_shown: int = 6
    """Held-out images per class in the figure."""

    @classmethod
    def default(cls) -> Settings:
        return cls()

    @classmethod
    def quick(cls) -> Settings:
        return cls(epochs=25, methods=("gradcam", "cam", "guided_gradcam"), n_shown=3)


class FaceNet(nn.Module):
    """Four 3x3 convolutions with BatchNorm and ReLU (two 2x2 max-pools: 25 -> 6),
    global average pooling and ONE linear output: ``forward`` returns (N,) logits."""

    CAM_LAYER = "features.13"
    """The last ReLU: the (N, 64, 6, 6) feature map that is pooled into the logit."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, w),
            *block(w, 2 * w),
            nn.MaxPool2d(2),
            *block(2 * w, 4 * w),
            nn.MaxPool2d(2),
            *block(4 * w, 4 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1)).squeeze(1)


@dataclass
class Split:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: float
    std: float


def load_faces(test_per_class: int, seed: int) -> Split:
    """lfw_subset as (N, 1, 25, 25) tensors normalised with the training set's mean and
    std; labels 1 (face, the first 100) and 0 (not a face); a seeded split per class."""
    try:
        from skimage.data import lfw_subset
    except ImportError as exc:
        raise MissingExtra(
            "scikit-image: install the 'examples' extra (pip install -e '.[examples]')"
        ) from exc
    images = torch.from_numpy(lfw_subset()).float()[:, None]  # (200, 1, 25, 25) in [0, 1]
    if images.max() > 1.0:  # uint8 in some scikit-image versions
        images = images / 255.0
    labels = torch.cat([torch.ones(100), torch.zeros(100)])
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for start in (0, 100):
        perm = start + torch.randperm(100, generator=g)
        test_idx.append(perm[:test_per_class])
        train_idx.append(perm[test_per_class:])
    tr, te = torch.cat(train_idx), torch.cat(test_idx)
    mean, std = float(images[tr].mean()), float(images[tr].std())
    norm = (images - mean) / std
    return Split(norm[tr], labels[tr], norm[te], labels[te], mean, std)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and shifts of up to 2 pixels (reflect padding), per image."""
    n = x.shape[0]
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    dx, dy = torch.randint(0, 5, (2, n), generator=g)
    h, w = x.shape[-2:]
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def train(model: FaceNet, data: Split, s: Settings, seed: int) -> list[float]:
    """AdamW on binary cross-entropy with logits, one-cycle schedule; the loss per epoch."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    steps = -(-len(data.train_x) // s.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, s.lr, total_steps=s.epochs * steps)
    losses = []
    model.train()
    for _ in range(s.epochs):
        perm = torch.randperm(len(data.train_x), generator=g)
        total = 0.0
        for i in range(0, len(perm), s.batch_size):
            idx = perm[i : i + s.batch_size]
            x, y = augment(data.train_x[idx], g), data.train_y[idx]
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        losses.append(total / len(perm))
    model.eval()
    return losses


def method_names() -> list[str]:
    """Every method camlib offers, one name each."""
    if hasattr(camlib, "available_methods"):
        return sorted(camlib.available_methods())
    return sorted({cls.name for cls in camlib.METHODS.values()})


def explain_both(
    model: nn.Module, x: torch.Tensor, method: str, layer: str, **kw: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps for class 0 (``targets=0``, minus the logit) and class 1 (``targets=1``)."""
    cls = camlib.get_method(method)
    with cls(model, layer) if cls.uses_layer else cls(model) as ex:
        return ex(x, targets=0, **kw).cpu(), ex(x, targets=1, **kw).cpu()


def run(out: Path, *, quick: bool = False, seed: int = 0, settings: Settings | None = None) -> dict:
    """Train, evaluate, explain both classes; write ``out/report.md``, figures, metrics."""
    s = settings or (Settings.quick() if quick else Settings.default())
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_faces(s.test_per_class, seed)
    torch.manual_seed(seed)
    model = FaceNet()
    t_train = time.perf_counter()
    losses = train(model, data, s, seed + 1)
    train_seconds = time.perf_counter() - t_train
    with torch.no_grad():
        logits = model(data.test_x)
        train_pred = (model(data.train_x) > 0).float()
    pred = (logits > 0).float()
    y = data.test_y
    confusion = [[int(((y == t) & (pred == p)).sum()) for p in (0, 1)] for t in (0, 1)]
    offered = method_names()
    methods = [m for m in s.methods if m in offered]
    layer = FaceNet.CAM_LAYER

    # targets=None: camlib picks class 1 where the logit is positive, class 0 elsewhere
    with camlib.get_method("gradcam")(model, layer) as ex:
        ex(data.test_x)
        picked = ex.classes.cpu()
    # Grad-CAM of a one-logit head: the class-0 weights are minus the class-1 weights, so
    # before the ReLU the two maps are s and -s; after it their supports do not overlap.
    raw0, raw1 = explain_both(model, data.test_x, "gradcam", layer, upsample=False, normalize=False)
    maps = {m: explain_both(model, data.test_x, m, layer) for m in methods}

    result: dict = {
        "quick": quick,
        "seed": seed,
        "classes": list(CLASSES),
        "n_train": len(data.train_x),
        "n_test": len(data.test_x),
        "parameters": sum(p.numel() for p in model.parameters()),
        "settings": asdict(s),
        "train_loss": [round(v, 4) for v in losses],
        "train_seconds": round(train_seconds, 2),
        "train_accuracy": round(float((train_pred == data.train_y).float().mean()), 4),
        "test_accuracy": round(float((pred == y).float().mean()), 4),
        "confusion": confusion,
        "confusion_axes": "rows: true class 0, 1; columns: predicted class 0, 1",
        "layer": layer,
        "methods": methods,
        "targets_none_matches_logit_sign": round(float((picked == pred.long()).float().mean()), 4),
        "gradcam_overlap_max": float((raw0 * raw1).abs().max()),
        "gradcam_raw_peak": float(torch.maximum(raw0, raw1).max()),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "camlib": camlib.__version__,
            "torch_threads": torch.get_num_threads(),
        },
    }
    display = data.test_x * data.std + data.mean  # back to [0, 1] for the figures
    result["figures"] = write_figures(out, display, y, logits, maps, s.n_shown)
    torch.save(
        {"state_dict": model.state_dict(), "mean": data.mean, "std": data.std, "seed": seed},
        out / "facenet.pt",
    )
    result["total_seconds"] = round(time.perf_counter() - t0, 2)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(out / "report.md", result)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m examples.binary",
        description="Train a one-logit CNN on faces vs non-faces (lfw_subset) and explain "
        "both classes with camlib.",
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/binary"), help="output folder (default: %(default)s)"
    )
    p.add_argument("--quick", action="store_true", help="CI run: fewer epochs and methods")
    p.add_argument("--seed", type=int, default=0, help="seed for everything (default: 0)")
    p.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        r = run(args.out, quick=args.quick, seed=args.seed)
    except MissingExtra as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"held-out accuracy {100 * r['test_accuracy']:.1f} % ({r['n_test']} images), trained in "
        f"{r['train_seconds']:.1f} s; total {r['total_seconds']:.0f} s -> {args.out / 'report.md'}"
    )
    return 0
