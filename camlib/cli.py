"""The ``camlib`` command: ``camlib explain``, ``camlib evaluate``, ``camlib layers``,
``camlib methods``.

    camlib explain torchvision:resnet50 --weights DEFAULT photos/ --out cams/
    camlib evaluate torchvision:resnet50 --weights DEFAULT photos/ --boxes boxes.csv --out eval/
    camlib layers torchvision:resnet50 --input-size 3,224,224
    torchrun --nproc-per-node 4 -m camlib explain ... --device cuda

Exit status: 0 when every image was explained (scored), 1 when some image failed (its row
in ``results.csv`` / ``failed.csv`` says why), 2 for a usage error (bad model, layer,
option, boxes, masks).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WIDTH = 100


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.lower().replace("x", ",").replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers like 3,224,224, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(
            f"--option takes KEY=VALUE (e.g. batch_size=8), got {text!r}"
        )
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _dotted_option(text: str) -> tuple[str, str, Any]:
    """``[NAME.]KEY=VALUE`` -> (NAME or "", KEY, VALUE); NAME may hold any character but
    ``=`` (``gradcam++.batch_size=8``)."""
    left, sep, value = text.partition("=")
    name, dot, key = left.rpartition(".")
    if not sep or not key.isidentifier() or (dot and not name):
        raise argparse.ArgumentTypeError(
            f"expected [NAME.]KEY=VALUE (e.g. scorecam.batch_size=64), got {text!r}"
        )
    try:
        return name, key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, key, value


def _names(text: str) -> list[str] | str:
    """``"all"``/``"default"`` as they are, else the comma-separated names."""
    text = text.strip()
    if text.lower() in ("all", "default"):
        return text.lower()
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected names separated by commas, got {text!r}")
    return names


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="MODEL",
        help="torchvision:NAME, timm:NAME, package.module:callable, file.py:callable, or a "
        "torch.save(model) file (needs --trust-pickle)",
    )
    p.add_argument(
        "--weights",
        metavar="FILE|NAME",
        help="state dict file (read with torch.load(weights_only=True)), or a torchvision "
        "weights name (DEFAULT, IMAGENET1K_V1), or 'pretrained' for timm",
    )
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow MODEL to be a torch.save(model) pickle: loading it runs code from the file",
    )
    p.add_argument("--size", type=_ints, metavar="S|H,W", help="model input size (default 224)")
    p.add_argument("--mean", type=_floats, metavar="M[,M,M]", help="normalisation mean")
    p.add_argument("--std", type=_floats, metavar="S[,S,S]", help="normalisation std")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="camlib", description="Class activation maps for PyTorch models, from the shell."
    )
    parser.add_argument("--version", action="version", version=f"camlib {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    ex = sub.add_parser(
        "explain",
        help="explain image files and folders; write overlays, maps, results.csv, index.html",
        description="Explain image files, folders (recursively) and globs. Writes, under --out, "
        "overlays/*.png, maps/*.npy (the map at the image's size), thumbs/, records/, "
        "results.csv and index.html (a gallery). Run under torchrun to shard over processes.",
    )
    _add_model_args(ex)
    ex.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or globs")
    ex.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    ex.add_argument("--method", "-m", default="gradcam", help="method name (camlib methods)")
    ex.add_argument(
        "--layer",
        default="auto",
        help="target layer name, 'auto' (default), or names separated by commas to fuse",
    )
    ex.add_argument("--targets", default="top", help="'top' (default), 'top-k=K', or a class index")
    ex.add_argument("--batch-size", "-b", type=int, default=16)
    ex.add_argument("--device", default="cpu", help="cpu or cuda[:N] (torchrun: cuda:LOCAL_RANK)")
    ex.add_argument("--amp", action="store_true", help="autocast: bfloat16 on CPU, float16 on CUDA")
    ex.add_argument("--workers", "-j", type=int, default=2, help="DataLoader worker processes")
    ex.add_argument("--resume", action="store_true", help="skip images already complete in DIR")
    ex.add_argument(
        "--option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method constructor option, e.g. --option batch_size=8 (repeatable)",
    )
    ex.add_argument("--no-progress", action="store_true", help="no progress bar")
    ex.set_defaults(func=cmd_explain)

    ev = sub.add_parser(
        "evaluate",
        help="rank methods with metrics on image files; write leaderboard.csv/.md, report.html",
        description="Explain every image with every method (and two baselines), score each map "
        "with the metrics, and write under --out: records/ (per-image metric rows, used by "
        "--resume), previews/, leaderboard.csv, leaderboard.md, per_image.csv, "
        "leaderboard.png, failed.csv and report.html (self-contained). Run under torchrun to "
        "shard over processes.",
    )
    _add_model_args(ev)
    ev.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or globs")
    ev.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    ev.add_argument(
        "--methods", type=_names, default="all", help="method names separated by commas, or 'all'"
    )
    ev.add_argument(
        "--metrics",
        type=_names,
        default="default",
        help="'default' (no boxes/masks needed, plus localisation with --boxes/--masks), "
        "'all', or names separated by commas",
    )
    ev.add_argument("--layer", default="auto", help="layer of every layer method (default auto)")
    ev.add_argument(
        "--targets", default="top", help="'top' (each image's top class, default) or a class index"
    )
    ev.add_argument(
        "--boxes",
        metavar="FILE.csv",
        help="one box per image: columns file,x0,y0,x1,y1 in pixels of the original image",
    )
    ev.add_argument(
        "--masks", metavar="DIR", help="one PNG mask per image (NAME.png), the image's size"
    )
    ev.add_argument(
        "--primary",
        metavar="METRIC",
        help="metric that picks each method's best and worst images in report.html "
        "(default: deletion, else the first metric)",
    )
    ev.add_argument("--batch-size", "-b", type=int, default=16)
    ev.add_argument("--device", default="cpu", help="cpu or cuda[:N] (torchrun: cuda:LOCAL_RANK)")
    ev.add_argument("--workers", "-j", type=int, default=2, help="DataLoader worker processes")
    ev.add_argument("--seed", type=int, default=0, help="random baseline, noise and bootstrap")
    ev.add_argument("--resume", action="store_true", help="skip images already scored in DIR")
    ev.add_argument(
        "--option",
        type=_dotted_option,
        action="append",
        default=[],
        metavar="[METHOD.]KEY=VALUE",
        help="method option, for one method (scorecam.batch_size=64) or for every method "
        "that takes it (batch_size=64); repeatable",
    )
    ev.add_argument(
        "--metric-option",
        type=_dotted_option,
        action="append",
        default=[],
        metavar="METRIC.KEY=VALUE",
        help="metric option, e.g. deletion.steps=20 (repeatable)",
    )
    ev.add_argument(
        "--plan", action="store_true", help="print what would run and its cost, then stop"
    )
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_evaluate)

    ly = sub.add_parser(
        "layers",
        help="list the model's layers with output shapes and the layer 'auto' picks",
        description="Run one probe forward pass and list the layers in execution order "
        "(containers after their last child) with their output shapes.",
    )
    _add_model_args(ly)
    ly.add_argument(
        "--input-size",
        type=_ints,
        metavar="C,H,W",
        help="probe input shape without the batch (default: the model's channels and --size)",
    )
    ly.add_argument("--json", action="store_true", help="machine-readable output")
    ly.set_defaults(func=cmd_layers)

    me = sub.add_parser("methods", help="list the available methods (plugins included)")
    me.set_defaults(func=cmd_methods)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``camlib`` console script; returns the exit status."""
    from .errors import CamlibError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CamlibError as exc:
        print(f"camlib {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "camlib: interrupted; every output written so far is complete (rerun with --resume)",
            file=sys.stderr,
        )
        return 130


