"""FullGrad (Srinivas & Fleuret, 2019, "Full-Gradient Representation for Neural Network
Visualization")."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..base import Explainer, LayerError, _as_args, register
from ..inputs import check_inputs
from ..layers import LayerSpec
from ..maps import normalize_minmax, upsample
from ..targets import Targets, check_targets
from .families import work

_CONV = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def effective_bias(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor | None:
    r"""The bias a layer adds to each channel of its output, detached (``None``: none).

    Convolutions and ``nn.Linear``: ``bias``. Batch norm, :math:`\gamma (x - \mu) / \sqrt{
    \sigma^2 + \epsilon} + \beta`, adds :math:`\beta - \gamma\mu/\sqrt{\sigma^2 + \epsilon}`,
    with the running statistics in eval mode and, when the layer normalises with the
    batch's own statistics (training mode, or no running statistics), those of
    ``inputs`` (biased variance, as batch norm uses).
    """
    if isinstance(module, _NORM):
        if module.training or module.running_mean is None:
            dims = [d for d in range(inputs.dim()) if d != 1]
            var, mean = torch.var_mean(inputs.detach(), dim=dims, correction=0)
        else:
            mean, var = module.running_mean, module.running_var
        bias = -mean / torch.sqrt(var + module.eps)
        if module.weight is not None:
            bias = bias * module.weight
        if module.bias is not None:
            bias = bias + module.bias
        return bias.detach()
    bias = getattr(module, "bias", None)
    return None if bias is None else bias.detach()


@dataclass
class BiasTerm:
    r"""One biased layer call's share of the score: :math:`b \odot \partial y/\partial z`."""

    name: str
    """The layer's dotted name (a layer that runs twice gives two terms)."""
    term: torch.Tensor
    """The layer's output shape: the bias times the gradient of the score w.r.t. the
    output, broadcast along the channel axis (dim 1; the last dim for ``nn.Linear``)."""
    spatial: bool
    """Whether it enters the saliency map: a convolution or batch norm whose output
    (N, C, *grid) has the input's rank."""


@dataclass
class FullGradients:
    r"""The full-gradient decomposition of a batch of scores (Srinivas & Fleuret, Eq. 2):

    .. math:: y = \sum \nabla_x y \odot x + \sum_{\text{layers}} \sum b \odot
              \frac{\partial y}{\partial z}

    exactly, for networks of linear layers, eval-mode batch norm, ReLU and pooling
    (their biases are the only ones); smooth activations and input-dependent
    normalisation add implicit biases that are not counted.
    """

    input_term: torch.Tensor
    """(N, C, *size): the input times the score's gradient w.r.t. it."""
    bias_terms: list[BiasTerm]
    scores: torch.Tensor
    """(N,) the scores decomposed."""

    def total(self) -> torch.Tensor:
        """(N,) the sum of every term (equal to ``scores`` where the decomposition is
        complete)."""
        out = self.input_term.flatten(1).sum(1)
        for t in self.bias_terms:
            out = out + t.term.flatten(1).sum(1)
        return out


