"""How closely camlib's numbers match Captum's, as figures (the test suite asserts 1e-5).

    python benchmarks/captum_agreement.py      # needs captum (pip install camlib[bench])

For each model and layer, with random weights, a batch of 3 and explicit targets, prints
max|camlib - Captum| / max|Captum| for raw Grad-CAM (``LayerGradCam``,
``relu_attributions=True``), Guided Grad-CAM (``GuidedGradCam``, bilinear) and Guided
Backprop. Guided methods are skipped where Captum cannot guide every ReLU (DenseNet's
functional ``F.relu``) or the model has no ReLU to guide (MobileNetV3's Hardswish).
"""

from __future__ import annotations

import warnings

import torch
import torchvision
from captum.attr import GuidedBackprop, GuidedGradCam, LayerGradCam
from torch import nn

import camlib

warnings.filterwarnings("ignore")
torch.set_num_threads(2)


class SmallConvNet(nn.Sequential):
    """An MNIST-style ConvNet: module ReLUs (one in-place), max-pool, GAP + linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(inplace=True)
        self.conv2, self.relu2 = nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv3, self.relu3 = nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(inplace=True)
        self.gap, self.flat, self.fc = nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# (name, builder, (channels, size), layers, guided): guided=False where Captum cannot
# guide every ReLU (DenseNet's functional F.relu) or there is none (MobileNetV3).
CASES = [
    ("SmallConvNet", SmallConvNet, (1, 28), ["relu1", "relu2", "relu3"], True),
    (
        "resnet18",
        lambda: torchvision.models.resnet18(weights=None),
        (3, 64),
        ["layer2", "layer3.1.conv2", "layer4"],
        True,
    ),
    (
        "vgg11_bn",
        lambda: torchvision.models.vgg11_bn(weights=None),
        (3, 64),
        ["features.10", "features.28"],
        True,
    ),
    (
        "vgg11",
        lambda: torchvision.models.vgg11(weights=None),
        (3, 64),
        ["features.10", "features.18"],
        True,
    ),
    (
        "densenet121",
        lambda: torchvision.models.densenet121(weights=None),
        (3, 64),
        ["features.denseblock3", "features"],
        False,
    ),
    (
        "mobilenet_v3_small",
        lambda: torchvision.models.mobilenet_v3_small(weights=None),
        (3, 64),
        ["features.6", "features"],
        False,
    ),
]


def main() -> None:
    worst = {"gradcam": 0.0, "guided_gradcam": 0.0, "guided_backprop": 0.0}

    def record(kind: str, value: float) -> str:
        worst[kind] = max(worst[kind], value)
        return f"  {kind} {value:.1e}"

    for name, build, (channels, size), layers, guided in CASES:
        torch.manual_seed(0)
        model = build().eval()
        x = torch.randn(3, channels, size, size)
        targets = torch.tensor([1, 5, 7])
        for layer in layers:
            module = camlib.resolve_layer(model, layer)
            ours = camlib.GradCAM(model, layer)(x, targets, upsample=False, normalize=False)
            ref = LayerGradCam(model, module).attribute(x, targets, relu_attributions=True)
            line = f"{name:20s} {layer:22s}" + record("gradcam", rel(ours, ref[:, 0]))
            if guided:
                ours = camlib.GuidedGradCAM(model, layer)(x, targets, normalize=False)
                ref = GuidedGradCam(model, module).attribute(
                    x, targets, interpolate_mode="bilinear"
                )
                line += record("guided_gradcam", rel(ours, ref))
            print(line)
        if guided:
            ours = camlib.GuidedBackprop(model)(x, targets, normalize=False)
            ref = GuidedBackprop(model).attribute(x, targets)
            print(f"{name:20s} {'(input)':22s}" + record("guided_backprop", rel(ours, ref)))
    print("worst:", ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))


if __name__ == "__main__":
    main()
