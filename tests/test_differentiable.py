"""Differentiable maps: ``explainer(x, targets, differentiable=True)``.

The maps carry gradient to the model's parameters (and to the input): checked against a
hand-built differentiable Grad-CAM (own hooks, ``autograd.grad(create_graph=True)``,
weighted sum, ReLU, bilinear upsampling, min-max) in float64 to rounding, and against
finite differences (``torch.autograd.gradcheck``) for every registered method that
declares ``differentiable = True``; every other registered method must refuse with a
:class:`camlib.MethodError` that names it and says why, before running the model. The
promises of a plain call still hold: no hooks left, no ``.grad`` written by camlib, the
mode and ``requires_grad`` untouched; and the default call records no graph before the
target layer.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camlib
from camlib.maps import normalize_minmax
from camlib.methods.families import GradientCAM, weighted_sum

from conftest import METHOD_NAMES, SmallConvNet, batch, count_forwards, left_alone, make, small

DIFFERENTIABLE = [n for n in METHOD_NAMES if camlib.METHODS[n].differentiable]
REFUSING = [n for n in METHOD_NAMES if not camlib.METHODS[n].differentiable]


class TinyNet(nn.Module):
    """Smooth after the target layer (tanh, weights scaled into its curved range), so the
    layer gradient g varies with position and second derivatives are not all zero."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.act1 = nn.Tanh()
        self.pool = nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.act2 = nn.Tanh()
        self.conv3 = nn.Conv2d(8, 8, 1)
        self.act3 = nn.Tanh()
        self.fc = nn.Linear(8, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.mul_(3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act1(self.conv1(x)))
        x = self.act3(self.conv3(self.act2(self.conv2(x))))
        return self.fc(x.mean((2, 3)))


def tiny() -> TinyNet:
    torch.manual_seed(3)
    return TinyNet().double().eval()


def make_on(name: str, model: nn.Module, layer) -> camlib.Explainer:
    cls = camlib.METHODS[name]
    return cls(model, layer) if cls.uses_layer else cls(model)


class Explained(nn.Module):
    """``explainer(x, targets, differentiable=True)`` as a module, so that
    ``torch.func.functional_call`` can swap the explained model's parameters."""

    def __init__(self, model: nn.Module, explainer: camlib.Explainer, targets) -> None:
        super().__init__()
        self.model, self.explainer, self.targets = model, explainer, targets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.explainer(x, self.targets, differentiable=True)


def loss_weights(shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """A fixed, non-uniform weighting, so the loss depends on where the map's mass is."""
    gen = torch.Generator().manual_seed(11)
    return torch.rand(shape, generator=gen, dtype=torch.float64).to(dtype)


# --------------------------------------------------------------------------------------
# against a hand-built differentiable Grad-CAM
# --------------------------------------------------------------------------------------


def hand_gradcam(model: nn.Module, layer: nn.Module, x: torch.Tensor, classes: torch.Tensor):
    """Differentiable Grad-CAM written out: hook, grad with create_graph, weighted sum,
    ReLU, bilinear upsampling (align_corners=False), (m - min) / (max - min)."""
    store = []
    handle = layer.register_forward_hook(lambda m, i, o: store.append(o))
    try:
        out = model(x)
    finally:
        handle.remove()
    (a,) = store
    score = out.gather(1, classes[:, None]).sum()
    (g,) = torch.autograd.grad(score, a, create_graph=True)
    cam = torch.relu((g.mean((2, 3))[:, :, None, None] * a).sum(1))
    up = F.interpolate(cam[:, None], size=x.shape[2:], mode="bilinear", align_corners=False)
    flat = up[:, 0].flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo)).view(x.shape[0], *x.shape[2:])


@pytest.mark.parametrize("layer", ["relu3", "conv2"])
def test_gradcam_parameter_and_input_gradients_equal_a_hand_built_one(layer):
    model = small().double()  # relu3 is an in-place ReLU; conv2 comes before the max-pool
    x = batch(3, 16).double().requires_grad_(True)
    classes = torch.tensor([2, 4, 7])
    params = list(model.parameters())
    ours = camlib.GradCAM(model, layer)(x, classes, differentiable=True)
    ref = hand_gradcam(model, dict(model.named_modules())[layer], x, classes)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    w = loss_weights(ours.shape, ours.dtype)
    # fc.bias does not move the map; a bias right before the layer only shifts it, which
    # the min-max normalisation removes: their gradients are (legitimately) zero
    kw = {"allow_unused": True, "materialize_grads": True}
    got = torch.autograd.grad((ours * w).sum(), [x, *params], **kw)
    want = torch.autograd.grad((ref * w).sum(), [x, *params], **kw)
    for name, g, h in zip(["input", *dict(model.named_parameters())], got, want, strict=True):
        if not name.endswith("bias"):
            assert h.abs().max() > 0, f"the reference gradient for {name} is zero: a weak test"
        torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-13, msg=name)