def _load(args: argparse.Namespace):
    from .models_io import load_model

    return load_model(
        args.model,
        weights=args.weights,
        trust_pickle=args.trust_pickle,
        size=args.size,
        mean=args.mean,
        std=args.std,
        labels=args.labels,
    )


# -- explain ---------------------------------------------------------------------------------
def cmd_explain(args: argparse.Namespace) -> int:
    from .batch import explain_files, resolve_device

    resolve_device(args.device)  # fail before loading anything
    loaded = _load(args)
    layers = [s.strip() for s in args.layer.split(",") if s.strip()] or ["auto"]
    summary = explain_files(
        loaded.model,
        args.inputs,
        args.out,
        preprocess=loaded.preprocess,
        channels=loaded.preprocess.channels,
        method=args.method,
        layer=layers if len(layers) > 1 else layers[0],
        targets=args.targets,
        batch_size=args.batch_size,
        device=args.device,
        amp=args.amp,
        workers=args.workers,
        resume=args.resume,
        categories=loaded.categories,
        options=dict(args.option),
        settings={"model": args.model, "weights": _weights_stamp(args.weights)},
        progress=not args.no_progress,
        title=f"camlib explain {args.model} --method {args.method}",
    )
    if summary.rank == 0:
        print(_summary_text(summary, args))
    return 1 if summary.failed else 0


