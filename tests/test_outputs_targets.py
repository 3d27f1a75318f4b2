"""Model outputs and targets: dict/object/tuple logits, binary heads, segmentation, detection.

References: the wrapped models' maps equal the plain model's exactly; binary heads are
checked against CAM, Grad-CAM and Score-CAM written out by hand (class 1 = the logit,
class 0 = minus the logit); SegmentationTarget and DetectionTarget against a Grad-CAM
computed by hand (forward hook + ``torch.autograd.grad``) from the same score, on
torchvision ``fcn_resnet50`` and ``fasterrcnn_mobilenet_v3_large_320_fpn`` with random
weights.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import camlib

from conftest import SmallConvNet, left_alone

TOL = dict(rtol=1e-5, atol=1e-6)  # float32 models (float64 ones: see test_transformers.py)


def images(n: int = 3, size: int = 16) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, 1, size, size)


def base() -> SmallConvNet:
    torch.manual_seed(0)
    return SmallConvNet().eval()


@dataclass
class Output:
    """A HuggingFace-style output object."""

    logits: torch.Tensor
    hidden: torch.Tensor


class Wrapped(nn.Module):
    """SmallConvNet whose logits come back in another container."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.net, self.form = base(), form

    def forward(self, x: torch.Tensor) -> object:
        y = self.net(x)
        aux = y.detach() * 0 + 1
        if self.form == "dict_logits":
            return {"aux": aux, "logits": y}
        if self.form == "dict_out":
            return {"out": y, "aux": aux}
        if self.form == "object":
            return Output(logits=y, hidden=aux)
        if self.form == "tuple":
            return (y, aux)
        if self.form == "list":
            return [y, aux]
        if self.form == "dict_other":
            return {"features": y}
        if self.form == "plain_object":
            return object()
        raise AssertionError(self.form)


@pytest.mark.parametrize("form", ["dict_logits", "dict_out", "object", "tuple", "list"])
@pytest.mark.parametrize("method", ["gradcam", "cam", "scorecam", "ablationcam", "gradcam++"])
def test_logits_inside_containers_give_the_plain_models_maps(form, method):
    model, x = Wrapped(form).eval(), images()
    options = {"batch_size": 64} if method in ("scorecam", "ablationcam") else {}
    with camlib.METHODS[method](model.net, "relu3", **options) as ex:
        want = ex(x, upsample=False, normalize=False)
        want_classes, want_scores = ex.classes, ex.scores
    with left_alone(model), camlib.METHODS[method](model, "net.relu3", **options) as ex:
        got = ex(x, upsample=False, normalize=False)
        assert torch.equal(ex.classes, want_classes)
        torch.testing.assert_close(ex.scores, want_scores, **TOL)
    torch.testing.assert_close(got, want, **TOL)
    assert want.abs().max() > 0


@pytest.mark.parametrize(
    "form, named",
    [
        ("dict_other", "a dict with keys ['features']"),
        ("plain_object", "a object"),
    ],
)
def test_outputs_without_logits_are_named_in_the_error(form, named):
    model = Wrapped(form).eval()
    with left_alone(model), pytest.raises(camlib.TargetError) as info:
        camlib.GradCAM(model, "net.relu3")(images(), targets=1)
    message = str(info.value)
    assert named in message
    assert "targets=callable(output)" in message
    # the way out works: a callable target reads the output itself
    maps = camlib.GradCAM(Wrapped("dict_other").eval(), "net.relu3")(
        images(), targets=lambda out: out["features"][:, 1], upsample=False, normalize=False
    )
    want = camlib.GradCAM(base(), "relu3")(images(), 1, upsample=False, normalize=False)
    torch.testing.assert_close(maps, want, **TOL)


def test_per_pixel_logits_with_class_targets_point_to_segmentation_target():
    class Dense(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 3, padding=1)

        def forward(self, x):
            return {"out": self.conv(x)}

    with pytest.raises(camlib.TargetError, match="SegmentationTarget"):
        camlib.GradCAM(Dense(), "conv")(images(), targets=0)


# -- binary heads ------------------------------------------------------------------------------
class BinaryNet(nn.Module):
    """conv -> ReLU -> GAP -> one logit, as (N, 1) or (N,)."""

    def __init__(self, flat: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 1)
        self.flat = flat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(self.relu(self.conv(x)).mean((2, 3)))
        return y[:, 0] if self.flat else y


