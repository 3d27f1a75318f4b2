"""Model-zoo coverage sweep (issue 17): every model people use, explained with nothing but
the model, and checked against references that share no code with camlib's layouts.

    python benchmarks/zoo.py --out benchmarks/results/zoo [--zoo timm,hf,video,smp,yolo,monai]
                             [--limit N] [--models a,b] [--methods fast|all|gradcam]

Models are built with random weights (no downloads); zero-initialised weights (heads,
residual-branch norms, layer scales) get small random values so gradients are not all 0, and
BatchNorm running statistics are calibrated on random inputs (:func:`prepare`).
transformers models get He-initialised convolutions (:func:`conv_scale`) and LeViT
distance-based attention biases (:func:`levit_locality`), so that random activations do not
vanish (~1e-33 by the last stage otherwise) or mix uniformly over the image.

    python benchmarks/zoo.py --out OUT --merge DIR1 DIR2   # join sweeps run apart
Each model is explained with ``camlib.GradCAM(model)`` (``target_layer="auto"``, nothing
else) and checked against two references at the layer camlib reports:

(a) a **layout probe**: one quadrant of the input is replaced by noise at a time; the change
    of the layer's output (read with our own hook, laid out by our own code from the
    arrangement camlib reports) is shared out over the grid's quadrants, and the matching
    assignment of input to grid quadrants must beat every other one (a transposed or
    mirrored layout is one of them) by ``PROBE_MARGIN``; when no assignment wins by it, the
    layer mixes globally (attention, squeeze-excitation, ASPP pooling on a coarse grid) and
    the probe is inconclusive;
(b) **Grad-CAM by hand**: our own hook, ``torch.autograd.grad``, our own channel means and
    weighted sum, compared with camlib's raw map (``upsample=False, normalize=False``) to
    ``RTOL`` of the map's peak.

Each model gets one outcome (worst first): ``wrong`` (a reference disagrees), ``unverified``
(Grad-CAM equals the hand reference but the layout probe is inconclusive), ``crash``
(an error that is not a camlib error), ``refused`` (a camlib error, naming the layer to
pass), ``no-gradient`` (the target gets no gradient at the chosen layer), ``early`` (the
layer completes in the first half of the model's leaf-module calls), ``ok``. The other
registered methods run with ``target_layer="auto"`` for "returns a finite map of the right
shape" (methods.csv); the perturbation and wrapper methods run only when their estimated
cost fits ``--budget`` seconds, else they are recorded as skipped for time.

timm models: the smallest (by parameter count, from a meta-device build) of every name
prefix of every module in ``timm.models``, up to 40M parameters. The **prefix** of a model
name is its leading run of letters (``resnet`` for ``resnet18d``, ``vit`` for
``vit_tiny_patch16_224``, ``tf`` for ``tf_efficientnet_b0``). Input: the model's default
``input_size`` when its sides are at most 288 px, else 224 px (with ``img_size=224`` for
models that take it).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import re
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

import camlib
from camlib.errors import CamlibError

ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-4
"""Hand Grad-CAM vs camlib: |difference| <= RTOL * peak of the hand map (+ 1e-7)."""
MAX_PARAMS = 40_000_000
MAX_SIDE = 288
HF_SIDE = 128
EXPENSIVE = {"WrappedCAM", "PerturbationCAM", "SampledScoreCAM"}
SLOW_METHODS = {"smoothgradcampp", "fullgrad", "sess", "shapleycam"}


# -- cases ---------------------------------------------------------------------------------------
@dataclass
class Case:
    """One model of one zoo: how to build it and what to explain."""

    zoo: str
    family: str
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    target: Callable[[], object] | None = None
    """A factory for a callable target (``None``: the top class)."""
    extra: Callable[[nn.Module, torch.Tensor, dict], None] | None = None
    """A further check (MONAI's reference, YOLO's named layers); it fills the row."""


@dataclass
class Row:
    zoo: str
    family: str
    model: str
    params: int = 0
    input_size: str = ""
    layer: str = ""
    layout: str = ""
    outcome: str = ""
    reason: str = ""
    seconds: float = 0.0
    ratio: float = float("nan")
    """camlib Grad-CAM call time over a no-grad forward (warm, medians of 3)."""
    methods: dict = field(default_factory=dict)


# -- preparing models ----------------------------------------------------------------------------
def prepare(
    model: nn.Module, seed: int = 0, input_shape: tuple[int, ...] | None = None
) -> nn.Module:
    """eval(), float32, every all-zero weight (heads, zero-init norms, layer scales) refilled
    with small random values so gradients do not vanish, and (given ``input_shape``) the
    BatchNorm running statistics calibrated on two random inputs.

    Without the calibration a random-weight network whose convolutions are initialised small
    (transformers' ``initializer_range=0.02``) and whose eval-mode BatchNorm divides by the
    initial running variance 1 shrinks its activations ~50x per layer: by the last stage of
    HF MobileViT or EfficientNet they are ~1e-30 and the layout probe sees no change at all.
    A trained network's running statistics match its activations; the calibration gives a
    random one the same property (cumulative averages of one train-mode forward, no grad)."""
    gen = torch.Generator().manual_seed(seed)
    model = model.float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.numel() and not name.endswith("bias") and not bool(p.any()):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02 + (1.0 if p.dim() == 1 else 0))
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if input_shape is not None and norms:
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        x = torch.randn(2, *input_shape, generator=gen)
        try:
            model.train()
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model(x)
        except Exception:  # noqa: BLE001 - a model that cannot run in train mode keeps its init
            for m in norms:
                m.reset_running_stats()
        finally:
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
            model.eval()
    return model


# -- references (no camlib layout code) ----------------------------------------------------------
def own_layout(t: torch.Tensor, kind: str, prefix: int, grid: tuple[int, ...]) -> torch.Tensor:
    """(N, C, *grid) from a layer output, written out from camlib's reported arrangement."""
    if kind == "channels_last":
        dims = list(range(t.dim()))
        return t.permute(0, dims[-1], *dims[1:-1])
    if kind == "tokens":
        n, _, d = t.shape
        return (
            t[:, prefix:, :]
            .reshape(n, *grid, d)
            .permute(0, len(grid) + 1, *range(1, len(grid) + 1))
        )
    return t


def logits_of(output: object) -> torch.Tensor:
    """The class logits of a model output, found without camlib."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, dict):
        return output["logits"] if "logits" in output else output["out"]
    return output[0]


class Hooked:
    """Our own forward hook on call ``call`` of ``module``: keeps that output (the rest of
    the network gets a clone, so in-place ops later cannot change it)."""

    def __init__(self, module: nn.Module, call: int | None) -> None:
        self.module, self.call, self.seen, self.out = module, call or 0, 0, None

    def __enter__(self) -> Hooked:
        def hook(module, args, output):
            index, self.seen = self.seen, self.seen + 1
            if index == self.call:
                self.out = output
                return output.clone()
            return None

        self.handle = self.module.register_forward_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def scores_of(output: object, target: object) -> torch.Tensor:
    if callable(target):
        return target(output)
    logits = logits_of(output)
    if logits.dim() == 1:
        logits = logits[:, None]
    return logits.gather(1, logits.argmax(1, keepdim=True))[:, 0]


def hand_gradcam(
    model: nn.Module, ref, x: torch.Tensor, target: object, layout: tuple
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM at ``ref`` (camlib's LayerRef) by hand: (N, *grid) map and the laid-out
    gradient. ReLU(sum_k mean_ij(dy/dA_k) A_k)."""
    with torch.enable_grad(), Hooked(ref.module, ref.call) as h:
        output = model(x)
        scores = scores_of(output, target)
        (grad,) = torch.autograd.grad(scores.sum(), h.out)
    act = own_layout(h.out.detach(), *layout).float()
    g = own_layout(grad, *layout).float()
    weights = g.flatten(2).mean(-1)
    cam = torch.relu((weights[(...,) + (None,) * (act.dim() - 2)] * act).sum(1))
    return cam, g


PROBE_MARGIN = 0.01
"""The layout probe's margin: the matching assignment of input quadrants to grid quadrants
must beat every other assignment by this much mean share (1 point of 25 %) to pass, and
another one must beat it by this much to fail; in between the probe is inconclusive. Grids
under 4 cells a side need 5x this margin."""


def layout_probe(model: nn.Module, ref, x: torch.Tensor, layout: tuple) -> tuple[bool | None, str]:
    """Replace one quadrant of the input (H, W) at a time with noise and record how much each
    cell of the layer's laid-out grid changes (summed over channels, averaged over frames).
    Each cell's changes are divided by their sum over the four perturbations (so cells that
    react to everything do not dominate), giving S[q][c], the mean share of grid quadrant c
    when input quadrant q is perturbed. Every assignment of input quadrants to grid quadrants
    (a permutation p; a transposed or flipped layout is one of them) scores
    sum_q S[q][p(q)] / 4. True: the matching assignment wins by ``PROBE_MARGIN``; False:
    another wins by it (the layout is wrong); None: inconclusive (global mixing, e.g.
    attention or squeeze-excitation on a coarse grid, spreads every change everywhere)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad(), Hooked(ref.module, ref.call) as h:
        model(x)
        base = own_layout(h.out, *layout).float()
    grid = tuple(base.shape[-2:])
    split = [g >= 2 for g in grid]
    if not any(split):
        return True, "1x1 grid: nothing to check"
    H, W = x.shape[-2:]
    quadrants = [(a, b) for a in range(1 + split[0]) for b in range(1 + split[1])]
    changes = []
    for qi, qj in quadrants:
        x2 = x.clone()
        rows = slice(0, H // 2) if qi == 0 else slice(H // 2, H)
        cols = slice(0, W // 2) if qj == 0 else slice(W // 2, W)
        if not split[0]:
            rows = slice(0, H)
        if not split[1]:
            cols = slice(0, W)
        x2[..., rows, cols] = torch.randn(x2[..., rows, cols].shape, generator=gen) * 2
        with torch.no_grad(), Hooked(ref.module, ref.call) as h:
            model(x2)
            new = own_layout(h.out, *layout).float()
        changes.append((new - base).abs().sum(1).reshape(-1, *grid).mean(0))
    total = torch.stack(changes).sum(0)
    peak = float(total.max())
    if not peak > 0 or not math.isfinite(peak):
        return False, "the layer's output does not change with the input (vanished signal)"
    total = total.clamp_min(peak * 1e-6)
    in_i = (torch.arange(grid[0]) + 0.5) / grid[0] >= 0.5
    in_j = (torch.arange(grid[1]) + 0.5) / grid[1] >= 0.5
    shares = []
    for change in changes:
        share = change / total
        row = []
        for a, b in quadrants:
            mi = in_i == bool(a) if split[0] else torch.ones(grid[0], dtype=torch.bool)
            mj = in_j == bool(b) if split[1] else torch.ones(grid[1], dtype=torch.bool)
            row.append(float(share[mi][:, mj].mean()))
        shares.append(row)
    n = len(quadrants)
    scores = {
        perm: sum(shares[q][perm[q]] for q in range(n)) / n
        for perm in itertools.permutations(range(n))
    }
    identity = tuple(range(n))
    best_other = max((p for p in scores if p != identity), key=scores.get)
    margin = scores[identity] - scores[best_other]
    diagonal = ", ".join(f"{shares[q][q]:.2f}" for q in range(n))
    note = (
        f"matching share {scores[identity]:.3f} vs {scores[best_other]:.3f} for quadrants "
        f"{best_other} ({'x'.join(map(str, grid))} grid; diagonal {diagonal})"
    )
    # a 2x2 or 3x3 grid (one cell per quadrant) of a network whose receptive field covers
    # the image is a weak test: there, only a 5x larger margin decides either way
    need = (
        PROBE_MARGIN
        if min(g for g, cut in zip(grid, split, strict=True) if cut) >= 4
        else 5 * PROBE_MARGIN
    )
    if margin >= need:
        return True, note
    if margin <= -need:
        return False, "quadrant changes land elsewhere: " + note
    return None, "inconclusive: " + note


def leaf_position(model: nn.Module, ref, x: torch.Tensor) -> float:
    """How far through the model's leaf-module calls (with tensor outputs) the layer's call
    completes: 0 = first, 1 = last."""
    order: list[tuple[nn.Module, int]] = []
    counts: dict[int, int] = {}
    marks: list[int] = []

    def hook(module, args, output):
        k = counts.get(id(module), 0)
        counts[id(module)] = k + 1
        if next(module.children(), None) is None and isinstance(output, torch.Tensor):
            order.append((module, k))
        if module is ref.module and k == (ref.call or 0):
            marks.append(len(order))

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return (marks[0] / max(len(order), 1)) if marks else float("nan")


def timed(fn: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# -- one model -----------------------------------------------------------------------------------
def check_model(
    case: Case, *, methods: str = "fast", budget: float = 20.0, timing: bool = True
) -> Row:
    """Build, explain with ``camlib.GradCAM(model)``, check against the references."""
    row = Row(case.zoo, case.family, case.name)
    start = time.perf_counter()
    try:
        torch.manual_seed(0)
        model = prepare(case.build(), input_shape=case.input_shape)
        row.params = sum(p.numel() for p in model.parameters())
        x = torch.randn(1, *case.input_shape, generator=torch.Generator().manual_seed(0))
        row.input_size = "x".join(map(str, case.input_shape))
        _gradcam_checks(case, model, x, row, timing)
        if case.extra is not None and row.outcome in ("ok", "unverified", "refused"):
            notes: dict = {}
            case.extra(model, x, notes)
            if notes.get("wrong"):
                row.outcome, row.reason = "wrong", notes["wrong"]
            elif notes.get("note"):
                row.reason = "; ".join(r for r in (row.reason, notes["note"]) if r)
        if methods != "gradcam" and row.outcome in ("ok", "no-gradient", "early"):
            row.methods = run_methods(model, x, case, methods, budget)
    except Exception as error:  # noqa: BLE001 - every failure is a result
        row.outcome = "crash"
        row.reason = f"{type(error).__name__}: {str(error)[:300]}"
        traceback.print_exc(file=sys.stderr)
    row.seconds = round(time.perf_counter() - start, 2)
    return row


def _gradcam_checks(case: Case, model: nn.Module, x: torch.Tensor, row: Row, timing: bool) -> None:
    target = case.target() if case.target is not None else None
    explainer = camlib.GradCAM(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = explainer(x, target, upsample=False, normalize=False)
    except CamlibError as error:
        row.outcome, row.reason = "refused", f"{type(error).__name__}: {str(error)[:400]}"
        return
    ref = explainer.layers[0]
    row.layer = explainer.layer_name or ""
    with torch.no_grad(), Hooked(ref.module, ref.call) as h:
        model(x)
    arrangement = camlib.layouts.arrange(h.out, x.shape, name=ref.spec, module=ref.module)
    layout = (arrangement.kind, arrangement.prefix, tuple(arrangement.grid))
    row.layout = arrangement.kind + (
        f"+{arrangement.prefix} {'x'.join(map(str, arrangement.grid))}"
        if arrangement.kind == "tokens"
        else ""
    )
    target = case.target() if case.target is not None else None
    want, grad = hand_gradcam(model, ref, x, target, layout)
    problems = []
    if raw.shape != want.shape:
        problems.append(f"camlib map {tuple(raw.shape)} vs hand {tuple(want.shape)}")
    else:
        err = float((raw.float() - want).abs().max())
        peak = float(want.abs().max())
        if not err <= RTOL * peak + 1e-7:
            problems.append(
                f"Grad-CAM differs from the hand reference by {err:.3g} (peak {peak:.3g})"
            )
    probe_ok, probe_note = layout_probe(model, ref, x, layout)
    if probe_ok is False:
        problems.append(f"layout probe: {probe_note}")
    position = leaf_position(model, ref, x)
    if problems:
        row.outcome, row.reason = "wrong", "; ".join(problems)
    elif probe_ok is None:
        row.outcome, row.reason = "unverified", f"layout probe {probe_note}"
    elif not bool(grad.any()):
        row.outcome, row.reason = "no-gradient", f"the target's gradient at {row.layer!r} is 0"
    elif position < 0.5:
        row.outcome, row.reason = (
            "early",
            f"{row.layer!r} completes {position:.0%} into the leaf calls",
        )
    else:
        row.outcome = "ok"
        if not bool(want.any()):
            row.reason = "map is 0 after the ReLU (gradient nonzero)"
    if timing:
        with torch.no_grad():
            forward = timed(lambda: model(x))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call = timed(lambda: explainer(x, target))
        row.ratio = round(call / forward, 3)


def run_methods(model: nn.Module, x: torch.Tensor, case: Case, mode: str, budget: float) -> dict:
    """Every other registered method with target_layer="auto": finite map of the right shape."""
    results = {}
    with torch.no_grad():
        forward = timed(lambda: model(x), 1)
    spent = 0.0
    for name in camlib.available_methods():
        if name == "gradcam":
            continue
        cls = camlib.get_method(name)
        families = {c.__name__ for c in cls.__mro__}
        expensive = bool(families & EXPENSIVE) or name in SLOW_METHODS
        if expensive and mode != "all":
            estimate = forward * 64
            if estimate > budget - spent or mode == "fast":
                results[name] = ("skipped", f"skipped for time (~{estimate:.0f}s+ of forwards)")
                continue
        target = case.target() if case.target is not None else None
        begin = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                maps = camlib.explain(model, x, method=name, targets=target)
            signed = cls.signed
            want = tuple(x.shape) if signed else (x.shape[0], *x.shape[2:])
            if tuple(maps.shape) != want:
                results[name] = ("bad-shape", f"{tuple(maps.shape)} != {want}")
            elif not bool(torch.isfinite(maps).all()):
                results[name] = ("non-finite", "")
            else:
                results[name] = ("ok", "")
        except CamlibError as error:
            results[name] = ("refused", f"{type(error).__name__}: {str(error)[:160]}")
        except Exception as error:  # noqa: BLE001
            results[name] = ("crash", f"{type(error).__name__}: {str(error)[:160]}")
        spent += time.perf_counter() - begin
    return results


# -- the zoos ------------------------------------------------------------------------------------
def prefix_of(name: str) -> str:
    """A timm name's prefix: its leading run of letters."""
    match = re.match(r"[a-z]+", name)
    return match.group() if match else name


def timm_params(path: Path, shard: tuple[int, int] = (0, 1)) -> dict:
    """Parameter counts of every timm model from meta-device builds, cached in ``path``.

    The cache is written every 25 models and resumed from, so an interrupted listing loses
    little; ``shard=(i, n)`` lists only every n-th model from the i-th (to run n processes,
    each with its own ``path``; :func:`merge_params` joins them)."""
    done = json.loads(path.read_text()) if path.exists() else {}
    if done.get("__complete__"):
        return {k: v for k, v in done.items() if k != "__complete__"}
    import timm

    names = [(m, n) for m in timm.list_modules() for n in timm.list_models(module=m)]
    out = dict(done)
    for i, (module, name) in enumerate(names):
        if i % shard[1] != shard[0] or name in out:
            continue
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = timm.create_model(name, pretrained=False)
            out[name] = {
                "module": module,
                "params": sum(p.numel() for p in m.parameters()),
                "input_size": list(m.pretrained_cfg.get("input_size", (3, 224, 224))),
            }
        except Exception as error:  # noqa: BLE001
            out[name] = {"module": module, "params": None, "error": str(error)[:100]}
        if len(out) % 25 == 0:
            path.write_text(json.dumps(out, indent=0))
    if shard == (0, 1):
        out["__complete__"] = True
    path.write_text(json.dumps(out, indent=0))
    return {k: v for k, v in out.items() if k != "__complete__"}


def merge_params(parts: list[Path], path: Path) -> dict:
    """Join sharded :func:`timm_params` caches into one complete cache at ``path``."""
    out: dict = {}
    for part in parts:
        out.update(json.loads(part.read_text()))
    out.pop("__complete__", None)
    import timm

    missing = set(timm.list_models()) - set(out)
    if missing:
        raise RuntimeError(
            f"{len(missing)} timm models missing from the shards, e.g. {sorted(missing)[:3]}"
        )
    out["__complete__"] = True
    path.write_text(json.dumps(out, indent=0))
    return {k: v for k, v in out.items() if k != "__complete__"}


def timm_cases(out: Path) -> list[Case]:
    import timm

    table = timm_params(out / "timm_params.json")
    best: dict[tuple[str, str], tuple[int, str]] = {}
    for name, info in table.items():
        if not info.get("params") or info["params"] > MAX_PARAMS:
            continue
        key = (info["module"], prefix_of(name))
        if key not in best or (info["params"], name) < best[key]:
            best[key] = (info["params"], name)
    cases = []
    for (module, _), (_, name) in sorted(best.items()):
        size = list(table[name].get("input_size", (3, 224, 224)))
        kwargs = {}
        if max(size[1:]) > MAX_SIDE:
            size = [size[0], 224, 224]
            kwargs = {"img_size": 224}

        def build(name=name, kwargs=kwargs) -> nn.Module:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    model = timm.create_model(name, pretrained=False, **kwargs)
                except TypeError:
                    model = timm.create_model(name, pretrained=False)
            return levit_locality(model)  # a no-op without LeViT-style attention biases

        cases.append(Case("timm", module, name, build, tuple(size)))
    return cases


HF_CONFIGS: dict[str, dict] = {
    "vit": dict(
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=128,
        image_size=128,
        patch_size=16,
    ),
    "beit": dict(
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=128,
        image_size=128,
        patch_size=16,
        use_mean_pooling=False,
    ),
    "data2vec-vision": dict(
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=128,
        image_size=128,
        patch_size=16,
    ),
    "dinov2": dict(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=128, patch_size=16
    ),
    "deit": dict(
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=128,
        image_size=128,
        patch_size=16,
    ),
    "convnext": dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1]),
    "convnextv2": dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1]),
    "swin": dict(
        embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], image_size=128, window_size=2
    ),
    "swinv2": dict(
        embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], image_size=128, window_size=2
    ),
    "resnet": dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], embedding_size=16),
    "regnet": dict(
        hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], embedding_size=16, groups_width=8
    ),
    "bit": dict(hidden_sizes=[128, 256, 512, 1024], depths=[1, 1, 1, 1], embedding_size=64),
    "mobilenet_v1": dict(depth_multiplier=0.25, image_size=128),
    "mobilenet_v2": dict(depth_multiplier=0.35, image_size=128),
    "mobilevit": dict(
        image_size=128, hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64]
    ),
    "mobilevitv2": dict(image_size=128, width_multiplier=0.5),
    "efficientnet": dict(
        image_size=128, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320
    ),
    "levit": dict(
        image_size=128,
        hidden_sizes=[32, 48, 64],
        num_attention_heads=[1, 2, 2],
        depths=[1, 1, 1],
        key_dim=[8, 8, 8],
    ),
    "pvt": dict(
        image_size=128,
        hidden_sizes=[16, 32, 64, 64],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 2, 4, 4],
    ),
    "pvt_v2": dict(
        hidden_sizes=[16, 32, 64, 64], depths=[1, 1, 1, 1], num_attention_heads=[1, 2, 4, 4]
    ),
    "segformer": dict(hidden_sizes=[16, 32, 64, 64], depths=[1, 1, 1, 1], decoder_hidden_size=32),
    "poolformer": dict(hidden_sizes=[16, 32, 64, 64], depths=[1, 1, 1, 1]),
    "cvt": dict(),
    "focalnet": dict(embed_dim=16, depths=[1, 1, 1, 1]),
    "swiftformer": dict(depths=[1, 1, 1, 1], embed_dims=[16, 32, 64, 64]),
    "hiera": dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], image_size=[128, 128]),
    "ijepa": dict(
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=128,
        image_size=128,
        patch_size=16,
    ),
    "textnet": dict(),
}
"""Small configs for transformers' image classifiers (model_type -> overrides)."""
HF_CLASSES = {"deit": "DeiTForImageClassification", "levit": "LevitForImageClassification"}