def _summary_text(summary, args: argparse.Namespace) -> str:
    rows = [r for r in summary.rows if r["status"] == "ok"]
    layer = rows[0]["layer"] if rows else args.layer
    method = rows[0]["method"] if rows else args.method
    images = len({r["file"] for r in summary.rows})
    slowest = max((st["seconds"] for st in summary.per_rank), default=summary.seconds)
    rate = summary.explained_all / slowest if slowest > 0 else 0.0
    where = "" if summary.world_size == 1 else f" by {summary.world_size} processes"
    lines = [
        f"camlib explain: {images} image(s), {method} @ {layer} -> {summary.out}",
        f"  explained {summary.explained_all}{where}, skipped {summary.resumed_all} already "
        f"complete, failed {len(summary.failed)} in {slowest:.1f} s ({rate:.1f} images/s)",
    ]
    if summary.failed:
        lines.append("  failed:")
        for file, status, message in summary.failed[:20]:
            lines.append(f"    {file}: {status}: {message[:160]}")
        if len(summary.failed) > 20:
            lines.append(f"    ... and {len(summary.failed) - 20} more (see results.csv)")
    out = Path(summary.out)
    lines.append(f"  results: {out / 'results.csv'}   gallery: {out / 'index.html'}")
    return "\n".join(lines)


# -- evaluate --------------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from .batch import BatchError, evaluate_files, resolve_device

    resolve_device(args.device)  # fail before loading anything
    metric_options: dict[str, dict] = {}
    for name, key, value in args.metric_option:
        if not name:
            raise BatchError(f"--metric-option {key}=...: name the metric, e.g. deletion.{key}=...")
        metric_options.setdefault(name, {})[key] = value
    method_options = _method_options(args.option, args.methods)
    loaded = _load(args)
    layers = [s.strip() for s in args.layer.split(",") if s.strip()] or ["auto"]
    summary = evaluate_files(
        loaded.model,
        args.inputs,
        args.out,
        preprocess=loaded.preprocess,
        channels=loaded.preprocess.channels,
        methods=args.methods,
        metrics=args.metrics,
        layer=layers if len(layers) > 1 else layers[0],
        targets=args.targets,
        boxes=args.boxes,
        masks=args.masks,
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
        resume=args.resume,
        seed=args.seed,
        method_options=method_options,
        metric_options=metric_options,
        primary=args.primary,
        settings={"model": args.model, "weights": _weights_stamp(args.weights)},
        progress=False if args.no_progress else None,
        title=f"camlib evaluate {args.model}",
        plan_only=args.plan,
    )
    if args.plan:
        print(summary.extra["plan"])
        return 0
    if summary.rank == 0:
        print(_evaluate_text(summary))
    return 1 if summary.failed else 0


def _method_options(
    pairs: Sequence[tuple[str, str, Any]], methods: str | list[str]
) -> dict[str, dict]:
    """``--option`` values by method: ``METHOD.KEY=V`` for that method, ``KEY=V`` for every
    evaluated method whose constructor takes ``KEY`` (an error when none does)."""
    import inspect

    from .base import available_methods, get_method
    from .batch import BatchError

    names = available_methods() if methods == "all" else list(methods)
    options: dict[str, dict] = {}
    for name, key, value in pairs:
        if name:
            options.setdefault(name, {})[key] = value
            continue
        takers = []
        for method in names:
            cls = get_method(method)
            for klass in cls.__mro__:
                init = vars(klass).get("__init__")
                if init is None:
                    continue
                params = inspect.signature(init).parameters
                if key in params:
                    takers.append(cls.name)
                if key in params or not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                    break
        if not takers:
            raise BatchError(
                f"--option {key}=...: none of the methods evaluated ({', '.join(names)}) takes "
                f"{key!r}; name one as METHOD.{key}=..."
            )
        for method in takers:
            options.setdefault(method, {})[key] = value
    return options


def _weights_stamp(weights: str | None) -> Any:
    """The weights as they identify a run for --resume: a file's path, size and mtime."""
    if weights and Path(weights).is_file():
        st = Path(weights).stat()
        return [str(Path(weights).resolve()), st.st_size, st.st_mtime_ns]
    return weights