def test_plain_and_differentiable_maps_have_equal_values():
    model, x = small(), batch()
    for name in DIFFERENTIABLE:
        explainer = make(name, model)
        plain = explainer(x, [2, 4, 7])
        maps = explainer(x, [2, 4, 7], differentiable=True)
        assert maps.grad_fn is not None, name
        torch.testing.assert_close(maps.detach(), plain, rtol=1e-5, atol=1e-6, msg=name)


# --------------------------------------------------------------------------------------
# every registered method: finite differences, or a clear refusal
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_differentiable_methods_pass_gradcheck(name):
    """Finite differences w.r.t. the input and every parameter, float64, through the
    layer gradient, the method's maths, upsampling (3x3 -> 6x6) and min-max. Grad-CAM's
    whole Jacobian is compared; for the others, gradcheck's fast mode compares it along
    random directions (u^T J v), which catches a wrong or missing term as well."""
    fast = name != "gradcam"
    model = tiny()
    # seed 15: every method's raw 3x3 maps have >= 3 positive positions (one peak alone
    # would normalise to a fixed shape, whatever the weights)
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(15))
    wrapper = Explained(model, make_on(name, model, "act2"), [0, 2])
    names = [f"model.{n}" for n, _ in model.named_parameters()]
    values = [p.detach().clone().requires_grad_(True) for p in model.parameters()]

    def f(x, *ps):
        maps = torch.func.functional_call(wrapper, dict(zip(names, ps, strict=True)), (x,))
        assert maps.shape == (2, 6, 6)
        return maps

    with left_alone(model):
        assert torch.autograd.gradcheck(
            f, (x.requires_grad_(True), *values), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=fast
        )
        # the head's weights reach the map only through the layer gradient g: a map built
        # from a constant g (no create_graph) would give them no gradient at all
        maps = f(x, *values)
        fc_w = values[names.index("model.fc.weight")]
        (g,) = torch.autograd.grad((maps * loss_weights(maps.shape, maps.dtype)).sum(), fc_w)
        assert g[[0, 2]].abs().amax(1).min() > 1e-6, g