def binary(flat: bool, x: torch.Tensor) -> BinaryNet:
    """A BinaryNet whose bias puts the logit's zero between the images' logits: half of
    them are class 1, half class 0."""
    model = BinaryNet(flat).eval()
    with torch.no_grad():
        logit = model(x).reshape(-1).sort().values
        model.fc.bias -= logit[len(x) // 2 - 1 : len(x) // 2 + 1].mean()
    return model


def _binary_parts(model: BinaryNet, x: torch.Tensor):
    with torch.no_grad():
        a = model.relu(model.conv(x))
        logit = model(x).reshape(-1)
    return a, logit


@pytest.mark.parametrize("flat", [False, True], ids=["N1", "N"])
def test_binary_head_classes_and_scores(flat):
    x = images(6)
    model = binary(flat, x)
    _, logit = _binary_parts(model, x)
    assert (logit > 0).any() and (logit <= 0).any(), "need both signs for the check"
    with left_alone(model), camlib.GradCAM(model, "relu") as ex:
        ex(x)
        assert torch.equal(ex.classes, (logit > 0).long())
        torch.testing.assert_close(ex.scores, logit.abs(), **TOL)
        ex(x, targets=0)
        torch.testing.assert_close(ex.scores, -logit, **TOL)
        ex(x, targets=1)
        torch.testing.assert_close(ex.scores, logit, **TOL)
    with pytest.raises(camlib.TargetError, match="binary head"):
        camlib.GradCAM(model, "relu")(x, targets=2)


@pytest.mark.parametrize("flat", [False, True], ids=["N1", "N"])
def test_binary_head_maps_by_hand(flat):
    """CAM: ReLU(+-sum_k w_k A_k); Grad-CAM: the same / hw (d logit / dA = w / hw);
    Score-CAM: weights sigmoid(+-logit(x * H_k))."""
    x = images(4)
    model = binary(flat, x)
    a, _ = _binary_parts(model, x)
    w = model.fc.weight.detach()[0]
    signed = torch.einsum("k,nkij->nij", w, a)
    hw = a.shape[2] * a.shape[3]
    for cls, sign in ((1, 1.0), (0, -1.0)):
        cam = camlib.CAM(model, "relu")(x, cls, upsample=False, normalize=False)
        torch.testing.assert_close(cam, (sign * signed).relu(), **TOL)
        grad = camlib.GradCAM(model, "relu")(x, cls, upsample=False, normalize=False)
        torch.testing.assert_close(grad, (sign * signed).relu() / hw, **TOL)
        assert cam.abs().max() > 0
        # Score-CAM by hand: one masked forward per (image, channel)
        weights = torch.zeros(len(x), 4)
        with torch.no_grad():
            for n in range(len(x)):
                for k in range(4):
                    h = a[n, k]
                    if h.max() - h.min() <= 1e-12 * h.abs().max():
                        continue
                    h = (h - h.min()) / (h.max() - h.min())
                    weights[n, k] = torch.sigmoid(sign * model(x[n : n + 1] * h).reshape(()))
        want = torch.einsum("nk,nkij->nij", weights, a).relu()
        got = camlib.ScoreCAM(model, "relu", batch_size=5)(x, cls, upsample=False, normalize=False)
        torch.testing.assert_close(got, want, **TOL)
    # targets=None picks by sign: each image's map is the one of its own class
    none = camlib.CAM(model, "relu")(x, upsample=False, normalize=False)
    positive = (signed.flatten(1).mean(1) + model.fc.bias.detach()) > 0
    by_sign = torch.where(positive[:, None, None], signed, -signed).relu()
    torch.testing.assert_close(none, by_sign, **TOL)


# -- segmentation -------------------------------------------------------------------------------
@functools.cache
def fcn() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=3, aux_loss=False
    ).eval()


def hand_gradcam(model, module, x, score_of):
    """Grad-CAM (N, h, w) of ``score_of(output)`` written out, and the scores."""
    seen = []
    handle = module.register_forward_hook(lambda m, args, out: seen.append(out))
    try:
        output = model(x)
    finally:
        handle.remove()
    scores = score_of(output)
    (g,) = torch.autograd.grad(scores.sum(), seen[0])
    a = seen[0].detach()
    return (g.mean((2, 3))[:, :, None, None] * a).sum(1).relu(), scores.detach(), a


