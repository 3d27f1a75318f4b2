"""targets=: None (top class), an int for all, a list / tuple / 1-D or 0-d integer tensor,
and callables; explainer.classes / explainer.scores; Grad-CAM against hand computations
with torch.autograd for class and callable targets (including linearity in the target)."""

from __future__ import annotations

import formulas
import pytest
import torch

import camlib

from conftest import METHOD_NAMES, SmallConvNet, batch, make, small

CLASS_ONLY = [n for n in METHOD_NAMES if camlib.METHODS[n].class_targets_only]
"""Methods that explain class scores only (CAM, Finer-CAM): no callable targets."""


def expected_scores(name: str, out: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """``explainer.scores``: the classes' logits; Finer-CAM reports the score it explains,
    the class's logit minus the softmax-weighted logits of its 3 closest rivals (its
    documented contract), written out in tests/formulas.py."""
    if name == "finercam":
        return formulas.finer_score(classes)(out)
    return out[torch.arange(len(classes)), classes]


def features(model: SmallConvNet, x: torch.Tensor) -> torch.Tensor:
    """relu3's output, computed without camlib."""
    x = model.relu1(model.conv1(x))
    x = model.pool(model.relu2(model.conv2(x)))
    return model.relu3(model.conv3(x))


def head(model: SmallConvNet, a: torch.Tensor) -> torch.Tensor:
    return model.fc(model.gap(a).flatten(1))


def logits(model, x) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def weights_and_activation(model, x, score_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM channel weights (N, C) for scores ``score_fn(output)``, and relu3's output."""
    with torch.no_grad():
        a = features(model, x)
    a = a.clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(score_fn(head(model, a)).sum(), a)
    return grad.mean((2, 3)), a.detach()


def weighted_sum(weights: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """sum_k w_k A^k, before the ReLU."""
    return (weights[:, :, None, None] * a).sum(1)


def class_score(classes):
    classes = torch.as_tensor(classes)
    return lambda out: out.gather(1, classes[:, None])[:, 0]


# --------------------------------------------------------------------------------------
# classes and scores for every accepted form
# --------------------------------------------------------------------------------------

FORMS = {
    "int": (7, [7, 7, 7]),
    "int zero": (0, [0, 0, 0]),
    "list": ([3, 9, 0], [3, 9, 0]),
    "tuple": ((1, 1, 4), [1, 1, 4]),
    "long tensor": (torch.tensor([2, 5, 8]), [2, 5, 8]),
    "int32 tensor": (torch.tensor([6, 0, 9], dtype=torch.int32), [6, 0, 9]),
    "0-d tensor": (torch.tensor(4), [4, 4, 4]),
    "last class": (9, [9, 9, 9]),
}


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_classes_and_scores(name, form):
    targets, expected = FORMS[form]
    model, x = small(), batch()
    out = logits(model, x)
    explainer = make(name, model)
    explainer(x, targets)
    assert explainer.classes.dtype == torch.long
    assert explainer.classes.tolist() == expected
    torch.testing.assert_close(explainer.scores, expected_scores(name, out, expected))
    assert explainer.scores.shape == (3,)
    assert not explainer.scores.requires_grad


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_none_is_top_class(name):
    model = small()
    with torch.no_grad():
        model.fc.bias.zero_()  # so that images of different scales get different top classes
    x = batch(6) * torch.linspace(0.2, 5.0, 6)[:, None, None, None]
    out = logits(model, x)
    explainer = make(name, model)
    maps = explainer(x)
    top = out.argmax(1)
    assert len(set(top.tolist())) > 1, "the batch should have different top classes"
    assert explainer.classes.tolist() == top.tolist()
    torch.testing.assert_close(explainer.scores, expected_scores(name, out, top.tolist()))
    torch.testing.assert_close(maps, make(name, model)(x, top))


@pytest.mark.parametrize("name", [n for n in METHOD_NAMES if n not in CLASS_ONLY])
def test_callable_target_classes_and_scores(name):
    model, x = small(), batch()
    out = logits(model, x)
    explainer = make(name, model)
    explainer(x, targets=[1, 2, 3])
    explainer(x, lambda o: o[:, 3] + o[:, 5])
    assert explainer.classes is None
    torch.testing.assert_close(explainer.scores, out[:, 3] + out[:, 5])


def test_classes_and_scores_follow_the_latest_call_and_close():
    model, x = small(), batch()
    out = logits(model, x)
    with camlib.GradCAM(model, "relu3") as explainer:
        assert explainer.classes is None and explainer.scores is None
        explainer(x, 2)
        assert explainer.classes.tolist() == [2, 2, 2]
        explainer(x[:2], [5, 6])
        assert explainer.classes.tolist() == [5, 6]
        torch.testing.assert_close(explainer.scores, out[[0, 1], [5, 6]])
    assert explainer.classes is None and explainer.scores is None


def test_per_image_targets_are_per_image():
    """Each image's map depends only on its own target: [3, 9, 0] == stacked single calls."""
    model, x = small(), batch()
    raw = camlib.GradCAM(model, "relu3")(x, [3, 9, 0], upsample=False, normalize=False)
    for i, c in enumerate([3, 9, 0]):
        one = camlib.GradCAM(model, "relu3")(x[i : i + 1], c, upsample=False, normalize=False)
        torch.testing.assert_close(raw[i : i + 1], one, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(
        raw[0], camlib.GradCAM(model, "relu3")(x, 9, upsample=False, normalize=False)[0]
    )


# --------------------------------------------------------------------------------------
# Grad-CAM numbers against autograd
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["int", "list", "tuple", "long tensor", "0-d tensor"])
def test_gradcam_class_targets_match_hand_computation(form):
    targets, expected = FORMS[form]
    model, x = small(), batch()
    ours = camlib.GradCAM(model, "relu3")(x, targets, upsample=False, normalize=False)
    w, a = weights_and_activation(model, x, class_score(expected))
    hand = torch.relu(weighted_sum(w, a))
    assert hand.abs().max() > 0
    torch.testing.assert_close(ours, hand, rtol=1e-5, atol=1e-7)


def test_gradcam_callable_target_matches_hand_computation():
    model, x = small(), batch()

    def target(out):
        return out[:, 3] + out[:, 5]

    ours = camlib.GradCAM(model, "relu3")(x, target, upsample=False, normalize=False)
    w, a = weights_and_activation(model, x, target)
    hand = torch.relu(weighted_sum(w, a))
    assert hand.abs().max() > 0
    torch.testing.assert_close(ours, hand, rtol=1e-5, atol=1e-7)


def test_gradcam_is_linear_in_the_target_before_relu():
    """Weights for out[:, 3] + out[:, 5] are the sums of the weights of classes 3 and 5; so the
    pre-ReLU maps add up. After the ReLU they do not, in general, so compare before it."""
    model, x = small(), batch()
    w3, a = weights_and_activation(model, x, class_score([3, 3, 3]))
    w5, _ = weights_and_activation(model, x, class_score([5, 5, 5]))
    ours = camlib.GradCAM(model, "relu3")(
        x, lambda out: out[:, 3] + out[:, 5], upsample=False, normalize=False
    )
    summed = weighted_sum(w3, a) + weighted_sum(w5, a)
    torch.testing.assert_close(ours, torch.relu(summed), rtol=1e-5, atol=1e-6)
    # the comparison is not vacuous: adding the two ReLU-ed maps would differ here
    three = camlib.GradCAM(model, "relu3")(x, 3, upsample=False, normalize=False)
    five = camlib.GradCAM(model, "relu3")(x, 5, upsample=False, normalize=False)
    torch.testing.assert_close(three, torch.relu(weighted_sum(w3, a)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(five, torch.relu(weighted_sum(w5, a)), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ours, three + five, atol=1e-5)


def test_gradcam_callable_with_negative_weight_and_scale():
    model, x = small(), batch()

    def target(out):
        return 2.0 * out[:, 1] - out[:, 4]

    ours = camlib.GradCAM(model, "relu3")(x, target, upsample=False, normalize=False)
    w, a = weights_and_activation(model, x, target)
    torch.testing.assert_close(ours, torch.relu(weighted_sum(w, a)), rtol=1e-5, atol=1e-7)


def test_callable_equal_to_class_gives_same_maps():
    model, x = small(), batch()
    for name in ("gradcam", "guided_backprop", "guided_gradcam"):
        by_class = make(name, model)(x, [3, 9, 0])
        by_callable = make(name, model)(x, class_score([3, 9, 0]))
        torch.testing.assert_close(by_class, by_callable)


def test_callable_receives_the_model_output():
    model, x = small(), batch()
    seen = []

    def target(out):
        seen.append(out)
        return out[:, 0]

    camlib.GradCAM(model, "relu3")(x, target)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0].detach(), logits(model, x))


def test_cam_class_target_matches_classifier_weights():
    model, x = small(), batch()
    ours = camlib.CAM(model, "relu3")(x, [3, 9, 0], upsample=False, normalize=False)
    with torch.no_grad():
        a = features(model, x)
    w = model.fc.weight.detach()[[3, 9, 0]]
    torch.testing.assert_close(ours, torch.relu(weighted_sum(w, a)), rtol=1e-5, atol=1e-6)
