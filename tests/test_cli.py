"""The ``camlib`` command and :mod:`camlib.batch`: real image files, real subprocesses.

Every run writes PNG/JPEG files, runs ``camlib explain`` (``python -m camlib``, the
console script, ``torchrun -m camlib``) and checks the written maps against camlib's
library call on the same preprocessed tensors.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import camlib
from camlib import cli, plugins
from camlib.batch import collect_inputs, parse_targets
from camlib.maps import normalize_minmax, upsample
from camlib.models_io import GRAY_MEAN, IMAGENET_MEAN, ModelLoadError, Preprocess, load_model

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

    def gray():
        torch.manual_seed(1)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(4, 3)).eval()
    """
)

PLUGIN = textwrap.dedent(
    """
    from camlib.methods.families import ActivationCAM

    class MeanActivation(ActivationCAM):
        '''The channel mean of the activations, ReLU'd.'''

        def combine(self, act, layer, cap):
            return act.mean(1).relu_()
    """
)

SIZES = {"a.png": (40, 56), "b.png": (33, 33), "sub/c.jpg": (48, 30)}


def run(args: list[str], cwd: Path, *, extra_path: list[Path] = (), timeout: int = 240):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(map(str, extra_path)))
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with a tiny model package, two PNGs, a JPEG in a subfolder, a corrupt PNG."""
    root = tmp_path_factory.mktemp("cli")
    (root / "tinypkg").mkdir()
    (root / "tinypkg" / "__init__.py").write_text("")
    (root / "tinypkg" / "nets.py").write_text(TINY)
    rng = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        path = root / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([xx * 255 // w, yy * 255 // h, rng.integers(0, 255, (h, w))], -1)
        Image.fromarray(img.astype(np.uint8)).save(path, quality=95)
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return root


def tiny_model(work: Path) -> torch.nn.Module:
    sys.path.insert(0, str(work))
    try:
        from tinypkg.nets import build  # noqa: PLC0415
    finally:
        sys.path.remove(str(work))
    return build()


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def expected_map(model, image_path: Path, pre: Preprocess, layer: str = "auto") -> tuple:
    """Library call on the preprocessed tensor -> raw map upsampled to the image, [0, 1]."""
    image = torch.from_numpy(np.array(Image.open(image_path).convert("RGB")))
    x = pre(image)[None]
    with camlib.GradCAM(model, layer) as cam:
        raw = cam(x, upsample=False, normalize=False)
        cls, score = int(cam.classes[0]), float(cam.scores[0])
    full = normalize_minmax(upsample(raw, tuple(image.shape[:2])))[0]
    return full.numpy(), cls, score, image.numpy()


# -- camlib explain on a folder, a corrupt file, then --resume -------------------------------
def test_explain_folder_then_resume(work: Path) -> None:
    out = work / "out"
    args = ["explain", "tinypkg.nets:build", "images", "--out", "out", "--size", "24", "-b", "2"]
    proc = run([sys.executable, "-m", "camlib", *args, "--workers", "2"], work)
    assert proc.returncode == 1, proc.stderr  # one input failed
    assert "images/broken.png: unreadable" in proc.stdout
    assert "explained 3" in proc.stdout

    rows = {r["file"]: r for r in read_csv(out / "results.csv")}
    assert set(rows) == {f"images/{n}" for n in [*SIZES, "broken.png"]}
    assert rows["images/broken.png"]["status"] == "unreadable"
    assert "UnidentifiedImageError" in rows["images/broken.png"]["message"]
    model = tiny_model(work)
    pre = Preprocess(size=(24, 24))
    for name, (h, w) in SIZES.items():
        row = rows[f"images/{name}"]
        assert row["status"] == "ok" and row["method"] == "gradcam" and row["layer"] == "4"
        saved = np.load(out / row["map"])
        assert saved.shape == (h, w) and saved.dtype == np.float32
        want, cls, score, image = expected_map(model, work / "images" / name, pre)
        np.testing.assert_allclose(saved, want, atol=1e-5)
        assert int(row["class_index"]) == cls
        assert float(row["score"]) == pytest.approx(score, rel=1e-5)
        overlay = np.array(Image.open(out / row["overlay"]))
        assert overlay.shape == (h, w, 3)  # PNG is lossless: the blend of image and map
        np.testing.assert_allclose(overlay, camlib.viz.overlay(image, saved), atol=1)
        assert row["overlay"] == f"overlays/{Path(name).with_suffix('.png').as_posix()}"
    page = (out / "index.html").read_text()
    assert page.count("<figure") == 4 and "thumbs/sub/c.jpg" in page and "unreadable" in page
    assert "http" not in page.replace('src="thumbs', "")  # nothing fetched from the network

    # --resume with the console script: only the image whose map was deleted is redone.
    records = {n: out / "records" / Path(n).with_suffix(".json") for n in SIZES}
    before = {n: p.stat().st_mtime_ns for n, p in records.items()}
    (out / rows["images/b.png"]["map"]).unlink()
    script = Path(sys.executable).parent / "camlib"
    proc = run([str(script), *args, "--workers", "0", "--resume", "--no-progress"], work)
    assert proc.returncode == 1, proc.stderr  # broken.png is tried again and fails again
    assert "explained 1, skipped 2 already complete, failed 1" in proc.stdout
    after = {n: p.stat().st_mtime_ns for n, p in records.items()}
    assert after["a.png"] == before["a.png"] and after["sub/c.jpg"] == before["sub/c.jpg"]
    assert after["b.png"] > before["b.png"]
    np.testing.assert_allclose(
        np.load(out / "maps/b.npy"), expected_map(model, work / "images/b.png", pre)[0], atol=1e-5
    )
    assert {r["file"] for r in read_csv(out / "results.csv")} == set(rows)
    assert not list(out.rglob("*.tmp"))  # every write was renamed into place


# -- torchrun: 2 processes give the same files and maps as 1 -----------------------------------
def test_torchrun_two_processes_match_one(work: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=7)
    torch.save(net.state_dict(), work / "r18.pt")
    args = [
        "explain",
        "torchvision:resnet18",
        "--weights",
        "r18.pt",
        "images/a.png",
        "images/b.png",
        "images/sub",
        "--size",
        "32",
        "-b",
        "2",
        "--workers",
        "0",
        "--no-progress",
    ]
    proc = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "-m",
            "camlib",
            *args,
            "--out",
            "two",
        ],
        work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "explained 3 by 2 processes" in proc.stdout
    cwd = Path.cwd()
    os.chdir(work)
    try:
        assert cli.main([*args, "--out", "one"]) == 0  # one process, in this one
    finally:
        os.chdir(cwd)
    files = {
        d: sorted(p.relative_to(work / d).as_posix() for p in (work / d).rglob("*") if p.is_file())
        for d in ("one", "two")
    }
    assert files["one"] == files["two"] and "maps/c.npy" in files["one"]
    one, two = read_csv(work / "one/results.csv"), read_csv(work / "two/results.csv")
    assert (
        [r["file"] for r in one]
        == [r["file"] for r in two]
        == ["images/a.png", "images/b.png", "images/sub/c.jpg"]
    )
    for a, b in zip(one, two, strict=True):
        assert a["class_index"] == b["class_index"] and 0 <= int(a["class_index"]) < 7
        np.testing.assert_allclose(
            np.load(work / "one" / a["map"]), np.load(work / "two" / b["map"]), atol=1e-5
        )


# -- plugins -----------------------------------------------------------------------------------
@pytest.fixture
def plugin_site(tmp_path: Path) -> Path:
    """A package installed by hand: its module and a .dist-info with two entry points, one
    good and one whose module does not exist."""
    site = tmp_path / "site"
    (site / "camlib_testplugin").mkdir(parents=True)
    (site / "camlib_testplugin" / "__init__.py").write_text(PLUGIN)
    info = site / "camlib_testplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: camlib-testplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[camlib.methods]\nmeanact = camlib_testplugin:MeanActivation\n"
        "brokenplug = camlib_testplugin_missing:Nope\n"
    )
    return site


def test_plugin_found_by_get_method_without_import(plugin_site: Path) -> None:
    sys.path.insert(0, str(plugin_site))
    plugins._reset()
    try:
        assert "camlib_testplugin" not in sys.modules
        with pytest.warns(RuntimeWarning, match="brokenplug"):
            cls = camlib.get_method("meanact")
        assert cls.__module__ == "camlib_testplugin" and cls.name == "meanact"
        assert "meanact" in camlib.available_methods()
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(4, 2),
        ).eval()
        x = torch.randn(2, 3, 9, 9)
        act = model[1](model[0](x))
        raw = camlib.explain(
            model, x, method="meanact", target_layer="1", upsample=False, normalize=False
        )
        torch.testing.assert_close(raw, act.mean(1).relu())
    finally:
        sys.path.remove(str(plugin_site))
        for key in [k for k, v in camlib.METHODS.items() if v.__module__ == "camlib_testplugin"]:
            dict.__delitem__(camlib.METHODS, key)
        sys.modules.pop("camlib_testplugin", None)
        plugins._reset()


def test_plugin_method_on_the_command_line(work: Path, plugin_site: Path) -> None:
    proc = run(
        [
            sys.executable,
            "-m",
            "camlib",
            "explain",
            "tinypkg.nets:build",
            "images/a.png",
            "--out",
            "plug",
            "--method",
            "meanact",
            "--layer",
            "1",
            "--size",
            "24",
            "--workers",
            "0",
            "--no-progress",
        ],
        work,
        extra_path=[plugin_site, work],
    )
    assert proc.returncode == 0, proc.stderr
    assert "brokenplug" in proc.stderr  # the broken plugin is named, and nothing else breaks
    (row,) = read_csv(work / "plug/results.csv")
    assert row["method"] == "meanact" and row["layer"] == "1"
    model = tiny_model(work)
    image = torch.from_numpy(np.array(Image.open(work / "images/a.png")))
    with torch.no_grad():
        act = model[:2](Preprocess(size=(24, 24))(image)[None])
    want = normalize_minmax(upsample(act.mean(1).relu(), tuple(image.shape[:2])))[0]
    np.testing.assert_allclose(np.load(work / "plug" / row["map"]), want.numpy(), atol=1e-5)


# -- security: a pickled model is refused unless --trust-pickle -------------------------------
class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_model_refused_without_flag(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    torch.save(_Evil(marker), evil)  # what torch.save(model) writes: a pickle
    proc = run([sys.executable, "-m", "camlib", "layers", str(evil)], tmp_path)
    assert proc.returncode == 2
    assert "--trust-pickle" in proc.stderr and "runs whatever code" in proc.stderr
    assert not marker.exists()
    # The same file with the flag: the pickle does run (so the check above can fail) and
    # camlib reports it is no model.
    assert cli.main(["layers", str(evil), "--trust-pickle"]) == 2
    assert marker.exists()
    assert "not a torch.nn.Module" in capsys.readouterr().err


def test_state_dict_as_model_points_to_weights(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(2)}, tmp_path / "sd.pt")
    with pytest.raises(ModelLoadError, match="--weights"):
        load_model(str(tmp_path / "sd.pt"))


# -- layers ------------------------------------------------------------------------------------
def test_layers_text_and_json(work: Path, capsys) -> None:
    cwd = Path.cwd()
    os.chdir(work)
    try:
        assert cli.main(["layers", "tinypkg.nets:build", "--input-size", "3,10,12"]) == 0
        text = capsys.readouterr().out
        assert cli.main(["layers", "tinypkg.nets:build", "--input-size", "3,10,12", "--json"]) == 0
        table = json.loads(capsys.readouterr().out)
    finally:
        os.chdir(cwd)
    assert max(len(line) for line in text.splitlines()) <= 100
    names = [r["name"] for r in table["layers"]]
    assert names == ["0", "1", "2", "3", "4", "5", "6", "7"]  # execution order
    shapes = {r["name"]: r["shape"] for r in table["layers"]}
    assert shapes["0"] == [1, 8, 10, 12] and shapes["2"] == [1, 8, 5, 6] and shapes["7"] == [1, 5]
    assert table["auto"] == "4" and [r["name"] for r in table["layers"] if r["auto"]] == ["4"]
    line4 = next(line for line in text.splitlines() if line.split()[:2] == ["4", "4"])
    assert "16x5x6" in line4 and "<- auto" in line4
    # how "auto" chose: every candidate with its verdict, the chosen one named
    chosen = [c for c in table["auto_candidates"] if c["verdict"] == "chosen"]
    assert [c["name"] for c in chosen] == ["4"]
    assert "How 'auto' chose" in text and any(
        line.startswith("4 ") and "chosen" in line for line in text.splitlines()
    )


def test_layers_marks_reused_modules(capsys) -> None:
    from conftest import SharedReluNet

    table = cli.layer_table(SharedReluNet().eval(), torch.zeros(1, 1, 8, 8))
    reused = [r for r in table["layers"] if r["runs"] > 1]
    assert reused and all(r["name"] == f"{r['module']}@{r['call']}" for r in reused)
    text = cli.format_layers(table, "SharedReluNet")
    assert f"x{reused[0]['runs']}" in text and max(map(len, text.splitlines())) <= 100
    auto = [r for r in table["layers"] if r["auto"]]
    assert len(auto) == 1 and table["auto"].split("@")[0] == auto[0]["module"]


# -- options, devices, preprocessing -----------------------------------------------------------
def test_amp_and_topk_in_process(work: Path) -> None:
    cwd = Path.cwd()
    os.chdir(work)
    common = [
        "explain",
        "tinypkg.nets:build",
        "images/a.png",
        "--size",
        "24",
        "--workers",
        "0",
        "--no-progress",
    ]
    try:
        assert cli.main([*common, "--out", "k2", "--targets", "top-k=2"]) == 0
        assert cli.main([*common, "--out", "amp", "--amp"]) == 0
    finally:
        os.chdir(cwd)
    rows = read_csv(work / "k2/results.csv")
    assert [r["rank"] for r in rows] == ["1", "2"]
    model = tiny_model(work)
    image = torch.from_numpy(np.array(Image.open(work / "images/a.png")))
    x = Preprocess(size=(24, 24))(image)[None]
    top = model(x)[0].topk(2).indices.tolist()
    assert [int(r["class_index"]) for r in rows] == top
    second = camlib.explain(model, x, targets=top[1], upsample=False, normalize=False)
    want = normalize_minmax(upsample(second, tuple(image.shape[:2])))[0].numpy()
    np.testing.assert_allclose(np.load(work / "k2/maps/a.top2.npy"), want, atol=1e-5)
    fp32, bf16 = np.load(work / "k2/maps/a.top1.npy"), np.load(work / "amp/maps/a.npy")
    assert not np.array_equal(fp32, bf16)  # autocast did run the model in bfloat16
    np.testing.assert_allclose(bf16, fp32, atol=0.1)


def test_device_cuda_accepted_or_clear_error(work: Path, capsys) -> None:
    code = cli.main(
        [
            "explain",
            str(work / "tinypkg/nets.py") + ":build",
            str(work / "images"),
            "--out",
            str(work / "cuda"),
            "--device",
            "cuda",
            "--no-progress",
        ]
    )
    if torch.cuda.is_available():
        assert code == 1  # explained on the GPU; broken.png still fails
    else:
        assert code == 2
        assert "CUDA is not available" in capsys.readouterr().err
        assert not (work / "cuda").exists()  # nothing loaded or written


def test_preprocessing_defaults(work: Path) -> None:
    sys.path.insert(0, str(work))
    try:
        gray = load_model("tinypkg.nets:gray")
        rgb = load_model("tinypkg.nets:build", size=[20, 30], mean=[0.5], std=[0.25])
        tv = load_model("torchvision:resnet18")
    finally:
        sys.path.remove(str(work))
    assert gray.preprocess.channels == 1 and gray.preprocess.mean == GRAY_MEAN
    assert tv.preprocess.size == (224, 224) and tv.preprocess.mean == IMAGENET_MEAN
    assert rgb.preprocess.size == (20, 30) and rgb.preprocess.mean == (0.5, 0.5, 0.5)
    # A constant image of value v becomes (v / 255 - mean) / std everywhere.
    x = rgb.preprocess(torch.full((7, 9, 3), 51, dtype=torch.uint8))
    assert x.shape == (3, 20, 30)
    torch.testing.assert_close(x, torch.full((3, 20, 30), (51 / 255 - 0.5) / 0.25))
    with pytest.raises(ModelLoadError, match="torchvision has no model 'resnet19'"):
        load_model("torchvision:resnet19")


def test_parse_targets_and_inputs(work: Path) -> None:
    assert parse_targets("top") == ("top", 1)
    assert parse_targets("top-k=3") == ("top", 3)
    assert parse_targets("207") == ("class", 207)
    with pytest.raises(ValueError, match="top-k=K"):
        parse_targets("best")
    items = collect_inputs([work / "images", str(work / "images" / "*.png")])
    assert [i.name for i in items] == ["a", "b", "broken", "sub/c"]  # each file once
    with pytest.raises(ValueError, match="no such file"):
        collect_inputs([work / "nope.png"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cli.main(["methods"]) == 0


# -- camlib methods and explain with the methods that are not plain layer heatmaps ------------
def test_methods_says_what_each_method_returns_and_needs(capsys) -> None:
    assert cli.main(["methods"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert set(lines) == set(camlib.available_methods())
    assert "DeepFeatureFactorization" in lines["dff"]
    assert (
        "K concept maps (N, K, H, W)" in lines["dff"] and "not for camlib explain" in lines["dff"]
    )
    assert "heatmap, input only" in lines["fullgrad"]
    assert "signed (C, H, W) input map, input only" in lines["guided_backprop"]
    assert "transformers only" in lines["legrad"] and "class targets only" in lines["legrad"]
    assert "class targets only" in lines["finercam"] and "class targets only" in lines["cam"]
    assert lines["gradcam"].split()[2:] == ["heatmap,", "layer"]


def test_explain_refuses_concept_maps_before_any_image(work: Path, capsys) -> None:
    """DFF returns K concepts per image, factorised per batch: camlib explain refuses it,
    naming the method and the Python call to use, and writes nothing."""
    out = work / "dff"
    args = ["explain", "tinypkg.nets:build", "images", "--out", "dff", "--method", "dff"]
    cwd = Path.cwd()
    os.chdir(work)
    try:
        code = cli.main([*args, "--no-progress", "--workers", "0"])
    finally:
        os.chdir(cwd)
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot run method 'dff' (DeepFeatureFactorization)" in err
    assert "K concept maps per image" in err
    assert "camlib.DeepFeatureFactorization(model, layer).factorize(images)" in err
    assert not out.exists()


def test_explain_fullgrad_takes_no_layer_and_legrad_needs_a_transformer(work: Path, capsys):
    """FullGrad explains the input: its maps are the library's, and --layer is refused.
    LeGrad reads attention: refused on a CNN with the reason, and on a small torchvision
    ViT its maps are the library's."""
    from torchvision.models.vision_transformer import VisionTransformer

    from camlib.batch import explain_files

    common = ["tinypkg.nets:build", "images/a.png", "--size", "24", "--workers", "0"]
    cwd = Path.cwd()
    os.chdir(work)
    try:
        assert cli.main(["explain", *common, "--out", "fg", "-m", "fullgrad", "--no-progress"]) == 0
        code = cli.main(["explain", *common, "--out", "fg4", "-m", "fullgrad", "--layer", "4"])
        assert code == 2 and "explains the input only" in capsys.readouterr().err
        assert cli.main(["explain", *common, "--out", "lg", "-m", "legrad", "--no-progress"]) == 2
        assert "LeGrad explains vision transformers" in capsys.readouterr().err
    finally:
        os.chdir(cwd)
    image = torch.from_numpy(np.array(Image.open(work / "images/a.png")))
    size = tuple(image.shape[:2])
    x = Preprocess(size=(24, 24))(image)[None]
    raw = camlib.FullGrad(tiny_model(work))(x, upsample=False, normalize=False)
    want = normalize_minmax(upsample(raw, size))[0].numpy()
    np.testing.assert_allclose(np.load(work / "fg/maps/a.npy"), want, atol=1e-5)
    assert read_csv(work / "fg/results.csv")[0]["layer"] == "input"

    torch.manual_seed(0)
    vit = VisionTransformer(32, 16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    with torch.no_grad():
        vit.heads.head.weight.normal_()  # torchvision's head starts at zero: no gradient
    vit.eval()
    pre = Preprocess(size=(32, 32))
    summary = explain_files(
        vit, [work / "images/a.png"], work / "lgvit", preprocess=pre, method="legrad",
        workers=0, progress=False,
    )  # fmt: skip
    assert not summary.failed
    row = read_csv(work / "lgvit/results.csv")[0]
    assert row["status"] == "ok"  # every block LeGrad reads
    assert row["layer"] == "encoder.layers.encoder_layer_0,encoder.layers.encoder_layer_1"
    with camlib.LeGrad(vit) as legrad:
        raw = legrad(pre(image)[None], upsample=False, normalize=False)
        assert int(row["class_index"]) == int(legrad.classes[0])
    want = normalize_minmax(upsample(raw, size))[0].numpy()
    assert want.max() == 1
    np.testing.assert_allclose(np.load(work / "lgvit/maps/a.npy"), want, atol=1e-5)
