"""Multi-layer fusion and the Smooth wrapper, for every registered method (issue 9).

Expected values are computed here with plain torch: bilinear upsampling
(``align_corners=False``), per-map min-max scaling, mean/max over layers; Smooth is checked
against the wrapped explainer applied to the very copies it fed the model (recorded with a
forward pre-hook), so the tests do not depend on how the noise is drawn.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camlib

from conftest import (
    FAST_OPTIONS,
    LAYER_METHODS,
    METHOD_NAMES,
    SmallConvNet,
    batch,
    count_forwards,
    make,
    small,
)

T = [3, 7, 1]
HEATMAP_METHODS = [n for n in LAYER_METHODS if not camlib.METHODS[n].signed]
OWN_LAYER_RULE = {
    "dff": "factorises one layer: concepts of different layers do not correspond, so a list "
    "of layers is refused",
    "refinecam": "combines its layers by their product (its definition), not by fuse=, which "
    "it refuses",
    "sess": "fuses the layers inside each window (its base method's call), before pooling "
    "the windows: with one window it is the base method's fused, normalised map",
}
"""Methods whose several layers are not combined by ``fuse`` (mean/max of the normalised
layer maps), with their own rule; each is checked in ``test_methods_with_their_own_layer_rule``."""
FUSED_METHODS = [n for n in HEATMAP_METHODS if n not in OWN_LAYER_RULE]
CALLABLE = lambda out: out[:, 3] - out[:, 5]  # noqa: E731


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Each map scaled to [0, 1]; a constant map becomes 0."""
    flat = maps.flatten(1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, 1), 0)
    return out.view_as(maps)


