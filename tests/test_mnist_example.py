"""The MNIST example: its data helpers, the ``--quick`` study end to end, and the message
(and exit status 2) when MNIST is missing."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `examples` is not installed; import it from the checkout
    sys.path.insert(0, str(REPO))

import camlib  # noqa: E402
from camlib import metrics  # noqa: E402
from examples.mnist import data as mnist_data  # noqa: E402
from examples.mnist import methods as mnist_methods  # noqa: E402
from examples.mnist.models import BaselineNet, ImprovedNet  # noqa: E402

DATA = Path(__file__).parents[1].parent / "shared" / "mnist"
HAVE_DATA = (DATA / "MNIST" / "raw").is_dir()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_example(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "examples.mnist", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- data helpers (no data set needed) ------------------------------------------------------


def test_paste_on_canvas_places_digits_inside_their_boxes():
    torch.manual_seed(0)
    digits = torch.full((5, 1, 28, 28), mnist_data.BACKGROUND)
    digits[:, :, 10:20, 12:16] = 2.0  # a bar: ink at rows 10..19, columns 12..15
    canvases, boxes = mnist_data.paste_on_canvas(digits, 56, torch.Generator().manual_seed(1))
    assert canvases.shape == (5, 1, 56, 56)
    ink = canvases[:, 0] > mnist_data.BACKGROUND + 1e-3
    assert torch.equal(metrics.boxes_from_masks(ink), boxes)
    assert ((boxes[:, 2] - boxes[:, 0]) == 4).all() and ((boxes[:, 3] - boxes[:, 1]) == 10).all()
    assert ink.sum(dim=(1, 2)).tolist() == [40] * 5


def _bars(n: int, rows: slice, cols: slice) -> torch.Tensor:
    digits = torch.full((n, 1, 28, 28), mnist_data.BACKGROUND)
    digits[:, :, rows, cols] = 2.0
    return digits


def test_paste_pairs_keeps_both_digits_apart_and_whole():
    a = _bars(6, slice(4, 24), slice(10, 14))  # 20 x 4 bar: 80 ink pixels
    b = _bars(6, slice(8, 20), slice(6, 22))  # 12 x 16 block: 192 ink pixels
    canvases, box_a, box_b, kept = mnist_data.paste_pairs(
        a, b, 56, torch.Generator().manual_seed(3), min_gap=8
    )
    assert kept.tolist() == list(range(6)) and canvases.shape == (6, 1, 56, 56)
    assert ((box_a[:, 2] - box_a[:, 0]) == 4).all() and ((box_a[:, 3] - box_a[:, 1]) == 20).all()
    assert ((box_b[:, 2] - box_b[:, 0]) == 16).all() and ((box_b[:, 3] - box_b[:, 1]) == 12).all()
    gap_x = torch.maximum(box_b[:, 0] - box_a[:, 2], box_a[:, 0] - box_b[:, 2])
    gap_y = torch.maximum(box_b[:, 1] - box_a[:, 3], box_a[:, 1] - box_b[:, 3])
    assert (torch.maximum(gap_x, gap_y) >= 8).all()
    ink = canvases[:, 0] > mnist_data.BACKGROUND + 1e-3
    assert ink.sum(dim=(1, 2)).tolist() == [80 + 192] * 6  # nothing covered or lost
    for box, count in ((box_a, 80), (box_b, 192)):
        inside = torch.stack(
            [ink[i, y0:y1, x0:x1].sum() for i, (x0, y0, x1, y1) in enumerate(box.tolist())]
        )
        assert inside.tolist() == [count] * 6


def test_two_digit_canvases_pair_different_classes():
    x = torch.full((40, 1, 28, 28), mnist_data.BACKGROUND)
    x[:, :, 6:22, 10:18] = 1.0
    y = torch.arange(40) % 3  # many same-class partners to redraw
    canvases, box_a, box_b, y_a, y_b = mnist_methods.two_digit_canvases(
        x, y, 30, 56, torch.Generator().manual_seed(0)
    )
    assert len(canvases) == len(y_a) == len(y_b) == len(box_a) == 30
    assert (y_a != y_b).all()


DIGIT_METRICS = ["deletion", "insertion", "average_drop", "increase_in_confidence"]
LOCALISATION = ["pointing_game", "energy_pointing_game", "relevance_mass", "relevance_rank"]
COLUMNS = DIGIT_METRICS + LOCALISATION + [
    "randomisation", "random_logit", "sparseness", "complexity", "ms_per_map", "forwards_per_map"
]  # fmt: skip
"""The study leaderboard's columns, in camlib.evaluate's category order."""


def test_leaderboards_rank_every_method_with_camlib_evaluate():
    """On a GAP + linear head CAM, HiResCAM and XGrad-CAM equal Grad-CAM after normalisation,
    so their rows score the same; Eigen-CAM ignores the class, so in the two-digit test it
    never hits both digits of a canvas."""
    torch.manual_seed(0)
    model = ImprovedNet(channels=(4, 6, 8)).eval()
    digits = torch.full((6, 1, 28, 28), mnist_data.BACKGROUND)
    digits[:, :, 5:23, 9:19] = 2.5
    digits[:, :, 8:12, 4:25] = 1.0
    canvases, box_a, box_b, kept = mnist_data.paste_pairs(
        digits, digits.flip(-1), 56, torch.Generator().manual_seed(1)
    )
    y_a, y_b = torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([9, 8, 7, 6, 5, 4])
    names = ["gradcam", "cam", "hirescam", "xgradcam", "eigencam"]
    m = len(kept)
    assert m >= 3
    one, boxes = mnist_data.paste_on_canvas(digits[:4], 56, torch.Generator().manual_seed(2))
    board = mnist_methods.leaderboard(
        model, "block3", names, (digits[:4], y_a[:4]), (one, boxes, y_a[:4]), steps=4, seed=0
    )
    assert isinstance(board, camlib.Leaderboard)
    assert set(board.methods) == set(names) | {"random", "gaussian"}
    assert [m.name for m in board.metrics] == COLUMNS
    per = {(r["method"], r["image"]) for r in board.per_image}
    assert ("gradcam", "digit 3") in per and ("gradcam", "canvas 3") in per and len(per) == 7 * 8
    rows = {e["method"]: e for e in board.summary}
    for name in ("cam", "hirescam", "xgradcam"):
        for metric in COLUMNS[:-2]:  # every metric but the cost
            assert rows[name][metric] == pytest.approx(rows["gradcam"][metric], abs=1e-5), (
                name,
                metric,
            )
    for e in board.summary:  # faithfulness from the 4 digits, localisation from the 4 canvases
        assert e["deletion_n"] == 4 and e["pointing_game_n"] == 4, e["method"]
    assert "| # | method | mean rank |" in board.to_markdown()
    # the class-discriminative test: both classes of each canvas, one evaluate call
    td, both = mnist_methods.two_digit_leaderboard(
        model, "block3", names, canvases, (box_a, box_b), (y_a[kept], y_b[kept]), seed=0
    )
    assert [m.name for m in td.metrics] == ["pointing_game", "energy_pointing_game"]
    assert set(both) == set(td.methods) == set(names) | {"random", "gaussian"}
    hits = {
        (r["method"], r["image"]): r["pointing_game"]
        for r in td.per_image
        if r["method"] == "eigencam"
    }
    assert len(hits) == 2 * m and both["eigencam"] == 0.0  # one map for both classes
    assert all(hits[("eigencam", i)] + hits[("eigencam", i + m)] <= 1.0 for i in range(m))
    assert {e["method"]: e for e in td.summary}["eigencam"]["pointing_game"] <= 0.5
    gc = [r["pointing_game"] for r in td.per_image if r["method"] == "gradcam"]
    assert both["gradcam"] == sum(gc[i] == 1 and gc[i + m] == 1 for i in range(m)) / m


def test_ink_masks_are_the_pasted_pixels():
    digits = _bars(2, slice(10, 20), slice(12, 16))
    canvases, boxes = mnist_data.paste_on_canvas(digits, 40, torch.Generator().manual_seed(0))
    ink = mnist_methods.ink(canvases)
    assert ink.shape == (2, 40, 40) and ink.sum(dim=(1, 2)).tolist() == [40, 40]
    assert torch.equal(metrics.boxes_from_masks(ink), boxes)


def test_shift_moves_whole_pixels_and_fills_black():
    x = torch.randn(2, 1, 8, 8)
    moved = mnist_data.shift(x, torch.tensor([2, -1]), torch.tensor([1, 0]))
    assert torch.equal(moved[0, :, 1:, 2:], x[0, :, :-1, :-2])
    assert torch.equal(moved[1, :, :, :-1], x[1, :, :, 1:])
    assert (moved[0, :, 0, :] == mnist_data.BACKGROUND).all()


def test_models_shapes_and_cam_layers():
    x = torch.randn(2, 1, 28, 28)
    assert BaselineNet()(x).shape == (2, 10)
    improved = ImprovedNet().eval()
    assert improved(x).shape == (2, 10)
    assert improved(torch.randn(2, 1, 56, 56)).shape == (2, 10)  # runs on larger canvases
    names = dict(improved.named_modules())
    assert ImprovedNet.CAM_LAYER in names and BaselineNet.CAM_LAYER in dict(
        BaselineNet().named_modules()
    )


# -- the command line -------------------------------------------------------------------------


def test_missing_dataset_says_where_to_put_it_and_exits_2(tmp_path):
    empty = tmp_path / "no-mnist-here"
    empty.mkdir()
    proc = run_example(
        "--data-root", str(empty), "--out", str(tmp_path / "out"), "--no-download", timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    expected = str(empty / "MNIST" / "raw")
    assert expected in proc.stderr
    assert "train-images-idx3-ubyte" in proc.stderr and "t10k-labels-idx1-ubyte" in proc.stderr


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    if not HAVE_DATA:
        pytest.skip(f"the offline MNIST copy is not at {DATA} (expected {DATA}/MNIST/raw/)")
    out = tmp_path_factory.mktemp("mnist_quick")
    proc = run_example(
        "--data-root", str(DATA), "--out", str(out), "--quick", "--seed", "0", timeout=900
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return out, proc


def test_quick_run_writes_every_file(quick_run):
    out, proc = quick_run
    report = (out / "report.md").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", report)
    assert len(figures) >= 8, figures
    expected = {
        "training_curves.png",
        "confusion.png",
        "baseline_mistakes.png",
        "improved_mistakes.png",
        "cam_vs_gradcam.png",
        "pointing_game.png",
        "sanity_panel.png",
        "sanity_curve.png",
        "two_digit.png",
        "leaderboard.png",
        "two_digit/leaderboard.png",
    }
    assert expected <= set(figures)
    for name in figures:
        assert not Path(name).is_absolute() and ".." not in Path(name).parts, name
        png = out / name
        assert png.is_file(), f"report.md references missing {name}"
        assert png.read_bytes()[:8] == PNG_MAGIC
    for name in ("metrics.json", "baseline.pt", "improved.pt"):
        assert (out / name).is_file(), name
    assert "Time per stage (wall, CPU of all threads)" in proc.stdout
    for heading in ("### Two digits: are the maps class-discriminative?", "What this test shows"):
        assert heading in report, heading
    assert "## 6. Every method side by side: the leaderboard" in report
    # the tables are camlib.evaluate's: Leaderboard.save's Markdown, verbatim in the report
    for folder in (out, out / "two_digit"):
        table = (folder / "leaderboard.md").read_text()
        assert table.startswith("| # | method | mean rank |") and table in report
        for name in ("leaderboard.csv", "per_image.csv", "leaderboard.png"):
            assert (folder / name).is_file(), folder / name


def test_quick_run_checkpoints_load(quick_run):
    out, _ = quick_run
    for name, cls in (("baseline.pt", BaselineNet), ("improved.pt", ImprovedNet)):
        ckpt = torch.load(out / name, weights_only=True)
        assert ckpt["architecture"] == cls.__name__
        model = cls()
        model.load_state_dict(ckpt["state_dict"])


def test_quick_run_metrics(quick_run):
    out, _ = quick_run
    m = json.loads((out / "metrics.json").read_text())
    for model in ("baseline", "improved"):
        acc = m[model]["test_accuracy"]
        assert 0.5 < acc <= 1.0, (model, acc)
        per_class = m[model]["per_class_accuracy"]
        assert sorted(per_class, key=int) == [str(d) for d in range(10)]
        assert all(0.0 <= v <= 1.0 for v in per_class.values())
        cm = m[model]["confusion_matrix"]
        assert sum(map(sum, cm)) == m["n_test"]
        assert sum(cm[i][i] for i in range(10)) / m["n_test"] == pytest.approx(acc)
    pg = m["pointing_game"]
    for key in ("gradcam", "random_baseline"):
        assert 0.0 <= pg[key] <= 1.0, key
    assert pg["random_baseline"] < 0.5
    sanity = m["sanity"]
    for key in ("gradcam_randomization_rank_corr", "guided_backprop_randomization_rank_corr"):
        assert sanity[key] is not None and abs(sanity[key]) <= 1.0, key
    # the one-digit canvases: every prediction is counted; the claim about them is checkable
    assert sum(pg["canvas_predicted_class_counts"]) == pg["n_images"]
    assert pg["gradcam_tolerance_one_cell"] >= pg["gradcam"] and pg["map_cell_px"] == 4
    # the leaderboard: the quick run's methods and the two baselines, every column
    quick = ["gradcam", "cam", "eigencam", "guided_backprop", "scorecam"]
    lb = m["leaderboard"]
    assert set(lb["methods"]) == set(quick) | {"random", "gaussian"} and not lb["dropped"]
    assert lb["metrics"] == COLUMNS and lb["n_digits"] == 8 and lb["n_canvases"] == 8
    rows = {e["method"]: e for e in lb["summary"]}
    for name, e in rows.items():
        for metric in COLUMNS[:-2]:
            assert e[f"{metric}_n"] == 8, (name, metric)
            assert e[f"{metric}_lo"] <= e[metric] <= e[f"{metric}_hi"], (name, metric)
    assert rows["random"]["forwards_per_map"] == rows["gaussian"]["forwards_per_map"] == 0.0
    assert rows["gradcam"]["forwards_per_map"] == 1.0
    assert 1.0 < rows["scorecam"]["forwards_per_map"] <= 96 + 1  # one per live channel
    for metric in COLUMNS[:-2]:  # CAM == Grad-CAM up to normalisation on this head
        assert rows["cam"][metric] == pytest.approx(rows["gradcam"][metric], abs=1e-5), metric
    assert lb["markdown"] == (out / "leaderboard.md").read_text()
    td = m["two_digit"]
    assert set(td["methods"]) == set(quick) | {"random", "gaussian"}
    assert td["metrics"] == ["pointing_game", "energy_pointing_game"]
    assert td["both_hit"]["eigencam"] == 0.0  # class-agnostic: one map for both
    tdr = {e["method"]: e for e in td["summary"]}
    assert tdr["eigencam"]["pointing_game"] <= 0.5
    assert tdr["cam"]["pointing_game"] == tdr["gradcam"]["pointing_game"]
    assert tdr["gradcam"]["pointing_game_n"] == 2 * td["n_canvases"]
    # CAM == Grad-CAM x h*w on the GAP + linear head, up to float32 rounding
    assert m["cam_vs_gradcam"]["max_rel_diff"] < 1e-4
    assert m["seed"] == 0 and m["quick"] is True and m["n_train"] > 0
    assert set(m["versions"]) >= {"torch", "torchvision", "camlib", "python"}
    assert all(isinstance(v, float) and not math.isnan(v) for v in m["timings_s"].values())
    assert set(m["cpu_seconds"]) == set(m["timings_s"]) and m["total_cpu_seconds"] > 0