class _BiasHooks:
    """Forward hooks on every biased layer, this thread only, removed by :meth:`remove`.

    Each call records the layer's output (handing on a clone, so a later in-place op such
    as ``ReLU(inplace=True)`` or ``out += identity`` cannot change the tensor whose
    gradient is taken) and its effective bias.
    """

    def __init__(self, model: nn.Module) -> None:
        self.owner = threading.get_ident()
        self.calls: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []
        self.handles = []
        try:
            for name, module in model.named_modules():
                if isinstance(module, (*_CONV, nn.Linear)) and module.bias is None:
                    continue
                if isinstance(module, (*_CONV, nn.Linear, *_NORM)):
                    self.handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.remove()
            raise

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> object:
            if threading.get_ident() != self.owner or not isinstance(output, torch.Tensor):
                return None
            if not output.requires_grad:
                return None
            bias = effective_bias(module, args[0] if args else output)
            if bias is None:
                return None
            self.calls.append((name, module, output, bias))
            return output.clone()

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _psi_sum(term: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_c \mathrm{rescale}(|t_c|)`: each (image, channel) map of |term| min-max
    scaled to [0, 1] (a constant map becomes 0), summed over channels."""
    flat = term.abs().flatten(0, 1)  # (N*C, *grid)
    return normalize_minmax(flat).view(term.shape).sum(1)


@register("fullgrad", "full-grad")
class FullGrad(Explainer):
    r"""FullGrad: the input-gradient and every layer's bias-gradient, post-processed and
    summed.

    .. math:: S(x) = \sum_c \psi\big((\nabla_x y \odot x)_c\big)
              + \sum_{l} \sum_{c \in l} \psi\Big(\big(b_l \odot
              \tfrac{\partial y}{\partial z_l}\big)_c\Big),
              \qquad \psi(m) = \mathrm{up}\big(\mathrm{rescale}(|m|)\big)

    (Srinivas & Fleuret, NeurIPS 2019, Eq. 7): :math:`z_l` is a biased layer's output and
    :math:`b_l` its bias, ``rescale`` maps each (image, channel) map to [0, 1] (min-max;
    a constant map becomes 0, no epsilon), ``up`` is bilinear to the input size
    (``align_corners=False``). Biased layers: every convolution (1-D/2-D/3-D, transposed
    too) with a bias and every batch norm (its effective bias
    :math:`\beta - \gamma\mu/\sqrt{\sigma^2+\epsilon}`, see :func:`effective_bias`) whose
    output has the input's rank; ``nn.Linear`` biases after global pooling give constant
    maps that rescale to 0, so they count only in :meth:`decompose`. Other normalisations
    (LayerNorm, GroupNorm) are not biased layers here: their shift depends on the input.
    The channel sum is taken before upsampling (exact: bilinear interpolation is linear).

    Takes no target layer; returns (N, *size) heatmaps in [0, 1]. Costs one forward pass
    with a graph from the input and one backward pass to the input and every biased
    layer (about Guided Backprop's cost), plus one (N, C, *grid) rescale per layer.
    pytorch-grad-cam's ``FullGrad`` computes the same with 1e-7 added to each rescale's
    span and only ``Conv2d``/``BatchNorm2d`` layers (running statistics always); the
    authors' code rescales each layer's channels jointly and upsamples with
    ``align_corners=True``.
    """

    uses_layer = False
    graph = "from_input"
    nondifferentiable_reason = (
        "its per-channel min-max rescaling of absolute values is piecewise and its layer "
        "gradients are taken without create_graph"
    )

    def __init__(self, model: nn.Module, target_layer: LayerSpec = None, **options) -> None:
        if target_layer is not None and target_layer != "auto":
            raise LayerError(
                "FullGrad explains the input from every biased layer and takes no target_layer"
            )
        super().__init__(model, None, **options)

    def decompose(
        self, inputs: torch.Tensor, targets: Targets = None, *, additional_forward_args: Any = None
    ) -> FullGradients:
        """The full-gradient decomposition of the scores of a batch (same arguments as a
        call): check completeness with ``parts.total()`` against ``parts.scores``."""
        with self._lock:
            self.classes = self.scores = None
            inputs = check_inputs(self.model, inputs, self._first_conv)
            targets = check_targets(targets, inputs.shape[0])
            self._forward_args = _as_args(additional_forward_args)
            try:
                with torch.inference_mode(False), torch.enable_grad():
                    return self._decompose(
                        inputs.clone() if inputs.is_inference() else inputs, targets
                    )
            finally:
                self._forward_args = ()

    def _decompose(self, inputs: torch.Tensor, targets: Targets) -> FullGradients:
        """:meth:`decompose` for a checked batch on the model's device."""
        hooks = _BiasHooks(self.model)
        try:
            cap = self.forward(inputs, targets, layers=[])
        finally:
            hooks.remove()
        scores = cap.scores
        if not scores.requires_grad:  # type: ignore[union-attr]
            self.gradient(scores, cap.inputs)  # type: ignore[arg-type]  # raises its clear error
        outputs = [out for _, _, out, _ in hooks.calls]
        grads = torch.autograd.grad(
            scores.sum(),  # type: ignore[union-attr]
            [cap.inputs, *outputs],
            allow_unused=True,
        )
        if grads[0] is None:
            raise LayerError("the target scores do not depend on the input")
        terms = []
        for (name, module, out, bias), g in zip(hooks.calls, grads[1:], strict=True):
            if g is None:  # this call's output does not reach the score
                continue
            if isinstance(module, nn.Linear):
                term = work(g) * work(bias)
            else:
                term = work(g) * work(bias).view(1, -1, *([1] * (g.dim() - 2)))
            spatial = not isinstance(module, nn.Linear) and out.dim() == inputs.dim()
            terms.append(BiasTerm(name, term, spatial))
        input_term = work(grads[0]) * work(cap.inputs.detach())
        return FullGradients(input_term, terms, scores.detach())  # type: ignore[union-attr]

    def attribute(self, inputs: torch.Tensor, targets: Targets) -> torch.Tensor:
        parts = self._decompose(inputs, targets)
        size = tuple(inputs.shape[2:])
        total = _psi_sum(parts.input_term)
        for t in parts.bias_terms:
            if t.spatial:
                total = total + upsample(_psi_sum(t.term), size)
        return total
