"""Complexity metrics (sparseness = Gini index, complexity = entropy) and cost metrics
(ms_per_map, forwards_per_map): hand-computed values, Quantus 0.6.0 agreement, bad input."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import camlib
from camlib.errors import MetricError
from camlib.metrics import MetricContext, complexity, get_metric

from conftest import batch, small


def context(maps, **fields) -> MetricContext:
    n = maps.shape[0]
    return MetricContext(
        model=None,
        inputs=torch.zeros(n, 1, *maps.shape[1:]),
        targets=torch.zeros(n, dtype=torch.long),
        maps=maps,
        **fields,
    )


def test_registered_with_direction_and_no_forward_pass():
    expect = {
        "sparseness": ("complexity", True, "Chalasani et al., 2020"),
        "complexity": ("complexity", False, "Bhatt et al., 2020"),
        "ms_per_map": ("cost", False, "measured"),
        "forwards_per_map": ("cost", False, "measured"),
    }
    for name, (category, higher, reference) in expect.items():
        m = get_metric(name)
        assert (m.category, m.higher_is_better, m.reference) == (category, higher, reference)
        assert m.needs == frozenset() and m.forwards_per_image() == 0
    assert camlib.metrics.available_metrics("complexity") == ["complexity", "sparseness"]
    assert camlib.metrics.available_metrics("cost") == ["forwards_per_map", "ms_per_map"]
    assert type(get_metric("gini")) is type(get_metric("sparseness"))


def test_gini_and_entropy_of_a_4x4_map_by_hand():
    # |M| holds 13 zeros, 1, 1 and 2 (sum 4). Sorted ascending they sit at k = 14, 15, 16
    # of M = 16: G = ((2*14-17)*1 + (2*15-17)*1 + (2*16-17)*2) / (16*4) = 54/64.
    # P = 1/4, 1/4, 1/2: H = -(2 * 1/4 log 1/4 + 1/2 log 1/2) = 1.5 log 2.
    m = torch.tensor(
        [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, -1.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    )
    maps = torch.stack([m, 3 * m, torch.full((4, 4), 0.25), torch.zeros(4, 4)])
    maps[3, 2, 1] = 5.0  # a single non-zero pixel
    gini = get_metric("sparseness")(context(maps)).tolist()
    h = get_metric("complexity")(context(maps)).tolist()
    assert gini == pytest.approx([54 / 64, 54 / 64, 0.0, 1 - 1 / 16], abs=1e-12)
    assert h == pytest.approx([1.5 * math.log(2), 1.5 * math.log(2), math.log(16), 0.0], abs=1e-12)


def test_maps_without_mass_are_nan_and_work_on_any_shape():
    maps = torch.zeros(2, 3, 5, 7)
    maps[0, 1, 2, 3] = 1.0
    assert complexity.gini_index(maps)[0].item() == pytest.approx(1 - 1 / 105)
    assert math.isnan(complexity.gini_index(maps)[1]) and math.isnan(complexity.entropy(maps)[1])
    signal = torch.tensor([[1.0, 1.0, 2.0, 4.0]])  # sorted: k=1..4, sum 8
    assert complexity.gini_index(signal).item() == pytest.approx((-3 - 1 + 2 * 1 + 3 * 4) / 32)
    with pytest.raises(MetricError, match=r"maps must be an \(N, \*size\) tensor, got \(5,\)"):
        complexity.entropy(torch.ones(5))


def _quantus(name: str, maps: torch.Tensor) -> np.ndarray:
    quantus = pytest.importorskip("quantus")
    n = maps.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = getattr(quantus, name)(disable_warnings=True)(
            model=None,
            x_batch=np.zeros((n, 1, *maps.shape[1:]), dtype=np.float32),
            y_batch=np.zeros(n, dtype=np.int64),
            a_batch=maps.double().numpy().copy(),
        )
    return np.asarray(out, dtype=np.float64)


def test_agrees_with_quantus_sparseness_and_complexity():
    """Quantus defaults (abs=True, normalise by the max): on Grad-CAM maps of a random
    ConvNet (4 images, 1x16x16) and on signed random maps."""
    net, x = small(), batch(4, 16)
    maps = camlib.GradCAM(net, "conv2")(x)
    torch.manual_seed(3)
    signed = torch.randn(4, 16, 16)
    for m in (maps, signed):
        ctx = context(m)
        gini = get_metric("sparseness")(ctx).numpy()
        h = get_metric("complexity")(ctx).numpy()
        assert np.abs(gini - _quantus("Sparseness", m)).max() < 1e-5
        assert np.abs(h - _quantus("Complexity", m)).max() < 1e-5
    # Where they differ: Quantus adds 1e-7 to every value before the Gini index (after
    # dividing the batch by its largest value), so a faint map in a batch with a bright one
    # scores lower there, and an all-zero map scores 0 (we: NaN).
    maps = torch.zeros(3, 16, 16)
    maps[0, 3, 4], maps[2, 5, 5] = 1e-5, 1.0
    theirs = _quantus("Sparseness", maps)
    ours = complexity.gini_index(maps).numpy()
    assert ours[0] == ours[2] == pytest.approx(1 - 1 / 256)
    assert theirs[2] == pytest.approx(ours[2], abs=1e-4) and theirs[0] < 0.3
    assert theirs[1] == 0.0 and math.isnan(ours[1])
    assert math.isnan(_quantus("Complexity", maps)[1])


def test_cost_metrics_read_what_the_runner_measured():
    maps = torch.rand(3, 4, 4)
    ctx = context(
        maps,
        seconds=torch.tensor([0.002, 0.004, 0.0105]),
        forwards=torch.tensor([1.0, 1.0, 17.0]),
    )
    assert get_metric("ms_per_map")(ctx).tolist() == pytest.approx([2.0, 4.0, 10.5])
    assert get_metric("forwards_per_map")(ctx).tolist() == [1.0, 1.0, 17.0]
    assert get_metric("forwards_per_map")(ctx).dtype == torch.float64
    with pytest.raises(MetricError, match=r"ms_per_map reads ctx.seconds.*None"):
        get_metric("ms_per_map")(context(maps))
    with pytest.raises(MetricError, match=r"forwards_per_map reads ctx.forwards"):
        get_metric("forwards_per_map")(context(maps, seconds=torch.ones(3)))
    with pytest.raises(MetricError, match=r"one value per image, shape \(3,\), got \(2,\)"):
        get_metric("ms_per_map")(context(maps, seconds=torch.ones(2)))
    with pytest.raises(MetricError, match="takes no option"):
        get_metric("sparseness", eps=1e-7)