def test_segmentation_target_on_fcn_resnet50():
    model = fcn()
    torch.manual_seed(1)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        logits = model(x)["out"]
    category = int(logits.argmax(1).flatten().bincount(minlength=3).argmax())
    wins = logits.argmax(1) == category
    layer = model.backbone.layer4

    def by_hand(output):
        return (output["out"][:, category] * wins).flatten(1).sum(1)

    want, want_scores, _ = hand_gradcam(model, layer, x, by_hand)
    with left_alone(model), camlib.GradCAM(model, "backbone.layer4") as ex:
        got = ex(x, camlib.SegmentationTarget(category), upsample=False, normalize=False)
        assert ex.classes is None
        torch.testing.assert_close(ex.scores, want_scores, rtol=1e-5, atol=0)
    assert want.max() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.max()))
    # an explicit (H, W) mask: the top-left quarter
    mask = torch.zeros(48, 48)
    mask[:24, :24] = 1
    want_mask, _, _ = hand_gradcam(
        model, layer, x, lambda o: (o["out"][:, category] * mask).flatten(1).sum(1)
    )
    maps = camlib.GradCAM(model, "backbone.layer4")(x, camlib.SegmentationTarget(category, mask))
    assert maps.shape == (1, 48, 48)  # at the input's size
    up = F.interpolate(want_mask[:, None], size=(48, 48), mode="bilinear")[:, 0]
    want_final = (up - up.min()) / (up.max() - up.min())
    torch.testing.assert_close(maps, want_final, rtol=1e-4, atol=1e-4)
    with pytest.raises(camlib.TargetError, match="out of range for 3 classes"):
        camlib.GradCAM(model, "backbone.layer4")(x, camlib.SegmentationTarget(3))


# -- detection ------------------------------------------------------------------------------------
DET_LAYER = "backbone.body.16"


@functools.cache
def detector() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None
    ).eval()
    model.roi_heads.score_thresh = 0.0  # random weights: keep every detection
    with torch.no_grad():  # a random classifier with some spread (the default is ~uniform)
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.5)
    return model


def test_detection_target_gradcam_and_eigencam_on_faster_rcnn():
    model = detector()
    torch.manual_seed(1)
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        det = model(x)[0]
    assert len(det["boxes"]) > 1
    pick = 1  # the second detection: the match must not just be the first one
    box, label = det["boxes"][pick : pick + 1], det["labels"][pick : pick + 1]
    target = camlib.DetectionTarget(box, label)

    def by_hand(output):
        d = output[0]
        same = d["labels"] == label
        iou = torchvision.ops.box_iou(box, d["boxes"].detach())[0]
        best = torch.where(same, iou, -1.0).argmax()
        return d["scores"][best][None]

    module = dict(model.named_modules())[DET_LAYER]
    want, want_scores, act = hand_gradcam(model, module, x, by_hand)
    torch.testing.assert_close(want_scores, det["scores"][pick : pick + 1])
    with left_alone(model), camlib.GradCAM(model, DET_LAYER) as ex:
        got = ex(x, target, upsample=False, normalize=False)
        torch.testing.assert_close(ex.scores, det["scores"][pick : pick + 1])
    assert want.max() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.max()))

    with camlib.EigenCAM(model, DET_LAYER) as ex:
        eigen = ex(x, target, upsample=False, normalize=False)
        torch.testing.assert_close(ex.scores, det["scores"][pick : pick + 1])
    m = act[0].flatten(1).T.double()  # positions x channels
    p = m @ torch.linalg.svd(m, full_matrices=False).Vh[0]
    p = (p if p.sum() >= 0 else -p).relu().reshape(1, *act.shape[2:])
    torch.testing.assert_close(eigen.double(), p, rtol=1e-4, atol=1e-5 * float(p.max()))

    # a box nothing matches scores 0 with no gradient: camlib says so
    far = camlib.DetectionTarget(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), label)
    with pytest.raises(camlib.LayerError, match="do not depend on"):
        camlib.GradCAM(model, DET_LAYER)(x, far)
