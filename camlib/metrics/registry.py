r"""The metric registry: every metric states what it measures and what it needs.

A metric is a subclass of :class:`Metric` registered with :func:`register`. It reads one
batch of explanations from a :class:`MetricContext` and returns one value per image; it
declares, as class attributes, its ``category``, its direction (``higher_is_better``),
what it needs (``needs``) and how many extra forward passes per image it costs
(:meth:`Metric.forwards_per_image`), so that :func:`camlib.evaluate` can plan a run and a
user can read the plan before paying for it::

    @camlib.metrics.register("mass_in_centre")
    class MassInCentre(camlib.metrics.Metric):
        category = "localisation"
        higher_is_better = True

        def __call__(self, ctx):
            h, w = ctx.maps.shape[-2:]
            centre = ctx.maps[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
            return centre.flatten(1).sum(1) / ctx.maps.flatten(1).sum(1)

A plain function works too: ``@register("name", category=..., higher_is_better=...)``
on ``def metric(ctx, **options) -> (N,) tensor``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from ..errors import MetricError

CATEGORIES = ("faithfulness", "localisation", "sanity", "robustness", "complexity", "cost")
"""The categories a metric belongs to, in the order a leaderboard shows them."""

NEEDS = ("model", "boxes", "masks", "explain")
"""What a metric may need beyond the maps: the model (extra forward passes), boxes or
masks (localisation), ``explain`` (re-running the method: sanity, robustness)."""


@dataclass
class MetricContext:
    """One batch of explanations, as a metric sees it.

    Attributes:
        model: the model explained (in the mode the user left it; metrics never change it).
        inputs: (N, C, *size) inputs on the model's device.
        targets: (N,) long, the classes explained.
        maps: (N, *size) maps of one method at the input size, in [0, 1] (larger = more
            important); for a signed method, the channel-summed absolute values.
        explain: ``explain(inputs, targets, model=None) -> (N, *size)`` re-runs the same
            method (same layer, same options; on ``model`` when given, e.g. a randomised
            copy) and returns maps prepared the same way as ``maps``. ``None`` for maps
            that come without a method.
        boxes: (N, 4) long ``x0, y0, x1, y1`` boxes (exclusive upper bounds), or ``None``.
        masks: (N, *size) bool object masks, or ``None``.
        generator: the random generator of the run (seeded), on the CPU.
        seconds: (N,) seconds spent computing each map (measured; cost metrics read it).
        forwards: (N,) forward passes spent on each map (measured).
        method: the method's registered name (or a baseline's name).
    """

    model: nn.Module | None
    inputs: torch.Tensor
    targets: torch.Tensor
    maps: torch.Tensor
    explain: Callable[..., torch.Tensor] | None = None
    boxes: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    generator: torch.Generator | None = None
    seconds: torch.Tensor | None = None
    forwards: torch.Tensor | None = None
    method: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.maps.shape[0])

    def randn_like(self, t: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like ``t``, drawn from the run's generator (CPU),
        then moved to ``t``'s device: the same seed gives the same noise on any device."""
        noise = torch.randn(t.shape, generator=self.generator, dtype=torch.float64)
        return noise.to(device=t.device, dtype=t.dtype)

    def rand(self, *shape: int, device: torch.device | None = None) -> torch.Tensor:
        """Uniform [0, 1) numbers from the run's generator, on ``device``."""
        u = torch.rand(shape, generator=self.generator, dtype=torch.float64)
        return u.to(device=device or self.inputs.device, dtype=torch.float32)


