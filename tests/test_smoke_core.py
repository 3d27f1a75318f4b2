"""Hand-computed Grad-CAM on a one-conv model, and the CAM == Grad-CAM x (h*w) identity."""

import torch
from torch import nn

import camlib

from conftest import ModelState


def test_gradcam_matches_hand_computation():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, 3, padding=1)
    fc = nn.Linear(2 * 4 * 4, 3)
    model = nn.Sequential(conv, nn.Flatten(), fc).eval()
    x = torch.randn(2, 1, 4, 4)
    maps = camlib.GradCAM(model, "0")(x, targets=[2, 0], upsample=False, normalize=False)
    a = conv(x).detach()
    w = fc.weight.detach().view(3, 2, 4, 4)
    alpha = torch.stack([w[2].mean((1, 2)), w[0].mean((1, 2))])  # dy/dA is the fc weight
    expected = torch.relu((alpha[:, :, None, None] * a).sum(1))
    torch.testing.assert_close(maps, expected, rtol=1e-6, atol=1e-6)


def test_cam_equals_gradcam_times_hw(small_net, digits):
    before = ModelState.of(small_net)
    cam = camlib.CAM(small_net, "relu3")(digits, upsample=False, normalize=False)
    grad = camlib.GradCAM(small_net, "relu3")(digits, upsample=False, normalize=False)
    h, w = cam.shape[-2:]
    assert cam.abs().max() > 0
    torch.testing.assert_close(cam, grad * (h * w), rtol=1e-5, atol=1e-6)
    before.assert_unchanged(small_net)
