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


def test_every_method_scores_on_a_small_gap_net():
    """On a GAP + linear head CAM, HiResCAM and XGrad-CAM equal Grad-CAM after normalisation;
    Eigen-CAM ignores the class, so it gives one peak for both digits and never hits both."""
    torch.manual_seed(0)
    model = ImprovedNet(channels=(4, 6, 8)).eval()
    digits = torch.full((6, 1, 28, 28), mnist_data.BACKGROUND)
    digits[:, :, 5:23, 9:19] = 2.5
    canvases, box_a, box_b, kept = mnist_data.paste_pairs(
        digits, digits.flip(-1), 56, torch.Generator().manual_seed(1)
    )
    y_a, y_b = torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([9, 8, 7, 6, 5, 4])
    sizes = mnist_methods.Sizes(6, 3)
    rates, examples = mnist_methods.two_digit_test(
        model, "block3", canvases, (box_a, box_b), (y_a, y_b), sizes, chunk=4, cell=4, shown=2
    )
    assert list(rates) == mnist_methods.method_names()
    assert set(rates) == set(camlib.available_methods())
    for name, r in rates.items():
        assert r["n_maps"] == (6 if name in ("scorecam", "ablationcam") else 12), name
        assert 0.0 <= r["hit"] <= r["hit_one_cell"] <= 1.0
        assert examples[name][0].shape == (2, 56, 56)
    assert rates["eigencam"]["same_peak_for_both_classes"] == 1.0
    assert rates["eigencam"]["both_hit"] == 0.0
    for name in ("cam", "hirescam", "xgradcam"):
        assert rates[name] == rates["gradcam"], name
    table = mnist_methods.pointing_table(
        model, "block3", canvases, box_a, y_a, sizes, chunk=4, cell=4
    )
    for name in ("cam", "hirescam", "xgradcam"):
        assert table[name]["max_abs_diff_to_gradcam"] < 1e-4, name
    timing = mnist_methods.time_per_image(model, "block3", canvases[:2], y_a[:2], repeats=1)
    assert timing["gradcam"]["forwards_per_image"] == 1.0
    assert timing["gradcam"]["relative_to_gradcam"] == 1.0
    assert 1.0 < timing["scorecam"]["forwards_per_image"] <= 8 + 1  # one per live channel


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
        "deletion_insertion.png",
        "two_digit.png",
        "methods.png",
    }
    assert expected <= set(figures)
    for name in figures:
        assert not Path(name).is_absolute() and ".." not in Path(name).parts, name
        png = out / name
        assert png.is_file(), f"report.md references missing {name}"
        assert png.read_bytes()[:8] == PNG_MAGIC
    for name in ("metrics.json", "baseline.pt", "improved.pt"):
        assert (out / name).is_file(), name
    assert "Wall time per stage" in proc.stdout
    for heading in ("### Two digits: are the maps class-discriminative?", "What this test shows"):
        assert heading in report, heading
    assert "## 6. Every method side by side" in report


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
    for key in ("gradcam", "cam", "random_baseline"):
        assert 0.0 <= pg[key] <= 1.0, key
    assert pg["random_baseline"] < 0.5
    sanity = m["sanity"]
    for key in ("gradcam_randomization_rank_corr", "guided_backprop_randomization_rank_corr"):
        assert sanity[key] is not None and abs(sanity[key]) <= 1.0, key
    for key in ("deletion_auc", "insertion_auc"):
        assert set(m[key]) >= {"gradcam", "random"}
        assert all(0.0 <= v <= 1.0 for v in m[key].values())
    # the one-digit canvases: every prediction is counted; the claim about them is checkable
    assert sum(pg["canvas_predicted_class_counts"]) == pg["n_images"]
    assert pg["gradcam_tolerance_one_cell"] >= pg["gradcam"] and pg["map_cell_px"] == 4
    # every registered method, in every table
    names = set(camlib.available_methods())
    assert set(m["method_table"]) == names == set(pg["methods"]) == set(m["sanity"]["methods"])
    assert set(m["deletion_auc"]) == names | {"random"}
    td = m["two_digit"]
    assert set(td["methods"]) == names
    for name, r in td["methods"].items():
        assert 0.0 <= r["hit"] <= r["hit_one_cell"] <= 1.0, name
        assert r["both_hit"] <= r["hit"], name
    assert td["methods"]["eigencam"]["both_hit"] == 0.0  # class-agnostic: one map for both
    assert td["methods"]["cam"]["hit"] == td["methods"]["gradcam"]["hit"]
    for name, row in m["method_table"].items():
        assert row["ms_per_image"] > 0 and row["forwards_per_image"] >= 1, name
    assert m["time_per_image"]["gradcam"]["forwards_per_image"] == 1.0
    # CAM == Grad-CAM x h*w on the GAP + linear head, up to float32 rounding
    assert m["cam_vs_gradcam"]["max_rel_diff"] < 1e-4
    assert m["seed"] == 0 and m["quick"] is True and m["n_train"] > 0
    assert set(m["versions"]) >= {"torch", "torchvision", "camlib", "python"}
    assert all(isinstance(v, float) and not math.isnan(v) for v in m["timings_s"].values())
