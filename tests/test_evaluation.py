"""camlib.evaluate: the runner, its baselines and cost counting, its checks, the leaderboard."""

from __future__ import annotations

import copy
import csv
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import camlib
from camlib.errors import InputError, MethodError, MetricError, TargetError
from camlib.evaluation import (
    BASELINES,
    DEFAULT_METRICS,
    LOCALISATION_METRICS,
    Evaluator,
    Leaderboard,
    bootstrap_interval,
    evaluate,
    gaussian_blob,
)
from camlib.methods.families import constant_channels
from camlib.metrics import METRICS, Metric, register
from camlib.metrics.registry import _key

from conftest import batch, count_forwards, left_alone, small


@pytest.fixture
def reg():
    """``register`` for metrics that exist only during one test (removed afterwards)."""
    added: list[str] = []

    def wrap(*names, **meta):
        decorate = register(*names, **meta)

        def add(obj):
            added.extend(names)
            return decorate(obj)

        return add

    yield wrap
    for name in added:
        dict.pop(METRICS, _key(name), None)


@pytest.fixture
def basic(reg):
    """Cheap metrics reading the runner's context: map mean, measured cost, ctx noise."""

    @reg("t_mean", category="complexity", higher_is_better=False)
    def t_mean(ctx):
        return ctx.maps.flatten(1).mean(1)

    @reg("t_forwards", category="cost", higher_is_better=False)
    def t_forwards(ctx):
        return ctx.forwards

    @reg("t_ms", category="cost", higher_is_better=False)
    def t_ms(ctx):
        return 1000 * ctx.seconds

    @reg("t_noise", category="robustness", higher_is_better=False)
    def t_noise(ctx):
        return ctx.maps.flatten(1).mean(1) + ctx.rand(ctx.n, device=ctx.maps.device)

    return ["t_mean", "t_forwards", "t_ms", "t_noise"]


def metric_of(name: str) -> Metric:
    return camlib.metrics.get_metric(name)


# -- bootstrap ----------------------------------------------------------------------------------


def test_bootstrap_interval_equals_numpy_percentile_of_the_same_resamples():
    x = torch.tensor([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0], dtype=torch.float64)
    with_nan = torch.cat([x[:4], torch.tensor([math.nan]), x[4:], torch.tensor([math.nan])])
    mean, lo, hi, n = bootstrap_interval(
        with_nan, n_boot=2000, generator=torch.Generator().manual_seed(7)
    )
    idx = torch.randint(0, 11, (2000, 11), generator=torch.Generator().manual_seed(7)).numpy()
    means = x.numpy()[idx].mean(1)
    want_lo, want_hi = np.percentile(means, [2.5, 97.5])
    assert n == 11
    assert mean == pytest.approx(x.numpy().mean(), abs=1e-12)
    assert lo == pytest.approx(want_lo, abs=1e-12) and hi == pytest.approx(want_hi, abs=1e-12)
    # roughly the normal-theory interval mean +- 1.96 s / sqrt(n) on this sample
    half = 1.96 * x.std(unbiased=False).item() / math.sqrt(11)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)


def test_bootstrap_interval_by_hand():
    # {0, 1}: resample means are 0, 1/2, 1 with chances 1/4, 1/2, 1/4, so the 2.5 % and
    # 97.5 % quantiles of many resamples are exactly 0 and 1
    g = torch.Generator().manual_seed(0)
    assert bootstrap_interval(torch.tensor([0.0, 1.0]), n_boot=4000, generator=g) == (
        0.5,
        0.0,
        1.0,
        2,
    )
    assert bootstrap_interval(torch.full((5,), 2.5)) == (2.5, 2.5, 2.5, 5)
    assert bootstrap_interval(torch.tensor([4.0, math.nan])) == (4.0, 4.0, 4.0, 1)
    mean, lo, hi, n = bootstrap_interval(torch.tensor([math.nan]))
    assert n == 0 and all(math.isnan(v) for v in (mean, lo, hi))


