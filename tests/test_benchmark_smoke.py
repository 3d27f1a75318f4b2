"""Smoke test of benchmarks/throughput.py: a --quick run on the MNIST net, batch size 1.

Checks that the script runs end to end with every registered camlib method, the peers'
versions of them and the references (lower bound, no-grad forward, the perturbation
methods' floors), writes results.json, results.md and the plots, that every contender has
a positive throughput, that maps agree where the formulas agree (and only the pairs known
to differ by design differ), and that the Score-CAM memory study ran. Peers that are not
installed must be skipped with a note, not fail.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import camlib

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "throughput.py"

# peer name on the command line -> (module, contenders it provides)
PEERS = {
    "pytorch-grad-cam": ("pytorch_grad_cam", {
        "pgc_gradcam", "pgc_gradcampp", "pgc_xgradcam", "pgc_layercam", "pgc_hirescam",
        "pgc_scorecam", "pgc_ablationcam", "pgc_eigencam",
        # issue 18
        "pgc_gradcam_elementwise", "pgc_eigengradcam", "pgc_segeigencam", "pgc_kpcacam",
        "pgc_fem", "pgc_shapleycam", "pgc_fullgrad", "pgc_dff", "pgc_randomcam", "pgc_finercam",
        "pgc_sess", "pgc_refinecam",
    }),
    "captum": ("captum", {
        "captum_gradcam", "captum_gradcam_top", "captum_guided_gradcam", "captum_guided_backprop",
    }),
    "torchcam": ("torchcam", {
        "torchcam_cam", "torchcam_gradcam", "torchcam_gradcampp", "torchcam_xgradcam",
        "torchcam_layercam", "torchcam_scorecam",
        # issue 18 (torchcam_legrad: ViTs only, see test_legrad_against_torchcam_merged)
        "torchcam_sscam", "torchcam_iscam", "torchcam_smoothgradcampp", "torchcam_finercam",
        "torchcam_refinecam",
    }),
}  # fmt: skip
BOUNDS = {"lower_bound", "nograd_forward", "scorecam_floor", "ablationcam_floor",
          "sampled_score_floor", "smoothgrad_floor", "shapley_floor", "input_gradient_floor",
          "sess_floor"}  # fmt: skip
# Peers whose formula differs from camlib's on purpose (eps, centring, sign, softmax axis,
# random weights): their maps are reported as "differs by design" when they differ, never as
# a failure.
BY_DESIGN = {"pgc_gradcampp", "torchcam_gradcampp", "pgc_xgradcam", "torchcam_xgradcam",
             "pgc_scorecam", "torchcam_scorecam", "pgc_eigencam", "pgc_eigengradcam", "pgc_fem",
             "pgc_fullgrad", "pgc_randomcam", "torchcam_sscam", "torchcam_iscam",
             "torchcam_smoothgradcampp", "torchcam_finercam", "torchcam_refinecam"}  # fmt: skip
# Peers whose maps must equal camlib's to rounding (the formulas are the same)
SAME = {"pgc_layercam", "pgc_hirescam", "pgc_gradcam_elementwise", "pgc_segeigencam",
        "pgc_shapleycam", "pgc_finercam", "pgc_refinecam"}  # fmt: skip


def camlib_key(method: str) -> str:
    return "camlib_" + method.replace("++", "pp")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    cmd = [
        sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--models", "mnist",
        "--batch-sizes", "1", "--rounds", "1", "--threads", str(min(2, torch.get_num_threads())),
        "--methods", "all", "--block-seconds", "0.02", "--perturbation-batch", "128",
        "--samples", "1", "--sess-scales", "2",
        "--scorecam-memory", "mnist@28", "--compare", ",".join(PEERS), "--no-progress",
        "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"benchmark failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def test_outputs_written(quick_run: Path) -> None:
    for name in ("results.json", "results.md", "throughput.png", "ratio_to_lower_bound.png",
                 "memory.png"):  # fmt: skip
        path = quick_run / name
        assert path.is_file() and path.stat().st_size > 0, name
    report = json.loads((quick_run / "results.json").read_text())
    meta = report["meta"]
    assert meta["threads"] >= 1 and meta["machine"]["cpu"] and meta["date"]
    for lib in ("torch", "torchvision", "camlib"):
        assert meta["versions"][lib]
    md = (quick_run / "results.md").read_text()
    assert "## Goals" in md and ("PASS" in md or "FAIL" in md)
    assert set(report["plots"]) >= {"throughput.png", "ratio_to_lower_bound.png", "memory.png"}


def test_every_contender_measured_and_agrees(quick_run: Path) -> None:
    report = json.loads((quick_run / "results.json").read_text())
    (cfg,) = report["results"]
    assert (cfg["model"], cfg["batch"]) == ("mnist", 1)
    rows = cfg["contenders"]
    # every method but LeGrad (vision transformers only: measured in its own test below)
    expected = BOUNDS | {
        camlib_key(m)
        for m in camlib.available_methods()
        if not getattr(camlib.get_method(m), "needs_attention", False)
    }
    for peer, (module, keys) in PEERS.items():
        if _installed(module):
            expected |= keys
            assert report["meta"]["versions"][peer], peer
        else:  # skipped with a note, not a failure
            assert not keys & set(rows), peer
            assert any(note.startswith(f"{peer} skipped") for note in report["notes"]), peer
    assert set(rows) == expected
    for key, row in rows.items():
        assert row["images_per_s"]["median"] > 0, key
        assert all(t > 0 for t in row["seconds_per_call"]), key
        assert row["peak_extra_mib"] is not None, key
    assert report["agreement"]["ok"], report["agreement"]["disagreements"]
    for key, row in rows.items():
        a = row["agreement"]
        if row["kind"] == "reference":
            assert a is None, key
        elif a is not None:
            assert a["ok"] is not False, key
            if a["status"] == "differs by design":
                assert key in BY_DESIGN, key
            else:  # the formulas agree: so must the maps, to rounding
                assert a["status"] == "agree" and a["min_r"] > 0.9999, key
    # camlib Grad-CAM equals the lower bound's maps, CAM equals Grad-CAM (GAP + linear head),
    # and the peers that compute camlib's formula give its maps
    for key in ("camlib_gradcam", "camlib_cam", *SAME):
        if key in rows:
            assert rows[key]["agreement"]["max_diff"] < 1e-4, key
    # DFF's concept maps (another NMF solver) are timed, not compared
    assert rows["camlib_dff"]["kind"] == "concepts" and rows["camlib_dff"]["agreement"] is None
    # the perturbation floors were timed and are slower than one no-grad forward (the MNIST
    # net: 128 or more forward passes each)
    for key in ("scorecam_floor", "ablationcam_floor", "sampled_score_floor", "sess_floor"):
        assert rows[key]["seconds_per_call"][0] > rows["nograd_forward"]["seconds_per_call"][0]
    # results.md: every method against its floor and peers
    md = (quick_run / "results.md").read_text()
    table = md.split("## Every method against its floor and its peers")[1].split("## Results")[0]
    assert "| ShapleyCAM |" in table and "Shapley-CAM floor" in table, table
    assert "pytorch-grad-cam ShapleyCAM:" in table and "torchcam SSCAM:" in table, table


def test_scorecam_memory_study(quick_run: Path) -> None:
    report = json.loads((quick_run / "results.json").read_text())
    study = report["scorecam_memory"]
    assert (study["model"], study["resolution"]) == ("mnist", 28)
    mine = [r for r in study["rows"] if r["contender"] == "camlib_scorecam"]
    assert {(r["layer"], r["batch_size"]) for r in mine} == {
        (layer, bs) for layer in ("features.2", "features.4") for bs in (32, 256)
    }
    assert {r["channels"] for r in mine} == {64, 128}
    assert all(r["peak_extra_mib"] is not None for r in mine)
    goal = next(g for g in report["goals"] if g["id"] == "scorecam-mem")
    assert len(goal["per_config"]) == 2 and goal["result"] in ("PASS", "FAIL")


def test_legrad_against_torchcam_merged(quick_run: Path, tmp_path: Path) -> None:
    """LeGrad (every block of a 2-block ViT at 64 px) against torchcam's, --quick, merged
    (--merge) into a copy of the MNIST run: both runs kept, ratios within each run."""
    if not _installed("torchcam"):
        pytest.skip("torchcam not installed")
    out = tmp_path / "merged"
    out.mkdir()
    (out / "results.json").write_text((quick_run / "results.json").read_text())
    cmd = [
        sys.executable, str(SCRIPT), "--quick", "--models", "vit_mini", "--batch-sizes", "2",
        "--methods", "legrad", "--compare", "torchcam", "--no-memory", "--no-progress",
        "--block-seconds", "0.01", "--threads", "1", "--merge", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"benchmark failed:\n{proc.stdout}\n{proc.stderr}"
    report = json.loads((out / "results.json").read_text())
    assert len(report["runs"]) == 2
    first, vit = report["results"][0], report["results"][-1]
    assert (first["model"], first["run"]) == ("mnist", 0)
    assert (vit["model"], vit["batch"], vit["run"]) == ("vit_mini", 2, 1)
    rows = vit["contenders"]
    assert set(rows) == {"lower_bound", "nograd_forward", "legrad_floor", "camlib_legrad",
                         "torchcam_legrad"}  # fmt: skip
    a = rows["torchcam_legrad"]["agreement"]
    assert a["status"] == "agree" and a["max_diff"] < 1e-4, a
    goal = next(g for g in report["goals"] if g["id"] == "torchcam-legrad")
    assert [p["config"] for p in goal["per_config"]] == ["vit_mini@64 batch 2 (run 2)"]
    md = (out / "results.md").read_text()
    assert "2 runs merged" in md and "### vit_mini@64 batch 2 (run 2)" in md
    # --report-only rebuilds the same report from the merged results.json (in this process)
    spec = importlib.util.spec_from_file_location("bench_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--report-only", "--out", str(out)]) == 0
    assert (out / "results.md").read_text() == md


def test_missing_peer_is_skipped_not_fatal(tmp_path: Path) -> None:
    """A peer that cannot be imported is skipped with a note (here: a shadowing stub)."""
    stub = tmp_path / "stub"
    (stub / "torchcam").mkdir(parents=True)
    (stub / "torchcam" / "__init__.py").write_text("raise ImportError('not installed (stub)')\n")
    out = tmp_path / "out"
    cmd = [
        sys.executable, str(SCRIPT), "--quick", "--models", "mnist", "--batch-sizes", "1",
        "--methods", "gradcam", "--compare", "torchcam", "--no-memory", "--no-progress",
        "--block-seconds", "0.01", "--threads", "1", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(stub)}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"benchmark failed:\n{proc.stdout}\n{proc.stderr}"
    report = json.loads((out / "results.json").read_text())
    assert any(n.startswith("torchcam skipped") for n in report["notes"])
    assert "torchcam_gradcam" not in report["results"][0]["contenders"]
    assert report["meta"]["versions"]["torchcam"] is None


# -- benchmarks/metrics_vs_quantus.py -------------------------------------------------------

QUANTUS_SCRIPT = ROOT / "benchmarks" / "metrics_vs_quantus.py"
# one metric of each kind: model forwards (deletion, faithfulness correlation), maps only
# (pointing game, sparseness), re-explaining (random logit, MPRT)
SMOKE_METRICS = ("deletion", "faithfulness_correlation", "pointing_game", "sparseness",
                 "random_logit", "mprt")  # fmt: skip


@pytest.mark.skipif(not _installed("quantus"), reason="quantus is not installed")
def test_metrics_vs_quantus_quick(tmp_path: Path) -> None:
    """A --quick run on the MNIST net (4 images, 1 repeat): every metric measured on both
    sides, the values equal to Quantus's (randomness aligned), the floors and the load
    recorded, camlib.evaluate timed, the Markdown table written."""
    cmd = [
        sys.executable, str(QUANTUS_SCRIPT), "--quick", "--threads", "1",
        "--metrics", ",".join(SMOKE_METRICS), "--out", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"benchmark failed:\n{proc.stdout}\n{proc.stderr}"
    report = json.loads((tmp_path / "metrics_vs_quantus.json").read_text())
    assert report["meta"]["versions"]["quantus"] == "0.6.0"
    assert report["meta"]["threads"] == 1 and report["meta"]["load_start"] >= 0
    (cfg,) = report["configs"]
    assert (cfg["model"], cfg["resolution"], cfg["batch"]) == ("mnist", 28, 4)
    rows = {r["metric"]: r for r in cfg["rows"]}
    assert tuple(rows) == SMOKE_METRICS
    for key, row in rows.items():
        assert row["agreement"]["status"] == "agree", (key, row["agreement"])
        assert row["agreement"]["max_abs_diff"] <= report["tolerance"], key
        assert row["agreement"]["compared"] >= 4, key  # every image (or curve point) compared
        assert row["camlib_ms"] > 0 and row["quantus_ms"] > 0, key
        assert row["ratio"]["median"] == pytest.approx(
            row["runs"]["quantus"][0]["wall_s"] / row["runs"]["camlib"][0]["wall_s"]
        )
        for t in row["runs"]["camlib"] + row["runs"]["quantus"]:
            assert t["cpu_s"] > 0 and t["load_before"] >= 0 and t["load_after"] >= 0, key
    # the floors: deletion's 4 steps are 5 forwards for camlib, 4 for Quantus; MPRT explains
    # once per cascade layer (conv x3, BN x3, fc on the MNIST net), Quantus once more
    assert rows["deletion"]["floor"]["camlib_units"] == 5
    assert rows["deletion"]["floor"]["quantus_units"] == 4
    assert (rows["mprt"]["floor"]["camlib_units"], rows["mprt"]["floor"]["quantus_units"]) == (7, 8)
    assert rows["mprt"]["floor"]["unit"] == "explain" and rows["mprt"]["floor"]["ms"] > 0
    assert "floor" not in rows["sparseness"]  # reads the maps only
    ev = cfg["evaluate"]
    assert ev["camlib_ms"] > 0 and len(ev["metrics"]) == len(SMOKE_METRICS)
    md = (tmp_path / "metrics_vs_quantus.md").read_text()
    assert "| metric | camlib ms | Quantus ms | ratio |" in md
    assert md.count("| yes (") == len(SMOKE_METRICS)
    assert "load average" in md and "camlib.evaluate" in md
