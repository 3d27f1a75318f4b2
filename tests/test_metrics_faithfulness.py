"""Faithfulness metrics: hand-computed values, exact forward counts, bad input, and agreement
with pytorch-grad-cam (ROAD, confidence change) and Quantus (ROAD, FaithfulnessCorrelation)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import camlib
from camlib import metrics
from camlib.errors import MetricError
from camlib.metrics import MetricContext, get_metric
from camlib.metrics.faithfulness import (
    cam_mult_scores,
    faithfulness_correlation,
    noisy_linear_imputation,
    road_curve,
)

from conftest import SmallConvNet, count_forwards, left_alone


class PatchScore(nn.Module):
    """Logits [z, -z], z = sum(w * x) over a 1x4x4 image: every score is computable by hand."""

    def __init__(self) -> None:
        super().__init__()
        w = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
        w[..., 1:3, 1:3] = 1.0
        self.weight = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x * self.weight).sum(dim=(1, 2, 3))
        return torch.stack([z, -z], dim=1)


def patch_case(n: int = 2):
    model = PatchScore()
    x = torch.ones(n, 1, 4, 4, dtype=torch.float64)
    maps = torch.zeros(n, 4, 4, dtype=torch.float64)
    maps[:, 1:3, 1:3] = torch.tensor([[0.9, 0.8], [0.7, 0.6]], dtype=torch.float64)
    return model, x, maps


def ctx_of(model, x, maps, targets, seed: int = 0, explain=None) -> MetricContext:
    t = torch.as_tensor(targets).expand(x.shape[0]).long()
    g = torch.Generator().manual_seed(seed)
    return MetricContext(model=model, inputs=x, targets=t, maps=maps, generator=g, explain=explain)


def sig(z: float) -> float:
    return 1.0 / (1.0 + np.exp(-z))


@pytest.fixture(scope="module")
def convnet_case():
    """4 images 1x16x16, a float64 random ConvNet, Grad-CAM maps made tie-free (also after
    pytorch-grad-cam's float32 ``1 - cam``), targets = the predicted classes."""
    torch.manual_seed(0)
    model = SmallConvNet(1).eval().double()
    with torch.no_grad():
        model.fc.weight *= 40  # confident outputs, so that removing pixels matters
    x = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    targets = model(x).argmax(1)
    maps = camlib.GradCAM(model, "conv2")(x, targets).double()
    maps = (maps + 1e-2 * torch.rand(maps.shape, dtype=torch.float64)).float().double()
    flip = (1 - maps.float()).flatten(1)
    assert all(len(torch.unique(r)) == 256 for r in flip)  # no ties for anyone's ordering
    return model, x, targets, maps


# -- registry metadata and costs ----------------------------------------------------------------
@pytest.mark.parametrize(
    "name, better, forwards",
    [
        ("deletion", False, 21),
        ("insertion", True, 21),
        ("average_drop", False, 2),
        ("increase_in_confidence", True, 2),
        ("road_morf", False, 9),
        ("road_lerf", True, 9),
        ("faithfulness_correlation", True, 101),
    ],
)
def test_registered_direction_and_exact_forwards(name, better, forwards):
    metric = get_metric(name, **({"subset_size": 10} if "corr" in name else {}))
    assert metric.category == "faithfulness" and metric.needs == {"model"}
    assert metric.higher_is_better is better
    assert metric.forwards_per_image() == forwards
    assert metric.reference
    torch.manual_seed(0)
    model = SmallConvNet(1).eval()
    x = torch.randn(3, 1, 8, 8)
    maps = torch.rand(3, 8, 8)
    with count_forwards(model) as sizes, left_alone(model):
        values = metric(ctx_of(model, x, maps, [1, 2, 3]))
    assert sizes == [3] * forwards  # batched: every call sees all images, no per-image loop
    assert values.shape == (3,) and torch.isfinite(values).all()


def test_options_change_the_cost():
    assert get_metric("deletion", steps=4).forwards_per_image() == 5
    assert get_metric("road_lerf", percentages=[0.2, 0.5]).forwards_per_image() == 2
    assert get_metric("faithfulness_correlation", runs=7).forwards_per_image() == 8
    with pytest.raises(MetricError, match="blurry"):
        get_metric("deletion", baseline="blurry")
    with pytest.raises(MetricError, match="percentages"):
        get_metric("road_morf", percentages=[0.5, 1.0])
    with pytest.raises(MetricError, match="runs"):
        get_metric("faithfulness_correlation", runs=1)
    with pytest.raises(MetricError, match="no option"):
        get_metric("average_drop", steps=3)


# -- hand-computed values on a 1x4x4 linear model ---------------------------------------------
def test_deletion_and_insertion_auc_by_hand():
    model, x, maps = patch_case()
    # deletion, 4 steps of 4 pixels: the 4 patch pixels go first, z = 4, 0, 0, 0, 0
    got = get_metric("deletion", steps=4)(ctx_of(model, x, maps, 0))
    c = [sig(8), 0.5, 0.5, 0.5, 0.5]  # p_0 = sigmoid(2 z)
    assert got.tolist() == pytest.approx([(sum(c) - (c[0] + c[-1]) / 2) / 4] * 2, abs=1e-12)
    # raw logits, 16 steps: z = 4, 3, 2, 1, 0, ... -> AUC = (10 - 2) / 16
    got = get_metric("deletion", steps=16, softmax=False)(ctx_of(model, x, maps, 0))
    assert got.tolist() == pytest.approx([0.5, 0.5], abs=1e-12)
    # insertion from a zero canvas: z = 0, 1, 2, 3, 4, 4, ... -> AUC = (58 - 2) / 16
    got = get_metric("insertion", steps=16, baseline=0.0, softmax=False)(ctx_of(model, x, maps, 0))
    assert got.tolist() == pytest.approx([3.5, 3.5], abs=1e-12)
    # the functional API still works and the metric is its AUC
    curve = metrics.insertion_curve(model, x, maps, 0, steps=16, softmax=False)
    torch.testing.assert_close(metrics.auc(curve), got)


def test_insertion_blur_baseline_is_the_rise_canvas():
    torch.manual_seed(0)
    model = SmallConvNet(1).eval().double()
    x = torch.randn(2, 1, 12, 12, dtype=torch.float64)
    maps = torch.rand(2, 12, 12, dtype=torch.float64)
    got = get_metric("insertion", steps=6)(ctx_of(model, x, maps, 3))
    blurred = metrics.gaussian_blur(x, 5.0, kernel_size=11)
    want = metrics.auc(metrics.insertion_curve(model, x, maps, 3, steps=6, baseline=blurred))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    got = get_metric("deletion", steps=6, baseline="black")(ctx_of(model, x, maps, 3))
    black = x.flatten(1).amin(1).view(2, 1, 1, 1)
    want = metrics.auc(metrics.deletion_curve(model, x, maps, 3, steps=6, baseline=black))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_average_drop_and_increase_by_hand():
    model, x, maps = patch_case(n=3)
    maps[1] = 1.0  # the identity mask: O = Y, no drop, no increase
    maps[2, 1:3, 1:3] = 1.5  # amplifies the patch: the confidence rises
    z = torch.tensor([0.9 + 0.8 + 0.7 + 0.6, 4.0, 6.0], dtype=torch.float64)
    y, o = sig(8), torch.sigmoid(2 * z)
    drop = get_metric("average_drop")(ctx_of(model, x, maps, 0))
    want = ((y - o).clamp_min(0) / y).double()
    torch.testing.assert_close(drop, want, rtol=0, atol=1e-12)
    assert drop[0] > 0 and drop[1] == 0 and drop[2] == 0
    inc = get_metric("increase_in_confidence")(ctx_of(model, x, maps, 0))
    assert inc.tolist() == [0.0, 0.0, 1.0]
    # logits: class 1 has Y = -4; O = -3 for image 0 is an increase
    inc = get_metric("increase_in_confidence", softmax=False)(ctx_of(model, x, maps, 1))
    assert inc.tolist() == [1.0, 0.0, 0.0]


def test_cam_mult_matches_pytorch_grad_cam(convnet_case):
    from pytorch_grad_cam.metrics.cam_mult_image import (
        CamMultImageConfidenceChange,
        DropInConfidence,
        IncreaseInConfidence,
    )
    from pytorch_grad_cam.utils.model_targets import (
        ClassifierOutputSoftmaxTarget,
        ClassifierOutputTarget,
    )

    model, x, targets, maps = convnet_case
    cams = maps.numpy()
    for softmax, target_cls in (
        (True, ClassifierOutputSoftmaxTarget),
        (False, ClassifierOutputTarget),
    ):
        tg = [target_cls(int(t)) for t in targets]
        y, o = cam_mult_scores(model, x, maps, targets, softmax=softmax)
        change = CamMultImageConfidenceChange()(x, cams, tg, model)
        np.testing.assert_allclose((o - y).numpy(), change, rtol=0, atol=1e-5)
        inc = get_metric("increase_in_confidence", softmax=softmax)(ctx_of(model, x, maps, targets))
        np.testing.assert_array_equal(inc.numpy(), IncreaseInConfidence()(x, cams, tg, model))
        if softmax:  # theirs is the numerator of the Average Drop only
            drop = get_metric("average_drop")(ctx_of(model, x, maps, targets))
            theirs = DropInConfidence()(x, cams, tg, model)
            np.testing.assert_allclose((drop * y).numpy(), theirs, rtol=0, atol=1e-5)


# -- ROAD ---------------------------------------------------------------------------------------
def test_imputation_by_hand_and_on_a_linear_ramp():
    x = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    x[0, 0] = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 6.0], [7.0, 8.0, 9.0]])
    removed = torch.zeros(1, 3, 3, dtype=torch.bool)
    removed[0, 1, 1] = True
    out = noisy_linear_imputation(x, removed, noise=0.0)
    corners, edges = 1 + 3 + 7 + 9, 2 + 4 + 6 + 8
    assert out[0, 0, 1, 1].item() == pytest.approx(corners / 12 + edges / 6, abs=1e-12)
    assert torch.equal(out[~removed[:, None].expand_as(out)], x[~removed[:, None].expand_as(x)])
    # a linear image is harmonic for the symmetric stencil: interior holes refill exactly
    i, j = torch.meshgrid(
        torch.arange(10, dtype=torch.float64), torch.arange(12, dtype=torch.float64), indexing="ij"
    )
    ramp = (0.3 * i - 0.7 * j + 2.0).expand(2, 3, 10, 12).clone()
    holes = torch.zeros(2, 10, 12, dtype=torch.bool)
    holes[0, 2:8, 3:9] = True
    holes[1, 1:9:2, 1:11:3] = True
    torch.testing.assert_close(noisy_linear_imputation(ramp, holes, 0.0), ramp, atol=1e-10, rtol=0)


