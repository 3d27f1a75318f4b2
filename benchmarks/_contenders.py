"""Models and contenders for ``benchmarks/throughput.py``.

Every contender is a small object with ``prepare()`` (hooks, explainer objects, precomputed
inputs: untimed), ``run(x)`` (one call, timed: the batch in, per-image maps out) and
``release()`` (remove hooks, drop parameter ``.grad``: untimed). ``run`` returns the maps as
a torch tensor (or numpy array) of shape (N, H, W) - or (N, C, H, W) for signed (guided)
methods - at input size, explaining the model's top class for every image (contenders
"given the classes" receive exactly those classes, computed once outside the timed region).

There is one camlib contender per registered method (``camlib.available_methods()``), one
per peer implementation of it (pytorch-grad-cam, torchcam, Captum), and reference
contenders that produce no map of their own worth comparing: the Grad-CAM lower bound, the
no-grad forward, and the floors of the perturbation methods (the batched no-grad forward
passes Score-CAM and Ablation-CAM cannot avoid).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import camlib

# --------------------------------------------------------------------------------------
# models


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class MnistNet(nn.Module):
    """A small MNIST ConvNet: (conv-BN-ReLU) x3 with two max-pools, GAP, Linear; 1x28x28 in."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _block(1, 32),
            nn.MaxPool2d(2),  # 14x14
            _block(32, 64),
            nn.MaxPool2d(2),  # 7x7
            _block(64, 128),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def _vit_b_16() -> nn.Module:
    """torchvision ``vit_b_16`` with random weights. torchvision initialises the head to
    zeros, which makes every gradient zero: the head gets small random weights instead."""
    model = torchvision.models.vit_b_16(weights=None)
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


def _vit_tiny() -> nn.Module:
    """A ViT-Ti/16-shaped torchvision ``VisionTransformer`` (224 px, 16 px patches, 12 blocks
    of 3 heads, width 192, MLP 768; random weights, the zero-initialised head given small
    random weights): LeGrad's model on CPU, where ``vit_b_16`` is 16x the work."""
    model = torchvision.models.VisionTransformer(
        image_size=224, patch_size=16, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=768
    )
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


def _vit_mini() -> nn.Module:
    """A 2-block ViT at 64 px (16 px patches, 2 heads, width 32): LeGrad's smoke test."""
    model = torchvision.models.VisionTransformer(
        image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    )
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


def vit_reshape(tensor: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's documented ViT ``reshape_transform``: drop the class token, lay
    the patch tokens out as a square grid (14x14 at 224 px), channels first."""
    n, t, c = tensor.shape
    side = math.isqrt(t - 1)
    return tensor[:, 1:, :].reshape(n, side, side, c).permute(0, 3, 1, 2)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], nn.Module]
    layer: str  # the layer every contender explains
    channels: int
    native: int  # native input resolution
    gap_linear: bool  # CAM applies (global average pooling + linear head)
    methods: tuple[str, ...] | None = None  # the methods measured on it (None: all)
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None  # for peers / lower bound
    refine_layers: tuple[str, ...] = ()  # RefineCAM's layers (empty: RefineCAM not measured)
    fc: str | None = None  # the linear classifier on the layer's channels (DFF's concept scores)
    attention: bool = False  # a torchvision ViT: LeGrad (needs_attention) runs on it


MODELS: dict[str, ModelSpec] = {
    "mnist": ModelSpec(
        "mnist", MnistNet, "features.4", 1, 28, True,
        refine_layers=("features.2", "features.4"), fc="fc",
    ),
    "resnet18": ModelSpec(
        "resnet18", lambda: torchvision.models.resnet18(weights=None), "layer4", 3, 224, True,
        refine_layers=("layer3", "layer4"), fc="fc",
    ),
    "resnet50": ModelSpec(
        "resnet50", lambda: torchvision.models.resnet50(weights=None), "layer4", 3, 224, True,
        refine_layers=("layer3", "layer4"), fc="fc",
    ),
    # "features" (the whole conv trunk, ending in the last max-pool, 7x7) is camlib's
    # automatic choice for VGG and pytorch-grad-cam's recommended model.features[-1].
    "vgg16": ModelSpec(
        "vgg16", lambda: torchvision.models.vgg16(weights=None), "features", 3, 224, False
    ),
    # camlib's "auto" picks this layer and lays its tokens out itself; the peers and the
    # lower bound get pytorch-grad-cam's documented reshape_transform.
    "vit_b_16": ModelSpec(
        "vit_b_16",
        _vit_b_16,
        "encoder.layers.encoder_layer_11.ln_1",
        3,
        224,
        False,
        methods=("gradcam", "legrad"),
        reshape=vit_reshape,
        attention=True,
    ),
    # ViT-Ti/16's shape: LeGrad (every block) and Grad-CAM on CPU at a sixteenth of the work
    "vit_tiny": ModelSpec(
        "vit_tiny",
        _vit_tiny,
        "encoder.layers.encoder_layer_11.ln_1",
        3,
        224,
        False,
        methods=("gradcam", "legrad"),
        reshape=vit_reshape,
        attention=True,
    ),
    "vit_mini": ModelSpec(
        "vit_mini", _vit_mini, "encoder.layers.encoder_layer_1.ln_1", 3, 64, False,
        methods=("gradcam", "legrad"), reshape=vit_reshape, attention=True,
    ),
}  # fmt: skip


def build_model(name: str, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name].build().eval().to(device)


# --------------------------------------------------------------------------------------
# peers

PEERS = {
    # CLI name: (import name, distribution name for the version)
    "pytorch-grad-cam": ("pytorch_grad_cam", "grad-cam"),
    "captum": ("captum", "captum"),
    "torchcam": ("torchcam", "torchcam"),
}


def peer_status(name: str) -> tuple[bool, str]:
    """(available, version or the reason it is not)."""
    module, dist = PEERS[name]
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken install
        return False, f"not installed ({type(exc).__name__}: {exc}); pip install camlib[bench]"
    try:
        return True, importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return True, "unknown"


# --------------------------------------------------------------------------------------
# contenders

PERTURBATION = ("scorecam", "ablationcam", "sscam", "iscam", "sess")
"""Methods that cost one forward pass per (image, channel) (SS-CAM, IS-CAM: per (image,
channel, sample); SESS: per patch, and a Grad-CAM per patch): measured on small configs only."""

SAMPLED = {"sscam": 35, "iscam": 10, "smoothgradcampp": 4}
"""Sample-based methods and their peer's (torchcam's) default sample count: the benchmark
runs camlib, the peer and the floor with ``min(--samples, this)`` samples."""

SESS_DEFAULT_SCALES = 12
"""pytorch-grad-cam's (and camlib's) default number of SESS scales; ``--sess-scales`` caps it."""


@dataclass
class Context:
    """What a contender needs to know about the model being measured."""

    model: nn.Module
    spec: ModelSpec
    layer: nn.Module
    x: torch.Tensor  # the batch (for contenders that precompute from it, untimed)
    classes: torch.Tensor  # the top class of every image (computed once, untimed)
    batch_size: int  # rows per batched forward for the perturbation methods (all libraries)
    samples: int = 4  # --samples: cap on the sample-based methods' samples (all libraries)
    sess_scales: int = 4  # --sess-scales: SESS's number of scales (camlib, pytorch-grad-cam)

    def samples_of(self, method: str) -> int:
        """Samples for a sample-based method: ``--samples``, capped at the peer's default."""
        return min(self.samples, SAMPLED[method])

    @property
    def layer_name(self) -> str:
        return self.spec.layer


