"""The ImageNet example, step by step, and its command line.

``python -m examples.imagenet --out DIR [--quick]`` writes ``report.md``, its figures,
``metrics.json`` and the leaderboard (``leaderboard.{md,csv,png}``, ``per_image.csv``) to
``--out``. Nothing is random: the weights, the photos and every
method are deterministic, so a rerun gives the same numbers (up to the floating-point
order of another thread count).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import camlib

from . import figures, photos
from .model import HEAD_LAYER, SIZE, MissingExtra, categories, load_lite0, normalize
from .model import to_uint8 as rgb
from .report import write_report

ORDER = (
    "cam",
    "gradcam",
    "gradcam++",
    "xgradcam",
    "layercam",
    "hirescam",
    "scorecam",
    "ablationcam",
    "eigencam",
    "guided_backprop",
    "guided_gradcam",
)
"""Column order of the figures; methods registered under other names follow, sorted."""


def method_names() -> list[str]:
    """Every method camlib offers, one name each, in :data:`ORDER`."""
    if hasattr(camlib, "available_methods"):
        names = set(camlib.available_methods())
    else:
        names = {cls.name for cls in camlib.METHODS.values()}
    return [n for n in ORDER if n in names] + sorted(names.difference(ORDER))


BOXES = Path(__file__).with_name("boxes.csv")
"""Hand-drawn boxes of the object in each photo, in the 224 x 224 input frame."""


def read_boxes(path: Path = BOXES) -> dict[str, dict]:
    """The boxes file: photo -> ``{"box": (x0, y0, x1, y1), "object": what it is}``.

    Lines starting with ``#`` are comments; the header is ``photo,x0,y0,x1,y1,object``;
    coordinates are whole pixels of the 224 x 224 input with exclusive upper bounds
    (``0 <= x0 < x1 <= 224``, the same for y). Raises ``ValueError`` naming the photo and
    the problem (unknown photo, a repeated photo, a box outside the image)."""
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    reader = csv.DictReader(ln for ln in lines if not ln.startswith("#"))
    want = ["photo", "x0", "y0", "x1", "y1", "object"]
    if reader.fieldnames != want:
        raise ValueError(f"{path}: the header must be {','.join(want)}, got {reader.fieldnames}")
    out: dict[str, dict] = {}
    for r in reader:
        name = r["photo"]
        if name not in photos.PHOTOS:
            raise ValueError(f"{path}: unknown photo {name!r}; known: {', '.join(photos.PHOTOS)}")
        if name in out:
            raise ValueError(f"{path}: photo {name!r} has two boxes")
        try:
            x0, y0, x1, y1 = (int(r[k]) for k in ("x0", "y0", "x1", "y1"))
        except (TypeError, ValueError):
            raise ValueError(f"{path}: the box of {name!r} must be 4 whole pixels") from None
        if not (0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE):
            raise ValueError(
                f"{path}: the box of {name!r} is {(x0, y0, x1, y1)}; need 0 <= x0 < x1 <= {SIZE} "
                f"and 0 <= y0 < y1 <= {SIZE} (pixels of the input, upper bounds exclusive)"
            )
        out[name] = {"box": (x0, y0, x1, y1), "object": r["object"]}
    return out


def slow(name: str) -> bool:
    """A perturbation method: one forward pass per channel of the layer (1280 here) and
    image, several for SS-CAM and IS-CAM."""
    from camlib.methods.families import PerturbationCAM

    return issubclass(camlib.get_method(name), PerturbationCAM)


def leaderboard_methods() -> list[str]:
    """Every registered method that explains a CNN in reasonable time on a CPU: not the
    perturbation methods (:func:`slow`), nor those that read attention maps (LeGrad)."""
    return [m for m in method_names() if not slow(m) and not _apart(m)]


def _apart(name: str) -> str | None:
    """Why ``name`` is not ranked on this CNN whatever its cost, or ``None``."""
    cls = camlib.get_method(name)
    if getattr(cls, "needs_attention", False):
        return "transformers only"
    if getattr(cls, "returns", None) == "concepts":
        return "concept maps (evaluate scores one map per image)"
    return None


@dataclass
class Settings:
    """What to explain. :meth:`default` is the full example, :meth:`quick` the CI run."""

    photos: tuple[str, ...] = tuple(photos.PHOTOS)
    methods: tuple[str, ...] | None = (
        "cam",
        "gradcam",
        "gradcam++",
        "xgradcam",
        "layercam",
        "hirescam",
        "eigencam",
        "guided_backprop",
        "guided_gradcam",
    )
    """Methods drawn in the figures and measured on the canvas (``None``: every method
    camlib offers)."""
    top_k: int = 3
    canvas: tuple[str, str] = ("chelsea", "coffee")
    slow_methods: tuple[str, ...] = ("scorecam", "ablationcam", "sscam", "iscam")
    """Methods that cost one forward pass per channel (1280 on Lite0's head, about a
    minute per map on 2 CPU cores), or several: run only on :attr:`slow_photos` and the
    canvas."""
    slow_photos: tuple[str, ...] = ("chelsea",)
    leaderboard: tuple[str, ...] | None = None
    """Methods ranked by :func:`camlib.evaluate` on the photos (``None``:
    :func:`leaderboard_methods`); an empty tuple skips the leaderboard."""

    @classmethod
    def default(cls) -> Settings:
        return cls()

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            photos=("chelsea", "coffee"),
            methods=("gradcam", "guided_gradcam"),
            leaderboard=("gradcam", "guided_gradcam"),
        )


def rank_methods(
    model: torch.nn.Module, names: list[str], methods: list[str], layer: str, out: Path
) -> dict:
    """Every method in ``methods`` ranked by :func:`camlib.evaluate` on the photos
    ``names``, each explained for the model's top class: the default metrics and, from
    the hand-drawn boxes (:func:`read_boxes`), the localisation metrics. Writes
    ``leaderboard.{md,csv,png}`` and ``per_image.csv`` into ``out``."""
    boxes = read_boxes()
    missing = [n for n in names if n not in boxes]
    if missing:
        raise ValueError(f"no box for photo(s) {missing} in {BOXES}")
    x = torch.stack([normalize(photos.load(n)) for n in names])
    board = camlib.evaluate(
        model,
        x,
        methods=methods,
        layer=layer,
        boxes=torch.tensor([boxes[n]["box"] for n in names]),
        batch_size=len(names),
        seed=0,
        method_options={m: {"batch_size": 256} for m in methods if slow(m)},
    )
    board.save(out)
    print(board, flush=True)
    return {
        "photos": names,
        "boxes": {n: boxes[n] for n in names},
        "methods": board.methods,
        "metrics": [m.name for m in board.metrics],
        "summary": board.summary,
        "markdown": board.to_markdown(),
        "dropped": dict(board.dropped),
        "left_out": {
            "perturbation": [m for m in method_names() if m not in methods and slow(m)],
            "transformers only": [
                m for m in method_names() if m not in methods and _apart(m) == "transformers only"
            ],
            "concept maps (evaluate scores one map per image)": [
                m
                for m in method_names()
                if m not in methods and (_apart(m) or "").startswith("concept")
            ],
            "not asked for": [
                m for m in method_names() if m not in methods and not slow(m) and not _apart(m)
            ],
        },
    }


def explain_all(
    model: torch.nn.Module,
    x: torch.Tensor,
    classes: list[int],
    methods: list[str],
    layer: str,
    seconds: dict[str, float],
) -> dict[str, torch.Tensor]:
    """Every method's maps for one normalised image (1, 3, H, W) and each of ``classes``.

    The image is repeated once per class and explained in one call per method with
    ``targets=classes``. Returns method -> (k, H, W) maps in [0, 1] or (k, C, H, W) signed
    maps in [-1, 1]; adds each method's wall time to ``seconds``.
    """
    batch = x.expand(len(classes), -1, -1, -1).contiguous()
    maps: dict[str, torch.Tensor] = {}
    for name in methods:
        cls = camlib.get_method(name)
        t0 = time.perf_counter()
        with cls(model, layer) if cls.uses_layer else cls(model) as ex:
            maps[name] = ex(batch, targets=classes).cpu()
            if ex.classes is not None and ex.classes.tolist() != classes:
                raise AssertionError(f"{name} explained {ex.classes.tolist()}, not {classes}")
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
    return maps


def top(probs: torch.Tensor, names: list[str], k: int) -> list[dict]:
    """The ``k`` most probable classes as ``{"index", "name", "p"}``."""
    p, i = probs.topk(k)
    return [
        {"index": int(c), "name": names[c], "p": round(float(q), 4)}
        for q, c in zip(p.tolist(), i.tolist(), strict=True)
    ]


def mass(m: torch.Tensor) -> torch.Tensor:
    """A map's non-negative mass per pixel: the map itself, or |g| summed over channels."""
    return m.abs().sum(0) if m.dim() == 3 else m.clamp_min(0)


