"""Throughput, overhead and memory of camlib against a lower bound and its peers.

    python benchmarks/throughput.py --device cpu --models mnist,resnet18,resnet18@64 \\
        --batch-sizes 1,16 --compare pytorch-grad-cam,captum,torchcam \\
        --out benchmarks/results/cpu

writes OUT/results.json, OUT/results.md and OUT/*.png. See benchmarks/README.md.

Method: for every (model, resolution, batch size) all contenders run on the same batch:
camlib's methods (every registered one by default), the peers' versions of them, and the
references (Grad-CAM lower bound, no-grad forward, the perturbation methods' floors).
Each contender is called once to check its maps against its reference (per-image Pearson
correlation of the normalised maps > 0.9999, and their largest difference; pairs whose
formulas differ by design are reported, not failed) and to warm up, then its repetitions per
block are calibrated (a block lasts >= --block-seconds). Then --rounds rounds: in each
round every contender runs one timed block, in an order rotated by one each round, so
slow drifts of a shared machine hit all contenders alike. Reported: the median over
rounds of images/s, and the median over rounds of the per-round time ratio to the lower
bound (the same round's block), with the min..max spread. Peak memory is measured
afterwards in separate calls (CPU: peak resident set size over the RSS before the call,
via /proc/self/clear_refs and VmHWM; CUDA: torch.cuda.max_memory_allocated over the
memory allocated before the call). Score-CAM's peak memory is also measured at two
``batch_size`` values and two layer widths (is it bounded by batch_size, not by C?).
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

# pytorch-grad-cam's Score-CAM and Ablation-CAM draw a tqdm bar per image: off by default
# (our own bar passes disable= explicitly, so it is unaffected).
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from tqdm import tqdm  # noqa: E402

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
        default="mnist,resnet18,resnet18@64,resnet50,vgg16,vit_b_16",
        help=f"comma-separated, from {','.join(C.MODELS)}; MODEL@RES runs MODEL at RESxRES "
        "(e.g. resnet18@64)",
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
        default="all",
        help="camlib methods (and the matching peers) to measure, from "
        "camlib.available_methods() (default: all)",
    )
    p.add_argument(
        "--perturbation-at",
        default=None,
        help="MODEL@RES[=MAXBATCH] configurations where Score-CAM and Ablation-CAM (one forward "
        "pass per image and channel) run, up to batch MAXBATCH if given (default: "
        "mnist@28,resnet18@64 on CPU, mnist@28,resnet18@224=16 on CUDA); 'all' for everywhere",
    )
    p.add_argument(
        "--perturbation-batch",
        type=int,
        default=None,
        help="batch_size of the perturbation methods, the same for camlib, the peers and the "
        "floors (default: 32 on CPU, 256 on CUDA)",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=4,
        help="samples of the sample-based methods (SS-CAM, IS-CAM, Smooth Grad-CAM++) for "
        "camlib, torchcam and the floors, capped at torchcam's defaults (35, 10, 4); at most "
        "10, since SS-CAM and IS-CAM share a floor (default: 4)",
    )
    p.add_argument(
        "--sess-scales",
        type=int,
        default=4,
        help="SESS's number of scales for camlib and pytorch-grad-cam (both default to 12; "
        "default here: 4)",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="add this run's configurations to OUT/results.json as a new run (earlier runs kept; "
        "ratios are only ever taken within one run)",
    )
    p.add_argument(
        "--scorecam-memory",
        default=None,
        help="MODEL@RES for the Score-CAM memory study (batch_size = --perturbation-batch / 4 "
        "and x 2, at two layers of which one has twice the channels; one image; default "
        "resnet18@64 on CPU, resnet18@224 on CUDA; 'none' to skip)",
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
    p.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: rebuild OUT/results.md, the goals and the plots from "
        "OUT/results.json (after a change to the report)",
    )
    p.add_argument("--out", required=True, help="output directory")
    args = p.parse_args(argv)

    args.device = torch.device(args.device)
    if args.device.type not in ("cpu", "cuda"):
        p.error("--device must be cpu or cuda")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False on this machine")
    args.models = _csv(args.models)
    for m in args.models:
        name, _, res = m.partition("@")
        if name not in C.MODELS or (res and not res.isdigit()):
            p.error(f"unknown model {m!r}; choose from {', '.join(C.MODELS)} (MODEL or MODEL@RES)")
    if args.batch_sizes is None:
        args.batch_sizes = "1,16,64" if args.device.type == "cpu" else "1,16,64,256"
    args.batch_sizes = _ints(args.batch_sizes)
    args.resolutions = _ints(args.resolutions)
    args.resolution_models = _csv(args.resolution_models)
    known = camlib.available_methods()
    if args.methods.strip().lower() == "all":
        args.methods = known
    else:
        names = []
        for m in _csv(args.methods):
            try:
                names.append(camlib.get_method(m).name)
            except camlib.MethodError:
                p.error(f"unknown method {m!r}; choose from {', '.join(known)} or 'all'")
        args.methods = list(dict.fromkeys(names))
    cuda = args.device.type == "cuda"
    if args.perturbation_at is None:
        args.perturbation_at = "mnist@28,resnet18@224=16" if cuda else "mnist@28,resnet18@64"
    args.perturbation_at = _csv(args.perturbation_at)
    if args.perturbation_batch is None:
        args.perturbation_batch = 256 if cuda else 32
    if args.scorecam_memory is None:
        args.scorecam_memory = "resnet18@224" if cuda else "resnet18@64"
    if args.scorecam_memory.lower() == "none":
        args.scorecam_memory = None
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
    if not 1 <= args.samples <= 10:
        p.error("--samples must be between 1 and 10 (SS-CAM and IS-CAM share one floor)")
    if args.sess_scales < 1:
        p.error("--sess-scales must be at least 1")
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
    for entry in args.models:
        model, _, fixed = entry.partition("@")
        spec = C.MODELS[model]
        if fixed:
            resolutions = [int(fixed)]
        elif model in args.resolution_models and spec.channels == 3:
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


def _normalised(m: torch.Tensor, kind: str) -> torch.Tensor:
    """Each image's map scaled to [0, 1] (min-max), or to [-1, 1] by its largest |value|
    for signed maps."""
    m = m.flatten(1)
    if kind == "signed":
        return m / m.abs().amax(1, keepdim=True).clamp_min(1e-300)
    lo = m.amin(1, keepdim=True)
    return (m - lo) / (m.amax(1, keepdim=True) - lo).clamp_min(1e-300)


def per_image_pearson(a: torch.Tensor, b: torch.Tensor, kind: str) -> list[float]:
    """Pearson correlation of each image's normalised maps (min-max, or |max| for signed)."""
    a, b = _normalised(a, kind), _normalised(b, kind)
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