def test_leaderboard_summary_order_and_text_by_hand(reg):
    @reg("t_up", category="faithfulness", higher_is_better=True)
    def t_up(ctx):
        return ctx.maps.mean((1, 2))

    @reg("t_down", category="complexity", higher_is_better=False)
    def t_down(ctx):
        return ctx.maps.mean((1, 2))

    @reg("t_cost", category="cost", higher_is_better=False)
    def t_cost(ctx):
        return ctx.forwards

    metrics = [metric_of("t_up"), metric_of("t_down"), metric_of("t_cost")]
    table = {  # method: (t_up, t_down, t_cost) for images 0, 1, 2
        "a": ([0.2, 0.4, math.nan], [0.95, 0.95, 0.95], [9.0, 9.0, 9.0]),
        "b": ([0.9, 0.7, 0.8], [0.3, 0.1, 0.2], [1.0, 1.0, 1.0]),
        "random": ([0.1, 0.1, 0.1], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
    }
    rows = [
        {"image": i, "method": m, "class": 0, "t_up": u[i], "t_down": d[i], "t_cost": c[i]}
        for m, (u, d, c) in table.items()
        for i in range(3)
    ]
    board = Leaderboard.from_rows(rows, metrics, seed=1, n_boot=500)
    # only faithfulness ranks: by mean rank over all three random (3, 1, 1) would pass a (2, 3, 3)
    assert board.methods == ["b", "a", "random"]
    a = next(e for e in board.summary if e["method"] == "a")
    assert a["t_up"] == pytest.approx(0.3) and a["t_up_n"] == 2 and a["t_down_n"] == 3
    assert a["t_down_lo"] == a["t_down_hi"] == pytest.approx(0.95)
    assert a["mean_rank"] == 2.0 and board.summary[0]["mean_rank"] == 1.0
    assert board.summary[2]["baseline"] and not board.summary[0]["baseline"]
    text = str(board)
    lines = text.splitlines()
    assert lines[1].split()[:4] == ["#", "method", "n", "rank"]
    assert lines[1].split()[4:] == ["t_up", "↑", "t_down", "↓", "t_cost", "↓"]
    assert lines[3].split()[:4] == ["1", "b", "3", "1.00"] and "0.800 ±" in lines[3]
    assert "random (baseline)" in lines[5]
    assert lines[3].count("*") == 1 and lines[5].count("*") == 2  # best per column
    assert lines[-1] == "sorted by mean rank over t_up (t_down, t_cost: shown, not ranked)"
    assert board.best_worst("b", "t_up", 1) == ([0], [1])
    assert board.best_worst("b", "t_down", 2) == ([1, 2], [0, 2])
    assert board.best_worst("random", "t_down", 0) == ([], [])
    assert board.best_worst("a", "t_up", 5) == ([1, 0], [0, 1])  # the NaN image left out
    # same seed, same intervals; the per-cell generator makes them independent of order
    again = Leaderboard.from_rows(list(reversed(rows)), metrics, seed=1, n_boot=500)
    assert {e["method"]: e["t_up_lo"] for e in again.summary} == {
        e["method"]: e["t_up_lo"] for e in board.summary
    }


# -- the runner ---------------------------------------------------------------------------------


def test_baselines_are_the_last_rows_and_are_what_they_say(basic, reg):
    @reg("t_reexplain", category="robustness", higher_is_better=False, needs={"explain"})
    def t_reexplain(ctx):
        again = ctx.explain(ctx.inputs, ctx.targets)
        return (again - ctx.maps).abs().flatten(1).amax(1)

    model, x = small(), batch(3, 16, 20)
    ev = Evaluator(model, ["gradcam"], ["t_mean", "t_reexplain"], seed=3)
    assert ev.rows_names == ["gradcam", *BASELINES] == ["gradcam", "random", "gaussian"]
    rows, maps = ev.score(x, return_maps=True)
    # gaussian: exp(-((x - 9.5)^2 + (y - 7.5)^2) / (2 * 4^2)) on a 16 x 20 map, min-max scaled
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(20.0), indexing="ij")
    blob = torch.exp(-((xs - 9.5) ** 2 + (ys - 7.5) ** 2) / (2 * 4.0**2))
    blob = (blob - blob.min()) / (blob.max() - blob.min())
    assert maps["gaussian"].shape == (3, 16, 20)
    torch.testing.assert_close(maps["gaussian"], blob.expand(3, 16, 20), atol=1e-6, rtol=0)
    assert torch.equal(gaussian_blob((16, 20)), maps["gaussian"][0])
    peak = maps["gaussian"][0] == 1
    assert peak.nonzero().tolist() == [[7, 9], [7, 10], [8, 9], [8, 10]]  # the 4 centre pixels
    # at one sigma from the centre along a row the (unscaled) blob is exp(-1/2)
    raw = torch.exp(-((xs - 9.5) ** 2 + (ys - 7.5) ** 2) / 32)
    assert raw[7, 13].item() == pytest.approx(math.exp(-(3.5**2 + 0.25) / 32))
    # random: uniform pixels in [0, 1], different for every image, reproducible by seed
    r = maps["random"]
    assert r.amin((1, 2)).tolist() == [0.0] * 3 and r.amax((1, 2)).tolist() == [1.0] * 3
    assert not torch.equal(r[0], r[1])
    assert r.mean().item() == pytest.approx(0.5, abs=0.05)
    _, again = Evaluator(model, ["gradcam"], ["t_mean"], seed=3).score(x, return_maps=True)
    _, other = Evaluator(model, ["gradcam"], ["t_mean"], seed=4).score(x, return_maps=True)
    assert torch.equal(again["random"], r) and not torch.equal(other["random"], r)
    # re-explaining: the blob again (0 change), a fresh random map, the method's same map
    change = {row["method"]: [] for row in rows}
    for row in rows:
        change[row["method"]].append(row["t_reexplain"])
    assert change["gaussian"] == [0.0] * 3 and change["gradcam"] == [0.0] * 3
    assert min(change["random"]) > 0.5
    # metrics see the maps of the table
    for row in rows:
        want = maps[row["method"]][row["image"]].mean().item()
        assert row["t_mean"] == pytest.approx(want, abs=1e-6)


