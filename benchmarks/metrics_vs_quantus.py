"""camlib's evaluation metrics against Quantus 0.6.0: same metrics, model, inputs and maps.

    python benchmarks/metrics_vs_quantus.py --device cpu --threads 2 \\
        --models mnist,resnet18 --size 64 --batch 32 --repeats 3 \\
        --out benchmarks/results/cpu

writes OUT/metrics_vs_quantus.json and OUT/metrics_vs_quantus.md. See benchmarks/README.md.

For every model (the MNIST ConvNet of ``throughput.py`` at 28x28, torchvision's ResNet-18
with 10 classes at ``--size``; random weights, ``eval()``) one batch of ``--batch`` random
images is explained once with camlib's Grad-CAM (the maps every metric reads; a 1e-3
uniform jitter makes every map's pixel order unique, so that sorting-based metrics cannot
differ by tie-breaking). Then, for every metric both libraries implement, with the settings
under which they compute the same thing (those tests/test_metrics_*.py check):

* camlib: the registered metric (``camlib.metrics.get_metric``) called on a
  ``MetricContext`` (torch tensors on the device);
* Quantus: the metric object called with ``x_batch``/``y_batch``/``a_batch``/``s_batch``
  numpy arrays; the metrics that re-explain get ``explain_func``: the same camlib Grad-CAM
  function camlib's metric calls, wrapped to numpy, so both sides pay the same
  explanations and the comparison is of the metric machinery.

The first call of each side (untimed, also the warm-up) runs with the randomness of the
two libraries aligned (the same subsets, noise, other classes, layer seeds) and its values
are compared; the timed calls then use each library's own randomness. Wall time and process
CPU time are measured over ``--repeats`` repeats; in each, camlib, Quantus and the floor (the
forward passes or explanations the metric needs, alone) run one timed block of calls in an
order rotated every repeat, with the 1-minute load average before and after each block; a
metric whose blocks saw a load above ``--max-load`` is measured again (``--reruns``) and
the attempt with the lowest load is kept. The floor bounds any speed-up, so
that a ratio far from 10x can be read against the bound the model imposes on both.
Finally ``camlib.evaluate`` runs the same metrics end to end (Grad-CAM, no baselines).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _contenders as C  # noqa: E402
from throughput import git_state, machine_info, release_free_memory  # noqa: E402

import camlib  # noqa: E402
from camlib.metrics import MetricContext, faithfulness, get_metric, sanity  # noqa: E402
from camlib.metrics.localisation import masks_from_boxes  # noqa: E402

TOL = 1e-5
"""Largest |camlib - Quantus| accepted where the definitions agree (as the tests)."""

METRICS = (
    "deletion",
    "faithfulness_correlation",
    "road",
    "pointing_game",
    "relevance_mass",
    "relevance_rank",
    "energy",
    "sparseness",
    "complexity",
    "max_sensitivity",
    "random_logit",
    "mprt",
)


# --------------------------------------------------------------------------------------
# the batch every metric reads


@dataclass
class Case:
    """One model, its batch, the maps and everything both libraries are given."""

    name: str
    model: nn.Module
    layer: str
    x: torch.Tensor
    targets: torch.Tensor
    maps: torch.Tensor  # (N, H, W) float64, jittered: the precomputed maps
    explained: torch.Tensor  # (N, H, W) the explanation itself (re-explaining metrics)
    boxes: torch.Tensor
    masks: torch.Tensor
    device: torch.device
    classes: int
    settings: dict
    np: dict = field(default_factory=dict)
    _explainers: dict = field(default_factory=dict)

    def explain(
        self, inputs: torch.Tensor, targets: torch.Tensor | None = None, model=None
    ) -> torch.Tensor:
        """``ctx.explain``: camlib Grad-CAM at the same layer (on ``model`` when given),
        maps min-max normalised, as camlib.evaluate prepares them."""
        net = self.model if model is None else model
        if net is self.model:
            ex = self._explainers.setdefault("own", camlib.GradCAM(net, self.layer))
        else:  # a randomised copy: built per call, as camlib.evaluate does
            ex = camlib.GradCAM(net, self.layer)
        return camlib.normalize_minmax(ex(inputs, targets).float())

    def quantus_explain(self, model, inputs, targets, **kwargs) -> np.ndarray:
        """Quantus's ``explain_func``: the same function, numpy in and out."""
        x = torch.as_tensor(inputs, device=self.device)
        t = torch.as_tensor(targets, device=self.device).long()
        return self.explain(x, t, model).double().cpu().numpy()

    def quantus_explain_nonzero(self, model, inputs, targets, **kwargs) -> np.ndarray:
        """As :meth:`quantus_explain`, with 1e-12 added to the maps that are all zero:
        Quantus 0.6.0 asserts that no explanation is all zeros (Grad-CAM of a randomised
        model is, for some images); a constant map stays constant (Spearman: NaN)."""
        maps = self.quantus_explain(model, inputs, targets)
        zero = ~maps.reshape(len(maps), -1).any(axis=1)
        maps[zero] += 1e-12
        return maps

    def context(self, seed: int, maps: torch.Tensor | None = None) -> MetricContext:
        return MetricContext(
            model=self.model,
            inputs=self.x,
            targets=self.targets,
            maps=self.maps if maps is None else maps,
            explain=self.explain,
            boxes=self.boxes,
            masks=self.masks,
            generator=torch.Generator().manual_seed(seed),
            method="gradcam",
        )


def build_model(name: str, size: int, device: torch.device) -> tuple[nn.Module, str, int, int]:
    """(model, layer, channels, resolution) with random weights (seed 0), in eval()."""
    if name == "mnist":
        spec = C.MODELS["mnist"]
        return C.build_model("mnist", device), spec.layer, spec.channels, spec.native
    if name == "resnet18":
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None, num_classes=10)
        return model.eval().to(device), "layer4", 3, size
    raise SystemExit(f"unknown model {name!r}; choose from mnist, resnet18")


