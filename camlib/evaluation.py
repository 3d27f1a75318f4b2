r"""Which map to trust: rank every method on your own model and data.

:func:`evaluate` explains every image with every method (and two baselines), scores each
map with the registered metrics (:mod:`camlib.metrics`) and returns a :class:`Leaderboard`::

    board = camlib.evaluate(model, images, boxes=boxes)
    print(board)                      # one row per method, best first
    board.save("evaluation/")         # leaderboard.csv/.md, per_image.csv, leaderboard.png

How a run goes (one :class:`Evaluator`, batch by batch):

1. **checks, before any forward pass**: inputs, targets (count, integers, not negative),
   boxes ((N, 4) inside the image, ``x0 < x1``, ``y0 < y1``) and masks ((N, *size), 0/1);
   metrics that need boxes or masks when neither is given;
2. **targets**: one no-grad forward pass per batch on the clean input; ``targets=None`` is
   the top class there, shared by every method; given classes are checked against the
   output's size, for every batch, before any explanation;
3. **maps**: each method explains the batch once (timed, its forward passes counted). The
   maps a metric sees are at the input's size, min-max normalised to [0, 1]; a signed method
   (Guided Backprop, Guided Grad-CAM: (N, C, *size) in [-1, 1]) is reduced to
   :math:`\mathrm{minmax}(\sum_c |M_c|)`. Every layer method explains the same layer: the
   one named, or the one ``"auto"`` picks (:func:`camlib.find_target_layer`);
4. **baselines**: ``"random"`` (i.i.d. uniform pixels from the seeded generator) and
   ``"gaussian"`` (a centred blob, :math:`\sigma` a quarter of the shorter side): maps that
   know nothing about the model or the image, the floor every method must clear;
5. **metrics**: each metric reads a :class:`~camlib.metrics.MetricContext` and gives one
   value per image; rows are ``{"image", "method", "class", <metric>: value}``;
6. **leaderboard**: per method and metric, the mean over images (NaN dropped) and a 95 %
   percentile bootstrap interval over images; methods sorted by their mean rank.
"""

from __future__ import annotations

import csv
import inspect
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .base import METHODS, Explainer, available_methods, get_method, not_one_map_per_image
from .errors import InputError, MethodError, MetricError, TargetError, warn
from .inputs import check_inputs
from .layers import LayerSpec, find_target_layer, layer_name
from .maps import normalize_minmax
from .methods.families import ActivationCAM, GradientCAM, PerturbationCAM
from .metrics.registry import CATEGORIES, METRICS, Metric, MetricContext, get_metric
from .metrics.sanity import average_ranks
from .targets import check_targets, class_logits

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = [
    "BASELINES",
    "DEFAULT_METRICS",
    "DEFAULT_OPTIONS",
    "DEFAULT_REEXPLAIN_BUDGET",
    "LOCALISATION_METRICS",
    "RANKING_CATEGORIES",
    "Evaluator",
    "Leaderboard",
    "bootstrap_interval",
    "evaluate",
    "gaussian_blob",
]

BASELINES = ("random", "gaussian")
"""The baseline rows, always last in :attr:`Evaluator.rows_names`."""

DEFAULT_METRICS = (
    "deletion",
    "insertion",
    "average_drop",
    "increase_in_confidence",
    "randomisation",
    "random_logit",
    "max_sensitivity",
    "sparseness",
    "complexity",
    "ms_per_map",
    "forwards_per_map",
)
"""``metrics="default"``: the metrics that need no boxes or masks, those registered. The
sanity and robustness metrics among them (which re-run the method) are kept only while they
cost at most :data:`DEFAULT_REEXPLAIN_BUDGET` re-explanations per image. ROAD and
faithfulness correlation are left to ``metrics="all"`` (tens of forward passes per image)."""

LOCALISATION_METRICS = ("pointing_game", "energy_pointing_game", "relevance_mass", "relevance_rank")
"""Added to ``metrics="default"`` when boxes or masks are given."""

DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {"randomisation": {"steps": 1}}
"""Options ``metrics="default"`` gives its metrics unless ``metric_options`` names them:
the randomisation test re-explains once, on the fully randomised model (the end point of
Adebayo et al.'s cascade), instead of at five depths."""

DEFAULT_REEXPLAIN_BUDGET = 2
"""Most re-explanations per image (``forwards_per_image()`` of a metric that needs
``explain``) a sanity or robustness metric may cost to be in the default set, unless
``metric_options`` names it (``max_sensitivity``, 10 by default, is left out)."""

_REEXPLAIN_CATEGORIES = ("sanity", "robustness")

RANKING_CATEGORIES = ("faithfulness", "localisation")
"""The categories whose metrics order the leaderboard (see :class:`Leaderboard`)."""


def _key(name: str) -> str:
    return "".join(c for c in str(name).lower() if c not in "-_ ")


# -- baselines -------------------------------------------------------------------------------


def gaussian_blob(size: Sequence[int], *, device: torch.device | str | None = None) -> torch.Tensor:
    r"""The ``"gaussian"`` baseline map: a centred isotropic Gaussian, min-max normalised.

    .. math:: G(p) = \exp\Big(-\frac{\sum_d (p_d - c_d)^2}{2\sigma^2}\Big), \quad
              c_d = \frac{s_d - 1}{2}, \quad \sigma = \frac{\min_d s_d}{4}

    over pixel coordinates :math:`p` of a map of size :math:`s` (``(H, W)``, or any number
    of dimensions), then scaled to [0, 1]. It is the classic trap of localisation scores:
    objects sit near the centre of most photos, so a map that ignores the model "points"
    well.

    Returns:
        (*size) float32 tensor.
    """
    size = tuple(int(s) for s in size)
    sigma = min(size) / 4.0
    blob = torch.zeros((), dtype=torch.float64, device=device)
    for d, s in enumerate(size):
        coord = torch.arange(s, dtype=torch.float64, device=device) - (s - 1) / 2.0
        shape = [1] * len(size)
        shape[d] = s
        blob = blob + (coord**2).view(shape)
    blob = torch.exp(-blob / (2.0 * sigma**2))
    return normalize_minmax(blob[None]).to(torch.float32)[0]


