"""Grad-CAM against Captum on randomly generated small conv nets (hypothesis).

Each net is 1-4 conv blocks (kernel 1/3/5, random widths) with module ReLUs (in-place or
not) or functional ones (``F.relu``, ``torch.relu``, ``Tensor.relu_``), optional residual
additions (``out = out + x`` or in-place ``out += x``), optional max/avg pooling, on odd
input sizes, and a GAP + Linear or Flatten + Linear head. The target is a random block,
conv, activation or pooling module, by name. For each net camlib's raw and default maps
must equal Captum's, for the class scores and for their negation (which explains the
other sign of the same channel sum, so the comparison is never vacuous), and the model
must be left exactly as it was (hooks included).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from test_captum_gradcam import assert_default_close, assert_raw_close, captum_reference
from torch import nn

import camlib

from conftest import ModelState, count_hooks

ACTIVATIONS = [
    "none",
    "module",
    "module_inplace",
    "F.relu",
    "F.relu_inplace",
    "torch.relu",
    "relu_",
]


@dataclass(frozen=True)
class BlockSpec:
    out_ch: int
    kernel: int
    act: str  # one of ACTIVATIONS
    residual: str | None  # None, "add" (out = out + x) or "iadd" (out += x)
    pool: str | None  # None, "max" or "avg"


@dataclass(frozen=True)
class NetSpec:
    in_ch: int
    height: int
    width: int
    blocks: tuple[BlockSpec, ...]
    head: str  # "gap" or "flatten"
    classes: int
    layer: str
    targets: tuple[int, ...] | None
    seed: int


class Block(nn.Module):
    def __init__(self, in_ch: int, spec: BlockSpec) -> None:
        super().__init__()
        self.spec = spec
        self.conv = nn.Conv2d(in_ch, spec.out_ch, spec.kernel, padding=spec.kernel // 2)
        if spec.act in ("module", "module_inplace"):
            self.act = nn.ReLU(inplace=spec.act == "module_inplace")
        if spec.pool is not None:
            self.pool = nn.MaxPool2d(2) if spec.pool == "max" else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.spec.residual == "add":
            out = out + x
        elif self.spec.residual == "iadd":
            out += x
        act = self.spec.act
        if act.startswith("module"):
            out = self.act(out)
        elif act == "F.relu":
            out = F.relu(out)
        elif act == "F.relu_inplace":
            out = F.relu(out, inplace=True)
        elif act == "torch.relu":
            out = torch.relu(out)
        elif act == "relu_":
            out = out.relu_()
        if self.spec.pool is not None:
            out = self.pool(out)
        return out


class RandomNet(nn.Module):
    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        blocks, ch, h, w = [], spec.in_ch, spec.height, spec.width
        for b in spec.blocks:
            blocks.append(Block(ch, b))
            ch = b.out_ch
            if b.pool is not None:
                h, w = h // 2, w // 2
        self.blocks = nn.Sequential(*blocks)
        self.gap = nn.AdaptiveAvgPool2d(1) if spec.head == "gap" else None
        self.fc = nn.Linear(ch if spec.head == "gap" else ch * h * w, spec.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        if self.gap is not None:
            x = self.gap(x)
        return self.fc(torch.flatten(x, 1))


def layer_names(blocks: tuple[BlockSpec, ...]) -> list[str]:
    names = []
    for i, b in enumerate(blocks):
        names += [f"blocks.{i}", f"blocks.{i}.conv"]
        if b.act.startswith("module"):
            names.append(f"blocks.{i}.act")
        if b.pool is not None:
            names.append(f"blocks.{i}.pool")
    return names


@st.composite
def net_specs(draw: st.DrawFn) -> NetSpec:
    in_ch = draw(st.integers(1, 3))
    height, width = draw(st.integers(3, 24)), draw(st.integers(3, 24))
    blocks, ch, h, w = [], in_ch, height, width
    for _ in range(draw(st.integers(1, 4))):
        residual = draw(st.sampled_from([None, None, "add", "iadd"]))
        out_ch = ch if residual else draw(st.integers(1, 8))
        pool = draw(st.sampled_from([None, "max", "avg"])) if min(h, w) >= 2 else None
        if pool is not None:
            h, w = h // 2, w // 2
        kernel = draw(st.sampled_from([1, 3, 5]))
        blocks.append(BlockSpec(out_ch, kernel, draw(st.sampled_from(ACTIVATIONS)), residual, pool))
        ch = out_ch
    blocks_t = tuple(blocks)
    classes = draw(st.integers(2, 6))
    targets = draw(st.none() | st.tuples(*[st.integers(0, classes - 1)] * 3))
    return NetSpec(
        in_ch=in_ch,
        height=height,
        width=width,
        blocks=blocks_t,
        head=draw(st.sampled_from(["gap", "flatten"])),
        classes=classes,
        layer=draw(st.sampled_from(layer_names(blocks_t))),
        targets=targets,
        seed=draw(st.integers(0, 2**16)),
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared, busy CPU two spinning threads run many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(spec: NetSpec) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(spec.seed)
    model = RandomNet(spec).eval()
    x = torch.randn(3, spec.in_ch, spec.height, spec.width)
    return model, x


def test_generated_specs_are_valid():
    """The builder and forward accept an example of every feature (and the names exist)."""
    blocks = (
        BlockSpec(4, 3, "module_inplace", None, "max"),
        BlockSpec(4, 5, "relu_", "iadd", None),
        BlockSpec(4, 1, "F.relu_inplace", "add", "avg"),
        BlockSpec(2, 3, "torch.relu", None, None),
    )
    spec = NetSpec(3, 17, 23, blocks, "flatten", 5, "blocks.1.conv", None, 0)
    model, x = build(spec)
    assert model(x).shape == (3, 5)
    names = dict(model.named_modules())
    assert all(name in names for name in layer_names(blocks))


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(spec=net_specs())
@example(
    spec=NetSpec(
        in_ch=3,
        height=17,
        width=23,
        blocks=(
            BlockSpec(6, 3, "module_inplace", None, None),
            BlockSpec(6, 5, "relu_", "iadd", "max"),
            BlockSpec(6, 1, "F.relu_inplace", "add", None),
        ),
        head="gap",
        classes=4,
        layer="blocks.1.conv",  # its output is modified in place by `out += x` and relu_
        targets=(0, 3, 1),
        seed=1,
    )
)
@example(
    spec=NetSpec(
        in_ch=1,
        height=9,
        width=14,
        blocks=(
            BlockSpec(5, 3, "module_inplace", None, "avg"),
            BlockSpec(5, 3, "F.relu", "iadd", None),
        ),
        head="flatten",
        classes=3,
        layer="blocks.0.act",  # an in-place nn.ReLU
        targets=None,
        seed=2,
    )
)
def test_random_net_matches_captum(spec: NetSpec):
    model, x = build(spec)
    before = ModelState.of(model)
    hooks = count_hooks(model)

    explainer = camlib.GradCAM(model, spec.layer)
    raw = explainer(
        x, None if spec.targets is None else list(spec.targets), upsample=False, normalize=False
    )
    assert count_hooks(model) == hooks
    with torch.no_grad():
        logits = model(x)
    classes = logits.argmax(1) if spec.targets is None else torch.tensor(spec.targets)
    assert torch.equal(explainer.classes, classes)
    layer = camlib.resolve_layer(model, spec.layer)

    ref, scale = captum_reference(model, layer, x, classes)
    assert_raw_close(raw, ref, scale)

    default = explainer(x, None if spec.targets is None else list(spec.targets))
    assert default.shape == (3, spec.height, spec.width)
    assert_default_close(default, ref, scale)
    assert count_hooks(model) == hooks

    # The negated score explains ReLU(-sum_k alpha_k A^k): the other half of the same map.
    def negated(output: torch.Tensor) -> torch.Tensor:
        return -output.gather(1, classes[:, None]).squeeze(1)

    raw_neg = explainer(x, negated, upsample=False, normalize=False)
    assert explainer.classes is None
    ref_neg, scale_neg = captum_reference(lambda inp: -model(inp), layer, x, classes)
    assert_raw_close(raw_neg, ref_neg, scale_neg)
    # A net whose narrow ReLUs are all dead upstream of the scores tests nothing: discard it
    # (hypothesis fails the test if that happens too often).
    assume(bool((ref + ref_neg).max() > 0))

    before.assert_unchanged(model)