def _evaluate_text(summary) -> str:
    board = summary.extra.get("leaderboard")
    slowest = max((st["seconds"] for st in summary.per_rank), default=summary.seconds)
    where = "" if summary.world_size == 1 else f" by {summary.world_size} processes"
    images = len({r["file"] for r in summary.rows})
    lines = [
        f"camlib evaluate: {images} image(s) -> {summary.out}",
        f"  scored {summary.explained_all}{where}, skipped {summary.resumed_all} already "
        f"complete, failed {len(summary.failed)} in {slowest:.1f} s",
    ]
    if board is not None:
        lines += ["", str(board), ""]
    if summary.failed:
        lines.append("  failed:")
        for file, status, message in summary.failed[:20]:
            lines.append(f"    {file}: {status}: {message[:160]}")
        if len(summary.failed) > 20:
            lines.append(f"    ... and {len(summary.failed) - 20} more (see failed.csv)")
    out = Path(summary.out)
    lines.append(f"  leaderboard: {out / 'leaderboard.md'}   report: {out / 'report.html'}")
    return "\n".join(lines)


# -- layers ----------------------------------------------------------------------------------
def layer_table(model, inputs) -> dict[str, Any]:
    """The probe as data: layers in execution order, shapes, runs, and the "auto" pick."""
    import warnings

    from .errors import LayerError
    from .layers import find_target_layer, probe_layers

    probe = probe_layers(model, inputs)
    modules = dict(model.named_modules())
    auto: str | None
    note = ""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            auto = find_target_layer(model, inputs)
        if caught:
            note = str(caught[0].message)
    except LayerError as exc:
        auto, note = None, str(exc)
    auto_name, auto_call = _split_call(auto, probe.counts) if auto else (None, None)
    layers = []
    for position, call in enumerate(probe.calls):
        runs = probe.counts.get(call.name, 1)
        index = getattr(call, "index", 0)
        shape = getattr(call, "shape", None)
        kind = getattr(call, "kind", "") or type(modules[call.name]).__name__
        layers.append(
            {
                "index": position,
                "name": call.name if runs == 1 else f"{call.name}@{index}",
                "module": call.name,
                "call": index,
                "runs": runs,
                "type": kind,
                "shape": list(shape) if shape is not None else None,
                "spatial": bool(call.spatial),
                "auto": call.name == auto_name and (runs == 1 or index == auto_call),
            }
        )
    return {
        "input_size": list(inputs.shape[1:]),
        "auto": auto,
        "auto_note": note,
        "layers": layers,
    }


def _split_call(spec: str, counts: dict[str, int]) -> tuple[str, int | None]:
    name, _, call = spec.partition("@")
    name = name.split(":")[0]
    if not call:
        return name, None
    c = int(call.split(":")[0])
    return name, c + counts.get(name, 0) if c < 0 else c