def absmax(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    peak = flat.abs().amax(1, keepdim=True)
    return (flat / torch.where(peak > 0, peak, 1)).view_as(maps)


def up(maps: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def plain(name, model, x, targets, layer="relu3", **kw):
    return make(name, model, layer)(x, targets, **kw)


# --------------------------------------------------------------------------------------
# fusion
# --------------------------------------------------------------------------------------


def fusion_layers(name: str) -> list[str]:
    # CAM needs the map that feeds GAP + fc: relu3's output, also reachable as gap's input
    return ["relu3", "gap:input"] if name == "cam" else ["conv2", "relu3"]


@pytest.mark.parametrize("fuse", ["mean", "max"])
@pytest.mark.parametrize("name", FUSED_METHODS)
def test_fusion_is_mean_or_max_of_normalised_layer_maps(name, fuse):
    """An identity between camlib's own calls, so the sampling methods run with the fewer
    samples of ``make`` on both sides (their values are checked in their own files)."""
    model, x = small(), batch()
    size = tuple(x.shape[2:])
    layers = fusion_layers(name)
    per_layer = [
        minmax(up(plain(name, model, x, T, layer, upsample=False, normalize=False), size))
        for layer in layers
    ]
    stacked = torch.stack(per_layer)
    expected = stacked.mean(0) if fuse == "mean" else stacked.amax(0)
    ex = camlib.METHODS[name](model, layers, fuse=fuse, **FAST_OPTIONS.get(name, {}))
    assert ex.layer_names == layers
    torch.testing.assert_close(ex(x, T, normalize=False), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ex(x, T), minmax(expected), rtol=1e-5, atol=1e-6)
    if name != "cam":  # the two layers' maps differ, so mean and max differ too
        assert (per_layer[0] - per_layer[1]).abs().max() > 0.05
        assert (stacked.mean(0) - stacked.amax(0)).abs().max() > 0.05


def test_guided_gradcam_fuses_its_gradcams():
    """Guided Grad-CAM with several layers: guided backprop x the fused normalised Grad-CAMs."""
    model, x = small(), batch()
    size = tuple(x.shape[2:])
    cams = [
        minmax(up(plain("gradcam", model, x, T, layer, upsample=False, normalize=False), size))
        for layer in ["conv2", "relu3"]
    ]
    gbp = camlib.GuidedBackprop(model)(x, T, normalize=False)
    for fuse, fused in [("mean", torch.stack(cams).mean(0)), ("max", torch.stack(cams).amax(0))]:
        ggc = camlib.GuidedGradCAM(model, ["conv2", "relu3"], fuse=fuse)
        torch.testing.assert_close(ggc(x, T, normalize=False), gbp * fused[:, None])
        torch.testing.assert_close(ggc(x, T), absmax(gbp * fused[:, None]))


@pytest.mark.parametrize("name", [n for n in HEATMAP_METHODS if n != "dff"])
def test_fusion_without_upsampling_is_an_error(name):
    ex = camlib.METHODS[name](small(), fusion_layers(name))
    with pytest.raises(camlib.LayerError, match=r"2 target layers.*upsample=False"):
        ex(batch(), T, upsample=False)


@pytest.mark.parametrize("name", sorted(OWN_LAYER_RULE))
def test_methods_with_their_own_layer_rule(name):
    model, x = small(), batch()
    size, layers = tuple(x.shape[2:]), ["conv2", "relu3"]
    cls = camlib.METHODS[name]
    if name == "dff":
        with pytest.raises(camlib.LayerError, match="DFF factorises one layer, got 2"):
            cls(model, layers)
        return
    if name == "refinecam":  # minmax(product over layers of minmax(up(raw map)))
        per_layer = [
            minmax(up(plain(name, model, x, T, layer, upsample=False, normalize=False), size))
            for layer in layers
        ]
        product = per_layer[0] * per_layer[1]
        ex = cls(model, layers)
        torch.testing.assert_close(ex(x, T, normalize=False), product, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ex(x, T), minmax(product), rtol=1e-5, atol=1e-6)
        assert (minmax(product) - minmax(torch.stack(per_layer).mean(0))).abs().max() > 0.05
        for fuse in ("mean", "max"):
            with pytest.raises(camlib.MethodError, match=f"product.*fuse={fuse!r}"):
                cls(model, layers, fuse=fuse)
    if name == "sess":  # one window, no blur: its base Grad-CAM's fused, normalised map
        cams = [
            minmax(up(plain("gradcam", model, x, T, layer, upsample=False, normalize=False), size))
            for layer in layers
        ]
        for fuse, fused in [
            ("mean", torch.stack(cams).mean(0)),
            ("max", torch.stack(cams).amax(0)),
        ]:
            ex = cls(model, layers, fuse=fuse, scales=[16], smooth=False)
            torch.testing.assert_close(
                ex(x, T, normalize=False), minmax(fused), rtol=1e-5, atol=1e-6
            )
    with pytest.raises(camlib.LayerError, match=r"2 target layers.*upsample=False"):
        cls(model, layers)(x, T, upsample=False)


def test_fusion_rejects_unknown_rule_and_empty_list():
    with pytest.raises(camlib.MethodError, match="fuse must be 'mean' or 'max'"):
        camlib.GradCAM(small(), ["conv2", "relu3"], fuse="sum")
    with pytest.raises(camlib.LayerError, match="empty list"):
        camlib.GradCAM(small(), [])


# --------------------------------------------------------------------------------------
# Smooth: the identity settings, flips, batching, targets
# --------------------------------------------------------------------------------------


def targets_for(name: str) -> list:
    out = [None, T]
    if not camlib.METHODS[name].class_targets_only:
        out.append(CALLABLE)
    return out


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_smooth_with_one_clean_sample_is_the_plain_method(name):
    model, x = small(), batch()
    for targets in targets_for(name):
        for kw in [{}, {"upsample": False, "normalize": False}]:
            ex = make(name, model)
            expected = ex(x, targets, **kw)
            smooth = camlib.Smooth(ex, samples=1, noise=0, flip=False)
            got = smooth(x, targets, **kw)
            assert torch.equal(got, expected), f"targets={targets}, {kw}"
            if not callable(targets):
                assert torch.equal(smooth.classes, ex.classes)


def symmetric_net() -> SmallConvNet:
    """SmallConvNet whose kernels are mirror-symmetric: f(flip x) has the logits of f(x)
    and every feature map flipped."""
    net = small()
    with torch.no_grad():
        for conv in (net.conv1, net.conv2, net.conv3):
            conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)
    return net


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_smooth_flip_on_a_symmetric_pair_is_the_plain_map(name):
    """Two class flags say what the identities rest on (both default to True):
    ``flip_equivariant`` (the map of a mirrored image is the mirrored map; SESS's windows are
    laid from the left edge, so it is not) and ``batch_independent`` (each image's map is
    its own; DFF factorises the whole batch, so Smooth's copies, explained in one call,
    share its concepts)."""
    cls = camlib.METHODS[name]
    x = batch()
    if getattr(cls, "flip_equivariant", True):
        model = symmetric_net()
        x_sym = (x + x.flip(-1)) / 2
        ex = make(name, model)
        plain_map = ex(x_sym, T)
        assert plain_map.abs().amax() > 0
        flipped = camlib.Smooth(ex, samples=1, noise=0, flip=True)(x_sym, T)
        torch.testing.assert_close(flipped, plain_map, rtol=1e-5, atol=1e-5)
    else:  # the flag is not stale: a mirrored image's map is not the mirrored map
        ex = cls(symmetric_net(), "relu3")  # the defaults (make's options may be symmetric)
        x_sym = (x + x.flip(-1)) / 2
        assert (ex(x_sym, T) - ex(x_sym, T).flip(-1)).abs().max() > 0.1
    # a mirror-symmetric net is flip-equivariant, so the flip changes nothing whatever the
    # input; with the plain net the flip average is (L(x) + flip(L(flip x))) / 2, normalised
    ex = make(name, small())
    if getattr(cls, "batch_independent", True):
        raw = ex(x, T, normalize=False)
        raw_flipped = ex(x.flip(-1), T, normalize=False).flip(-1)
    else:  # Smooth explains the image and its mirror in one call
        both = ex(torch.cat([x, x.flip(-1)]), T * 2, normalize=False)
        raw, raw_flipped = both[: len(x)], both[len(x) :].flip(-1)
        alone = ex(x, T, normalize=False)
        assert (alone - raw).abs().max() > 1e-3, "the batch changed nothing: flag it True"
    expected = ex.normalize_maps((raw + raw_flipped) / 2)
    got = camlib.Smooth(ex, samples=1, noise=0, flip=True)(x, T)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - ex(x, T)).abs().max() > 1e-3, "the flip changed nothing: test cannot fail"