def test_cost_counts_forwards_per_map(basic):
    model, x = small(), batch(4, 16)
    board = evaluate(
        model, x, methods=["gradcam", "scorecam"], metrics=basic, layer="relu3", batch_size=1
    )
    # Score-CAM: one capture forward + one per non-constant channel of relu3, per image
    acts = []
    handle = model.relu3.register_forward_hook(lambda m, a, out: acts.append(out.detach().clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    live = (~constant_channels(acts[0])).sum(1).tolist()
    assert min(live) > 0 and max(live) < 16  # the test covers skipped channels
    got = {(r["method"], r["image"]): r["t_forwards"] for r in board.per_image}
    assert [got["gradcam", i] for i in range(4)] == [1.0] * 4
    assert [got["scorecam", i] for i in range(4)] == [1.0 + k for k in live]
    assert [got["gaussian", i] for i in range(4)] == [0.0] * 4
    assert all(r["t_ms"] > 0 for r in board.per_image)
    # a whole batch: the batch's count divided among its images
    whole = evaluate(model, x, methods=["scorecam"], metrics=["t_forwards"], layer="relu3")
    mean = next(e for e in whole.summary if e["method"] == "scorecam")["t_forwards"]
    assert mean == pytest.approx(1 + sum(live) / 4)


def test_signed_maps_are_channel_summed_magnitudes_and_explain_keeps_layer_and_options(reg):
    sizes: list[int] = []

    @reg("t_copy", category="sanity", higher_is_better=False, needs={"explain"})
    def t_copy(ctx):
        twin = copy.deepcopy(ctx.model)  # same weights: the same maps if the layer is the same
        handle = twin.register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape[0]))
        try:
            other = ctx.explain(ctx.inputs, ctx.targets, model=twin)
        finally:
            handle.remove()
        return (other - ctx.maps).abs().flatten(1).amax(1)

    model, x = small(3), batch(2, 16, channels=3)
    ev = Evaluator(
        model,
        ["guided_backprop", "scorecam", "gradcam"],
        ["t_copy"],
        layer="conv2",
        method_options={"Score-CAM": {"batch_size": 3}},
    )
    rows, maps = ev.score(x, targets=[4, 7], return_maps=True)
    signed = camlib.GuidedBackprop(model)(x, targets=[4, 7])
    assert signed.shape == (2, 3, 16, 16) and signed.min() < 0
    torch.testing.assert_close(
        maps["guided_backprop"], camlib.normalize_minmax(signed.abs().sum(1)), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        maps["gradcam"], camlib.GradCAM(model, "conv2")(x, targets=[4, 7]), atol=1e-6, rtol=0
    )
    change = {r["method"]: r["t_copy"] for r in rows}  # the twin gives the same maps
    assert [change[m] for m in ("guided_backprop", "scorecam", "gradcam", "gaussian")] == [0.0] * 4
    assert change["random"] > 0.5  # a fresh random map
    assert {r["class"] for r in rows} == {4, 7}
    assert max(sizes[1:]) == 3  # Score-CAM's batch_size option reached the re-explanation


