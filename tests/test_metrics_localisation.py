"""Registered localisation metrics: pointing game (with tolerance), energy pointing game,
relevance mass and rank accuracy; hand-computed values, Quantus 0.6.0 agreement, bad input."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import camlib
from camlib.errors import MetricError
from camlib.metrics import MetricContext, get_metric, localisation

from conftest import batch, small

LOCALISATION = ["pointing_game", "energy_pointing_game", "relevance_mass", "relevance_rank"]


def context(maps, boxes=None, masks=None) -> MetricContext:
    n = maps.shape[0]
    return MetricContext(
        model=None,
        inputs=torch.zeros(n, 1, *maps.shape[1:]),
        targets=torch.zeros(n, dtype=torch.long),
        maps=maps,
        boxes=boxes,
        masks=masks,
    )


def score(name: str, maps, boxes=None, masks=None, **options) -> list[float]:
    return get_metric(name, **options)(context(maps, boxes, masks)).tolist()


def test_registered_with_direction_needs_and_no_forward_pass():
    refs = {
        "pointing_game": "Zhang et al., 2018",
        "energy_pointing_game": "Wang et al., 2020",
        "relevance_mass": "Arras et al., 2022",
        "relevance_rank": "Arras et al., 2022",
    }
    assert sorted(camlib.metrics.available_metrics("localisation")) == sorted(LOCALISATION)
    for name in LOCALISATION:
        m = get_metric(name)
        assert (m.category, m.higher_is_better, m.reference) == ("localisation", True, refs[name])
        assert m.needs == {"boxes", "masks"} and m.needs_any == {"boxes", "masks"}
        assert m.forwards_per_image() == 0
    assert get_metric("pointing_game").tolerance == 0
    assert (
        get_metric("energy_game").prefer == "boxes"
        and get_metric("relevance_rank").prefer == "masks"
    )


# -- hand-computed values -------------------------------------------------------------------


def test_pointing_game_hits_misses_ties_and_constant_maps():
    maps = torch.zeros(4, 6, 6)
    maps[0, 1, 2] = 1.0  # inside the box
    maps[1, 5, 5] = 1.0  # outside
    maps[2, 1, 1] = maps[2, 5, 0] = 1.0  # two tied maxima, one inside: half a hit
    maps[3] = 0.5  # constant: points nowhere
    boxes = torch.tensor([[0, 0, 3, 3]] * 4)
    assert score("pointing_game", maps, boxes) == [1.0, 0.0, 0.5, 0.0]


def test_pointing_tolerance_is_a_euclidean_disk():
    # The object is the single pixel (y=5, x=5); the maxima lie at distances 2, sqrt(5)
    # and sqrt(8) from it.
    maps = torch.zeros(3, 12, 12)
    maps[0, 5, 7] = 1.0  # distance 2
    maps[1, 6, 7] = 1.0  # distance sqrt(5) = 2.24
    maps[2, 7, 7] = 1.0  # distance sqrt(8) = 2.83: inside a 5x5 square, outside the disk
    masks = torch.zeros(3, 12, 12, dtype=torch.bool)
    masks[:, 5, 5] = True
    assert score("pointing_game", maps, masks=masks) == [0.0, 0.0, 0.0]
    assert score("pointing_game", maps, masks=masks, tolerance=2) == [1.0, 0.0, 0.0]
    assert score("pointing_game", maps, masks=masks, tolerance=3) == [1.0, 1.0, 1.0]
    boxes = torch.tensor([[5, 5, 6, 6]] * 3)  # the same pixel as a box
    assert score("pointing_game", maps, boxes, tolerance=2) == [1.0, 0.0, 0.0]


def test_masks_are_preferred_to_boxes_and_boxes_are_filled():
    maps = torch.zeros(1, 8, 8)
    maps[0, 6, 6] = 1.0
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, 0, 0] = True
    boxes = torch.tensor([[4, 4, 8, 8]])
    assert score("pointing_game", maps, boxes) == [1.0]
    assert score("pointing_game", maps, masks=masks) == [0.0]
    assert score("pointing_game", maps, boxes, masks) == [0.0]  # masks win
    assert score("pointing_game", maps, boxes, masks, region="boxes") == [1.0]


def test_energy_game_and_relevance_mass_by_hand():
    maps = torch.zeros(2, 4, 4)
    maps[0] = torch.arange(16.0).reshape(4, 4)  # total 120
    maps[1, 0, 0], maps[1, 3, 3], maps[1, 2, 2] = 2.0, 6.0, -5.0  # negative counts as 0
    boxes = torch.tensor([[0, 0, 2, 2], [0, 0, 3, 3]])
    # image 0: box rows 0-1, cols 0-1 = 0 + 1 + 4 + 5 = 10; image 1: 2 of 8
    expect = [10 / 120, 2 / 8]
    for name in ("energy_pointing_game", "relevance_mass"):
        assert score(name, maps, boxes) == pytest.approx(expect, abs=1e-12)
    # An L-shaped mask: relevance mass uses it, the energy game its bounding box.
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, 0, :3] = True
    masks[:, :3, 0] = True  # bounding box: rows 0-2, cols 0-2
    assert score("relevance_mass", maps, masks=masks) == pytest.approx(
        [(0 + 1 + 2 + 4 + 8) / 120, 2 / 8], abs=1e-12
    )
    assert score("energy_pointing_game", maps, masks=masks) == pytest.approx(
        [(0 + 1 + 2 + 4 + 5 + 6 + 8 + 9 + 10) / 120, 2 / 8], abs=1e-12
    )
    assert score("energy_pointing_game", maps, masks=masks, region="masks") == pytest.approx(
        score("relevance_mass", maps, masks=masks), abs=1e-12
    )


def test_relevance_rank_by_hand_with_ties_at_the_cut():
    # Values 4, 3, 1, 1, 1, 0, 0, 0; the mask holds positions 0, 2 and 5 (K = 3). The top 3
    # are 4, 3 and one of the three tied 1s: 1 certain hit (position 0) plus, for the third
    # place, 1 of the 3 tied pixels in the mask: (1 + 1/3) / 3 = 4/9.
    maps = torch.tensor([[[4.0, 3.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]]])
    masks = torch.zeros(1, 2, 4, dtype=torch.bool)
    masks[0, 0, 0] = masks[0, 0, 2] = masks[0, 1, 1] = True
    assert score("relevance_rank", maps, masks=masks) == pytest.approx([4 / 9], abs=1e-12)
    # Distinct values: the plain top-K share. Top 3 = 8, 7, 6 at positions 7, 6, 5.
    maps = torch.arange(8.0).reshape(1, 2, 4)
    assert score("relevance_rank", maps, masks=masks) == pytest.approx([1 / 3], abs=1e-12)
    # A constant map scores the mask's area fraction.
    assert score("relevance_rank", torch.ones(1, 2, 4), masks=masks) == pytest.approx([3 / 8])


def test_maps_without_mass_and_empty_masks_are_nan():
    maps = torch.rand(2, 5, 5)
    maps[1] = 0.0
    masks = torch.zeros(2, 5, 5, dtype=torch.bool)
    masks[:, 1:3, 1:3] = True
    mass = score("relevance_mass", maps, masks=masks)
    assert not math.isnan(mass[0]) and math.isnan(mass[1])
    assert score("pointing_game", maps, masks=masks)[1] == 0.0  # constant map: a miss
    masks[0] = False
    with pytest.warns(UserWarning, match=r"image\(s\) \[0\] is empty"):
        values = score("relevance_rank", maps, masks=masks)
    assert math.isnan(values[0]) and values[1] == pytest.approx(4 / 25)


def test_functions_are_batched_and_match_the_box_function():
    torch.manual_seed(0)
    maps = torch.rand(6, 9, 11)
    boxes = torch.tensor(
        [[0, 0, 3, 3], [2, 1, 9, 8], [5, 5, 11, 9], [0, 0, 11, 9], [4, 2, 5, 3], [1, 6, 8, 9]]
    )
    region = localisation.masks_from_boxes(boxes, (9, 11))
    assert torch.equal(localisation.boxes_from_masks(region), boxes)
    assert torch.allclose(
        localisation.mass_fraction(maps, region),
        localisation.box_energy_fraction(maps, boxes).double(),
        atol=1e-6,
    )
    hits = localisation.pointing_hit_rate(maps, region)
    assert hits.tolist() == localisation.pointing_game(maps, boxes).double().tolist()
    each = torch.cat(
        [localisation.rank_accuracy(maps[i : i + 1], region[i : i + 1]) for i in range(6)]
    )
    assert torch.equal(localisation.rank_accuracy(maps, region), each)


# -- agreement with Quantus 0.6.0 ------------------------------------------------------------


def _quantus(name: str, maps: torch.Tensor, masks: torch.Tensor, **options) -> np.ndarray:
    quantus = pytest.importorskip("quantus")
    n = maps.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric = getattr(quantus, name)(disable_warnings=True, **options)
        out = metric(
            model=None,
            x_batch=np.zeros((n, 1, *maps.shape[1:]), dtype=np.float32),
            y_batch=np.zeros(n, dtype=np.int64),
            a_batch=maps.double().numpy(),
            s_batch=masks.numpy()[:, None].astype(np.float64),
        )
    return np.asarray(out, dtype=np.float64)


@pytest.fixture(scope="module")
def gradcam_maps() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grad-CAM maps of a random SmallConvNet on 4 images 1x16x16, masks that hold the
    maximum of images 0 and 2 and not of 1 and 3, and boxes."""
    net, x = small(), batch(4, 16)
    maps = camlib.GradCAM(net, "conv2")(x)
    peak = maps.flatten(1).argmax(1)
    ys, xs = (peak // 16).tolist(), (peak % 16).tolist()
    masks = torch.zeros(4, 16, 16, dtype=torch.bool)
    boxes = []
    for i, (y, x0) in enumerate(zip(ys, xs, strict=True)):
        if i % 2 == 0:  # around the peak
            y0, x_0 = max(0, y - 3), max(0, x0 - 2)
        else:  # a box away from the peak
            y0, x_0 = (0 if y >= 8 else 9), (0 if x0 >= 8 else 9)
        boxes.append([x_0, y0, min(16, x_0 + 6), min(16, y0 + 7)])
        masks[i, y0 : y0 + 7, x_0 : x_0 + 6] = True
    masks[0, 15, :] = True  # not a box: one more row
    return maps, masks, torch.tensor(boxes)


def test_agrees_with_quantus(gradcam_maps):
    """Maps in [0, 1] with a unique maximum and no ties: the four definitions agree with
    Quantus's (default options: normalise by the max (no-op here), no abs)."""
    maps, masks, boxes = gradcam_maps
    ours = {name: get_metric(name)(context(maps, masks=masks)).numpy() for name in LOCALISATION}
    assert ours["pointing_game"].tolist() == [1.0, 0.0, 1.0, 0.0]
    pairs = {
        "pointing_game": _quantus("PointingGame", maps, masks),
        "relevance_mass": _quantus("RelevanceMassAccuracy", maps, masks),
        "relevance_rank": _quantus("RelevanceRankAccuracy", maps, masks),
        "energy_pointing_game": _quantus(
            "AttributionLocalisation",
            maps,
            localisation.masks_from_boxes(localisation.boxes_from_masks(masks), (16, 16)),
            abs=False,
            positive_attributions=True,
        ),
    }
    for name, theirs in pairs.items():
        assert np.abs(ours[name] - theirs).max() < 1e-5, name
    energy = get_metric("energy_pointing_game")(context(maps, boxes=boxes)).numpy()
    theirs = _quantus(
        "AttributionLocalisation",
        maps,
        localisation.masks_from_boxes(boxes, (16, 16)),
        abs=False,
        positive_attributions=True,
    )
    assert np.abs(energy - theirs).max() < 1e-5


def test_where_quantus_differs_ties_constant_maps_and_empty_masks():
    maps = torch.zeros(4, 4, 4)
    maps[0, 0, 0] = maps[0, 3, 3] = 1.0  # two tied maxima, one in the mask
    maps[1] = 0.3  # constant map
    maps[2, 2, 2] = 1.0  # fine map, empty mask
    maps[3, 0, 0], maps[3, 0, 1] = 1.0, 0.5  # 14 zeros tie at the cut of a 4-pixel mask
    masks = torch.zeros(4, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True
    masks[2] = False
    with pytest.warns(UserWarning, match="empty"):
        ours = get_metric("pointing_game")(context(maps, masks=masks)).numpy()
    theirs = _quantus("PointingGame", maps, masks)
    # Quantus: any tied maximum in the mask is a hit, a constant map hits, and an empty
    # mask (NaN written into a bool array) is a hit too.
    assert theirs.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert ours[:2].tolist() == [0.5, 0.0] and math.isnan(ours[2]) and ours[3] == 1.0
    # Rank accuracy with 14 zeros tied for the last 2 places of the top 4: ours counts
    # the expected share, 2 + 2 * (2 zeros in the mask / 14 tied) = 2.2857 of 4 hits.
    rank = get_metric("relevance_rank")(context(maps[3:], masks=masks[3:])).item()
    assert rank == pytest.approx((2 + 2 * 2 / 14) / 4)
    theirs = _quantus("RelevanceRankAccuracy", maps[3:], masks[3:])
    assert theirs[0] in (0.5, 0.75, 1.0)  # whatever np.argsort puts first among the zeros


# -- bad input --------------------------------------------------------------------------------


def test_bad_regions_are_refused_naming_image_shape_and_range():
    maps = torch.rand(3, 16, 16)
    with pytest.raises(MetricError, match=r"needs object masks or boxes"):
        score("pointing_game", maps)
    with pytest.raises(MetricError, match=r"masks have shape \(3, 8, 8\) but the maps are "):
        score("relevance_mass", maps, masks=torch.ones(3, 8, 8, dtype=torch.bool))
    with pytest.raises(MetricError, match=r"masks\[i\] of shape \(16, 16\)"):
        score("relevance_mass", maps, masks=torch.ones(3, 1, 16, 16, dtype=torch.bool))
    bad = torch.zeros(3, 16, 16)
    bad[1, 4, 4] = 0.5
    with pytest.raises(MetricError, match=r"masks\[1\] holds the value 0.5"):
        score("relevance_rank", maps, masks=bad)
    boxes = torch.tensor([[0, 0, 4, 4], [2, 2, 6, 6], [10, 3, 17, 8]])
    with pytest.raises(MetricError, match=r"boxes\[2\] = \[10, 3, 17, 8\].*0 <= x0 < x1 <= 16"):
        score("pointing_game", maps, boxes)
    with pytest.raises(MetricError, match=r"boxes\[0\] = \[4, 0, 4, 4\]"):
        score("pointing_game", maps, torch.tensor([[4, 0, 4, 4], [0, 0, 1, 1], [0, 0, 1, 1]]))
    with pytest.raises(MetricError, match=r"got 2 boxes for 3 maps"):
        score("energy_pointing_game", maps, torch.tensor([[0, 0, 4, 4]] * 2))
    with pytest.raises(MetricError, match=r"boxes\[1\] = \[0.5, 0.0, 4.0, 4.0\] is not in whole"):
        score(
            "energy_pointing_game", maps, torch.tensor([[0, 0, 4, 4], [0.5, 0, 4, 4], [0, 0, 1, 1]])
        )
    with pytest.raises(MetricError, match=r"boxes need 2-D maps"):
        score("pointing_game", torch.rand(3, 4, 4, 4), torch.tensor([[0, 0, 1, 1]] * 3))
    with pytest.raises(MetricError, match=r"region='masks' but got no masks"):
        score("pointing_game", maps, torch.tensor([[0, 0, 4, 4]] * 3), region="masks")
    with pytest.raises(MetricError, match=r"tolerance must be an int >= 0"):
        get_metric("pointing_game", tolerance=-1)
    with pytest.raises(MetricError, match=r"region must be one of"):
        get_metric("relevance_mass", region="box")


def test_volumes_and_signals_work_with_masks():
    torch.manual_seed(0)
    maps = torch.rand(2, 3, 4, 5)
    masks = maps > 0.7
    assert score("relevance_rank", maps, masks=masks) == [1.0, 1.0]
    assert score("pointing_game", maps, masks=masks) == [1.0, 1.0]
    assert score("relevance_mass", maps[:, 0, 0], masks=masks[:, 0, 0]) == pytest.approx(
        (maps[:, 0, 0] * masks[:, 0, 0]).sum(1) / maps[:, 0, 0].sum(1)
    )
    with pytest.raises(MetricError, match="tolerance needs 2-D maps"):
        score("pointing_game", maps, masks=masks, tolerance=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_values_on_cuda():
    torch.manual_seed(0)
    maps = torch.rand(4, 24, 20)
    boxes = torch.tensor([[0, 0, 5, 5], [3, 4, 20, 24], [10, 2, 12, 9], [1, 1, 19, 23]])
    masks = localisation.masks_from_boxes(boxes, (24, 20))
    for name in LOCALISATION:
        for kw in (dict(boxes=boxes), dict(masks=masks)):
            cpu = get_metric(name, tolerance=3) if name == "pointing_game" else get_metric(name)
            on_cpu = cpu(context(maps, **kw))
            on_gpu = cpu(context(maps.cuda(), **{k: v.cuda() for k, v in kw.items()}))
            assert on_gpu.device.type == "cuda"
            assert torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-9, equal_nan=True), name
