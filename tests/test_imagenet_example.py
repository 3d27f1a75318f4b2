"""The ImageNet example: EfficientNet-Lite0 on bundled photos (``examples`` extra).

The ``--quick`` run is done once per module (the cat and the coffee photos, Grad-CAM and
Guided Grad-CAM) and its numbers are checked: the cat photo's top-1 is a cat class, and
on the cat | coffee canvas each class's Grad-CAM mass lies in its own photo's half.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `examples` is not installed; import it from the checkout
    sys.path.insert(0, str(REPO))

from examples.imagenet import photos  # noqa: E402
from examples.imagenet.model import CAT_CLASSES, categories, crop_resize, to_tensor  # noqa: E402
from examples.imagenet.run import half_share, main, peak_side, read_boxes  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- helpers (no model needed) ----------------------------------------------------------------


def test_half_share_and_peak_side_by_hand():
    m = torch.zeros(4, 6)
    m[1, 0] = 3.0  # left half (columns 0..2)
    m[2, 4] = 1.0  # right half
    assert half_share(m, "left") == pytest.approx(0.75)
    assert half_share(m, "right") == pytest.approx(0.25)
    assert peak_side(m) == "left"
    signed = torch.zeros(3, 4, 6)
    signed[:, 0, 5] = -2.0  # signed maps count |g| summed over channels: 6 on the right
    signed[0, 3, 1] = 2.0  # 2 on the left
    assert half_share(signed, "right") == pytest.approx(0.75)
    assert peak_side(signed) == "right"


def test_canvas_halves_are_the_two_photos_strips():
    canvas = photos.side_by_side("chelsea", "coffee")
    assert canvas.shape == (3, 224, 224)
    for half, name in ((canvas[..., :112], "chelsea"), (canvas[..., 112:], "coffee")):
        strip = crop_resize(to_tensor(photos.PHOTOS[name][1]()), 224, 112)[0]
        assert torch.equal(half, strip)


def test_photos_load_offline_as_224_crops():
    for name in ("chelsea", "camera", "china"):  # skimage colour, skimage grey, sklearn
        img = photos.load(name)
        assert img.shape == (3, 224, 224)
        assert float(img.min()) >= 0 and 200 < float(img.max()) <= 255  # a real photo
    names = categories()
    assert len(names) == 1000 and [names[i] for i in sorted(CAT_CLASSES)] == [
        "tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"
    ]  # fmt: skip


def test_committed_boxes_cover_every_photo_inside_the_input():
    boxes = read_boxes()
    assert list(boxes) == list(photos.PHOTOS)  # the file's order is the photos' order
    assert boxes["chelsea"] == {"box": (24, 48, 208, 224), "object": "the cat's face"}
    assert boxes["rocket"]["box"] == (96, 64, 124, 220)
    for name, b in boxes.items():
        x0, y0, x1, y1 = b["box"]
        assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224, name


@pytest.mark.parametrize(
    "line, message",
    [
        ("dog,0,0,10,10,a dog", "unknown photo 'dog'"),
        ("coffee,40,0,230,150,cup", "the box of 'coffee' is (40, 0, 230, 150)"),
        ("coffee,40,50,180,50,cup", "need 0 <= x0 < x1 <= 224"),
        ("coffee,4.5,0,180,150,cup", "must be 4 whole pixels"),
        ("chelsea,1,1,9,9,cat\nchelsea,2,2,9,9,cat", "photo 'chelsea' has two boxes"),
    ],
)
def test_bad_boxes_are_refused_naming_the_photo(tmp_path, line, message):
    path = tmp_path / "boxes.csv"
    path.write_text(f"# a comment\nphoto,x0,y0,x1,y1,object\n{line}\n")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_boxes(path)
    path.write_text("name,x0,y0,x1,y1,object\nchelsea,1,1,9,9,cat\n")
    with pytest.raises(ValueError, match="the header must be photo,x0,y0,x1,y1,object"):
        read_boxes(path)


# -- the --quick run end to end -----------------------------------------------------------------


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("imagenet")
    assert main(["--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "metrics.json").read_text())


def test_quick_run_writes_report_and_figures(quick):
    out, m = quick
    for name in ("photo_chelsea", "photo_coffee", "overview", "canvas", "home_cat", "leaderboard"):
        assert m["figures"][name] == f"{name}.png"
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    report = (out / "report.md").read_text()
    for png in m["figures"].values():
        assert f"]({png})" in report
    assert m["methods"] == ["gradcam", "guided_gradcam"] and m["layer"] == "_swish@-1"


def test_cat_photo_top1_is_a_cat_and_coffee_is_espresso(quick):
    _, m = quick
    cat, coffee = m["photos"]["chelsea"]["top5"], m["photos"]["coffee"]["top5"]
    assert cat[0]["index"] in CAT_CLASSES
    assert sum(c["p"] for c in cat if c["index"] in CAT_CLASSES) > 0.8  # three cat kinds
    assert coffee[0]["name"] == "espresso" and coffee[0]["p"] > 0.8
    probs = [c["p"] for c in cat]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-3


def test_canvas_each_class_explained_in_its_own_half(quick):
    _, m = quick
    cv = m["canvas"]
    assert cv["classes"]["chelsea"]["index"] in CAT_CLASSES
    assert cv["classes"]["coffee"]["name"] == "espresso"
    assert len(cv["orders"]) == 2  # cat left, then cat right: not a bias for one side
    for order in cv["orders"].values():
        for method in ("gradcam", "guided_gradcam"):
            for photo, res in order["methods"][method].items():
                assert res["share_in_own_half"] > 0.8, (method, photo, res)
                assert res["peak_in_own_half"], (method, photo)
    assert cv["mean_share_in_own_half"]["gradcam"] > 0.85


DEFAULT_COLUMNS = [
    "deletion", "insertion", "average_drop", "increase_in_confidence",
    "pointing_game", "energy_pointing_game", "relevance_mass", "relevance_rank",
    "randomisation", "random_logit", "sparseness", "complexity", "ms_per_map", "forwards_per_map",
]  # fmt: skip
"""camlib.evaluate's default metrics with boxes, in its category order."""