def test_targets_none_is_the_top_class_shared_by_every_method(basic):
    model, x = small(), batch(5, 16)
    with torch.no_grad():
        top = model(x).argmax(1).tolist()
    board = evaluate(model, x, methods=["gradcam", "eigencam"], metrics=["t_mean"], batch_size=2)
    for r in board.per_image:
        assert r["class"] == top[r["image"]]
    assert [r["image"] for r in board.per_image if r["method"] == "eigencam"] == list(range(5))
    given = evaluate(model, x, targets=torch.tensor([1, 2, 3, 4, 5]), methods=["gradcam"],
                     metrics=["t_mean"])  # fmt: skip
    assert [r["class"] for r in given.per_image if r["method"] == "gradcam"] == [1, 2, 3, 4, 5]


def test_bad_boxes_masks_targets_fail_before_any_forward_pass(basic, reg):
    @reg("t_inside", category="localisation", higher_is_better=True, needs={"boxes", "masks"})
    def t_inside(ctx):
        return camlib.metrics.pointing_game(ctx.maps, ctx.boxes).double()

    model, x = small(), batch(4, 16)
    good = torch.tensor([[0, 0, 8, 8]] * 4)
    bad_order = good.clone()
    bad_order[2] = torch.tensor([5, 0, 5, 8])
    outside = good.clone()
    outside[3] = torch.tensor([0, 0, 17, 8])
    mask = torch.zeros(4, 16, 16, dtype=torch.bool)
    mask[:, 2:6, 2:6] = True
    twos = mask.long()
    twos[1, 0, 0] = 2
    cases = [
        ({"boxes": bad_order}, InputError, r"box of image 2 is \[5, 0, 5, 8\].*0 <= x0 < x1 <= 16"),
        ({"boxes": outside}, InputError, r"box of image 3 .* y1 <= 16"),
        ({"boxes": good[:3]}, InputError, r"boxes must be \(4, 4\).*got shape \(3, 4\)"),
        ({"boxes": good + 0.5}, InputError, r"box of image 0 .* whole pixels"),
        ({"masks": mask[:, :8]}, InputError, r"masks must be \(4, 16, 16\).*\(4, 8, 16\)"),
        ({"masks": mask[:, None]}, InputError, r"masks\[:, 0\]"),
        ({"masks": twos}, InputError, r"mask of image 1 \(shape \(16, 16\)\) holds values"),
        ({"targets": [1, 2, 3]}, TargetError, r"3 targets for a batch of 4"),
        ({"targets": [1, -2, 3, 4]}, TargetError, r"class -2 for image 1 is negative"),
        ({"targets": lambda out: out[:, 0]}, TargetError, r"not a callable target"),
        ({"targets": 1.5}, TargetError, r"an int, a sequence .* got float"),
    ]
    for kwargs, error, message in cases:
        with count_forwards(model) as calls, pytest.raises(error, match=message):
            evaluate(model, x, methods=["gradcam"], metrics=["t_mean", "t_inside"],
                     **{"boxes": good, **kwargs})  # fmt: skip
        assert calls == [], kwargs
    with count_forwards(model) as calls, pytest.raises(MetricError, match="t_inside.*needs boxes"):
        evaluate(model, x, methods=["gradcam"], metrics=["t_inside"])
    assert calls == []
    with count_forwards(model) as calls, pytest.raises(MetricError, match="need boxes or masks"):
        Evaluator(model, ["gradcam"], ["t_inside"], boxes=True).score(x)
    assert calls == []
    # a class too large is known from the output: only the clean forward passes ran, one per
    # batch up to the image's, and no explanation
    with (
        count_forwards(model) as calls,
        pytest.raises(
            TargetError,
            match=r"class 10 for image 3 is out of range .* 10 outputs \(classes 0..9\)",
        ),
    ):
        evaluate(model, x, targets=[1, 2, 3, 10], methods=["gradcam"], metrics=["t_mean"],
                 batch_size=2)  # fmt: skip
    assert calls == [2, 2]


