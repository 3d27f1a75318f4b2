"""Robustness metrics: max-sensitivity by hand, batched re-explanation, bad input, and
agreement with quantus.MaxSensitivity on identical perturbations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import camlib
from camlib.errors import MetricError
from camlib.metrics import MetricContext, get_metric
from camlib.metrics.robustness import max_sensitivity

from conftest import SmallConvNet, left_alone


def ctx_of(model, x, maps, targets, explain, seed: int = 0) -> MetricContext:
    t = torch.as_tensor(targets).expand(x.shape[0]).long()
    g = torch.Generator().manual_seed(seed)
    return MetricContext(model=model, inputs=x, targets=t, maps=maps, explain=explain, generator=g)


class Recorder:
    """explain(x, t) = the first channel of x (+ t as an offset), recording each call's size."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, model=None) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return x[:, 0] + t.to(x.dtype)[:, None, None]


def test_registered_metadata():
    metric = get_metric("max_sensitivity")
    assert metric.category == "robustness" and metric.needs == {"explain"}
    assert metric.higher_is_better is False and metric.reference == "Yeh et al., 2019"
    assert metric.forwards_per_image() == 10
    assert get_metric("max_sensitivity", samples=3).forwards_per_image() == 3
    with pytest.raises(MetricError, match="no option"):
        get_metric("max_sensitivity", steps=3)
    with pytest.raises(MetricError, match="radius"):
        get_metric("max_sensitivity", radius=0.0)


def test_max_sensitivity_by_hand():
    # explain = first channel (+ target): e(x + d) - e(x) = d[:, 0]; the target follows along
    x = torch.arange(1.0, 2 * 2 * 3 * 3 + 1, dtype=torch.float64).view(2, 2, 3, 3)
    targets = torch.tensor([0, 5])
    maps = x[:, 0] + targets.double()[:, None, None]
    noise = torch.zeros(3, 2, 2, 3, 3, dtype=torch.float64)
    noise[0, 0, 0, 0, 0] = 0.3  # sample 0: image 0 moves by 0.3 in one pixel
    noise[1, 0, 0, 1, :] = 0.1  # sample 1: 3 pixels by 0.1 -> norm 0.1 * sqrt(3) < 0.3
    noise[2, 1, 0] = -0.2  # sample 2: all 9 pixels of image 1 -> 0.6
    noise[:, :, 1] = 5.0  # the second channel is not in the map: no effect
    rec = Recorder()
    got = max_sensitivity(rec, x, targets, maps, noise=noise)
    want = torch.tensor([0.3 / maps[0].norm(), 0.6 / maps[1].norm()], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert rec.calls == [6]  # all 3 noisy copies of both images in one call
    rec = Recorder()
    chunked = max_sensitivity(rec, x, targets, maps, noise=noise, batch_size=4)
    assert rec.calls == [4, 2]
    torch.testing.assert_close(chunked, got, rtol=0, atol=0)
    # a map that ignores the input is perfectly robust; an all-zero map is undefined
    const = max_sensitivity(lambda x, t: torch.ones_like(x[:, 0]), x, targets, maps * 0 + 1)
    assert const.tolist() == [0.0, 0.0]
    zero = max_sensitivity(lambda x, t: torch.zeros_like(x[:, 0]), x, targets, maps * 0)
    assert torch.isnan(zero).all()


def test_registered_metric_draws_uniform_noise_in_the_radius():
    x = torch.ones(3, 1, 5, 5, dtype=torch.float64)
    maps = torch.ones(3, 5, 5, dtype=torch.float64)  # e(x) = x[:, 0], ||e(x)|| = 5
    rec = Recorder()
    metric = get_metric("max_sensitivity", samples=50, radius=0.2)
    got = metric(ctx_of(None, x, maps, 0, rec, seed=3))
    assert rec.calls == [150]
    # the same draws, by hand: U(-r, r) on every element, from the run's generator
    g = torch.Generator().manual_seed(3)
    noise = (2 * torch.rand((50, 3, 1, 5, 5), generator=g, dtype=torch.float64) - 1) * 0.2
    want = noise[:, :, 0].flatten(2).norm(dim=2).amax(0) / 5.0
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert noise.abs().max() <= 0.2 and noise.abs().max() > 0.19
    # max over 50 samples of ||d|| for 25 iid U(-0.2, 0.2): near sqrt(25 * 0.04 / 3) / 5
    assert (got > 0.09).all() and (got < 0.2).all()
    # maps without a method give NaN (the evaluator's random baselines)
    nan = metric(ctx_of(None, x, maps, 0, None))
    assert torch.isnan(nan).all() and nan.shape == (3,)


def test_bad_input_is_refused_before_explaining():
    rec = Recorder()
    x = torch.zeros(2, 1, 4, 4)
    metric = get_metric("max_sensitivity", samples=2)
    with pytest.raises(MetricError, match=r"\(2, 4, 4\).*\(2, 3, 3\)"):
        metric(ctx_of(None, x, torch.ones(2, 3, 3), 0, rec))
    with pytest.raises(MetricError, match="noise must be"):
        max_sensitivity(rec, x, 0, torch.ones(2, 4, 4), noise=torch.zeros(2, 2, 1, 4, 5))
    assert rec.calls == []
    with pytest.raises(MetricError, match=r"explain returned maps of shape \(4, 2, 2\)"):
        max_sensitivity(lambda x, t: x[:, 0, :2, :2], x, 0, torch.ones(2, 4, 4), samples=2)


def test_max_sensitivity_matches_quantus_and_leaves_the_model_alone(monkeypatch):
    import quantus

    torch.manual_seed(0)
    model = SmallConvNet(1).eval()
    x = torch.randn(4, 1, 16, 16)
    targets = model(x).argmax(1)
    gradcam = camlib.GradCAM(model, "conv2")

    def explain(inputs, t, model=None):
        return gradcam(inputs, t)

    maps = explain(x, targets)
    k = 5
    g = torch.Generator().manual_seed(1)
    noise = ((2 * torch.rand((k, *x.shape), generator=g, dtype=torch.float64) - 1) * 0.2).float()
    with left_alone(model):
        mine = max_sensitivity(explain, x, targets, maps, noise=noise)
    steps = iter(noise.flatten(2))

    def same_noise(arr, indices, **kwargs):  # Quantus's perturb_func, fed our draws in order
        return arr + next(steps).numpy()

    def quantus_explain(model, inputs, targets, **kwargs):
        return explain(torch.from_numpy(inputs), torch.from_numpy(targets)).numpy()

    metric = quantus.MaxSensitivity(
        nr_samples=k, lower_bound=0.2, perturb_func=same_noise, disable_warnings=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=targets.numpy(),
            a_batch=maps.numpy()[:, None],
            explain_func=quantus_explain,
            device="cpu",
        )
    assert next(steps, None) is None  # they used exactly our k perturbations
    np.testing.assert_allclose(mine.numpy(), np.asarray(theirs), rtol=0, atol=1e-5)
    assert (mine > 0.01).all()  # the maps do move