def _random_maps(
    n: int, size: tuple[int, ...], generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """``n`` maps of i.i.d. uniform pixels from ``generator`` (CPU), min-max normalised."""
    u = torch.rand((n, *size), generator=generator, dtype=torch.float64)
    return normalize_minmax(u.to(device=device, dtype=torch.float32))


# -- bootstrap -------------------------------------------------------------------------------


def bootstrap_interval(
    values: torch.Tensor,
    *,
    n_boot: int = 1000,
    generator: torch.Generator | None = None,
    level: float = 0.95,
) -> tuple[float, float, float, int]:
    r"""Mean and percentile bootstrap interval of the mean of ``values`` (NaN dropped).

    Draws ``n_boot`` resamples of the :math:`n` finite values with replacement (one
    ``(n_boot, n)`` index tensor from ``generator``), takes each resample's mean
    :math:`\bar x^*_b`, and returns the :math:`(1-\ell)/2` and :math:`(1+\ell)/2` quantiles
    of :math:`\{\bar x^*_b\}` with linear interpolation (``numpy.percentile``'s default)
    (Efron & Tibshirani, 1993, ch. 13).

    Returns:
        ``(mean, lo, hi, n)``; NaNs and ``n = 0`` when no value is finite; ``lo = hi =
        mean`` for a single value.
    """
    x = values.detach().to("cpu", torch.float64).reshape(-1)
    x = x[~torch.isnan(x)]
    n = int(x.numel())
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n == 1:
        return mean, mean, mean, 1
    idx = torch.randint(0, n, (n_boot, n), generator=generator)
    means = x[idx].mean(dim=1)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(means, q).tolist()
    return mean, lo, hi, n


# -- checks ----------------------------------------------------------------------------------


def _shape(x: object) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_boxes(boxes: object, n: int, size: tuple[int, ...], offset: int = 0) -> torch.Tensor:
    """(N, 4) long ``x0, y0, x1, y1`` boxes inside the image (upper bounds exclusive)."""
    if len(size) != 2:
        raise InputError(f"boxes need (N, C, H, W) images; the inputs' positions are {size}")
    h, w = size
    try:
        b = torch.as_tensor(boxes)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(
            f"boxes must be an (N, 4) tensor of x0, y0, x1, y1, got {type(boxes).__name__}"
        ) from None
    if b.dim() != 2 or b.shape[1] != 4 or b.shape[0] != n:
        raise InputError(
            f"boxes must be ({n}, 4): x0, y0, x1, y1 in pixels for each of the {n} images, "
            f"got shape {tuple(b.shape)}"
        )
    if b.dtype == torch.bool or b.is_complex():
        raise InputError(f"boxes must hold pixel coordinates (integers), got dtype {b.dtype}")
    b = b.detach().cpu()
    if b.is_floating_point():
        bad = (~torch.isfinite(b) | (b != b.round())).any(1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise InputError(
                f"box of image {offset + i} is {b[i].tolist()}: coordinates must be whole "
                f"pixels (x0, y0, x1, y1 with exclusive upper bounds)"
            )
    b = b.long()
    x0, y0, x1, y1 = b.unbind(1)
    bad = (x0 < 0) | (y0 < 0) | (x1 > w) | (y1 > h) | (x0 >= x1) | (y0 >= y1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise InputError(
            f"box of image {offset + i} is {b[i].tolist()} for an image of (H, W) = ({h}, {w}): "
            f"need 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h} (pixels, upper bounds exclusive)"
        )
    return b


def _check_masks(masks: object, n: int, size: tuple[int, ...], offset: int = 0) -> torch.Tensor:
    """(N, *size) bool masks from bool or 0/1 values."""
    if not isinstance(masks, torch.Tensor):
        raise InputError(f"masks must be a ({n}, *size) tensor, got {type(masks).__name__}")
    want = (n, *size)
    if tuple(masks.shape) != want:
        hint = " (drop the channel dimension: masks[:, 0])" if masks.dim() == len(want) + 1 else ""
        raise InputError(
            f"masks must be {want}, one mask per image at the input's size, got shape "
            f"{tuple(masks.shape)}{hint}"
        )
    m = masks.detach().cpu()
    if m.dtype != torch.bool:
        if m.is_complex():
            raise InputError(f"masks must be bool or 0/1, got dtype {m.dtype}")
        bad = ((m != 0) & (m != 1)).flatten(1).any(1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            values = m[i].unique()[:5].tolist()
            raise InputError(
                f"mask of image {offset + i} (shape {tuple(m[i].shape)}) holds values {values}: "
                f"masks must be bool or 0/1"
            )
        m = m != 0
    empty = ~m.flatten(1).any(1)
    if bool(empty.any()):
        which = [offset + int(i) for i in empty.nonzero().flatten()]
        warn(f"masks of images {which} are empty: localisation metrics are NaN for them")
    return m


def _check_target_format(targets: object, n: int, offset: int = 0) -> list[int] | None:
    if callable(targets):
        raise TargetError(
            "evaluate ranks explanations of classes: pass None (the top class), an int, N ints "
            "or an (N,) tensor, not a callable target"
        )
    values = check_targets(targets, n)  # type: ignore[arg-type]
    if values is None:
        return None
    for i, v in enumerate(values):
        if v < 0:
            raise TargetError(
                f"target class {v} for image {offset + i} is negative; class indices count from 0"
            )
    return list(values)


# -- method rows -----------------------------------------------------------------------------


@dataclass
class _Row:
    name: str
    cls: type[Explainer] | None  # None for a baseline
    options: dict[str, Any]

    @property
    def baseline(self) -> bool:
        return self.cls is None


def _method_name(cls: type[Explainer]) -> str:
    registered = METHODS.get(cls.name) if cls.name else None
    return cls.name if registered is cls else cls.__name__


def _resolve_methods(methods: object) -> list[tuple[str, type[Explainer]]]:
    if isinstance(methods, str):
        if methods == "all":  # one map per image, explained alone: what the metrics score
            names: list[object] = [
                n for n in available_methods() if not_one_map_per_image(get_method(n)) is None
            ]
        else:
            names = [methods]
    elif isinstance(methods, type):
        names = [methods]
    elif isinstance(methods, Iterable):
        names = list(methods)
    else:
        raise MethodError(
            f"methods must be 'all', a method name, an Explainer class, or a list of these; "
            f"got {type(methods).__name__}"
        )
    out: list[tuple[str, type[Explainer]]] = []
    for m in names:
        if isinstance(m, type) and issubclass(m, Explainer):
            cls = m
        elif isinstance(m, str):
            cls = get_method(m)
        else:
            raise MethodError(
                f"methods lists method names or Explainer classes; got {m!r} ({type(m).__name__})"
            )
        name = _method_name(cls)
        why = not_one_map_per_image(cls)
        if why is not None:  # the metrics score one map per image, batch by batch
            raise MethodError(f"{name} cannot be evaluated: it {why}")
        if _key(name) in {_key(b) for b in BASELINES}:
            raise MethodError(
                f"{name!r} is the name of a baseline row; register the method under another name"
            )
        if any(_key(name) == _key(n) for n, _ in out):
            raise MethodError(f"method {name!r} is listed twice")
        out.append((name, cls))
    if not out:
        raise MethodError("methods is empty; name at least one method (or 'all')")
    return out


def _construct(row: _Row, model: nn.Module, layer: LayerSpec | list) -> Explainer:
    """``row``'s explainer on ``model``; input-only methods get no layer."""
    assert row.cls is not None
    kwargs = dict(row.options)
    if row.cls.uses_layer:
        kwargs["target_layer"] = layer
    try:
        return row.cls(model, **kwargs)
    except TypeError as error:
        if "unexpected keyword argument" not in str(error):
            raise
        raise MethodError(f"{row.name}: {error}; check method_options[{row.name!r}]") from None


def _estimated_forwards(cls: type[Explainer] | None) -> str:
    """The method's own forward passes per image, by family (``plan`` only)."""
    if cls is None:
        return "0"
    if issubclass(cls, PerturbationCAM):
        return "1 + C"
    if issubclass(cls, (GradientCAM, ActivationCAM)) or cls.signed:
        return "1"
    return "?"


def _prepare(maps: torch.Tensor, signed: bool, n: int, size: tuple[int, ...]) -> torch.Tensor:
    """A method's maps as every metric sees them: (N, *size) in [0, 1], float32."""
    maps = maps.detach()
    if signed or maps.dim() == len(size) + 2:
        maps = maps.abs().sum(1)  # signed (N, C, *size) maps: channel-summed magnitude
    if tuple(maps.shape) != (n, *size):
        raise MethodError(
            f"the method returned maps of shape {tuple(maps.shape)}; evaluate needs "
            f"{(n, *size)} (maps at the input's size)"
        )
    return normalize_minmax(maps.float())


class _ForwardCounter:
    """Counts the rows the model's forward sees (a pre-hook, removed on exit)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.rows = model, 0

    def __enter__(self) -> _ForwardCounter:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            first = next(
                (a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None
            )
            self.rows += int(first.shape[0]) if first is not None and first.dim() else 1

        self.handle = self.model.register_forward_pre_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


# -- the evaluator ---------------------------------------------------------------------------


@dataclass
class _Batch:
    inputs: torch.Tensor
    targets: list[int] | None
    boxes: torch.Tensor | None
    masks: torch.Tensor | None
    ids: list
    offset: int


class Evaluator:
    """Plans and runs methods x metrics on batches; stateless across batches except the RNG.

    Args:
        model: the classifier to explain (left exactly as it was: hooks, mode, weights,
            ``requires_grad``, ``.grad``).
        methods: ``"all"`` (every registered method, :func:`camlib.available_methods`), a
            name, an :class:`~camlib.Explainer` subclass, or a list of these.
        metrics: ``"default"`` (:data:`DEFAULT_METRICS` that are registered, plus
            :data:`LOCALISATION_METRICS` when ``boxes`` or ``masks``), ``"all"`` (every
            registered metric whose needs are met), or a list of names, :class:`Metric`
            subclasses or instances.
        layer: the layer every layer method explains (``"auto"``: the one
            :func:`camlib.find_target_layer` picks on the first batch of each input shape);
            input-only methods (Guided Backprop) ignore it.
        seed: seeds the run's random generator: the random baseline's maps, and for each
            batch one seed from which every row's metrics draw the same numbers (the same
            noise, random classes and randomised weights for every method).
        method_options: ``{method name: {option: value}}``, passed to the method's
            constructor (e.g. ``{"scorecam": {"batch_size": 64}}``).
        metric_options: ``{metric name: {option: value}}``, passed to the metric.
        boxes, masks: whether :meth:`score` will get boxes / masks (selects and allows the
            localisation metrics).
        baselines: add the ``"random"`` and ``"gaussian"`` rows.

    Attributes:
        rows_names: method rows in order (methods dropped after raising are removed), the
            baselines last.
        metrics: the :class:`~camlib.metrics.Metric` instances run, in category order.
        dropped: ``{method: error message}`` for methods that raised on this model.
        layer_names: ``{input shape: layer name}`` resolved for ``"auto"``.
    """

    def __init__(
        self,
        model: nn.Module,
        methods: str | Sequence[str | type[Explainer]] | type[Explainer] = "all",
        metrics: str | Sequence[str | Metric | type[Metric]] = "default",
        layer: LayerSpec | Sequence[LayerSpec] = "auto",
        *,
        seed: int = 0,
        method_options: dict[str, dict] | None = None,
        metric_options: dict[str, dict] | None = None,
        boxes: bool = False,
        masks: bool = False,
        baselines: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.has_boxes, self.has_masks = bool(boxes), bool(masks)
        self.layer = self._layer_spec(layer)
        self.layer_names: dict[tuple[int, ...], LayerSpec | list] = {}
        self.dropped: dict[str, str] = {}
        self._rows = self._build_rows(methods, method_options or {}, baselines)
        self.metrics: list[Metric] = self._build_metrics(metrics, metric_options or {})
        self._explainers: dict[tuple[str, str], Explainer] = {}
        if model.training:
            warn(
                f"{type(model).__name__} is in training mode: every forward pass of the "
                "evaluation updates BatchNorm statistics and applies dropout. Call model.eval() "
                "first."
            )

    # -- set-up --------------------------------------------------------------------------
    def _layer_spec(self, layer: object) -> LayerSpec | list:
        """Names, not modules, so that the same layer can be found on a copy of the model."""
        if layer is None or (isinstance(layer, str) and layer == "auto"):
            return "auto"
        specs = list(layer) if isinstance(layer, (list, tuple)) else [layer]
        names = [layer_name(self.model, s) if isinstance(s, nn.Module) else s for s in specs]
        return names if isinstance(layer, (list, tuple)) else names[0]

    def _build_rows(self, methods: object, options: dict, baselines: bool) -> list[_Row]:
        resolved = _resolve_methods(methods)
        by_key = {_key(name): name for name, _ in resolved}
        for key in list(options):
            if _key(key) not in by_key and key in METHODS:  # an alias ("score-cam", "gbp")
                cls = get_method(key)
                by_key.update({_key(key): n for n, c in resolved if c is cls})
            if _key(key) not in by_key:
                raise MethodError(
                    f"method_options names {key!r}, which is not among the methods evaluated "
                    f"({', '.join(n for n, _ in resolved)})"
                )
        rows = []
        for name, cls in resolved:
            opts = {}
            for key, value in options.items():
                if by_key[_key(key)] == name:
                    if not isinstance(value, dict):
                        raise MethodError(
                            f"method_options[{key!r}] must be a dict of options, got "
                            f"{type(value).__name__}"
                        )
                    opts.update(value)
            row = _Row(name, cls, opts)
            try:  # option errors surface now, before any forward pass
                _construct(row, self.model, self.layer)
            except MethodError:
                raise
            except Exception as error:  # noqa: BLE001 - e.g. LeGrad on a CNN: dropped, reported
                self._drop(name, error)
                continue
            rows.append(row)
        if not rows:
            details = "; ".join(f"{k}: {v}" for k, v in self.dropped.items())
            raise MethodError(f"no method applies to this model ({details})")
        if baselines:
            rows += [_Row(b, None, {}) for b in BASELINES]
        return rows

    def _build_metrics(self, metrics: object, options: dict) -> list[Metric]:
        def opts(name: str) -> dict:
            found = {}
            for key, value in options.items():
                if _key(key) == _key(name):
                    if not isinstance(value, dict):
                        raise MetricError(
                            f"metric_options[{key!r}] must be a dict of options, got "
                            f"{type(value).__name__}"
                        )
                    found.update(value)
            return found

        if isinstance(metrics, str) and metrics in ("default", "all"):
            if metrics == "all":
                names = sorted({cls.name for cls in METRICS.values()})
            else:
                names = [n for n in DEFAULT_METRICS if n in METRICS]
                if self.has_boxes or self.has_masks:
                    names += [n for n in LOCALISATION_METRICS if n in METRICS]
            chosen = []
            for name in names:
                given = opts(name)
                if metrics == "default" and not given:
                    metric = get_metric(name, **DEFAULT_OPTIONS.get(name, {}))
                    if (
                        metric.category in _REEXPLAIN_CATEGORIES
                        and "explain" in metric.needs
                        and self._metric_cost(metric) > DEFAULT_REEXPLAIN_BUDGET
                    ):
                        continue
                else:
                    metric = get_metric(name, **given)
                if self._needs_met(metric):
                    chosen.append(metric)
        else:
            items = [metrics] if isinstance(metrics, (str, Metric, type)) else metrics
            if not isinstance(items, Iterable):
                raise MetricError(
                    f"metrics must be 'default', 'all', or a list of metric names or Metric "
                    f"instances; got {type(metrics).__name__}"
                )
            chosen = []
            for item in items:
                if isinstance(item, type) and issubclass(item, Metric):
                    metric = item(**opts(item.name or item.__name__))
                elif isinstance(item, Metric):
                    if opts(item.name or type(item).__name__):
                        raise MetricError(
                            f"metric {item.name!r} is given as an instance and in "
                            f"metric_options; set its options on the instance"
                        )
                    metric = item
                elif isinstance(item, str):
                    metric = get_metric(item, **opts(item))
                else:
                    raise MetricError(
                        f"metrics lists metric names or Metric instances; got {item!r} "
                        f"({type(item).__name__})"
                    )
                if not metric.name:
                    raise MetricError(
                        f"{type(metric).__name__} has no name; register it with "
                        f"@camlib.metrics.register('name')"
                    )
                if not self._needs_met(metric):
                    need = " or ".join(sorted({"boxes", "masks"} & set(metric.needs)))
                    raise MetricError(
                        f"metric {metric.name!r} needs {need}; pass boxes= (N, 4) or masks= "
                        f"(N, H, W) to evaluate, or leave it out"
                    )
                chosen.append(metric)
        if not chosen:
            raise MetricError(
                f"no metric to run (metrics={metrics!r}); registered: "
                f"{', '.join(sorted({c.name for c in METRICS.values()})) or 'none'}"
            )
        seen: set[str] = set()
        for m in chosen:
            if _key(m.name) in seen:
                raise MetricError(f"metric {m.name!r} is listed twice")
            seen.add(_key(m.name))
        known = {_key(m.name) for m in chosen}
        for key in options:
            if _key(key) not in known:
                raise MetricError(
                    f"metric_options names {key!r}, which is not among the metrics evaluated "
                    f"({', '.join(m.name for m in chosen)})"
                )
        order = {c: i for i, c in enumerate(CATEGORIES)}
        return sorted(chosen, key=lambda m: order.get(m.category, len(order)))

    def _needs_met(self, metric: Metric) -> bool:
        """A metric that needs boxes or masks takes either (``needs`` lists alternatives)."""
        if {"boxes", "masks"} & set(metric.needs):
            return self.has_boxes or self.has_masks
        return True

    def _metric_cost(self, metric: Metric) -> int:
        """``metric.forwards_per_image()``, given the model when it takes one (the
        randomisation cascade's length depends on the model)."""
        params = inspect.signature(metric.forwards_per_image).parameters
        return int(metric.forwards_per_image(self.model) if params else metric.forwards_per_image())

    @property
    def rows_names(self) -> list[str]:
        """Method rows in order (without those dropped after raising), the baselines last."""
        return [r.name for r in self._rows if r.name not in self.dropped]

    def _drop(self, name: str, error: BaseException) -> None:
        message = f"{type(error).__name__}: {error}"
        self.dropped[name] = message
        warn(f"evaluate: dropping method {name!r}, which raised on this model: {message}")

    # -- the plan ------------------------------------------------------------------------
    def plan(self, n_images: int) -> str:
        """What a run on ``n_images`` images does: rows, metrics and their cost.

        Costs are forward passes per image: a method's own passes (``1 + C`` for Score-CAM
        and Ablation-CAM: one per channel C of the layer, constant channels skipped by
        Score-CAM), each metric's extra passes per row (:meth:`Metric.forwards_per_image`),
        and the re-explanations of the metrics that re-run a method (each costs what that
        method costs).
        """
        rows = [r for r in self._rows if r.name not in self.dropped]
        methods = [r for r in rows if not r.baseline]
        lines = [
            f"camlib.evaluate: {len(rows)} rows x {len(self.metrics)} metrics on {n_images} images",
            f"layer: {self.layer!r}"
            + (" (camlib.find_target_layer on the first batch)" if self.layer == "auto" else ""),
            "rows (own forward passes per image):",
        ]
        for r in rows:
            opts = ", ".join(f"{k}={v!r}" for k, v in r.options.items())
            kind = "baseline" if r.baseline else _estimated_forwards(r.cls)
            lines.append(f"  {r.name}{f'({opts})' if opts else ''}: {kind}")
        lines.append("metrics (extra cost per image and row):")
        plain = reexplain = 0
        for m in self.metrics:
            k = self._metric_cost(m)
            arrow = "higher" if m.higher_is_better else "lower"
            if "explain" in m.needs:
                cost = f"{k} re-explanation(s)"
                reexplain += k
            else:
                cost = f"{k} forward pass(es)"
                plain += k
            needs = f", needs {', '.join(sorted(m.needs))}" if m.needs else ""
            lines.append(f"  {m.name}: {m.category}, {arrow} is better, {cost}{needs}")
        total = (len(rows) * plain + len(methods)) * n_images
        lines.append(
            f"per image: {len(rows) * plain} metric forward passes + {len(methods)} method "
            f"calls + {reexplain * len(methods)} re-explanations; at least {total} forward "
            f"passes for {n_images} images (perturbation methods and re-explanations add more)"
        )
        return "\n".join(lines)

    # -- checks and targets ----------------------------------------------------------------
    def _check(
        self,
        inputs: object,
        targets: object,
        boxes: object,
        masks: object,
        image_ids: Sequence | None,
        offset: int = 0,
    ) -> _Batch:
        """Every check that needs no forward pass; inputs moved to the model's device."""
        x = check_inputs(self.model, inputs)
        n, size = x.shape[0], tuple(x.shape[2:])
        t = _check_target_format(targets, n, offset)
        needs = {need for m in self.metrics for need in m.needs} & {"boxes", "masks"}
        if needs and boxes is None and masks is None:
            names = [m.name for m in self.metrics if {"boxes", "masks"} & set(m.needs)]
            raise MetricError(
                f"metrics {', '.join(names)} need boxes or masks; pass boxes= (N, 4) or masks= "
                f"(N, *size) to score"
            )
        b = None if boxes is None else _check_boxes(boxes, n, size, offset)
        m = None if masks is None else _check_masks(masks, n, size, offset)
        ids = list(range(offset, offset + n)) if image_ids is None else list(image_ids)
        if len(ids) != n:
            raise InputError(f"got {len(ids)} image_ids for {n} images")
        return _Batch(x, t, b, m, ids, offset)

    def _classes(self, batch: _Batch) -> torch.Tensor:
        """The (N,) classes to explain: the top class on the clean input, or the given
        ones checked against the model's output size (one no-grad forward pass)."""
        x = batch.inputs
        with torch.no_grad():
            logits = class_logits(self.model(x), x.shape[0])
        k = logits.shape[1]
        if batch.targets is None:
            return (logits[:, 0] > 0).long() if k == 1 else logits.argmax(dim=1)
        valid = 2 if k == 1 else k
        for i, c in enumerate(batch.targets):
            if c >= valid:
                what = (
                    "a one-logit binary head (classes 0 and 1)"
                    if k == 1
                    else f"a model with {k} outputs (classes 0..{k - 1})"
                )
                raise TargetError(
                    f"target class {c} for image {batch.offset + i} is out of range for {what}"
                )
        return torch.tensor(batch.targets, dtype=torch.long, device=x.device)

    # -- running -------------------------------------------------------------------------
    def _layer_for(self, x: torch.Tensor) -> LayerSpec | list:
        if self.layer != "auto":
            return self.layer
        key = tuple(x.shape[1:])
        if key not in self.layer_names:
            self.layer_names[key] = find_target_layer(self.model, x)
        return self.layer_names[key]

    def _explainer(self, row: _Row, model: nn.Module, layer: LayerSpec | list) -> Explainer:
        if model is not self.model:  # a copy (randomised model): built per call, not kept
            return _construct(row, model, layer)
        key = (row.name, repr(layer))
        if key not in self._explainers:
            self._explainers[key] = _construct(row, model, layer)
        return self._explainers[key]

    def _reexplain(self, row: _Row, layer: LayerSpec | list) -> Callable[..., torch.Tensor]:
        """``ctx.explain`` of a row. Baselines ignore the model and the targets: ``"random"``
        draws fresh uniform maps from the run's generator, ``"gaussian"`` returns its blob."""

        def size_of(x: torch.Tensor) -> tuple[int, ...]:
            return tuple(x.shape[2:])

        if row.name == "random":

            def explain(inputs, targets=None, model=None):
                return _random_maps(inputs.shape[0], size_of(inputs), self.generator, inputs.device)

        elif row.name == "gaussian":

            def explain(inputs, targets=None, model=None):
                blob = gaussian_blob(size_of(inputs), device=inputs.device)
                return blob.expand(inputs.shape[0], *blob.shape).clone()

        else:

            def explain(inputs, targets=None, model=None):
                ex = self._explainer(row, self.model if model is None else model, layer)
                maps = ex(inputs, targets=targets)
                return _prepare(maps, ex.signed, inputs.shape[0], size_of(inputs))

        return explain

    def score(
        self,
        inputs: torch.Tensor,
        targets: object = None,
        boxes: object = None,
        masks: object = None,
        *,
        image_ids: Sequence | None = None,
        return_maps: bool = False,
    ) -> list[dict] | tuple[list[dict], dict[str, torch.Tensor]]:
        """Explain one batch with every row and score every map with every metric.

        Boxes, masks and targets are checked before any forward pass; given classes are
        checked against the output's size after the one clean forward pass, before any
        explanation. A method that raises is dropped (with a warning) from this and every
        later batch.

        Args:
            inputs: (N, C, *size) batch (moved to the model's device).
            targets: ``None`` (top class), an int, N ints or an (N,) integer tensor.
            boxes: (N, 4) ``x0, y0, x1, y1`` (pixels, upper bounds exclusive).
            masks: (N, *size) bool or 0/1 object masks.
            image_ids: one id per image for the rows (default ``0..N-1``).
            return_maps: also return ``{row: (N, *size) maps on the CPU}``.

        Returns:
            One row per (image, method): ``{"image", "method", "class", <metric>: float}``
            (and the maps with ``return_maps``).
        """
        batch = self._check(inputs, targets, boxes, masks, image_ids)
        classes = self._classes(batch)
        return self._run(batch, classes, return_maps)

    def _run(
        self, batch: _Batch, classes: torch.Tensor, return_maps: bool = False
    ) -> list[dict] | tuple[list[dict], dict[str, torch.Tensor]]:
        x = batch.inputs
        n, size, device = x.shape[0], tuple(x.shape[2:]), x.device
        boxes = None if batch.boxes is None else batch.boxes.to(device)
        masks = None if batch.masks is None else batch.masks.to(device)
        layer = self._layer_for(x) if any(r.cls and r.cls.uses_layer for r in self._rows) else None
        acc = _acc_dtype(device)
        # common random numbers: every row of this batch gets a generator in the same state
        # (the same noise, random classes, randomised weights); the random baseline's maps
        # come from the run's own generator
        common = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        classes_list = classes.tolist()
        rows: list[dict] = []
        kept: dict[str, torch.Tensor] = {}
        for row in list(self._rows):
            if row.name in self.dropped:
                continue
            if row.baseline:
                _sync(device)
                t0 = time.perf_counter()
                maps = self._reexplain(row, layer)(x)
                _sync(device)
                seconds, forwards = time.perf_counter() - t0, 0
            else:
                try:
                    ex = self._explainer(row, self.model, layer)
                    with _ForwardCounter(self.model) as counter:
                        _sync(device)
                        t0 = time.perf_counter()
                        raw = ex(x, targets=classes)
                        _sync(device)
                        seconds = time.perf_counter() - t0
                    maps = _prepare(raw, ex.signed, n, size)
                    forwards = counter.rows
                except Exception as error:  # noqa: BLE001 - reported, the method is dropped
                    self._drop(row.name, error)
                    continue
            ctx = MetricContext(
                model=self.model,
                inputs=x,
                targets=classes,
                maps=maps,
                explain=self._reexplain(row, layer),
                boxes=boxes,
                masks=masks,
                generator=torch.Generator().manual_seed(common),
                seconds=torch.full((n,), seconds / n, dtype=acc, device=device),
                forwards=torch.full((n,), forwards / n, dtype=acc, device=device),
                method=row.name,
            )
            values = []
            for metric in self.metrics:
                try:
                    v = metric(ctx)
                except MetricError:
                    raise
                except Exception as error:
                    raise MetricError(
                        f"metric {metric.name!r} failed on the maps of {row.name!r}: "
                        f"{type(error).__name__}: {error}"
                    ) from error
                if not isinstance(v, torch.Tensor) or v.numel() != n:
                    raise MetricError(
                        f"metric {metric.name!r} returned {_shape(v)} for {n} images; a metric "
                        f"returns one value per image, an ({n},) tensor"
                    )
                values.append(v.detach().reshape(n).to(device=device, dtype=acc))
            table = torch.stack(values, 1).cpu().tolist() if values else [[] for _ in range(n)]
            for i in range(n):
                r = {"image": batch.ids[i], "method": row.name, "class": classes_list[i]}
                r.update({m.name: float(v) for m, v in zip(self.metrics, table[i], strict=True)})
                rows.append(r)
            if return_maps:
                kept[row.name] = maps.detach().cpu()
        methods_left = [r for r in self._rows if not r.baseline and r.name not in self.dropped]
        if not methods_left:
            details = "; ".join(f"{k}: {v}" for k, v in self.dropped.items())
            raise MethodError(f"every method raised on this model ({details})")
        return (rows, kept) if return_maps else rows


# -- the leaderboard -------------------------------------------------------------------------


def _decimals(values: Iterable[float]) -> int:
    finite = [abs(v) for v in values if math.isfinite(v)]
    top = max(finite, default=0.0)
    return 3 if top < 10 else 2 if top < 100 else 1 if top < 1000 else 0


def _ranking(metrics: Sequence[Metric]) -> list[Metric]:
    """The metrics whose ranks order the leaderboard (see :class:`Leaderboard`)."""
    return (
        [m for m in metrics if m.category in RANKING_CATEGORIES]
        or [m for m in metrics if m.category != "cost"]
        or list(metrics)
    )


def _order_note(metrics: Sequence[Metric]) -> str:
    ranked = _ranking(metrics)
    shown = [m.name for m in metrics if m not in ranked]
    note = f"sorted by mean rank over {', '.join(m.name for m in ranked)}"
    return note + (f" ({', '.join(shown)}: shown, not ranked)" if shown else "")


def _wrap_header(name: str, arrow: str, width: int) -> tuple[str, str]:
    """A column header as two lines, ``name + arrow`` split after an underscore when it is
    wider than the column's cells (``"increase_in_"``, ``"confidence ↑"``)."""
    if len(name) + len(arrow) <= width or "_" not in name:
        return "", name + arrow
    cuts = [i + 1 for i, c in enumerate(name) if c == "_"]
    i = min(cuts, key=lambda i: max(i, len(name) - i + len(arrow)))
    return name[:i], name[i:] + arrow


class Leaderboard:
    """Methods ranked by every metric: means, 95 % bootstrap intervals, per-image rows.

    **Order**: each ranking metric (:data:`RANKING_CATEGORIES`: faithfulness and
    localisation) ranks the rows by their mean, in the metric's direction (1 = best, ties
    share the mean rank; a row without a value for that metric is left out of it); rows are
    sorted by the mean of their ranks (ties keep the run's order). The other categories are
    shown, not ranked: a map that ignores the model wins them (the random baseline passes
    every sanity check, the Gaussian blob is perfectly robust), complexity is a preference
    rather than correctness, and a map is not more trustworthy for being cheap. Without a
    faithfulness or localisation metric, every non-cost metric ranks (every metric, if
    only cost is measured).

    Attributes:
        per_image: the rows, one per (image, method).
        summary: per row, best first: ``{"method", "baseline", "mean_rank",
            "<metric>": mean, "<metric>_lo", "<metric>_hi", "<metric>_n"}``.
        metrics: the metrics, in column order.
        dropped: ``{method: error}`` for methods dropped from the run.
    """

    def __init__(
        self,
        per_image: list[dict],
        summary: list[dict],
        metrics: list[Metric],
        *,
        n_boot: int = 1000,
        seed: int = 0,
    ) -> None:
        self.per_image, self.summary, self.metrics = per_image, summary, list(metrics)
        self.n_boot, self.seed = n_boot, seed
        self.dropped: dict[str, str] = {}

    @classmethod
    def from_rows(
        cls, rows: list[dict], metrics: list[Metric], *, seed: int = 0, n_boot: int = 1000
    ) -> Leaderboard:
        """Summarise per-image rows: the mean over images of each (method, metric), NaN
        dropped (``_n`` counts the values kept), and its 95 % percentile bootstrap interval
        (:func:`bootstrap_interval`, ``n_boot`` resamples of the images). Every cell is
        resampled by a generator seeded with ``seed``, so methods with the same images
        share the same resamples (a paired bootstrap)."""
        if n_boot < 1:
            raise MetricError(f"n_boot must be a positive int, got {n_boot!r}")
        names: list[str] = []
        for r in rows:
            if r["method"] not in names:
                names.append(r["method"])
        summary = []
        for name in names:
            mine = [r for r in rows if r["method"] == name]
            entry: dict[str, Any] = {"method": name, "baseline": name in BASELINES}
            for m in metrics:
                vals = torch.tensor(
                    [float(r.get(m.name, math.nan)) for r in mine], dtype=torch.float64
                )
                g = torch.Generator().manual_seed(int(seed))
                mean, lo, hi, n = bootstrap_interval(vals, n_boot=n_boot, generator=g)
                entry.update({m.name: mean, f"{m.name}_lo": lo, f"{m.name}_hi": hi})
                entry[f"{m.name}_n"] = n
            summary.append(entry)
        ranked = _ranking(metrics)
        ranks = torch.full((len(summary), max(len(ranked), 1)), math.nan, dtype=torch.float64)
        for j, m in enumerate(ranked):
            means = torch.tensor([e[m.name] for e in summary], dtype=torch.float64)
            ok = ~torch.isnan(means)
            if ok.any():
                signed = means[ok] if not m.higher_is_better else -means[ok]
                ranks[ok, j] = average_ranks(signed[None])[0]
        mean_rank = ranks.nanmean(1) if len(ranked) else ranks[:, 0]
        for e, r in zip(summary, mean_rank.tolist(), strict=True):
            e["mean_rank"] = r
        order = sorted(
            range(len(summary)),
            key=lambda i: (
                math.inf if math.isnan(summary[i]["mean_rank"]) else summary[i]["mean_rank"],
                i,
            ),
        )
        summary = [summary[i] for i in order]
        return cls(list(rows), summary, metrics, n_boot=n_boot, seed=seed)

    # -- reading -------------------------------------------------------------------------
    @property
    def methods(self) -> list[str]:
        """Row names, best first."""
        return [e["method"] for e in self.summary]

    def _metric(self, name: str) -> Metric:
        for m in self.metrics:
            if _key(m.name) == _key(name):
                return m
        raise MetricError(
            f"no metric {name!r} in this leaderboard; it has "
            f"{', '.join(m.name for m in self.metrics)}"
        )

    def _best(self, m: Metric) -> float:
        means = [e[m.name] for e in self.summary if math.isfinite(e[m.name])]
        if not means:
            return math.nan
        return max(means) if m.higher_is_better else min(means)

    def best_worst(self, method: str, metric: str, k: int = 3) -> tuple[list, list]:
        """Image ids where ``method`` scores best and worst on ``metric`` (``k`` each, best
        first and worst first, in the metric's direction; NaN values left out)."""
        m = self._metric(metric)
        if method not in self.methods:
            raise MethodError(f"no row {method!r}; rows: {', '.join(self.methods)}")
        pairs = [
            (float(r[m.name]), r["image"])
            for r in self.per_image
            if r["method"] == method and not math.isnan(float(r.get(m.name, math.nan)))
        ]
        good = sorted(pairs, key=lambda p: -p[0] if m.higher_is_better else p[0])
        best = [i for _, i in good[:k]]
        worst = [i for _, i in reversed(good[len(good) - k :])] if k > 0 else []
        return best, worst

    # -- formats -------------------------------------------------------------------------
    def _header(self, m: Metric) -> str:
        return f"{m.name} {'↑' if m.higher_is_better else '↓'}"

    def __str__(self) -> str:
        decimals = {m.name: _decimals(e[m.name] for e in self.summary) for m in self.metrics}
        body = []
        for i, e in enumerate(self.summary, start=1):
            n = max((e[f"{m.name}_n"] for m in self.metrics), default=0)
            cells = [str(i), e["method"] + (" (baseline)" if e["baseline"] else ""), str(n)]
            cells.append("-" if math.isnan(e["mean_rank"]) else f"{e['mean_rank']:.2f}")
            for m in self.metrics:
                mean, d = e[m.name], decimals[m.name]
                if math.isnan(mean):
                    cells.append("-")
                    continue
                half = (e[f"{m.name}_hi"] - e[f"{m.name}_lo"]) / 2
                star = "*" if mean == self._best(m) else " "
                cells.append(f"{mean:.{d}f} ±{half:.{d}f}{star}")
            body.append(cells)
        # headers on two lines: a long metric name wraps at an underscore
        top, bottom = ["", "", "", "mean"], ["#", "method", "n", "rank"]
        for j, m in enumerate(self.metrics, start=4):
            cell = max(len(r[j]) for r in body) if body else 0
            a, b = _wrap_header(m.name, self._header(m)[len(m.name) :], cell)
            top.append(a)
            bottom.append(b)
        widths = [max(len(r[j]) for r in [top, bottom, *body]) for j in range(len(bottom))]
        left = {1}

        def line(cells: list[str]) -> str:
            return "  ".join(
                c.ljust(w) if j in left else c.rjust(w)
                for j, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        rule = "-" * max(len(line(top)), len(line(bottom)))
        notes = [
            f"mean over images ± half the 95% bootstrap interval ({self.n_boot} resamples); "
            f"* best in column; ↑/↓ higher/lower is better",
            _order_note(self.metrics),
        ]
        if self.dropped:
            notes.append("dropped (raised on this model): " + ", ".join(self.dropped))
        return "\n".join([line(top), line(bottom), rule, *(line(r) for r in body), rule, *notes])

    def __repr__(self) -> str:
        return f"<Leaderboard: {len(self.summary)} rows x {len(self.metrics)} metrics>"

    def to_markdown(self) -> str:
        """The summary as a Markdown table: ``mean [lo, hi]`` cells, the best in bold."""
        decimals = {m.name: _decimals(e[m.name] for e in self.summary) for m in self.metrics}
        head = ["#", "method", "mean rank", *(self._header(m) for m in self.metrics)]
        lines = [
            "| " + " | ".join(head) + " |",
            "|" + "|".join(["---:", ":---", "---:"] + ["---:"] * len(self.metrics)) + "|",
        ]
        for i, e in enumerate(self.summary, start=1):
            cells = [str(i), e["method"] + (" *(baseline)*" if e["baseline"] else "")]
            cells.append("-" if math.isnan(e["mean_rank"]) else f"{e['mean_rank']:.2f}")
            for m in self.metrics:
                mean, d = e[m.name], decimals[m.name]
                if math.isnan(mean):
                    cells.append("-")
                    continue
                text = f"{mean:.{d}f} [{e[f'{m.name}_lo']:.{d}f}, {e[f'{m.name}_hi']:.{d}f}]"
                cells.append(f"**{text}**" if mean == self._best(m) else text)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(
            "Mean over images [95% percentile bootstrap interval]; best per column in bold; "
            f"↑/↓: higher/lower is better; {_order_note(self.metrics)}."
        )
        return "\n".join(lines) + "\n"

    def to_csv(self, path: str | Path) -> None:
        """The summary, one line per row (best first): mean, lo, hi and n per metric."""
        fields = ["rank", "method", "baseline", "mean_rank"]
        for m in self.metrics:
            fields += [m.name, f"{m.name}_lo", f"{m.name}_hi", f"{m.name}_n"]
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            for i, e in enumerate(self.summary, start=1):
                writer.writerow({"rank": i, **e})

    def per_image_to_csv(self, path: str | Path) -> None:
        """The per-image rows: image, method, class and one column per metric."""
        fields = ["image", "method", "class", *(m.name for m in self.metrics)]
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.per_image)

    def plot(self) -> Figure:
        """One panel per metric: rows sorted best-first (top), the mean as a dot with its
        95 % interval as an error bar, baselines in grey."""
        from matplotlib.figure import Figure

        k = len(self.metrics)
        cols = min(3, k)
        rows = math.ceil(k / cols)
        height = max(2.2, 0.32 * len(self.summary) + 1.0)
        fig = Figure(figsize=(4.2 * cols, height * rows), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).flatten()
        for ax, m in zip(axes, self.metrics, strict=False):
            entries = [e for e in self.summary if math.isfinite(e[m.name])]
            entries.sort(key=lambda e: -e[m.name] if m.higher_is_better else e[m.name])
            for y, e in enumerate(entries):
                mean, lo, hi = e[m.name], e[f"{m.name}_lo"], e[f"{m.name}_hi"]
                color = "0.55" if e["baseline"] else "C0"
                ax.errorbar(
                    [mean], [y], xerr=[[mean - lo], [hi - mean]], fmt="o", color=color, capsize=3
                )
            ax.set_yticks(range(len(entries)), [e["method"] for e in entries])
            ax.invert_yaxis()
            better = "↑ higher" if m.higher_is_better else "↓ lower"
            ax.set_title(f"{m.name} ({better} is better)")
            ax.grid(axis="x", alpha=0.3)
        for ax in axes[k:]:
            ax.set_visible(False)
        return fig

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write ``leaderboard.csv``, ``leaderboard.md``, ``per_image.csv`` and
        ``leaderboard.png`` into ``directory`` (created if needed); returns their paths."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "csv": out / "leaderboard.csv",
            "markdown": out / "leaderboard.md",
            "per_image": out / "per_image.csv",
            "figure": out / "leaderboard.png",
        }
        self.to_csv(paths["csv"])
        paths["markdown"].write_text(self.to_markdown(), encoding="utf-8")
        self.per_image_to_csv(paths["per_image"])
        self.plot().savefig(paths["figure"], dpi=120)
        return paths


# -- the one call ------------------------------------------------------------------------------


def evaluate(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: object = None,
    methods: str | Sequence[str | type[Explainer]] | type[Explainer] = "all",
    metrics: str | Sequence[str | Metric | type[Metric]] = "default",
    layer: LayerSpec | Sequence[LayerSpec] = "auto",
    boxes: object = None,
    masks: object = None,
    *,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool | None = None,
    method_options: dict[str, dict] | None = None,
    metric_options: dict[str, dict] | None = None,
    baselines: bool = True,
    n_boot: int = 1000,
) -> Leaderboard:
    """Rank every method on ``model`` and ``inputs``: ``print(camlib.evaluate(model, x))``.

    Everything is checked first (inputs, target format, boxes, masks, metric needs: before
    any forward pass; given classes against the output size: after one clean forward pass
    per batch, before any explanation); then each batch of ``batch_size`` images is
    explained by every method and baseline and scored by every metric (:class:`Evaluator`),
    on the model's device, with a progress bar. Same ``seed``, same leaderboard (the
    measured times aside).

    Args:
        model: the classifier (left exactly as it was).
        inputs: (N, C, *size) tensor.
        targets: ``None`` (each image's top class on the clean input, shared by every
            method), an int, N ints or an (N,) integer tensor.
        methods, metrics, layer, method_options, metric_options, baselines: see
            :class:`Evaluator`.
        boxes: (N, 4) ``x0, y0, x1, y1`` per image (pixels, upper bounds exclusive), for
            the localisation metrics (their masks are the filled boxes).
        masks: (N, *size) bool or 0/1 object masks (their boxes are the tight boxes).
        batch_size: images per batch.
        seed: seeds the random baseline, the metrics' noise and the bootstrap.
        progress: show a tqdm bar (``None``: only when stderr is a terminal).
        n_boot: bootstrap resamples per interval.

    Returns:
        A :class:`Leaderboard`.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    ev = Evaluator(
        model,
        methods,
        metrics,
        layer,
        seed=seed,
        method_options=method_options,
        metric_options=metric_options,
        boxes=boxes is not None,
        masks=masks is not None,
        baselines=baselines,
    )
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 3 or inputs.shape[0] == 0:
        check_inputs(model, inputs)  # the usual explicit error
        raise InputError(f"inputs must be an (N, C, *size) batch, got shape {_shape(inputs)}")
    n, size = inputs.shape[0], tuple(inputs.shape[2:])
    # 1. every check that needs no forward pass, on the whole set
    t_all = _check_target_format(targets, n)
    b_all = None if boxes is None else _check_boxes(boxes, n, size)
    m_all = None if masks is None else _check_masks(masks, n, size)
    spans = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]

    def batch_of(s: int, e: int) -> _Batch:
        return ev._check(
            inputs[s:e],
            None if t_all is None else t_all[s:e],
            None if b_all is None else b_all[s:e],
            None if m_all is None else m_all[s:e],
            None,
            offset=s,
        )

    # 2. the classes of every batch (one clean forward each), before any explanation
    classes = [ev._classes(batch_of(s, e)).cpu() for s, e in spans]
    # 3. explanations and metrics
    if progress is None:
        progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    from tqdm.auto import tqdm

    rows: list[dict] = []
    with tqdm(total=n, unit="img", desc="evaluate", disable=not progress) as bar:
        for (s, e), c in zip(spans, classes, strict=True):
            batch = batch_of(s, e)
            rows += ev._run(batch, c.to(batch.inputs.device))  # type: ignore[operator]
            bar.update(e - s)
    rows = [r for r in rows if r["method"] not in ev.dropped]
    board = Leaderboard.from_rows(rows, ev.metrics, seed=seed, n_boot=n_boot)
    board.dropped = dict(ev.dropped)
    return board
