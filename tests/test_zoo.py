"""A fast slice of the model-zoo sweep (benchmarks/zoo.py, issue 17).

Every model is explained with ``camlib.GradCAM(model)`` and nothing else, then checked with
the sweep's own references, which share no code with camlib's layouts: Grad-CAM by hand at
the layer camlib reports (our hook, ``torch.autograd.grad``, our weighted sum; equal to
``zoo.RTOL`` of the map's peak) and the quadrant layout probe. Models: timm's ``test_*``
models, small transformers configs, one torchvision video model and one MONAI 3-D net, all
with random weights. A zoo whose package is absent is skipped.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load_zoo():
    spec = importlib.util.spec_from_file_location(
        "camlib_bench_zoo", ROOT / "benchmarks" / "zoo.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


zoo = _load_zoo()


def _check(case) -> None:
    row = zoo.check_model(case, methods="gradcam", timing=False)
    assert row.outcome == "ok", f"{case.name}: {row.outcome} at {row.layer!r}: {row.reason}"


TIMM_TEST_MODELS = [
    "test_byobnet",
    "test_convnext",
    "test_efficientnet",
    "test_mambaout",
    "test_maxvit",
    "test_nfnet",
    "test_resnet",
    "test_vit",
    "test_vit_relpos",
]


@pytest.mark.parametrize("name", TIMM_TEST_MODELS)
def test_timm_test_models(name):
    timm = pytest.importorskip("timm")
    if name not in timm.list_models("test_*"):
        pytest.skip(f"timm {timm.__version__} has no {name}")
    _check(zoo.Case("timm", "test", name, lambda: timm.create_model(name), (3, 160, 160)))


@pytest.mark.parametrize(
    "model_type", ["vit", "swin", "resnet", "segformer", "efficientnet", "levit", "mobilevit"]
)
def test_transformers_small_configs(model_type):
    pytest.importorskip("transformers")
    case = next(c for c in zoo.hf_cases() if c.name == f"hf-{model_type}")
    _check(case)


def test_transformers_vit_reads_logits_and_picks_the_last_block_norm():
    """HF models return an output object with .logits: camlib reads it, and 'auto' takes
    the last block's first norm (the patch tokens after it get no gradient)."""
    pytest.importorskip("transformers")
    import camlib

    case = next(c for c in zoo.hf_cases() if c.name == "hf-vit")
    model = zoo.prepare(case.build())
    x = torch.randn(2, *case.input_shape)
    explainer = camlib.GradCAM(model)
    maps = explainer(x)
    assert maps.shape == (2, *case.input_shape[1:])
    assert explainer.layer_name.endswith("layers.2.layernorm_before")
    assert torch.equal(explainer.classes, model(x).logits.argmax(1))


def test_segformer_semantic_segmentation_target():
    pytest.importorskip("transformers")
    case = next(c for c in zoo.hf_cases() if c.name == "hf-segformer-semantic")
    _check(case)


def test_video_r3d_18_small_input():
    import torchvision

    _check(
        zoo.Case(
            "video",
            "torchvision.video",
            "r3d_18",
            lambda: torchvision.models.video.r3d_18(weights=None, num_classes=5),
            (3, 4, 64, 64),
        )
    )


def test_monai_densenet_equals_monai_gradcam():
    pytest.importorskip("monai")
    from monai.networks import nets

    notes: dict = {}
    case = zoo.Case(
        "monai",
        "nets",
        "DenseNet-small",
        lambda: nets.DenseNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=3,
            init_features=8,
            growth_rate=8,
            block_config=(2, 2, 2),
        ),
        (1, 64, 64, 64),
    )
    row = zoo.check_model(case, methods="gradcam", timing=False)
    assert row.outcome == "ok", row.reason
    model = zoo.prepare(case.build())
    x = torch.randn(1, *case.input_shape)
    monai_reference = next(c for c in zoo.monai_cases() if c.name == "DenseNet121").extra
    monai_reference(model, x, notes)
    assert "wrong" not in notes and "equals monai" in notes["note"], notes


class _Flip(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1)


def _probe_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        _Flip(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 3),
    ).eval()


def test_layout_probe_passes_a_true_layout_and_fails_a_mirrored_one():
    """The probe can fail: read as NCHW, the mirrored map puts every left-half change on
    the right, so the mirrored assignment of quadrants wins."""
    model, x = _probe_net(), torch.randn(1, 3, 32, 32)
    layout = ("channels_first", 0, ())
    ref_conv = type("Ref", (), {"module": model[0], "call": 0})()
    ref_flip = type("Ref", (), {"module": model[1], "call": 0})()
    ok, note = zoo.layout_probe(model, ref_conv, x, layout)
    assert ok is True, note
    ok, note = zoo.layout_probe(model, ref_flip, x, layout)
    assert ok is False and "(1, 0, 3, 2)" in note, note


def test_layout_probe_reports_a_vanished_signal():
    """A layer whose output does not change (here: all weights 0) is not a pass."""
    model, x = _probe_net(), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model[0].weight.zero_()
    ref = type("Ref", (), {"module": model[0], "call": 0})()
    ok, note = zoo.layout_probe(model, ref, x, ("channels_first", 0, ()))
    assert ok is False and "vanished" in note, note


def test_levit_locality_biases_follow_distance():
    """Every LeViT attention bias is -5 x the query-key distance (row-major points)."""
    pytest.importorskip("transformers")
    case = next(c for c in zoo.hf_cases() if c.name == "hf-levit")
    model = case.build()
    attn = next(m for m in model.modules() if type(m).__name__ == "LevitAttention")
    biases = attn.attention_biases[:, attn.attention_bias_idxs]
    side = int(attn.attention_bias_idxs.shape[0] ** 0.5)
    # query 0 is point (0, 0); key side + 1 is point (1, 1): distance sqrt(2)
    assert torch.allclose(biases[:, 0, side + 1], torch.tensor(-5 * 2**0.5))
    assert torch.allclose(biases[:, 0, 0], torch.tensor(0.0))
