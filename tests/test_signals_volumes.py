"""1-D signals (N, C, L) and 3-D volumes (N, C, D, H, W): every method against references.

References: each method's raw map written from its formula on the activation and gradient
a forward hook and one ``torch.autograd.grad`` give (Score-CAM and Ablation-CAM one forward
pass per channel, Eigen-CAM with ``torch.linalg.svd``, Guided Backprop with backward hooks
that clamp the ReLUs' gradients); Grad-CAM also against Captum's ``LayerGradCam``
(``relu_attributions=True``) at 1e-5 relative; upsampling against ``F.interpolate``
(linear / trilinear, ``align_corners=False``); CAM == Grad-CAM * positions. The round-2
methods from their formulas in tests/formulas.py (scikit-learn's ``KernelPCA`` for KPCA-CAM
and ``NMF`` for DFF's concepts, ``torch.autograd.functional.hvp`` for Shapley-CAM); FullGrad
(no layer) from its Eq. 7 with both convolutions as the biased layers. ``APART`` lists the
methods checked otherwise, and why. LeGrad (attention maps) is not in ``METHOD_NAMES``.
"""

from __future__ import annotations

import formulas
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from torch import nn

import camlib

from conftest import METHOD_NAMES, left_alone

CLASSES = [3, 1]
RTOL = 1e-5

APART = {
    "sess": "SESS slides 2-D windows over rescaled images and refuses other inputs: the "
    "refusal is checked here",
    "dff": "DFF returns (N, K, *grid) concept maps, each concept normalised by its peak over "
    "the batch: its own branch checks those against scikit-learn's NMF",
    "refinecam": "one layer is explained, where RefineCAM (a product over layers) is its "
    "base method Grad-CAM++ (the product: test_methods_round2_b.py)",
}
"""Methods not compared with a single-heatmap formula in ``reference``, and why."""


