"""``camlib evaluate`` and :func:`camlib.batch.evaluate_files`: real files, a tiny model.

Boxes and masks reach the metrics through four probe metrics registered here (they return
the box coordinates and the mask area each image's metric context holds), so the scaling
of a boxes CSV and the resizing of masks are checked end to end against hand-computed
values; the scores are checked against :class:`camlib.evaluation.Evaluator` called on the
same preprocessed tensors.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from camlib import cli
from camlib.batch import BatchError, evaluate_files
from camlib.metrics.registry import METRICS, register
from camlib.models_io import Preprocess
from camlib.pipeline import collect_inputs, load_annotations, resize_mask, scale_box

TINY = textwrap.dedent(
    """
    import torch
    from torch import nn

    def build():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
        ).eval()
    """
)

SIZES = {"a.png": (40, 56), "b.png": (33, 33), "sub/c.jpg": (48, 30)}  # (H, W)
BOXES = "file,x0,y0,x1,y1\nimages/a.png,10,5,30,20\nb,0,0,33,33\nc.jpg,7.5,0,30,47\n"
# Hand-computed: the 24 x 24 input pixels that cover each box (floor of the scaled x0, y0,
# ceiling of the scaled x1, y1). a: 10*24/56 = 4.29 -> 4, 5*24/40 = 3, 30*24/56 = 12.86 -> 13,
# 20*24/40 = 12;
# c: 7.5*24/30 = 6, 0, 30*24/30 = 24, 47*24/48 = 23.5 -> 24.
SCALED = {"a.png": [4, 3, 13, 12], "b.png": [0, 0, 24, 24], "sub/c.jpg": [6, 0, 24, 24]}
PROBES = ("tbox_x0", "tbox_y0", "tbox_x1", "tbox_y1")
FAST = ["--methods", "gradcam,guided_backprop", "--size", "24", "--workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny model package, two PNGs, a JPEG in a subfolder, a corrupt PNG, a boxes CSV and
    a masks folder (nested for a and b, flat by stem for c)."""
    root = tmp_path_factory.mktemp("evaluate")
    (root / "evaltiny").mkdir()
    (root / "evaltiny" / "__init__.py").write_text("")
    (root / "evaltiny" / "nets.py").write_text(TINY)
    rng = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        path = root / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([xx * 255 // w, yy * 255 // h, rng.integers(0, 255, (h, w))], -1)
        Image.fromarray(img.astype(np.uint8)).save(path, quality=95)
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (root / "boxes.csv").write_text(BOXES)
    masks = root / "masks"
    (masks / "sub").mkdir(parents=True)
    a = np.zeros((40, 56), np.uint8)
    a[:20] = 255  # the top half
    Image.fromarray(a).save(masks / "a.png")
    b = np.zeros((33, 33, 3), np.uint8)
    b[10:20, 5:9, 1] = 7  # RGB: any non-zero channel is the object
    Image.fromarray(b).save(masks / "b.png")
    c = np.zeros((48, 30), np.uint8)
    c[:, 15:] = 1
    Image.fromarray(c).save(masks / "c.png")  # flat: found by the stem of sub/c.jpg
    return root


@pytest.fixture(scope="module", autouse=True)
def probe_metrics():
    """Metrics that report what the metric context holds: the boxes and the mask area."""
    keys = []

    def add(name, fn, needs):
        register(name, category="localisation", higher_is_better=True, needs=frozenset(needs))(fn)
        keys.append(name)

    for i, name in enumerate(PROBES):
        add(name, lambda ctx, i=i: ctx.boxes[:, i].double(), {"boxes"})
    add("tmask_area", lambda ctx: ctx.masks.flatten(1).sum(1).double(), {"masks"})
    yield
    for key in [k for k, cls in dict.items(METRICS) if cls.name in keys]:
        dict.__delitem__(METRICS, key)


def in_dir(path: Path, argv: list[str]) -> int:
    cwd = Path.cwd()
    os.chdir(path)
    try:
        return cli.main(argv)
    finally:
        os.chdir(cwd)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_tiny(work: Path) -> nn.Module:
    sys.path.insert(0, str(work))
    try:
        from evaltiny.nets import build  # noqa: PLC0415
    finally:
        sys.path.remove(str(work))
    return build()


def preprocessed(work: Path, names) -> torch.Tensor:
    pre = Preprocess(size=(24, 24))
    return torch.stack(
        [pre(torch.from_numpy(np.array(Image.open(work / "images" / n)))) for n in names]
    )


class Counting(nn.Module):
    """Wraps a model and counts its forward passes (images, not calls)."""

    def __init__(self, net: nn.Module, stop_after: int | None = None) -> None:
        super().__init__()
        self.net, self.images, self.stop_after = net, 0, stop_after
        self.train(net.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        if self.stop_after is not None and self.images > self.stop_after:
            raise KeyboardInterrupt  # Ctrl-C in the middle of a run
        return self.net(x)


# -- end to end ---------------------------------------------------------------------------------
def test_evaluate_end_to_end_with_boxes(work: Path, capsys) -> None:
    metrics = "deletion,sparseness," + ",".join(PROBES)
    argv = ["evaluate", "evaltiny.nets:build", "images", "--out", "ev", "--boxes", "boxes.csv"]
    code = in_dir(work, [*argv, *FAST, "--metrics", metrics, "-b", "4"])
    out = capsys.readouterr().out
    assert code == 1  # broken.png failed, every other image was scored
    assert "scored 3, skipped 0 already complete, failed 1" in out
    assert "images/broken.png: unreadable: UnidentifiedImageError" in out
    ev = work / "ev"
    for name in ("leaderboard.csv", "leaderboard.md", "per_image.csv", "leaderboard.png"):
        assert (ev / name).stat().st_size > 0
    assert read_csv(ev / "failed.csv") == [
        {
            "file": "images/broken.png",
            "status": "unreadable",
            "message": "UnidentifiedImageError: cannot identify image file 'images/broken.png'",
        }
    ]
    rows = read_csv(ev / "per_image.csv")
    methods = ["gradcam", "guided_backprop", "random", "gaussian"]
    files = [f"images/{n}" for n in SIZES]
    assert sorted((r["image"], r["method"]) for r in rows) == sorted(
        (f, m) for f in files for m in methods
    )  # one row per image x method, each with every metric
    assert set(rows[0]) == {"image", "method", "class", "deletion", "sparseness", *PROBES}
    for r in rows:  # the boxes as the metrics saw them: scaled to 24 x 24 by hand
        name = r["image"].removeprefix("images/")
        assert [int(float(r[p])) for p in PROBES] == SCALED[name]

    # The scores equal the Evaluator's on the same preprocessed tensors (one batch of 3).
    from camlib.evaluation import Evaluator

    model = load_tiny(work)
    x = preprocessed(work, SIZES)
    boxes = torch.tensor([SCALED[n] for n in SIZES])
    ref = Evaluator(model, ["gradcam", "guided_backprop"], ["deletion", "sparseness"], boxes=True)
    want = {(files[r["image"]], r["method"]): r for r in ref.score(x, boxes=boxes)}
    for r in rows:
        w = want[(r["image"], r["method"])]
        assert int(r["class"]) == w["class"]
        for m in ("deletion", "sparseness"):
            assert float(r[m]) == pytest.approx(w[m], rel=1e-5, abs=1e-7)

    board = read_csv(ev / "leaderboard.csv")
    assert sorted(r["method"] for r in board) == sorted(methods)
    by = {r["method"]: r for r in board}
    for m in methods:  # the leaderboard's means are the means of the per-image rows
        vals = [float(r["deletion"]) for r in rows if r["method"] == m]
        assert float(by[m]["deletion"]) == pytest.approx(np.mean(vals), rel=1e-9)
        assert by[m]["deletion_n"] == "3"
    md = (ev / "leaderboard.md").read_text().splitlines()
    assert md[0].startswith("| # | method | mean rank | ") and "deletion ↓" in md[0]
    assert len([line for line in md if re.match(r"\| \d \| ", line)]) == 4

    page = (ev / "report.html").read_text()
    # Self-contained: every picture is inline, nothing points at a file or the network.
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in page and "https://" not in page and "href=" not in page
    # The figure, then 3 best + 3 worst images (all 3 scored) for each of the 2 methods.
    assert len(srcs) == 1 + 2 * 6
    assert "Best and worst images by deletion (lower is better)" in page
    assert "images/broken.png" in page and "<h3>gradcam</h3>" in page
    # Each card's overlay is the method's map over the image (decoded back from the page).
    import base64

    import cv2

    first = re.search(r'<figure title="([^"]+)"><img src="data:image/png;base64,([^"]+)"', page)
    assert first is not None
    pic = cv2.imdecode(np.frombuffer(base64.b64decode(first.group(2)), np.uint8), 1)
    h, w = SIZES[first.group(1).removeprefix("images/")]
    assert pic.shape == (h, w, 3)  # small images are shown at their own size


def test_plan_prints_and_runs_nothing(work: Path, capsys) -> None:
    argv = ["evaluate", "evaltiny.nets:build", "images", "--out", "planned", *FAST, "--plan"]
    assert in_dir(work, [*argv, "--metrics", "deletion"]) == 0
    text = capsys.readouterr().out
    assert "gradcam" in text and "deletion" in text
    assert not (work / "planned").exists()


# -- resume ---------------------------------------------------------------------------------------
def test_resume_skips_finished_images_and_loses_none(work: Path, tmp_path: Path) -> None:
    items = collect_inputs([work / "images" / n for n in SIZES])
    kw = dict(
        preprocess=Preprocess(size=(24, 24)),
        methods=["gradcam"],
        metrics=["deletion", "sparseness"],
        layer="net.4",  # named: no probe forward pass for "auto", so every image costs the same
        batch_size=1,
        workers=0,
        progress=False,
    )
    out = tmp_path / "run"
    # Interrupted (Ctrl-C) in the second image's forward passes: the first image's record
    # is complete, nothing is half-written.
    net = load_tiny(work)
    first = Counting(net)
    evaluate_files(first, items, tmp_path / "full", **kw)  # the uninterrupted reference
    per_image = first.images // 3
    assert first.images == 3 * per_image > 0
    with pytest.raises(KeyboardInterrupt):
        evaluate_files(Counting(net, stop_after=per_image + 1), items, out, **kw)
    assert sorted(p.name for p in (out / "records").iterdir()) == ["a.json"]
    assert not list(out.rglob("*.tmp"))
    record = json.loads((out / "records" / "a.json").read_text())
    assert [r["method"] for r in record["rows"]] == ["gradcam", "random", "gaussian"]

    # --resume: only the two unfinished images are scored again.
    mtime = (out / "records" / "a.json").stat().st_mtime_ns
    again = Counting(net)
    summary = evaluate_files(again, items, out, resume=True, **kw)
    assert (summary.resumed, summary.explained) == (1, 2)
    assert again.images == 2 * per_image
    assert (out / "records" / "a.json").stat().st_mtime_ns == mtime
    rows = read_csv(out / "per_image.csv")
    assert len(rows) == 3 * 3  # no image lost: 3 images x (gradcam + 2 baselines)
    full = read_csv(tmp_path / "full" / "per_image.csv")
    for mine, ref in zip(rows, full, strict=True):  # same numbers as the uninterrupted run
        assert (mine["image"], mine["method"]) == (ref["image"], ref["method"])
        if mine["method"] != "random":  # random draws depend on the batch (documented)
            assert float(mine["deletion"]) == pytest.approx(float(ref["deletion"]), rel=1e-6)

    # Nothing left to do: no forward pass at all. Another seed: every image again.
    idle = Counting(net)
    assert evaluate_files(idle, items, out, resume=True, **kw).resumed == 3
    assert idle.images == 0
    other = Counting(net)
    assert evaluate_files(other, items, out, resume=True, seed=1, **kw).explained == 3


def test_resume_redoes_an_image_whose_box_changed(work: Path, tmp_path: Path) -> None:
    items = collect_inputs([work / "images" / n for n in SIZES])
    csv_path = tmp_path / "boxes.csv"
    csv_path.write_text(BOXES.replace("images/a.png", str(work / "images" / "a.png")))
    kw = dict(
        preprocess=Preprocess(size=(24, 24)),
        methods=["gradcam"],
        metrics=["tbox_x0"],
        boxes=csv_path,
        batch_size=4,
        workers=0,
        progress=False,
    )
    net = load_tiny(work)
    evaluate_files(net, items, tmp_path / "o", **kw)
    csv_path.write_text(csv_path.read_text().replace("b,0,0,33,33", "b,14,0,33,33"))
    counting = Counting(net)
    summary = evaluate_files(counting, items, tmp_path / "o", resume=True, **kw)
    assert (summary.resumed, summary.explained) == (2, 1)
    rows = {r["image"]: r for r in read_csv(tmp_path / "o" / "per_image.csv")}
    assert float(rows[str(work / "images" / "b.png")]["tbox_x0"]) == 10  # floor(14*24/33)


# -- boxes and masks --------------------------------------------------------------------------------
def test_scale_box_is_exact() -> None:
    assert scale_box([10, 5, 30, 20], (40, 56), (24, 24)) == [4, 3, 13, 12]
    assert scale_box([Fraction("7.5"), 0, 30, 47], (48, 30), (24, 24)) == [6, 0, 24, 24]
    # Upscaling: a 1-pixel box covers the input pixels of its whole footprint.
    assert scale_box([1, 1, 2, 2], (4, 4), (10, 10)) == [2, 2, 5, 5]
    # x1 = 25 of a 50-pixel-wide image at 14 pixels is exactly 7; a float scale factor gives
    # 7.000000000000001, whose ceiling would take one input pixel too many.
    assert 25 * (14 / 50) > 7
    assert scale_box([0, 0, 25, 1], (10, 50), (10, 14)) == [0, 0, 7, 1]


def test_masks_read_resized_and_scored(work: Path, capsys) -> None:
    # Nearest-neighbour on pixel centres: input row i samples image row floor((i + .5) * 40/24),
    # in the top half (< 20) for i <= 11: 12 rows x 24 columns.
    top = torch.zeros(40, 56, dtype=torch.bool)
    top[:20] = True
    assert int(resize_mask(top, (24, 24)).sum()) == 12 * 24
    cols = torch.zeros(48, 30, dtype=torch.bool)
    cols[:, 15:] = True  # columns 15..29 of 30 -> input columns j with (j + .5) * 30/24 >= 15
    assert int(resize_mask(cols, (24, 24)).sum()) == 24 * 12
    # b: rows 10..19 (i with 10 <= (i + .5) * 33/24 < 20: i = 7..14) x columns 5..8
    # (5 <= (j + .5) * 33/24 < 9: j = 4..6; j = 3 samples column 4.8 -> 4, outside).
    want = {"a.png": 12 * 24, "b.png": 8 * 3, "sub/c.jpg": 24 * 12}
    argv = ["evaluate", "evaltiny.nets:build", *[f"images/{n}" for n in SIZES], "--out", "mk"]
    assert in_dir(work, [*argv, "--masks", "masks", *FAST, "--metrics", "tmask_area"]) == 0
    capsys.readouterr()
    for r in read_csv(work / "mk" / "per_image.csv"):
        assert float(r["tmask_area"]) == want[r["image"].removeprefix("images/")]


# -- bad input: clear errors before any forward pass --------------------------------------------
BAD = [
    ("file,x0,y0,x1,y1\nimages/zzz.png,0,0,1,1\n", "names 'images/zzz.png', which is not among"),
    (
        BOXES.replace("10,5,30,20", "10,5,57,20"),
        r"line 2: the box \(10, 5, 57, 20\) of '.*a.png' does not fit its image of \(H, W\) = "
        r"\(40, 56\): need 0 <= x0 < x1 <= 56 and 0 <= y0 < y1 <= 40",
    ),
    (BOXES.replace("10,5,30,20", "30,5,10,20"), r"need 0 <= x0 < x1 <= 56"),
    (BOXES + "a,1,1,2,2\n", r"line 5: a second box for '.*a.png' \(first on line 2\)"),
    (BOXES.replace("b,0,0,33,33\n", ""), r"has no box for 1 of the 3 images: .*b.png"),
    ("file,x,y,w,h\na,1,1,2,2\n", r"needs a header line with file, x0, y0, x1, y1.*missing: x0"),
    (BOXES.replace("10,5,30,20", "10,five,30,20"), r"line 2: x0, y0, x1, y1 must be numbers"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_boxes_are_refused_with_the_reason(work: Path, tmp_path: Path, text, message) -> None:
    items = collect_inputs([work / "images" / n for n in SIZES])
    (tmp_path / "boxes.csv").write_text(text.replace("images/a.png", str(work / "images/a.png")))
    with pytest.raises(BatchError, match=message):
        load_annotations(items, boxes=tmp_path / "boxes.csv")


def test_bad_masks_are_refused_with_the_reason(work: Path, tmp_path: Path) -> None:
    items = collect_inputs([work / "images" / n for n in SIZES])
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(np.ones((10, 10), np.uint8)).save(masks / "a.png")
    Image.fromarray(np.ones((33, 33), np.uint8)).save(masks / "b.png")
    Image.fromarray(np.ones((48, 30), np.uint8)).save(masks / "c.png")
    with pytest.raises(BatchError, match=r"mask '.*a.png' is \(H, W\) = \(10, 10\) but its "):
        load_annotations(items, masks=masks)
    (masks / "a.png").unlink()
    with pytest.raises(BatchError, match=r"has no mask for 1 of the 3 images: '.*a.png' \(looked"):
        load_annotations(items, masks=masks)
    with pytest.raises(BatchError, match="masks folder .* does not exist"):
        load_annotations(items, masks=tmp_path / "nope")


def test_bad_settings_stop_before_any_forward_pass(work: Path, capsys) -> None:
    net = Counting(load_tiny(work))
    common = dict(
        preprocess=Preprocess(size=(24, 24)), methods=["gradcam"], workers=0, progress=False
    )
    images = [work / "images" / n for n in SIZES]
    cases = [
        ({"metrics": ["pointing_game"]}, r"metric 'pointing_game' needs object boxes or masks"),
        ({"targets": "top-k=2"}, "use 'top'"),
        ({"metrics": ["deletion"], "primary": "pointing"}, "primary metric 'pointing' is not"),
        ({"boxes": work / "nope.csv"}, "does not exist"),
    ]
    for kw, message in cases:
        with pytest.raises(BatchError, match=message):
            evaluate_files(net, images, work / "bad", **{**common, **kw})
    assert net.images == 0 and not (work / "bad").exists()
    # The command line says the same and exits with 2.
    argv = ["evaluate", "evaltiny.nets:build", "images/a.png", "--out", "bad", *FAST]
    assert in_dir(work, [*argv, "--metrics", "pointing_game"]) == 2
    assert "--boxes FILE.csv" in capsys.readouterr().err
    assert in_dir(work, [*argv, "--option", "nope=1"]) == 2
    assert "none of the methods evaluated (gradcam, guided_backprop) takes 'nope'" in (
        capsys.readouterr().err
    )
    assert not (work / "bad").exists()


# -- torchrun -------------------------------------------------------------------------------------
def test_torchrun_two_processes_match_one(work: Path) -> None:
    args = ["evaluate", "evaltiny.nets:build", "images", *FAST, "--metrics", "deletion", "-b", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(work))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "camlib"]
        + [*args, "--out", "two"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # broken.png
    assert "scored 3 by 2 processes" in proc.stdout
    assert in_dir(work, [*args, "--out", "one"]) == 1
    one, two = (read_csv(work / d / "per_image.csv") for d in ("one", "two"))
    assert [(r["image"], r["method"]) for r in one] == [(r["image"], r["method"]) for r in two]
    for a, b in zip(one, two, strict=True):
        if a["method"] != "random":
            assert float(a["deletion"]) == pytest.approx(float(b["deletion"]), rel=1e-6)
    records = sorted(p.name for p in (work / "two" / "records").rglob("*.json"))
    assert records == ["a.json", "b.json", "c.json"]


def test_method_options_go_to_the_methods_that_take_them() -> None:
    parse = cli._dotted_option
    assert parse("gradcam++.batch_size=8") == ("gradcam++", "batch_size", 8)
    assert parse("fuse=max") == ("", "fuse", "max")
    pairs = [parse("batch_size=8"), parse("gradcam.fuse='max'")]
    # batch_size goes to the perturbation methods only; a named option to its method.
    options = cli._method_options(pairs, ["gradcam", "scorecam", "ablationcam"])
    assert options == {
        "scorecam": {"batch_size": 8},
        "ablationcam": {"batch_size": 8},
        "gradcam": {"fuse": "max"},
    }
    with pytest.raises(BatchError, match="none of the methods evaluated \\(gradcam\\) takes"):
        cli._method_options([parse("batch_size=8")], ["gradcam"])