def _shorten(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    keep = width - 1
    return text[: keep // 2] + "~" + text[len(text) - (keep - keep // 2) :]


def format_layers(table: dict[str, Any], model_name: str, width: int = WIDTH) -> str:
    """The table as text no wider than ``width`` columns."""
    rows = table["layers"]
    shape_w, type_w, mark_w, num_w = 20, 18, 9, 4
    name_w = max(12, width - num_w - type_w - shape_w - mark_w - 4)
    size = "x".join(str(v) for v in table["input_size"])
    lines = [
        _shorten(f"{model_name}: {len(rows)} module calls for an input of {size}", width),
        f"{'#':>{num_w}} {'layer':<{name_w}} {'type':<{type_w}} {'output':<{shape_w}} mark",
    ]
    for r in rows:
        shape = "x".join(str(v) for v in r["shape"][1:]) if r["shape"] else "-"
        marks = []
        if r["auto"]:
            marks.append("<- auto")
        if r["runs"] > 1:
            marks.append(f"x{r['runs']}")
        line = (
            f"{r['index']:>{num_w}} {_shorten(r['name'], name_w):<{name_w}} "
            f"{_shorten(r['type'], type_w):<{type_w}} {_shorten(shape, shape_w):<{shape_w}} "
            f"{' '.join(marks)}"
        )
        lines.append(line.rstrip()[:width])
    pick = table["auto"]
    lines.append("")
    lines.append(
        f"auto -> {pick!r} (the last layer with a spatial output; --layer auto)"
        if pick
        else "auto -> none: no layer has a spatial output for this input; name one with --layer"
    )
    if any(r["runs"] > 1 for r in rows):
        lines.append("xN: the module runs N times per forward; name one call as NAME@K (@-1: last)")
    lines.append("output: per-image shape (batch dimension left out)")
    if table["auto_note"]:
        lines.append(f"note: {table['auto_note']}")
    return "\n".join(_wrap(line, width) for line in lines)


def _wrap(line: str, width: int) -> str:
    if len(line) <= width:
        return line
    import textwrap

    return "\n".join(textwrap.wrap(line, width, subsequent_indent="  "))


def cmd_layers(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    import torch

    loaded = _load(args)
    if args.input_size:
        shape = tuple(args.input_size)
    else:
        shape = (loaded.preprocess.channels, *loaded.preprocess.size)
    # Seeded noise, not zeros: on an all-zero input every ReLU sits at 0, so no gradient
    # reaches most layers and the gradient rule of 'auto' would reject them.
    inputs = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    table = layer_table(loaded.model, inputs)
    candidates = _auto_candidates(loaded.model, inputs)
    if args.json:
        found = [asdict(c) for c in candidates] if isinstance(candidates, list) else candidates
        print(json.dumps({"model": args.model, **table, "auto_candidates": found}, indent=1))
    else:
        width = (
            min(WIDTH, shutil.get_terminal_size((WIDTH, 24)).columns)
            if sys.stdout.isatty()
            else WIDTH
        )
        print(format_layers(table, args.model, width))
        print(f"\nHow 'auto' chose (latest layers first, the last {AUTO_ROWS} shown):")
        print(_candidates_text(candidates, width))
    return 0


AUTO_ROWS = 15


def _auto_candidates(model, inputs) -> list | str:
    """``"auto"``'s candidate layers with their verdicts (:func:`camlib.layers.layer_candidates`),
    or the reason none qualifies."""
    from .errors import CamlibError
    from .layers import layer_candidates

    try:
        return layer_candidates(model, inputs)
    except CamlibError as error:
        return str(error)


def _candidates_text(candidates: list | str, width: int) -> str:
    """The candidate table in ``width`` columns: layer, output shape, layout, verdict and
    reason (cut to fit); the full table is ``--json`` or
    :func:`camlib.layers.format_candidates`."""
    if isinstance(candidates, str):
        return f"  no layer qualifies: {candidates}"
    rows = candidates[:AUTO_ROWS]
    w = max((len(c.name) for c in rows), default=5)
    lines = [f"{'layer':<{w}}  {'shape':<16} {'layout':<15} verdict"]
    for c in rows:
        line = f"{c.name:<{w}}  {'x'.join(map(str, c.shape)):<16} {c.layout:<15} {c.verdict}"
        if c.verdict != "eligible":
            line += f": {c.reason}"
        lines.append(line if len(line) <= width else line[: width - 3] + "...")
    if len(candidates) > AUTO_ROWS:
        lines.append(f"... {len(candidates) - AUTO_ROWS} earlier layers")
    return "\n".join(lines)


# -- methods ---------------------------------------------------------------------------------
def cmd_methods(args: argparse.Namespace) -> int:
    from .base import available_methods, get_method

    for name in available_methods():
        print(method_line(name, get_method(name)))
    return 0


def method_line(name: str, cls: type) -> str:
    """One line of ``camlib methods``: name, class, what a call returns, what it explains,
    and what it needs (class attributes; plugins without them read as plain heatmap
    methods): ``returns = "concepts"`` (DFF: K concept maps per image), ``signed`` (guided
    methods), ``uses_layer``, ``needs_attention`` (LeGrad: transformers only),
    ``class_targets_only``, ``batch_independent = False`` (maps depend on the whole batch;
    ``camlib explain`` refuses them)."""
    if getattr(cls, "returns", None) == "concepts":
        kind = "K concept maps (N, K, H, W)"
    elif getattr(cls, "signed", False):
        kind = "signed (C, H, W) input map"
    else:
        kind = "heatmap"
    parts = [kind, "layer" if getattr(cls, "uses_layer", True) else "input only"]
    if getattr(cls, "needs_attention", False):
        parts.append("transformers only (reads attention)")
    if getattr(cls, "class_targets_only", False):
        parts.append("class targets only")
    if not getattr(cls, "batch_independent", True):
        parts.append("maps depend on the whole batch (not for camlib explain)")
    where = "" if cls.__module__.startswith("camlib.") else f"  [{cls.__module__}]"
    return f"{name:<20} {cls.__name__:<26} {', '.join(parts)}{where}"


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
