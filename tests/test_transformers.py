"""Vision transformers and Swin: token and channels-last layers, checked against references.

References (none shares code with camlib's layouts):

* pytorch-grad-cam's documented ViT ``reshape_transform`` (copied verbatim below) applied to
  the activation and gradient a forward hook and one ``torch.autograd.grad`` give; each
  method's map is then written from its formula (Score-CAM and Ablation-CAM loop over
  channels, one forward pass each; Eigen-CAM uses ``torch.linalg.svd``);
* pytorch-grad-cam's own ``GradCAM`` on torchvision ``vit_b_16`` (its post-processing,
  ``scale_cam_image``, applied to camlib's raw map);
* for Swin, the (N, h, w, C) output permuted by hand;
* the round-2 methods from their formulas in tests/formulas.py (scikit-learn's
  ``KernelPCA`` for KPCA-CAM, ``torch.autograd.functional.hvp`` for Shapley-CAM, OpenCV's
  blur for SESS); FullGrad (no layer) from its Eq. 7 with the patch-embedding convolution
  as the one biased spatial layer. Methods checked here in a reduced form, and why, are in
  ``REDUCED``; LeGrad (attention maps, not a layer's activation) has its own ViT checks
  against torchcam in tests/test_methods_round2_b.py and is not in ``METHOD_NAMES``.

Models: torchvision ``vit_b_16`` (``image_size=64``: 1 + 4x4 tokens) and ``swin_t`` (64x64:
a 2x2 last stage) with random weights; every method runs on the same torchvision classes
made small (``VisionTransformer`` with 2 layers of width 32, ``SwinTransformer`` with two
stages of width 16/32), in float64 so agreement is checked at 1e-6 of each map's peak.
torchvision initialises ViT heads to zero (every gradient would be 0), so the heads get
random weights here (and the tiny ViT's patch embedding a random bias, for FullGrad).
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Callable

import formulas
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

import camlib

from conftest import FAST_OPTIONS, METHOD_NAMES, left_alone

VIT_LAYER = "encoder.layers.encoder_layer_11.ln_1"
TINY_VIT_LAYER = "encoder.layers.encoder_layer_1.ln_1"
CLASSES = [3, 7]

REDUCED = {
    "dff": "every token layer of a ViT or Swin (LayerNorm, GELU MLP) has negative values and "
    "NMF factorises non-negative data, so DFF must refuse them: the refusal is checked here, "
    "its maps on ReLU layers in test_signals_volumes.py and test_methods_round2_a.py",
    "sess": "its default 12 scales explain ~120 windows per image; here one scale equal to "
    "the window (SESS is then the base Grad-CAM's normalised map, blurred as OpenCV does) "
    "checks the window, paste and fusion on token layers, and the multi-scale default is "
    "checked against pytorch-grad-cam in test_methods_round2_b.py",
    "refinecam": "one layer is explained here, where RefineCAM (a product over layers) is its "
    "base method Grad-CAM++; the product is checked in test_methods_round2_b.py",
    "sscam/iscam on Swin": "checked against their formula with FAST_OPTIONS' 2 samples: at "
    "the defaults (35 and 10 samples x 32 channels x 2 images of Swin forwards, twice with "
    "the reference) one case costs tens of seconds; their defaults are checked against the "
    "formula on the tiny ViT here and in test_methods_round2_b.py, and Score-CAM's masks on "
    "this channels-last layer at full value above",
}
"""Methods whose check here is reduced, with the reason (every other method in
METHOD_NAMES is compared with its full formula)."""


def pgc_vit_reshape_transform(tensor, height=4, width=4):
    """pytorch-grad-cam's documented ViT reshape_transform (docs: "How does it work with
    Vision Transformers"), with the grid of a 64x64 input (4x4 patches of 16 px)."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    # Bring the channels to the first dimension, like in CNNs.
    result = result.transpose(2, 3).transpose(1, 2)
    return result


def hand_permute(tensor: torch.Tensor) -> torch.Tensor:
    """(N, h, w, C) -> (N, C, h, w), written out."""
    return tensor.permute(0, 3, 1, 2)