def test_gradcheck_of_two_fused_layers():
    model = tiny()
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    wrapper = Explained(model, camlib.GradCAM(model, ["act1", "act2"]), [1, 0])
    names = [f"model.{n}" for n, _ in model.named_parameters()]
    values = [p.detach().clone().requires_grad_(True) for p in model.parameters()]

    def f(*ps):
        return torch.func.functional_call(wrapper, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(
        f, tuple(values), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True
    )


@pytest.mark.parametrize("name", REFUSING)
def test_other_methods_refuse_before_running_the_model(name):
    cls = camlib.METHODS[name]
    model, x = small(), batch()
    try:
        explainer = make(name, model)
    except camlib.CamlibError:  # a method for other models (e.g. transformers only)
        explainer = None
    with (
        left_alone(model),
        count_forwards(model) as calls,
        pytest.raises(camlib.MethodError) as info,
    ):
        if explainer is None:  # the refusal reads class attributes only
            camlib.Explainer._check_differentiable(object.__new__(cls), True)
        else:
            explainer(x, [2, 4, 7], differentiable=True)
    message = str(info.value)
    assert f"{cls.__name__} cannot return differentiable maps: " in message
    reason = message.split("cannot return differentiable maps: ")[1].split(". Methods")[0]
    assert len(reason) > 30, message  # says why, not only that it cannot
    for able in DIFFERENTIABLE:
        assert able in message.split("Methods that can: ")[1]
    assert calls == [], "the model ran before the refusal"
    if explainer is not None:
        assert explainer(x, [2, 4, 7]).grad_fn is None  # the plain call still works


def test_every_method_declares_support_as_a_class_attribute():
    for name in METHOD_NAMES:
        cls = camlib.METHODS[name]
        assert isinstance(cls.differentiable, bool), name
        assert isinstance(cls.nondifferentiable_reason, str), name
    for name in ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"):
        assert camlib.METHODS[name].differentiable, name
    for name in ("scorecam", "ablationcam", "eigencam", "guided_backprop", "guided_gradcam"):
        assert not camlib.METHODS[name].differentiable, name
    for name in ("scorecam", "ablationcam"):
        assert "no-grad forward passes on perturbed copies" in (
            camlib.METHODS[name].nondifferentiable_reason
        )
    assert "sign" in camlib.EigenCAM.nondifferentiable_reason
    with pytest.raises(camlib.MethodError, match="guided ReLUs"):
        camlib.GuidedBackprop(small())(batch(), differentiable=True)


# --------------------------------------------------------------------------------------
# grad mode, what must require grad, bad values
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_refused_where_no_graph_can_be_recorded(mode):
    model, x = small(), batch()
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with left_alone(model), count_forwards(model) as calls, context:
        with pytest.raises(camlib.MethodError, match=r"differentiable=True\) was called under"):
            camlib.GradCAM(model, "relu3")(x, differentiable=True)
        assert not torch.is_grad_enabled()
        # the plain call works there, as always
        assert camlib.GradCAM(model, "relu3")(x).shape == (3, 16, 16)
    assert calls == [3]


def test_refused_when_nothing_requires_grad_but_the_input_may():
    model, x = small(), batch()
    model.requires_grad_(False)
    with left_alone(model):
        with pytest.raises(camlib.MethodError, match="no parameter of SmallConvNet requires grad"):
            camlib.GradCAM(model, "relu3")(x, differentiable=True)
        x = x.clone().requires_grad_(True)
        maps = camlib.GradCAM(model, "relu3")(x, [2, 4, 7], differentiable=True)
        (g,) = torch.autograd.grad((maps * loss_weights(maps.shape, maps.dtype)).sum(), x)
    assert g.abs().max() > 0
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("value", [1, "yes", None])
def test_differentiable_must_be_a_bool(value):
    with pytest.raises(camlib.MethodError, match="differentiable must be True or False"):
        camlib.GradCAM(small(), "relu3")(batch(), differentiable=value)


def test_explain_passes_differentiable_on():
    model, x = small(), batch()
    maps = camlib.explain(model, x, "layercam", "relu3", [2, 4, 7], differentiable=True)
    assert maps.requires_grad and maps.grad_fn is not None
    with pytest.raises(camlib.MethodError, match="ScoreCAM cannot return differentiable maps"):
        camlib.explain(model, x, "scorecam", "relu3", differentiable=True)


# --------------------------------------------------------------------------------------
# the model is left alone; camlib writes no .grad
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_differentiable_calls_leave_the_model_alone(name):
    model, x = small(), batch()
    torch.manual_seed(5)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    model.conv1.weight.grad = None  # stays None: camlib writes no .grad
    model.conv2.requires_grad_(False)  # frozen: stays frozen
    before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    with left_alone(model):
        for style in ("plain", "with"):
            explainer = make(name, model)
            if style == "with":
                with explainer as e:
                    maps = e(x, [2, 4, 7], differentiable=True)
                assert e.output is None  # close() drops the graph it held
            else:
                maps = explainer(x, [2, 4, 7], differentiable=True)
            trainable = [p for p in model.parameters() if p.requires_grad]
            loss = (maps * loss_weights(maps.shape, maps.dtype)).sum()
            grads = torch.autograd.grad(loss, trainable, allow_unused=True)
            assert any(g is not None and g.abs().max() > 0 for g in grads)
    # the user's own backward writes .grad (accumulating), and only where it should
    maps = make(name, model)(x, [2, 4, 7], differentiable=True)
    (maps * loss_weights(maps.shape, maps.dtype)).sum().backward()
    for (pname, p), old in zip(model.named_parameters(), before, strict=True):
        if pname.startswith("conv2") or pname == "fc.bias":
            assert torch.equal(p.grad, old), pname  # frozen, or not in the map's graph
        elif old is None:
            assert p.grad is not None, pname
        else:
            assert not torch.equal(p.grad, old), pname  # accumulated by the user's backward


def test_training_mode_is_kept_without_a_warning_and_batchnorm_updates_once():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 3)
    ).train()
    x = batch(4)
    twin = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cam = camlib.GradCAM(model, "2")
        maps = cam(x, differentiable=True)
    assert all(m.training for m in model.modules())
    assert int(model[1].num_batches_tracked) == 1  # one forward pass, as in a training step
    # the output, with its graph, is the training forward's: one pass serves the whole loss
    torch.testing.assert_close(cam.output, twin(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model[1].running_mean, twin[1].running_mean, rtol=0, atol=0)
    assert cam.output.grad_fn is not None
    loss = F.cross_entropy(cam.output, torch.tensor([0, 1, 2, 0])) + maps.mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.warns(UserWarning, match="training mode"):  # the plain call still warns
        cam(x)
    assert cam.output is None


def test_default_call_records_no_graph_before_the_layer():
    """differentiable=False keeps the cheap path (nothing before the layer is saved for
    backward); differentiable=True saves the input (conv1's forward) and every layer."""
    model, x = small(), batch()
    saved: list[tuple[int, ...]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(t.shape))
        return t

    cam = camlib.GradCAM(model, "relu3")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        plain = cam(x)
        n_plain, saw_input_plain = len(saved), tuple(x.shape) in saved
        saved.clear()
        maps = cam(x, differentiable=True)
    assert plain.grad_fn is None and cam.scores.grad_fn is None
    assert not saw_input_plain, "the default call recorded a graph before the target layer"
    assert tuple(x.shape) in saved and len(saved) > n_plain
    assert maps.grad_fn is not None


# --------------------------------------------------------------------------------------
# normalisation of constant maps; families' rules
# --------------------------------------------------------------------------------------


def test_a_constant_map_gives_zeros_and_a_zero_finite_gradient():
    torch.manual_seed(0)
    model = SmallConvNet().double().eval()
    with torch.no_grad():
        model.fc.weight[0] = 0.0  # class 0 ignores every channel: a zero map
    x = batch().double()
    with pytest.warns(UserWarning, match="zero gradient everywhere"):
        maps = camlib.GradCAM(model, "relu3")(x, [0, 2, 0], differentiable=True)
    assert torch.equal(maps[[0, 2]], torch.zeros_like(maps[[0, 2]]))
    params = list(model.parameters())
    grads = torch.autograd.grad(
        (maps[[0, 2]] * 3.0).sum(), params, materialize_grads=True, retain_graph=True
    )
    assert all(torch.isfinite(g).all() and not g.any() for g in grads)
    loss = (maps * loss_weights(maps.shape, maps.dtype)).sum()  # image 1's map is not constant
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert any(g is not None and g.any() for g in grads)


def test_normalize_minmax_gradient():
    gen = torch.Generator().manual_seed(2)
    maps = torch.rand(3, 4, 5, dtype=torch.float64, generator=gen)
    assert torch.autograd.gradcheck(normalize_minmax, (maps[:2].clone().requires_grad_(True),))
    maps[2] = 0.25  # constant: zeros, zero gradient, no NaN (a jump, so no finite differences)
    maps.requires_grad_(True)
    out = normalize_minmax(maps)
    assert torch.equal(out[2], torch.zeros(4, 5, dtype=torch.float64))
    (g,) = torch.autograd.grad(out.sum(), maps, retain_graph=True)
    assert torch.equal(g[2], torch.zeros_like(g[2]))
    # an inner value moves the map by 1 / (max - min), the extremes not at all
    (g0,) = torch.autograd.grad(out[0].flatten()[7], maps)
    flat = maps[0].detach().flatten()
    if flat[7] not in (flat.min(), flat.max()):
        span = flat.max() - flat.min()
        assert g0[0].flatten()[7] == pytest.approx(1 / float(span), rel=1e-12)


class OwnPasses(GradientCAM):
    def attribute(self, inputs, targets):
        cap = self.forward(inputs, targets)
        acts, _ = self.feature_maps(cap)
        return [a.detach().mean(1) for a in acts]


class SaysItIs(OwnPasses):
    differentiable = True


class WeightsOnly(GradientCAM):
    def channel_weights(self, act, grad):
        return grad.flatten(2).amax(-1)


def test_family_rules_for_new_gradient_methods():
    assert WeightsOnly.differentiable  # inherits the family's path
    assert not OwnPasses.differentiable and "overrides" in OwnPasses.nondifferentiable_reason
    model, x = small(), batch()
    with pytest.raises(camlib.MethodError, match="OwnPasses cannot return differentiable"):
        OwnPasses(model, "relu3")(x, differentiable=True)
    with left_alone(model), pytest.raises(camlib.MethodError, match="carries no autograd graph"):
        SaysItIs(model, "relu3")(x, differentiable=True)  # declares it, but detaches
    maps = WeightsOnly(model, "relu3")(x, differentiable=True)
    assert maps.grad_fn is not None


def test_weighted_sum_keeps_the_graph():
    w = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    a = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, a: weighted_sum(w, a).relu_(), (w, a))


# --------------------------------------------------------------------------------------
# the layout decision is cached per (layer, shapes); every check still runs
# --------------------------------------------------------------------------------------


def test_layout_decision_is_cached_per_shape(monkeypatch):
    import camlib.base as base

    calls = []
    real = base.arrange

    def counting(*args, **kwargs):
        calls.append(tuple(args[1]))
        return real(*args, **kwargs)

    monkeypatch.setattr(base, "arrange", counting)
    model = small()
    cam = camlib.GradCAM(model, "relu3")
    for _ in range(3):
        cam(batch(2, 16))
    assert calls == [(2, 1, 16, 16)]
    cam(batch(2, 20))
    cam(batch(3, 16))
    assert calls == [(2, 1, 16, 16), (2, 1, 20, 20), (3, 1, 16, 16)]
    bad = camlib.GradCAM(model, "fc")  # (N, 10): no positions, refused on every call
    for _ in range(2):
        with pytest.raises(camlib.LayerError, match="'fc'"):
            bad(batch(2, 16))
    assert len(calls) == 5