def max_difference(a: torch.Tensor, b: torch.Tensor, kind: str) -> float:
    """The largest |difference| of the normalised maps, over every image and pixel."""
    return float((_normalised(a, kind) - _normalised(b, kind)).abs().max())


def check_agreement(maps: dict, contenders: list, x: torch.Tensor) -> dict:
    """Compare each contender's maps with its reference's (``Contender.ref``).

    ``status``: "agree" (every image's r > AGREEMENT_MIN_R), "differs by design" (the
    formulas differ on purpose: ``Contender.by_design`` says how; figures reported, not
    failed) or "DISAGREE" (``ok`` False: the run's exit status is 1).
    """
    result = {}
    n, size = x.shape[0], tuple(x.shape[2:])
    for c in contenders:
        if c.kind == "reference" or c.ref is None:
            continue
        shape = (n, x.shape[1], *size) if c.kind == "signed" else (n, *size)
        got = maps[c.key]
        if tuple(got.shape) != shape:
            result[c.key] = {
                "reference": c.ref,
                "ok": False,
                "status": "DISAGREE",
                "min_r": None,
                "max_diff": None,
                "note": f"maps of shape {tuple(got.shape)}, expected {shape}",
            }
            continue
        if c.ref not in maps:
            result[c.key] = {
                "reference": None, "ok": None, "status": "no reference", "min_r": None,
                "max_diff": None,
            }  # fmt: skip
            continue
        rs = per_image_pearson(got, maps[c.ref], c.kind)
        agree = min(rs) > AGREEMENT_MIN_R
        status = "agree" if agree else ("differs by design" if c.by_design else "DISAGREE")
        result[c.key] = {
            "reference": c.ref,
            "ok": True if agree else (None if c.by_design else False),
            "status": status,
            "by_design": None if agree else c.by_design,
            "min_r": min(rs),
            "max_diff": max_difference(got, maps[c.ref], c.kind),
            "bad_images": [i for i, r in enumerate(rs) if not r > AGREEMENT_MIN_R],
        }
    return result


