"""Shared test models and the model-state snapshot used to check camlib leaves models alone."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camlib

torch.set_num_threads(min(2, torch.get_num_threads()))

ALL_METHOD_NAMES = sorted({cls.name for cls in camlib.METHODS.values()})
"""Every registered method, by its main name."""
ATTENTION_METHODS = [
    n for n in ALL_METHOD_NAMES if getattr(camlib.METHODS[n], "needs_attention", False)
]
"""Methods that read attention maps (LeGrad): they refuse CNNs, so their invariants run on a
small vision transformer (tests/test_methods_round2_b.py) instead of the CNNs below."""
METHOD_NAMES = [n for n in ALL_METHOD_NAMES if n not in ATTENTION_METHODS]
"""Every registered method that explains CNNs: the invariant suites run over all of them."""
LAYER_METHODS = [n for n in METHOD_NAMES if camlib.METHODS[n].uses_layer]
"""The methods that explain an inner layer (all but Guided Backprop)."""


class SmallConvNet(nn.Module):
    """MNIST-style ConvNet with module ReLUs (one in-place) and a GAP + linear head."""

    def __init__(self, in_ch: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, 8, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.relu3 = nn.ReLU(inplace=True)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(x))
        x = self.pool(self.relu2(self.conv2(x)))
        x = self.relu3(self.conv3(x))
        return self.fc(self.gap(x).flatten(1))


class FunctionalConvNet(SmallConvNet):
    """The same network written with functional ReLUs (F.relu, torch.relu, Tensor.relu_)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x), inplace=True)
        x = self.pool(torch.relu(self.conv2(x)))
        x = self.conv3(x).relu_()
        return self.fc(self.gap(x).flatten(1))


class SharedReluNet(nn.Module):
    """One nn.ReLU module called twice in forward (the last spatial module runs twice)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def twin(model: SmallConvNet) -> FunctionalConvNet:
    """A FunctionalConvNet with the very same weights as ``model``."""
    other = FunctionalConvNet(model.conv1.in_channels, model.fc.out_features)
    other.load_state_dict(model.state_dict())
    return other.train(model.training)


def count_hooks(model: nn.Module) -> int:
    """Every hook registered on every module of ``model`` (forward, pre, backward, state-dict)."""
    total = 0
    for m in model.modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_state_dict_hooks",
            "_load_state_dict_pre_hooks",
        ):
            total += len(getattr(m, attr, {}))
    return total


def count_global_hooks() -> int:
    """Hooks registered globally with ``torch.nn.modules.module.register_module_*``."""
    import torch.nn.modules.module as mm

    names = [n for n in dir(mm) if n.startswith("_global_") and n.endswith("_hooks")]
    return sum(len(getattr(mm, n)) for n in names)


@dataclass
class ModelState:
    """Everything camlib promises not to change about a model."""

    modules: list[tuple[str, int, type]]
    training: list[bool]
    requires_grad: list[bool]
    grads: list[torch.Tensor | None]
    hooks: int
    global_hooks: int
    state: dict[str, torch.Tensor]
    inplace: list[bool]

    @classmethod
    def of(cls, model: nn.Module) -> ModelState:
        return cls(
            modules=[(n, id(m), type(m)) for n, m in model.named_modules()],
            training=[m.training for m in model.modules()],
            requires_grad=[p.requires_grad for p in model.parameters()],
            grads=[None if p.grad is None else p.grad.clone() for p in model.parameters()],
            hooks=count_hooks(model),
            global_hooks=count_global_hooks(),
            state=copy.deepcopy(model.state_dict()),
            inplace=[getattr(m, "inplace", None) for m in model.modules()],
        )

    def assert_unchanged(self, model: nn.Module) -> None:
        now = ModelState.of(model)
        assert now.modules == self.modules, "modules were replaced"
        assert now.training == self.training, "train/eval mode changed"
        assert now.requires_grad == self.requires_grad, "requires_grad changed"
        assert now.hooks == self.hooks, f"hooks: {self.hooks} before, {now.hooks} after"
        assert now.global_hooks == self.global_hooks, "global hooks changed"
        assert now.inplace == self.inplace, "inplace flags changed"
        for before, after in zip(self.grads, now.grads, strict=True):
            if before is None:
                assert after is None, ".grad was written"
            else:
                assert after is not None and torch.equal(before, after), ".grad changed"
        assert now.state.keys() == self.state.keys()
        for k, v in self.state.items():
            assert torch.equal(v, now.state[k]), f"state_dict entry {k} changed"


@pytest.fixture
def small_net() -> SmallConvNet:
    torch.manual_seed(0)
    return SmallConvNet().eval()


@pytest.fixture
def digits() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(4, 1, 28, 28)


def small(in_ch: int = 1) -> SmallConvNet:
    """A seeded SmallConvNet in eval mode."""
    torch.manual_seed(0)
    return SmallConvNet(in_ch).eval()


def batch(n: int = 3, h: int = 16, w: int | None = None, channels: int = 1) -> torch.Tensor:
    """A seeded random batch (n, channels, h, w)."""
    torch.manual_seed(1)
    return torch.randn(n, channels, h, h if w is None else w)


FAST_OPTIONS: dict[str, dict] = {
    "sscam": {"samples": 2},
    "iscam": {"samples": 2},
    "smoothgradcampp": {"samples": 2},
    "sess": {"num_scales": 3},
}
"""Fewer noisy samples for the sampling methods, and 3 of SESS's 12 default scales, in the
invariant suites, which check what a call does to the model, not the maps' values (SS-CAM's
35 default samples times 512 ResNet channels would cost minutes per call; SESS's 12 scales
explain ~120 windows per image); each method's values are tested at its defaults in its own
test file."""


def make(name: str, model: nn.Module, layer="relu3") -> camlib.Explainer:
    """The explainer registered as ``name``; ``layer`` is ignored by input-only methods."""
    cls = camlib.METHODS[name]
    options = FAST_OPTIONS.get(name, {})
    return cls(model, layer, **options) if cls.uses_layer else cls(model, **options)


def mode_stack_depth() -> int:
    length = getattr(torch._C, "_len_torch_function_stack", None)
    return length() if length is not None else 0


@contextlib.contextmanager
def left_alone(model: nn.Module):
    """The model state, global hooks, grad mode and torch-function modes are as before."""
    state = ModelState.of(model)
    grad, inference, depth = (
        torch.is_grad_enabled(),
        torch.is_inference_mode_enabled(),
        mode_stack_depth(),
    )
    hooks, global_hooks = count_hooks(model), count_global_hooks()
    yield
    state.assert_unchanged(model)
    assert count_hooks(model) == hooks
    assert count_global_hooks() == global_hooks
    assert torch.is_grad_enabled() == grad
    assert torch.is_inference_mode_enabled() == inference
    assert mode_stack_depth() == depth


@contextlib.contextmanager
def count_forwards(model: nn.Module):
    """Record the batch size of every call of ``model``'s forward: yields a list that
    fills with one entry per call (the first input's ``shape[0]``)."""
    sizes: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    try:
        yield sizes
    finally:
        handle.remove()