def test_model_is_left_exactly_as_it_was(basic, reg):
    @reg("t_random_model", category="sanity", higher_is_better=False, needs={"explain"})
    def t_random_model(ctx):
        twin = copy.deepcopy(ctx.model)
        with torch.no_grad():
            for p in twin.parameters():
                p.normal_(generator=ctx.generator)
        other = ctx.explain(ctx.inputs, ctx.targets, model=twin)
        return camlib.metrics.rank_correlation(ctx.maps, other)

    @reg("t_drop", category="faithfulness", higher_is_better=True, needs={"model"})
    def t_drop(ctx):
        with torch.no_grad():
            full = ctx.model(ctx.inputs).softmax(1)
            kept = ctx.model(ctx.inputs * ctx.maps[:, None]).softmax(1)
        t = ctx.targets[:, None]
        return (kept.gather(1, t) - full.gather(1, t))[:, 0]

    model, x = small(), batch(3, 16)
    model.conv1.weight.requires_grad_(False)
    model.fc.bias.grad = torch.ones_like(model.fc.bias)
    with left_alone(model), warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about on this model
        board = evaluate(
            model,
            x,
            methods=["gradcam", "scorecam", "guided_gradcam", "eigencam"],
            metrics=[*basic, "t_random_model", "t_drop"],
            batch_size=2,
        )
    assert set(board.methods) == {"gradcam", "scorecam", "guided_gradcam", "eigencam", *BASELINES}


def test_every_row_of_a_batch_draws_the_same_random_numbers(reg):
    @reg("t_scramble", category="sanity", higher_is_better=False, needs={"explain"})
    def t_scramble(ctx):
        twin = copy.deepcopy(ctx.model)
        with torch.no_grad():
            for p in twin.parameters():  # weights scaled by random factors 1 +- 0.5
                p.mul_(1 + 0.5 * torch.randn(p.shape, generator=ctx.generator))
        other = ctx.explain(ctx.inputs, ctx.targets, model=twin)
        return camlib.metrics.rank_correlation(ctx.maps, other)

    # CAM and Grad-CAM give the same maps on a GAP + linear head, on any weights: with the
    # same randomised model they score the same; batches draw different models
    board = evaluate(small(), batch(4, 16), methods=["cam", "gradcam"], metrics=["t_scramble"],
                     layer="relu3", batch_size=2)  # fmt: skip
    score = {(r["method"], r["image"]): r["t_scramble"] for r in board.per_image}
    finite = [i for i in range(4) if not math.isnan(score["cam", i])]
    assert len(finite) >= 2 and all(abs(score["cam", i]) < 0.999 for i in finite)
    for i in range(4):  # NaN: a constant map on the randomised model, for both
        assert score["cam", i] == pytest.approx(score["gradcam", i], abs=1e-3, nan_ok=True)
    assert score["cam", 0] != score["cam", 1]
    first = Evaluator(small(), ["cam"], ["t_scramble"], layer="relu3")
    a, b = first.score(batch(2, 16)), first.score(batch(2, 16))
    assert a[0]["t_scramble"] != b[0]["t_scramble"]


def test_same_seed_same_leaderboard(basic):
    model, x = small(), batch(5, 16)

    def run(seed):
        return evaluate(
            model, x, methods=["gradcam", "layercam"], metrics=basic, batch_size=2, seed=seed
        )

    a, b, c = run(5), run(5), run(6)

    def strip(rows):  # measured time is the only thing allowed to differ
        return [{k: v for k, v in r.items() if not k.startswith("t_ms")} for r in rows]

    assert strip(a.per_image) == strip(b.per_image)
    assert strip(a.summary) == strip(b.summary)
    assert a.methods == b.methods
    noise = {r["method"]: r["t_noise"] for r in c.per_image}
    assert noise != {r["method"]: r["t_noise"] for r in a.per_image}