def _random_head(model: nn.Module, head: nn.Linear) -> nn.Module:
    with torch.no_grad():
        head.weight.normal_(0, 0.5)
        head.bias.normal_(0, 0.1)
    return model


@functools.cache
def vit_b_16() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None, image_size=64).eval()
    return _random_head(model, model.heads.head)


@functools.cache
def swin_t() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.swin_t(weights=None).eval()


@functools.cache
def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=64,
        patch_size=16,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
    )
    with torch.no_grad():  # torchvision starts it at zero: FullGrad's bias term would be empty
        model.conv_proj.bias.normal_(0, 0.1)
    return _random_head(model, model.heads.head).double().eval()


@functools.cache
def tiny_swin() -> nn.Module:
    torch.manual_seed(0)
    model = SwinTransformer(
        patch_size=[4, 4],
        embed_dim=16,
        depths=[2, 2],
        num_heads=[2, 2],
        window_size=[4, 4],
        num_classes=10,
    )
    return model.double().eval()


def images(n: int = 2, dtype: torch.dtype = torch.float64, size=(64, 64)) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, 3, *size, dtype=dtype)


# -- hand-made references ----------------------------------------------------------------------
def _minmax(t: torch.Tensor) -> torch.Tensor:
    return (t - t.min()) / (t.max() - t.min())


def hooked(
    model: nn.Module,
    module: nn.Module,
    x: torch.Tensor,
    classes: list[int],
    edit: Callable[[torch.Tensor], torch.Tensor] | None = None,
    score: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(layer output, its gradient, logits) for the class scores (or ``score(logits)``),
    with a forward hook; ``edit`` replaces what the layer hands on."""
    seen = []

    def hook(m, args, out):
        seen.append(out)
        return None if edit is None else edit(out)

    handle = module.register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        handle.remove()
    score = (score or class_score)(logits).sum()
    (grad,) = torch.autograd.grad(score, seen[0])
    return seen[0].detach(), grad, logits.detach()


def reference(
    method: str,
    model: nn.Module,
    layer: str,
    x: torch.Tensor,
    to_nchw: Callable[[torch.Tensor], torch.Tensor],
    zero: Callable[[torch.Tensor, int], torch.Tensor],
    samples: int | None = None,
) -> torch.Tensor:
    """The raw (N, h, w) map of ``method`` from its formula; ``zero(out, k)`` is the
    layer output with channel k of the map zeroed (for Ablation-CAM); ``samples``: SS-CAM's
    and IS-CAM's when not their defaults."""
    module = dict(model.named_modules())[layer]
    if method == "refinecam":  # one layer: the base method, Grad-CAM++ (see REDUCED)
        return reference("gradcam++", model, layer, x, to_nchw, zero)
    if method == "finercam":  # Grad-CAM of the target's logit minus its 3 closest rivals'
        out, grad, _ = hooked(model, module, x, CLASSES, score=formulas.finer_score(CLASSES))
        return formulas.weighted(to_nchw(grad).mean((2, 3)), to_nchw(out))
    out, grad, logits = hooked(model, module, x, CLASSES)
    a, g = to_nchw(out), to_nchw(grad)
    n, c = a.shape[:2]
    if method == "gradcam_elementwise":
        return formulas.gradcam_elementwise(a, g)
    if method == "eigengradcam":
        return formulas.eigengradcam(a, g)
    if method == "segeigencam":
        return formulas.segeigencam(a, g)
    if method == "kpcacam":
        return formulas.kpcacam(a)
    if method == "fem":
        return formulas.fem(a)
    if method == "randomcam":
        return formulas.weighted(formulas.random_weights(c), a)
    if method == "shapleycam":
        hvp = formulas.hessian_times_activation(model, module, x, out, class_score)
        return formulas.weighted(formulas.shapley_weights(grad, hvp, to_nchw), a)
    if method == "smoothgradcampp":
        noisy = [to_nchw(hooked(model, module, xs, CLASSES)[1]) for xs in formulas.noisy_copies(x)]
        return formulas.smooth_gradcampp(a, noisy)
    if method == "sscam":
        perturb = formulas.sscam_perturb(x, samples=samples or 35)
        return formulas.sampled_scorecam(model, x, a, CLASSES, perturb)
    if method == "iscam":
        perturb = formulas.iscam_perturb(samples=samples or 10)
        return formulas.sampled_scorecam(model, x, a, CLASSES, perturb)
    if method == "gradcam":
        w = g.mean((2, 3))
    elif method == "gradcam++":
        g2, total = g * g, a.sum((2, 3), keepdim=True)
        denom = 2 * g2 + total * g2 * g
        alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, 1), 0)
        w = (alpha * g.clamp_min(0)).sum((2, 3))
    elif method == "xgradcam":
        w = (a * g).sum((2, 3)) / a.sum((2, 3))
    elif method == "layercam":
        return (g.clamp_min(0) * a).sum(1).relu()
    elif method == "hirescam":
        return (g * a).sum(1).relu()
    elif method == "eigencam":
        maps = []
        for i in range(n):
            m = a[i].reshape(c, -1).T  # positions x channels, not centred
            v = torch.linalg.svd(m, full_matrices=False).Vh[0]
            p = m @ v
            maps.append((p if p.sum() >= 0 else -p).reshape(a.shape[2:]))
        return torch.stack(maps).relu()
    elif method == "scorecam":
        w = torch.zeros(n, c, dtype=a.dtype)
        with torch.no_grad():
            for i in range(n):
                for k in range(c):
                    up = F.interpolate(a[i, k][None, None], size=x.shape[2:], mode="bilinear")
                    if up.max() - up.min() <= 1e-12 * up.abs().max():
                        continue  # a constant mask is skipped (weight 0)
                    probs = model(x[i : i + 1] * _minmax(up)).softmax(1)
                    w[i, k] = probs[0, CLASSES[i]]
    elif method == "ablationcam":
        y = logits[torch.arange(n), torch.tensor(CLASSES)]
        w = torch.zeros(n, c, dtype=a.dtype)
        with torch.no_grad():
            for k in range(c):
                _, _, ablated = hooked_no_grad(model, module, x, lambda o, k=k: zero(o, k))
                w[:, k] = (y - ablated[torch.arange(n), torch.tensor(CLASSES)]) / y
    else:
        raise AssertionError(method)
    return (w[:, :, None, None] * a).sum(1).relu()


