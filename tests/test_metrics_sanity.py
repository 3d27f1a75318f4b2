"""Sanity metrics: the cascading model-parameter randomisation test and the random-logit
test; SSIM against scikit-image, both tests against Quantus 0.6.0 with their randomness
aligned, the user's model left alone, bad input."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import camlib
from camlib.errors import MetricError
from camlib.metrics import MetricContext, get_metric, sanity

from conftest import ModelState, batch, count_forwards, left_alone, small


def gradcam_explain(net: nn.Module, layer: str = "conv2"):
    """``ctx.explain`` as the runner builds it: the same method and layer, on ``model``
    when given."""

    def explain(inputs, targets=None, model=None):
        return camlib.GradCAM(net if model is None else model, layer)(inputs, targets)

    return explain


def context(net: nn.Module, x: torch.Tensor, explain=None, seed: int = 0) -> MetricContext:
    explain = explain or gradcam_explain(net)
    targets = net(x).argmax(1)
    return MetricContext(
        model=net,
        inputs=x,
        targets=targets,
        maps=explain(x, targets),
        explain=explain,
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.fixture
def net_and_x():
    return small(), batch(4, 16)


def test_registered_with_direction_needs_and_cost(net_and_x):
    net, _ = net_and_x
    r, rl = get_metric("randomisation"), get_metric("random_logit")
    assert (r.category, r.higher_is_better, r.reference) == (
        "sanity",
        False,
        "Adebayo et al., 2018",
    )
    assert (rl.category, rl.higher_is_better, rl.reference) == (
        "sanity",
        False,
        "Sixt et al., 2020",
    )
    assert r.needs == rl.needs == {"model", "explain"}
    assert (r.steps, r.similarity, rl.similarity, rl.flatten) == (5, "spearman", "ssim", False)
    assert r.forwards_per_image() == 5 and rl.forwards_per_image() == 1
    assert r.forwards_per_image(net) == 4  # SmallConvNet: conv1, conv2, conv3, fc
    assert get_metric("mprt", steps=2).forwards_per_image(net) == 2
    assert get_metric("randomisation", steps=None).forwards_per_image(net) == 4
    with pytest.raises(MetricError, match="pass the model"):
        get_metric("randomisation", steps=None).forwards_per_image()


def test_cascade_order_and_evenly_spaced_depths():
    names = [n for n, _ in sanity.randomisation_cascade(small())]
    assert names == ["fc", "conv3", "conv2", "conv1"]
    depths = get_metric("randomisation").depths
    assert depths(9) == [2, 4, 6, 8, 9] and depths(4) == [1, 2, 3, 4]
    assert get_metric("randomisation", steps=2).depths(10) == [5, 10]
    assert get_metric("randomisation", steps=None).depths(3) == [1, 2, 3]


# -- SSIM ----------------------------------------------------------------------------------


def test_ssim_matches_scikit_image_in_2d_and_flattened():
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    torch.manual_seed(0)
    a = torch.rand(3, 16, 12, dtype=torch.float64)
    b = 0.6 * a + 0.4 * torch.rand(3, 16, 12, dtype=torch.float64)
    b[2] = a[2]
    for flatten in (False, True):
        ours = sanity.ssim(a, b, flatten=flatten)
        for i in range(3):
            aa, bb = a[i].numpy(), b[i].numpy()
            if flatten:
                aa, bb = aa.ravel(), bb.ravel()
            span = max(aa.max(), bb.max()) - min(aa.min(), bb.min())
            ref = structural_similarity(aa, bb, data_range=span)
            assert ours[i].item() == pytest.approx(ref, abs=1e-12)
    assert sanity.ssim(a, b)[2].item() == pytest.approx(1.0)
    assert sanity.ssim(torch.ones(1, 8, 8), torch.ones(1, 8, 8)).item() == 1.0
    with pytest.raises(MetricError, match="at least win_size=7"):
        sanity.ssim(torch.rand(1, 5, 5), torch.rand(1, 5, 5))


# -- the randomisation test -----------------------------------------------------------------


def test_randomisation_by_hand_with_a_scripted_explain(net_and_x):
    """explain() returns, for the randomised copy, a map chosen per image: the same map
    (rho = 1), its reverse (rho = -1), a constant map (counts as 0), a shuffled one."""
    net, x = net_and_x
    torch.manual_seed(5)
    maps = torch.rand(4, 16, 16)
    shuffled = maps[3].flatten()[torch.randperm(256)].reshape(16, 16)
    calls = []

    def explain(inputs, targets=None, model=None):
        calls.append(model)
        return torch.stack([maps[0], -maps[1], torch.zeros(16, 16), shuffled])

    ctx = MetricContext(net, x, torch.zeros(4, dtype=torch.long), maps, explain=explain)
    ctx.generator = torch.Generator().manual_seed(0)
    with left_alone(net):
        values = get_metric("randomisation", steps=3)(ctx)
    rho = camlib.metrics.rank_correlation(maps[3:], shuffled[None]).item()
    assert values.tolist() == pytest.approx([1.0, 1.0, 0.0, abs(rho)], abs=1e-12)
    assert len(calls) == 3 and all(m is not net and isinstance(m, type(net)) for m in calls)
    constant = maps.clone()
    constant[0] = 0.5
    ctx.maps = constant
    assert math.isnan(get_metric("randomisation", steps=1)(ctx)[0])


def test_randomisation_randomises_one_more_layer_per_step_on_a_copy(net_and_x):
    net, x = net_and_x
    original = {k: v.clone() for k, v in net.state_dict().items()}
    seen = []

    def explain(inputs, targets=None, model=None):
        if model is not None:
            state = model.state_dict()
            seen.append(
                sorted({k.split(".")[0] for k in state if not torch.equal(state[k], original[k])})
            )
        return gradcam_explain(net)(inputs, targets, model)

    ctx = context(net, x, explain)
    with left_alone(net):
        get_metric("randomisation", steps=None)(ctx)
    assert seen == [
        ["fc"],
        ["conv3", "fc"],
        ["conv2", "conv3", "fc"],
        ["conv1", "conv2", "conv3", "fc"],
    ]


def test_randomisation_is_reproducible_and_steps_are_a_subset(net_and_x):
    net, x = net_and_x
    cpu_rng = torch.get_rng_state()
    full_names, full = get_metric("randomisation", steps=None).cascade(context(net, x, seed=7))
    names, some = get_metric("randomisation", steps=2).cascade(context(net, x, seed=7))
    assert torch.equal(torch.get_rng_state(), cpu_rng)  # the global RNG is left alone
    assert names == ["conv3", "conv1"] == [full_names[1], full_names[3]]
    assert torch.equal(some, full[[1, 3]])
    _, again = get_metric("randomisation", steps=None).cascade(context(net, x, seed=7))
    _, other = get_metric("randomisation", steps=None).cascade(context(net, x, seed=8))
    assert torch.equal(again, full) and not torch.allclose(other, full)


def test_randomisation_leaves_the_model_exactly_as_it_was():
    net = small()
    net.conv1.weight.grad = torch.ones_like(net.conv1.weight)  # a user's gradient stays
    net.conv2.bias.requires_grad_(False)
    handle = net.conv3.register_forward_hook(lambda m, i, o: None)
    x = batch(2, 16)
    ctx = context(net, x)
    state = ModelState.of(net)
    with left_alone(net):
        get_metric("randomisation", steps=None)(ctx)
        get_metric("random_logit")(ctx)
    state.assert_unchanged(net)
    handle.remove()


def test_randomisation_agrees_with_quantus_mprt_per_layer(net_and_x, monkeypatch):
    """Quantus re-seeds torch with seed + 1 before every layer's reset_parameters; with the
    same seeds the randomised weights, and so the per-layer Spearman values, are equal.
    Quantus's average also counts the unrandomised model's similarity (~1)."""
    quantus = pytest.importorskip("quantus")
    net, x = net_and_x
    ctx = context(net, x)
    monkeypatch.setattr(sanity, "_layer_seeds", lambda generator, n: [43] * n)
    metric = get_metric("randomisation", steps=None)
    names, ours = metric.cascade(ctx)
    summary = metric(ctx)

    def explain_func(model, inputs, targets, **kwargs):
        maps = gradcam_explain(net)(torch.as_tensor(inputs), torch.as_tensor(targets), model)
        return maps.double().numpy()

    args = dict(
        model=net,
        x_batch=x.numpy(),
        y_batch=ctx.targets.numpy(),
        a_batch=ctx.maps.numpy(),
        explain_func=explain_func,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = quantus.MPRT(disable_warnings=True, layer_order="top_down", seed=42)(**args)
        average = quantus.MPRT(
            disable_warnings=True, layer_order="top_down", seed=42, return_average_correlation=True
        )(**args)
    assert list(theirs) == ["original", *names]
    per_layer = np.array([theirs[name] for name in names])
    assert not np.isnan(per_layer).any()
    assert np.abs(per_layer - ours.numpy()).max() < 1e-5
    assert np.abs(summary.numpy() - np.abs(per_layer).mean(0)).max() < 1e-12
    with_original = (np.array(theirs["original"]) + per_layer.sum(0)) / (len(names) + 1)
    assert np.abs(np.array(average) - with_original).max() < 1e-5
    assert np.abs(np.array(average) - per_layer.mean(0)).max() > 0.05


def test_reinitialise_is_seeded_and_leaves_the_global_rng_alone():
    a, b = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
    b.running_mean.fill_(3.0)
    rng = torch.get_rng_state()
    sanity.reinitialise(a, 11)
    w = a.weight.clone()
    sanity.reinitialise(a, 11)
    sanity.reinitialise(b, 11)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(a.weight, w)
    torch.manual_seed(11)
    assert torch.equal(nn.Conv2d(3, 4, 3).weight, w)  # PyTorch's own initialisation
    assert torch.equal(b.running_mean, torch.zeros(4)) and torch.equal(b.weight, torch.ones(4))


def test_randomisation_refusals_and_warnings(net_and_x):
    net, x = net_and_x
    ctx = context(net, x)
    ctx.explain = None
    with pytest.raises(MetricError, match=r"re-runs the method \(ctx.explain\)"):
        get_metric("randomisation")(ctx)
    ctx = context(net, x)
    ctx.generator = None
    with pytest.raises(MetricError, match="ctx.generator"):
        get_metric("random_logit")(ctx)

    class NoLayers(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(10))

        def forward(self, x):
            return x.flatten(1)[:, :10] * self.scale

    bare = NoLayers()
    ctx = MetricContext(bare, x, torch.zeros(4, dtype=torch.long), torch.rand(4, 16, 16))
    ctx.explain, ctx.generator = (lambda *a, **k: torch.rand(4, 16, 16)), torch.Generator()
    with pytest.raises(MetricError, match="NoLayers has no submodule with reset_parameters"):
        get_metric("randomisation")(ctx)

    class Scaled(nn.Sequential):
        def __init__(self):
            super().__init__(nn.Flatten(), nn.Linear(256, 10))
            self.temperature = nn.Parameter(torch.ones(()))

    ctx.model = Scaled()
    with pytest.warns(UserWarning, match=r"1 parameter\(s\) of Scaled .* temperature"):
        get_metric("randomisation")(ctx)
    for bad in (dict(steps=0), dict(steps=1.5), dict(similarity="pearson")):
        with pytest.raises(MetricError):
            get_metric("randomisation", **bad)


# -- the random-logit test ------------------------------------------------------------------


def test_other_classes_are_uniform_and_never_the_target():
    g = torch.Generator().manual_seed(0)
    targets = torch.tensor([3, 0, 4] * 2000)
    other = sanity.other_classes(targets, 5, g)
    assert not (other == targets).any()
    for t in (3, 0, 4):
        counts = torch.bincount(other[targets == t], minlength=5)
        assert counts[t] == 0 and counts.sum() == 2000
        assert ((counts[counts > 0] - 500).abs() < 100).all()  # 4 classes, 500 each
    again = sanity.other_classes(targets, 5, torch.Generator().manual_seed(0))
    assert torch.equal(other, again)


def test_random_logit_explains_another_class_and_compares_by_ssim(net_and_x):
    net, x = net_and_x
    asked = []

    def explain(inputs, targets=None, model=None):
        asked.append(None if targets is None else torch.as_tensor(targets).clone())
        return gradcam_explain(net)(inputs, targets, model)

    ctx = context(net, x, explain)
    with count_forwards(net) as sizes:
        values = get_metric("random_logit")(ctx)
    other = asked[-1]
    assert len(asked) == 2 and not (other == ctx.targets).any()
    expect = sanity.ssim(ctx.maps, gradcam_explain(net)(x, other))
    assert torch.allclose(values, expect, atol=1e-12)
    assert sizes == [1, 4]  # one image to read the number of classes, one re-explanation
    metric = get_metric("random_logit", classes=10)
    with count_forwards(net) as sizes:
        metric(ctx)
        metric(ctx)
    assert sizes == [4, 4]
    spearman = get_metric("random_logit", similarity="spearman")(context(net, x, seed=0))
    assert torch.allclose(
        spearman, camlib.metrics.rank_correlation(ctx.maps, gradcam_explain(net)(x, other))
    )


def test_random_logit_agrees_with_quantus_when_flattened(net_and_x, monkeypatch):
    """Quantus draws the other class with np.random.seed(42); np.random.randint(0, K - 1, N)
    and compares the *flattened* maps by SSIM. With the same draws and flatten=True the
    values are equal; our default (SSIM over the map as an image) is not."""
    quantus = pytest.importorskip("quantus")
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    net, x = net_and_x
    ctx = context(net, x)
    np.random.seed(42)
    draws = torch.as_tensor(np.random.randint(0, 9, 4))
    monkeypatch.setattr(sanity, "_random_offsets", lambda n, classes, generator: draws)
    flat = get_metric("random_logit", flatten=True)(ctx).numpy()
    image = get_metric("random_logit")(ctx).numpy()

    def explain_func(model, inputs, targets, **kwargs):
        maps = gradcam_explain(net)(torch.as_tensor(inputs), torch.as_tensor(targets).long())
        return maps.double().numpy()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = quantus.RandomLogit(
            disable_warnings=True, num_classes=10, seed=42, normalise=False
        )(
            model=net,
            x_batch=x.numpy(),
            y_batch=ctx.targets.numpy(),
            a_batch=ctx.maps.double().numpy(),
            explain_func=explain_func,
        )
    assert np.abs(flat - np.array(theirs)).max() < 1e-5
    assert np.abs(image - np.array(theirs)).max() > 1e-3
    other = sanity.other_classes(ctx.targets, 10, None)
    maps_other = gradcam_explain(net)(x, other).double().numpy()
    for i in range(4):
        a, b = ctx.maps[i].double().numpy(), maps_other[i]
        span = max(a.max(), b.max()) - min(a.min(), b.min())
        assert image[i] == pytest.approx(structural_similarity(a, b, data_range=span), abs=1e-6)


def test_random_logit_reads_classes_without_moving_batchnorm_statistics():
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).train()  # fmt: skip
    x = batch(2, 8)
    ctx = MetricContext(net, x, torch.tensor([0, 2]), torch.rand(2, 8, 8))
    ctx.explain, ctx.generator = (
        (lambda inputs, targets=None, model=None: torch.rand(2, 8, 8)),
        torch.Generator(),
    )
    state = ModelState.of(net)
    metric = get_metric("random_logit")
    assert metric.num_classes(ctx) == 3
    metric(ctx)
    state.assert_unchanged(net)
    ctx.targets = torch.tensor([0, 3])
    with pytest.raises(
        MetricError, match=r"image 1 explains class 3, outside the model's 3 classes"
    ):
        metric(ctx)
    ctx.model = nn.Sequential(nn.Flatten(), nn.Linear(64, 1))
    ctx.targets = torch.tensor([0, 0])
    with pytest.raises(MetricError, match="at least 2 classes"):
        get_metric("random_logit")(ctx)
    with pytest.raises(MetricError, match="classes must be an int >= 2"):
        get_metric("random_logit", classes=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_seed_same_weights_classes_and_values_on_cuda():
    conv = nn.Conv2d(3, 4, 3)
    gpu = nn.Conv2d(3, 4, 3).cuda()
    sanity.reinitialise(conv, 5)
    sanity.reinitialise(gpu, 5)
    assert torch.equal(gpu.weight.cpu(), conv.weight) and gpu.weight.device.type == "cuda"
    net, x = small(), batch(4, 16)
    cpu_ctx, gpu_ctx = context(net, x, seed=3), context(net.cuda(), x.cuda(), seed=3)
    for name, options in (("randomisation", dict(steps=None)), ("random_logit", {})):
        on_gpu = get_metric(name, **options)(gpu_ctx)
        assert on_gpu.device.type == "cuda"
        net.cpu()
        on_cpu = get_metric(name, **options)(cpu_ctx)
        net.cuda()
        assert torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-4, equal_nan=True), name