@dataclass
class Contender:
    key: str
    label: str
    kind: str  # "map" (N,H,W maps), "signed" (N,C,H,W maps) or "reference" (no map)
    group: str  # "bound", "camlib", "peer"
    peer: str | None
    method: str | None  # the --methods name that switches it on (None: always measured)
    description: str
    make: Callable[[Context], Runner] = field(repr=False)
    ref: str | None = None  # the contender whose maps this one's are compared with
    by_design: str | None = None  # why the maps may differ by design (None: they must agree)
    for_methods: tuple[str, ...] = ()  # a floor: measured where any of these methods is


class Runner:
    """One contender bound to one model; ``run`` is what gets timed."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def prepare(self) -> None:
        pass

    def run(self, x: torch.Tensor):  # noqa: ANN201 - tensor or numpy array
        raise NotImplementedError

    def release(self) -> None:
        pass


def _upsample(maps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N, 1, h, w) -> (N, H, W), bilinear, align_corners=False."""
    return F.interpolate(maps, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


class _Hook:
    """A forward hook on ``layer`` that stores its outputs (and can edit them)."""

    def __init__(self, layer: nn.Module, edit: Callable | None = None) -> None:
        self.store: list[torch.Tensor] = []
        self.edit = edit
        self.handle = layer.register_forward_hook(self._hook)

    def _hook(self, module, args, out):  # noqa: ANN001, ANN202
        if self.edit is not None:
            return self.edit(out)
        self.store.append(out)
        return None

    def remove(self) -> None:
        self.handle.remove()
        self.store.clear()


class LowerBound(Runner):
    """The least work any Grad-CAM can do with an ordinary forward pass.

    One forward pass with grad enabled and a forward hook keeping the target activation,
    ``torch.autograd.grad`` of the top-class scores w.r.t. that activation only, the
    Grad-CAM arithmetic and bilinear upsampling. No checks, no normalisation.
    """

    def prepare(self) -> None:
        self.hook = _Hook(self.ctx.layer)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        self.hook.store.clear()
        with torch.enable_grad():
            out = self.ctx.model(x)
            act = self.hook.store.pop()
            scores = out.gather(1, out.argmax(1, keepdim=True))
            (grad,) = torch.autograd.grad(scores.sum(), act)
        with torch.no_grad():
            if self.ctx.spec.reshape is not None:
                act, grad = self.ctx.spec.reshape(act), self.ctx.spec.reshape(grad)
            weights = grad.mean(dim=(2, 3), keepdim=True)
            cam = (weights * act).sum(dim=1, keepdim=True).relu_()
            return _upsample(cam, x)

    def release(self) -> None:
        self.hook.remove()


class NoGradForward(Runner):
    """A plain inference forward pass under ``torch.no_grad()``: no map at all."""

    def run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.ctx.model(x)


class ScoreCamFloor(Runner):
    """The forward passes Score-CAM needs and nothing else: ``model(x)`` (activations and
    classes), then ``model(x_masked)`` for every non-constant (image, channel) pair,
    ``batch_size`` rows at a time, under ``no_grad``. The masked inputs are precomputed
    (untimed): no mask arithmetic, no scoring, no map."""

    def prepare(self) -> None:
        ctx = self.ctx
        x = ctx.x
        hook = _Hook(ctx.layer)
        with torch.no_grad():
            ctx.model(x)
            act = hook.store.pop().float()
            hook.remove()
            flat = act.flatten(2)
            lo, hi = flat.amin(-1), flat.amax(-1)
            keep = (hi - lo) > (hi.abs() + lo.abs()) * (8 * torch.finfo(flat.dtype).eps)
            rows, chans = keep.nonzero(as_tuple=True)
            masks = F.interpolate(
                act[rows, chans][:, None], size=x.shape[-2:], mode="bilinear", align_corners=False
            )
            m = masks.flatten(1)
            lo, hi = m.amin(1)[:, None, None, None], m.amax(1)[:, None, None, None]
            masks = (masks - lo) / (hi - lo)
            masked = x.index_select(0, rows) * masks
            if self.repeats() > 1:
                masked = masked.repeat(self.repeats(), 1, 1, 1)
            self.masked = list(masked.split(ctx.batch_size))
        self.pairs = len(rows)

    def repeats(self) -> int:
        """Forward passes per (image, channel) pair."""
        return 1

    def run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.ctx.model(x)
            for chunk in self.masked:
                self.ctx.model(chunk)
            return out

    def release(self) -> None:
        del self.masked


class AblationFloor(Runner):
    """The forward passes Ablation-CAM needs and nothing else: ``model(x)``, then for every
    (image, channel) pair whose channel is not all zero, a no-grad forward of that image with
    the channel zeroed at the layer (a hook editing the output in place), ``batch_size``
    rows at a time. Repeated inputs and channel indices are precomputed (untimed)."""

    def prepare(self) -> None:
        ctx = self.ctx
        hook = _Hook(ctx.layer)
        with torch.no_grad():
            ctx.model(ctx.x)
        act = hook.store.pop()
        hook.remove()
        rows, chans = act.flatten(2).ne(0).any(-1).nonzero(as_tuple=True)
        bs = ctx.batch_size
        self.chunks = [
            (
                ctx.x.index_select(0, rows[i : i + bs]),
                torch.arange(len(rows[i : i + bs]), device=ctx.x.device),
                chans[i : i + bs],
            )
            for i in range(0, len(rows), bs)
        ]
        self.current: tuple | None = None
        self.hook = _Hook(ctx.layer, edit=self._zero)

    def _zero(self, out: torch.Tensor) -> torch.Tensor | None:
        if self.current is not None:
            out[self.current] = 0
        return out

    def run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.current = None
            out = self.ctx.model(x)
            for inputs, rows, chans in self.chunks:
                self.current = (rows, chans)
                self.ctx.model(inputs)
            self.current = None
            return out

    def release(self) -> None:
        self.hook.remove()
        del self.chunks


class SampledScoreFloor(ScoreCamFloor):
    """SS-CAM's and IS-CAM's floor: Score-CAM's, with ``samples`` forward passes per
    non-constant (image, channel) pair (all pairs x samples rows, ``batch_size`` at a time)."""

    method = "sscam"

    def repeats(self) -> int:
        return self.ctx.samples_of(self.method)


class InputGradientFloor(Runner):
    """FullGrad's (and the guided methods') floor: one forward pass with a graph from the
    input and ``torch.autograd.grad`` of the top-class scores w.r.t. the input. No map."""

    def run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            out = self.ctx.model(xg)
            scores = out.gather(1, out.argmax(1, keepdim=True))
            (grad,) = torch.autograd.grad(scores.sum(), xg)
        return grad


class ShapleyFloor(LowerBound):
    """Shapley-CAM's floor: the lower bound's forward pass and gradient to the layer, taken
    with ``create_graph=True``, then one Hessian-vector product along the activation
    (``autograd.grad(g, A, grad_outputs=A)``) and the weights mean(g - HA/2)."""

    def run(self, x: torch.Tensor) -> torch.Tensor:
        self.hook.store.clear()
        with torch.enable_grad():
            out = self.ctx.model(x)
            act = self.hook.store.pop()
            scores = out.gather(1, out.argmax(1, keepdim=True))
            (grad,) = torch.autograd.grad(scores.sum(), act, create_graph=True)
            (hva,) = torch.autograd.grad(grad, act, grad_outputs=act.detach(), allow_unused=True)
        with torch.no_grad():
            if hva is not None:
                grad = grad - 0.5 * hva
            weights = grad.mean(dim=(2, 3), keepdim=True)
            cam = (weights * act).sum(dim=1, keepdim=True).relu_()
            return _upsample(cam, x)


class SmoothGradFloor(LowerBound):
    """Smooth Grad-CAM++'s floor: a no-grad forward of the clean batch (classes), then the
    lower bound's forward pass and gradient to the layer on all N x samples noisy copies at
    once (camlib's default ``batch_size=None``); the copies are precomputed. No map."""

    def prepare(self) -> None:
        super().prepare()
        s = self.ctx.samples_of("smoothgradcampp")
        x = self.ctx.x
        gen = torch.Generator(device=x.device).manual_seed(0)
        self.noisy = x.repeat(s, 1, 1, 1) + 0.1 * torch.randn(
            (s * x.shape[0], *x.shape[1:]), generator=gen, device=x.device, dtype=x.dtype
        )

    def run(self, x: torch.Tensor) -> torch.Tensor:
        self.hook.store.clear()
        with torch.no_grad():
            classes = self.ctx.model(x).argmax(1)
        with torch.enable_grad():
            out = self.ctx.model(self.noisy)
            act = self.hook.store.pop()
            scores = out.gather(1, classes.repeat(len(self.noisy) // len(x))[:, None])
            (grad,) = torch.autograd.grad(scores.sum(), act)
        return grad

    def release(self) -> None:
        super().release()
        del self.noisy


class SessFloor(Runner):
    """SESS's floor: ``model(x)`` (classes), a no-grad forward of every patch (the scores)
    and the lower bound's forward pass and gradient to the layer on every patch, both
    ``batch_size`` patches at a time; patches (camlib's scales and windows) precomputed."""

    def prepare(self) -> None:
        from camlib.methods.sess import SESS, window_starts

        ctx, x = self.ctx, self.ctx.x
        h, w = x.shape[-2:]
        plan = SESS(ctx.model, ctx.layer_name, num_scales=ctx.sess_scales)
        win, step, scales = plan.plan(h, w)
        plan.close()
        patches = []
        for scale in scales:
            sh, sw = (scale, int(scale * w / h)) if h <= w else (int(scale * h / w), scale)
            scaled = F.interpolate(x, (sh, sw), mode="bilinear", antialias=True)
            for y in window_starts(sh, step, win):
                for z in window_starts(sw, step, win):
                    patches.append(scaled[:, :, y : y + win, z : z + win])
        self.chunks = list(torch.cat(patches).split(ctx.batch_size))
        self.hook = _Hook(ctx.layer)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        model = self.ctx.model
        with torch.no_grad():
            out = model(x)
            for chunk in self.chunks:
                model(chunk)
        self.hook.store.clear()
        for chunk in self.chunks:
            with torch.enable_grad():
                y = model(chunk)
                act = self.hook.store.pop()
                (grad,) = torch.autograd.grad(y.gather(1, y.argmax(1, keepdim=True)).sum(), act)
        return out

    def release(self) -> None:
        self.hook.remove()
        del self.chunks


class LeGradFloor(Runner):
    """LeGrad's floor: one forward pass with grad enabled, then per block one backward pass
    from that block's class score (``heads(encoder.ln(mean of its tokens))``) to the block's
    attention output - less than LeGrad's backward to the attention probabilities. No map."""

    def prepare(self) -> None:
        self.blocks = [
            m for m in self.ctx.model.modules() if isinstance(getattr(m, "self_attention", None),
                                                              nn.MultiheadAttention)
        ]  # fmt: skip
        self.outs = [_Hook(b) for b in self.blocks]
        self.attn = [
            _Hook(b.self_attention, edit=lambda out, i=i: self._keep(i, out))
            for i, b in enumerate(self.blocks)
        ]
        self.kept: dict[int, torch.Tensor] = {}

    def _keep(self, i: int, out):  # noqa: ANN001, ANN202
        self.kept[i] = out[0]
        return out

    def run(self, x: torch.Tensor) -> torch.Tensor:
        model = self.ctx.model
        for h in self.outs:
            h.store.clear()
        with torch.enable_grad():
            out = model(x)
            classes = out.argmax(1, keepdim=True)
            grads = []
            for i, h in enumerate(self.outs):
                z = h.store.pop()
                score = model.heads(model.encoder.ln(z.mean(1))).gather(1, classes).sum()
                (g,) = torch.autograd.grad(score, self.kept[i], retain_graph=i < len(self.outs) - 1)
                grads.append(g)
        self.kept.clear()
        return grads[-1]

    def release(self) -> None:
        for h in self.outs + self.attn:
            h.remove()


class CamlibMethod(Runner):
    """``camlib.get_method(name)(model, layer, **options)(x)``: finds each image's top
    class, upsampled, normalised."""

    name: str

    def prepare(self) -> None:
        cls = camlib.get_method(self.name)
        layer, options = camlib_setup(self.name, self.ctx)
        if issubclass(cls, camlib.methods.families.PerturbationCAM):
            options["batch_size"] = self.ctx.batch_size
        if getattr(cls, "uses_layer", True):
            self.explainer = cls(self.ctx.model, target_layer=layer, **options)
        else:
            self.explainer = cls(self.ctx.model, **options)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.explainer(x)  # targets=None: camlib finds each image's top class

    def release(self) -> None:
        self.explainer.close()


def camlib_setup(name: str, ctx: Context) -> tuple[object, dict]:
    """(target_layer, options) of camlib's contender for ``name``: the model's layer and the
    defaults, except where the peers are run with other settings (the same for all)."""
    if name in SAMPLED:
        return ctx.layer_name, {"samples": ctx.samples_of(name)}
    if name == "sess":
        return ctx.layer_name, {"num_scales": ctx.sess_scales, "batch_size": ctx.batch_size}
    if name == "refinecam":  # Grad-CAM base for all three libraries (default: Grad-CAM++)
        return list(ctx.spec.refine_layers), {"method": "gradcam"}
    if name == "legrad":
        return "auto", {}  # every block
    return ctx.layer_name, {}


def camlib_runner(name: str) -> type[Runner]:
    return type(f"Camlib_{name}", (CamlibMethod,), {"name": name})


class PytorchGradCAM(Runner):
    """``pytorch_grad_cam.<Class>(model, [layer])(x, targets=None)``: finds the top class;
    returns numpy (N, H, W) in [0, 1]."""

    cls_name = "GradCAM"

    def prepare(self) -> None:
        import pytorch_grad_cam

        cls = getattr(pytorch_grad_cam, self.cls_name)
        ctx = self.ctx
        kwargs = {"reshape_transform": ctx.spec.reshape}
        layers = [ctx.layer]
        if self.cls_name == "AblationCAM":
            kwargs["batch_size"] = ctx.batch_size
        elif self.cls_name == "FullGrad":
            layers = []  # it finds its own bias layers
        elif self.cls_name == "RefineCAM":  # the Grad-CAM base, as camlib's contender
            modules = dict(ctx.model.named_modules())
            layers = [modules[n] for n in ctx.spec.refine_layers]
            kwargs["base_method"] = pytorch_grad_cam.GradCAM
        elif self.cls_name == "SESS":
            kwargs.update(num_scales=ctx.sess_scales, batch_size=ctx.batch_size)
        # Its hooks stay on the model until released: made per block so that they do not
        # fire (and store activations) during the other contenders' calls.
        self.cam = cls(model=ctx.model, target_layers=layers, **kwargs)
        if self.cls_name == "ScoreCAM":
            self.cam.batch_size = ctx.batch_size  # read with hasattr; default 16

    def run(self, x: torch.Tensor):
        return self.cam(input_tensor=x, targets=None)

    def release(self) -> None:
        cams = [self.cam, getattr(self.cam, "base_cam", None)]
        cams += getattr(self.cam, "base_cam_per_layer", [])
        for cam in cams:
            if cam is not None and hasattr(cam, "activations_and_grads"):
                cam.activations_and_grads.release()
        self.ctx.model.zero_grad(set_to_none=True)  # it runs loss.backward(): drop .grad


class PgcDFF(PytorchGradCAM):
    """pytorch-grad-cam ``DeepFeatureFactorization(model, layer, computation_on_concepts=fc)
    (x, n_components=5)``: its (N, 5, h, w) concept maps, as camlib's default ``concepts=5``
    (scikit-learn NMF on the CPU, another solver: timed, not compared)."""

    def prepare(self) -> None:
        from pytorch_grad_cam import DeepFeatureFactorization

        fc = dict(self.ctx.model.named_modules())[self.ctx.spec.fc] if self.ctx.spec.fc else None
        self.cam = DeepFeatureFactorization(
            self.ctx.model, self.ctx.layer, computation_on_concepts=fc
        )

    def run(self, x: torch.Tensor):
        _, maps, *_ = self.cam(x, n_components=5)
        return np.asarray(maps)  # a list of (5, h, w) arrays


def pgc_runner(cls_name: str) -> type[Runner]:
    return type(f"Pgc_{cls_name}", (PytorchGradCAM,), {"cls_name": cls_name})


class CaptumGradCAM(Runner):
    """Captum ``LayerGradCam(relu_attributions=True)`` + ``LayerAttribution.interpolate``."""

    find_top = False

    def prepare(self) -> None:
        from captum.attr import LayerGradCam

        self.lgc = LayerGradCam(self.ctx.model, self.ctx.layer)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        from captum.attr import LayerAttribution

        if self.find_top:  # Captum has no "top class" option: one extra forward pass
            with torch.no_grad():
                classes = self.ctx.model(x).argmax(dim=1)
        else:
            classes = self.ctx.classes
        attr = self.lgc.attribute(x, target=classes, relu_attributions=True)
        return LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), "bilinear")[:, 0]


class CaptumGradCAMTop(CaptumGradCAM):
    find_top = True


class TorchcamMethod(Runner):
    """torchcam ``methods.<Class>``: ``scores = model(x)`` (no_grad for the gradient-free
    ones), ``extractor(scores.argmax(1).tolist(), scores)``, then bilinear upsampling
    (torchcam returns maps at the layer's size)."""

    cls_name = "GradCAM"
    gradient = True

    def prepare(self) -> None:
        import torchcam.methods

        cls = getattr(torchcam.methods, self.cls_name)
        ctx = self.ctx
        shape = {"input_shape": tuple(ctx.x.shape[1:])}
        layer: object = ctx.layer_name
        kwargs: dict = {}
        if self.cls_name in ("ScoreCAM", "SSCAM", "ISCAM"):
            kwargs = {"batch_size": ctx.batch_size, **shape}
        elif self.cls_name in ("CAM", "FinerCAM"):
            kwargs = shape
        if self.cls_name in ("SSCAM", "ISCAM", "SmoothGradCAMpp"):
            method = {"SSCAM": "sscam", "ISCAM": "iscam"}.get(self.cls_name, "smoothgradcampp")
            kwargs.update(num_samples=ctx.samples_of(method), **shape)
        elif self.cls_name == "RefineCAM":  # the Grad-CAM base, as camlib's contender
            layer = list(ctx.spec.refine_layers)
            kwargs = {"base_method": torchcam.methods.GradCAM, **shape}
        elif self.cls_name == "LeGrad":  # every block, as camlib's "auto"
            layer = [
                name for name, m in ctx.model.named_modules()
                if isinstance(getattr(m, "self_attention", None), nn.MultiheadAttention)
            ]  # fmt: skip
        self.extractor = cls(ctx.model, target_layer=layer, **kwargs)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(self.gradient):
            scores = self.ctx.model(x)
        classes = scores.argmax(dim=1).tolist()
        if self.cls_name in ("LeGrad", "SmoothGradCAMpp"):  # they take no scores
            cams = self.extractor(class_idx=classes)
        else:
            cams = self.extractor(class_idx=classes, scores=scores)
        return _upsample(cams[0][:, None], x)

    def release(self) -> None:
        self.extractor.remove_hooks()
        self.extractor.reset_hooks()


def torchcam_runner(cls_name: str, gradient: bool = True) -> type[Runner]:
    return type(
        f"Torchcam_{cls_name}", (TorchcamMethod,), {"cls_name": cls_name, "gradient": gradient}
    )


class CaptumGuidedGradCAM(Runner):
    """Captum ``GuidedGradCam(model, layer).attribute(x, classes, interpolate_mode="bilinear")``."""

    def prepare(self) -> None:
        from captum.attr import GuidedGradCam

        self.ggc = GuidedGradCam(self.ctx.model, self.ctx.layer)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.ggc.attribute(x, target=self.ctx.classes, interpolate_mode="bilinear")


class CaptumGuidedBackprop(Runner):
    """Captum ``GuidedBackprop(model).attribute(x, classes)``."""

    def prepare(self) -> None:
        from captum.attr import GuidedBackprop

        self.gbp = GuidedBackprop(self.ctx.model)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.gbp.attribute(x, target=self.ctx.classes)


# --------------------------------------------------------------------------------------
# the list

LABELS = {
    "cam": "CAM",
    "gradcam": "GradCAM",
    "gradcam++": "GradCAM++",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "hirescam": "HiResCAM",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
    "eigencam": "EigenCAM",
    "guided_backprop": "GuidedBackprop",
    "guided_gradcam": "GuidedGradCAM",
    "gradcam_elementwise": "GradCAMElementWise",
    "eigengradcam": "EigenGradCAM",
    "segeigencam": "SegEigenCAM",
    "kpcacam": "KPCA-CAM",
    "fem": "FEM",
    "shapleycam": "ShapleyCAM",
    "fullgrad": "FullGrad",
    "dff": "DFF",
    "randomcam": "RandomCAM",
    "sscam": "SS-CAM",
    "iscam": "IS-CAM",
    "smoothgradcampp": "SmoothGradCAM++",
    "finercam": "FinerCAM",
    "sess": "SESS",
    "refinecam": "RefineCAM",
    "legrad": "LeGrad",
}


def key_of(method: str) -> str:
    """``camlib_<key>``: the method name as an identifier (``gradcam++`` -> ``gradcampp``)."""
    return "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in method.replace("++", "pp"))


def camlib_contenders(methods: list[str]) -> list[Contender]:
    out = []
    for name in methods:
        cls = camlib.get_method(name)
        signed = bool(getattr(cls, "signed", False))
        ref = {
            "gradcam": "lower_bound",
            "cam": "camlib_gradcam",  # identical for a GAP + linear head
            "guided_gradcam": "captum_guided_gradcam",
            "guided_backprop": "captum_guided_backprop",
        }.get(name)
        kind = "signed" if signed else "map"
        if getattr(cls, "returns", None) == "concepts":
            kind = "concepts"  # (N, K, H, W) concept maps (DFF): timed, no reference
        out.append(
            Contender(
                f"camlib_{key_of(name)}",
                f"camlib {LABELS.get(name, cls.__name__)}",
                kind,
                "camlib",
                None,
                name,
                f"camlib.{cls.__name__}(model, layer)(x)",
                camlib_runner(name),
                ref=ref,
            )
        )
    return out


def _pgc(method: str, cls_name: str, by_design: str | None = None) -> Contender:
    return Contender(
        f"pgc_{key_of(method)}",
        f"pytorch-grad-cam {cls_name}",
        "map",
        "peer",
        "pytorch-grad-cam",
        method,
        f"pytorch_grad_cam.{cls_name}(model, [layer])(x, targets=None)",
        pgc_runner(cls_name),
        ref=f"camlib_{key_of(method)}",
        by_design=by_design,
    )


def _tc(method: str, cls_name: str, gradient: bool = True, by_design: str | None = None):
    return Contender(
        f"torchcam_{key_of(method)}",
        f"torchcam {cls_name}",
        "map",
        "peer",
        "torchcam",
        method,
        f"torchcam.methods.{cls_name}: model(x), extractor(argmax, scores), interpolate",
        torchcam_runner(cls_name, gradient),
        ref=f"camlib_{key_of(method)}",
        by_design=by_design,
    )


BOUNDS: list[Contender] = [
    Contender(
        "lower_bound",
        "lower bound",
        "map",
        "bound",
        None,
        None,
        "forward (grad enabled) + hook + autograd.grad to the layer + Grad-CAM arithmetic + upsampling",
        LowerBound,
    ),
    Contender(
        "nograd_forward",
        "no-grad forward",
        "reference",
        "bound",
        None,
        None,
        "plain model(x) under torch.no_grad(); produces no map",
        NoGradForward,
    ),
    Contender(
        "scorecam_floor",
        "Score-CAM floor",
        "reference",
        "bound",
        None,
        "scorecam",
        "model(x) + model(x_masked) for every non-constant (image, channel), batch_size rows at "
        "a time, no_grad, masked inputs precomputed",
        ScoreCamFloor,
    ),
    Contender(
        "ablationcam_floor",
        "Ablation-CAM floor",
        "reference",
        "bound",
        None,
        "ablationcam",
        "model(x) + a no-grad forward per non-zero (image, channel) with that channel zeroed "
        "at the layer, batch_size rows at a time, inputs precomputed",
        AblationFloor,
    ),
    Contender(
        "sampled_score_floor",
        "SS-CAM/IS-CAM floor",
        "reference",
        "bound",
        None,
        None,
        "model(x) + samples x model(x_masked) for every non-constant (image, channel), "
        "batch_size rows at a time, no_grad, masked inputs precomputed",
        SampledScoreFloor,
        for_methods=("sscam", "iscam"),
    ),
    Contender(
        "smoothgrad_floor",
        "SmoothGrad-CAM++ floor",
        "reference",
        "bound",
        None,
        None,
        "no-grad model(x) + the lower bound's forward and gradient to the layer on the "
        "N x samples noisy copies at once (precomputed)",
        SmoothGradFloor,
        for_methods=("smoothgradcampp",),
    ),
    Contender(
        "shapley_floor",
        "Shapley-CAM floor",
        "reference",
        "bound",
        None,
        None,
        "forward + gradient to the layer with create_graph + one Hessian-vector product",
        ShapleyFloor,
        for_methods=("shapleycam",),
    ),
    Contender(
        "input_gradient_floor",
        "input-gradient floor",
        "reference",
        "bound",
        None,
        None,
        "forward with a graph from the input + autograd.grad of the scores to the input",
        InputGradientFloor,
        for_methods=("fullgrad", "guided_backprop", "guided_gradcam"),
    ),
    Contender(
        "sess_floor",
        "SESS floor",
        "reference",
        "bound",
        None,
        None,
        "model(x) + a no-grad forward and the lower bound's forward + gradient for every patch, "
        "batch_size patches at a time, patches precomputed",
        SessFloor,
        for_methods=("sess",),
    ),
    Contender(
        "legrad_floor",
        "LeGrad floor",
        "reference",
        "bound",
        None,
        None,
        "forward with grad + per block one backward from its score to its attention output",
        LeGradFloor,
        for_methods=("legrad",),
    ),
]

PEER_CONTENDERS: list[Contender] = [
    _pgc("gradcam", "GradCAM"),
    Contender(
        "captum_gradcam",
        "Captum LayerGradCam (given classes)",
        "map",
        "peer",
        "captum",
        "gradcam",
        "LayerGradCam.attribute(x, classes, relu_attributions=True) + interpolate(bilinear)",
        CaptumGradCAM,
        ref="camlib_gradcam",
    ),
    Contender(
        "captum_gradcam_top",
        "Captum LayerGradCam (finds top class)",
        "map",
        "peer",
        "captum",
        "gradcam",
        "as above, plus a no-grad forward to find the top class",
        CaptumGradCAMTop,
        ref="camlib_gradcam",
    ),
    _tc("gradcam", "GradCAM"),
    _tc("cam", "CAM", gradient=False),
    _pgc("gradcam++", "GradCAMPlusPlus", "eps 1e-6 in the alpha denominator"),
    _tc(
        "gradcam++",
        "GradCAMpp",
        by_design="its in-place division acts on a copy, so alpha = g^2 and "
        "w = sum g^2 ReLU(g) (no denominator)",
    ),
    _pgc("xgradcam", "XGradCAM", "eps 1e-7 in the denominator"),
    _tc("xgradcam", "XGradCAM", by_design="eps 1e-8 in the denominator"),
    _pgc("layercam", "LayerCAM"),
    _tc("layercam", "LayerCAM"),
    _pgc("hirescam", "HiResCAM"),
    _pgc(
        "scorecam",
        "ScoreCAM",
        "softmax over channels of the masked logits (camlib: softmax over classes, the paper's); "
        "masks upsampled with align_corners=True",
    ),
    _tc(
        "scorecam",
        "ScoreCAM",
        gradient=False,
        by_design="softmax over channels of the masked logit minus the unmasked one (camlib: "
        "softmax over classes)",
    ),
    _pgc("ablationcam", "AblationCAM"),
    _pgc("eigencam", "EigenCAM", "centred activations, sign left to the SVD"),
    # round 2 (issue 18)
    _pgc("gradcam_elementwise", "GradCAMElementWise"),
    _pgc("eigengradcam", "EigenGradCAM", "centred A*g, sign left to the SVD"),
    _pgc("segeigencam", "SegEigenCAM"),
    _pgc("kpcacam", "KPCA_CAM"),
    _pgc(
        "fem",
        "FEM",
        "weights the activations by the fraction of positions above the threshold (the "
        "paper: the binary masks by the channel mean)",
    ),
    _pgc("shapleycam", "ShapleyCAM"),
    _pgc("fullgrad", "FullGrad", "1e-7 added to each rescale's span"),
    Contender(
        "pgc_dff",
        "pytorch-grad-cam DeepFeatureFactorization",
        "concepts",
        "peer",
        "pytorch-grad-cam",
        "dff",
        "DeepFeatureFactorization(model, layer, computation_on_concepts=fc)(x, n_components=5)",
        PgcDFF,
    ),
    _pgc(
        "randomcam", "RandomCAM", "random weights (its unseeded NumPy draw; camlib seeds its own)"
    ),
    _tc(
        "sscam",
        "SSCAM",
        gradient=False,
        by_design="softmax over channels of mean logit gains (camlib: mean class probability)",
    ),
    _tc(
        "iscam",
        "ISCAM",
        gradient=False,
        by_design="masks scaled by cumulative sums (up to (S+1)/2) and a softmax over channels",
    ),
    _tc(
        "smoothgradcampp",
        "SmoothGradCAMpp",
        by_design="its own noise (std 0.3), the last noisy copy's gradient and activation",
    ),
    _pgc("finercam", "FinerCAM"),
    _tc("finercam", "FinerCAM", by_design="y_c - 0.6 x mean of the 3 closest logits"),
    _pgc("sess", "SESS"),
    _pgc("refinecam", "RefineCAM"),
    _tc(
        "refinecam",
        "RefineCAM",
        by_design="min-max before resizing to the largest layer, not after",
    ),
    _tc("legrad", "LeGrad"),
    Contender(
        "captum_guided_gradcam",
        "Captum GuidedGradCam (given classes)",
        "signed",
        "peer",
        "captum",
        "guided_gradcam",
        'GuidedGradCam(model, layer).attribute(x, classes, interpolate_mode="bilinear")',
        CaptumGuidedGradCAM,
        ref="camlib_guided_gradcam",
    ),
    Contender(
        "captum_guided_backprop",
        "Captum GuidedBackprop (given classes)",
        "signed",
        "peer",
        "captum",
        "guided_backprop",
        "GuidedBackprop(model).attribute(x, classes)",
        CaptumGuidedBackprop,
        ref="camlib_guided_backprop",
    ),
]


def contenders(methods: list[str]) -> list[Contender]:
    """Bounds, then per method camlib's contender and the peers' (in ``methods`` order)."""
    mine = camlib_contenders(methods)
    out = list(BOUNDS)
    for c in mine:
        out.append(c)
        out += [p for p in PEER_CONTENDERS if p.method == c.method]
    return out


PEER_METHODS = {
    "pytorch-grad-cam": [
        "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "scorecam", "ablationcam",
        "eigencam", "gradcam_elementwise", "eigengradcam", "segeigencam", "kpcacam", "fem",
        "shapleycam", "fullgrad", "dff", "randomcam", "finercam", "sess", "refinecam",
    ],
    "torchcam": [
        "cam", "gradcam", "gradcam++", "xgradcam", "layercam", "scorecam", "sscam", "iscam",
        "smoothgradcampp", "finercam", "refinecam", "legrad",
    ],
    "captum": ["gradcam", "guided_gradcam", "guided_backprop"],
}  # fmt: skip
"""Which camlib methods each peer has a counterpart of (the rest: no peer measured)."""