def test_save_writes_csv_markdown_and_figure(basic, tmp_path):
    model, x = small(), batch(4, 16)
    board = evaluate(model, x, methods=["gradcam", "hirescam"], metrics=basic[:3], n_boot=200)
    paths = board.save(tmp_path / "out")
    assert sorted(p.name for p in paths.values()) == [
        "leaderboard.csv",
        "leaderboard.md",
        "leaderboard.png",
        "per_image.csv",
    ]
    with open(paths["csv"], newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["method"] for r in table] == board.methods
    for row, entry in zip(table, board.summary, strict=True):
        for m in basic[:3]:
            assert float(row[m]) == pytest.approx(entry[m])
            assert float(row[f"{m}_lo"]) == pytest.approx(entry[f"{m}_lo"])
            assert int(row[f"{m}_n"]) == 4
    with open(paths["per_image"], newline="") as f:
        per_image = list(csv.DictReader(f))
    assert len(per_image) == 4 * 4 and per_image[0].keys() >= {"image", "method", "class", "t_mean"}
    md = paths["markdown"].read_text(encoding="utf-8")
    assert md == board.to_markdown()
    assert "| t_mean ↓ | t_forwards ↓ | t_ms ↓ |" in md
    assert "**" in md and "*(baseline)*" in md
    assert paths["figure"].stat().st_size > 5000
    fig = board.plot()
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().split()[0] for ax in visible] == basic[:3]
    labels = [t.get_text() for t in visible[0].get_yticklabels()]
    assert sorted(labels) == sorted(board.methods)
    gaussian = labels.index("gaussian")
    colors = [line.get_color() for line in visible[0].lines if line.get_marker() == "o"]
    assert colors[gaussian] == "0.55"


def test_a_method_that_raises_is_dropped_with_a_warning(basic):
    class FlatHead(nn.Module):  # no global average pooling: CAM does not apply
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(4 * 16 * 16, 10)

        def forward(self, x):
            return self.fc(self.relu(self.conv(x)).flatten(1))

    torch.manual_seed(0)
    model, x = FlatHead().eval(), batch(3, 16)
    with pytest.warns(UserWarning, match=r"dropping method 'cam'.*LayerError"):
        board = evaluate(model, x, methods=["cam", "gradcam"], metrics=["t_mean"], batch_size=2)
    assert board.methods.count("gradcam") == 1 and "cam" not in board.methods
    assert {r["method"] for r in board.per_image} == {"gradcam", *BASELINES}
    assert "cam" in board.dropped and "dropped (raised on this model): cam" in str(board)
    with pytest.warns(UserWarning), pytest.raises(MethodError, match="every method raised"):
        evaluate(model, x, methods=["cam"], metrics=["t_mean"])


def test_a_user_registered_metric_takes_part(reg):
    @reg("t_centre_mass", category="localisation", higher_is_better=True)
    def t_centre_mass(ctx, margin: int = 4):
        inner = ctx.maps[:, margin:-margin, margin:-margin]
        return inner.flatten(1).sum(1) / ctx.maps.flatten(1).sum(1).clamp_min(1e-12)

    model, x = small(), batch(3, 16)
    ev = Evaluator(
        model, ["gradcam"], ["t_centre_mass"], metric_options={"t_centre_mass": {"margin": 6}}
    )
    rows, maps = ev.score(x, image_ids=["a", "b", "c"], return_maps=True)
    for r in rows:
        m = maps[r["method"]][["a", "b", "c"].index(r["image"])]
        assert r["t_centre_mass"] == pytest.approx((m[6:-6, 6:-6].sum() / m.sum()).item(), rel=1e-5)
    board = Leaderboard.from_rows(rows, ev.metrics)
    gaussian = next(e for e in board.summary if e["method"] == "gaussian")
    random = next(e for e in board.summary if e["method"] == "random")
    assert gaussian["t_centre_mass"] > 2 * random["t_centre_mass"]  # the blob's centre bias
    assert "| t_centre_mass ↑ |" in board.to_markdown()
    assert str(board).splitlines()[1].endswith("mass ↑")  # a long name wraps at "_"
    assert "t_centre_mass" in [m.name for m in Evaluator(model, ["gradcam"], "all").metrics]