def make_case(name: str, args: argparse.Namespace) -> Case:
    model, layer, channels, res = build_model(name, args.size, args.device)
    gen = torch.Generator().manual_seed(args.seed)
    n = args.batch[name]
    x = torch.randn(n, channels, res, res, generator=gen).to(args.device)
    with torch.no_grad():
        targets = model(x).argmax(1)
    case = Case(name, model, layer, x, targets, x, x, x, x, args.device, 10, {})
    explained = case.explain(x, targets)
    jitter = 1e-3 * torch.rand(explained.shape, generator=gen, dtype=torch.float64)
    maps = camlib.normalize_minmax(explained.double() + jitter.to(args.device))
    flat = maps.flatten(1).cpu()
    assert all(len(torch.unique(r)) == r.numel() for r in flat), "tied map values"
    # boxes: around the peak for even images, a random box elsewhere for odd ones
    peak = flat.argmax(1)
    side = max(2, res // 4)
    boxes = []
    for i in range(n):
        if i % 2 == 0:
            cy, cx = int(peak[i]) // res, int(peak[i]) % res
        else:
            cy, cx = torch.randint(0, res, (2,), generator=gen).tolist()
        x0, y0 = min(max(0, cx - side // 2), res - side), min(max(0, cy - side // 2), res - side)
        boxes.append([x0, y0, x0 + side, y0 + side])
    case.boxes = torch.tensor(boxes, device=args.device)
    case.masks = masks_from_boxes(case.boxes, (res, res))
    case.maps, case.explained = maps, explained
    case.settings = settings_for(channels, res, args)
    case.np = {
        "x": x.cpu().numpy(),
        "y": targets.cpu().numpy(),
        "a": maps.cpu().numpy()[:, None],  # (N, 1, H, W) float64
        "a_explained": explained.double().cpu().numpy(),  # (N, H, W)
        "s": case.masks.cpu().numpy()[:, None].astype(np.float64),
    }
    return case


def settings_for(channels: int, res: int, args: argparse.Namespace) -> dict:
    """The metric options shared by both sides at this input size."""
    hw = res * res
    steps = 4 if args.quick else 16
    if hw % steps:
        raise SystemExit(f"--size {res}: {hw} pixels are not divisible by {steps} deletion steps")
    return {
        "steps": steps,  # deletion: HW/steps pixels per step, exactly, on both sides
        "runs": args.fc_runs,
        "subset": min(args.fc_subset, hw // 4),
        "percentages": (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875),  # q*HW whole
        "samples": args.ms_samples,
        "radius": 0.2,
        "channels": channels,
        "hw": hw,
    }


# --------------------------------------------------------------------------------------
# the metrics: camlib's, Quantus's, how to align their randomness and compare


@dataclass
class Spec:
    key: str
    camlib: str
    options: Callable[[Case], dict]
    quantus: Callable[[Case, bool], tuple[Any, dict]]  # (case, aligned) -> (metric, call kw)
    compare: Callable[[Case, torch.Tensor, Any], dict]
    align: Callable[[Case, int], contextlib.AbstractContextManager] | None = None
    maps: str = "jittered"  # or "explained": what ctx.maps / a_batch hold
    unit: str | None = None  # "forward" or "explain": what the floor counts
    counts: Callable[[Case], tuple[int, int]] | None = None  # (camlib, Quantus) units
    note: str = ""


def _q():
    import quantus

    return quantus


def _diff(ours: torch.Tensor, theirs, tol: float = TOL, definition: bool = True) -> dict:
    a = ours.detach().double().cpu().numpy().reshape(-1)
    b = np.asarray(theirs, dtype=np.float64).reshape(-1)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    both = ~nan_a & ~nan_b
    diff = float(np.abs(a[both] - b[both]).max()) if both.any() else 0.0
    nan_mismatch = int((nan_a != nan_b).sum())
    ok = diff <= tol and nan_mismatch == 0
    out = {"max_abs_diff": diff, "nan_mismatch": nan_mismatch, "compared": int(both.sum())}
    if definition:
        out["status"] = "agree" if ok else "DISAGREE"
    return out


def _status(out: dict, status: str, note: str) -> dict:
    out.update(status=status, note=note)
    return out


# deletion: Quantus PixelFlipping (Bach et al., 2015) is the deletion curve without its first
# point (the intact image). It orders the C x H x W *features* but asserts that its step
# divides H x W: a step of H*W/K features, K*C forwards, every C-th point is camlib's (all C
# channels of H*W/K more pixels removed). camlib: K + 1 forwards.
def _deletion_quantus(case: Case, aligned: bool):
    s = case.settings
    metric = _q().PixelFlipping(
        features_in_step=s["hw"] // s["steps"], perturb_baseline=0.0, disable_warnings=True
    )
    return metric, {"model": case.model, "a_batch": case.np["a"], "softmax": True}


def _deletion_compare(case: Case, ours: torch.Tensor, theirs) -> dict:
    s = case.settings
    c = s["channels"]
    curve = faithfulness.deletion_curve(
        case.model, case.x, case.maps, case.targets, s["steps"], 0.0, softmax=True
    )
    same = float((faithfulness.auc(curve) - ours.to(curve)).abs().max())
    theirs = np.asarray(theirs, dtype=np.float64)
    out = _diff(curve[:, 1:], theirs[:, c - 1 :: c])
    every = (
        f"every {c}th of its {theirs.shape[1]} points" if c > 1 else f"its {theirs.shape[1]} points"
    )
    out["note"] = (
        f"curves compared: Quantus's {every} = camlib's points 1..{s['steps']} (camlib's point "
        f"0 is the intact image); camlib's value is the trapezoid AUC of its curve "
        f"(|diff| {same:.1e})"
    )
    return out


# faithfulness correlation: Quantus draws subset_size *features* of the C x H x W input, camlib
# subset_size *pixels* (all channels): Quantus gets subset_size = C * pixels, and for the
# check its draws are camlib's pixels in every channel
def _fc_quantus(case: Case, aligned: bool):
    s = case.settings
    metric = _q().FaithfulnessCorrelation(
        nr_runs=s["runs"],
        subset_size=s["channels"] * s["subset"],
        perturb_baseline=0.0,
        return_aggregate=False,
        disable_warnings=True,
    )
    return metric, {"model": case.model, "a_batch": case.np["a"]}


@contextlib.contextmanager
def _fc_align(case: Case, seed: int) -> Iterator[None]:
    s = case.settings
    n, hw, c = case.x.shape[0], s["hw"], s["channels"]
    g = torch.Generator().manual_seed(seed)  # what the camlib metric draws from ctx.generator
    queue = []
    for _ in range(s["runs"]):
        keys = torch.rand((n, hw), generator=g, dtype=torch.float64)
        idx = keys.topk(s["subset"], dim=1).indices.numpy()
        queue += [np.concatenate([row + k * hw for k in range(c)]) for row in idx]
    original = np.random.choice
    np.random.choice = lambda *a, **k: queue.pop(0)
    try:
        yield
    finally:
        np.random.choice = original
    assert not queue, "Quantus drew a different number of subsets"


# ROAD: Quantus scores the accuracy (argmax == label) after noisy linear imputation, camlib
# the mean probability; the shared part (order, imputation, forwards) is compared through the
# accuracy of camlib's imputations. Quantus 0.6.0 cannot run it on C > 1 channels.
def _road_quantus(case: Case, aligned: bool):
    qs = case.settings["percentages"]
    metric = _q().ROAD(percentages=[100 * q for q in qs], noise=0.0, disable_warnings=True)
    return metric, {"model": case.model, "a_batch": case.np["a"]}


def _road_compare(case: Case, ours: torch.Tensor, theirs) -> dict:
    qs = case.settings["percentages"]
    removed = faithfulness._removed_masks(case.maps, qs, True)
    with torch.no_grad():
        acc = [
            (case.model(faithfulness.noisy_linear_imputation(case.x, r, 0.0)).argmax(1))
            .eq(case.targets)
            .double()
            .mean()
            .item()
            for r in removed
        ]
    out = _diff(torch.tensor(acc), [theirs[100 * q] for q in qs], tol=1e-12)
    out["note"] = (
        "Quantus returns the accuracy per fraction, camlib the mean probability per image: "
        "compared are Quantus's accuracies with those of camlib's imputations"
    )
    return out


def _plain(name: str, **options):
    def make(case: Case, aligned: bool):
        metric = getattr(_q(), name)(disable_warnings=True, **options)
        return metric, {"model": None, "a_batch": case.np["a"][:, 0], "s_batch": case.np["s"]}

    return make


def _direct(case: Case, ours: torch.Tensor, theirs) -> dict:
    return _diff(ours, theirs)


# max-sensitivity: Quantus's perturb_func fed camlib's noise for the check
def _ms_quantus(case: Case, aligned: bool):
    s = case.settings
    options = {}
    if aligned:
        options["perturb_func"] = case.np["same_noise"]
    metric = _q().MaxSensitivity(
        nr_samples=s["samples"], lower_bound=s["radius"], disable_warnings=True, **options
    )
    kw = {
        "model": case.model,
        "a_batch": case.np["a_explained"][:, None],
        "explain_func": case.quantus_explain,
    }
    return metric, kw


@contextlib.contextmanager
def _ms_align(case: Case, seed: int) -> Iterator[None]:
    s = case.settings
    g = torch.Generator().manual_seed(seed)
    u = torch.rand((s["samples"], *case.x.shape), generator=g, dtype=torch.float64)
    noise = ((2 * u - 1) * s["radius"]).to(case.x.dtype)
    steps = iter(noise.flatten(2).numpy())
    case.np["same_noise"] = lambda arr, indices, **kw: arr + next(steps)
    try:
        yield
    finally:
        case.np.pop("same_noise")
    assert next(steps, None) is None, "Quantus used a different number of perturbations"


# random logit: Quantus draws the other class with np.random.seed(42); randint(0, K - 1, N)
def _rl_quantus(case: Case, aligned: bool):
    metric = _q().RandomLogit(
        num_classes=case.classes, seed=42, normalise=False, disable_warnings=True
    )
    kw = {
        "model": case.model,
        "a_batch": case.np["a_explained"],
        "explain_func": case.quantus_explain,
    }
    return metric, kw


@contextlib.contextmanager
def _rl_align(case: Case, seed: int) -> Iterator[None]:
    rng = np.random.RandomState(42)
    draws = torch.as_tensor(rng.randint(0, case.classes - 1, case.x.shape[0]))
    original = sanity._random_offsets
    sanity._random_offsets = lambda n, classes, generator: draws
    try:
        yield
    finally:
        sanity._random_offsets = original


# MPRT: the same layers, order and reset_parameters; Quantus re-seeds torch with seed + 1
def _mprt_quantus(case: Case, aligned: bool):
    metric = _q().MPRT(layer_order="top_down", seed=42, disable_warnings=True)
    kw = {
        "model": case.model,
        "a_batch": case.np["a_explained"],
        "explain_func": case.quantus_explain_nonzero,
    }
    return metric, kw


@contextlib.contextmanager
def _mprt_align(case: Case, seed: int) -> Iterator[None]:
    original = sanity._layer_seeds
    sanity._layer_seeds = lambda generator, n: [43] * n
    try:
        yield
    finally:
        sanity._layer_seeds = original


def _mprt_compare(case: Case, ours: torch.Tensor, theirs) -> dict:
    layers = [k for k in theirs if k != "original"]
    per_layer = np.array([theirs[k] for k in layers], dtype=np.float64)  # (L, N)
    flat = case.explained.flatten(1)
    informative = (flat.amax(1) > flat.amin(1)).cpu().numpy()
    per_layer = np.where(np.isnan(per_layer) & informative[None], 0.0, per_layer)
    out = _diff(ours, np.abs(per_layer).mean(0))
    out["note"] = (
        f"camlib: mean |Spearman| over the {len(layers)} layers; Quantus: its per-layer "
        f"values, |.| averaged the same way (it also explains the unrandomised model)"
    )
    return out


def _cascade_len(case: Case) -> int:
    return len(sanity.randomisation_cascade(case.model))


SPECS = {
    s.key: s
    for s in [
        Spec(
            "deletion",
            "deletion",
            lambda c: {"steps": c.settings["steps"], "baseline": 0.0, "softmax": True},
            _deletion_quantus,
            _deletion_compare,
            unit="forward",
            counts=lambda c: (
                c.settings["steps"] + 1,
                c.settings["channels"] * c.settings["steps"],
            ),
            note="Quantus has no deletion by that name: PixelFlipping is the same curve "
            "(without the intact image's point); on C channels its step must divide H*W while "
            "it orders C*H*W values, so the same curve costs it C*K forwards; insertion has no "
            "Quantus counterpart",
        ),
        Spec(
            "faithfulness_correlation",
            "faithfulness_correlation",
            lambda c: {
                "subset_size": c.settings["subset"],
                "runs": c.settings["runs"],
                "baseline": 0.0,
                "softmax": False,
            },
            _fc_quantus,
            _direct,
            align=_fc_align,
            unit="forward",
            counts=lambda c: (c.settings["runs"] + 1, c.settings["runs"] + 1),
        ),
        Spec(
            "road",
            "road_morf",
            lambda c: {"percentages": c.settings["percentages"], "noise": 0.0},
            _road_quantus,
            _road_compare,
            unit="forward",
            counts=lambda c: (len(c.settings["percentages"]),) * 2,
            note="ROAD MoRF; noise 0 on both sides so that the imputations can be compared",
        ),
        Spec(
            "pointing_game",
            "pointing_game",
            lambda c: {},
            _plain("PointingGame"),
            _direct,
        ),
        Spec(
            "relevance_mass",
            "relevance_mass",
            lambda c: {},
            _plain("RelevanceMassAccuracy"),
            _direct,
        ),
        Spec(
            "relevance_rank",
            "relevance_rank",
            lambda c: {},
            _plain("RelevanceRankAccuracy"),
            _direct,
        ),
        Spec(
            "energy",
            "energy_pointing_game",
            lambda c: {},
            _plain("AttributionLocalisation", abs=False, positive_attributions=True),
            _direct,
            note="camlib's energy pointing game = Quantus AttributionLocalisation (abs=False, "
            "positive_attributions=True), on the boxes",
        ),
        Spec("sparseness", "sparseness", lambda c: {}, _plain("Sparseness"), _direct),
        Spec("complexity", "complexity", lambda c: {}, _plain("Complexity"), _direct),
        Spec(
            "max_sensitivity",
            "max_sensitivity",
            lambda c: {"samples": c.settings["samples"], "radius": c.settings["radius"]},
            _ms_quantus,
            _direct,
            align=_ms_align,
            maps="explained",
            unit="explain",
            counts=lambda c: (c.settings["samples"],) * 2,
        ),
        Spec(
            "random_logit",
            "random_logit",
            lambda c: {"flatten": True, "classes": c.classes},
            _rl_quantus,
            _direct,
            align=_rl_align,
            maps="explained",
            unit="explain",
            counts=lambda c: (1, 1),
            note="camlib flatten=True (SSIM of the flattened maps, as Quantus), Quantus "
            "normalise=False",
        ),
        Spec(
            "mprt",
            "randomisation",
            lambda c: {"steps": None},
            _mprt_quantus,
            _mprt_compare,
            align=_mprt_align,
            maps="explained",
            unit="explain",
            counts=lambda c: (_cascade_len(c), _cascade_len(c) + 1),
            note="camlib randomisation with steps=None (every layer of the cascade), Quantus "
            "MPRT top_down; Quantus 0.6.0 refuses an all-zero explanation (Grad-CAM of a "
            "randomised ResNet is all zero for some images), so its explain_func adds 1e-12 "
            "to those maps (still constant: Spearman NaN on both sides)",
        ),
    ]
}


# --------------------------------------------------------------------------------------
# timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, dict]:
    """One call: its result and {wall_s, cpu_s, load_before, load_after}."""
    release_free_memory()
    load0 = _load()
    _sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    _sync(device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return out, {"wall_s": wall, "cpu_s": cpu, "load_before": load0, "load_after": _load()}


def _quiet(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()

    return run


def camlib_call(case: Case, spec: Spec, seed: int) -> Callable[[], torch.Tensor]:
    metric = get_metric(spec.camlib, **spec.options(case))
    ctx = case.context(seed, case.explained if spec.maps == "explained" else None)
    return _quiet(lambda: metric(ctx))


def quantus_call(case: Case, spec: Spec, aligned: bool) -> Callable[[], Any]:
    metric, kw = spec.quantus(case, aligned)
    device = "cuda" if case.device.type == "cuda" else "cpu"
    kw = {"x_batch": case.np["x"], "y_batch": case.np["y"], "batch_size": case.x.shape[0], **kw}
    if kw.get("model") is not None:
        kw["device"] = device
    return _quiet(lambda: metric(**kw))


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def floor_call(case: Case, spec: Spec) -> Callable[[], Any] | None:
    """The forward passes (no grad, the whole batch) or Grad-CAM explanations the metric
    needs on both sides (the smaller count of the two), alone."""
    if spec.unit is None or spec.counts is None:
        return None
    n = min(spec.counts(case))
    if spec.unit == "forward":

        def forwards():
            with torch.no_grad():
                for _ in range(n):
                    case.model(case.x)

        return forwards

    def explanations():
        for _ in range(n):
            case.explain(case.x, case.targets)

    return explanations


def block(fn: Callable[[], Any], reps: int, device: torch.device) -> dict:
    """Time ``reps`` calls of ``fn`` in one block: per-call wall and CPU seconds."""

    def run():
        for _ in range(reps):
            fn()

    _, t = timed(run, device)
    t["wall_s"] /= reps
    t["cpu_s"] /= reps
    t["reps"] = reps
    return t


def _reps(seconds: float, args: argparse.Namespace) -> int:
    return int(min(1000, max(1, math.ceil(args.block_seconds / max(seconds, 1e-6)))))


def measure_metric(case: Case, spec: Spec, args: argparse.Namespace) -> dict:
    """Agreement (aligned randomness, untimed: also the warm-up and the calibration), then
    interleaved repeats of camlib, Quantus and the floor, in an order rotated each repeat."""
    row: dict[str, Any] = {"metric": spec.key, "camlib": spec.camlib, "note": spec.note}
    seed = args.seed
    first: dict[str, float] = {}
    align = spec.align(case, seed) if spec.align else contextlib.nullcontext()
    with align:
        ours, t = timed(camlib_call(case, spec, seed), case.device)
        first["camlib"] = t["wall_s"]
        try:
            theirs, t = timed(quantus_call(case, spec, aligned=True), case.device)
            first["quantus"] = t["wall_s"]
        except Exception as exc:  # noqa: BLE001 - e.g. Quantus ROAD on RGB inputs
            theirs = None
            row["agreement"] = {
                "status": "QUANTUS FAILED",
                "note": f"Quantus 0.6.0 raised {type(exc).__name__}: {exc}",
            }
    if theirs is not None:
        row["agreement"] = spec.compare(case, ours, theirs)
    row["camlib_mean"] = float(torch.nanmean(ours.double()).item())
    floor = floor_call(case, spec)
    if floor is not None:
        first["floor"] = timed(floor, case.device)[1]["wall_s"]
    reps = {side: _reps(sec, args) for side, sec in first.items()}
    repeats = args.repeats
    if max(first.values()) > args.long_call:
        repeats = min(repeats, args.long_repeats)
    attempts = []
    for attempt in range(1 + args.reruns):
        runs: dict[str, list[dict]] = {side: [] for side in first}
        for r in range(repeats):
            sides = list(first)
            k = r % len(sides)
            for side in sides[k:] + sides[:k]:
                if side == "camlib":
                    fn = camlib_call(case, spec, seed + 1 + r)
                elif side == "quantus":
                    fn = quantus_call(case, spec, aligned=False)
                else:
                    fn = floor
                runs[side].append(block(fn, reps[side], case.device))
        loads = [
            v for side in runs.values() for t in side for v in (t["load_before"], t["load_after"])
        ]
        attempts.append(
            {"runs": runs, "max_load": max(loads), "mean_load": statistics.fmean(loads)}
        )
        if max(loads) <= args.max_load:
            break
        print(
            f"  {case.name} {spec.key}: load reached {max(loads):.1f} > {args.max_load:g}"
            + (" - measuring again" if attempt < args.reruns else " - keeping the quietest"),
            file=sys.stderr,
        )
    best = min(attempts, key=lambda a: a["mean_load"])
    runs = best["runs"]
    row.update(
        repeats=repeats,
        reps_per_block=reps,
        attempts=len(attempts),
        attempt_loads=[{"max": a["max_load"], "mean": a["mean_load"]} for a in attempts],
        load={"max": best["max_load"], "mean": best["mean_load"]},
        runs=runs,
    )
    for side in runs:
        row[f"{side}_ms"] = _median([t["wall_s"] * 1e3 for t in runs[side]])
        row[f"{side}_cpu_ms"] = _median([t["cpu_s"] * 1e3 for t in runs[side]])
    if "quantus" in runs:
        pairs = zip(runs["camlib"], runs["quantus"], strict=True)
        ratios = [q["wall_s"] / c["wall_s"] for c, q in pairs]
        row["ratio"] = {"median": _median(ratios), "min": min(ratios), "max": max(ratios)}
        row["cpu_ratio"] = row["quantus_cpu_ms"] / row["camlib_cpu_ms"]
    if "floor" in runs:
        n_camlib, n_quantus = spec.counts(case)
        row["floor"] = {
            "unit": spec.unit,
            "camlib_units": n_camlib,
            "quantus_units": n_quantus,
            "ms": row.pop("floor_ms"),
            "cpu_ms": row.pop("floor_cpu_ms"),
            "bound": None,
        }
        if "quantus" in runs:
            pairs = zip(runs["floor"], runs["quantus"], strict=True)
            row["floor"]["bound"] = _median([q["wall_s"] / f["wall_s"] for f, q in pairs])
    return row


def measure_units(case: Case, args: argparse.Namespace) -> dict:
    """Median ms of one no-grad forward and of one Grad-CAM explanation of the batch."""
    reps = 1 if args.quick else 3

    def forward():
        with torch.no_grad():
            return case.model(case.x)

    def explain():
        return case.explain(case.x, case.targets)

    forward()
    return {
        "forward_ms": _median(
            [timed(forward, case.device)[1]["wall_s"] * 1e3 for _ in range(reps)]
        ),
        "explain_ms": _median(
            [timed(explain, case.device)[1]["wall_s"] * 1e3 for _ in range(reps)]
        ),
    }


def measure_evaluate(case: Case, rows: list[dict], args: argparse.Namespace) -> dict:
    """camlib.evaluate end to end on the same metrics (Grad-CAM, no baselines), against the
    sum of Quantus's medians plus the one explanation Quantus users compute first."""
    keys = [r["metric"] for r in rows if SPECS[r["metric"]].camlib]
    names = [SPECS[k].camlib for k in keys]
    options = {SPECS[k].camlib: SPECS[k].options(case) for k in keys}
    options = {k: v for k, v in options.items() if v}

    def run():
        return camlib.evaluate(
            case.model,
            case.x,
            case.targets,
            methods="gradcam",
            metrics=names,
            layer=case.layer,
            boxes=case.boxes,
            batch_size=case.x.shape[0],
            seed=args.seed,
            progress=False,
            metric_options=options,
            baselines=False,
            n_boot=200,
        )

    run = _quiet(run)
    times = [timed(run, case.device)[1] for _ in range(1 if args.quick else min(2, args.repeats))]
    explain_ms = measure_units(case, args)["explain_ms"]
    loads = [v for t in times for v in (t["load_before"], t["load_after"])]
    return {
        "metrics": names,
        "camlib_ms": _median([t["wall_s"] * 1e3 for t in times]),
        "camlib_cpu_ms": _median([t["cpu_s"] * 1e3 for t in times]),
        "explain_ms": explain_ms,
        "load": {"max": max(loads), "mean": statistics.fmean(loads)},
        "runs": times,
    }


# --------------------------------------------------------------------------------------
# report


def _ms(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.3f}"


def _x(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.0f}x" if v >= 100 else f"{v:.1f}x" if v >= 10 else f"{v:.2f}x"


def _agree(a: dict) -> str:
    status = a.get("status", "-")
    if status == "agree":
        return f"yes ({a['max_abs_diff']:.1e})"
    if status == "DISAGREE":
        return f"**NO** ({a['max_abs_diff']:.1e}, {a.get('nan_mismatch', 0)} NaN mismatches)"
    return status.lower()


def verdict(row: dict, goal: float) -> str:
    ratio = row.get("ratio")
    if ratio is None:
        return "n/a (Quantus failed)"
    if ratio["median"] >= goal:
        return "met"
    floor = row.get("floor")
    if floor and floor["bound"] is not None and floor["bound"] < goal:
        return f"not met: bounded by the {floor['unit']}s ({_x(floor['bound'])} at most)"
    return "not met"


def markdown(report: dict) -> str:
    meta = report["meta"]
    m = meta["machine"]
    lines = ["# camlib metrics against Quantus 0.6.0", ""]
    lines.append(f"- date: {meta['date']} (wall time {meta['wall_seconds']:.0f} s)")
    lines.append(
        f"- device: {meta['device']}; CPU: {m['cpu']}, {m['usable_cores']} usable cores; "
        f"torch threads {meta['threads']}"
    )
    lines.append(
        "- versions: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
        + (f"; camlib git {meta['camlib_git']}" if meta.get("camlib_git") else "")
    )
    lines.append(f"- command: `{meta['command']}`")
    lines.append(
        f"- load average (1 min) at start {meta['load_start']:.2f}, at end {meta['load_end']:.2f}; "
        f"per metric below (max over its timed calls); rerun above {meta['max_load']:g} "
        f"(up to {meta['reruns']} time(s), the quietest attempt kept)"
    )
    for u in meta.get("updates", []):
        lines.append(
            f"- updated {u['date']} ({u.get('wall_seconds', 0):.0f} s, load {u['load_start']:.2f} "
            f"at start, {u.get('load_end', math.nan):.2f} at end; its rows replace the "
            f"earlier ones): `{u['command']}`"
        )
    lines.append(
        f"- times: median over {meta['repeats']} repeats (2 for metrics whose first call took "
        f"over {meta['long_call']:g} s); in each repeat camlib, Quantus and the floor each run "
        "one timed block (calls repeated to last >= "
        f"{meta['block_seconds']:g} s), in an order rotated every repeat; ratio = median of "
        "the per-repeat ratios Quantus / camlib (min..max); CPU = process CPU time per call"
    )
    lines += ["", f"## Goal: camlib >= {report['goal']:g}x faster than Quantus", ""]
    for cfg in report["configs"]:
        met = [r["metric"] for r in cfg["rows"] if verdict(r, report["goal"]) == "met"]
        lines.append(
            f"- {cfg['label']}: met by {len(met)} of {len(cfg['rows'])} metrics"
            + (f" ({', '.join(met)})" if met else "")
        )
    for cfg in report["configs"]:
        lines += ["", f"## {cfg['label']}", ""]
        s = cfg["settings"]
        lines.append(
            f"Settings: deletion {s['steps']} steps (baseline 0, softmax); faithfulness "
            f"correlation {s['runs']} runs of {s['subset']} pixels (baseline 0, logits); ROAD "
            f"fractions {', '.join(f'{q:g}' for q in s['percentages'])} (noise 0); "
            f"max-sensitivity {s['samples']} samples, radius {s['radius']:g}; MPRT: every "
            f"layer of the cascade. One no-grad forward of the batch: "
            f"{_ms(cfg['units'].get('forward_ms'))} ms; one Grad-CAM explanation: "
            f"{_ms(cfg['units'].get('explain_ms'))} ms."
        )
        lines += [
            "",
            "| metric | camlib ms | Quantus ms | ratio | CPU ms camlib / Quantus | floor ms "
            "(what) | bound | 10x goal | agreement | load |",
            "|" + "|".join([":---", *["---:"] * 6, ":---", ":---", "---:"]) + "|",
        ]
        for r in cfg["rows"]:
            ratio = r.get("ratio")
            fl = r.get("floor")
            floor = (
                f"{_ms(fl['ms'])} ({min(fl['camlib_units'], fl['quantus_units'])} "
                f"{fl['unit']}{'s' if min(fl['camlib_units'], fl['quantus_units']) > 1 else ''})"
                if fl
                else "-"
            )
            lines.append(
                "| "
                + " | ".join(
                    [
                        r["metric"],
                        _ms(r["camlib_ms"]),
                        _ms(r.get("quantus_ms")),
                        f"{_x(ratio['median'])} ({_x(ratio['min'])}..{_x(ratio['max'])})"
                        if ratio
                        else "-",
                        f"{_ms(r['camlib_cpu_ms'])} / {_ms(r.get('quantus_cpu_ms'))}",
                        floor,
                        _x(fl["bound"]) if fl else "-",
                        verdict(r, report["goal"]),
                        _agree(r["agreement"]),
                        f"{r['load']['max']:.1f}",
                    ]
                )
                + " |"
            )
        ev = end_to_end(cfg)
        if ev:
            lines += [
                "",
                f"`camlib.evaluate` end to end (Grad-CAM once, then the {len(ev['metrics'])} "
                f"metrics above, no baselines): {_ms(ev['camlib_ms'])} ms (CPU "
                f"{_ms(ev['camlib_cpu_ms'])} ms; load {ev['load']['max']:.1f}). Quantus: the "
                f"sum of its medians above plus one explanation ({_ms(ev['explain_ms'])} ms), "
                f"{_ms(ev['quantus_sum_ms'])} ms: {_x(ev['ratio'])}"
                + (
                    f". Quantus could not run {', '.join(ev['quantus_missing'])}, which is not "
                    f"in its sum but is in camlib.evaluate's time; the same comparison without "
                    f"them, camlib's per-metric medians plus one explanation: "
                    f"{_ms(ev['camlib_sum_ms'])} ms against {_ms(ev['quantus_sum_ms'])} ms, "
                    f"{_x(ev['sum_ratio'])}."
                    if ev["quantus_missing"]
                    else "."
                ),
            ]
        notes = [f"- {r['metric']}: {n}" for r in cfg["rows"] for n in _notes(r)]
        if notes:
            lines += ["", "Notes:", "", *notes]
    if report.get("notes"):
        lines += ["", "## Notes", "", *(f"- {n}" for n in report["notes"])]
    lines += ["", "## Reading the table", ""]
    lines += [
        "- *floor*: the forward passes (or explanations) the metric needs on both sides, "
        "timed alone (the smaller count of the two libraries times one call); *bound*: "
        "Quantus's time over that floor, the largest ratio any implementation could reach "
        "against Quantus here.",
        "- *agreement*: the first call of each side (untimed) with the randomness aligned; "
        f"largest |camlib - Quantus| (required <= {TOL:g} where the definitions agree).",
        "- The timed calls use each library's own random draws, so their values differ "
        "from the agreement call's.",
    ]
    return "\n".join(lines) + "\n"


def end_to_end(cfg: dict) -> dict | None:
    """camlib.evaluate's time against the sum of Quantus's medians (plus one explanation),
    recomputed from the rows (an --update may have replaced some)."""
    ev = cfg.get("evaluate")
    if not ev:
        return None
    rows = [r for r in cfg["rows"] if SPECS[r["metric"]].camlib in ev["metrics"]]
    both = [r for r in rows if r.get("quantus_ms")]
    quantus = ev["explain_ms"] + sum(r["quantus_ms"] for r in both)
    camlib_sum = ev["explain_ms"] + sum(r["camlib_ms"] for r in both)
    return {
        **ev,
        "quantus_sum_ms": quantus,
        "ratio": quantus / ev["camlib_ms"],
        "quantus_missing": [r["metric"] for r in rows if not r.get("quantus_ms")],
        "camlib_sum_ms": camlib_sum,
        "sum_ratio": quantus / camlib_sum,
    }


def _notes(row: dict) -> list[str]:
    out = []
    if row.get("note"):
        out.append(row["note"])
    a = row["agreement"]
    if a.get("note"):
        out.append(a["note"])
    if row.get("attempts", 1) > 1:
        loads = ", ".join(f"{x['max']:.1f}" for x in row["attempt_loads"])
        out.append(f"measured {row['attempts']} times (max loads {loads}); the quietest kept")
    return out


def console(report: dict) -> str:
    out = []
    for cfg in report["configs"]:
        out.append(cfg["label"])
        for r in cfg["rows"]:
            ratio = r.get("ratio")
            out.append(
                f"  {r['metric']:<26} camlib {_ms(r['camlib_ms']):>8} ms  Quantus "
                f"{_ms(r.get('quantus_ms')):>8} ms  {_x(ratio['median']) if ratio else '-':>6}  "
                f"{verdict(r, report['goal']):<40} agreement {_agree(r['agreement'])}"
            )
        ev = end_to_end(cfg)
        if ev:
            out.append(
                f"  camlib.evaluate {_ms(ev['camlib_ms'])} ms vs Quantus sum "
                f"{_ms(ev['quantus_sum_ms'])} ms: {_x(ev['ratio'])}"
            )
    return "\n".join(out)


# --------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--models", default=None, help="mnist,resnet18 (--quick: mnist)")
    p.add_argument(
        "--batch",
        default=None,
        help="images per batch: N, or MODEL=N,... per model (default 32; --quick 4)",
    )
    p.add_argument("--size", type=int, default=None, help="ResNet-18 input size (default 64)")
    p.add_argument(
        "--metrics", default="all", help=f"comma-separated from {','.join(METRICS)} (default all)"
    )
    p.add_argument("--repeats", type=int, default=None, help="timed calls per side (default 3)")
    p.add_argument(
        "--fc-runs", type=int, default=None, help="faithfulness correlation runs (default 100)"
    )
    p.add_argument(
        "--fc-subset", type=int, default=224, help="faithfulness correlation pixels (224)"
    )
    p.add_argument("--ms-samples", type=int, default=None, help="max-sensitivity samples (10)")
    p.add_argument(
        "--max-load",
        type=float,
        default=None,
        help="measure a metric again when the 1-minute load average exceeded this during its "
        "calls (default: 2 x usable cores)",
    )
    p.add_argument("--reruns", type=int, default=1, help="at most this many re-measurements")
    p.add_argument(
        "--block-seconds",
        type=float,
        default=None,
        help="calls are repeated in a timed block lasting at least this long (default 0.3; "
        "--quick 0.02): milliseconds metrics are timed over many calls",
    )
    p.add_argument(
        "--long-call",
        type=float,
        default=20.0,
        help="a metric whose first call took longer (seconds) is timed --long-repeats times",
    )
    p.add_argument("--long-repeats", type=int, default=2, help="(default 2)")
    p.add_argument("--no-evaluate", action="store_true", help="skip camlib.evaluate end to end")
    p.add_argument("--goal", type=float, default=10.0, help="speed-up goal (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat (smoke test)")
    p.add_argument(
        "--update",
        action="store_true",
        help="measure only the given --models/--metrics and replace those rows in OUT's "
        "earlier results (the others are kept; the update is recorded with its load)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: rebuild OUT/metrics_vs_quantus.md from its .json",
    )
    p.add_argument("--out", required=True, help="output directory")
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False on this machine")
    quick = args.quick
    args.models = [
        m.strip() for m in (args.models or ("mnist" if quick else "mnist,resnet18")).split(",")
    ]
    batch = {m: 4 if quick else 32 for m in args.models}
    for item in (args.batch or "").split(","):
        if not item.strip():
            continue
        model, _, n = item.rpartition("=")
        for m in [model.strip()] if model else args.models:
            if m not in batch or not n.strip().isdigit() or int(n) < 1:
                p.error(f"--batch wants N or MODEL=N for the models run, got {item!r}")
            batch[m] = int(n)
    args.batch = batch
    args.size = args.size or 64
    args.repeats = args.repeats or (1 if quick else 3)
    if args.block_seconds is None:
        args.block_seconds = 0.02 if quick else 0.3
    args.fc_runs = args.fc_runs or (6 if quick else 100)
    args.ms_samples = args.ms_samples or (2 if quick else 10)
    if quick:
        args.fc_subset = min(args.fc_subset, 32)
        args.reruns = 0
    if args.metrics.strip() == "all":
        args.metrics = list(METRICS)
    else:
        args.metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        bad = [m for m in args.metrics if m not in METRICS]
        if bad:
            p.error(f"unknown metric(s) {', '.join(bad)}; choose from {', '.join(METRICS)}")
    if args.max_load is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        args.max_load = 2.0 * cores
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    out_dir = Path(args.out)
    if args.report_only:
        report = json.loads((out_dir / "metrics_vs_quantus.json").read_text())
        write(report, out_dir, None)
        print(console(report))
        return 0
    torch.set_num_threads(args.threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    quantus = _q()
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python "
        + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "device": str(args.device),
        "machine": machine_info(args.device),
        "threads": torch.get_num_threads(),
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "camlib": camlib.__version__,
            "quantus": getattr(quantus, "__version__", "?"),
            "numpy": np.__version__,
        },
        "camlib_git": git_state(),
        "repeats": args.repeats,
        "max_load": args.max_load,
        "reruns": args.reruns,
        "long_call": args.long_call,
        "block_seconds": args.block_seconds,
        "load_start": _load(),
    }
    configs: list[dict] = []
    report = {"meta": meta, "goal": args.goal, "tolerance": TOL, "configs": configs, "notes": []}
    path = out_dir / "metrics_vs_quantus.json"
    update = None
    if args.update and path.is_file():  # replace some rows of an earlier run, keep the rest
        report = json.loads(path.read_text())
        configs = report["configs"]
        update = {k: meta[k] for k in ("date", "command", "threads", "load_start")}
        report["meta"].setdefault("updates", []).append(update)
        meta = update
    failed = False
    try:
        for name in args.models:
            cfg = measure_config(name, args)
            old = next((c for c in configs if c["label"] == cfg["label"]), None)
            if update is not None and old is not None:
                fresh = {r["metric"]: r for r in cfg["rows"]}
                kept = {r["metric"]: r for r in old["rows"] if r["metric"] not in fresh}
                merged = {**kept, **fresh}
                old["rows"] = [merged[k] for k in METRICS if k in merged]
                if "evaluate" in cfg:
                    old["evaluate"] = cfg["evaluate"]
                cfg = old
            else:
                configs.append(cfg)
            failed |= any(r["agreement"].get("status") == "DISAGREE" for r in cfg["rows"])
            write(report, out_dir, started, meta)  # what is measured so far survives a stop
    except KeyboardInterrupt:  # (also timeout --signal=INT): keep what was measured
        done = ", ".join(c["label"] for c in configs) or "none"
        report["notes"].append(f"interrupted: only these configurations were measured: {done}")
        print(f"warning: {report['notes'][-1]}", file=sys.stderr)
    write(report, out_dir, started, meta)
    print(console(report))
    print(f"wrote {out_dir}/metrics_vs_quantus.json and .md in {meta['wall_seconds']:.0f} s")
    return 1 if failed else 0


def measure_config(name: str, args: argparse.Namespace) -> dict:
    """Every metric of ``args.metrics`` (and camlib.evaluate) on one model's batch."""
    case = make_case(name, args)
    res = case.x.shape[-1]
    label = f"{name} at {res}x{res}, batch {case.x.shape[0]}"
    print(label, file=sys.stderr)
    units = measure_units(case, args)
    rows = []
    for key in args.metrics:
        row = measure_metric(case, SPECS[key], args)
        rows.append(row)
        print(
            f"  {key}: camlib {_ms(row['camlib_ms'])} ms, Quantus "
            f"{_ms(row.get('quantus_ms'))} ms, agreement {_agree(row['agreement'])}",
            file=sys.stderr,
        )
    cfg = {
        "model": name,
        "resolution": res,
        "batch": int(case.x.shape[0]),
        "label": label,
        "layer": case.layer,
        "settings": {**case.settings, "percentages": list(case.settings["percentages"])},
        "units": units,
        "rows": rows,
    }
    if not args.no_evaluate:
        cfg["evaluate"] = measure_evaluate(case, rows, args)
    del case
    release_free_memory()
    return cfg


def write(report: dict, out_dir: Path, started: float | None, meta: dict | None = None) -> None:
    """OUT/metrics_vs_quantus.json and .md (``started`` None: rebuilding the .md only);
    ``meta`` is the run's (an ``--update``'s own record)."""
    meta = report["meta"] if meta is None else meta
    if started is not None:
        meta["load_end"] = _load()
        meta["wall_seconds"] = round(time.perf_counter() - started, 1)
        (out_dir / "metrics_vs_quantus.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "metrics_vs_quantus.md").write_text(markdown(report))


if __name__ == "__main__":
    raise SystemExit(main())
