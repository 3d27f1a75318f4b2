"""Finer-CAM (Zhang et al., 2025, "Finer-CAM: Spotting the Difference Reveals Finer Details
for Visual Explanation")."""

from __future__ import annotations

import torch
from torch import nn

from ..base import MethodError, register
from ..errors import TargetError
from ..targets import Targets, class_logits, select_scores
from .families import GradientCAM
from .wrapped import WrappedCAM


@register("finercam", "finer-cam")
class FinerCAM(WrappedCAM):
    r"""Finer-CAM: a gradient method's map of the target's score minus its closest rivals'.

    .. math:: \tilde y = y_c - \alpha \sum_{d \in D} \mathrm{softmax}_{D}(y)_d\, y_d

    with :math:`D` the ``references`` classes whose logits are closest to :math:`y_c`
    (:math:`|y_d - y_c|` smallest, c excluded) and the weights the softmax of their logits
    over :math:`D` (they sum to 1, so no denominator can vanish). The base gradient method
    (``method=``, default Grad-CAM) then explains :math:`\tilde y` instead of
    :math:`y_c`, gradient of the weights included. This is pytorch-grad-cam's definition
    (``FinerWeightedTarget``: :math:`\sum_d p_d (y_c - \alpha y_d) / (\sum_d p_d + 10^{-9})`
    with :math:`p` the softmax over all classes, which is the formula above up to its
    1e-9), with its defaults ``alpha=1`` and 3 references. torchcam's ``FinerCAM``
    subtracts the *plain mean* of the references' logits times ``gamma=0.6`` instead.

    The classes c are the targets (the top class by default) and D is chosen on the same
    forward pass, so a call costs what the base method costs. Class targets only; heads
    with at least two logits. ``classes``/``scores`` report c and :math:`\tilde y`;
    ``references`` the (N, |D|) classes D.

    Args:
        method: the base gradient method (default ``"gradcam"``).
        alpha: the comparison strength :math:`\alpha` (default 1).
        references: how many closest classes (default 3; fewer if the head has fewer).
    """

    class_targets_only = True
    allowed = (GradientCAM,)

    def __init__(
        self,
        model: nn.Module,
        target_layer="auto",
        *,
        alpha: float = 1.0,
        references: int = 3,
        **options,
    ) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha != alpha:
            raise MethodError(f"FinerCAM: alpha must be a number, got {alpha!r}")
        if isinstance(references, bool) or not isinstance(references, int) or references < 1:
            raise MethodError(f"FinerCAM: references must be a positive int, got {references!r}")
        super().__init__(model, target_layer, **options)
        self.alpha, self.num_references = float(alpha), references
        self.references: torch.Tensor | None = None

    def attribute(
        self, inputs: torch.Tensor, targets: Targets
    ) -> torch.Tensor | list[torch.Tensor]:
        n, chosen = inputs.shape[0], {}

        def contrast(output: object) -> torch.Tensor:
            logits = class_logits(output, n)
            if logits.shape[1] < 2:
                raise TargetError(
                    "FinerCAM compares the target class with other classes; this head has a "
                    "single logit"
                )
            y, classes = select_scores(output, targets, n)  # type: ignore[arg-type]
            dist = (logits.detach() - y.detach()[:, None]).abs()
            dist.scatter_(1, classes[:, None], float("inf"))  # type: ignore[index]
            refs = dist.topk(
                min(self.num_references, logits.shape[1] - 1), 1, largest=False
            ).indices
            rivals = logits.gather(1, refs)
            chosen["classes"], chosen["refs"] = classes, refs
            return y - self.alpha * (torch.softmax(rivals, 1) * rivals).sum(1)

        self.references = None
        raw = self.base_attribute(inputs, contrast)
        self.classes, self.references = chosen["classes"], chosen["refs"]
        return raw
