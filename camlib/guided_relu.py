"""Guided gradients for *every* ReLU and ReLU6 a forward pass calls, modules and functional alike.

Guided backpropagation (Springenberg et al., 2015) changes the ReLU backward rule to

    dL/dx = max(dL/dy, 0) * [x > 0]

so only positive gradients at positive inputs flow back. ReLU6 (``min(max(x, 0), 6)``,
the activation of MobileNet and EfficientNet-Lite) and any ``hardtanh`` with a zero lower
bound get the same rule restricted to their linear range:

    dL/dx = max(dL/dy, 0) * [0 < x < max_val]

Peers do this with backward hooks on ``nn.ReLU`` modules, which silently misses ``F.relu``,
``torch.relu`` and ``Tensor.relu`` called inside ``forward`` (and ReLU6 altogether).
camlib instead intercepts the *calls* with a :class:`torch.overrides.TorchFunctionMode`
that lives only inside a ``with`` block: no module is replaced, nothing is monkey-patched,
and leaving the block (also by an exception) restores ordinary gradients.

Guided calls:

* ReLU: ``nn.ReLU`` (in-place or not), ``F.relu``, ``F.relu_``, ``torch.relu``,
  ``torch.relu_``, ``Tensor.relu``, ``Tensor.relu_``;
* ReLU6: ``nn.ReLU6`` (in-place or not; it calls ``F.hardtanh(x, 0.0, 6.0)``),
  ``F.relu6`` (in-place or not), ``nn.Hardtanh(0, m)``, ``F.hardtanh``/``F.hardtanh_`` with
  ``min_val == 0`` and ``max_val > 0`` (other bounds keep their ordinary gradient).

Other activations (GELU, SiLU, Hardswish, LeakyReLU, ...) keep their ordinary gradient, as
in Captum, and nothing fails. :attr:`GuideSwitch.recorded` counts the guided nodes a
forward pass recorded, so a caller can tell when nothing was guided, and
:func:`activation_types` names the activations a model uses for that message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


@dataclass
class GuideSwitch:
    """Whether activations recorded under :class:`GuidedReLUMode` backpropagate guided
    (``True``) or ordinary (``False``) gradients. Flip it between two backward passes over
    one graph to get both from a single forward pass (Guided Grad-CAM does).
    """

    guided: bool = True
    """The rule the recorded nodes use when the backward pass reaches them."""
    recorded: int = 0
    """How many guided nodes (ReLU or ReLU6 calls that need a gradient) were recorded under
    a mode using this switch. ``0`` after a forward pass means that nothing was guided: the
    "guided" gradient is the plain one."""


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
    """``max(grad, 0) * [0 < y < upper]`` when guided, else ``grad * [0 < y < upper]``;
    ``y`` is the output, which lies strictly inside (0, upper) exactly where the input does."""
    (y,) = ctx.saved_tensors
    if ctx.switch.guided:
        grad = grad.clamp_min(0)
    inside = y > 0
    if ctx.upper is not None:
        inside &= y < ctx.upper
    return grad * inside, None, None


class _Guided(torch.autograd.Function):
    """ReLU (``upper is None``) or ``clamp(x, 0, upper)`` with a switchable backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, switch: GuideSwitch, upper: float | None) -> torch.Tensor:  # type: ignore[override]
        y = torch.relu(x) if upper is None else torch.clamp(x, 0, upper)
        ctx.save_for_backward(y)
        ctx.switch, ctx.upper = switch, upper
        return y

    backward = staticmethod(_backward)  # type: ignore[assignment]


