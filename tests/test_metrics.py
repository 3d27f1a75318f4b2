"""camlib.metrics on hand-made maps and a hand-built model, with answers known in advance."""

import math

import pytest
import torch
from torch import nn

from camlib import metrics

# -- pointing game and boxes ------------------------------------------------------------------


def peaked(h, w, points):
    """(N, H, W) zero maps with a single 1 at each (x, y)."""
    maps = torch.zeros(len(points), h, w)
    for n, (x, y) in enumerate(points):
        maps[n, y, x] = 1.0
    return maps


def test_pointing_game_hits_inside_and_misses_outside():
    box = [4, 2, 8, 6]  # columns 4..7, rows 2..5
    points = [(5, 3), (4, 2), (7, 5), (8, 3), (3, 3), (5, 6), (5, 1), (0, 0)]
    expected = [True, True, True, False, False, False, False, False]
    maps = peaked(10, 12, points)
    boxes = torch.tensor([box] * len(points))
    assert metrics.pointing_game(maps, boxes).tolist() == expected


def test_pointing_game_per_image_boxes_and_tolerance():
    maps = peaked(8, 8, [(1, 1), (6, 6)])
    boxes = torch.tensor([[0, 0, 2, 2], [2, 2, 5, 5]])
    assert metrics.pointing_game(maps, boxes).tolist() == [True, False]
    assert metrics.pointing_game(maps, boxes, tolerance=1).tolist() == [True, False]
    assert metrics.pointing_game(maps, boxes, tolerance=2).tolist() == [True, True]


def test_pointing_game_constant_map_is_a_miss():
    maps = torch.zeros(2, 5, 5)  # argmax would be (0, 0), inside the box, but nothing points
    maps[1] = 3.0
    boxes = torch.tensor([[0, 0, 5, 5], [0, 0, 5, 5]])
    assert metrics.pointing_game(maps, boxes).tolist() == [False, False]


def test_pointing_game_uses_the_maximum_not_the_mass():
    maps = torch.full((1, 6, 6), 0.5)
    maps[0, :3, :3] = 0.9  # most mass and the maximum top-left...
    maps[0, 5, 5] = 1.0  # ...but the single maximum is bottom-right
    assert metrics.pointing_game(maps, torch.tensor([[0, 0, 3, 3]])).tolist() == [False]
    assert metrics.pointing_game(maps, torch.tensor([[5, 5, 6, 6]])).tolist() == [True]


def test_box_area_fraction_exact():
    boxes = torch.tensor([[0, 0, 14, 28], [10, 20, 38, 48], [0, 0, 56, 56], [3, 3, 3, 9]])
    got = metrics.box_area_fraction(boxes, (56, 56))
    expected = torch.tensor([14 * 28, 28 * 28, 56 * 56, 0]) / (56 * 56)
    torch.testing.assert_close(got, expected.float())
    assert got[0].item() == 0.125


def test_box_area_fraction_clips_to_the_image_and_is_the_random_point_hit_rate():
    got = metrics.box_area_fraction(torch.tensor([[-4, -4, 5, 10]]), (10, 20))
    assert got.item() == pytest.approx(5 * 10 / 200)
    # every pixel tried once as the "random point": the hit rate is the area fraction
    h, w = 6, 7
    box = torch.tensor([[1, 2, 5, 4]])
    points = [(x, y) for y in range(h) for x in range(w)]
    hits = metrics.pointing_game(peaked(h, w, points), box.expand(len(points), 4))
    assert hits.float().mean().item() == pytest.approx(
        metrics.box_area_fraction(box, (h, w)).item()
    )


def test_box_energy_fraction():
    boxes = torch.tensor([[0, 0, 2, 4], [1, 1, 3, 3], [0, 0, 1, 1]])
    maps = torch.ones(3, 4, 4)
    maps[1] = 0.0
    maps[1, 1:3, 1:3] = 2.0  # all mass inside
    maps[2] = 0.0  # no mass: undefined
    got = metrics.box_energy_fraction(maps, boxes)
    assert got[0].item() == pytest.approx(0.5)  # uniform map: the area fraction
    assert got[1].item() == pytest.approx(1.0)
    assert math.isnan(got[2].item())


