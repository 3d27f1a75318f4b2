"""A method registered from outside the package works everywhere the built-ins do (issue 9):
``camlib.explain``, several layers (fusion), ``camlib.Smooth``; registry names ignore case,
``-`` and ``_``; only Explainer subclasses can be registered."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import camlib
from camlib.methods.families import GradientCAM

from conftest import batch, small

T = [3, 7, 1]


def define_max_grad_cam() -> type:
    """A user's method in a few lines: Grad-CAM with the gradient's maximum as weight."""

    @camlib.register("Max-Grad_CAM", "mgc")
    class MaxGradCAM(GradientCAM):
        r"""w_k = max_ij g_{k,ij}; L = ReLU(sum_k w_k A_k)."""

        def channel_weights(self, act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
            return grad.flatten(2).amax(-1)

    return MaxGradCAM


@pytest.fixture
def max_grad_cam():
    """Registers the user method for one test and removes it again (other test files
    list the registry)."""
    before = dict(camlib.METHODS)
    cls = define_max_grad_cam()
    try:
        yield cls
    finally:
        for key in [k for k, v in camlib.METHODS.items() if v is cls]:
            dict.__delitem__(camlib.METHODS, key)
        assert dict(camlib.METHODS) == before


def reference(model, x, layer: str, classes) -> torch.Tensor:
    """ReLU(sum_k max(g_k) A_k) with a forward hook and torch.autograd.grad."""
    store = []

    def hook(m, args, out):
        leaf = out.detach().clone().requires_grad_(True)
        store.append(leaf)
        return leaf.clone()

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.enable_grad():
            out = model(x)
            (g,) = torch.autograd.grad(
                out.gather(1, torch.tensor(classes)[:, None]).sum(), store[0]
            )
    finally:
        handle.remove()
    w = g.flatten(2).amax(-1)
    return torch.relu(torch.einsum("nc,nchw->nhw", w, store[0].detach()))


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Each map scaled to [0, 1]; a constant map becomes 0."""
    flat = maps.flatten(1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, 1), 0).view_as(maps)


def test_registered_method_works_with_explain(max_grad_cam):
    model, x = small(), batch()
    # conv2: the gradient varies over positions (at relu3, before GAP, it is constant and
    # max == mean), so the user's method and Grad-CAM differ there
    expected = reference(model, x, "conv2", T)
    assert expected.amax() > 0
    for name in ["Max-Grad_CAM", "maxgradcam", "MAX_GRAD-CAM", "max grad cam", "mgc"]:
        got = camlib.explain(model, x, name, "conv2", T, upsample=False, normalize=False)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6 * float(expected.amax()))
    gradcam = camlib.explain(model, x, "gradcam", "conv2", T, upsample=False, normalize=False)
    assert (minmax(gradcam) - minmax(expected)).abs().max() > 1e-2
    # the one-shot default path: upsampled, normalised, 'auto' layer (relu3 here)
    at_relu3 = reference(model, x, "relu3", T)
    up = F.interpolate(at_relu3[:, None], size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(
        camlib.explain(model, x, "mgc", targets=T), minmax(up[:, 0]), rtol=1e-5, atol=1e-6
    )


def test_registry_names(max_grad_cam):
    assert camlib.get_method("max_grad_cam") is max_grad_cam
    assert camlib.get_method("MGC") is max_grad_cam
    assert "Max-Grad-Cam" in camlib.METHODS
    assert max_grad_cam.name == "Max-Grad_CAM"
    assert "Max-Grad_CAM" in camlib.available_methods()
    assert camlib.get_method("Grad-CAM") is camlib.GradCAM
    assert camlib.get_method("GRAD_CAM++") is camlib.GradCAMPlusPlus
    assert camlib.get_method("score_cam") is camlib.ScoreCAM
    with pytest.raises(camlib.MethodError, match=r"unknown method 'maxgrad'.*Max-Grad_CAM"):
        camlib.get_method("maxgrad")


def test_registered_method_fuses_layers(max_grad_cam):
    model, x = small(), batch()
    per_layer = [
        minmax(
            F.interpolate(reference(model, x, layer, T)[:, None], size=(16, 16), mode="bilinear")[
                :, 0
            ]
        )
        for layer in ["conv2", "relu3"]
    ]
    got = camlib.explain(model, x, "mgc", ["conv2", "relu3"], T, normalize=False)
    torch.testing.assert_close(got, torch.stack(per_layer).mean(0), rtol=1e-5, atol=1e-6)
    got = camlib.explain(model, x, "mgc", ["conv2", "relu3"], T, fuse="max")
    torch.testing.assert_close(got, minmax(torch.stack(per_layer).amax(0)), rtol=1e-5, atol=1e-6)


def test_registered_method_smooths(max_grad_cam):
    model, x = small(), batch()
    ex = max_grad_cam(model, "relu3")
    assert torch.equal(camlib.Smooth(ex, samples=1, noise=0)(x, T), ex(x, T))
    flipped = camlib.Smooth(ex, samples=1, noise=0, flip=True)(x, T, normalize=False)
    expected = (ex(x, T, normalize=False) + ex(x.flip(-1), T, normalize=False).flip(-1)) / 2
    torch.testing.assert_close(flipped, expected, rtol=1e-5, atol=1e-7)


def test_registering_a_non_explainer_raises():
    before = dict(camlib.METHODS)
    with pytest.raises(camlib.CamlibError, match=r"register\('nope'\) decorates Explainer"):

        @camlib.register("nope")
        class NotAMethod:
            pass

    with pytest.raises(camlib.CamlibError, match="Explainer subclasses"):
        camlib.register("nope")(lambda model: model)
    with pytest.raises(camlib.CamlibError, match="at least one name"):
        camlib.register()
    assert dict(camlib.METHODS) == before
    assert "nope" not in camlib.METHODS