def class_score(logits: torch.Tensor) -> torch.Tensor:
    return logits[torch.arange(len(CLASSES)), torch.tensor(CLASSES)]


def hooked_no_grad(model, module, x, edit):
    handle = module.register_forward_hook(lambda m, args, out: edit(out))
    try:
        return None, None, model(x)
    finally:
        handle.remove()


def assert_maps_equal(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-6) -> None:
    assert got.shape == want.shape
    assert want.abs().max() > 0, "the reference map is all zero: the check would be empty"
    torch.testing.assert_close(got, want.to(got.dtype), rtol=rel, atol=rel * want.abs().max())


def explainer(method: str, model: nn.Module, layer="auto", **options) -> camlib.Explainer:
    if method in ("scorecam", "ablationcam"):
        options.setdefault("batch_size", 64)
    if method in ("sscam", "iscam"):  # every (image, channel, sample) is a row
        options.setdefault("batch_size", 256)
    return camlib.METHODS[method](model, layer, **options)


def raw(method: str, model: nn.Module, layer, x: torch.Tensor, **options) -> torch.Tensor:
    with explainer(method, model, layer, **options) as ex:
        return ex(x, CLASSES, upsample=False, normalize=False)


def input_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    score = model(x)[torch.arange(len(CLASSES)), torch.tensor(CLASSES)].sum()
    return torch.autograd.grad(score, x)[0]


def zero_patch_token(out: torch.Tensor, k: int) -> torch.Tensor:
    out = out.clone()
    out[:, 1:, k] = 0  # the class token is not part of the map
    return out


def zero_last(out: torch.Tensor, k: int) -> torch.Tensor:
    out = out.clone()
    out[..., k] = 0
    return out