def test_quick_leaderboard_comes_from_camlib_evaluate_with_the_boxes(quick):
    out, m = quick
    lb = m["leaderboard"]
    assert set(lb["methods"]) == {"gradcam", "guided_gradcam", "random", "gaussian"}
    assert lb["metrics"] == DEFAULT_COLUMNS and not lb["dropped"]
    assert lb["photos"] == ["chelsea", "coffee"]
    boxes = read_boxes()  # metrics.json keeps each box as a list
    assert lb["boxes"] == {n: {**boxes[n], "box": list(boxes[n]["box"])} for n in lb["photos"]}
    rows = {e["method"]: e for e in lb["summary"]}
    for e in rows.values():
        assert all(e[f"{c}_n"] == 2 for c in DEFAULT_COLUMNS), e["method"]
    # the centred blob's maximum is the image centre (111.5, 111.5): inside both boxes
    assert rows["gaussian"]["pointing_game"] == 1.0
    # 2 photos in one forward pass, plus the one-row forward that finds the last call of
    # "_swish" ("@-1") on the explainer's first call: 3 rows for 2 maps
    assert rows["gradcam"]["forwards_per_map"] == 1.5
    assert rows["random"]["forwards_per_map"] == 0.0 and rows["random"]["ms_per_map"] >= 0
    for name in ("leaderboard.csv", "per_image.csv", "leaderboard.png"):
        assert (out / name).is_file(), name
    table = (out / "leaderboard.md").read_text()
    assert table == lb["markdown"] and table.startswith("| # | method | mean rank |")
    report = (out / "report.md").read_text()
    assert table in report and "## Which map to trust here: every method ranked" in report
    assert "| chelsea | 24, 48, 208, 224 | the cat's face |" in report