def conv_scale(model: nn.Module) -> nn.Module:
    """He-normal (fan-in) weights for every convolution of a transformers model.

    transformers initialises convolutions like linear layers, N(0, 0.02^2) whatever the
    fan-in, so a random CNN's activations shrink ~50x per layer (BatchNorm's eps stops its
    calibration from undoing it); by the last stage of MobileViT or EfficientNet at 128 px
    they are ~1e-33 and the layout probe sees no change. He init keeps them O(1), as a
    trained network's are."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    return model


def levit_locality(model: nn.Module, strength: float = 5.0) -> nn.Module:
    """Attention biases of -strength * (distance between query and key) for every LeViT
    attention (HF's ``attention_biases`` table, indexed by offset through
    ``attention_bias_idxs``), as a trained LeViT learns them.

    The zero-initialised biases make a random LeViT's attention uniform over all tokens, and
    its subsampling attention has no residual, so after the first stage every token depends
    on the whole image equally and the layout probe cannot tell cells apart (the patch
    embeddings localise perfectly, row-major)."""
    with torch.no_grad():
        for m in model.modules():
            idxs = getattr(m, "attention_bias_idxs", None)
            if idxs is None or not isinstance(getattr(m, "attention_biases", None), nn.Parameter):
                continue
            q, k = idxs.shape
            rq, rk = math.isqrt(q), math.isqrt(k)
            stride = getattr(m, "stride", rk // rq)
            qi, ki = torch.arange(q), torch.arange(k)
            dy = (qi // rq)[:, None] * stride - (ki // rk)[None]
            dx = (qi % rq)[:, None] * stride - (ki % rk)[None]
            dist = (dy.float() ** 2 + dx.float() ** 2).sqrt()
            table = torch.zeros(m.attention_biases.shape[1])
            table[idxs.flatten()] = -strength * dist.flatten()
            m.attention_biases.copy_(table.expand_as(m.attention_biases))
    return model


HF_SIDES = {
    "mobilevitv2": 384,
    "mobilevit": 256,
    "efficientnet": 256,
    "levit": 256,
    "mobilenet_v2": 256,
}
"""Inputs larger than ``HF_SIDE`` where 128 px leaves the chosen layer a 4x4 or 2x2 grid
behind global mixing (MobileViT attention, squeeze-excitation, LeViT attention): the
layout probe needs several cells per quadrant to be decisive."""


def hf_cases() -> list[Case]:
    cases = []
    for model_type, overrides in HF_CONFIGS.items():

        def build(model_type=model_type, overrides=overrides) -> nn.Module:
            import transformers
            from transformers import AutoConfig, AutoModelForImageClassification

            side = HF_SIDES.get(model_type, HF_SIDE)
            if isinstance(overrides.get("image_size"), int):
                overrides = {**overrides, "image_size": side}
            config = AutoConfig.for_model(model_type, num_labels=10, **overrides)
            direct = HF_CLASSES.get(model_type)
            if direct is not None:
                model = getattr(transformers, direct)(config)
            else:
                model = AutoModelForImageClassification.from_config(config)
            return levit_locality(conv_scale(model)) if model_type == "levit" else conv_scale(model)

        side = HF_SIDES.get(model_type, HF_SIDE)
        cases.append(Case("hf", model_type, f"hf-{model_type}", build, (3, side, side)))

    def segformer() -> nn.Module:
        from transformers import SegformerConfig, SegformerForSemanticSegmentation

        config = SegformerConfig(num_labels=5, **HF_CONFIGS["segformer"])
        return SegformerForSemanticSegmentation(config)

    cases.append(
        Case(
            "hf",
            "segformer",
            "hf-segformer-semantic",
            segformer,
            (3, HF_SIDE, HF_SIDE),
            target=DominantClass,
        )
    )
    return cases


def video_cases() -> list[Case]:
    import torchvision.models.video as tvv

    specs = {
        "r3d_18": (3, 8, 64, 64),
        "mc3_18": (3, 8, 64, 64),
        "r2plus1d_18": (3, 8, 64, 64),
        "s3d": (3, 16, 224, 224),
        "mvit_v1_b": (3, 16, 224, 224),
        "mvit_v2_s": (3, 16, 224, 224),
        "swin3d_t": (3, 8, 64, 64),
    }
    return [
        Case(
            "video",
            "torchvision.video",
            name,
            lambda name=name: getattr(tvv, name)(weights=None),
            shape,
        )
        for name, shape in specs.items()
    ]


class DominantClass:
    """camlib.SegmentationTarget of the class that wins most pixels of image 0 (a class that
    wins no pixel scores 0 everywhere, whatever the layer)."""

    def __call__(self, output: object) -> torch.Tensor:
        logits = logits_of(output)
        category = int(logits[0].detach().argmax(0).flatten().mode().values)
        return camlib.SegmentationTarget(category)(output)


def smp_cases() -> list[Case]:
    import segmentation_models_pytorch as smp

    cases = []
    for arch in ("Unet", "FPN", "DeepLabV3Plus"):
        for encoder in ("resnet18", "mobilenet_v2", "efficientnet-b0"):

            def build(arch=arch, encoder=encoder) -> nn.Module:
                return getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=3)

            cases.append(
                Case(
                    "smp",
                    arch,
                    f"{arch}-{encoder}",
                    build,
                    (3, 64, 64),
                    target=DominantClass,
                )
            )
    return cases


def yolo_cases() -> list[Case]:
    def build(cfg: str) -> nn.Module:
        from ultralytics import YOLO

        return YOLO(cfg).model

    def named_layers(model: nn.Module, x: torch.Tensor, notes: dict) -> None:
        """Grad-CAM of one box at each map the Detect head reads, vs the hand reference."""
        head = model.model[-1]
        names = [f"model.{i}" for i in head.f]
        ok = []
        for name in names:
            ex = camlib.GradCAM(model, name)
            target = camlib.targets.YOLOTarget()
            raw = ex(x, target, upsample=False, normalize=False)
            want, _ = hand_gradcam(
                model, ex.layers[0], x, camlib.targets.YOLOTarget(), ("channels_first", 0, ())
            )
            err = float((raw - want).abs().max())
            if not err <= RTOL * float(want.abs().max()) + 1e-7:
                notes["wrong"] = (
                    f"YOLOTarget Grad-CAM at {name} differs from the hand one by {err:.3g}"
                )
                return
            ok.append(name)
        notes["note"] = f"YOLOTarget Grad-CAM at {', '.join(ok)} equals the hand reference"

    return [
        Case(
            "yolo",
            "ultralytics",
            cfg,
            lambda cfg=cfg: build(cfg),
            (3, 64, 64),
            target=lambda: camlib.targets.YOLOTarget(),
            extra=named_layers,
        )
        for cfg in ("yolov8n.yaml", "yolo11n.yaml")
    ]


def monai_cases() -> list[Case]:
    from monai.networks import nets

    def versus_monai(model: nn.Module, x: torch.Tensor, notes: dict) -> None:
        from monai.visualize import GradCAM as MonaiGradCAM

        ex = camlib.GradCAM(model)
        raw = ex(x, upsample=False, normalize=False)
        theirs = MonaiGradCAM(nn_module=model, target_layers=ex.layer_name)
        want = theirs.compute_map(x, class_idx=None)[:, 0].detach()
        err = float((raw - want.detach()).abs().max())
        if not err <= 1e-5 * max(1.0, float(want.abs().max())):
            notes["wrong"] = f"differs from monai.visualize.GradCAM at {ex.layer_name} by {err:.3g}"
        else:
            notes["note"] = (
                f"equals monai.visualize.GradCAM at {ex.layer_name} (max diff {err:.1e})"
            )

    builds = {
        "DenseNet121": lambda: nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=4),
        "ResNet18": lambda: nets.resnet18(spatial_dims=3, n_input_channels=1, num_classes=4),
        "SEResNet50": lambda: nets.SEResNet50(spatial_dims=3, in_channels=1, num_classes=4),
    }
    return [
        Case("monai", "monai.networks.nets", name, build, (1, 64, 64, 64), extra=versus_monai)
        for name, build in builds.items()
    ]


ZOOS = {
    "timm": timm_cases,
    "hf": lambda out: hf_cases(),
    "video": lambda out: video_cases(),
    "smp": lambda out: smp_cases(),
    "yolo": lambda out: yolo_cases(),
    "monai": lambda out: monai_cases(),
}


# -- reporting -----------------------------------------------------------------------------------
OUTCOMES = ("ok", "wrong", "unverified", "no-gradient", "early", "refused", "crash")
COLUMNS = [
    "zoo",
    "family",
    "model",
    "params",
    "input_size",
    "layer",
    "layout",
    "outcome",
    "reason",
    "seconds",
    "ratio",
]


def load_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def write_report(out: Path, rows: list[dict], method_rows: list[dict]) -> None:
    with (out / "zoo.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COLUMNS})
    with (out / "methods.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["zoo", "model", "method", "status", "note"])
        w.writeheader()
        w.writerows(method_rows)
    lines = [
        "# Model-zoo coverage (issue 17)",
        "",
        "`camlib.GradCAM(model)` with nothing else, on random-weight models; checked against "
        "a layout probe and Grad-CAM by hand at the layer camlib reports "
        "(`python benchmarks/zoo.py --out benchmarks/results/zoo`).",
        "",
        "## Summary",
        "",
        "| zoo | models | " + " | ".join(OUTCOMES) + " | median cost ratio |",
        "|---|---:|" + "---:|" * len(OUTCOMES) + "---:|",
    ]
    zoos = sorted({r["zoo"] for r in rows})
    for zoo in [*zoos, "all"]:
        sel = [r for r in rows if zoo == "all" or r["zoo"] == zoo]
        ratios = [
            float(r["ratio"])
            for r in sel
            if r.get("ratio") not in ("", "nan", None) and not math.isnan(float(r["ratio"]))
        ]
        med = f"{statistics.median(ratios):.2f}x" if ratios else "-"
        counts = [sum(r["outcome"] == o for r in sel) for o in OUTCOMES]
        name = "**all**" if zoo == "all" else zoo
        lines.append(f"| {name} | {len(sel)} | " + " | ".join(map(str, counts)) + f" | {med} |")
    lines += [
        "",
        "Cost ratio: camlib's Grad-CAM call (warm: the layer choice is cached) over a "
        "no-grad forward of the same model and input, medians of 3, batch 1, one thread.",
        "",
        "## Not ok",
        "",
        "| zoo | model | outcome | layer | reason |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r["outcome"] != "ok":
            reason = str(r["reason"]).replace("|", "/").replace("\n", " ")[:300]
            lines.append(
                f"| {r['zoo']} | {r['model']} | {r['outcome']} | {r['layer']} | {reason} |"
            )
    if method_rows:
        lines += [
            "",
            "## Other methods (target_layer='auto')",
            "",
            "| method | ok | refused | skipped | failed (crash, non-finite, bad shape) |",
            "|---|---:|---:|---:|---:|",
        ]
        for m in sorted({r["method"] for r in method_rows}):
            sel = [r for r in method_rows if r["method"] == m]
            bad = sum(r["status"] in ("crash", "non-finite", "bad-shape") for r in sel)
            lines.append(
                f"| {m} | {sum(r['status'] == 'ok' for r in sel)} | "
                f"{sum(r['status'] == 'refused' for r in sel)} | "
                f"{sum(r['status'] == 'skipped' for r in sel)} | {bad} |"
            )
    lines += [
        "",
        "## Every model",
        "",
        "| zoo | family | model | params | input | layer | layout | outcome | s | ratio |",
        "|---|---|---|---:|---|---|---|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['zoo']} | {r['family']} | {r['model']} | {r['params']} | {r['input_size']} | "
            f"{r['layer']} | {r['layout']} | {r['outcome']} | {r['seconds']} | {r['ratio']} |"
        )
    (out / "zoo.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "zoo")
    parser.add_argument("--zoo", default="timm,hf,video,smp,yolo,monai")
    parser.add_argument("--limit", type=int, default=None, help="at most N models per zoo")
    parser.add_argument("--models", default="", help="only these model names (comma-separated)")
    parser.add_argument(
        "--methods",
        default="fast",
        choices=("gradcam", "fast", "all"),
        help="fast: the other methods except the perturbation/wrapper ones",
    )
    parser.add_argument(
        "--budget", type=float, default=20.0, help="seconds per model for slow methods"
    )
    parser.add_argument("--resume", action="store_true", help="keep rows already in zoo.csv")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="*",
        default=None,
        help="join the zoo.csv/methods.csv of these result folders into --out (rows of later "
        "folders replace those of earlier ones for the same zoo and model) and rewrite its "
        "report; nothing is run",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.merge is not None:
        merged: dict[tuple[str, str], dict] = {}
        merged_methods: dict[tuple[str, str], list[dict]] = {}
        for folder in [args.out, *args.merge]:
            for r in load_rows(folder / "zoo.csv"):
                merged[(r["zoo"], r["model"])] = r
                merged_methods[(r["zoo"], r["model"])] = []
            for r in load_rows(folder / "methods.csv"):
                merged_methods.setdefault((r["zoo"], r["model"]), []).append(r)
        order = {z: i for i, z in enumerate(ZOOS)}
        keys = sorted(merged, key=lambda k: order.get(k[0], len(order)))
        write_report(
            args.out,
            [merged[k] for k in keys],
            [r for k in keys for r in merged_methods.get(k, [])],
        )
        return 0
    rows = load_rows(args.out / "zoo.csv") if args.resume else []
    method_rows = load_rows(args.out / "methods.csv") if args.resume else []
    done = {(r["zoo"], r["model"]) for r in rows}
    wanted = {m for m in args.models.split(",") if m}
    for zoo in [z for z in args.zoo.split(",") if z]:
        try:
            cases = ZOOS[zoo](args.out)
        except Exception as error:  # noqa: BLE001 - a zoo that cannot build is a result
            rows.append(
                asdict(
                    Row(
                        zoo,
                        "-",
                        f"({zoo} zoo)",
                        outcome="crash",
                        reason=f"{type(error).__name__}: {error}",
                    )
                )
            )
            continue
        if wanted:
            cases = [c for c in cases if c.name in wanted]
        if args.limit:
            cases = cases[: args.limit]
        for case in cases:
            if (case.zoo, case.name) in done:
                continue
            row = check_model(case, methods=args.methods, budget=args.budget)
            print(
                f"{row.zoo:6} {row.model:40} {row.outcome:12} {row.layer:40} {row.seconds:7.1f}s "
                f"{row.ratio} {row.reason[:120]}",
                flush=True,
            )
            record = asdict(row)
            rows = [r for r in rows if (r["zoo"], r["model"]) != (row.zoo, row.model)] + [record]
            method_rows = [r for r in method_rows if (r["zoo"], r["model"]) != (row.zoo, row.model)]
            method_rows += [
                {"zoo": row.zoo, "model": row.model, "method": m, "status": s, "note": n}
                for m, (s, n) in row.methods.items()
            ]
            write_report(args.out, rows, method_rows)
    write_report(args.out, rows, method_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
