"""Throughput, overhead and memory of camlib against a lower bound and its peers.

    python benchmarks/throughput.py --device cpu --models mnist,resnet18,resnet50,vgg16 \\
        --batch-sizes 1,16,64 --methods cam,gradcam,guided_gradcam \\
        --compare pytorch-grad-cam,captum,torchcam --out benchmarks/results/cpu

writes OUT/results.json, OUT/results.md and OUT/*.png. See benchmarks/README.md.

Method: for every (model, resolution, batch size) all contenders run on the same batch.
Each contender is called once to check its maps against camlib's (per-image Pearson
correlation of the normalised maps > 0.9999) and to warm up, then its repetitions per
block are calibrated (a block lasts >= --block-seconds). Then --rounds rounds: in each
round every contender runs one timed block, in an order rotated by one each round, so
slow drifts of a shared machine hit all contenders alike. Reported: the median over
rounds of images/s, and the median over rounds of the per-round time ratio to the lower
bound (the same round's block), with the min..max spread. Peak memory is measured
afterwards in separate calls (CPU: peak resident set size over the RSS before the call,
via /proc/self/clear_refs and VmHWM; CUDA: torch.cuda.max_memory_allocated over the
memory allocated before the call).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import gc
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _contenders as C  # noqa: E402
import _report as R  # noqa: E402

import camlib  # noqa: E402

AGREEMENT_MIN_R = 0.9999
MIB = 2**20


# --------------------------------------------------------------------------------------
# command line


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    return [int(t) for t in _csv(text)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument(
        "--models",
        default="mnist,resnet18,resnet50,vgg16",
        help=f"comma-separated, from {','.join(C.MODELS)}",
    )
    p.add_argument(
        "--batch-sizes",
        default=None,
        help="comma-separated (default: 1,16,64 on CPU, 1,16,64,256 on CUDA)",
    )
    p.add_argument(
        "--max-batch",
        action="append",
        default=[],
        metavar="MODEL[@RES]=N",
        help="largest batch size for one model (or one model at one resolution); repeatable, "
        "e.g. --max-batch vgg16=16 --max-batch resnet50@448=16",
    )
    p.add_argument(
        "--resolutions",
        default="224",
        help="comma-separated input sizes for --resolution-models (default: 224); the other "
        "models run at their native size (MNIST 28, ImageNet models 224)",
    )
    p.add_argument("--resolution-models", default="resnet50", help="default: resnet50")
    p.add_argument(
        "--methods",
        default="cam,gradcam,guided_gradcam",
        help="camlib methods (and the matching peers) to measure: cam,gradcam,guided_gradcam",
    )
    p.add_argument(
        "--compare",
        default="pytorch-grad-cam,captum,torchcam",
        help="peers (pip install camlib[bench]); a missing one is skipped with a note; "
        "'none' for none",
    )
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5; --quick: 1)")
    p.add_argument(
        "--block-seconds",
        type=float,
        default=None,
        help="calibrate repetitions so one timed block lasts at least this long "
        "(default 0.3; --quick: 0.05)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: all cores)"
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory calls")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="one round, short blocks (smoke test)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("--out", required=True, help="output directory")
    args = p.parse_args(argv)

    args.device = torch.device(args.device)
    if args.device.type not in ("cpu", "cuda"):
        p.error("--device must be cpu or cuda")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False on this machine")
    args.models = _csv(args.models)
    for m in args.models:
        if m not in C.MODELS:
            p.error(f"unknown model {m!r}; choose from {', '.join(C.MODELS)}")
    if args.batch_sizes is None:
        args.batch_sizes = "1,16,64" if args.device.type == "cpu" else "1,16,64,256"
    args.batch_sizes = _ints(args.batch_sizes)
    args.resolutions = _ints(args.resolutions)
    args.resolution_models = _csv(args.resolution_models)
    args.methods = _csv(args.methods)
    for m in args.methods:
        if m not in ("cam", "gradcam", "guided_gradcam"):
            p.error(f"unknown method {m!r}; choose from cam, gradcam, guided_gradcam")
    args.compare = [] if args.compare.strip().lower() == "none" else _csv(args.compare)
    for peer in args.compare:
        if peer not in C.PEERS:
            p.error(f"unknown peer {peer!r}; choose from {', '.join(C.PEERS)}")
    max_batch: dict[str, int] = {}
    for item in args.max_batch:
        key, _, value = item.partition("=")
        if not value:
            p.error(f"--max-batch wants MODEL[@RES]=N, got {item!r}")
        max_batch[key.strip()] = int(value)
    args.max_batch = max_batch
    if args.rounds is None:
        args.rounds = 1 if args.quick else 5
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.block_seconds is None:
        args.block_seconds = 0.05 if args.quick else 0.3
    return args


def configs(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(model, resolution, batch) in run order."""
    out = []
    for model in args.models:
        spec = C.MODELS[model]
        if model in args.resolution_models and spec.channels == 3:
            resolutions = args.resolutions
        else:
            resolutions = [spec.native]
        for res in resolutions:
            limit = args.max_batch.get(f"{model}@{res}", args.max_batch.get(model))
            for batch in args.batch_sizes:
                if limit is None or batch <= limit:
                    out.append((model, res, batch))
    return out


