"""``report.html`` of ``camlib evaluate``: one self-contained page (no external assets).

The page holds the leaderboard (a table and its figure), then, for every method, the
images it scores best and worst on a primary metric, each drawn as the method's map over
the image (:func:`camlib.viz.overlay`), and the images that failed. Every picture is a PNG
embedded as base64, so the file can be mailed or archived on its own and opens offline.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .pipeline import atomic_write, read_image

if TYPE_CHECKING:  # pragma: no cover
    from .evaluation import Leaderboard

THUMB = 160
"""Longest side, in pixels, of the pictures of best and worst images."""

Preview = Callable[[str, str], "np.ndarray | None"]
"""``preview(image id, method) -> (h, w) uint8 map`` (0..255 over the whole image), or None."""


def data_uri(png: bytes) -> str:
    """A PNG as a ``data:`` URI for an ``<img src>``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def png_bytes(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG file bytes."""
    import cv2

    ok, enc = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise OSError("PNG encoding failed")
    return enc.tobytes()


def thumbnail(rgb: np.ndarray, side: int = THUMB) -> np.ndarray:
    """The image scaled (area interpolation) so that its longest side is at most ``side``."""
    import cv2

    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def overlay_thumbnail(path: Path, preview: np.ndarray, channels: int = 3) -> np.ndarray:
    """The map ``preview`` (uint8, any size, covering the whole image) blended over a
    thumbnail of the image file at ``path`` (the map resized bilinearly to it)."""
    import cv2

    from . import viz

    image = read_image(path, channels).numpy()
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    small = thumbnail(image)
    h, w = small.shape[:2]
    heat = cv2.resize(preview.astype(np.float32) / 255.0, (w, h), interpolation=cv2.INTER_LINEAR)
    return viz.overlay(small, np.clip(heat, 0.0, 1.0), normalize=False)


def figure_png(board: Leaderboard) -> bytes:
    """The leaderboard's figure (:meth:`~camlib.evaluation.Leaderboard.plot`) as PNG."""
    buf = io.BytesIO()
    board.plot().savefig(buf, format="png", dpi=100)
    return buf.getvalue()


_CSS = """
body { font: 14px system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 16px 40px;
  color: #222; background: #fafafa; }
h1 { font-size: 22px; margin: 20px 0 4px; } h2 { font-size: 18px; margin-top: 28px; }
h3 { font-size: 15px; margin: 18px 0 6px; } .meta { color: #555; }
table { border-collapse: collapse; background: #fff; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; white-space: nowrap; }
th:nth-child(2), td:nth-child(2) { text-align: left; }
tr.baseline td { color: #777; font-style: italic; } td.best { font-weight: 700; }
img.figure { max-width: 100%; background: #fff; margin-top: 12px; }
.strip { display: flex; gap: 10px; flex-wrap: wrap; align-items: flex-start; }
.strip > span { width: 46px; font-weight: 600; padding-top: 6px; }
figure { margin: 0; background: #fff; border-radius: 4px; box-shadow: 0 1px 3px rgba(0,0,0,.15);
  width: 170px; }
figure img { display: block; margin: 5px auto 0; width: 160px; max-height: 200px;
  object-fit: contain; }
figcaption { padding: 4px 6px; font-size: 12px; line-height: 1.3; word-break: break-all; }
.missing { color: #c62828; font-size: 12px; padding: 8px; } .err { color: #c62828; }
"""


def _cell(value: float, lo: float, hi: float, decimals: int) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:.{decimals}f} [{lo:.{decimals}f}, {hi:.{decimals}f}]"


def _decimals(values: Sequence[float]) -> int:
    top = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    return 3 if top < 10 else 2 if top < 100 else 1 if top < 1000 else 0


def leaderboard_table(board: Leaderboard) -> str:
    """The summary as an HTML table: ``mean [lo, hi]`` per metric, the best in bold."""
    esc = html.escape
    metrics = board.metrics
    arrows = {m.name: "↑" if m.higher_is_better else "↓" for m in metrics}
    head = "".join(f"<th>{esc(m.name)} {arrows[m.name]}</th>" for m in metrics)
    best: dict[str, float] = {}
    for m in metrics:
        means = [e[m.name] for e in board.summary if math.isfinite(e[m.name])]
        best[m.name] = (max(means) if m.higher_is_better else min(means)) if means else math.nan
    lines = [f"<table><tr><th>#</th><th>method</th><th>mean rank</th>{head}</tr>"]
    for i, e in enumerate(board.summary, start=1):
        cells = []
        for m in metrics:
            d = _decimals([x[m.name] for x in board.summary])
            text = _cell(e[m.name], e[f"{m.name}_lo"], e[f"{m.name}_hi"], d)
            cls = ' class="best"' if e[m.name] == best[m.name] else ""
            cells.append(f"<td{cls}>{esc(text)}</td>")
        rank = "-" if not math.isfinite(e["mean_rank"]) else f"{e['mean_rank']:.2f}"
        row_cls = ' class="baseline"' if e.get("baseline") else ""
        label = esc(e["method"]) + (" (baseline)" if e.get("baseline") else "")
        lines.append(
            f"<tr{row_cls}><td>{i}</td><td>{label}</td><td>{rank}</td>{''.join(cells)}</tr>"
        )
    lines.append("</table>")
    return "\n".join(lines)


