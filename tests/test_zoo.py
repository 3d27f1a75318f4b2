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


@pytest.mark.parametrize("model_type", ["vit", "swin", "resnet", "segformer"])
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
            (3, 4, 48, 48),
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
            block_config=(2, 2, 2, 2),
        ),
        (1, 32, 32, 32),
    )
    row = zoo.check_model(case, methods="gradcam", timing=False)
    assert row.outcome == "ok", row.reason
    model = zoo.prepare(case.build())
    x = torch.randn(1, *case.input_shape)
    monai_reference = next(c for c in zoo.monai_cases() if c.name == "DenseNet121").extra
    monai_reference(model, x, notes)
    assert "wrong" not in notes and "equals monai" in notes["note"], notes
