r"""Sanity checks: does the map change when the model, or the class explained, does?

| name | paper | similarity | better |
| --- | --- | --- | --- |
| ``randomisation`` | Adebayo et al., 2018 | mean absolute Spearman correlation | lower |
| ``random_logit`` | Sixt et al., 2020 | SSIM | lower |

Both re-run the method through ``ctx.explain`` (``needs = {"model", "explain"}``): the
randomisation test on a randomised deep copy of the model (the user's model is never
touched), the random-logit test for another class. Their randomness (new weights, the
other class) comes from ``ctx.generator``, so a seed reproduces them on any device.
Baseline maps (no method behind them, ``ctx.explain is None``) cannot be re-explained:
the metrics raise :class:`~camlib.errors.MetricError` for them.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Sequence
from itertools import chain

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MetricError, warn
from .registry import Metric, MetricContext, register


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    r"""Rank the entries of each row from 1 (smallest) to M, giving ties their mean rank.

    For a row :math:`v` sorted as :math:`v_{(1)} \le \dots \le v_{(M)}`, a run of tied
    values occupying sorted positions :math:`p..q` gets rank :math:`(p + q) / 2` each
    (the "average" method of ``scipy.stats.rankdata``). Fully batched: ties are found on
    the sorted rows and averaged with one ``scatter_add``.

    Args:
        values: (N, M) tensor (flatten maps with ``maps.flatten(1)``).

    Returns:
        (N, M) float64 ranks.

    Example:
        >>> average_ranks(torch.tensor([[10.0, 30.0, 20.0, 20.0]])).tolist()
        [[1.0, 4.0, 2.5, 2.5]]
    """
    if values.dim() != 2:
        raise ValueError(f"values must be (N, M), got shape {tuple(values.shape)}")
    n, m = values.shape
    sorted_vals, order = values.sort(dim=1, stable=True)
    new_group = torch.ones_like(sorted_vals, dtype=torch.bool)
    new_group[:, 1:] = sorted_vals[:, 1:] != sorted_vals[:, :-1]
    group = new_group.long().cumsum(dim=1) - 1  # 0-based group id within each row
    group = group + torch.arange(n, device=values.device)[:, None] * m  # unique across rows
    position = torch.arange(1, m + 1, device=values.device, dtype=torch.float64).expand(n, m)
    total = torch.zeros(n * m, device=values.device, dtype=torch.float64)
    count = torch.zeros(n * m, device=values.device, dtype=torch.float64)
    total.scatter_add_(0, group.reshape(-1), position.reshape(-1))
    count.scatter_add_(0, group.reshape(-1), torch.ones_like(position).reshape(-1))
    mean_rank = (total / count.clamp_min(1))[group]  # (N, M), in sorted order
    ranks = torch.empty_like(mean_rank)
    ranks.scatter_(1, order, mean_rank)
    return ranks


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r"""Spearman rank correlation between paired maps, one value per image.

    With :math:`r^a, r^b` the average ranks (:func:`average_ranks`) of the M entries of
    :math:`a_n` and :math:`b_n`,

    .. math::
        \rho_n = \frac{\sum_i (r^a_i - \bar r^a)(r^b_i - \bar r^b)}
                      {\sqrt{\sum_i (r^a_i - \bar r^a)^2}\,\sqrt{\sum_i (r^b_i - \bar r^b)^2}}

    i.e. the Pearson correlation of the ranks, which handles ties exactly as
    ``scipy.stats.spearmanr``. :math:`\rho = 1` for any strictly increasing transform of
    the same map, :math:`-1` for a reversed order. Where a map is constant its ranks have
    no spread and :math:`\rho_n` is undefined: it is returned as NaN (use ``nanmean``).

    Used for the model-parameter randomisation test of Adebayo et al. (2018): maps of a
    trained model against maps of the same architecture with re-initialised weights; a
    method that explains the model should give a low :math:`|\rho|`.

    Args:
        a, b: (N, ...) tensors of the same shape; everything after the first dimension
            is one map.

    Returns:
        (N,) float64 tensor in [-1, 1] (NaN for constant maps).
    """
    if a.shape != b.shape:
        raise ValueError(
            f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.dim() < 2:
        raise ValueError(f"expected (N, ...) batches of maps, got shape {tuple(a.shape)}")
    ra = average_ranks(a.flatten(1))
    rb = average_ranks(b.to(a.device).flatten(1))
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    num = (ra * rb).sum(dim=1)
    den = ra.pow(2).sum(dim=1).sqrt() * rb.pow(2).sum(dim=1).sqrt()
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.nan).clamp(-1.0, 1.0)


def ssim(
    a: torch.Tensor, b: torch.Tensor, *, win_size: int = 7, flatten: bool = False
) -> torch.Tensor:
    r"""Structural similarity (Wang et al., 2004) of paired maps, one value per image.

    As ``skimage.metrics.structural_similarity`` with its defaults (a uniform
    ``win_size`` window, sample covariances, :math:`K_1 = 0.01`, :math:`K_2 = 0.03`, the
    mean over windows that fit inside the map) and the data range Quantus uses,
    :math:`L_n = \max(a_n, b_n) - \min(a_n, b_n)` over both maps:

    .. math::
        \mathrm{SSIM}_n = \operatorname*{mean}_w
            \frac{(2\mu_a\mu_b + C_1)(2\sigma_{ab} + C_2)}
                 {(\mu_a^2 + \mu_b^2 + C_1)(\sigma_a^2 + \sigma_b^2 + C_2)},
        \qquad C_1 = (K_1 L_n)^2,\; C_2 = (K_2 L_n)^2

    Two identical constant maps (:math:`L_n = 0`) give 1.

    Args:
        a, b: (N, *size) maps with 1 to 3 spatial dimensions, each at least ``win_size``.
        win_size: odd side of the window.
        flatten: compare the flattened maps as 1-D signals (what Quantus 0.6.0's
            ``RandomLogit`` does) instead of as images.

    Returns:
        (N,) float64 in [-1, 1].
    """
    if a.shape != b.shape:
        raise MetricError(f"ssim: maps of shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
    if win_size < 3 or win_size % 2 == 0:
        raise MetricError(f"ssim: win_size must be an odd int >= 3, got {win_size}")
    x = a.detach().double()
    y = b.detach().to(x.device).double()
    if flatten:
        x, y = x.flatten(1), y.flatten(1)
    nd = x.dim() - 1
    if nd not in (1, 2, 3) or any(s < win_size for s in x.shape[1:]):
        raise MetricError(
            f"ssim compares (N, *size) maps with 1 to 3 spatial dimensions of at least "
            f"win_size={win_size}; got {tuple(x.shape)}"
        )
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
    x, y = x[:, None], y[:, None]

    def mean(t: torch.Tensor) -> torch.Tensor:
        return pool(t, win_size, stride=1)

    dims = tuple(range(1, x.dim()))
    lo = torch.minimum(x.amin(dim=dims), y.amin(dim=dims))
    span = torch.maximum(x.amax(dim=dims), y.amax(dim=dims)) - lo
    c1 = (0.01 * span).pow(2).reshape(-1, *([1] * (x.dim() - 1)))
    c2 = (0.03 * span).pow(2).reshape(-1, *([1] * (x.dim() - 1)))
    npix = win_size**nd
    cov = npix / (npix - 1)
    ux, uy = mean(x), mean(y)
    vx = cov * (mean(x * x) - ux * ux)
    vy = cov * (mean(y * y) - uy * uy)
    vxy = cov * (mean(x * y) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return torch.where(span > 0, s.flatten(1).mean(dim=1), torch.ones_like(span))


SIMILARITIES = ("spearman", "ssim")
"""Similarities the sanity metrics compare maps with."""


def similarity(a: torch.Tensor, b: torch.Tensor, kind: str = "spearman", **options) -> torch.Tensor:
    """(N,) similarity of paired maps: ``"spearman"`` (:func:`rank_correlation`) or
    ``"ssim"`` (:func:`ssim`, ``options`` go to it)."""
    if kind == "spearman":
        return rank_correlation(a, b.to(a.device))
    if kind == "ssim":
        return ssim(a, b, **options)
    raise MetricError(f"unknown similarity {kind!r}; one of {', '.join(SIMILARITIES)}")


def _needs_explain(ctx: MetricContext, metric: str) -> None:
    if ctx.explain is None:
        raise MetricError(
            f"{metric} re-runs the method (ctx.explain), but these maps come without one "
            f"(method {ctx.method!r}, e.g. a baseline)"
        )
    if ctx.model is None:
        raise MetricError(f"{metric} needs the model (ctx.model is None)")
    if ctx.generator is None:
        raise MetricError(
            f"{metric} draws its randomness from ctx.generator (a seeded torch.Generator); "
            f"it is None"
        )


# -- the cascading model-parameter randomisation test ---------------------------------------


def randomisation_cascade(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers the randomisation test re-initialises, output first: every submodule
    with a ``reset_parameters`` method (convolutions, linear layers, norms), in reverse
    registration order, as ``(name, module)`` (the order Quantus 0.6.0's MPRT uses)."""
    layers = [
        (name, m)
        for name, m in model.named_modules()
        if callable(getattr(m, "reset_parameters", None))
    ]
    return layers[::-1]


