"""Threads sharing one model, reduced precision, non-finite inputs, extra forward arguments.

References: the maps of sequential calls (threads must reproduce them exactly); float32
maps (autocast and half/bfloat16 models must come close); a model whose extra argument is
fixed by a wrapper (``additional_forward_args`` must give its maps).
"""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import camlib

from conftest import FAST_OPTIONS, METHOD_NAMES, SmallConvNet, count_hooks, left_alone

THREADS = 8
METHODS = ["gradcam", "scorecam", "ablationcam", "guided_gradcam", "cam"]


def model3() -> SmallConvNet:
    torch.manual_seed(0)
    return SmallConvNet(3).eval()


def batches(k: int = THREADS, n: int = 2, size: int = 16) -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(n, 3, size, size) for _ in range(k)]


def options(method: str) -> dict:
    """Small batches for the perturbation methods (several forward passes per call); fewer
    samples (FAST_OPTIONS) and 3 SESS scales: these tests compare camlib with camlib."""
    if method in ("scorecam", "ablationcam"):
        return {"batch_size": 8}
    if method == "sess":
        return {"num_scales": 3, "batch_size": 8}
    return dict(FAST_OPTIONS.get(method, {}))


def run_threads(work) -> list:
    """Run ``work(i)`` on THREADS threads started together; re-raise the first error."""
    results: list = [None] * THREADS
    errors: list = []
    barrier = threading.Barrier(THREADS)

    def target(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("method", METHODS)
def test_threads_with_their_own_explainers_match_sequential_calls(method):
    model, xs = model3(), batches()
    cls = camlib.METHODS[method]
    sequential = []
    for x in xs:
        with cls(model, "relu3", **options(method)) as ex:
            sequential.append((ex(x), ex.classes, ex.scores))
    with left_alone(model):
        for _ in range(2):

            def work(i: int):
                with cls(model, "relu3", **options(method)) as ex:
                    return ex(xs[i]), ex.classes, ex.scores

            got = run_threads(work)
            for (maps, classes, scores), (m, c, s) in zip(sequential, got, strict=True):
                assert torch.equal(maps, m)
                assert torch.equal(classes, c) and torch.equal(scores, s)
    assert count_hooks(model) == 0


def test_threads_calling_explain_and_auto_layer_match_sequential_calls():
    model, xs = model3(), batches()
    sequential = [camlib.explain(model, x, "gradcam++") for x in xs]
    with left_alone(model):
        got = run_threads(lambda i: camlib.explain(model, xs[i], "gradcam++"))
    for want, maps in zip(sequential, got, strict=True):
        assert torch.equal(want, maps)
    assert count_hooks(model) == 0


def test_one_explainer_shared_by_threads_serialises_its_calls():
    model, xs = model3(), batches()
    ex = camlib.LayerCAM(model, "relu3")
    sequential = [ex(x) for x in xs]
    with left_alone(model):
        got = run_threads(lambda i: ex(xs[i]))
    for want, maps in zip(sequential, got, strict=True):
        assert torch.equal(want, maps)


# -- precision -----------------------------------------------------------------------------------
def _agree(maps: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    """float32 maps within ``tol`` of the float32 model's everywhere, and correlated. Guided
    maps get twice the tolerance: a ReLU whose input rounds across 0 flips its gate."""
    assert maps.dtype == torch.float32 and maps.shape == want.shape
    assert (maps - want).abs().max() < tol
    corr = torch.corrcoef(torch.stack([maps.flatten(), want.flatten()]))[0, 1]
    assert corr > 0.97


PRECISION_METHODS = ["gradcam", "cam", "scorecam", "eigencam", "layercam", "guided_backprop"]


@pytest.mark.parametrize("method", PRECISION_METHODS)
def test_autocast_bfloat16_gives_float32_maps_close_to_float32(method):
    model, x = model3(), batches(1, n=2, size=24)[0]
    cls = camlib.METHODS[method]
    make = (
        (lambda: cls(model))
        if method == "guided_backprop"
        else (lambda: cls(model, "relu3", **options(method)))
    )
    want = make()(x, targets=[1, 2])
    with left_alone(model), torch.autocast("cpu", dtype=torch.bfloat16):
        got = make()(x, targets=[1, 2])
    _agree(got, want, 0.3 if method == "guided_backprop" else 0.15)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", PRECISION_METHODS)
def test_half_models_give_float32_maps_close_to_float32(method, dtype):
    model, x = model3(), batches(1, n=2, size=24)[0]
    cls = camlib.METHODS[method]
    layer = {} if method == "guided_backprop" else {"target_layer": "relu3"}
    want = cls(model, **layer, **options(method))(x, targets=[1, 2])
    low = model3().to(dtype)
    with left_alone(low):
        got = cls(low, **layer, **options(method))(x.to(dtype), targets=[1, 2])
    tol = 0.15 if dtype == torch.bfloat16 else 0.02
    _agree(got, want, 2 * tol if method == "guided_backprop" else tol)


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["gradcam", "scorecam", "guided_backprop"])
def test_non_finite_inputs_raise_input_error_with_the_count(method):
    model, x = model3(), batches(1)[0]
    x[0, 0, 0, 0] = float("nan")
    x[1, 2, 3, 4] = float("inf")
    x[1, 1, 5, 5] = float("-inf")
    ex = (
        camlib.METHODS[method](model)
        if method == "guided_backprop"
        else (camlib.METHODS[method](model, "relu3"))
    )
    with left_alone(model), pytest.raises(camlib.InputError, match="3 non-finite") as info:
        ex(x)
    assert f"out of {x.numel()}" in str(info.value)
    assert ex.classes is None and ex.scores is None


# -- additional_forward_args ------------------------------------------------------------------
class ScaledNet(SmallConvNet):
    """forward(x, scale): the logits times a per-image (N, 1) or scalar scale."""

    def forward(self, x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x) * scale


class Fixed(nn.Module):
    """The same network with its scale fixed: the reference."""

    def __init__(self, net: ScaledNet, scale: torch.Tensor | float) -> None:
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, self.scale)