def test_imputation_matches_pytorch_grad_cam_and_quantus(convnet_case):
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from quantus.functions.perturb_func import noisy_linear_imputation as quantus_impute

    torch.manual_seed(3)
    x = torch.randn(3, 3, 16, 16).double()
    removed = torch.rand(3, 16, 16) < torch.tensor([0.2, 0.6, 0.9]).view(3, 1, 1)
    removed[2, 5:12, 2:14] = True  # a large blob
    mine = noisy_linear_imputation(x, removed, noise=0.0)
    for i in range(3):
        theirs = NoisyLinearImputer(noise=0.0)(x[i].float(), (~removed[i]).float())
        torch.testing.assert_close(mine[i].float(), theirs, rtol=0, atol=1e-5)
        idx = removed[i].flatten().nonzero()[:, 0].numpy()
        q = quantus_impute(x[i].numpy(), idx, noise=0.0)
        np.testing.assert_allclose(mine[i].numpy(), q, rtol=0, atol=1e-10)


def test_imputation_noise_has_the_stated_size():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    removed = torch.rand(4, 16, 16) < 0.5
    exact = noisy_linear_imputation(x, removed, noise=0.0)
    g = torch.Generator().manual_seed(1)
    noisy = noisy_linear_imputation(x, removed, noise=0.05, generator=g)
    delta = (noisy - exact)[removed[:, None].expand_as(x)]
    assert delta.std().item() == pytest.approx(0.05, rel=0.1)
    assert abs(delta.mean().item()) < 0.01
    assert (noisy - exact)[~removed[:, None].expand_as(x)].abs().max() == 0
    g2 = torch.Generator().manual_seed(1)
    assert torch.equal(noisy, noisy_linear_imputation(x, removed, noise=0.05, generator=g2))


