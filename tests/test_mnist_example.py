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

from camlib import metrics  # noqa: E402
from examples.mnist import data as mnist_data  # noqa: E402
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
    # CAM == Grad-CAM x h*w on the GAP + linear head, up to float32 rounding
    assert m["cam_vs_gradcam"]["max_rel_diff"] < 1e-4
    assert m["seed"] == 0 and m["quick"] is True and m["n_train"] > 0
    assert set(m["versions"]) >= {"torch", "torchvision", "camlib", "python"}
    assert all(isinstance(v, float) and not math.isnan(v) for v in m["timings_s"].values())
