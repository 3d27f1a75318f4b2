"""Run the Python examples of the documentation, so the docs cannot drift from the API.

Every ```` ```python ```` block of the pages in ``PAGES`` is executed, in page order, in
one namespace per page (a page reads like one session: later blocks use the variables of
earlier ones). Conventions for the Markdown sources:

* ``<!-- docs-test-setup ... -->``: an HTML comment holding Python code the reader does not
  need to see (seeding, a stand-in variable); it runs at its place in the page and is
  invisible on the site.
* ``<!-- docs-test: skip -->`` on the line before a fence: show that block, do not run it
  (for code that needs a GPU, the network or a file the reader has).

Examples use random-weight models (``weights=None``, with a comment naming the pretrained
weights), so the test is offline and fast. Each page runs in a temporary directory, so
files the examples save land there.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import matplotlib
import pytest
import torch

import camlib

matplotlib.use("Agg")

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = [
    "index.md",
    "quickstart.md",
    "evaluation.md",
    "methods.md",
    "smoothing_fusion.md",
    "writing_a_method.md",
    "models/transformers.md",
    "models/segmentation.md",
    "models/detection.md",
    "models/signals_volumes.md",
    "models/binary.md",
    "metrics/faithfulness.md",
    "metrics/localisation.md",
    "metrics/sanity.md",
    "metrics/robustness.md",
    "metrics/complexity.md",
]

_BLOCK = re.compile(
    r"(?P<skip><!-- docs-test: skip -->\s*\n)?^```python[^\n]*\n(?P<code>.*?)^```[ \t]*$"
    r"|<!-- docs-test-setup\n(?P<setup>.*?)-->",
    re.S | re.M,
)


def snippets(page: str) -> list[tuple[int, str]]:
    """(line number, code) of the blocks of ``page`` to run, setup comments included."""
    text = (DOCS / page).read_text(encoding="utf-8")
    out = []
    for m in _BLOCK.finditer(text):
        if m["skip"]:
            continue
        code = m["setup"] if m["setup"] is not None else m["code"]
        start = m.start("setup") if m["setup"] is not None else m.start("code")
        out.append((text.count("\n", 0, start) + 1, code))
    return out


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page, tmp_path, monkeypatch):
    blocks = snippets(page)
    assert blocks, f"no python examples found in docs/{page}"
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict[str, object] = {"__name__": f"docs_{Path(page).stem}"}
    # A page may register methods (writing_a_method.md): the registry is put back after it,
    # so the rest of the suite sees only the built-in methods.
    registered = dict(camlib.METHODS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. camlib's train-mode warning
            for line, code in blocks:
                # Padding keeps traceback line numbers equal to the Markdown file's.
                compiled = compile("\n" * (line - 1) + code, str(DOCS / page), "exec")
                exec(compiled, namespace)
    finally:
        dict.clear(camlib.METHODS)
        dict.update(camlib.METHODS, registered)


def test_examples_are_offline():
    """No example downloads pretrained weights (the test machines have no network)."""
    for page in PAGES:
        for line, code in snippets(page):
            statements = "\n".join(row.split("#", 1)[0] for row in code.splitlines())
            assert not re.search(r"weights\s*=\s*['\"]", statements), (
                f"docs/{page}:{line}: use weights=None and name the pretrained weights in a comment"
            )


def _quoted_messages(page: str) -> list[tuple[int, str]]:
    """The error messages a page quotes: definition-list terms made of code spans."""
    out = []
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
    for i, (term, after) in enumerate(zip(lines, lines[1:] + [""], strict=True), start=1):
        if after.startswith(":   ") and term.startswith("`"):
            out += [(i, m) for m in re.findall(r"`([^`]+)`", term)]
    return out


def test_troubleshooting_quotes_real_messages():
    """Each message quoted on the troubleshooting page still exists in camlib's source."""
    source = "\n".join(
        p.read_text(encoding="utf-8") for p in (DOCS.parent / "camlib").rglob("*.py")
    )
    # Join implicitly concatenated string literals: "abc "\n    f"def" -> "abc def".
    source = re.sub(r"\"\s*\n\s*(?:[rf]{0,2})\"", "", source)
    quoted = _quoted_messages("troubleshooting.md")
    assert len(quoted) > 20
    missing = []
    for line, message in quoted:
        message = re.sub(r"^(CamlibError|UserWarning): ", "", message)
        # Literal text between the {placeholders} and "..." elisions must appear verbatim.
        for fragment in re.split(r"\{[^}]*\}|\.\.\.", message):
            fragment = fragment.strip(" .;:")
            if len(fragment) >= 12 and fragment not in source:
                missing.append(f"docs/troubleshooting.md:{line}: {fragment!r}")
    assert not missing, "messages no longer in camlib:\n" + "\n".join(missing)