class Metric:
    """Base class of every registered metric.

    Subclasses set the class attributes and implement :meth:`__call__`. Options are
    keyword arguments of ``__init__`` (e.g. ``steps=20``), stored as attributes.
    """

    name: ClassVar[str] = ""
    category: ClassVar[str] = ""
    """One of :data:`CATEGORIES`."""
    higher_is_better: ClassVar[bool] = True
    needs: ClassVar[frozenset[str]] = frozenset()
    """A subset of :data:`NEEDS`."""
    reference: ClassVar[str] = ""
    """The paper, as "Author et al., year"."""

    def __init__(self, **options: Any) -> None:
        if options:
            raise MetricError(
                f"metric {self.name!r} takes no option(s) {', '.join(sorted(options))}"
            )

    def forwards_per_image(self) -> int:
        """Extra forward passes (or forward+backward for ``explain``) the metric runs per
        image beyond the explanation itself; 0 for metrics that read the maps only."""
        return 0

    def __call__(self, ctx: MetricContext) -> torch.Tensor:
        """(N,) values, one per image (NaN where the metric is undefined for an image)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        arrow = "higher" if self.higher_is_better else "lower"
        return f"<metric {self.name!r}: {self.category}, {arrow} is better>"


class _Registry(dict):
    def __getitem__(self, name: str) -> type[Metric]:
        return super().__getitem__(_key(name))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(_key(name))


def _key(name: str) -> str:
    return "".join(c for c in str(name).lower() if c not in "-_ ")


METRICS: dict[str, type[Metric]] = _Registry()
"""Registered metrics by name; names ignore case, ``-``, ``_`` and spaces."""

M = TypeVar("M")


def register(*names: str, **meta: Any) -> Callable[[M], M]:
    """Register a :class:`Metric` subclass (or a function ``fn(ctx, **options)``) by name.

    The first name is the metric's main name, the others aliases. For a function, give its
    ``category`` and ``higher_is_better`` (and ``needs``, ``reference``) as keywords.
    """
    if not names:
        raise MetricError("register() needs at least one name, e.g. @register('mine')")

    def add(obj: M) -> M:
        if isinstance(obj, type) and issubclass(obj, Metric):
            cls = obj
            for k, v in meta.items():
                setattr(cls, k, v)
        elif callable(obj):
            cls = _from_function(obj, names[0], meta)
        else:
            raise MetricError(f"@register({names[0]!r}) decorates Metric subclasses or functions")
        if cls.category not in CATEGORIES:
            raise MetricError(
                f"metric {names[0]!r}: category must be one of {', '.join(CATEGORIES)}, "
                f"got {cls.category!r}"
            )
        bad = set(cls.needs) - set(NEEDS)
        if bad:
            raise MetricError(
                f"metric {names[0]!r}: unknown needs {sorted(bad)}; allowed: {', '.join(NEEDS)}"
            )
        cls.needs = frozenset(cls.needs)
        cls.name = names[0]
        for name in names:
            dict.__setitem__(METRICS, _key(name), cls)
        return obj

    return add


def _from_function(fn: Callable, name: str, meta: dict) -> type[Metric]:
    params = inspect.signature(fn).parameters
    defaults = {k: p.default for k, p in list(params.items())[1:] if p.default is not p.empty}

    def __init__(self, **options: Any) -> None:
        unknown = set(options) - set(defaults)
        if unknown:
            raise MetricError(
                f"metric {name!r} takes no option(s) {', '.join(sorted(unknown))}; "
                f"its options are {', '.join(defaults) or 'none'}"
            )
        self.options = {**defaults, **options}

    def __call__(self, ctx: MetricContext) -> torch.Tensor:
        return fn(ctx, **self.options)

    attrs = {"__init__": __init__, "__call__": __call__, "__doc__": fn.__doc__, **meta}
    return type(fn.__name__, (Metric,), attrs)


def get_metric(name: str | Metric, **options: Any) -> Metric:
    """An instance of the metric registered under ``name`` with ``options``."""
    if isinstance(name, Metric):
        return name
    try:
        cls = METRICS[name]
    except (KeyError, TypeError):
        raise MetricError(
            f"unknown metric {name!r}; available: {', '.join(available_metrics())}"
        ) from None
    return cls(**options)


def available_metrics(category: str | None = None) -> list[str]:
    """Main names of the registered metrics (of one category), sorted."""
    if category is not None and category not in CATEGORIES:
        raise MetricError(f"unknown category {category!r}; one of {', '.join(CATEGORIES)}")
    return sorted({c.name for c in METRICS.values() if category is None or c.category == category})