def _load() -> list[float] | None:
    """``os.getloadavg()`` (1, 5, 15 min), where the platform has it."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


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
    ctx = C.Context(
        model, spec, layer, x, classes, args.perturbation_batch, args.samples, args.sess_scales
    )
    runners = {c.key: c.make(ctx) for c in contenders}

    # 1. agreement (doubles as the warm-up call); a contender that raises is dropped
    maps, first, failed = {}, {}, {}
    for c in list(contenders):

        def once(r=runners[c.key]):
            _sync(device)
            t0 = time.perf_counter()
            out = r.run(x)
            _sync(device)
            return out, time.perf_counter() - t0

        try:
            out, first[c.key] = in_block(runners[c.key], once)
        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
            failed[c.key] = f"{type(exc).__name__}: {exc}"
            print(f"warning: {c.key} failed on {spec.name}@{res} batch {batch}: {exc}",
                  file=sys.stderr)  # fmt: skip
            contenders = [k for k in contenders if k.key != c.key]
            bar.update(1)
            continue
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
    loads = []
    for r in range(args.rounds):
        loads.append(_load())
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
            "method": c.method,
            "peer": c.peer,
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
        "failed": failed,
        "layer": spec.layer,
        "classes": classes.tolist(),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "load_average_per_round": loads,
        "contenders": rows,
    }


# Two layers of different width (channels) per model, for the Score-CAM memory study.
MEMORY_LAYERS = {
    "resnet18": ("layer2", "layer3"),
    "resnet50": ("layer2", "layer3"),
    "mnist": ("features.2", "features.4"),
}


def scorecam_memory(args, memory, peers: dict, bar) -> dict | None:
    """Peak extra memory of one Score-CAM call at two ``batch_size`` values and two layer
    widths (camlib's, and pytorch-grad-cam's at the larger batch_size).

    Bounded by ``batch_size`` means: at a given batch_size the wider layer (twice the
    channels, so twice the masked forward passes) needs about the same peak memory.
    """
    if args.scorecam_memory is None or "scorecam" not in args.methods:
        return None
    if memory is None or memory.reason is not None:
        return None
    allocator = None
    cpu_glibc = args.device.type == "cpu" and _LIBC is not None and hasattr(_LIBC, "mallopt")
    # glibc raises its mmap threshold each time a large block is freed, after which
    # large tensors come from the heap and freed ones stay resident: the peak RSS then
    # grows with the number of chunks (so with C) for any allocation pattern, even where
    # live memory does not. A fixed threshold (128 KiB) keeps every large tensor
    # mmapped, so the RSS tracks live memory. Set here, after the timed runs.
    if cpu_glibc and _LIBC.mallopt(-3, 128 * 1024) == 1:  # M_MMAP_THRESHOLD
        allocator = "glibc mallopt(M_MMAP_THRESHOLD, 128 KiB): RSS tracks live tensors"
    model_name, _, res = args.scorecam_memory.partition("@")
    spec = C.MODELS[model_name]
    res = int(res) if res else spec.native
    names = MEMORY_LAYERS[model_name]
    model = C.build_model(model_name, args.device)
    modules = dict(model.named_modules())
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(1, spec.channels, res, res, generator=gen).to(args.device)
    with torch.no_grad():
        classes = model(x).argmax(dim=1)
    sizes = [max(1, args.perturbation_batch // 4), args.perturbation_batch * 2]
    runners = []
    for name in names:
        lspec = C.ModelSpec(spec.name, spec.build, name, spec.channels, res, spec.gap_linear)
        for bs in sizes:
            ctx = C.Context(model, lspec, modules[name], x, classes, bs)
            runners.append(("camlib_scorecam", name, bs, C.camlib_runner("scorecam")(ctx)))
            if peers.get("pytorch-grad-cam") and bs == sizes[-1]:
                runners.append(("pgc_scorecam", name, bs, C.pgc_runner("ScoreCAM")(ctx)))
    rows, widths = [], {}
    for key, name, bs, runner in runners:
        bar.set_description(f"Score-CAM memory {key} {name} batch_size {bs}")

        def measured(r=runner):
            r.run(x)  # warm-up (untimed, unmeasured)
            return memory.measure(r.run, x)

        peak = in_block(runner, measured)
        channels = widths.get(name)
        if channels is None:
            hook = C._Hook(modules[name])
            with torch.no_grad():
                model(x[:1])
            channels = widths[name] = int(hook.store.pop().shape[1])
            hook.remove()
        rows.append(
            {"contender": key, "layer": name, "channels": channels, "batch_size": bs,
             "peak_extra_mib": peak}
        )  # fmt: skip
    del model, runners
    release_free_memory()
    return {
        "model": model_name,
        "resolution": res,
        "images": int(x.shape[0]),
        "allocator": allocator,
        "rows": rows,
    }


# --------------------------------------------------------------------------------------
# main


def write_report(report: dict, out_dir: Path) -> None:
    (out_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    report["plots"] = R.plot_all(report, out_dir)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "results.md").write_text(R.markdown(report))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    out_dir = Path(args.out)
    if args.report_only:
        old = json.loads((out_dir / "results.json").read_text())
        report = R.build_report(
            old["meta"], old["results"], old["notes"], old.get("scorecam_memory"), old.get("runs")
        )
        write_report(report, out_dir)
        print(R.console_summary(report))
        return 0 if report["agreement"]["ok"] else 1
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

    everywhere = any(p.lower() == "all" for p in args.perturbation_at)
    slow_at = {}
    for item in args.perturbation_at:
        where, _, most = item.partition("=")
        slow_at[where.strip()] = int(most) if most else None

    def wanted(c: C.Contender, model: str, res: int, batch: int) -> bool:
        spec = C.MODELS[model]
        if c.for_methods:  # a floor: where one of its methods is measured by camlib
            return any(
                wanted(k, model, res, batch)
                for k in C.camlib_contenders([m for m in c.for_methods if m in args.methods])
            )
        if c.method is None:
            return True
        if c.method not in args.methods:
            return False
        if spec.methods is not None and c.method not in spec.methods:
            return False
        if getattr(camlib.get_method(c.method), "needs_attention", False) and not spec.attention:
            return False  # LeGrad: torchvision vision transformers only
        if c.method == "refinecam" and not spec.refine_layers:
            return False
        if c.method in C.PERTURBATION and not everywhere:
            where = f"{model}@{res}"
            if where not in slow_at or (slow_at[where] is not None and batch > slow_at[where]):
                return False
        if c.peer is not None and not peers.get(c.peer, False):
            return False
        if spec.reshape is not None and c.peer not in (None, "pytorch-grad-cam"):
            # token outputs: only pytorch-grad-cam takes a reshape_transform; torchcam's LeGrad
            # reads the blocks itself
            return c.method == "legrad" and c.peer == "torchcam"
        return not (c.method == "cam" and not spec.gap_linear)

    plan = configs(args)
    candidates = C.contenders(args.methods)
    per_config = {(m, r, b): [c for c in candidates if wanted(c, m, r, b)] for m, r, b in plan}
    for m in dict.fromkeys(m for m, _, _ in plan):
        spec = C.MODELS[m]
        if "cam" in args.methods and not spec.gap_linear and spec.methods is None:
            notes.append(f"camlib CAM not measured on {m}: its head is not GAP + linear")
        if spec.methods is not None:
            notes.append(f"{m}: only {', '.join(spec.methods)} measured (and the bounds)")
        if spec.reshape is not None:
            notes.append(
                f"{m}: Captum and torchcam not measured (token outputs; they take no "
                "reshape_transform); pytorch-grad-cam with its documented ViT reshape_transform"
            )
    slow = [m for m in args.methods if m in C.PERTURBATION]
    if slow and not everywhere:
        notes.append(
            f"{', '.join(slow)} (one forward pass per image and channel, or per patch) measured "
            f"only at {', '.join(args.perturbation_at)}, batch_size {args.perturbation_batch} "
            f"for camlib, the peers and the floors"
        )
    sampled = [m for m in args.methods if m in C.SAMPLED]
    if sampled:
        caps = ", ".join(f"{m} {min(args.samples, C.SAMPLED[m])}" for m in sampled)
        notes.append(
            f"samples capped for camlib, torchcam and the floors alike (--samples "
            f"{args.samples}, at most torchcam's defaults SS-CAM 35, IS-CAM 10, Smooth "
            f"Grad-CAM++ 4; camlib's are 35, 10, 8): {caps}"
        )
    if "sess" in args.methods:
        notes.append(
            f"SESS with {args.sess_scales} scales for camlib and pytorch-grad-cam (both "
            f"default to {C.SESS_DEFAULT_SCALES}), batch_size {args.perturbation_batch}"
        )
    if "refinecam" in args.methods:
        notes.append(
            "RefineCAM on two layers (MNIST net features.2 + features.4, ResNets layer3 + layer4) "
            "with a Grad-CAM base for camlib, pytorch-grad-cam and torchcam (default: Grad-CAM++)"
        )
    for peer, names in C.PEER_METHODS.items():
        if peers.get(peer):
            lacking = [m for m in args.methods if m not in names]
            if lacking:
                notes.append(f"{peer} has no counterpart measured for: {', '.join(lacking)}")
    total = sum(len(per_config[cfg]) * (args.rounds + 2) for cfg in plan)

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
            "perturbation_at": args.perturbation_at,
            "perturbation_batch": args.perturbation_batch,
            "samples": args.samples,
            "sess_scales": args.sess_scales,
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
                cfg := measure_config(
                    args,
                    models_built[model_name],
                    spec,
                    res,
                    batch,
                    per_config[(model_name, res, batch)],
                    memory,
                    bar,
                )
            )
            for key, why in cfg["failed"].items():
                notes.append(f"{key} failed on {model_name}@{res} batch {batch}: {why}")
        models_built.clear()
        study = scorecam_memory(args, memory, peers, bar)
    except KeyboardInterrupt:  # (also timeout --signal=INT): keep what was measured
        study = None
        done = ", ".join(f"{r['model']}@{r['resolution']} batch {r['batch']}" for r in results)
        notes.append(f"interrupted: only these configurations were measured: {done or 'none'}")
        print(f"warning: {notes[-1]}", file=sys.stderr)
    finally:
        bar.close()

    meta["wall_seconds"] = round(time.perf_counter() - started, 1)
    if hasattr(os, "getloadavg"):
        meta["machine"]["load_average_at_end"] = list(os.getloadavg())
    runs = None
    if args.merge and (out_dir / "results.json").is_file():
        old = json.loads((out_dir / "results.json").read_text())
        runs = old.get("runs") or [old["meta"]]
        if not old.get("runs"):  # a single-run file: its results become run 1
            old["notes"] = [f"run 1: {n}" for n in old["notes"]]
            for cfg in old["results"]:
                cfg["run"] = 0
        for cfg in results:
            cfg["run"] = len(runs)
        notes = old["notes"] + [f"run {len(runs) + 1}: {n}" for n in notes]
        results = old["results"] + results
        study = study if study is not None else old.get("scorecam_memory")
        runs = [*runs, meta]
    report = R.build_report(meta, results, notes, study, runs)
    write_report(report, out_dir)
    print(R.console_summary(report))
    print(
        f"wrote {out_dir}/results.json, results.md and {len(report['plots'])} plots "
        f"in {meta['wall_seconds']:.0f} s"
    )
    return 0 if report["agreement"]["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
