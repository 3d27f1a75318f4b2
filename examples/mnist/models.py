"""The two networks of the study, and weight re-initialisation for the sanity check."""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn


class BaselineNet(nn.Sequential):
    """The classic small MNIST ConvNet: one 5x5 convolution, max-pooling, a linear layer.

    ``conv`` (1 -> 12, 5x5) -> ``relu`` -> ``pool`` (2x2) -> ``flatten`` -> ``fc``
    (12*12*12 -> 10 logits). The linear layer sees every position separately, so the
    evidence it learns is tied to where strokes sit in the 28x28 frame. Grad-CAM explains
    layer :attr:`CAM_LAYER` (24x24 maps); CAM does not apply (no global pooling).
    """

    CAM_LAYER = "relu"

    def __init__(self, classes: int = 10) -> None:
        super().__init__(
            OrderedDict(
                conv=nn.Conv2d(1, 12, 5),
                relu=nn.ReLU(),
                pool=nn.MaxPool2d(2),
                flatten=nn.Flatten(),
                fc=nn.Linear(12 * 12 * 12, classes),
            )
        )


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            bn=nn.BatchNorm2d(cout),
            relu=nn.ReLU(inplace=True),
        )
    )


class ImprovedNet(nn.Sequential):
    """A deeper, fully convolutional ConvNet with BatchNorm and a GAP + linear head.

    ``block1`` (1 -> c1) -> ``pool1`` -> ``block2`` (c1 -> c2, two convolutions) ->
    ``pool2`` -> ``block3`` (c2 -> c3) -> ``gap`` -> ``flatten`` -> ``fc`` (c3 -> 10),
    each block 3x3 convolutions + BatchNorm + ReLU. Global average pooling makes the
    logits :math:`y^c = \\frac{1}{hw}\\sum_{ij}\\sum_k w^c_k A^k_{ij} + b^c`, so CAM applies
    (and equals Grad-CAM up to the factor :math:`hw`), the evidence is counted the same
    wherever it appears, and the network runs unchanged on larger canvases.
    """

    CAM_LAYER = "block3"

    def __init__(self, channels: Sequence[int] = (24, 48, 96), classes: int = 10) -> None:
        c1, c2, c3 = channels
        block2 = _block(c1, c2)
        block2.add_module("conv2", nn.Conv2d(c2, c2, 3, padding=1, bias=False))
        block2.add_module("bn2", nn.BatchNorm2d(c2))
        block2.add_module("relu2", nn.ReLU(inplace=True))
        super().__init__(
            OrderedDict(
                block1=_block(1, c1),
                pool1=nn.MaxPool2d(2),
                block2=block2,
                pool2=nn.MaxPool2d(2),
                block3=_block(c2, c3),
                gap=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(),
                fc=nn.Linear(c3, classes),
            )
        )
        self.channels = (c1, c2, c3)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomized_copy(model: nn.Module, layers: Sequence[str], seed: int) -> nn.Module:
    """A copy of ``model`` whose named submodules have freshly initialised weights.

    Every module inside each named layer that has ``reset_parameters`` is re-initialised
    with PyTorch's default initialisation (BatchNorm: weight 1, bias 0 and fresh running
    statistics). The copy is in eval mode; ``model`` is untouched.
    """
    clone = copy.deepcopy(model).eval()
    modules = dict(clone.named_modules())
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for name in layers:
            for m in modules[name].modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.reset_running_stats()
    return clone


def cascade(model: nn.Module) -> list[str]:
    """The layers with weights, from the output back to the input (Adebayo et al.'s
    cascading randomisation order): e.g. ``["fc", "block3", "block2", "block1"]``."""
    names = [
        name for name, child in model.named_children() if any(True for _ in child.parameters())
    ]
    return names[::-1]
