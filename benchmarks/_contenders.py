"""Models and contenders for ``benchmarks/throughput.py``.

Every contender is a small object with ``prepare()`` (hooks, explainer objects: untimed),
``run(x)`` (one call, timed: the batch in, per-image maps out) and ``release()`` (remove
hooks, drop parameter ``.grad``: untimed). ``run`` returns the maps as a torch tensor (or
numpy array) of shape (N, H, W) - or (N, C, H, W) for guided methods - at input size,
explaining the model's top class for every image (contenders "given the classes" receive
exactly those classes, computed once outside the timed region).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], nn.Module]
    layer: str  # the layer every contender explains
    channels: int
    native: int  # native input resolution
    gap_linear: bool  # CAM applies (global average pooling + linear head)


MODELS: dict[str, ModelSpec] = {
    "mnist": ModelSpec("mnist", MnistNet, "features.4", 1, 28, True),
    "resnet18": ModelSpec(
        "resnet18", lambda: torchvision.models.resnet18(weights=None), "layer4", 3, 224, True
    ),
    "resnet50": ModelSpec(
        "resnet50", lambda: torchvision.models.resnet50(weights=None), "layer4", 3, 224, True
    ),
    # "features" (the whole conv trunk, ending in the last max-pool, 7x7) is camlib's
    # automatic choice for VGG and pytorch-grad-cam's recommended model.features[-1].
    "vgg16": ModelSpec(
        "vgg16", lambda: torchvision.models.vgg16(weights=None), "features", 3, 224, False
    ),
}


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


@dataclass
class Context:
    """What a contender needs to know about the model being measured."""

    model: nn.Module
    layer_name: str
    layer: nn.Module
    classes: torch.Tensor  # the top class of every image (computed once, untimed)


@dataclass
class Contender:
    key: str
    label: str
    kind: str  # "gradcam" (N,H,W maps), "guided" (N,C,H,W maps) or "reference" (no map)
    group: str  # "bound", "camlib", "peer"
    peer: str | None
    description: str
    make: Callable[[Context], Runner] = field(repr=False)


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


class LowerBound(Runner):
    """The least work any Grad-CAM can do with an ordinary forward pass.

    One forward pass with grad enabled and a forward hook keeping the target activation,
    ``torch.autograd.grad`` of the top-class scores w.r.t. that activation only, the
    Grad-CAM arithmetic and bilinear upsampling. No checks, no normalisation.
    """

    def prepare(self) -> None:
        self.store: list[torch.Tensor] = []
        self.handle = self.ctx.layer.register_forward_hook(
            lambda module, args, out: self.store.append(out)
        )

    def run(self, x: torch.Tensor) -> torch.Tensor:
        self.store.clear()
        with torch.enable_grad():
            out = self.ctx.model(x)
            act = self.store.pop()
            scores = out.gather(1, out.argmax(1, keepdim=True))
            (grad,) = torch.autograd.grad(scores.sum(), act)
        with torch.no_grad():
            weights = grad.mean(dim=(2, 3), keepdim=True)
            cam = (weights * act).sum(dim=1, keepdim=True).relu_()
            return _upsample(cam, x)

    def release(self) -> None:
        self.handle.remove()
        self.store.clear()


class NoGradForward(Runner):
    """A plain inference forward pass under ``torch.no_grad()``: no map at all."""

    def run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.ctx.model(x)


class CamlibMethod(Runner):
    cls: type[camlib.Explainer]

    def prepare(self) -> None:
        self.explainer = self.cls(self.ctx.model, target_layer=self.ctx.layer_name)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.explainer(x)  # targets=None: camlib finds each image's top class

    def release(self) -> None:
        self.explainer.close()


class CamlibGradCAM(CamlibMethod):
    cls = camlib.GradCAM


class CamlibCAM(CamlibMethod):
    cls = camlib.CAM


class CamlibGuidedGradCAM(CamlibMethod):
    cls = camlib.GuidedGradCAM


class PytorchGradCAM(Runner):
    """pytorch-grad-cam ``GradCAM(model, [layer])(x, targets=None)``: finds the top class."""

    def prepare(self) -> None:
        from pytorch_grad_cam import GradCAM

        # Its hooks stay on the model until released: made per block so that they do not
        # fire (and store activations) during the other contenders' calls.
        self.cam = GradCAM(model=self.ctx.model, target_layers=[self.ctx.layer])

    def run(self, x: torch.Tensor):
        return self.cam(input_tensor=x, targets=None)  # numpy (N, H, W) in [0, 1]

    def release(self) -> None:
        self.cam.activations_and_grads.release()
        self.ctx.model.zero_grad(set_to_none=True)  # it runs loss.backward(): drop .grad


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


class TorchcamGradCAM(Runner):
    """torchcam ``GradCAM``: forward, top class from the scores, CAM, then bilinear upsampling."""

    def prepare(self) -> None:
        from torchcam.methods import GradCAM

        self.extractor = GradCAM(self.ctx.model, target_layer=self.ctx.layer_name)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            scores = self.ctx.model(x)
            cams = self.extractor(class_idx=scores.argmax(dim=1).tolist(), scores=scores)
        return _upsample(cams[0][:, None], x)

    def release(self) -> None:
        self.extractor.remove_hooks()
        self.extractor.reset_hooks()


class CaptumGuidedGradCAM(Runner):
    """Captum ``GuidedGradCam(model, layer).attribute(x, classes, interpolate_mode="bilinear")``."""

    def prepare(self) -> None:
        from captum.attr import GuidedGradCam

        self.ggc = GuidedGradCam(self.ctx.model, self.ctx.layer)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.ggc.attribute(x, target=self.ctx.classes, interpolate_mode="bilinear")


CONTENDERS: list[Contender] = [
    Contender(
        "lower_bound",
        "lower bound",
        "gradcam",
        "bound",
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
        "plain model(x) under torch.no_grad(); produces no map",
        NoGradForward,
    ),
    Contender(
        "camlib_gradcam",
        "camlib GradCAM",
        "gradcam",
        "camlib",
        None,
        "camlib.GradCAM(model, layer)(x): top class, upsampled, normalised",
        CamlibGradCAM,
    ),
    Contender(
        "camlib_cam",
        "camlib CAM",
        "gradcam",
        "camlib",
        None,
        "camlib.CAM(model, layer)(x) (GAP + linear heads only)",
        CamlibCAM,
    ),
    Contender(
        "pgc_gradcam",
        "pytorch-grad-cam GradCAM",
        "gradcam",
        "peer",
        "pytorch-grad-cam",
        "pytorch_grad_cam.GradCAM(model, [layer])(x, targets=None)",
        PytorchGradCAM,
    ),
    Contender(
        "captum_gradcam",
        "Captum LayerGradCam (given classes)",
        "gradcam",
        "peer",
        "captum",
        "LayerGradCam.attribute(x, classes, relu_attributions=True) + interpolate(bilinear)",
        CaptumGradCAM,
    ),
    Contender(
        "captum_gradcam_top",
        "Captum LayerGradCam (finds top class)",
        "gradcam",
        "peer",
        "captum",
        "as above, plus a no-grad forward to find the top class",
        CaptumGradCAMTop,
    ),
    Contender(
        "torchcam_gradcam",
        "torchcam GradCAM",
        "gradcam",
        "peer",
        "torchcam",
        "torchcam.methods.GradCAM: model(x), extractor(argmax, scores), F.interpolate(bilinear)",
        TorchcamGradCAM,
    ),
    Contender(
        "camlib_guided_gradcam",
        "camlib GuidedGradCAM",
        "guided",
        "camlib",
        None,
        "camlib.GuidedGradCAM(model, layer)(x)",
        CamlibGuidedGradCAM,
    ),
    Contender(
        "captum_guided_gradcam",
        "Captum GuidedGradCam (given classes)",
        "guided",
        "peer",
        "captum",
        'GuidedGradCam(model, layer).attribute(x, classes, interpolate_mode="bilinear")',
        CaptumGuidedGradCAM,
    ),
]

# Which --methods value switches a contender on (the bounds are always measured).
METHOD_OF = {
    "camlib_gradcam": "gradcam",
    "pgc_gradcam": "gradcam",
    "captum_gradcam": "gradcam",
    "captum_gradcam_top": "gradcam",
    "torchcam_gradcam": "gradcam",
    "camlib_cam": "cam",
    "camlib_guided_gradcam": "guided_gradcam",
    "captum_guided_gradcam": "guided_gradcam",
}
