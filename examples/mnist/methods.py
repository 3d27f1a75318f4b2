"""Every registered camlib method on the same images, ranked by :func:`camlib.evaluate`.

Two evaluations make the study's leaderboard (:func:`leaderboard`): the 28x28 test digits
for what needs the model to recognise the digit (faithfulness, sanity, complexity, cost)
and the translated digits on 56x56 canvases for localisation (the digit's box and ink).
The class-discriminative test (:func:`two_digit_leaderboard`) is a third evaluation: two
digits per canvas, each digit's class explained in turn, scored by the pointing games on
that digit's box. Every method explains the improved model's layer ``block3`` (methods
without a layer, such as Guided Backprop, the input); evaluate reduces signed maps to
:math:`\\sum_c |M_c|` and adds the random-map and centred-Gaussian baseline rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

import camlib
from camlib.evaluation import Leaderboard
from camlib.metrics.registry import CATEGORIES

from .data import BACKGROUND, denormalize, paste_pairs

LABELS = {
    "cam": "CAM",
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "xgradcam": "XGrad-CAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "eigencam": "Eigen-CAM",
    "scorecam": "Score-CAM",
    "ablationcam": "Ablation-CAM",
    "guided_gradcam": "Guided Grad-CAM",
    "guided_backprop": "Guided Backprop",
}
"""Display names of the classic methods (the leaderboards use the registered names)."""

LOCALISATION = ("pointing_game", "energy_pointing_game", "relevance_mass", "relevance_rank")
BOXES_ONLY = {"pointing_game": {"region": "boxes"}}
"""The pointing game on the digit's tight box (as in the literature), not on its ink."""


def label(name: str) -> str:
    return LABELS.get(name, name)


def for_cnn(names: Sequence[str]) -> list[str]:
    """``names`` without the methods that read attention maps (LeGrad: they refuse a CNN)
    and those that return several concept maps per image (DFF: :func:`camlib.evaluate`
    scores one map per image and refuses them)."""
    return [
        n
        for n in names
        if not getattr(camlib.get_method(n), "needs_attention", False)
        and getattr(camlib.get_method(n), "returns", None) != "concepts"
    ]


def ink(images: torch.Tensor, threshold: float = 0.5 / 255) -> torch.Tensor:
    """(N, H, W) bool: the digits' ink on normalised (N, 1, H, W) images (any non-zero
    pixel of the 8-bit original, as :func:`.data.paste_on_canvas` boxes it)."""
    return denormalize(images[:, 0]) > threshold


def _options(methods: Sequence[str], batch_size: int) -> dict[str, dict]:
    """``batch_size`` (rows per forward pass) for the perturbation methods evaluated."""
    from camlib.methods.families import PerturbationCAM

    return {
        m: {"batch_size": batch_size}
        for m in methods
        if issubclass(camlib.get_method(m), PerturbationCAM)
    }


def leaderboard(
    model: nn.Module,
    layer: str,
    methods: Sequence[str],
    digits: tuple[torch.Tensor, torch.Tensor],
    canvases: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    steps: int,
    seed: int,
    batch_size: int = 100,
    progress: bool = False,
) -> Leaderboard:
    """Every method ranked on the test digits and the translated digits (true classes).

    Two :func:`camlib.evaluate` runs, one :class:`~camlib.evaluation.Leaderboard`:

    * ``digits = (x, y)``, 28x28 test digits: the default metrics (deletion and insertion
      with ``steps`` steps from and to a black canvas, average drop, increase in
      confidence, randomisation, random logit, sparseness, complexity, cost);
    * ``canvases = (x, boxes, y)``, digits pasted on blank canvases: the localisation
      metrics (pointing game and energy on the digit's box, relevance mass and rank on its
      ink). On these canvases the model predicts "1" for almost every digit (global
      average pooling dilutes the digit), so the faithfulness metrics, which follow the
      class probability, would measure nothing there.

    Their per-image rows (image ids ``"digit i"`` and ``"canvas i"``) are summarised
    together by :meth:`Leaderboard.from_rows`: each metric's mean is over the images it was
    measured on, and rows are ranked by faithfulness and localisation.
    """
    common = {
        "methods": list(methods),
        "layer": layer,
        "seed": seed,
        "batch_size": batch_size,
        "progress": progress,
        "method_options": _options(methods, 512),
    }
    x, y = digits
    black = {"steps": steps, "baseline": BACKGROUND}
    on_digits = camlib.evaluate(
        model, x, y, metric_options={"deletion": black, "insertion": black}, **common
    )
    cx, boxes, cy = canvases
    on_canvases = camlib.evaluate(
        model,
        cx,
        cy,
        metrics=list(LOCALISATION),
        boxes=boxes,
        masks=ink(cx),
        metric_options=BOXES_ONLY,
        **common,
    )
    rows = [{**r, "image": f"digit {r['image']}"} for r in on_digits.per_image]
    rows += [{**r, "image": f"canvas {r['image']}"} for r in on_canvases.per_image]
    order = {c: i for i, c in enumerate(CATEGORIES)}
    metrics = sorted(on_digits.metrics + on_canvases.metrics, key=lambda m: order[m.category])
    board = Leaderboard.from_rows(rows, metrics, seed=seed)
    board.dropped = {**on_digits.dropped, **on_canvases.dropped}
    return board