def _layer_seeds(generator: torch.Generator, n: int) -> list[int]:
    """One seed per cascade layer, drawn from the run's generator (one host read)."""
    return torch.randint(0, 2**62, (n,), generator=generator).tolist()


def reinitialise(module: nn.Module, seed: int) -> None:
    """Re-initialise ``module`` in place with its own ``reset_parameters`` (PyTorch's
    default initialisation; BatchNorm: weight 1, bias 0, fresh running statistics),
    drawing from the CPU generator seeded with ``seed``, whatever the module's device, so
    a seed gives the same weights on CPU and GPU. The global RNG state is left alone."""
    on_cpu = all(t.device.type == "cpu" for t in chain(module.parameters(), module.buffers()))
    fresh = module if on_cpu else copy.deepcopy(module).cpu()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        fresh.reset_parameters()
    if fresh is not module:
        module.load_state_dict(fresh.state_dict())


@register("randomisation", "randomization", "model_randomisation", "mprt")
class Randomisation(Metric):
    r"""Cascading model-parameter randomisation test (Adebayo et al., 2018, "Sanity checks
    for saliency maps"): a map that explains the model should change when the model's
    weights are destroyed.

    On a deep copy of the model, the layers of :func:`randomisation_cascade` (every module
    with ``reset_parameters``, from the output backwards) are re-initialised one more at a
    time; after step :math:`s` the method is re-run for the same classes
    (``ctx.explain(inputs, targets, model=copy)``) and compared with the original map:

    .. math::
        \rho_{n,s} = \mathrm{sim}\big(M_n, M_n^{(s)}\big), \qquad
        \mathrm{score}_n = \frac{1}{S}\sum_{s=1}^{S} |\rho_{n,s}|

    with Spearman's rank correlation as the similarity (``similarity="ssim"`` for SSIM).
    Lower is better: 0 means the maps kept nothing of the trained model's. A randomised
    map that is constant (e.g. an all-zero Grad-CAM map) counts as similarity 0; a constant
    original map gives NaN.

    Args:
        steps: how many points of the cascade to explain at (the cost): ``steps``
            evenly spaced depths :math:`\lceil jL/S \rceil`, :math:`j = 1..S`, always ending
            with the fully randomised model; ``None`` explains after every one of the
            :math:`L` layers (Adebayo et al.'s full cascade).
        similarity: ``"spearman"`` (default) or ``"ssim"``.

    Layer :math:`l` is always re-initialised with the :math:`l`-th seed drawn from
    ``ctx.generator``, so fewer ``steps`` give a subset of the full cascade's values.

    Quantus 0.6.0 (``quantus.MPRT``, ``layer_order="top_down"``) randomises the same layers
    in the same order with the same ``reset_parameters``; with equal seeds its per-layer
    Spearman values equal :meth:`cascade`'s. It reports them signed, and its
    ``return_average_correlation`` also averages in the unrandomised model's similarity
    (≈1).
    """

    category = "sanity"
    higher_is_better = False
    needs = frozenset({"model", "explain"})
    reference = "Adebayo et al., 2018"

    def __init__(self, *, steps: int | None = 5, similarity: str = "spearman") -> None:
        super().__init__()
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, int) or steps < 1
        ):
            raise MetricError(f"randomisation: steps must be an int >= 1 or None, got {steps!r}")
        if similarity not in SIMILARITIES:
            raise MetricError(
                f"randomisation: similarity must be one of {', '.join(SIMILARITIES)}, "
                f"got {similarity!r}"
            )
        self.steps = steps
        self.similarity = similarity
        self._warned: set[int] = set()

    def depths(self, n_layers: int) -> list[int]:
        """How many layers are randomised at each step (increasing, the last is all)."""
        if self.steps is None or self.steps >= n_layers:
            return list(range(1, n_layers + 1))
        return [math.ceil(j * n_layers / self.steps) for j in range(1, self.steps + 1)]

    def forwards_per_image(self, model: nn.Module | None = None) -> int:
        """Re-explanations per image (each costs one run of the method): ``steps``, or
        the number of cascade layers when ``model`` has fewer (or ``steps=None``)."""
        if model is not None:
            return len(self.depths(len(randomisation_cascade(model))))
        if self.steps is None:
            raise MetricError(
                "randomisation with steps=None explains once per layer: pass the model to "
                "forwards_per_image(model) to count them"
            )
        return self.steps

    def cascade(self, ctx: MetricContext) -> tuple[list[str], torch.Tensor]:
        """Run the cascade: the name of the last layer randomised at each step, and the
        (steps, N) float64 similarities to the original maps (signed; NaN where a map is
        constant)."""
        _needs_explain(ctx, self.name)
        try:
            clone = copy.deepcopy(ctx.model)
        except Exception as error:  # noqa: BLE001 - any failure means: cannot copy
            raise MetricError(
                f"randomisation works on a deep copy of the model, and copy.deepcopy failed: "
                f"{error}"
            ) from error
        layers = randomisation_cascade(clone)
        if not layers:
            raise MetricError(
                f"randomisation: {type(ctx.model).__name__} has no submodule with "
                f"reset_parameters (no layer it can re-initialise)"
            )
        self._warn_untouched(clone, layers)
        seeds = _layer_seeds(ctx.generator, len(layers))
        names, sims, done = [], [], 0
        for depth in self.depths(len(layers)):
            for k in range(done, depth):
                reinitialise(layers[k][1], seeds[k])
            done = depth
            maps = ctx.explain(ctx.inputs, ctx.targets, model=clone)
            names.append(layers[depth - 1][0])
            sims.append(similarity(ctx.maps, maps.to(ctx.maps.device), self.similarity))
        return names, torch.stack(sims)

    def __call__(self, ctx: MetricContext) -> torch.Tensor:
        _, sims = self.cascade(ctx)
        flat = ctx.maps.flatten(1)
        informative = (flat.amax(dim=1) > flat.amin(dim=1)).to(sims.device)
        sims = torch.where(sims.isnan() & informative, torch.zeros_like(sims), sims)
        return sims.abs().mean(dim=0)

    def _warn_untouched(self, clone: nn.Module, layers: Sequence[tuple[str, nn.Module]]) -> None:
        covered = {id(p) for _, m in layers for p in m.parameters()}
        untouched = [n for n, p in clone.named_parameters() if id(p) not in covered]
        if untouched and id(type(clone)) not in self._warned:
            self._warned.add(id(type(clone)))
            warn(
                f"randomisation: {len(untouched)} parameter(s) of {type(clone).__name__} belong "
                f"to no module with reset_parameters and stay trained even when the cascade "
                f"is complete: {', '.join(untouched[:5])}{', ...' if len(untouched) > 5 else ''}"
            )