# -- vit_b_16 ---------------------------------------------------------------------------------
def test_vit_b_16_auto_layer_and_gradcam_equal_pytorch_grad_cam_reshape_transform():
    """ "auto" picks the last block's first norm; camlib reads its (N, 17, 768) tokens by
    itself, and the map is the one the documented reshape_transform gives, both by hand and
    in pytorch-grad-cam."""
    from pytorch_grad_cam import GradCAM as PgcGradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x = vit_b_16(), images(2, torch.float32)
    assert camlib.find_target_layer(model, x) == VIT_LAYER
    module = dict(model.named_modules())[VIT_LAYER]
    out, grad, _ = hooked(model, module, x, CLASSES)
    a, g = pgc_vit_reshape_transform(out), pgc_vit_reshape_transform(grad)
    want = (g.mean((2, 3))[:, :, None, None] * a).sum(1).relu()
    with left_alone(model), camlib.GradCAM(model) as ex:
        auto = ex(x, CLASSES, upsample=False, normalize=False)
        assert ex.layer_name == VIT_LAYER
    assert_maps_equal(auto, want, rel=1e-5)
    custom = raw("gradcam", model, VIT_LAYER, x, reshape_transform=pgc_vit_reshape_transform)
    assert torch.equal(auto, custom)

    with PgcGradCAM(model, [module], reshape_transform=pgc_vit_reshape_transform) as pgc:
        theirs = pgc(x, [ClassifierOutputTarget(c) for c in CLASSES])
    # pytorch-grad-cam: ReLU, scale_cam_image to the input size, then again (layer fusion)
    expected = scale_cam_image(scale_cam_image(auto.numpy(), (64, 64)))
    np.testing.assert_allclose(theirs, expected, atol=1e-5)


def test_after_the_last_attention_patch_tokens_get_no_gradient_and_camlib_warns():
    model, x = tiny_vit(), images()
    with pytest.warns(UserWarning, match="zero gradient everywhere"):
        maps = raw("gradcam", model, "encoder.ln", x)
    assert not maps.any()


