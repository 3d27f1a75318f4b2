"""Explaining and evaluating datasets of image files: the library functions behind
``camlib explain`` (:func:`explain_files`) and ``camlib evaluate`` (:func:`evaluate_files`).

Both are short compositions of the stages in :mod:`camlib.pipeline` (collect the files,
shard them over torchrun ranks, skip those whose record matches, decode them in
DataLoader workers, process each batch, merge every rank's rows); each supplies only its
:class:`~camlib.pipeline.Job`: what to compute on a batch and which files to write.

:func:`explain_files` reads the images with a :class:`torch.utils.data.DataLoader`
(decoding and resizing in worker processes, overlapping the model), explains them in
batches, and for every image writes, under ``out``:

* ``overlays/<name>.png`` - the map blended over the image (signed methods: the signed
  map as an RGB image), at the image's size;
* ``maps/<name>.npy`` - the map as float32 at the image's size, (H, W) in [0, 1]
  ((C, H, W) in [-1, 1] for signed methods);
* ``thumbs/<name>.jpg`` - a small copy of the overlay for the gallery;
* ``records/<name>.json`` - what was explained (class, score, layer) and with which
  settings; written last, it marks the image as complete for ``resume``;

and at the end ``results.csv`` (one row per image and explained class) and ``index.html``
(a gallery that opens offline). ``<name>`` is the image's path relative to the folder
or glob it came from (its file name when it was named directly) without the extension.

Every file is written to a temporary name and renamed into place, so an interrupted run
leaves only complete outputs; with ``resume=True`` images whose record matches the
settings and whose files exist are not explained again. An image that cannot be read
gets a row with ``status`` ``unreadable`` and does not stop the run.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the images are sharded by rank with
:mod:`torch.distributed` (gloo on CPU, nccl on GPU); each rank explains and writes its
share, and rank 0 writes the merged ``results.csv`` and ``index.html`` once every rank has
sent it its rows. The output folder must be visible to every rank (a shared file system
on a cluster) for the gallery to show every image; the CSV is complete in any case.

:func:`evaluate_files` scores the same way with :class:`camlib.evaluation.Evaluator` (see
its docstring for the files it writes); its boxes and masks are read and checked by
:func:`camlib.pipeline.load_annotations` before any forward pass.
"""

from __future__ import annotations

import csv
import html
import io
import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch
from torch import nn

from .maps import normalize_minmax, upsample
from .pipeline import (
    BOX_COLUMNS,
    IMAGE_EXTENSIONS,
    RECORD_VERSION,
    Annotations,
    BatchError,
    ImageFiles,
    Item,
    Job,
    RunSummary,
    _distributed,
    _gather,
    as_items,
    atomic_write,
    collect_inputs,
    fingerprint,
    load_annotations,
    read_record,
    resolve_device,
    run_dataset,
    write_record,
)

__all__ = [
    "CSV_COLUMNS",
    "IMAGE_EXTENSIONS",
    "RECORD_VERSION",
    "BatchError",
    "ImageFiles",
    "Item",
    "RunSummary",
    "atomic_write",
    "collect_inputs",
    "evaluate_files",
    "explain_files",
    "parse_targets",
    "resolve_device",
    "write_csv",
    "write_gallery",
    "_distributed",
    "_gather",
]

CSV_COLUMNS = (
    "file",
    "rank",
    "class_index",
    "class_name",
    "score",
    "method",
    "layer",
    "status",
    "message",
    "overlay",
    "map",
)
"""Columns of ``results.csv``; ``status`` is ``ok``, ``unreadable`` or ``error``."""


# -- targets ------------------------------------------------------------------------------
def parse_targets(spec: str | int | None) -> tuple[str, int]:
    """``"top"`` -> ("top", 1), ``"top-k=3"`` -> ("top", 3), ``"7"`` -> ("class", 7)."""
    if spec is None:
        return "top", 1
    text = str(spec).strip().lower()
    if text == "top":
        return "top", 1
    for prefix in ("top-k=", "topk=", "top-"):
        if text.startswith(prefix) and text[len(prefix) :].isdigit():
            k = int(text[len(prefix) :])
            if k < 1:
                break
            return "top", k
    if text.lstrip("-").isdigit() and int(text) >= 0:
        return "class", int(text)
    raise BatchError(
        f"targets {spec!r}: use 'top' (the top class), 'top-k=K' (the K top classes, one "
        f"map each) or a class index such as 207"
    )