def test_boxes_from_masks():
    masks = torch.zeros(3, 5, 6, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 4, 5] = True
    masks[1, 0, 0] = True
    got = metrics.boxes_from_masks(masks)
    assert got.tolist() == [[2, 1, 5, 3], [0, 0, 6, 5], [0, 0, 0, 0]]


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="boxes"):
        metrics.pointing_game(torch.zeros(2, 4, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        metrics.pointing_game(torch.zeros(4, 4), torch.zeros(1, 4))


# -- rank correlation ---------------------------------------------------------------------


def test_rank_correlation_self_reverse_and_monotone():
    torch.manual_seed(0)
    a = torch.rand(5, 7, 9)
    assert torch.allclose(metrics.rank_correlation(a, a), torch.ones(5, dtype=torch.float64))
    assert torch.allclose(metrics.rank_correlation(a, -a), -torch.ones(5, dtype=torch.float64))
    monotone = torch.exp(3 * a) ** 3 + 1.0
    assert torch.allclose(metrics.rank_correlation(a, monotone), torch.ones(5, dtype=torch.float64))


def test_rank_correlation_with_ties_by_hand():
    # a = [1, 2, 2, 3] -> ranks [1, 2.5, 2.5, 4]; b = [1, 3, 2, 2] -> ranks [1, 4, 2.5, 2.5]
    # centred: [-1.5, 0, 0, 1.5] and [-1.5, 1.5, 0, 0]; rho = 2.25 / sqrt(4.5 * 4.5) = 0.5
    a = torch.tensor([[1.0, 2.0, 2.0, 3.0]])
    b = torch.tensor([[1.0, 3.0, 2.0, 2.0]])
    assert metrics.average_ranks(a).tolist() == [[1.0, 2.5, 2.5, 4.0]]
    assert metrics.average_ranks(b).tolist() == [[1.0, 4.0, 2.5, 2.5]]
    assert metrics.rank_correlation(a, b).item() == pytest.approx(0.5)


def test_rank_correlation_is_per_image_and_nan_for_constant_maps():
    a = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[5.0, 5.0], [5.0, 5.0]]])
    b = torch.tensor([[[3.0, 2.0], [1.0, 0.0]], [[0.0, 1.0], [2.0, 3.0]]])
    got = metrics.rank_correlation(a, b)
    assert got[0].item() == pytest.approx(-1.0)
    assert math.isnan(got[1].item())


def test_average_ranks_many_ties_batched():
    x = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0], [4.0, 3.0, 2.0, 1.0, 0.0]])
    assert metrics.average_ranks(x).tolist() == [[2.0, 2.0, 2.0, 4.5, 4.5], [5, 4, 3, 2, 1]]


# -- deletion / insertion / auc ---------------------------------------------------------------


class PatchScore(nn.Module):
    """Two-class model whose class-0 logit is twice the sum of a known 2x2 patch."""

    def __init__(self, h=4, w=4):
        super().__init__()
        weight = torch.zeros(1, 1, h, w)
        weight[..., 1:3, 1:3] = 1.0
        self.register_buffer("weight", weight)

    def forward(self, x):
        z = (x * self.weight).sum(dim=(1, 2, 3))
        return torch.stack([z, -z], dim=1)


def patch_inputs(n=3, h=4, w=4):
    return torch.ones(n, 1, h, w)


def test_perfect_map_beats_random_on_deletion_and_insertion():
    torch.manual_seed(0)
    model = PatchScore()
    x = patch_inputs(n=64)
    perfect = model.weight[0].expand(64, 4, 4) + 0.01 * torch.rand(64, 4, 4)
    random = torch.rand(64, 4, 4)
    d_perfect = metrics.auc(metrics.deletion_curve(model, x, perfect, 0, steps=16))
    d_random = metrics.auc(metrics.deletion_curve(model, x, random, 0, steps=16))
    i_perfect = metrics.auc(metrics.insertion_curve(model, x, perfect, 0, steps=16))
    i_random = metrics.auc(metrics.insertion_curve(model, x, random, 0, steps=16))
    assert d_perfect.mean() < d_random.mean() - 0.1
    assert i_perfect.mean() > i_random.mean() + 0.05
    assert (d_perfect <= d_random + 1e-6).all()
    assert (i_perfect >= i_random - 1e-6).all()