# -- every method on the small torchvision ViT ----------------------------------------------
def checked_apart(
    method: str,
    model: nn.Module,
    layer: str,
    x: torch.Tensor,
    to_nchw: Callable[[torch.Tensor], torch.Tensor],
    patch_embedding: nn.Module,
) -> bool:
    """FullGrad (no layer), DFF and SESS (see ``REDUCED``) on a transformer: checked here;
    returns whether ``method`` was one of them."""
    if method == "fullgrad":  # the input's term and the patch embedding's bias term
        with left_alone(model), camlib.FullGrad(model) as ex:
            got = ex(x, CLASSES, normalize=False)
            final = ex(x, CLASSES)
        want = formulas.fullgrad(model, x, CLASSES, [patch_embedding])
        assert_maps_equal(got, want)
        input_term = formulas.fullgrad(model, x, CLASSES, [])
        assert (want - input_term).abs().max() > 0.1 * want.abs().max(), "no bias term"
        torch.testing.assert_close(final, formulas.minmax_each(want), rtol=1e-6, atol=1e-6)
        with pytest.raises(camlib.LayerError, match="takes no target_layer"):
            camlib.FullGrad(model, layer)
        return True
    if method == "dff":
        message = f"layer {layer!r} has negative values"
        with left_alone(model), pytest.raises(camlib.LayerError, match=re.escape(message)):
            raw(method, model, layer, x)
        return True
    if method == "sess":  # one scale, one window: the base Grad-CAM's map, min-max scaled
        one = {"scales": [64]}
        with left_alone(model):
            got = raw(method, model, layer, x, smooth=False, **one)
            custom = raw(method, model, layer, x, smooth=False, reshape_transform=to_nchw, **one)
            blurred = raw(method, model, layer, x, **one)
        want = formulas.minmax_each(
            formulas.up(reference("gradcam", model, layer, x, to_nchw, None), (64, 64))
        )
        assert_maps_equal(got, want)
        assert_maps_equal(custom, want)
        assert_maps_equal(blurred, formulas.opencv_blur(want))
        return True
    return False


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_tiny_vit_every_method(method):
    model, x = tiny_vit(), images()
    if checked_apart(method, model, TINY_VIT_LAYER, x, pgc_vit_reshape_transform, model.conv_proj):
        return
    with left_alone(model):
        if method == "cam":
            with pytest.raises(camlib.LayerError, match="global-average-pooling"):
                raw(method, model, "auto", x)
            return
        if method == "guided_backprop":  # GELU only: the plain input gradient, with a warning
            with pytest.warns(UserWarning, match="was guided"):
                got = camlib.GuidedBackprop(model)(x, CLASSES, normalize=False)
            assert_maps_equal(got, input_gradient(model, x))
            return
        if method == "guided_gradcam":
            with pytest.warns(UserWarning, match="was guided"):
                got = camlib.GuidedGradCAM(model)(x, CLASSES, normalize=False)
            cam = reference("gradcam", model, TINY_VIT_LAYER, x, pgc_vit_reshape_transform, None)
            up = F.interpolate(cam[:, None], size=(64, 64), mode="bilinear")
            assert_maps_equal(got, input_gradient(model, x) * up)
            return
        got = raw(method, model, "auto", x)
    want = reference(method, model, TINY_VIT_LAYER, x, pgc_vit_reshape_transform, zero_patch_token)
    assert_maps_equal(got, want)
    # the layout and post-processing checks below hold for any options: the sampling methods
    # run them with fewer samples (their values are checked above, at the defaults)
    fast = FAST_OPTIONS.get(method, {})
    base = raw(method, model, "auto", x, **fast) if fast else want
    if method != "ablationcam":  # a custom transform hides the layout Ablation-CAM edits
        custom = raw(
            method, model, TINY_VIT_LAYER, x, reshape_transform=pgc_vit_reshape_transform, **fast
        )
        assert_maps_equal(custom, base)
    # the default output is the raw map upsampled and normalised
    with explainer(method, model, **fast) as ex:
        final = ex(x, CLASSES)
    assert final.shape == (2, 64, 64) and final.dtype == torch.float64
    up = F.interpolate(base[:, None], size=(64, 64), mode="bilinear")[:, 0]
    expected = torch.stack([_minmax(m) for m in up])
    torch.testing.assert_close(final, expected, rtol=1e-6, atol=1e-6)


# -- Swin: channels-last stages -------------------------------------------------------------
def test_swin_t_features_read_channels_last_and_auto_layer():
    """swin_t's "features" gives (N, 2, 2, 768) at 64x64: read as 768 channels of 2x2.
    'auto' takes the last channels-first map, "permute" (the final norm's output permuted
    to NCHW), i.e. the same map as the channels-last "norm"."""
    model, x = swin_t(), images(2, torch.float32)
    with left_alone(model):
        got = raw("gradcam", model, "features", x)
    assert got.shape == (2, 2, 2)
    out, grad, _ = hooked(model, model.features, x, CLASSES)
    a, g = hand_permute(out), hand_permute(grad)
    want = (g.mean((2, 3))[:, :, None, None] * a).sum(1).relu()
    assert_maps_equal(got, want, rel=1e-5)
    assert camlib.find_target_layer(model, x) == "permute"
    assert torch.equal(raw("gradcam", model, "auto", x), raw("gradcam", model, "norm", x))


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_tiny_swin_every_method(method):
    """The small SwinTransformer at its channels-last "norm" (N, 8, 8, 32) output."""
    model, x = tiny_swin(), images()
    if checked_apart(method, model, "norm", x, hand_permute, model.features[0][0]):
        return
    with left_alone(model):
        if method == "guided_backprop":
            with pytest.warns(UserWarning, match="was guided"):
                got = camlib.GuidedBackprop(model)(x, CLASSES, normalize=False)
            assert_maps_equal(got, input_gradient(model, x))
            return
        if method == "guided_gradcam":
            with pytest.warns(UserWarning, match="was guided"):
                got = camlib.GuidedGradCAM(model, "norm")(x, CLASSES, normalize=False)
            cam = reference("gradcam", model, "norm", x, hand_permute, None)
            up = F.interpolate(cam[:, None], size=(64, 64), mode="bilinear")
            assert_maps_equal(got, input_gradient(model, x) * up)
            return
        options = FAST_OPTIONS[method] if method in ("sscam", "iscam") else {}  # see REDUCED
        got = raw(method, model, "norm", x, **options)
    if method == "cam":  # the head is GAP + linear after "norm": CAM = Grad-CAM * positions
        want = reference("gradcam", model, "norm", x, hand_permute, None) * 64
        fc = model.head.weight[CLASSES]
        a = hand_permute(model.norm(model.features(x))).detach()
        assert_maps_equal((fc[:, :, None, None] * a).sum(1).relu(), want)
    else:
        want = reference(method, model, "norm", x, hand_permute, zero_last, **options)
    assert_maps_equal(got, want)
    if method in FAST_OPTIONS and not options:  # the layer is what is checked
        fast = FAST_OPTIONS[method]
        assert_maps_equal(
            raw(method, model, "auto", x, **fast), raw(method, model, "norm", x, **fast)
        )
    else:
        assert_maps_equal(raw(method, model, "auto", x, **options), want)  # "permute" of "norm"