def test_metric_selection_and_plan(basic, reg):
    @reg("t_box", category="localisation", higher_is_better=True, needs={"boxes", "masks"})
    def t_box(ctx):
        return ctx.maps.flatten(1).mean(1)

    model = small()
    default = Evaluator(model, ["gradcam"]).metrics
    names = [m.name for m in default]
    assert names and set(names) <= set(DEFAULT_METRICS)
    assert [m.category for m in default] == sorted(
        (m.category for m in default), key=camlib.metrics.CATEGORIES.index
    )
    assert not {"t_box", *LOCALISATION_METRICS} & set(names)
    with_boxes = [m.name for m in Evaluator(model, ["gradcam"], boxes=True).metrics]
    assert set(with_boxes) - set(names) == {n for n in LOCALISATION_METRICS if n in METRICS}
    everything = [m.name for m in Evaluator(model, ["gradcam"], "all").metrics]
    assert "t_box" not in everything and "t_mean" in everything
    assert "t_box" in [m.name for m in Evaluator(model, ["gradcam"], "all", masks=True).metrics]
    if "max_sensitivity" in METRICS:  # 10 re-explanations by default: left out unless asked
        assert "max_sensitivity" not in names
        asked = Evaluator(model, ["gradcam"], metric_options={"max_sensitivity": {"samples": 2}})
        assert "max_sensitivity" in [m.name for m in asked.metrics]
    if "randomisation" in METRICS:  # the fully randomised model only
        assert next(m for m in default if m.name == "randomisation").steps == 1
    with pytest.raises(MetricError, match="unknown metric 'nope'"):
        Evaluator(model, ["gradcam"], ["nope"])
    with pytest.raises(MetricError, match="metric_options names 't_ms'"):
        Evaluator(model, ["gradcam"], ["t_mean"], metric_options={"t_ms": {}})
    with pytest.raises(MethodError, match="method_options names 'scorecam'"):
        Evaluator(model, ["gradcam"], ["t_mean"], method_options={"scorecam": {"batch_size": 2}})
    with pytest.raises(MethodError, match="unknown method"):
        Evaluator(model, ["gradcam", "no_such_cam"], ["t_mean"])
    with pytest.raises(MethodError, match="scorecam.*batch_sz"):
        Evaluator(model, ["scorecam"], ["t_mean"], method_options={"scorecam": {"batch_sz": 2}})
    plan = Evaluator(model, ["gradcam", "scorecam"], basic, boxes=True).plan(10)
    assert "4 rows x 4 metrics on 10 images" in plan
    assert "scorecam: 1 + C" in plan and "gradcam: 1" in plan and "random: baseline" in plan


def test_the_docs_page_runs(tmp_path, monkeypatch):
    """docs/evaluate.md's examples run as written (as tests/test_docs_snippets.py runs the
    pages listed there)."""
    from test_docs_snippets import DOCS, snippets

    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "docs_evaluate"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for line, code in snippets("evaluate.md"):
            exec(compile("\n" * (line - 1) + code, str(DOCS / "evaluate.md"), "exec"), namespace)
    board = namespace["board"]
    assert isinstance(board, Leaderboard)
    assert set(board.methods) == {"gradcam", "layercam", *BASELINES}
    assert (tmp_path / "evaluation" / "leaderboard.png").is_file()
    assert "massincentre" not in METRICS  # the page's metric is unregistered again


def test_concept_and_batch_dependent_methods_are_refused_by_name_and_left_out_of_all():
    """DFF returns K concept maps per image, factorised over the whole batch: no per-image
    metric can score that, so naming it is an error and "all" leaves it out."""
    from camlib.evaluation import _resolve_methods

    with pytest.raises(camlib.MethodError, match="dff cannot be evaluated: it returns K concept"):
        _resolve_methods(["gradcam", "dff"])
    every = [name for name, _ in _resolve_methods("all")]
    assert "dff" not in every and "gradcam" in every
    assert set(every) == set(camlib.available_methods()) - {"dff"}