def test_deletion_and_insertion_curves_by_hand():
    model = PatchScore()
    x = patch_inputs(n=2)
    perfect = model.weight[0].expand(2, 4, 4).clone()
    perfect[:, 1:3, 1:3] += torch.tensor([[4.0, 3.0], [2.0, 1.0]])  # a strict order inside
    sig = torch.sigmoid
    # deletion, one pixel per step: the patch sum z goes 4, 3, 2, 1, 0, then stays 0
    z = torch.tensor([4.0, 3, 2, 1] + [0.0] * 13)
    got = metrics.deletion_curve(model, x, perfect, [0, 0], steps=16)
    torch.testing.assert_close(got, sig(2 * z).expand(2, 17))
    # insertion from a zero canvas: z goes 0, 1, 2, 3, 4, then stays 4
    z = torch.tensor([0.0, 1, 2, 3] + [4.0] * 13)
    got = metrics.insertion_curve(model, x, perfect, torch.tensor([0, 0]), steps=16)
    torch.testing.assert_close(got, sig(2 * z).expand(2, 17))
    # class 1, raw logits, a baseline of 0.5: the deleted pixels keep half their value
    got = metrics.deletion_curve(model, x, perfect, 1, steps=4, baseline=0.5, softmax=False)
    torch.testing.assert_close(got[0], -torch.tensor([4.0, 2.0, 2.0, 2.0, 2.0]))


def test_curves_endpoints_batching_and_tensor_baseline():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.LazyLinear(5)).eval()
    x = torch.randn(7, 2, 6, 6)
    maps = torch.rand(7, 6, 6)
    base = metrics.gaussian_blur(x, 1.0)
    with torch.no_grad():
        p_x = model(x).softmax(1)[:, 2]
        p_b = model(base).softmax(1)[:, 2]
    d = metrics.deletion_curve(model, x, maps, 2, steps=9, baseline=base)
    i = metrics.insertion_curve(model, x, maps, 2, steps=9, baseline=base, batch_size=3)
    assert d.shape == i.shape == (7, 10)
    torch.testing.assert_close(d[:, 0], p_x)
    torch.testing.assert_close(d[:, -1], p_b)
    torch.testing.assert_close(i[:, 0], p_b)
    torch.testing.assert_close(i[:, -1], p_x)
    d_chunked = metrics.deletion_curve(model, x, maps, 2, steps=9, baseline=base, batch_size=2)
    torch.testing.assert_close(d, d_chunked)


def test_curve_input_checks():
    model = PatchScore()
    with pytest.raises(ValueError, match="match the inputs"):
        metrics.deletion_curve(model, patch_inputs(), torch.rand(3, 2, 2), 0)
    with pytest.raises(ValueError, match="targets"):
        metrics.insertion_curve(model, patch_inputs(), torch.rand(3, 4, 4), [0, 1])


def test_auc():
    assert metrics.auc(torch.full((3, 11), 0.7)).tolist() == pytest.approx([0.7] * 3)
    assert metrics.auc(torch.linspace(0, 1, 21)).item() == pytest.approx(0.5)
    assert metrics.auc(torch.tensor([[0.0, 1.0, 0.0]])).item() == pytest.approx(0.5)
    assert metrics.auc(torch.tensor([[1.0, 0.0, 0.0, 0.0]])).item() == pytest.approx(1 / 6)
    with pytest.raises(ValueError):
        metrics.auc(torch.ones(2, 1))


def test_gaussian_blur_keeps_constants_and_mass():
    x = torch.full((2, 3, 9, 9), 0.25)
    torch.testing.assert_close(metrics.gaussian_blur(x, 2.0), x)
    spike = torch.zeros(1, 1, 15, 15)
    spike[0, 0, 7, 7] = 1.0
    blurred = metrics.gaussian_blur(spike, 1.5)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert blurred[0, 0, 7, 7] == blurred.max()
    torch.testing.assert_close(blurred[0, 0], blurred[0, 0].T)
