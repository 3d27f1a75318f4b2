"""The documentation builds strictly, with no warning, in an environment that has pydantic.

With pydantic installed, mkdocstrings-python validates its handler options, and rejects
YAML tags such as ``!relative`` where it expects strings (a real failure: FastAPI, typer
and many others bring pydantic along). The ``docs`` extra therefore lists pydantic, so this
build always runs with the validation on. CI builds the docs again on its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_strict_build_with_pydantic_validation(tmp_path: Path) -> None:
    pytest.importorskip("pydantic", reason="the docs extra installs pydantic")
    pytest.importorskip("mkdocstrings_handlers.python", reason="needs the docs extra")
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    assert mkdocs, "mkdocs is not installed beside this Python"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    # Run from another folder with -f, as a user's build script might.
    done = subprocess.run(
        [mkdocs, "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = done.stdout + done.stderr
    problems = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert done.returncode == 0 and not problems, log[-4000:]
    assert (tmp_path / "site" / "api" / "metrics.html").is_file()