def two_digit_leaderboard(
    model: nn.Module,
    layer: str,
    methods: Sequence[str],
    canvases: torch.Tensor,
    boxes: tuple[torch.Tensor, torch.Tensor],
    labels: tuple[torch.Tensor, torch.Tensor],
    *,
    seed: int,
    batch_size: int = 100,
    progress: bool = False,
) -> tuple[Leaderboard, dict[str, float]]:
    """The class-discriminative test as one :func:`camlib.evaluate` run: each of the M
    two-digit canvases is explained twice, for the first digit's class (images 0..M-1) and
    for the second's (images M..2M-1), and scored by the pointing games on *that* digit's
    box. A map that ignores the class hits at most one of the two digits (<= 50 %).

    Returns the leaderboard and, per row, the share of canvases where both maps hit their
    own digit (from the per-image pointing-game values).
    """
    m = len(canvases)
    board = camlib.evaluate(
        model,
        torch.cat([canvases, canvases]),
        torch.cat(list(labels)),
        methods=list(methods),
        metrics=["pointing_game", "energy_pointing_game"],
        layer=layer,
        boxes=torch.cat(list(boxes)),
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        method_options=_options(methods, 512),
    )
    both: dict[str, float] = {}
    for name in board.methods:
        hit = torch.full((2 * m,), math.nan, dtype=torch.float64)
        for r in board.per_image:
            if r["method"] == name:
                hit[r["image"]] = r["pointing_game"]
        both[name] = float(((hit[:m] == 1) & (hit[m:] == 1)).double().mean())
    return board, both


def two_digit_canvases(
    x: torch.Tensor, y: torch.Tensor, n: int, size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` canvases with two test digits of *different* classes at random, non-overlapping
    places. Returns canvases, the two (M, 4) boxes and the two (M,) labels."""
    first = torch.randperm(len(x), generator=generator)[:n]
    second = torch.randint(0, len(x), (len(first),), generator=generator)
    same = y[second] == y[first]
    while same.any():  # redraw the partners of the same class
        second[same] = torch.randint(0, len(x), (int(same.sum()),), generator=generator)
        same = y[second] == y[first]
    canvases, box_a, box_b, kept = paste_pairs(x[first], x[second], size, generator)
    return canvases, box_a, box_b, y[first][kept], y[second][kept]


@torch.no_grad()
def model_view(model: nn.Module, canvases: torch.Tensor, y_a, y_b) -> dict:
    """What the model itself makes of the two-digit canvases."""
    top2 = model(canvases).topk(2, dim=1).indices
    pred = top2[:, 0]
    both = ((top2 == y_a[:, None]).any(1) & (top2 == y_b[:, None]).any(1)).float().mean()
    return {
        "predicted_one_of_the_two": float(((pred == y_a) | (pred == y_b)).float().mean()),
        "top2_are_the_two": float(both),
        "predicted_class_counts": torch.bincount(pred, minlength=10).tolist(),
    }


def row(board: Leaderboard, method: str) -> dict:
    """The summary row of ``method`` (means and intervals by metric name)."""
    for e in board.summary:
        if e["method"] == method:
            return e
    raise KeyError(f"no row {method!r} in the leaderboard; rows: {', '.join(board.methods)}")
