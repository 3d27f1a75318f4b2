"""Throughput of ``camlib explain`` on a folder of image files against the library call.

    python benchmarks/folder_throughput.py                      # 2 workers, CPU
    python benchmarks/folder_throughput.py --images 192 --workers 2 --rounds 3 \\
        --out benchmarks/results/cpu/folder_throughput.md

The folder holds ``--images`` JPEG photos (scikit-image's sample photos, cropped and resized
to sizes between 256 and 500 pixels; noise images when scikit-image is absent). Two
contenders explain them with Grad-CAM on a ResNet-18 (random weights, 224 x 224):

* **library**: the images already decoded, resized and normalised in memory as one
  tensor; ``camlib.GradCAM(model)`` is called on batches of ``--batch-size``. Nothing is
  read or written - the ceiling for the command.
* **cli**: ``python -m camlib explain torchvision:resnet18 FOLDER --out DIR --workers W``
  in a subprocess: decoding and resizing in W DataLoader workers, then per image the map
  at the image's size (.npy), the overlay PNG, a thumbnail, a record, and at the end
  results.csv and index.html. Its throughput is the one it reports (images / seconds of
  its explaining loop, worker start-up included; interpreter start-up and model
  construction excluded); the end-to-end wall time of the subprocess is reported too.

Rounds alternate the two, so a shared machine's drifts hit both; the figure is the
median over rounds of the per-round ratio cli / library (goal: >= 0.8 with 2 workers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def make_folder(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` JPEGs of varied sizes (256..500 px a side) cut from sample photos."""
    rng = np.random.default_rng(seed)
    try:
        import skimage.data as data

        photos = [getattr(data, n)() for n in ("astronaut", "chelsea", "coffee", "rocket")]
    except ImportError:
        photos = [rng.integers(0, 255, (500, 500, 3), dtype=np.uint8)]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = int(rng.integers(h // 2, h + 1)), int(rng.integers(w // 2, w + 1))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        th, tw = int(rng.integers(256, 501)), int(rng.integers(256, 501))
        img = Image.fromarray(photo[y : y + ch, x : x + cw]).resize((tw, th), Image.BILINEAR)
        path = folder / f"img{i:04d}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths


def library_rate(paths: list[Path], batch_size: int) -> float:
    """Images/s of GradCAM on preprocessed tensors held in memory."""
    import torchvision

    import camlib
    from camlib.models_io import Preprocess

    pre = Preprocess()
    x = torch.stack([pre(torch.from_numpy(np.array(Image.open(p).convert("RGB")))) for p in paths])
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    with camlib.GradCAM(model) as cam:
        cam(x[:batch_size])  # warm-up and the auto-layer probe
        start = time.perf_counter()
        for i in range(0, len(x), batch_size):
            cam(x[i : i + batch_size])
        return len(x) / (time.perf_counter() - start)


def cli_rate(folder: Path, out: Path, batch_size: int, workers: int, threads: int) -> tuple:
    """(images/s the command reports, end-to-end wall seconds)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "camlib",
        "explain",
        "torchvision:resnet18",
        str(folder),
        "--out",
        str(out),
        "-b",
        str(batch_size),
        "--workers",
        str(workers),
        "--no-progress",
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"camlib explain failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    match = re.search(r"\(([\d.]+) images/s\)", proc.stdout)
    assert match, proc.stdout
    return float(match.group(1)), wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads of the model process (both contenders)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/cpu/folder_throughput.md"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        paths = make_folder(folder, args.images)
        megapixels = sum(Image.open(p).size[0] * Image.open(p).size[1] for p in paths) / 1e6
        rounds = []
        for r in range(args.rounds):
            lib = library_rate(paths, args.batch_size)
            cli, wall = cli_rate(
                folder, Path(tmp) / "out", args.batch_size, args.workers, args.threads
            )
            rounds.append((lib, cli, wall))
            print(
                f"round {r + 1}: library {lib:.2f} img/s, cli {cli:.2f} img/s "
                f"(ratio {cli / lib:.2f}), cli wall {wall:.1f} s",
                flush=True,
            )

    ratios = [c / lb for lb, c, _ in rounds]
    ratio = statistics.median(ratios)
    lib_med = statistics.median(lb for lb, _, _ in rounds)
    cli_med = statistics.median(c for _, c, _ in rounds)
    wall_med = statistics.median(w for _, _, w in rounds)
    verdict = "meets" if ratio >= 0.8 else "misses"
    lines = [
        "# `camlib explain` on a folder vs the library call on tensors in memory",
        "",
        f"Generated {dt.date.today().isoformat()} by `python benchmarks/folder_throughput.py "
        f"--images {args.images} --batch-size {args.batch_size} --workers {args.workers} "
        f"--threads {args.threads} --rounds {args.rounds}` on {platform.machine()} "
        f"({os.cpu_count()} CPUs), torch {torch.__version__}, Python "
        f"{platform.python_version()}.",
        "",
        f"ResNet-18 (random weights), Grad-CAM at the auto layer (`layer4`), 224 x 224 "
        f"inputs, batch {args.batch_size}; {args.images} JPEG photos of 256-500 px a side "
        f"({megapixels:.1f} Mpx in all). The CLI decodes and resizes in {args.workers} "
        f"DataLoader workers and writes, per image, the map at the image's size (.npy), the "
        f"overlay PNG, a thumbnail and a record, then results.csv and index.html.",
        "",
        "| round | library (img/s) | `camlib explain` (img/s) | ratio | CLI wall (s) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i, (lb, c, w) in enumerate(rounds, 1):
        lines.append(f"| {i} | {lb:.2f} | {c:.2f} | {c / lb:.2f} | {w:.1f} |")
    lines += [
        f"| **median** | **{lib_med:.2f}** | **{cli_med:.2f}** | **{ratio:.2f}** | "
        f"**{wall_med:.1f}** |",
        "",
        f"The command runs at **{ratio:.2f}x** the in-memory library call (median of the "
        f"per-round ratios, spread {min(ratios):.2f}-{max(ratios):.2f}); it {verdict} the "
        f"0.8x goal. The CLI figure is the throughput of its explaining loop as it reports "
        f"it (DataLoader worker start-up included); the wall time adds the interpreter "
        f"start-up, imports and model construction (a few seconds, once per run).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"ratio {ratio:.2f} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