class Net(nn.Module):
    """conv -> ReLU -> max-pool -> conv -> ReLU -> GAP -> linear, in 1-D or 3-D."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        conv = {1: nn.Conv1d, 3: nn.Conv3d}[dims]
        pool = {1: nn.MaxPool1d, 3: nn.MaxPool3d}[dims]
        torch.manual_seed(0)
        self.conv1 = conv(2, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = pool(2)
        self.conv2 = conv(6, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x)))))
        return self.fc(x.flatten(2).mean(2))


SHAPES = {1: (2, 2, 32), 3: (2, 2, 6, 8, 10)}
MODES = {1: "linear", 3: "trilinear"}


def setup(dims: int) -> tuple[Net, torch.Tensor]:
    torch.manual_seed(1)
    return Net(dims).eval(), torch.randn(*SHAPES[dims])


def class_score(logits: torch.Tensor) -> torch.Tensor:
    return logits[torch.arange(len(CLASSES)), torch.tensor(CLASSES)]


def hooked(model, module, x, edit=None, score=class_score):
    seen = []

    def hook(m, args, out):
        seen.append(out)
        return None if edit is None else edit(out)

    handle = module.register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        handle.remove()
    score = score(logits)
    if not score.requires_grad:
        return seen[0], None, logits
    (g,) = torch.autograd.grad(score.sum(), seen[0])
    return seen[0].detach(), g, logits.detach()


def _minmax(t: torch.Tensor) -> torch.Tensor:
    return (t - t.min()) / (t.max() - t.min())


def reference(method: str, model: Net, x: torch.Tensor, layer: str = "relu2") -> torch.Tensor:
    module = getattr(model, layer)
    if method == "refinecam":  # one layer: the base method, Grad-CAM++ (see APART)
        return reference("gradcam++", model, x, layer)
    a, g, logits = hooked(model, module, x)
    n, c = a.shape[:2]
    axes = tuple(range(2, a.dim()))
    y = logits[torch.arange(n), torch.tensor(CLASSES)]
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
    if method == "finercam":  # Grad-CAM of the target's logit minus its 3 closest rivals'
        g = hooked(model, module, x, score=formulas.finer_score(CLASSES))[1]
        return formulas.weighted(g.mean(axes), a)
    if method == "shapleycam":
        hvp = formulas.hessian_times_activation(model, module, x, a, class_score)
        return formulas.weighted(formulas.shapley_weights(g, hvp, lambda t: t), a)
    if method == "smoothgradcampp":
        noisy = [hooked(model, module, xs)[1] for xs in formulas.noisy_copies(x)]
        return formulas.smooth_gradcampp(a, noisy)
    if method == "sscam":
        return formulas.sampled_scorecam(model, x, a, CLASSES, formulas.sscam_perturb(x))
    if method == "iscam":
        return formulas.sampled_scorecam(model, x, a, CLASSES, formulas.iscam_perturb())
    if method == "gradcam":
        w = g.mean(axes)
    elif method == "cam":
        w = model.fc.weight.detach()[CLASSES]
    elif method == "gradcam++":
        g2, total = g * g, a.sum(axes, keepdim=True)
        denom = 2 * g2 + total * g2 * g
        alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, 1), 0)
        w = (alpha * g.clamp_min(0)).sum(axes)
    elif method == "xgradcam":
        total = a.sum(axes)
        w = torch.where(total != 0, (a * g).sum(axes) / torch.where(total != 0, total, 1), 0)
    elif method == "layercam":
        return (g.clamp_min(0) * a).sum(1).relu()
    elif method == "hirescam":
        return (g * a).sum(1).relu()
    elif method == "eigencam":
        maps = []
        for i in range(n):
            m = a[i].reshape(c, -1).T
            p = m @ torch.linalg.svd(m, full_matrices=False).Vh[0]
            maps.append((p if p.sum() >= 0 else -p).reshape(a.shape[2:]))
        return torch.stack(maps).relu()
    elif method == "scorecam":
        w = torch.zeros(n, c)
        with torch.no_grad():
            for i in range(n):
                for k in range(c):
                    up = F.interpolate(a[i, k][None, None], x.shape[2:], mode=MODES[x.dim() - 2])
                    if up.max() - up.min() <= 1e-6 * up.abs().max():
                        continue
                    w[i, k] = model(x[i : i + 1] * _minmax(up)).softmax(1)[0, CLASSES[i]]
    elif method == "ablationcam":
        w = torch.zeros(n, c)
        with torch.no_grad():
            for k in range(c):

                def zero(out, k=k):
                    out = out.clone()
                    out[:, k] = 0
                    return out

                ablated = hooked(model, module, x, zero)[2]
                w[:, k] = (y - ablated[torch.arange(n), torch.tensor(CLASSES)]) / y
    else:
        raise AssertionError(method)
    return torch.einsum("nc,nc...->n...", w, a).relu()


def guided_gradient(model: Net, x: torch.Tensor) -> torch.Tensor:
    """Guided Backprop by hand: each ReLU passes back max(grad_in, 0)."""
    handles = [
        m.register_full_backward_hook(lambda m, gi, go: (gi[0].clamp_min(0),))
        for m in (model.relu1, model.relu2)
    ]
    try:
        x = x.clone().requires_grad_(True)
        score = model(x)[torch.arange(len(CLASSES)), torch.tensor(CLASSES)].sum()
        return torch.autograd.grad(score, x)[0]
    finally:
        for h in handles:
            h.remove()


def assert_close(got, want, rel=RTOL):
    assert want.abs().max() > 0, "empty reference"
    torch.testing.assert_close(got, want, rtol=rel, atol=rel * float(want.abs().max()))


@pytest.mark.parametrize("dims", [1, 3], ids=["conv1d", "conv3d"])
def test_auto_layer(dims):
    model, x = setup(dims)
    assert camlib.find_target_layer(model, x) == "relu2"


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("dims", [1, 3], ids=["conv1d", "conv3d"])
def test_every_method(method, dims):
    model, x = setup(dims)
    size = x.shape[2:]
    cls = camlib.METHODS[method]
    options = {"batch_size": 7} if method in ("scorecam", "ablationcam") else {}
    with left_alone(model):
        if method == "guided_backprop":
            got = cls(model)(x, CLASSES, normalize=False)
            assert_close(got, guided_gradient(model, x))
            final = cls(model)(x, CLASSES)
            peak = got.flatten(1).abs().amax(1).view(-1, *[1] * (x.dim() - 1))
            assert_close(final, got / peak)
            return
        if method == "guided_gradcam":
            got = cls(model)(x, CLASSES, normalize=False)
            up = F.interpolate(reference("gradcam", model, x)[:, None], size, mode=MODES[dims])
            assert_close(got, guided_gradient(model, x) * up)
            return
        if method == "fullgrad":  # no layer: the input's and both convolutions' bias terms
            with cls(model) as ex:
                got = ex(x, CLASSES, normalize=False)
                final = ex(x, CLASSES)
            want = formulas.fullgrad(model, x, CLASSES, [model.conv1, model.conv2])
            assert got.shape == want.shape == x.shape[:1] + size
            assert_close(got, want)
            input_term = formulas.fullgrad(model, x, CLASSES, [])
            assert (want - input_term).abs().max() > 0.1 * want.abs().max(), "no bias term"
            torch.testing.assert_close(final, formulas.minmax_each(want), rtol=1e-5, atol=1e-6)
            return
        if method == "sess":  # see APART
            with pytest.raises(camlib.InputError, match=r"\(N, C, H, W\)"):
                cls(model)(x, CLASSES)
            return
        with cls(model, **options) as ex:  # "auto"
            got = ex(x, CLASSES, upsample=False, normalize=False)
            final = ex(x, CLASSES)
            assert ex.layer_name == "relu2"
    if method == "dff":  # (N, K, *grid) concepts; each normalised by its peak over the batch
        check_dff(got, final, model, x)
        return
    want = reference(method, model, x)
    assert got.shape == (2, *want.shape[1:]) and got.dtype == torch.float32
    assert_close(got, want)
    # upsampling: linear / trilinear, align_corners=False, then min-max per map
    assert final.shape == (2, *size)
    up = F.interpolate(got[:, None], size, mode=MODES[dims], align_corners=False)[:, 0]
    expected = torch.stack([_minmax(m) for m in up])
    torch.testing.assert_close(final, expected, rtol=1e-5, atol=1e-6)


def check_dff(got: torch.Tensor, final: torch.Tensor, model: Net, x: torch.Tensor) -> None:
    """DFF's raw concept maps against scikit-learn's NMF of the relu2 activations (camlib's
    300 float32 updates agree with scikit-learn's float64 ones to 2e-7 of the peak here),
    and the call's output: each concept upsampled, divided by its peak over the batch."""
    a = hooked(model, model.relu2, x)[0]
    want = formulas.dff(a)
    assert got.shape == (2, 5, *a.shape[2:]) and got.dtype == torch.float32
    assert_close(got, want)
    size = tuple(x.shape[2:])
    up = torch.stack([formulas.up(got[:, k], size) for k in range(5)], 1)
    peak = up.transpose(0, 1).flatten(1).amax(1).view(1, 5, *[1] * len(size))
    torch.testing.assert_close(final, up / peak, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dims", [1, 3], ids=["conv1d", "conv3d"])
def test_cam_is_gradcam_times_positions(dims):
    model, x = setup(dims)
    cam = camlib.CAM(model, "relu2")(x, CLASSES, upsample=False, normalize=False)
    grad = camlib.GradCAM(model, "relu2")(x, CLASSES, upsample=False, normalize=False)
    positions = cam[0].numel()
    assert_close(cam, grad * positions)


@pytest.mark.parametrize("layer", ["relu2", "conv2", "relu1", "conv1"])
@pytest.mark.parametrize("dims", [1, 3], ids=["conv1d", "conv3d"])
def test_gradcam_matches_captum(dims, layer):
    model, x = setup(dims)
    ours = camlib.GradCAM(model, layer)(x, CLASSES, upsample=False, normalize=False)
    theirs = LayerGradCam(model, getattr(model, layer)).attribute(
        x, target=CLASSES, relu_attributions=True
    )
    assert_close(ours, theirs.squeeze(1).detach())


def test_signal_and_volume_errors_name_the_expected_shape():
    model, x = setup(1)
    with pytest.raises(camlib.InputError, match=r"\(N, C, L\)"):
        camlib.GradCAM(model)(x[:, :, :, None])
    model, _ = setup(3)
    with pytest.raises(camlib.InputError, match=r"\(N, C, D, H, W\)"):
        camlib.GradCAM(model)(torch.randn(3, 2, 8, 10))  # a batch of 2-D images
    with pytest.raises(camlib.InputError, match=r"unsqueeze\(0\)"):
        camlib.GradCAM(model)(torch.randn(2, 6, 8, 10))  # one volume, no batch dimension
