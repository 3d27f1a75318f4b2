"""The shortcut example (``python -m examples.shortcut``): its patch, mask and penalty
helpers, and the ``--quick`` run end to end on the offline MNIST copy."""

import json
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
from examples.mnist.data import BACKGROUND  # noqa: E402
from examples.mnist.models import BaselineNet  # noqa: E402
from examples.shortcut import data as sc  # noqa: E402
from examples.shortcut.run import penalised_loss  # noqa: E402

from conftest import left_alone  # noqa: E402

DATA = REPO.parent / "shared" / "mnist"
HAVE_DATA = (DATA / "MNIST" / "raw").is_dir()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def blank(n: int) -> torch.Tensor:
    return torch.full((n, 1, 28, 28), BACKGROUND)


def test_patch_sits_in_the_corner_of_the_label():
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    x = sc.add_patch(blank(10), sc.corner_of(y))
    assert sc.corner_of(y).tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    white = x[:, 0] == sc.BRIGHT
    assert white.sum((1, 2)).tolist() == [16] * 10
    assert white[0, :4, :4].all() and white[1, :4, -4:].all()
    assert white[2, -4:, :4].all() and white[3, -4:, -4:].all()
    assert (x[~white[:, None]] == BACKGROUND).all()  # nothing else changed
    misleading = sc.misleading_corner(y)
    assert (misleading != sc.corner_of(y)).all()


def test_digit_mask_grows_the_ink_and_mass_outside_is_a_fraction():
    x = blank(1)
    x[0, 0, 10:18, 12:14] = 2.0  # an 8 x 2 stroke
    mask = sc.digit_masks(x, grow=3)
    assert mask.shape == (1, 28, 28)
    assert int(mask.sum()) == (8 + 6) * (2 + 6)  # grown by 3 on every side
    maps = torch.zeros(2, 28, 28)
    maps[0, 12, 13] = 3.0  # all inside
    maps[1, 12, 13], maps[1, 0, 0] = 1.0, 3.0  # three quarters outside
    torch.testing.assert_close(
        sc.mass_outside(maps, mask.expand(2, -1, -1)), torch.tensor([0.0, 0.75])
    )
    assert sc.mass_outside(torch.zeros(1, 28, 28), mask).item() == 0.0  # no NaN


def test_penalised_loss_trains_through_the_map():
    torch.manual_seed(0)
    model = BaselineNet().train()
    x = torch.randn(6, 1, 28, 28)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    masks = torch.zeros(6, 28, 28)
    masks[:, 8:20, 8:20] = 1
    cam = camlib.HiResCAM(model, BaselineNet.CAM_LAYER)
    with left_alone(model):
        loss, penalty = penalised_loss(model, cam, sc.add_patch(x, sc.corner_of(y)), y, masks, 20)
        plain, none = penalised_loss(model, None, sc.add_patch(x, sc.corner_of(y)), y, masks, 20)
        assert none is None and 0.0 < penalty.item() < 1.0
        torch.testing.assert_close(loss, plain + 20 * penalty)  # one forward pass, same output
        (g_pen,) = torch.autograd.grad(penalty, [model.conv.weight])
    assert g_pen.abs().max() > 0  # the penalty itself moves the convolution


def run_example(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "examples.shortcut", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_missing_dataset_exits_2(tmp_path):
    proc = run_example(
        "--data-root", str(tmp_path), "--out", str(tmp_path / "o"), "--no-download", timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "train-images-idx3-ubyte" in proc.stderr


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    if not HAVE_DATA:
        pytest.skip(f"the offline MNIST copy is not at {DATA} (expected {DATA}/MNIST/raw/)")
    out = tmp_path_factory.mktemp("shortcut_quick")
    proc = run_example(
        "--data-root", str(DATA), "--out", str(out), "--quick", "--no-download", "--threads",
        "1", timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return out, proc


def test_quick_run_writes_its_report_and_figures(quick_run):
    out, proc = quick_run
    report = (out / "report.md").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", report)
    assert figures == ["maps_patched.png", "maps_misleading.png"]
    for name in figures:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    for heading in ("## Maps before and after", "## Cost of the penalty"):
        assert heading in report
    assert "wrote" in proc.stdout


def test_quick_run_numbers(quick_run):
    out, _ = quick_run
    m = json.loads((out / "metrics.json").read_text())
    assert m["quick"] is True and m["seed"] == 0 and m["lam"] == 20
    assert set(m["accuracy"]) == {"plain", "hirescam"}
    for name, acc in m["accuracy"].items():
        assert set(acc) == {"clean", "patch where training put it", "misleading patch"}
        for key, value in acc.items():
            assert 0.3 < value <= 1.0, (name, key, value)  # trained: far above chance (0.1)
    # the plain model uses the patch where training put it more than on clean digits
    plain = m["accuracy"]["plain"]
    assert plain["patch where training put it"] > plain["clean"]
    # the direction that holds even on the quick run: the penalised map keeps less of its
    # mass outside the digit than the plain model's
    mass = m["mass_outside"]
    assert mass["hirescam"]["hirescam"] < 0.5 * mass["plain"]["hirescam"]
    assert all(0.0 <= v <= 1.0 for row in mass.values() for v in row.values())
    cost = m["ms_per_step"]
    assert cost["plain"] > 0 and cost["hirescam"] > cost["plain"]
    assert m["penalty_step_cost_ratio"]["plain"] == 1.0
