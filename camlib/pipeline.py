"""The stages of a run over image files, shared by ``camlib explain`` and ``camlib evaluate``.

A run is a chain of small stages; each command supplies only what it does with a batch
(a :class:`Job`) and composes the rest with :func:`run_dataset`:

1. :func:`collect_inputs` - image files from files, folders and globs, with output names;
2. :func:`shard` - under ``torchrun`` rank *r* takes every *N*-th image
   (:func:`distributed` joins the process group);
3. :func:`resume_split` - images whose per-image record matches the settings are done
   (:func:`read_record`, :func:`write_record`);
4. :func:`image_loader` - a :class:`~torch.utils.data.DataLoader` over :class:`ImageFiles`
   decodes and preprocesses the rest in worker processes, with the boxes and masks of
   :class:`Annotations` (checked up front by :func:`load_annotations`) scaled to the model
   input;
5. :func:`process_batches` - the job's ``compute`` on each batch (on the device), then its
   per-image ``outputs`` on writer threads; every file goes through :func:`atomic_write`;
6. :func:`merge_rows` - every rank's rows gathered on every rank; rank 0 runs the job's
   ``finish`` (the merged CSV, the gallery or the report).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import json
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CamlibError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
"""Extensions picked up in folders and globs (a file named directly is always tried)."""

RECORD_VERSION = 1


class BatchError(CamlibError, ValueError):
    """Bad inputs or settings for a run over files (found before any image is read)."""


# -- 1. inputs ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One image file and the name its outputs get (posix, relative, extension kept)."""

    path: Path
    name: str


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[Item]:
    """Image files from files, folders (recursively) and globs, sorted by output name.

    Raises :class:`BatchError` for an input that names nothing (a missing file, an empty
    folder, a glob without matches). Output names that would collide get ``~2``, ``~3``.
    """
    found: list[tuple[Path, str]] = []
    seen: set[Path] = set()

    def add(path: Path, name: str) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append((path, name))

    for raw in inputs:
        text = os.fspath(raw)
        path = Path(text)
        if path.is_file():
            add(path, path.name)
        elif path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not files:
                raise BatchError(
                    f"folder {text!r} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
            for p in files:
                add(p, p.relative_to(path).as_posix())
        elif glob.has_magic(text):
            base = Path(_glob_base(text))
            matches = sorted(
                Path(m)
                for m in glob.glob(text, recursive=True)
                if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_EXTENSIONS
            )
            if not matches:
                raise BatchError(f"the pattern {text!r} matches no image files")
            for p in matches:
                add(p, p.relative_to(base).as_posix() if p.is_relative_to(base) else p.name)
        else:
            raise BatchError(f"input {text!r}: no such file or folder")
    # Outputs are named without the image's extension unless two images would collide.
    stems = [str(Path(name).with_suffix("")) for _, name in found]
    clash = {s for s in stems if stems.count(s) > 1}
    items, used = [], set()
    for (path, name), stem in zip(found, stems, strict=True):
        base = name if stem in clash else stem
        unique, k = base, 1
        while unique in used:
            k += 1
            unique = f"{base}~{k}"
        used.add(unique)
        items.append(Item(path, unique))
    return sorted(items, key=lambda it: it.name)


def as_items(inputs: Sequence[str | os.PathLike] | Sequence[Item]) -> list[Item]:
    """``inputs`` as :class:`Item` s: given as such, or collected by :func:`collect_inputs`."""
    if inputs and all(isinstance(i, Item) for i in inputs):
        return list(inputs)  # type: ignore[arg-type]
    return collect_inputs(inputs)  # type: ignore[arg-type]


def _glob_base(pattern: str) -> str:
    parts = Path(pattern).parts
    base = []
    for part in parts:
        if glob.has_magic(part):
            break
        base.append(part)
    return str(Path(*base)) if base else "."


# -- 2. sharding ------------------------------------------------------------------------------
def resolve_device(device: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``; under torchrun ``"cuda"`` is ``cuda:LOCAL_RANK``.

    Raises :class:`BatchError` when CUDA is asked for and is not available.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            built = "with" if torch.backends.cuda.is_built() else "without"
            raise BatchError(
                f"--device {device} was asked for, but CUDA is not available (this torch "
                f"{torch.__version__} is built {built} CUDA and sees no GPU); use --device cpu"
            )
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if dev.index >= torch.cuda.device_count():
            raise BatchError(
                f"device {dev} does not exist: {torch.cuda.device_count()} GPU(s) visible"
            )
    elif dev.type != "cpu":
        raise BatchError(f"--device must be cpu or cuda[:N], got {device!r}")
    return dev


@contextlib.contextmanager
def distributed(device: torch.device) -> Iterator[tuple[int, int]]:
    """(rank, world size); joins the torchrun process group when ``WORLD_SIZE`` > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield 0, 1
        return
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        if created:
            dist.destroy_process_group()


_distributed = distributed  # the name camlib.batch used


def shard(items: Sequence[Item], rank: int, world: int) -> list[Item]:
    """Rank ``rank``'s share of the (sorted) items: every ``world``-th one from ``rank``."""
    return list(items[rank::world])


def _gather(obj: Any, world: int) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` without torch.distributed)."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, obj)
    return parts


# -- 3. records and resume -----------------------------------------------------------------------
def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers (and a
    later ``resume``) see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A short hash of the settings that decide an image's outputs (JSON, sorted keys)."""
    text = json.dumps(dict(settings), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def source_stamp(path: Path) -> list[int]:
    """(size, mtime in ns) of an image file: a changed file is processed again."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def record_path(out: Path, name: str) -> Path:
    """Where the record of the image named ``name`` lives."""
    return out / "records" / f"{name}.json"


def write_record(out: Path, item: Item, fingerprint: str, rows: list[dict], **extra: Any) -> None:
    """The image's record, written last (atomically): it marks the image as complete."""
    record = {
        "version": RECORD_VERSION,
        "fingerprint": fingerprint,
        "source": source_stamp(item.path),
        "rows": rows,
        **extra,
    }
    atomic_write(record_path(out, item.name), json.dumps(record, indent=1).encode())


def read_record(out: Path, item: Item, fingerprint: str) -> dict | None:
    """The image's record if it was made with these settings from this very file, else None."""
    try:
        record = json.loads(record_path(out, item.name).read_text())
        if (
            record.get("version") != RECORD_VERSION
            or record.get("fingerprint") != fingerprint
            or record.get("source") != source_stamp(item.path)
            or not isinstance(record.get("rows"), list)
        ):
            return None
        return record
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def resume_split(
    items: Sequence[Item], complete: Callable[[Item], list[dict] | None] | None
) -> tuple[list[dict], list[Item]]:
    """(rows of the images already complete, images still to do); ``complete=None``: all."""
    rows: list[dict] = []
    todo: list[Item] = []
    for item in items:
        done = complete(item) if complete is not None else None
        if done is None:
            todo.append(item)
        else:
            rows.extend(done)
    return rows, todo


# -- 4. decoding (in DataLoader workers) -------------------------------------------------------
class ImageFiles(torch.utils.data.Dataset):
    """Decodes one image file into a sample dict: ``index``, ``input`` (the model input, or
    None), ``image`` (uint8 (H, W, C)), ``error`` (why it could not be read) and what
    ``annotate`` adds (``box`` and ``mask`` at the model input's size for
    :func:`camlib.batch.evaluate_files`).

    The image is EXIF-rotated (as viewers show it) and converted to RGB, or to grayscale
    for one-channel models; ``preprocess`` turns it into the model's input.

    Args:
        items: the images.
        preprocess: uint8 (H, W, C) -> (C, h, w); must pickle (it runs in the workers).
        channels: 1 for grayscale, 3 for RGB.
        annotate: optional ``annotate(item, image, input) -> dict`` adding per-image
            tensors (a scaled box, a resized mask); must pickle.
    """

    def __init__(
        self,
        items: Sequence[Item],
        preprocess: Callable[[torch.Tensor], torch.Tensor],
        channels: int = 3,
        annotate: Callable[[Item, torch.Tensor, torch.Tensor], dict] | None = None,
    ) -> None:
        self.items = list(items)
        self.preprocess = preprocess
        self.channels = channels
        self.annotate = annotate

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            image = read_image(self.items[i].path, self.channels)
            x = self.preprocess(image)
            extra = self.annotate(self.items[i], image, x) if self.annotate else {}
            return {"index": i, "input": x, "image": image, "error": "", **extra}
        except Exception as exc:  # noqa: BLE001 - any decoder failure is this image's fault
            return {
                "index": i,
                "input": None,
                "image": None,
                "error": f"{type(exc).__name__}: {exc}",
            }


def read_image(path: Path, channels: int = 3) -> torch.Tensor:
    """uint8 (H, W, C) tensor of an image file, EXIF-rotated, RGB (or grayscale: C = 1)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        im = im.convert("L" if channels == 1 else "RGB")
        array = np.array(im, dtype=np.uint8)
    image = torch.from_numpy(array)
    return image.unsqueeze(-1) if image.dim() == 2 else image


def _collate(samples: list[dict]) -> dict[str, Any]:
    good = [s for s in samples if s["input"] is not None]
    batch: dict[str, Any] = {
        "index": [s["index"] for s in good],
        "inputs": torch.stack([s["input"] for s in good]) if good else None,
        "images": [s["image"] for s in good],
        "failed": [(s["index"], s["error"]) for s in samples if s["input"] is None],
    }
    for key in ("box", "mask"):
        if good and key in good[0]:
            batch[f"{key}es" if key == "box" else f"{key}s"] = torch.stack([s[key] for s in good])
    return batch


# -- 4b. boxes and masks (camlib evaluate) ---------------------------------------------------------
BOX_COLUMNS = ("file", "x0", "y0", "x1", "y1")
"""Columns a boxes CSV must have (others are ignored)."""


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file as it is shown (after its EXIF rotation), from its header."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def scale_box(
    box: Sequence[Fraction], image_hw: Sequence[int], input_hw: Sequence[int]
) -> list[int]:
    r"""A box in image pixels -> the input pixels that cover it, for a whole-image resize.

    The preprocessing resizes the whole image (no crop) from (H, W) to (h, w), so image
    x-coordinates scale by :math:`s_x = w / W` and y by :math:`s_y = h / H`; the box
    becomes the smallest box of whole input pixels that covers the scaled one:

    .. math:: x_0' = \lfloor x_0 s_x \rfloor,\ y_0' = \lfloor y_0 s_y \rfloor,\
              x_1' = \lceil x_1 s_x \rceil,\ y_1' = \lceil y_1 s_y \rceil

    computed exactly (fractions, no rounding error), upper bounds exclusive.
    """
    (big_h, big_w), (h, w) = image_hw, input_hw
    x0, y0, x1, y1 = (Fraction(v) for v in box)
    return [
        math.floor(x0 * w / big_w),
        math.floor(y0 * h / big_h),
        math.ceil(x1 * w / big_w),
        math.ceil(y1 * h / big_h),
    ]


def read_mask(path: Path) -> torch.Tensor:
    """(H, W) bool mask from an image file: True where a pixel is not 0 (any colour
    channel for RGB; alpha ignored)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
            array = np.array(im.convert("RGB")) != 0
            return torch.from_numpy(array.any(-1))
        return torch.from_numpy(np.array(im) != 0)


def resize_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(H, W) bool -> (h, w) bool, nearest neighbour on the pixel centres the resize of the
    image samples (``nearest-exact``, the geometry of ``align_corners=False``)."""
    m = mask[None, None].float()
    out = torch.nn.functional.interpolate(m, size=tuple(size), mode="nearest-exact")
    return out[0, 0] > 0.5


@dataclass(frozen=True)
class Annotations:
    """Per-image boxes (image pixels) and mask files, checked by :func:`load_annotations`;
    called in the DataLoader workers, it scales them to the model input.

    Attributes:
        boxes: ``{item name: (x0, y0, x1, y1)}`` in the image's pixels, upper bounds
            exclusive, or None.
        masks: ``{item name: mask file}``, or None.
    """

    boxes: Mapping[str, tuple[Fraction, ...]] | None = None
    masks: Mapping[str, Path] | None = None

    def __bool__(self) -> bool:
        return self.boxes is not None or self.masks is not None

    def __call__(self, item: Item, image: torch.Tensor, x: torch.Tensor) -> dict:
        """``box`` (4,) long and ``mask`` (h, w) bool at the size of the input ``x``."""
        out: dict[str, torch.Tensor] = {}
        input_hw, image_hw = tuple(x.shape[-2:]), tuple(image.shape[:2])
        if self.boxes is not None:
            box = scale_box(self.boxes[item.name], image_hw, input_hw)
            out["box"] = torch.tensor(box, dtype=torch.long)
        if self.masks is not None:
            mask = read_mask(self.masks[item.name])
            if tuple(mask.shape) != image_hw:
                raise BatchError(
                    f"mask {str(self.masks[item.name])!r} is {tuple(mask.shape)} (H, W) but the "
                    f"image {str(item.path)!r} is {image_hw}: a mask must have its image's size"
                )
            out["mask"] = resize_mask(mask, input_hw)
        return out

    def stamp(self, item: Item) -> dict:
        """What the image's record keeps of its annotation (a change redoes the image)."""
        stamp: dict[str, Any] = {}
        if self.boxes is not None:
            stamp["box"] = [str(v) for v in self.boxes[item.name]]
        if self.masks is not None:
            stamp["mask"] = [str(self.masks[item.name]), *source_stamp(self.masks[item.name])]
        return stamp


def load_annotations(
    items: Sequence[Item],
    boxes: str | os.PathLike | None = None,
    masks: str | os.PathLike | None = None,
) -> Annotations:
    """Read and check a boxes CSV and a masks folder against the images, reading no more
    than the image headers. Raises :class:`BatchError` naming the file, the row, the shape
    and what is allowed when anything does not fit:

    * ``boxes``: a CSV with a header and the columns ``file, x0, y0, x1, y1`` (pixels of the
      image as shown, upper bounds exclusive), one row per image; ``file`` is the image's
      path (as given, or relative to the CSV's folder), its path relative to the input
      folder (with or without the extension), or its file name when no other image has it;
    * ``masks``: a folder with one mask image per image: ``NAME.png`` where NAME is the
      image's path relative to its input folder without the extension (``cats/tabby.png``),
      or, in a flat folder, the image's file stem; the same (H, W) as its image.
    """
    if boxes is None and masks is None:
        return Annotations()
    sizes = _sizes(items)
    return Annotations(
        _load_boxes(items, Path(boxes), sizes) if boxes is not None else None,
        _find_masks(items, Path(masks), sizes) if masks is not None else None,
    )


def _sizes(items: Sequence[Item]) -> dict[str, tuple[int, int] | None]:
    """Header sizes; None for a file that cannot be read (it fails later as unreadable)."""
    sizes: dict[str, tuple[int, int] | None] = {}
    for item in items:
        try:
            sizes[item.name] = image_size(item.path)
        except Exception:  # noqa: BLE001 - the decoder reports it, as for any image
            sizes[item.name] = None
    return sizes


def _item_keys(items: Sequence[Item]) -> dict[str, list[Item]]:
    keys: dict[str, list[Item]] = {}
    for item in items:
        names = {item.name, item.name + item.path.suffix, item.path.name}
        for key in names:
            keys.setdefault(key, []).append(item)
    return keys


def _load_boxes(
    items: Sequence[Item], path: Path, sizes: Mapping[str, tuple[int, int] | None]
) -> dict[str, tuple[Fraction, ...]]:
    if not path.is_file():
        raise BatchError(f"boxes file {str(path)!r} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in BOX_COLUMNS if c not in header]
        if missing:
            raise BatchError(
                f"boxes file {str(path)!r} has the columns {header or 'none'}; it needs a header "
                f"line with {', '.join(BOX_COLUMNS)} (pixels of the original image, x1 and y1 "
                f"exclusive); missing: {', '.join(missing)}"
            )
        table = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    by_path = {item.path.resolve(): item for item in items}
    keys = _item_keys(items)
    boxes: dict[str, tuple[Fraction, ...]] = {}
    rows_of: dict[str, int] = {}
    for line, row in enumerate(table, start=2):
        where = f"boxes file {str(path)!r} line {line}"
        item = _match(row["file"], path.parent, by_path, keys, where, len(items))
        if item.name in boxes:
            raise BatchError(
                f"{where}: a second box for {str(item.path)!r} (first on line "
                f"{rows_of[item.name]}); give one box per image, or a mask (--masks) for "
                f"several objects"
            )
        try:
            box = tuple(Fraction(row[c]) for c in BOX_COLUMNS[1:])
        except (ValueError, ZeroDivisionError):
            values = ", ".join(repr(row[c]) for c in BOX_COLUMNS[1:])
            raise BatchError(f"{where}: x0, y0, x1, y1 must be numbers, got {values}") from None
        size = sizes[item.name]
        if size is not None:
            h, w = size
            x0, y0, x1, y1 = box
            if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
                shown = ", ".join(row[c] for c in BOX_COLUMNS[1:])
                raise BatchError(
                    f"{where}: the box ({shown}) of {str(item.path)!r} does not fit its image of "
                    f"(H, W) = ({h}, {w}): need 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h} "
                    f"(pixels, x1 and y1 exclusive)"
                )
        boxes[item.name] = box
        rows_of[item.name] = line
    # An image that cannot be read needs no box: it fails as unreadable in any case.
    lacking = [str(it.path) for it in items if it.name not in boxes and sizes[it.name]]
    if lacking:
        more = f" and {len(lacking) - 5} more" if len(lacking) > 5 else ""
        raise BatchError(
            f"boxes file {str(path)!r} has no box for {len(lacking)} of the {len(items)} "
            f"images: {', '.join(lacking[:5])}{more}; every image needs one row"
        )
    return boxes


def _match(
    text: str,
    folder: Path,
    by_path: Mapping[Path, Item],
    keys: Mapping[str, list[Item]],
    where: str,
    n: int,
) -> Item:
    """The input a CSV's ``file`` cell names (see :func:`load_annotations`)."""
    candidates = [Path(text)] if Path(text).is_absolute() else [Path(text), folder / text]
    for c in candidates:
        if c.is_file() and c.resolve() in by_path:
            return by_path[c.resolve()]
    found = keys.get(text.replace("\\", "/"), [])
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise BatchError(
            f"{where}: {text!r} names {len(found)} inputs ({', '.join(str(i.path) for i in found)});"
            f" give the path"
        )
    raise BatchError(
        f"{where} names {text!r}, which is not among the {n} input images; name an image by its "
        f"path, its path relative to the input folder, or its file name"
    )


def _find_masks(
    items: Sequence[Item], folder: Path, sizes: Mapping[str, tuple[int, int] | None]
) -> dict[str, Path]:
    if not folder.is_dir():
        raise BatchError(f"masks folder {str(folder)!r} does not exist")
    stems: dict[str, int] = {}
    for item in items:
        stems[item.path.stem] = stems.get(item.path.stem, 0) + 1
    found: dict[str, Path] = {}
    lacking: list[str] = []
    for item in items:
        tried = [folder / f"{item.name}.png"]
        if stems[item.path.stem] == 1 and item.name != item.path.stem:
            tried.append(folder / f"{item.path.stem}.png")
        mask = next((p for p in tried if p.is_file()), None)
        if mask is None and sizes[item.name] is None:
            continue  # unreadable: it fails as such, mask or not
        if mask is None:
            lacking.append(f"{str(item.path)!r} (looked for {', '.join(map(str, tried))})")
            continue
        try:
            mask_hw = image_size(mask)
        except Exception as exc:  # noqa: BLE001
            raise BatchError(
                f"mask {str(mask)!r} of {str(item.path)!r} cannot be read: {type(exc).__name__}: "
                f"{exc}"
            ) from None
        size = sizes[item.name]
        if size is not None and mask_hw != size:
            raise BatchError(
                f"mask {str(mask)!r} is (H, W) = {mask_hw} but its image {str(item.path)!r} is "
                f"{size}: a mask must have the size of its image (as shown, after EXIF rotation)"
            )
        found[item.name] = mask
    if lacking:
        more = f" and {len(lacking) - 3} more" if len(lacking) > 3 else ""
        raise BatchError(
            f"masks folder {str(folder)!r} has no mask for {len(lacking)} of the {len(items)} "
            f"images: {'; '.join(lacking[:3])}{more}; every image needs a PNG mask"
        )
    return found


def image_loader(
    todo: Sequence[Item],
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    channels: int,
    batch_size: int,
    workers: int,
    device: torch.device,
    annotate: Callable[[Item, torch.Tensor, torch.Tensor], dict] | None = None,
) -> torch.utils.data.DataLoader:
    """Batches of decoded images (dicts of stacked tensors and per-image fields), decoded in ``workers``
    processes (0: in this one)."""
    return torch.utils.data.DataLoader(
        ImageFiles(todo, preprocess, channels, annotate),
        batch_size=batch_size,
        num_workers=workers if todo else 0,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )


# -- 5. processing -----------------------------------------------------------------------------
@dataclass
class RunSummary:
    """What a run over files did (on this rank; ``rows`` are every rank's)."""

    total: int = 0
    """Images on this rank."""
    explained: int = 0
    """Images processed (explained or scored) on this rank."""
    resumed: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    """(file, status, message) of every image that failed, all ranks."""
    seconds: float = 0.0
    """Wall time of the processing loop on this rank (model loading excluded)."""
    rows: list[dict] = field(default_factory=list)
    rank: int = 0
    world_size: int = 1
    per_rank: list[dict] = field(default_factory=list)
    """``explained``, ``resumed`` and ``seconds`` of every rank."""
    out: Path = Path(".")
    outputs: dict[str, Path] = field(default_factory=dict)
    """Merged files rank 0 wrote (evaluate: the leaderboard, the report)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """What the command adds (evaluate: the :class:`~camlib.evaluation.Leaderboard`)."""

    @property
    def images_per_second(self) -> float:
        """Images processed per second on this rank."""
        return self.explained / self.seconds if self.seconds > 0 else 0.0

    @property
    def explained_all(self) -> int:
        """Images processed by every rank together."""
        return sum(s["explained"] for s in self.per_rank) if self.per_rank else self.explained

    @property
    def resumed_all(self) -> int:
        return sum(s["resumed"] for s in self.per_rank) if self.per_rank else self.resumed


WriteTask = Callable[[], list[dict]]


@dataclass
class Job:
    """What one command does with the images; every other stage is shared.

    Attributes:
        compute: ``(inputs on the device, batch) -> result``, in the main thread under the
            run's autocast (``batch`` also holds ``items``, ``images`` and, with
            :class:`Annotations`, ``boxes`` and ``masks`` at the input's size). A
            :class:`~camlib.errors.CamlibError` before any image was processed stops the
            run (the settings do not fit the model); any later error fails the batch's
            images only.
        outputs: ``(items, batch, result) -> [task per image]``, built in the main thread
            (torch work belongs here); each task runs on a writer thread, writes the
            image's files (its record last) and returns its rows.
        failed_row: ``(item, status, message) -> row`` for an image that failed.
        complete: ``item -> rows`` of an image whose record matches, or None (resume).
        finish: ``summary -> None``, run on rank 0 with every rank's rows to write the
            merged files.
        desc: the progress bar's label.
    """

    compute: Callable[[torch.Tensor, dict], Any]
    outputs: Callable[[list[Item], dict, Any], list[WriteTask]]
    failed_row: Callable[[Item, str, str], dict]
    complete: Callable[[Item], list[dict] | None]
    finish: Callable[[RunSummary], None]
    desc: str = "processing"
    folders: tuple[str, ...] = ()
    """Output subfolders created up front."""
    stats: Callable[[], dict] | None = None
    """Extra per-rank facts gathered with the rows (in ``summary.per_rank``)."""


def _progress(total: int, enabled: bool | None, world: int, desc: str):
    """A tqdm bar on stderr (``enabled=None``: only when stderr is a terminal)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        enabled = False
    if not enabled:
        return _NoBar()
    label = desc if world == 1 else f"{desc} (rank 0 of {world})"
    return tqdm(total=total, unit="img", desc=label, file=sys.stderr, dynamic_ncols=True)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _guarded(job: Job, item: Item, task: WriteTask) -> list[dict]:
    """Run one image's write task; a disk or encoder failure fails this image only."""
    try:
        return task()
    except Exception as exc:  # noqa: BLE001
        row = job.failed_row(item, "error", f"writing outputs: {type(exc).__name__}: {exc}")
        row["_written"] = True
        return [row]


def process_batches(
    loader: torch.utils.data.DataLoader,
    todo: Sequence[Item],
    job: Job,
    device: torch.device,
    summary: RunSummary,
    *,
    amp: bool = False,
    bar: Any = None,
) -> list[dict]:
    """Run ``job`` over the loader's batches; returns the rows of the images in ``todo``.

    Counts processed images in ``summary.explained`` and the loop's wall time in
    ``summary.seconds``. Writes overlap the next batch on two threads (at most two
    batches of writes in flight).
    """
    bar = bar or _NoBar()
    rows: list[dict] = []
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="camlib-writer")
    pending: deque[Future] = deque()
    autocast = (
        torch.autocast(
            device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16
        )
        if amp
        else contextlib.nullcontext()
    )
    limit = 2 * (loader.batch_size or 1)
    started = time.perf_counter()

    def drain(keep: int) -> None:
        while len(pending) > keep:
            rows.extend(pending.popleft().result())

    try:
        for batch in loader:
            for i, message in batch["failed"]:
                rows.append(job.failed_row(todo[i], "unreadable", message))
            if batch["inputs"] is not None:
                items = [todo[i] for i in batch["index"]]
                batch["items"] = items
                try:
                    x = batch["inputs"].to(device, non_blocking=True)
                    with autocast:
                        result = job.compute(x, batch)
                except (CamlibError, RuntimeError, ValueError, TypeError) as exc:
                    if isinstance(exc, CamlibError) and summary.explained == 0:
                        raise  # the settings do not fit this model: stop at once
                    message = f"{type(exc).__name__}: {exc}"
                    rows.extend(job.failed_row(it, "error", message) for it in items)
                else:
                    tasks = job.outputs(items, batch, result)
                    for item, task in zip(items, tasks, strict=True):
                        pending.append(pool.submit(_guarded, job, item, task))
                    summary.explained += len(items)
            drain(limit)
            bar.update(len(batch["index"]) + len(batch["failed"]))
        drain(0)
    finally:
        # Interrupted or not, every image computed so far gets its files and record.
        pool.shutdown(wait=True)
        bar.close()
    summary.seconds = time.perf_counter() - started
    # A write that failed turns a processed image into a failure.
    summary.explained -= sum(1 for r in rows if r.get("_written"))
    for r in rows:
        r.pop("_written", None)
    return rows


# -- 6. merging ---------------------------------------------------------------------------------
def merge_rows(
    rows: list[dict], summary: RunSummary, world: int, extra: dict | None = None
) -> None:
    """Gather every rank's rows, counts (and ``extra``) into ``summary``: rows sorted by
    file, then rank; the failed images listed once each."""
    stats = {"explained": summary.explained, "resumed": summary.resumed, "seconds": summary.seconds}
    stats.update(extra or {})
    parts = _gather((rows, stats), world)
    all_rows = [row for part_rows, _ in parts for row in part_rows]
    summary.per_rank = [s for _, s in parts]
    all_rows.sort(key=lambda r: (r["file"], int(r.get("rank") or 0)))
    summary.rows = all_rows
    failed: dict[str, tuple[str, str, str]] = {}
    for r in all_rows:
        if r.get("status", "ok") != "ok":
            failed.setdefault(r["file"], (r["file"], r["status"], r["message"]))
    summary.failed = list(failed.values())


def run_dataset(
    items: Sequence[Item],
    out: Path,
    job: Job,
    *,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    channels: int,
    device: torch.device,
    batch_size: int,
    workers: int,
    resume: bool,
    amp: bool = False,
    progress: bool | None = True,
    annotate: Callable[[Item, torch.Tensor, torch.Tensor], dict] | None = None,
) -> RunSummary:
    """The stages in order: shard, resume, decode, process, merge, finish (rank 0)."""
    summary = RunSummary(out=out)
    with distributed(device) as (rank, world):
        summary.rank, summary.world_size = rank, world
        mine = shard(items, rank, world)
        summary.total = len(mine)
        done, todo = resume_split(mine, job.complete if resume else None)
        summary.resumed = len(mine) - len(todo)
        for sub in job.folders:
            (out / sub).mkdir(parents=True, exist_ok=True)
        loader = image_loader(todo, preprocess, channels, batch_size, workers, device, annotate)
        bar = _progress(len(todo), progress if rank == 0 else False, world, job.desc)
        rows = done + process_batches(loader, todo, job, device, summary, amp=amp, bar=bar)
        merge_rows(rows, summary, world, job.stats() if job.stats else None)
        if rank == 0:
            job.finish(summary)
        if world > 1:
            import torch.distributed as dist

            dist.barrier()  # nobody leaves before the merged files are written
    return summary