class Recorder:
    """Forward pre-hook keeping a copy of every input batch the model receives."""

    def __init__(self, model: nn.Module) -> None:
        self.inputs: list[torch.Tensor] = []
        self.handle = model.register_forward_pre_hook(
            lambda m, args: self.inputs.append(args[0].detach().clone())
        )

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_smooth_averages_the_maps_of_its_noisy_copies(name):
    """Smooth = normalise(mean over copies of the explainer's un-normalised maps), all
    copies in one batched call, the noise's std = noise x the image's value range."""
    model, x = small(), batch()
    samples, noise, n = 4, 0.2, x.shape[0]
    ex = make(name, model)
    with Recorder(model) as rec:
        got = camlib.Smooth(ex, samples=samples, noise=noise)(x, T)
    clean, copies = rec.inputs[0], rec.inputs[1]  # the classes' pass, then the explainer's
    assert torch.equal(clean, x) and copies.shape == (samples * n, *x.shape[1:])
    span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(1, n, 1, 1, 1)
    eps = (copies.view(samples, *x.shape) - x) / span
    assert abs(float(eps.std()) - noise) < 0.1 * noise
    assert abs(float(eps.mean())) < 0.1 * noise
    maps = ex(copies, T * samples, normalize=False).view(samples, n, *got.shape[1:])
    expected = ex.normalize_maps(maps.mean(0))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    again = camlib.Smooth(ex, samples=samples, noise=noise)(x, T)
    assert torch.equal(again, got), "the same seed must give the same map"
    other = camlib.Smooth(ex, samples=samples, noise=noise, seed=1)(x, T)
    assert not torch.equal(other, got)