QS = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875]  # q * 256 pixels is whole for everyone


def _pgc_road(model, x, targets, maps, morf: bool, noise: float):
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    cls = ROADMostRelevantFirst if morf else ROADLeastRelevantFirst
    tg = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    model = model.float()
    try:
        cols = []
        for q in QS:
            metric = cls(percentile=100 * (1 - q))  # theirs: the percentile of pixels *kept*
            metric.perturbation.imputer.noise = noise
            cols.append(metric(x.float(), maps.float().numpy(), tg, model, return_diff=False))
    finally:
        model.double()
    return torch.from_numpy(np.stack(cols, axis=1)).double()


@pytest.mark.parametrize("morf", [True, False])
def test_road_curve_matches_pytorch_grad_cam(convnet_case, morf):
    model, x, targets, maps = convnet_case
    mine = road_curve(model, x, maps, targets, QS, most_relevant_first=morf, noise=0.0)
    theirs = _pgc_road(model, x, targets, maps, morf, noise=0.0)
    torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5)
    # with their default noise (0.01), both stay within the noise's own spread
    torch.manual_seed(0)
    runs = torch.stack([_pgc_road(model, x, targets, maps, morf, noise=0.01) for _ in range(3)])
    g = torch.Generator().manual_seed(0)
    noisy = road_curve(model, x, maps, targets, QS, most_relevant_first=morf, generator=g)
    theirs_effect, mine_effect = (runs - mine).abs(), (noisy - mine).abs()
    assert theirs_effect.mean() > 1e-5  # the noise does something, and as much in both
    assert 0.5 < mine_effect.mean() / theirs_effect.mean() < 2
    assert mine_effect.max() < 5 * theirs_effect.pow(2).mean().sqrt()
    # the registered metric is the mean over the fractions
    metric = get_metric("road_morf" if morf else "road_lerf", percentages=QS, noise=0.0)
    torch.testing.assert_close(metric(ctx_of(model, x, maps, targets)), mine.mean(1))