def _card(
    image_id: str,
    method: str,
    row: Mapping[str, Any],
    primary: str,
    preview: Preview,
    channels: int,
) -> str:
    esc = html.escape
    value = float(row.get(primary, math.nan))
    caption = (
        f"<figcaption>{esc(Path(image_id).name)}<br>class {esc(str(row.get('class', '')))}"
        f" &middot; {esc(primary)} {value:.4g}</figcaption>"
    )
    small = preview(image_id, method)
    if small is None:
        return f'<figure><div class="missing">no map preview for {esc(image_id)}</div>{caption}</figure>'
    try:
        pic = overlay_thumbnail(Path(image_id), small, channels)
    except Exception as exc:  # noqa: BLE001 - the image vanished or broke since it was scored
        msg = f"{type(exc).__name__}: {exc}"
        return f'<figure><div class="missing">{esc(msg)}</div>{caption}</figure>'
    alt = esc(f"{method} on {image_id}")
    return f'<figure title="{esc(image_id)}"><img src="{data_uri(png_bytes(pic))}" alt="{alt}">{caption}</figure>'


def write_report(
    path: str | Path,
    board: Leaderboard | None,
    *,
    primary: str,
    preview: Preview,
    failed: Sequence[tuple[str, str, str]] = (),
    title: str = "camlib evaluate",
    notes: Sequence[str] = (),
    figure: bytes | None = None,
    channels: int = 3,
    k: int = 3,
) -> None:
    """Write ``report.html`` (atomically).

    Args:
        path: the file to write.
        board: the leaderboard (None when no image could be scored).
        primary: the metric that picks each method's ``k`` best and ``k`` worst images
            (:meth:`~camlib.evaluation.Leaderboard.best_worst`, in the metric's direction).
        preview: ``preview(image id, method)`` -> the method's map of that image, uint8.
            Image ids are the images' file paths.
        failed: ``(file, status, message)`` of the images that failed.
        title, notes: the page's heading and lines under it.
        figure: the leaderboard figure as PNG (drawn from ``board`` when None).
        channels: 1 to read the images as grayscale.
        k: best and worst images per method.
    """
    esc = html.escape
    parts = [f"<h1>{esc(title)}</h1>"]
    parts += [f'<p class="meta">{esc(n)}</p>' for n in notes]
    if board is not None and board.summary:
        m = next(x for x in board.metrics if x.name == primary)
        parts.append("<h2>Leaderboard</h2>")
        parts.append(leaderboard_table(board))
        parts.append(
            '<p class="meta">Mean over images [95% bootstrap interval]; ↑/↓ higher/lower is '
            "better; best per column in bold; rows sorted by mean rank over the quality metrics "
            "(cost not ranked); baselines in grey.</p>"
        )
        if board.dropped:
            dropped = "; ".join(f"{k}: {v}" for k, v in board.dropped.items())
            parts.append(f'<p class="err">Dropped (raised on this model): {esc(dropped)}</p>')
        png = figure if figure is not None else figure_png(board)
        parts.append(f'<img class="figure" src="{data_uri(png)}" alt="leaderboard figure">')
        direction = "higher" if m.higher_is_better else "lower"
        parts.append(
            f"<h2>Best and worst images by {esc(primary)} ({direction} is better)</h2>"
            f'<p class="meta">Each method\'s map over the image; best first, worst first.</p>'
        )
        rows = {(str(r["image"]), r["method"]): r for r in board.per_image}
        for e in board.summary:
            if e.get("baseline"):
                continue
            method = e["method"]
            best, worst = board.best_worst(method, primary, k=k)
            parts.append(f"<section><h3>{esc(method)}</h3>")
            for label, ids in (("best", best), ("worst", worst)):
                cards = [
                    _card(str(i), method, rows[(str(i), method)], primary, preview, channels)
                    for i in ids
                ]
                body = "".join(cards) or '<span class="meta">no values</span>'
                parts.append(f'<div class="strip"><span>{label}</span>{body}</div>')
            parts.append("</section>")
    else:
        parts.append('<p class="err">No image could be scored.</p>')
    if failed:
        parts.append(f"<h2>Failed images ({len(failed)})</h2><ul>")
        parts += [
            f'<li><code>{esc(f)}</code>: {esc(s)}: <span class="err">{esc(msg)}</span></li>'
            for f, s, msg in failed
        ]
        parts.append("</ul>")
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
    atomic_write(Path(path), page.encode())