# -- writing ------------------------------------------------------------------------------
def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _png_bytes(rgb: np.ndarray) -> bytes:
    import cv2

    # Fast deflate (level 1, Huffman only): ~15 % faster than the default and smaller on
    # photo-like overlays; the file is still an ordinary lossless PNG.
    params = [
        cv2.IMWRITE_PNG_COMPRESSION,
        1,
        cv2.IMWRITE_PNG_STRATEGY,
        cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
    ]
    ok, enc = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]), params)
    if not ok:
        raise OSError("PNG encoding failed")
    return enc.tobytes()


def _thumb_bytes(rgb: np.ndarray, side: int = 256) -> bytes:
    import cv2

    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    if scale < 1:
        rgb = cv2.resize(
            rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
    ok, enc = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise OSError("JPEG encoding failed")
    return enc.tobytes()


def _suffix(rank: int, k: int) -> str:
    return "" if k == 1 else f".top{rank + 1}"


def _paths(out: Path, name: str, rank: int, k: int) -> dict[str, str]:
    s = _suffix(rank, k)
    return {
        "overlay": f"overlays/{name}{s}.png",
        "map": f"maps/{name}{s}.npy",
        "thumb": f"thumbs/{name}{s}.jpg",
    }


def _complete(out: Path, item: Item, fingerprint: str) -> list[dict] | None:
    """The rows of a finished image, or ``None`` if it must be explained (again)."""
    record = read_record(out, item, fingerprint)
    if record is None:
        return None
    try:
        for row in record["rows"]:
            for key in ("overlay", "map", "thumb"):
                if (out / row[key]).stat().st_size == 0:
                    return None
    except (OSError, KeyError, TypeError):
        return None
    return record["rows"]


# -- explain -----------------------------------------------------------------------------------
def explain_files(
    model: nn.Module,
    inputs: Sequence[str | os.PathLike] | Sequence[Item],
    out: str | os.PathLike,
    *,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    channels: int = 3,
    method: str = "gradcam",
    layer: str | Sequence[str] = "auto",
    targets: str | int | None = "top",
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    amp: bool = False,
    workers: int = 2,
    resume: bool = False,
    categories: Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    progress: bool = True,
    title: str = "camlib",
) -> RunSummary:
    """Explain image files in batches and write maps, overlays, ``results.csv`` and a gallery.

    Args:
        model: the network (moved to ``device``; camlib does not call ``eval()``).
        inputs: image files, folders (searched recursively) and globs, or :class:`Item` s.
        out: output folder (created).
        preprocess: uint8 (H, W, C) image tensor -> (C, h, w) model input (runs in the
            DataLoader workers, so it must pickle), e.g. :class:`camlib.models_io.Preprocess`.
        channels: 1 to read images as grayscale, 3 for RGB.
        method: a registered method name (plugins included).
        layer: ``"auto"``, a layer name, or several names to fuse.
        targets: ``"top"``, ``"top-k=K"`` or a class index.
        batch_size, workers: DataLoader batch size and worker processes (0: decode in
            this process).
        device: ``"cpu"`` or ``"cuda"``; under torchrun each rank takes ``cuda:LOCAL_RANK``.
            The model is moved there with ``model.to`` (in place, as torch does), and
            stays there afterwards.
        amp: run the model under ``torch.autocast`` (bfloat16 on CPU, float16 on CUDA);
            maps are computed in float32.
        resume: skip images whose outputs are complete and made with the same settings.
        categories: class names by index, for the CSV and the gallery.
        options: keyword arguments of the method's constructor (e.g. ``batch_size``).
        settings: anything else that identifies the run for ``resume`` (model, weights).
        progress: show a tqdm progress bar (rank 0 only).

    Returns:
        A :class:`RunSummary`. Raises :class:`BatchError` for unusable settings and
        :class:`camlib.CamlibError` when the first batch shows the method cannot explain
        this model (e.g. a wrong layer name); failures of single images are in the summary.
    """
    from .base import get_method

    out = Path(out)
    dev = resolve_device(device)
    cls = get_method(method)
    check_one_map_per_image(cls)
    kind, k = parse_targets(targets)
    _check_loader_settings(batch_size, workers)
    signed = bool(getattr(cls, "signed", False))
    uses_layer = bool(getattr(cls, "uses_layer", True))
    layers = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    if not uses_layer and layers != ["auto"]:
        raise BatchError(f"method {cls.name!r} explains the input only: it takes no layer")
    items = as_items(inputs)
    key = fingerprint(
        {
            "method": cls.name,
            "layer": layers,
            "targets": [kind, k],
            "amp": amp,
            "preprocess": repr(preprocess),
            "options": {str(a): repr(b) for a, b in (options or {}).items()},
            "settings": {str(a): repr(b) for a, b in (settings or {}).items()},
        }
    )
    model = model.to(dev)
    explainer = (
        cls(model, layers if len(layers) > 1 else layers[0], **(options or {}))
        if uses_layer
        else cls(model, **(options or {}))
    )
    raw_maps = not signed and len(layers) == 1  # one interpolation, raw grid -> image size
    context = {
        "out": out,
        "method": cls.name,
        "signed": signed,
        "raw": raw_maps,
        "categories": list(categories) if categories else None,
        "k": k,
        "fingerprint": key,
    }

    job = _explain_job(explainer, model, context, kind, title)
    return run_dataset(
        items,
        out,
        job,
        preprocess=preprocess,
        channels=channels,
        device=dev,
        batch_size=batch_size,
        workers=workers,
        resume=resume,
        amp=amp,
        progress=progress,
    )


def _explain_job(explainer: Any, model: nn.Module, ctx: dict, kind: str, title: str) -> Job:
    """What ``camlib explain`` does with a batch: explain it (every rank of ``top-k``),
    bring each map to its image's size, write maps, overlays, thumbnails and records; at
    the end ``results.csv`` and ``index.html``."""
    out, k, raw, signed = ctx["out"], ctx["k"], ctx["raw"], ctx["signed"]

    def outputs(items: list[Item], batch: dict, results: list) -> list[Callable[[], list[dict]]]:
        layer_used = _layer_name(explainer)
        tasks = []
        for j, item in enumerate(items):
            size = tuple(batch["images"][j].shape[:2])
            per = [
                (_full_map(m[j], size, raw, signed), int(c[j]), float(s[j])) for m, c, s in results
            ]
            tasks.append(partial(_write_image, item, batch["images"][j], per, layer_used, ctx))
        return tasks

    def finish(summary: RunSummary) -> None:
        write_csv(out / "results.csv", summary.rows)
        write_gallery(out / "index.html", summary.rows, title=title)

    return Job(
        compute=lambda x, batch: _explain_batch(explainer, model, x, kind, k, raw),
        outputs=outputs,
        failed_row=lambda item, status, message: _failed_row(item, status, message, ctx["method"]),
        complete=lambda item: _complete(out, item, ctx["fingerprint"]),
        finish=finish,
        desc="explaining",
        folders=("overlays", "maps", "thumbs", "records"),
    )


def check_one_map_per_image(cls: type) -> None:
    """Refuse a method whose output ``camlib explain`` cannot write faithfully: one that
    returns several concept maps per image (``returns = "concepts"``, DFF) or whose maps
    depend on the whole batch (``batch_independent = False``). The files are explained in
    batches the pipeline chooses (``batch_size``, torchrun ranks, ``--resume``), so such
    maps would differ between batches with nothing in the outputs to say so."""
    from .base import not_one_map_per_image

    what = not_one_map_per_image(cls)
    if what is None:
        return
    how = (
        f"camlib.{cls.__name__}(model, layer).factorize(images)"
        if hasattr(cls, "factorize")
        else f"camlib.get_method({cls.name!r})(model, layer)(images)"
    )
    raise BatchError(
        f"camlib explain cannot run method {cls.name!r} ({cls.__name__}): it {what}, so images "
        f"in different batches (--batch-size, torchrun ranks, --resume) would get unrelated "
        f"maps. Explain the images to compare together in one call from Python: {how}"
    )


def _check_loader_settings(batch_size: int, workers: int) -> None:
    if batch_size < 1:
        raise BatchError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise BatchError(f"workers must be >= 0, got {workers}")


def _layer_name(explainer: Any) -> str:
    if not getattr(explainer, "uses_layer", True):
        return "input"
    blocks = getattr(explainer, "blocks", None)  # LeGrad: every block it reads
    names = (
        [ref.spec for ref in blocks]
        if blocks
        else getattr(explainer, "layer_names", None) or [getattr(explainer, "layer_name", "")]
    )
    return ",".join(str(n) for n in names if n)


def _explain_batch(
    explainer: Any, model: nn.Module, x: torch.Tensor, kind: str, k: int, raw: bool
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """[(maps on the CPU, classes, scores)] for each explained rank."""
    kw = {"upsample": False, "normalize": False} if raw else {}
    if kind == "class":
        ranks: list[Any] = [k]
    elif k == 1:
        ranks = [None]
    else:
        with torch.no_grad():
            logits = model(x)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise BatchError("top-k=K needs a model that returns (N, classes) logits")
        if k > logits.shape[1]:
            raise BatchError(f"top-k={k} but the model has {logits.shape[1]} classes")
        top = logits.topk(k, dim=1).indices
        ranks = [top[:, r] for r in range(k)]
    results = []
    for target in ranks:
        maps = explainer(x, target, **kw)
        classes = explainer.classes
        scores = explainer.scores
        if classes is None:
            classes = torch.full((x.shape[0],), -1)
        if scores is None:
            scores = torch.full((x.shape[0],), float("nan"))
        results.append((maps.float().cpu(), classes.cpu(), scores.float().cpu()))
    return results


def _full_map(m: torch.Tensor, size: tuple[int, int], raw: bool, signed: bool) -> np.ndarray:
    """One map at the image's size, as float32 numpy (computed here, in the main thread,
    so torch's thread pool is not entered from the writer threads)."""
    if raw:  # the raw grid, interpolated once to the image, then scaled to [0, 1]
        full = normalize_minmax(upsample(m.unsqueeze(0), size))[0]
    elif signed:
        full = torch.nn.functional.interpolate(
            m.unsqueeze(0), size=size, mode="bilinear", align_corners=False
        )[0].clamp_(-1, 1)
    else:
        full = upsample(m.unsqueeze(0), size)[0].clamp_(0, 1)
    return full.numpy().astype(np.float32, copy=False)


def _write_image(
    item: Item,
    image: torch.Tensor,
    per_rank: list[tuple[np.ndarray, int, float]],
    layer: str,
    ctx: dict,
) -> list[dict]:
    """Maps at the image's size -> .npy, overlay .png, thumbnail, then the record (a failure
    here fails this image only: the pipeline turns it into an ``error`` row)."""
    from . import viz

    out: Path = ctx["out"]
    k = len(per_rank)
    rgb = image.numpy()
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    rows = []
    for r, (array, cls_index, score) in enumerate(per_rank):
        shown = viz.signed_to_rgb(array) if ctx["signed"] else viz.overlay(rgb, array)
        paths = _paths(out, item.name, r, k)
        atomic_write(out / paths["map"], _npy_bytes(array))
        atomic_write(out / paths["overlay"], _png_bytes(shown))
        atomic_write(out / paths["thumb"], _thumb_bytes(shown))
        cats = ctx["categories"]
        rows.append(
            {
                "file": str(item.path),
                "rank": r + 1,
                "class_index": cls_index,
                "class_name": cats[cls_index] if cats and 0 <= cls_index < len(cats) else "",
                "score": score,
                "method": ctx["method"],
                "layer": layer,
                "status": "ok",
                "message": "",
                **paths,
            }
        )
    write_record(out, item, ctx["fingerprint"], rows)
    return rows


def _failed_row(item: Item, status: str, message: str, method: str) -> dict:
    return {
        "file": str(item.path),
        "rank": "",
        "class_index": "",
        "class_name": "",
        "score": "",
        "method": method,
        "layer": "",
        "status": status,
        "message": message.replace("\n", " ")[:500],
        "overlay": "",
        "map": "",
        "thumb": "",
    }


# -- evaluate ----------------------------------------------------------------------------------
PREVIEW = 64
"""Longest side of the small uint8 copies of each method's maps kept per image for
``report.html`` (``previews/NAME.npz``)."""


def evaluate_files(
    model: nn.Module,
    inputs: Sequence[str | os.PathLike] | Sequence[Item],
    out: str | os.PathLike,
    *,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    channels: int = 3,
    methods: str | Sequence[str] = "all",
    metrics: str | Sequence[str] = "default",
    layer: str | Sequence[str] = "auto",
    targets: str | int | None = "top",
    boxes: str | os.PathLike | None = None,
    masks: str | os.PathLike | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    workers: int = 2,
    resume: bool = False,
    seed: int = 0,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    metric_options: Mapping[str, Mapping[str, Any]] | None = None,
    primary: str | None = None,
    settings: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    title: str = "camlib evaluate",
    n_boot: int = 1000,
    plan_only: bool = False,
) -> RunSummary:
    """Rank methods with metrics on image files (:class:`camlib.evaluation.Evaluator` batch
    by batch) and write the leaderboard and ``report.html``.

    Writes, under ``out``: ``records/NAME.json`` (the image's metric rows, one per
    method, written atomically; ``resume`` skips images whose record matches),
    ``previews/NAME.npz`` (uint8 copies of its maps, longest side :data:`PREVIEW`, for the
    report), and at the end ``leaderboard.csv``, ``leaderboard.md``, ``per_image.csv``,
    ``leaderboard.png`` (:meth:`~camlib.evaluation.Leaderboard.save`), ``failed.csv`` and
    ``report.html`` (:func:`camlib.report.write_report`).

    Args:
        model, inputs, out, preprocess, channels, batch_size, workers, device, resume, settings: as
            for :func:`explain_files`.
        methods, metrics, layer, seed, method_options, metric_options: see
            :class:`~camlib.evaluation.Evaluator`.
        targets: ``"top"`` (each image's top class) or a class index.
        boxes: a CSV of one box per image (``file, x0, y0, x1, y1`` in the image's pixels,
            upper bounds exclusive), scaled to the input by
            :func:`~camlib.pipeline.scale_box`.
        masks: a folder of PNG masks (``NAME.png``), resized to the input with
            nearest-neighbour sampling (:func:`~camlib.pipeline.resize_mask`).
        primary: the metric that picks each method's best and worst images in the report
            (default ``deletion`` when it runs, else the first quality metric).
        progress: a tqdm bar (``None``: only when stderr is a terminal).
        n_boot: bootstrap resamples of the leaderboard's intervals.
        plan_only: check everything, put :meth:`Evaluator.plan` in ``summary.extra["plan"]``
            and stop before any forward pass.

    Returns:
        A :class:`RunSummary` (``explained``: images scored); on rank 0
        ``extra["leaderboard"]`` and ``outputs`` (the files written). Bad settings, boxes
        or masks raise :class:`BatchError` (or a :class:`~camlib.errors.CamlibError`)
        before any forward pass.

    Random draws (the ``random`` baseline, metrics' noise) come from one generator seeded
    with ``seed`` and advanced batch by batch, so an image's values for them depend on the
    batch it lands in: a resumed or sharded run matches a fresh one in distribution, not
    bit for bit.
    """
    from .evaluation import Evaluator

    out = Path(out)
    dev = resolve_device(device)
    target = _evaluate_target(targets)
    _check_loader_settings(batch_size, workers)
    items = as_items(inputs)
    _check_metric_needs(metrics, boxes is not None, masks is not None)
    notes = load_annotations(items, boxes, masks)  # every box and mask, before any forward
    model = model.to(dev)
    ev = Evaluator(
        model,
        methods,
        metrics,
        layer,
        seed=seed,
        method_options={k: dict(v) for k, v in (method_options or {}).items()},
        metric_options={k: dict(v) for k, v in (metric_options or {}).items()},
        boxes=notes.boxes is not None,
        masks=notes.masks is not None,
    )
    main = _primary_metric(ev.metrics, primary)
    if plan_only:
        return RunSummary(out=out, total=len(items), extra={"plan": ev.plan(len(items))})
    key = fingerprint(
        {
            "command": "evaluate",
            "rows": ev.rows_names,
            "metrics": [m.name for m in ev.metrics],
            "metric_options": {str(a): repr(b) for a, b in (metric_options or {}).items()},
            "method_options": {str(a): repr(b) for a, b in (method_options or {}).items()},
            "layer": repr(layer),
            "targets": target,
            "seed": seed,
            "preprocess": repr(preprocess),
            "annotations": [notes.boxes is not None, notes.masks is not None],
            "settings": {str(a): repr(b) for a, b in (settings or {}).items()},
        }
    )
    job = _evaluation_job(ev, out, key, notes, target, main, items, channels, seed, n_boot, title)
    return run_dataset(
        items,
        out,
        job,
        preprocess=preprocess,
        channels=channels,
        device=dev,
        batch_size=batch_size,
        workers=workers,
        resume=resume,
        progress=progress,
        annotate=notes if notes else None,
    )


def _evaluation_job(
    ev: Any,
    out: Path,
    key: str,
    notes: Annotations,
    target: int | None,
    primary: str,
    items: Sequence[Item],
    channels: int,
    seed: int,
    n_boot: int,
    title: str,
) -> Job:
    """What ``camlib evaluate`` does with a batch: score it with the evaluator (boxes and
    masks at the input's size), write each image's map previews and record; at the end
    the leaderboard files, ``failed.csv`` and ``report.html`` (:func:`_finish_evaluation`)."""
    by_id = {str(item.path): item for item in items}

    def compute(x: torch.Tensor, batch: dict) -> tuple[list[dict], dict[str, torch.Tensor]]:
        ids = [str(item.path) for item in batch["items"]]
        boxes_, masks_ = batch.get("boxes"), batch.get("masks")
        return ev.score(x, target, boxes_, masks_, image_ids=ids, return_maps=True)

    def outputs(done: list[Item], batch: dict, result: tuple) -> list[Callable[[], list[dict]]]:
        rows, maps = result
        names = list(maps)
        small = _previews(torch.stack([maps[n] for n in names], 1))  # (N, M, h, w) uint8
        mine: dict[str, list[dict]] = {}
        for r in rows:
            mine.setdefault(str(r["image"]), []).append({**r, "file": r["image"], "status": "ok"})
        return [
            partial(
                _write_scores,
                out,
                item,
                key,
                notes.stamp(item),
                names,
                small[j],
                mine.get(str(item.path), []),
            )
            for j, item in enumerate(done)
        ]

    def complete(item: Item) -> list[dict] | None:
        record = read_record(out, item, key)
        if record is None or record.get("annotation") != notes.stamp(item):
            return None
        if not (out / str(record.get("previews", "-"))).is_file():
            return None
        return record["rows"]

    def finish(summary: RunSummary) -> None:
        _finish_evaluation(summary, ev, primary, by_id, channels, seed, n_boot, title)

    return Job(
        compute=compute,
        outputs=outputs,
        failed_row=_failed_score,
        complete=complete,
        finish=finish,
        desc="evaluating",
        folders=("records", "previews"),
        stats=lambda: {"dropped": dict(ev.dropped)},
    )


def _evaluate_target(targets: str | int | None) -> int | None:
    kind, k = parse_targets(targets)
    if kind == "top" and k > 1:
        raise BatchError(
            f"targets {targets!r}: evaluate scores one map per image and method; use 'top' "
            f"(each image's top class) or a class index"
        )
    return None if kind == "top" else k


def _check_metric_needs(metrics: str | Sequence[str], boxes: bool, masks: bool) -> None:
    """A named metric that needs boxes or masks, with neither given: say which flag."""
    from .metrics.registry import METRICS

    if boxes or masks or (isinstance(metrics, str) and metrics in ("default", "all")):
        return
    names = [s.strip() for s in metrics.split(",")] if isinstance(metrics, str) else metrics
    for name in names:
        cls = METRICS[name] if isinstance(name, str) and name in METRICS else None
        if cls is not None and {"boxes", "masks"} & set(cls.needs):
            raise BatchError(
                f"metric {name!r} needs object boxes or masks: give boxes= (--boxes FILE.csv "
                f"with columns {', '.join(BOX_COLUMNS)}) or masks= (--masks DIR with one PNG "
                f"per image), or leave the metric out"
            )


def _primary_metric(metrics: Sequence[Any], primary: str | None) -> str:
    names = [m.name for m in metrics]
    if primary is None:
        if "deletion" in names:
            return "deletion"
        quality = [m.name for m in metrics if m.category != "cost"]
        return (quality or names)[0]
    norm = {n.lower().replace("-", "").replace("_", ""): n for n in names}
    found = norm.get(primary.lower().replace("-", "").replace("_", ""))
    if found is None:
        raise BatchError(
            f"primary metric {primary!r} is not among the metrics run ({', '.join(names)})"
        )
    return found


def _previews(maps: torch.Tensor) -> np.ndarray:
    """(N, M, H, W) maps in [0, 1] -> (N, M, h, w) uint8, longest side :data:`PREVIEW`."""
    h, w = maps.shape[-2:]
    scale = min(1.0, PREVIEW / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    small = torch.nn.functional.interpolate(maps.float(), size=size, mode="area")
    return small.clamp_(0, 1).mul_(255).round_().to(torch.uint8).numpy()


def _write_scores(
    out: Path,
    item: Item,
    key: str,
    stamp: dict,
    names: list[str],
    previews: np.ndarray,
    rows: list[dict],
) -> list[dict]:
    """The image's map previews, then its record (its metric rows): last, atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, methods=np.array(names), maps=previews)
    relative = f"previews/{item.name}.npz"
    atomic_write(out / relative, buf.getvalue())
    write_record(out, item, key, rows, annotation=stamp, previews=relative)
    return rows


def _failed_score(item: Item, status: str, message: str) -> dict:
    text = message.replace("\n", " ")[:500]
    return {
        "file": str(item.path),
        "image": str(item.path),
        "method": "",
        "status": status,
        "message": text,
    }


def _finish_evaluation(
    summary: RunSummary,
    ev: Any,
    primary: str,
    by_id: Mapping[str, Item],
    channels: int,
    seed: int,
    n_boot: int,
    title: str,
) -> None:
    """Rank 0, every rank's rows in hand: the leaderboard files, failed.csv, report.html."""
    from .evaluation import Leaderboard
    from .report import write_report

    out = summary.out
    dropped: dict[str, str] = {}
    for stats in summary.per_rank:
        dropped.update(stats.get("dropped", {}))
    keep = ("image", "method", "class", *(m.name for m in ev.metrics))
    rows = [
        {k: r[k] for k in keep if k in r}
        for r in summary.rows
        if r.get("status", "ok") == "ok" and r["method"] not in dropped
    ]
    board = None
    if rows:
        board = Leaderboard.from_rows(rows, ev.metrics, seed=seed, n_boot=n_boot)
        board.dropped = dropped
        summary.outputs.update(board.save(out))
        summary.extra["leaderboard"] = board
    failed = io.StringIO()
    writer = csv.writer(failed, lineterminator="\n")
    writer.writerow(["file", "status", "message"])
    writer.writerows(summary.failed)
    atomic_write(out / "failed.csv", failed.getvalue().encode())
    summary.outputs["failed"] = out / "failed.csv"
    cache: dict[str, dict[str, np.ndarray] | None] = {}

    def preview(image_id: str, method: str) -> np.ndarray | None:
        if image_id not in cache:
            item = by_id.get(image_id)
            try:
                with np.load(out / "previews" / f"{item.name}.npz") as z:  # type: ignore[union-attr]
                    cache[image_id] = dict(zip(z["methods"].tolist(), z["maps"], strict=True))
            except (OSError, ValueError, KeyError, AttributeError):
                cache[image_id] = None
        maps = cache[image_id]
        return None if maps is None else maps.get(method)

    n_images = len({r["image"] for r in rows})
    notes = [
        f"{n_images} image(s) scored, {len(summary.failed)} failed; "
        f"{len(board.summary) if board else 0} rows x {len(ev.metrics)} metrics; seed {seed}",
    ]
    figure = summary.outputs.get("figure")
    write_report(
        out / "report.html",
        board,
        primary=primary,
        preview=preview,
        failed=summary.failed,
        title=title,
        notes=notes,
        figure=figure.read_bytes() if figure is not None else None,
        channels=channels,
    )
    summary.outputs["report"] = out / "report.html"


# -- merged outputs ---------------------------------------------------------------------------
def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """``results.csv`` (see :data:`CSV_COLUMNS`), written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        r = dict(row)
        if isinstance(r.get("score"), float):
            r["score"] = f"{r['score']:.6g}"
        writer.writerow(r)
    atomic_write(path, buf.getvalue().encode())


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 0; background: #f4f4f6; color: #222; }}
header {{ position: sticky; top: 0; background: #283593; color: #fff; padding: 10px 16px;
  display: flex; gap: 16px; align-items: center; flex-wrap: wrap; z-index: 1; }}
header h1 {{ font-size: 18px; margin: 0; }}
header input {{ padding: 4px 8px; border-radius: 4px; border: 0; min-width: 220px; }}
main {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr));
  gap: 12px; padding: 16px; align-items: start; }}
figure {{ margin: 0; background: #fff; border-radius: 6px; overflow: hidden;
  box-shadow: 0 1px 3px rgba(0,0,0,.15); }}
figure img {{ width: 100%; aspect-ratio: 1; object-fit: contain; background: #111;
  display: block; }}
figcaption {{ padding: 6px 8px; line-height: 1.35; }}
.file {{ font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }}
.cls {{ font-weight: 600; }} .meta {{ color: #666; font-size: 12px; }}
figure.failed {{ border: 2px solid #c62828; }} .err {{ color: #c62828; font-size: 12px; }}
.hidden {{ display: none; }}
</style></head>
<body><header><h1>{title}</h1><span>{summary}</span>
<input id="q" type="search" placeholder="filter by file, class, status"></header>
<main id="grid">
{cards}
</main>
<script>
const q = document.getElementById("q");
q.addEventListener("input", () => {{
  const t = q.value.toLowerCase();
  for (const f of document.querySelectorAll("figure"))
    f.classList.toggle("hidden", !!t && !f.dataset.text.includes(t));
}});
</script>
</body></html>
"""


def write_gallery(path: Path, rows: Sequence[Mapping[str, Any]], *, title: str = "camlib") -> None:
    """``index.html``: a card per image and class (thumbnail linking to the overlay, class,
    score, layer) and one per failed image; plain HTML with relative links, so it opens
    from disk with no server or network."""
    cards = []
    ok = sum(1 for r in rows if r["status"] == "ok" and int(r["rank"] or 1) == 1)
    bad = sum(1 for r in rows if r["status"] != "ok")
    ranked = {str(r["file"]) for r in rows if r["status"] == "ok" and int(r["rank"]) > 1}
    for r in rows:
        esc = html.escape
        file = str(r["file"])
        text = " ".join(str(r.get(c, "")) for c in ("file", "class_index", "class_name", "status"))
        if r["status"] == "ok":
            name = f" {esc(str(r['class_name']))}" if r.get("class_name") else ""
            score = r["score"]
            score_text = f"{score:.4g}" if isinstance(score, float) else esc(str(score))
            rank = f"top-{r['rank']} " if file in ranked else ""
            cards.append(
                f'<figure data-text="{esc(text.lower())}"><a href="{quote(r["overlay"])}">'
                f'<img loading="lazy" src="{quote(r["thumb"])}" alt="{esc(file)}"></a>'
                f'<figcaption><div class="file">{esc(file)}</div>'
                f'<div class="cls">{rank}class {esc(str(r["class_index"]))}{name}</div>'
                f'<div class="meta">score {score_text} &middot; {esc(str(r["method"]))} @ '
                f'{esc(str(r["layer"]))} &middot; <a href="{quote(r["map"])}">.npy</a></div>'
                f"</figcaption></figure>"
            )
        else:
            cards.append(
                f'<figure class="failed" data-text="{esc(text.lower())}"><figcaption>'
                f'<div class="file">{esc(file)}</div><div class="cls">{esc(str(r["status"]))}'
                f'</div><div class="err">{esc(str(r["message"]))}</div></figcaption></figure>'
            )
    summary = f"{ok} image(s) explained" + (f", {bad} failed" if bad else "")
    page = _PAGE.format(title=html.escape(title), summary=summary, cards="\n".join(cards))
    atomic_write(path, page.encode())