@pytest.mark.parametrize("method", [m for m in METHOD_NAMES if m != "cam"])
def test_additional_forward_args_reach_the_model_and_only_x_is_explained(method):
    """Every method: the per-image argument follows its image into every forward pass
    (Score-CAM's and SS-CAM's rows, SESS's windows, Smooth Grad-CAM++'s noisy copies).
    CAM is left out: scaling the logits by the argument makes the head something other than
    fc(global_avg_pool(A)), which CAM refuses (test_cam.py)."""
    torch.manual_seed(0)
    model = ScaledNet(3).eval()
    x = batches(1, n=3)[0]
    scale = torch.tensor([[2.0], [-1.0], [0.5]])  # per image: rows follow the batch
    cls = camlib.METHODS[method]
    layer = {"target_layer": "auto"} if cls.uses_layer else {}
    named = {k: "net.relu3" for k in layer}
    # reference: each image alone, through a wrapper that fixes its own scale; a method whose
    # maps depend on the whole batch (DFF): the batch through a wrapper that fixes every scale
    if getattr(cls, "batch_independent", True):
        want, want_scores = [], []
        for n in range(3):
            with cls(Fixed(model, scale[n]).eval(), **named, **options(method)) as ref:
                want.append(ref(x[n : n + 1], n + 1, upsample=False, normalize=False))
                want_scores.append(ref.scores)
        want, want_scores = torch.cat(want), torch.cat(want_scores)
    else:
        with cls(Fixed(model, scale).eval(), **named, **options(method)) as ref:
            want = ref(x, [1, 2, 3], upsample=False, normalize=False)
            want_scores = ref.scores
    with left_alone(model), cls(model, **layer, **options(method)) as ex:
        got = ex(x, [1, 2, 3], upsample=False, normalize=False, additional_forward_args=(scale,))
        if layer:
            assert ex.layer_name == "relu3"
        torch.testing.assert_close(ex.scores, want_scores)
    if getattr(cls, "returns", None) == "concepts":  # (N, K, h, w) concept maps
        assert got.shape[:2] == (3, 5) and got.dim() == 4
    else:
        assert got.shape[0] == 3 and (got.shape[1:] == x.shape[1:] or got.dim() == 3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))
    assert want.abs().max() > 0
    # a single non-tuple argument and camlib.explain
    maps = camlib.explain(
        model, x, method, targets=[1, 2, 3], additional_forward_args=scale, **options(method)
    )
    assert maps.shape[0] == 3