def test_road_accuracy_matches_quantus(convnet_case):
    import quantus

    model, x, targets, maps = convnet_case
    model = model.float()
    try:
        qs_percent = [100 * q for q in QS]
        road = quantus.ROAD(percentages=qs_percent, noise=0.0, disable_warnings=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = road(
                model=model,
                x_batch=x.float().numpy(),
                y_batch=targets.numpy(),
                a_batch=maps.float().numpy()[:, None],
                device="cpu",
            )
        # Quantus scores the accuracy (argmax == label) after imputation, averaged over images
        removed = metrics.faithfulness._removed_masks(maps, QS, True)
        acc = [
            (model(noisy_linear_imputation(x.float(), r, 0.0)).argmax(1) == targets).double().mean()
            for r in removed
        ]
    finally:
        model.double()
    assert list(theirs) == pytest.approx(qs_percent)
    assert [theirs[p] for p in qs_percent] == pytest.approx([a.item() for a in acc], abs=1e-12)
    assert 0 < sum(acc) < len(acc)  # the check is not trivially all-correct / all-wrong


# -- faithfulness correlation -----------------------------------------------------------------
def test_faithfulness_correlation_by_hand():
    # model z = sum(x * w), w = 1 on the 2x2 patch; baseline 0 on ones: drop = |S n patch|
    model, x, maps = patch_case(n=1)
    maps = torch.zeros(1, 4, 4, dtype=torch.float64)
    maps[0, 1:3, 1:3] = 1.0  # sum over S = |S n patch| too: perfect correlation
    subsets = torch.tensor([[[0, 5]], [[5, 6]], [[0, 1]], [[5, 15]]])
    got = faithfulness_correlation(model, x, maps, 0, subsets=subsets)
    assert got.item() == pytest.approx(1.0, abs=1e-12)
    got = faithfulness_correlation(model, x, 1 - maps, 0, subsets=subsets)  # reversed map
    assert got.item() == pytest.approx(-1.0, abs=1e-12)
    got = faithfulness_correlation(model, x, torch.zeros_like(maps), 0, subsets=subsets)
    assert torch.isnan(got).all()  # a constant map correlates with nothing


def test_faithfulness_correlation_matches_quantus(convnet_case, monkeypatch):
    import quantus

    model, x, targets, maps = convnet_case
    model = model.float()
    x = x.float()
    runs, size = 12, 40
    g = torch.Generator().manual_seed(0)
    subsets = torch.stack([torch.randperm(256, generator=g)[:size] for _ in range(runs * 4)])
    subsets = subsets.view(runs, 4, size)
    queue = [s.numpy() for s in subsets.flatten(0, 1)]  # Quantus draws run-major, then image
    monkeypatch.setattr(np.random, "choice", lambda *a, **k: queue.pop(0))
    try:
        for baseline, theirs_baseline in ((0.0, 0.0), ("black", "black")):
            queue[:] = [s.numpy() for s in subsets.flatten(0, 1)]
            metric = quantus.FaithfulnessCorrelation(
                nr_runs=runs,
                subset_size=size,
                perturb_baseline=theirs_baseline,
                return_aggregate=False,
                disable_warnings=True,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theirs = metric(
                    model=model,
                    x_batch=x.numpy(),
                    y_batch=targets.numpy(),
                    a_batch=maps.float().numpy()[:, None],
                    device="cpu",
                )
            assert not queue
            mine = faithfulness_correlation(
                model, x, maps.float(), targets, baseline=baseline, subsets=subsets
            )
            np.testing.assert_allclose(mine.numpy(), np.asarray(theirs), rtol=0, atol=1e-5)
    finally:
        model.double()


def test_faithfulness_correlation_metric_uses_the_run_generator():
    torch.manual_seed(0)
    model = SmallConvNet(1).eval().double()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    maps = torch.rand(3, 8, 8, dtype=torch.float64)
    metric = get_metric("faithfulness_correlation", subset_size=10, runs=6)
    a = metric(ctx_of(model, x, maps, 2, seed=5))
    b = metric(ctx_of(model, x, maps, 2, seed=5))
    c = metric(ctx_of(model, x, maps, 2, seed=6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(5)
    keys = [torch.rand((3, 64), generator=g, dtype=torch.float64) for _ in range(6)]
    subsets = torch.stack([k.topk(10, dim=1).indices for k in keys])
    torch.testing.assert_close(a, faithfulness_correlation(model, x, maps, 2, subsets=subsets))


# -- bad input and model state -------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["deletion", "average_drop", "road_morf", "faithfulness_correlation"]
)
def test_bad_maps_and_targets_are_refused_before_the_model_runs(name):
    torch.manual_seed(0)
    model = SmallConvNet(1).eval()
    x = torch.randn(2, 1, 8, 8)
    metric = get_metric(name, **({"subset_size": 4} if "corr" in name else {}))
    with count_forwards(model) as sizes, left_alone(model):
        with pytest.raises(MetricError, match=r"\(2, 8, 8\).*\(2, 4, 4\)"):
            metric(ctx_of(model, x, torch.rand(2, 4, 4), 0))
        with pytest.raises(MetricError, match=r"\(N, H, W\).*\(2, 1, 8, 8\)"):
            metric(ctx_of(model, x, torch.rand(2, 1, 8, 8), 0))
        with pytest.raises(MetricError, match=r"inputs must be \(N, C, H, W\)"):
            metric(ctx_of(model, x[:, 0], torch.rand(2, 8, 8), 0))
    assert sizes == []
    with pytest.raises(MetricError, match=r"target class 10 \(image 1\).*0\.\.9"):
        metric(ctx_of(model, x, torch.rand(2, 8, 8), torch.tensor([3, 10])))
    with pytest.raises(MetricError, match=r"target class -1 \(image 0\)"):
        metric(ctx_of(model, x, torch.rand(2, 8, 8), torch.tensor([-1, 2])))
    with pytest.raises(MetricError, match="no model"):
        metric(ctx_of(None, x, torch.rand(2, 8, 8), 0))


def test_metrics_leave_the_model_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 5)
    )
    model(torch.randn(4, 1, 8, 8)).sum().backward()  # a .grad to keep
    model.eval()
    x = torch.randn(2, 1, 8, 8)
    maps = torch.rand(2, 8, 8)
    for name in ["deletion", "insertion", "average_drop", "road_lerf", "faithfulness_correlation"]:
        options = {"subset_size": 5, "runs": 3} if "corr" in name else {}
        with left_alone(model):
            get_metric(name, **options)(ctx_of(model, x, maps, 1))