@pytest.mark.parametrize(("batch_size", "n", "copies"), [(None, 3, 10), (9, 3, 10), (4, 2, 5)])
def test_smooth_explains_copies_in_batched_calls(batch_size, n, copies):
    """ceil(copies * N / batch_size) explainer calls (one forward each for Grad-CAM with a
    named layer), after one clean forward that fixes the classes."""
    model, x = small(), batch(n)
    flip = copies % 2 == 0
    samples = copies // 2 if flip else copies
    smooth = camlib.Smooth(
        camlib.GradCAM(model, "relu3"), samples=samples, noise=0.1, flip=flip, batch_size=batch_size
    )
    with count_forwards(model) as sizes:
        smooth(x, [3, 7, 1][:n])
    per_call = copies * n if batch_size is None else (batch_size // n) * n
    calls = math.ceil(copies * n / per_call)
    assert len(sizes) == 1 + calls
    assert sizes[0] == n and sum(sizes[1:]) == copies * n
    assert all(s == per_call for s in sizes[1:-1]) and 0 < sizes[-1] <= per_call


def test_smooth_fixes_the_targets_on_the_clean_input():
    model, x = small(), batch()
    ex = camlib.GradCAM(model, "relu3")
    smooth = camlib.Smooth(ex, samples=6, noise=3.0)
    with Recorder(model) as rec:
        got = smooth(x)
    clean_classes = model(x).argmax(1)
    assert torch.equal(smooth.classes, clean_classes)
    copies = rec.inputs[1]
    noisy_classes = model(copies).argmax(1)
    repeated = clean_classes.repeat(6)
    assert (noisy_classes != repeated).any(), "noise too small: every copy keeps its class"
    maps = ex(copies, repeated, normalize=False).view(6, *x.shape[:1], *x.shape[2:])
    torch.testing.assert_close(got, ex.normalize_maps(maps.mean(0)), rtol=1e-5, atol=1e-5)
    per_copy = ex(copies, noisy_classes, normalize=False).view(6, *x.shape[:1], *x.shape[2:])
    assert (got - ex.normalize_maps(per_copy.mean(0))).abs().max() > 1e-3


def test_smooth_callable_target_sees_each_copy():
    """A callable target is evaluated on each copy (per-image logits of that copy)."""
    model, x = small(), batch()
    ex = camlib.GradCAM(model, "relu3")
    with Recorder(model) as rec:
        got = camlib.Smooth(ex, samples=3, noise=0.2)(x, CALLABLE)
    copies = [t for t in rec.inputs if t.shape[0] == x.shape[0]]
    assert len(copies) == 3 and not any(torch.equal(c, x) for c in copies)
    maps = torch.stack([ex(c, CALLABLE, normalize=False) for c in copies])
    torch.testing.assert_close(got, ex.normalize_maps(maps.mean(0)), rtol=1e-5, atol=1e-5)


def test_smooth_argument_checks():
    ex = camlib.GradCAM(small(), "relu3")
    with pytest.raises(camlib.CamlibError, match="wraps an explainer"):
        camlib.Smooth(small())
    with pytest.raises(camlib.CamlibError, match="samples must be a positive int"):
        camlib.Smooth(ex, samples=0)
    with pytest.raises(camlib.CamlibError, match="noise must be >= 0"):
        camlib.Smooth(ex, noise=-0.1)
    with pytest.raises(camlib.CamlibError, match="batch_size"):
        camlib.Smooth(ex, batch_size=0)


def test_smooth_keeps_a_batch_dependent_method_in_one_call():
    """DFF's concepts are the batch's: Smooth explains all its copies in one call and refuses
    to split them (batch_size, or a callable target, explained one copy per call), before
    any forward pass."""
    model, x = small(), batch()
    dff = camlib.METHODS["dff"](model, "relu3")
    assert getattr(dff, "batch_independent", True) is False
    with count_forwards(model) as sizes:
        for kwargs, targets in [({"batch_size": 3}, T), ({}, CALLABLE)]:
            smooth = camlib.Smooth(dff, samples=2, noise=0.1, **kwargs)
            with pytest.raises(camlib.MethodError, match="cannot split the copies") as info:
                smooth(x, targets)
            assert "DeepFeatureFactorization" in str(info.value)
    assert sizes == []
    one_call = camlib.Smooth(dff, samples=2, noise=0.1, batch_size=6)  # 2 copies x 3 images
    with count_forwards(model) as sizes:
        maps = one_call(x, T)
    assert sizes == [3, 6] and maps.shape == (3, 5, 16, 16)