# -- the random-logit test ------------------------------------------------------------------


def _random_offsets(n: int, classes: int, generator: torch.Generator) -> torch.Tensor:
    """(N,) uniform draws from 0..classes-2 (CPU), from the run's generator."""
    return torch.randint(0, classes - 1, (n,), generator=generator)


def other_classes(targets: torch.Tensor, classes: int, generator: torch.Generator) -> torch.Tensor:
    r"""A uniformly random class other than each target, from ``generator``: draw
    :math:`j \in \{0..K-2\}` and skip the target, :math:`c = j + [j \ge t]` (the
    selection Quantus 0.6.0's ``RandomLogit`` makes)."""
    offsets = _random_offsets(targets.shape[0], classes, generator).to(targets.device)
    return offsets + (offsets >= targets).long()


@register("random_logit", "randomlogit")
class RandomLogit(Metric):
    r"""Random-logit test (Sixt et al., 2020, "When explanations lie: why many modified BP
    attributions fail"): the map of the explained class should differ from the map of a
    random other class.

    For each image a class :math:`c_n \ne t_n` is drawn uniformly from ``ctx.generator``
    (:func:`other_classes`; the number of classes :math:`K` is read from the model's output
    unless ``classes`` is given), the method is re-run for it, and

    .. math::
        \mathrm{score}_n = \mathrm{SSIM}\big(M_n^{(t_n)}, M_n^{(c_n)}\big)

    (:func:`ssim`, over the map as an image). Lower is better: a class-insensitive method
    (Guided Backprop, a centred blob) scores near 1.

    Args:
        similarity: ``"ssim"`` (default) or ``"spearman"``.
        flatten: SSIM over the flattened map as a 1-D signal, as Quantus 0.6.0's
            ``RandomLogit`` computes it (``False``: over the map as an image).
        classes: the number of classes :math:`K`; ``None`` reads it from one forward pass
            of one image (once per model).

    Quantus 0.6.0 (``quantus.RandomLogit``) draws the other class the same way (from
    NumPy's seeded RNG); with the same draws, ``flatten=True`` and ``normalise=False`` its
    values equal these. Its default ``normalise=True`` divides every map by the batch's
    largest value, so a map's score depends on the other images in its batch (a no-op on
    camlib's maps, whose maximum is 1).
    """

    category = "sanity"
    higher_is_better = False
    needs = frozenset({"model", "explain"})
    reference = "Sixt et al., 2020"

    def __init__(
        self, *, similarity: str = "ssim", flatten: bool = False, classes: int | None = None
    ) -> None:
        super().__init__()
        if similarity not in SIMILARITIES:
            raise MetricError(
                f"random_logit: similarity must be one of {', '.join(SIMILARITIES)}, "
                f"got {similarity!r}"
            )
        if classes is not None and (not isinstance(classes, int) or classes < 2):
            raise MetricError(f"random_logit: classes must be an int >= 2, got {classes!r}")
        self.similarity = similarity
        self.flatten = bool(flatten)
        self.classes = classes
        self._classes: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()

    def forwards_per_image(self) -> int:
        """One re-explanation per image (plus, when ``classes`` is not given, one forward
        pass of one image per model to read the number of classes)."""
        return 1

    def num_classes(self, ctx: MetricContext) -> int:
        """:math:`K`: the ``classes`` option, or the last dimension of the model's (1, K)
        output for one image (a forward pass without gradients, on a copy when the model
        is in training mode so that no BatchNorm statistic moves; cached per model)."""
        if self.classes is not None:
            return self.classes
        model = ctx.model
        if model in self._classes:
            return self._classes[model]
        probe = copy.deepcopy(model) if model.training else model
        try:
            cuda = [ctx.inputs.device] if ctx.inputs.device.type == "cuda" else []
            with torch.no_grad(), torch.random.fork_rng(devices=cuda):
                out = probe(ctx.inputs[:1])
        except Exception as error:  # noqa: BLE001 - any failure: ask for the option
            raise MetricError(
                f"random_logit reads the number of classes from the model's output, and the "
                f"forward pass failed ({error}); give the option classes=K"
            ) from error
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise MetricError(
                f"random_logit needs (N, K) class scores to pick another class, the model "
                f"returned {got}; give the option classes=K"
            )
        k = int(out.shape[1])
        if k < 2:
            raise MetricError(
                f"random_logit needs at least 2 classes to pick another one; the model has {k}"
            )
        self._classes[model] = k
        return k

    def __call__(self, ctx: MetricContext) -> torch.Tensor:
        _needs_explain(ctx, self.name)
        k = self.num_classes(ctx)
        targets = ctx.targets.to(ctx.maps.device).long()
        bad = (targets < 0) | (targets >= k)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise MetricError(
                f"random_logit: image {i} explains class {int(targets[i])}, outside the "
                f"model's {k} classes 0..{k - 1}"
            )
        other = other_classes(targets, k, ctx.generator)
        maps = ctx.explain(ctx.inputs, other)
        if self.similarity == "ssim":
            return ssim(ctx.maps, maps.to(ctx.maps.device), flatten=self.flatten)
        return similarity(ctx.maps, maps.to(ctx.maps.device), self.similarity)
