"""The binary-classifier example: a one-logit CNN on lfw_subset (``examples`` extra).

The ``--quick`` run trains in seconds; its held-out accuracy, the two classes of the one
logit (``targets=1`` / ``targets=0`` / ``None``) and its files are checked.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

import camlib

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `examples` is not installed; import it from the checkout
    sys.path.insert(0, str(REPO))

from examples.binary.run import FaceNet, load_faces, main  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MIN_ACCURACY = 0.9
"""Held-out accuracy the quick run must reach (60 images; the full run gets 100 %)."""


def test_split_is_seeded_stratified_and_disjoint():
    a, b = load_faces(30, seed=0), load_faces(30, seed=0)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.train_y, b.train_y)
    assert a.train_x.shape == (140, 1, 25, 25) and a.test_x.shape == (60, 1, 25, 25)
    assert int(a.test_y.sum()) == 30 and int(a.train_y.sum()) == 70  # 30 + 70 faces
    assert abs(float(a.train_x.mean())) < 1e-5  # normalised with the training statistics
    rows = {tuple(r.flatten().tolist()) for r in a.train_x}
    assert not any(tuple(r.flatten().tolist()) in rows for r in a.test_x)
    assert not torch.equal(load_faces(30, seed=1).test_x, a.test_x)


def test_one_logit_gradcam_classes_are_relu_of_plus_and_minus_the_same_sum():
    """Grad-CAM of a GAP + linear one-logit head, by hand: s = sum_k w_k A_k / (h w);
    targets=1 gives ReLU(s), targets=0 gives ReLU(-s)."""
    torch.manual_seed(0)
    model = FaceNet().eval()
    x = torch.randn(3, 1, 25, 25)
    feats = model.features(x)  # (3, 64, 6, 6): the output of FaceNet.CAM_LAYER
    s = torch.einsum("k,nkij->nij", model.fc.weight[0], feats) / (6 * 6)
    with camlib.GradCAM(model, FaceNet.CAM_LAYER) as cam:
        one = cam(x, targets=1, upsample=False, normalize=False)
        zero = cam(x, targets=0, upsample=False, normalize=False)
        assert cam.scores.tolist() == pytest.approx((-model(x)).tolist(), abs=1e-6)
        cam(x)  # targets=None: the sign of the logit
        assert cam.classes.tolist() == (model(x) > 0).long().tolist()
    torch.testing.assert_close(one, s.relu(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(zero, (-s).relu(), atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("binary")
    assert main(["--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "metrics.json").read_text())


def test_quick_run_accuracy_and_both_classes(quick):
    out, m = quick
    assert m["n_train"] == 140 and m["n_test"] == 60
    assert m["test_accuracy"] >= MIN_ACCURACY, m["confusion"]
    c = m["confusion"]
    assert sum(map(sum, c)) == 60 and c[0][0] + c[1][1] == round(60 * m["test_accuracy"])
    assert m["train_loss"][-1] < m["train_loss"][0] / 3
    assert m["targets_none_matches_logit_sign"] == 1.0
    assert m["gradcam_overlap_max"] == 0.0 and m["gradcam_raw_peak"] > 0  # disjoint supports
    for name in ("explanations", "mean_maps"):
        assert (out / m["figures"][name]).read_bytes()[:8] == PNG_MAGIC
    report = (out / "report.md").read_text()
    assert f"**{100 * m['test_accuracy']:.1f} %**" in report
    state = torch.load(out / "facenet.pt", weights_only=True)
    model = FaceNet().eval()
    model.load_state_dict(state["state_dict"])
    data = load_faces(30, seed=0)
    with torch.no_grad():
        acc = float(((model(data.test_x) > 0).float() == data.test_y).float().mean())
    assert acc == pytest.approx(m["test_accuracy"])  # the checkpoint is the measured model