def test_tiny_swin_cam_refuses_the_layer_before_the_norm():
    with pytest.raises(camlib.LayerError, match="global-average-pooling"):
        raw("cam", tiny_swin(), "features", images())


# -- ambiguous layouts ---------------------------------------------------------------------------
class ToNHWC(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class NHWCNet(nn.Module):
    """A conv stem (stride 8) whose map is handed on channels-last: (N, 4, 6, 9) for a
    32x48 input, which also reads as 4 channels of a 6x9 grid with the input's aspect."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 9, 8, stride=8)
        self.nhwc = ToNHWC()
        self.head = nn.Linear(9, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.nhwc(self.stem(x))).mean((1, 2)))


def test_ambiguous_4d_layout_warns_and_layout_settles_it():
    torch.manual_seed(0)
    model = NHWCNet().eval()  # float32: Ablation-CAM on float64 models is tested above
    x = images(2, torch.float32, size=(32, 48))
    with pytest.warns(UserWarning, match="layout='channels_last'"):
        guessed = raw("gradcam", model, "nhwc", x)
    assert guessed.shape == (2, 6, 9)  # read as channels first, as the warning says
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stated = raw("gradcam", model, "nhwc", x, layout="channels_last")
        ablated = raw("ablationcam", model, "nhwc", x, layout="channels_last")
    assert_maps_equal(stated, reference("gradcam", model, "nhwc", x, hand_permute, None))
    assert_maps_equal(ablated, reference("ablationcam", model, "nhwc", x, hand_permute, zero_last))


class RegisterTokens(nn.Module):
    """Patch embedding (12 px) plus 5 leading tokens (a class token and 4 registers):
    at 48x64 that is 5 + 4x5 = 25 tokens, which also split as 1 + 4x6."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 12, stride=12)
        self.prefix = nn.Parameter(torch.randn(1, 5, 16))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = self.norm(torch.cat([self.prefix.expand(len(x), -1, -1), t], 1))
        return self.head(t[:, 5:].mean(1) + t[:, 0])


def test_ambiguous_token_count_is_refused_with_the_candidates():
    torch.manual_seed(0)
    model = RegisterTokens().double().eval()
    x = images(2, size=(48, 64))
    with left_alone(model), pytest.raises(camlib.LayerError) as info:
        raw("gradcam", model, "norm", x)
    message = str(info.value)
    assert "'norm'" in message and "(2, 25, 16)" in message
    assert "1 prefix token(s) + 4x6 patches" in message
    assert "5 prefix token(s) + 4x5 patches" in message
    assert "camlib.layouts.tokens(prefix=P, grid=(h, w))" in message
    got = raw("gradcam", model, "norm", x, reshape_transform=camlib.layouts.tokens(5, (4, 5)))

    def by_hand(t: torch.Tensor) -> torch.Tensor:
        return t[:, 5:].reshape(2, 4, 5, 16).permute(0, 3, 1, 2)

    assert_maps_equal(got, reference("gradcam", model, "norm", x, by_hand, None))