class _GuidedInplace(torch.autograd.Function):
    """The in-place twin of :class:`_Guided` (``nn.ReLU(inplace=True)``, ``relu_``, ...)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, switch: GuideSwitch, upper: float | None) -> torch.Tensor:  # type: ignore[override]
        if upper is None:
            x.relu_()
        else:
            x.clamp_(0, upper)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        ctx.switch, ctx.upper = switch, upper
        return x

    backward = staticmethod(_backward)  # type: ignore[assignment]


_RELU = {F.relu, torch.relu, torch.Tensor.relu}
_RELU_INPLACE = {F.relu_, torch.relu_, torch.Tensor.relu_}
_RELU6 = {F.relu6, torch._C._nn.relu6}
_RELU6_INPLACE = {torch._C._nn.relu6_}
_HARDTANH = {F.hardtanh, torch._C._nn.hardtanh}
_HARDTANH_INPLACE = {torch._C._nn.hardtanh_}  # F.hardtanh_ is this function


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _guided_call(func: Any, args: tuple, kwargs: dict) -> tuple[Any, bool, float | None] | None:
    """``(input, inplace, upper)`` when ``func(*args, **kwargs)`` is a call to guide, else None.

    ``upper`` is ``None`` for a ReLU and the upper bound for ReLU6 / hardtanh(0, upper)."""
    x = _arg(args, kwargs, 0, "input", None)
    if func in _RELU or func in _RELU_INPLACE:
        inplace = func in _RELU_INPLACE or bool(_arg(args, kwargs, 1, "inplace", False))
        return x, inplace, None
    if func in _RELU6 or func in _RELU6_INPLACE:
        inplace = func in _RELU6_INPLACE or bool(_arg(args, kwargs, 1, "inplace", False))
        return x, inplace, 6.0
    if func in _HARDTANH or func in _HARDTANH_INPLACE:
        low = _arg(args, kwargs, 1, "min_val", -1.0)
        high = _arg(args, kwargs, 2, "max_val", 1.0)
        if not (isinstance(low, (int, float)) and isinstance(high, (int, float))):
            return None
        if low != 0 or high <= 0:
            return None  # not a ReLU6-like clamp: ordinary gradient
        inplace = func in _HARDTANH_INPLACE or bool(_arg(args, kwargs, 3, "inplace", False))
        return x, inplace, float(high)
    return None


class GuidedReLUMode(TorchFunctionMode):
    """Inside ``with GuidedReLUMode(switch):`` every ReLU and ReLU6 call that needs a
    gradient records a guided node (and counts it in ``switch.recorded``)."""

    def __init__(self, switch: GuideSwitch | None = None) -> None:
        super().__init__()
        self.switch = switch if switch is not None else GuideSwitch()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        call = _guided_call(func, args, kwargs)
        if call is not None:
            x, inplace, upper = call
            if torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.requires_grad:
                fn = _GuidedInplace if inplace else _Guided
                y = fn.apply(x, self.switch, upper)
                self.switch.recorded += 1
                return y
        return func(*args, **kwargs)


_ACTIVATION_WORDS = ("relu", "elu", "gelu", "silu", "swish", "mish", "sigmoid", "tanh", "softplus")
_NOT_ACTIVATIONS = (nn.MultiheadAttention, nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d)


def activation_types(model: nn.Module) -> list[str]:
    """The class names of the activation modules in ``model``, in order of first appearance.

    Counted: every ``torch.nn`` activation module (``ReLU``, ``ReLU6``, ``GELU``, ``SiLU``,
    ``Hardswish``, ...; not attention or softmax), and leaf modules of other libraries whose
    class name names an activation (``Swish``, ``MemoryEfficientSwish``, ``QuickGELU``, ...).
    Activations called as functions inside ``forward`` (``F.gelu``) are not modules and are
    not listed.
    """
    names: list[str] = []
    for module in model.modules():
        cls = type(module)
        if isinstance(module, _NOT_ACTIVATIONS):
            continue
        if cls.__module__ == nn.modules.activation.__name__:
            is_activation = True
        else:
            lower = cls.__name__.lower()
            is_activation = not any(True for _ in module.children()) and any(
                word in lower for word in _ACTIVATION_WORDS
            )
        if is_activation and cls.__name__ not in names:
            names.append(cls.__name__)
    return names