# --------------------------------------------------------------------------------------
# machine


def git_state() -> str | None:
    """``commit[-dirty]`` of the checkout camlib is imported from, when it is one."""
    root = Path(camlib.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "camlib"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty (camlib/ has uncommitted changes)" if dirty else "")


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": mem_total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


# --------------------------------------------------------------------------------------
# measurement


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # not glibc
        return None


_LIBC = _load_libc()


class CpuMemory:
    """Peak extra resident memory of one call: VmHWM after it minus VmRSS before it.

    VmHWM is reset by writing "5" to /proc/self/clear_refs; freed heap memory is handed
    back with malloc_trim(0) first, so the RSS before the call is the live memory only.
    """

    def __init__(self) -> None:
        self.reason = None
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._status("VmHWM:")
        except (OSError, KeyError) as exc:
            self.reason = f"peak RSS not measurable here ({exc})"

    @staticmethod
    def _status(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024 / MIB
        raise KeyError(key)

    def measure(self, fn, x) -> float:
        release_free_memory()
        before = self._status("VmRSS:")
        Path("/proc/self/clear_refs").write_text("5")
        out = fn(x)
        peak = self._status("VmHWM:")
        del out
        return peak - before


class CudaMemory:
    """Peak CUDA memory allocated during one call over what was allocated before it."""

    reason = None

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def measure(self, fn, x) -> float:
        gc.collect()
        torch.cuda.synchronize(self.device)
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        out = fn(x)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        del out
        return (peak - before) / MIB


def in_block(runner: C.Runner, fn):
    """Run ``fn`` between the runner's (untimed) prepare and release."""
    runner.prepare()
    try:
        return fn()
    finally:
        runner.release()


def release_free_memory() -> None:
    """Collect garbage and hand the heap's free memory back to the OS (glibc ``malloc_trim``),
    so that every block starts from the same allocator state, whatever ran before it."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def timed_block(runner: C.Runner, x: torch.Tensor, reps: int, device: torch.device) -> float:
    """Seconds per call, averaged over one block of ``reps`` calls."""

    def block() -> float:
        release_free_memory()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            out = runner.run(x)
        _sync(device)
        elapsed = time.perf_counter() - t0
        del out
        return elapsed / reps

    return in_block(runner, block)


def calibrate(runner: C.Runner, x, device, first_call_s: float, block_s: float) -> int:
    """Repetitions per block so that a block lasts at least ``block_s`` seconds."""
    if first_call_s >= 2 * block_s:
        return 1

    def probe() -> float:
        n, t0 = 0, time.perf_counter()
        _sync(device)
        while True:
            runner.run(x)
            n += 1
            _sync(device)
            elapsed = time.perf_counter() - t0
            if elapsed >= block_s / 3 or n >= 1000:
                return elapsed / n

    per_call = in_block(runner, probe)
    return max(1, math.ceil(block_s / per_call))


def as_maps(out) -> torch.Tensor:
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    return out.detach().to("cpu", torch.float64)


def per_image_pearson(a: torch.Tensor, b: torch.Tensor, kind: str) -> list[float]:
    """Pearson correlation of each image's normalised maps (min-max, or |max| for guided)."""
    a, b = a.flatten(1), b.flatten(1)

    def norm(m: torch.Tensor) -> torch.Tensor:
        if kind == "guided":
            return m / m.abs().amax(1, keepdim=True).clamp_min(1e-300)
        lo = m.amin(1, keepdim=True)
        return (m - lo) / (m.amax(1, keepdim=True) - lo).clamp_min(1e-300)

    a, b = norm(a), norm(b)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    out = []
    for i in range(a.shape[0]):
        if na[i] == 0 and nb[i] == 0:
            out.append(1.0)  # both maps constant
        elif na[i] == 0 or nb[i] == 0:
            out.append(0.0)
        else:
            out.append(float((a[i] * b[i]).sum() / (na[i] * nb[i])))
    return out


def check_agreement(maps: dict, contenders: list, x: torch.Tensor) -> dict:
    """Compare each contender's maps with camlib's (see the module docstring)."""
    result = {}
    n, size = x.shape[0], tuple(x.shape[-2:])
    for c in contenders:
        if c.kind == "reference":
            continue
        if c.kind == "guided":
            ref = (
                "captum_guided_gradcam"
                if c.key == "camlib_guided_gradcam"
                else "camlib_guided_gradcam"
            )
            shape = (n, x.shape[1], *size)
        else:
            ref = "lower_bound" if c.key == "camlib_gradcam" else "camlib_gradcam"
            shape = (n, *size)
        got = maps[c.key]
        if tuple(got.shape) != shape:
            result[c.key] = {
                "reference": ref,
                "ok": False,
                "min_r": None,
                "note": f"maps of shape {tuple(got.shape)}, expected {shape}",
            }
            continue
        if ref not in maps:
            result[c.key] = {"reference": None, "ok": None, "min_r": None, "note": "no reference"}
            continue
        rs = per_image_pearson(got, maps[ref], c.kind)
        result[c.key] = {
            "reference": ref,
            "ok": min(rs) > AGREEMENT_MIN_R,
            "min_r": min(rs),
            "bad_images": [i for i, r in enumerate(rs) if not r > AGREEMENT_MIN_R],
        }
    return result


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure_config(args, model, spec, res, batch, contenders, memory, bar) -> dict:
    device = args.device
    started = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed + batch + res)
    x = torch.randn(batch, spec.channels, res, res, generator=gen).to(device)
    layer = dict(model.named_modules())[spec.layer]
    with torch.no_grad():
        classes = model(x).argmax(dim=1)
    ctx = C.Context(model, spec.layer, layer, classes)
    runners = {c.key: c.make(ctx) for c in contenders}

    # 1. agreement (doubles as the warm-up call)
    maps, first = {}, {}
    for c in contenders:

        def once(r=runners[c.key]):
            _sync(device)
            t0 = time.perf_counter()
            out = r.run(x)
            _sync(device)
            return out, time.perf_counter() - t0

        out, first[c.key] = in_block(runners[c.key], once)
        if c.kind != "reference":
            maps[c.key] = as_maps(out)
        del out
        bar.update(1)
    agreement = check_agreement(maps, contenders, x)
    del maps

    # 2. repetitions per block
    reps = {
        c.key: calibrate(runners[c.key], x, device, first[c.key], args.block_seconds)
        for c in contenders
    }

    # 3. interleaved rounds, order rotated by one each round
    times: dict[str, list[float]] = {c.key: [] for c in contenders}
    for r in range(args.rounds):
        k = r % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            times[c.key].append(timed_block(runners[c.key], x, reps[c.key], device))
            bar.update(1)

    # 4. peak memory, separate calls
    peak = {}
    for c in contenders:
        if memory is not None and memory.reason is None:
            peak[c.key] = in_block(
                runners[c.key], lambda r=runners[c.key]: memory.measure(r.run, x)
            )
        bar.update(1)

    rows = {}
    lower, nograd = times.get("lower_bound"), times.get("nograd_forward")
    for c in contenders:
        t = times[c.key]
        row = {
            "label": c.label,
            "group": c.group,
            "kind": c.kind,
            "reps_per_block": reps[c.key],
            "seconds_per_call": t,
            "first_call_s": first[c.key],
            "images_per_s": _summary([batch / s for s in t]),
            "ratio_to_lower_bound": _summary([a / b for a, b in zip(t, lower, strict=True)])
            if lower
            else None,
            "ratio_to_nograd": _summary([a / b for a, b in zip(t, nograd, strict=True)])
            if nograd
            else None,
            "peak_extra_mib": peak.get(c.key),
            "agreement": agreement.get(c.key),
        }
        rows[c.key] = row
    return {
        "model": spec.name,
        "resolution": res,
        "batch": batch,
        "layer": spec.layer,
        "classes": classes.tolist(),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "contenders": rows,
    }


# --------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = args.threads or (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", category=UserWarning, module="captum")

    notes: list[str] = []
    versions = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "camlib": camlib.__version__,
        "numpy": np.__version__,
    }
    peers = {}
    for peer in args.compare:
        ok, info = C.peer_status(peer)
        peers[peer] = ok
        versions[peer] = info if ok else None
        if not ok:
            notes.append(f"{peer} skipped: {info}")
            print(f"note: {peer} skipped: {info}", file=sys.stderr)

    def wanted(c: C.Contender, spec: C.ModelSpec) -> bool:
        if c.group == "bound":
            return True
        if C.METHOD_OF[c.key] not in args.methods:
            return False
        if c.peer is not None and not peers.get(c.peer, False):
            return False
        return not (c.key == "camlib_cam" and not spec.gap_linear)

    plan = configs(args)
    per_model = {m: [c for c in C.CONTENDERS if wanted(c, C.MODELS[m])] for m in args.models}
    if "cam" in args.methods:
        for m in args.models:
            if not C.MODELS[m].gap_linear:
                notes.append(f"camlib CAM not measured on {m}: its head is not GAP + linear")
    total = sum(len(per_model[m]) * (args.rounds + 2) for m, _, _ in plan)

    if args.device.type == "cpu" and hasattr(os, "getloadavg") and os.getloadavg()[0] >= 0.5:
        busy = (
            f"the machine was busy at the start (1-minute load average {os.getloadavg()[0]:.2f}): "
            f"with {threads} threads, other running processes stall OpenMP at every barrier "
            f"and small-op timings (MNIST, batch 1) can be inflated many times; the ratios "
            f"suffer less, but use a quiet machine for figures worth keeping"
        )
        notes.append(busy)
        print(f"warning: {busy}", file=sys.stderr)

    memory = None
    if not args.no_memory:
        memory = CudaMemory(args.device) if args.device.type == "cuda" else CpuMemory()
        if memory.reason:
            notes.append(memory.reason)

    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python "
        + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "device": str(args.device),
        "machine": machine_info(args.device),
        "versions": versions,
        "camlib_git": git_state(),
        "threads": torch.get_num_threads(),
        "settings": {
            "models": args.models,
            "batch_sizes": args.batch_sizes,
            "resolutions": args.resolutions,
            "resolution_models": args.resolution_models,
            "max_batch": args.max_batch,
            "methods": args.methods,
            "compare": args.compare,
            "rounds": args.rounds,
            "block_seconds": args.block_seconds,
            "quick": args.quick,
            "seed": args.seed,
            "memory": None
            if memory is None
            else (
                "cuda max_memory_allocated" if args.device.type == "cuda" else "cpu VmHWM - VmRSS"
            ),
            "agreement_min_r": AGREEMENT_MIN_R,
        },
    }

    # Everything alive now (modules, peers) is never garbage: keep gc.collect() cheap.
    gc.collect()
    gc.freeze()
    results = []
    bar = tqdm(total=total, disable=args.no_progress, unit="block", dynamic_ncols=True)
    models_built: dict[str, torch.nn.Module] = {}
    try:
        for model_name, res, batch in plan:
            bar.set_description(f"{model_name}@{res} batch {batch}")
            if model_name not in models_built:
                models_built.clear()
                gc.collect()
                models_built[model_name] = C.build_model(model_name, args.device)
            spec = C.MODELS[model_name]
            results.append(
                measure_config(
                    args,
                    models_built[model_name],
                    spec,
                    res,
                    batch,
                    per_model[model_name],
                    memory,
                    bar,
                )
            )
    finally:
        bar.close()

    meta["wall_seconds"] = round(time.perf_counter() - started, 1)
    if hasattr(os, "getloadavg"):
        meta["machine"]["load_average_at_end"] = list(os.getloadavg())
    report = R.build_report(meta, results, notes)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    report["plots"] = R.plot_all(report, out_dir)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "results.md").write_text(R.markdown(report))
    print(R.console_summary(report))
    print(
        f"wrote {out_dir}/results.json, results.md and {len(report['plots'])} plots "
        f"in {meta['wall_seconds']:.0f} s"
    )
    return 0 if report["agreement"]["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
