"""Smoke test of benchmarks/throughput.py: a --quick run on the MNIST net, batch size 2.

Checks that the script runs end to end, writes results.json, results.md and the plots,
that every contender has a positive throughput, and that every contender's maps agree
with camlib's. Peers that are not installed must be skipped with a note, not fail.
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

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "throughput.py"

# peer name on the command line -> (module, contenders it provides)
PEERS = {
    "pytorch-grad-cam": ("pytorch_grad_cam", {"pgc_gradcam"}),
    "captum": ("captum", {"captum_gradcam", "captum_gradcam_top", "captum_guided_gradcam"}),
    "torchcam": ("torchcam", {"torchcam_gradcam"}),
}
ALWAYS = {"lower_bound", "nograd_forward", "camlib_gradcam", "camlib_cam", "camlib_guided_gradcam"}


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    cmd = [
        sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--models", "mnist",
        "--batch-sizes", "2", "--rounds", "1", "--threads", str(min(2, torch.get_num_threads())),
        "--methods", "cam,gradcam,guided_gradcam",
        "--compare", ",".join(PEERS), "--no-progress", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
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
    assert (cfg["model"], cfg["batch"]) == ("mnist", 2)
    rows = cfg["contenders"]
    expected = set(ALWAYS)
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
        if key != "nograd_forward":
            assert row["agreement"]["ok"] is not False, key
    assert rows["camlib_gradcam"]["agreement"]["ok"] is True


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
