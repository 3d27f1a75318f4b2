"""Guided ReLU gradients for *every* ReLU a forward pass calls, modules and functional alike.

Guided backpropagation (Springenberg et al., 2015) changes the ReLU backward rule to

    dL/dx = max(dL/dy, 0) * [x > 0]

so only positive gradients at positive inputs flow back. Peers do this with backward
hooks on ``nn.ReLU`` modules, which silently misses ``F.relu``, ``torch.relu`` and
``Tensor.relu`` called inside ``forward``. camlib instead intercepts the ReLU *calls*
with a :class:`torch.overrides.TorchFunctionMode` that lives only inside a ``with``
block: no module is replaced, nothing is monkey-patched, and leaving the block (also
by an exception) restores ordinary ReLU gradients.

Only these calls are guided: ``nn.ReLU`` (in-place or not), ``F.relu``, ``F.relu_``,
``torch.relu``, ``torch.relu_``, ``Tensor.relu`` and ``Tensor.relu_``. Other
activations (GELU, SiLU, Hardswish, LeakyReLU, ReLU6, ...) keep their ordinary
gradient, as in Captum, and nothing fails.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


@dataclass
class GuideSwitch:
    """Whether ReLUs recorded under :class:`GuidedReLUMode` backpropagate guided (``True``)
    or ordinary (``False``) gradients. Flip it between two backward passes over one graph
    to get both from a single forward pass (Guided Grad-CAM does)."""

    guided: bool = True


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, switch: GuideSwitch) -> torch.Tensor:  # type: ignore[override]
        y = torch.relu(x)
        ctx.save_for_backward(y)
        ctx.switch = switch
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (y,) = ctx.saved_tensors
        if ctx.switch.guided:
            grad = grad.clamp_min(0)
        return grad * (y > 0), None


class _GuidedReLUInplace(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, switch: GuideSwitch) -> torch.Tensor:  # type: ignore[override]
        x.relu_()
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)  # y > 0 exactly where x > 0
        ctx.switch = switch
        return x

    backward = _GuidedReLU.backward


_OUT_OF_PLACE = {F.relu, torch.relu, torch.Tensor.relu}
_IN_PLACE = {F.relu_, torch.relu_, torch.Tensor.relu_}


class GuidedReLUMode(TorchFunctionMode):
    """Inside ``with GuidedReLUMode(switch):`` every ReLU call records a guided ReLU node."""

    def __init__(self, switch: GuideSwitch | None = None) -> None:
        super().__init__()
        self.switch = switch if switch is not None else GuideSwitch()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _OUT_OF_PLACE or func in _IN_PLACE:
            x = args[0] if args else kwargs["input"]
            inplace = func in _IN_PLACE or bool(
                kwargs.get("inplace", args[1] if len(args) > 1 else False)
            )
            if torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.requires_grad:
                fn = _GuidedReLUInplace if inplace else _GuidedReLU
                return fn.apply(x, self.switch)
        return func(*args, **kwargs)