def half_share(m: torch.Tensor, side: str) -> float:
    """Share of the map's mass in the ``"left"`` or ``"right"`` half of the image."""
    w = mass(m)
    total = float(w.sum())
    half = w.shape[-1] // 2
    part = float(w[..., :half].sum() if side == "left" else w[..., half:].sum())
    return part / total if total > 0 else float("nan")


def peak_side(m: torch.Tensor) -> str:
    """``"left"`` or ``"right"``: the half holding the map's maximum."""
    w = mass(m)
    col = int(w.flatten().argmax()) % w.shape[-1]
    return "left" if col < w.shape[-1] // 2 else "right"


def versions() -> dict:
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "camlib": camlib.__version__,
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def run(
    out: Path, *, quick: bool = False, settings: Settings | None = None, layer: str = HEAD_LAYER
) -> dict:
    """Explain the photos and the canvas; write ``out/report.md``, figures, ``metrics.json``."""
    s = settings or (Settings.quick() if quick else Settings.default())
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    model = load_lite0()
    names = categories()
    offered = method_names()
    methods = list(s.methods) if s.methods is not None else offered
    unknown = [m for m in methods if m not in offered]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; camlib offers {offered}")
    seconds: dict[str, float] = {}
    fig: dict[str, str] = {}
    result: dict = {
        "quick": quick,
        "model": "EfficientNet-Lite0 (efficientnet-lite-pytorch, ImageNet weights)",
        "layer": layer,
        "methods": methods,
        "top_k": s.top_k,
        "versions": versions(),
        "photos": {},
    }

    # 1. each photo: its top-k classes, each explained by every method ------------------
    for name in s.photos:
        img = photos.load(name)
        x = normalize(img)[None]
        with torch.no_grad():
            probs = model(x).softmax(1)[0]
        pred = top(probs, names, 5)
        classes = [p["index"] for p in pred[: s.top_k]]
        here = [m for m in methods if m not in s.slow_methods or name in s.slow_photos]
        maps = explain_all(model, x, classes, here, layer, seconds)
        photo = rgb(img)
        rows = [
            [photo] + [figures.cell(photo, maps[m][r]) for m in here] for r in range(len(classes))
        ]
        figures.grid(
            rows,
            out / f"photo_{name}.png",
            col_titles=["photo"] + here,
            row_labels=[f"{p['name']} {p['p']:.2f}" for p in pred[: s.top_k]],
            title=f"{name}: EfficientNet-Lite0's top-{s.top_k} classes, one row each",
        )
        fig[f"photo_{name}"] = f"photo_{name}.png"
        result["photos"][name] = {
            "what": photos.PHOTOS[name][0],
            "top5": pred,
            "top1": f"{name} -> {pred[0]['name']} {pred[0]['p']:.2f}",
            "methods": here,
            "maps": maps,  # dropped before metrics.json; kept for the overview figures
        }
        print(f"   {result['photos'][name]['top1']}", flush=True)

    # 2. overview: every photo's top class with Grad-CAM and Guided Grad-CAM -----------
    shown = [m for m in ("gradcam", "guided_gradcam") if m in methods] or methods[:1]
    rows, labels = [], []
    for name, r in result["photos"].items():
        photo = rgb(photos.load(name))
        rows.append([photo] + [figures.cell(photo, r["maps"][m][0]) for m in shown])
        labels.append(f"{r['top5'][0]['name']} {r['top5'][0]['p']:.2f}")
    figures.grid(
        rows, out / "overview.png", col_titles=["photo"] + shown, row_labels=labels, size=2.2
    )
    fig["overview"] = "overview.png"
    if "chelsea" in result["photos"]:
        r = result["photos"]["chelsea"]
        photo = rgb(photos.load("chelsea"))
        panels = [photo] + [figures.cell(photo, r["maps"][m][0]) for m in shown]
        figures.grid(
            [panels],
            out / "home_cat.png",
            col_titles=["photo"] + [f"{m}: {r['top5'][0]['name']}" for m in shown],
            size=2.6,
        )
        fig["home_cat"] = "home_cat.png"

    # 3. two photos side by side, each explained in turn ------------------------------
    left, right = s.canvas
    own = {
        n: result["photos"][n]["top5"][0]["index"] if n in result["photos"] else None
        for n in s.canvas
    }
    for n in s.canvas:
        if own[n] is None:
            with torch.no_grad():
                own[n] = int(model(normalize(photos.load(n))[None]).argmax())
    canvas_res: dict = {
        "photos": [left, right],
        "classes": {n: {"index": own[n], "name": names[own[n]]} for n in s.canvas},
        "orders": {},
    }
    rows, labels = [], []
    for order in ((left, right), (right, left)):
        key = f"{order[0]} left, {order[1]} right"
        img = photos.side_by_side(*order)
        x = normalize(img)[None]
        with torch.no_grad():
            probs = model(x).softmax(1)[0]
        classes = [own[n] for n in order]
        maps = explain_all(model, x, classes, methods, layer, seconds)
        per_method = {}
        for m in methods:
            per_method[m] = {
                n: {
                    "share_in_own_half": round(half_share(maps[m][i], side), 4),
                    "peak_in_own_half": peak_side(maps[m][i]) == side,
                }
                for i, (n, side) in enumerate(zip(order, ("left", "right"), strict=True))
            }
        canvas_res["orders"][key] = {
            "top5": top(probs, names, 5),
            "p": {n: round(float(probs[own[n]]), 4) for n in order},
            "methods": per_method,
        }
        photo = rgb(img)
        for i, n in enumerate(order):
            rows.append([photo] + [figures.cell(photo, maps[m][i]) for m in methods])
            labels.append(f"{names[own[n]]} ({'left' if i == 0 else 'right'})")
    figures.grid(
        rows,
        out / "canvas.png",
        col_titles=["canvas"] + methods,
        row_labels=labels,
        title="Two photos side by side, each half's class explained in turn",
    )
    fig["canvas"] = "canvas.png"
    # mean over both orders and both classes, per method
    canvas_res["mean_share_in_own_half"] = {
        m: round(
            float(
                np.mean(
                    [
                        v[m][n]["share_in_own_half"]
                        for v in (o["methods"] for o in canvas_res["orders"].values())
                        for n in s.canvas
                    ]
                )
            ),
            4,
        )
        for m in methods
    }
    result["canvas"] = canvas_res
    for r in result["photos"].values():
        del r["maps"]

    # 4. every method ranked on the photos, with the hand-drawn boxes -----------------
    ranked = leaderboard_methods() if s.leaderboard is None else list(s.leaderboard)
    if ranked:
        t0 = time.perf_counter()
        result["leaderboard"] = rank_methods(model, list(s.photos), ranked, layer, out)
        result["leaderboard"]["seconds"] = round(time.perf_counter() - t0, 2)
        fig["leaderboard"] = "leaderboard.png"
    result["method_seconds"] = {m: round(t, 2) for m, t in seconds.items()}
    result["total_seconds"] = round(time.perf_counter() - t_start, 2)
    result["figures"] = fig
    result["settings"] = asdict(s)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(out / "report.md", result)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m examples.imagenet",
        description="Explain EfficientNet-Lite0's ImageNet predictions on bundled photos with "
        "camlib's methods, rank every method with camlib.evaluate, and write a report.",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/imagenet"),
        help="output folder (default: %(default)s)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="CI run: the cat and the coffee photos, Grad-CAM and Guided Grad-CAM only",
    )
    p.add_argument(
        "--photos", nargs="+", choices=list(photos.PHOTOS), help="photos to explain (default: all)"
    )
    p.add_argument(
        "--methods",
        nargs="+",
        help="methods drawn in the figures and measured on the canvas (default: the nine "
        "classic gradient and activation methods; 'all': every method camlib offers)",
    )
    p.add_argument(
        "--leaderboard",
        nargs="*",
        help="methods ranked on the photos by camlib.evaluate (default: every method but the "
        "perturbation ones, which cost a forward pass per channel; none: skip the leaderboard)",
    )
    p.add_argument("--layer", default=HEAD_LAYER, help="layer to explain (default: %(default)s)")
    p.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    s = Settings.quick() if args.quick else Settings.default()
    if args.photos:
        s.photos = tuple(args.photos)
    if args.methods:
        s.methods = None if args.methods == ["all"] else tuple(args.methods)
    if args.leaderboard is not None:
        s.leaderboard = tuple(args.leaderboard)
    try:
        r = run(args.out, quick=args.quick, settings=s, layer=args.layer)
    except MissingExtra as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    share = r["canvas"]["mean_share_in_own_half"]
    if "leaderboard" in r:
        print(f"leaderboard: {', '.join(r['leaderboard']['methods'])}")
    print(
        f"\n{len(r['photos'])} photos, {len(r['methods'])} methods in {r['total_seconds']:.0f} s; "
        f"two-photo canvas, Grad-CAM mass in the explained photo's half: "
        f"{100 * share.get('gradcam', float('nan')):.1f} %  -> {args.out / 'report.md'}"
    )
    return 0
