"""Screenshot pages of the built site with headless Chromium, to look at them as a reader would.

    mkdocs build --strict
    python docs/screenshot.py                       # home, concepts, tutorial, API -> /tmp/camlib-shots
    python docs/screenshot.py concepts.html api/viz.html --out shots --height 3000

The site is served from ``site/`` on 127.0.0.1 (a free port, stopped afterwards) with
``python -m http.server``; nothing outside this machine is contacted, and Chromium runs
with its background networking switched off. Needs Debian's ``chromium`` package
(``apt-get install -y chromium``). Pass ``--file`` to open the pages as ``file://`` URLs
instead, which checks that the built site works without a server.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PAGES = [
    "index.html",
    "quickstart.html",
    "concepts.html",
    "tutorial.html",
    "evaluation.html",
    "benchmarks.html",
    "troubleshooting.html",
    "api/explainers.html",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(site: Path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=site,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(50):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(timeout=10)


def shoot(browser: str, url: str, out: Path, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                # Give MathJax time to typeset before the picture is taken.
                "--virtual-time-budget=8000",
                f"--user-data-dir={profile}",
                f"--screenshot={out}",
                f"--window-size={width},{height}",
                url,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", default=DEFAULT_PAGES, help="paths inside site/")
    parser.add_argument("--site", type=Path, default=ROOT / "site")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "camlib-shots")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1600)
    parser.add_argument("--file", action="store_true", help="open file:// URLs, no server")
    args = parser.parse_args(argv)

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium not found: apt-get install -y chromium")
    if not (args.site / "index.html").is_file():
        sys.exit(f"{args.site} has no index.html: run `mkdocs build --strict` first")
    args.out.mkdir(parents=True, exist_ok=True)

    base_cm = (
        contextlib.nullcontext(args.site.resolve().as_uri() + "/")
        if args.file
        else serve(args.site)
    )
    with base_cm as base:
        for page in args.pages:
            out = args.out / (page.replace("/", "_").removesuffix(".html") + ".png")
            shoot(browser, base + page, out, args.width, args.height)
            print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
