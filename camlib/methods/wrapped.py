"""A family for methods built around another registered method (Finer-CAM, RefineCAM, SESS).

The wrapped method is named by ``method=`` (any registered heatmap method that explains a
layer) and built with the same model, layers and options; the wrapper owns the call (input
checks, targets, post-processing) and drives the base explainer inside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..base import Explainer, MethodError, get_method
from ..errors import CamlibError
from ..layers import LayerSpec
from ..targets import Targets


class WrappedCAM(Explainer):
    """An explainer that runs a base method (``method=``) as part of its own computation.

    Args:
        method: the base method's registered name.
        **options: the base method's own options (``batch_size=``, ``fc_layer=``, ...);
            ``reshape_transform``, ``layout`` and ``fuse`` apply to both.
    """

    default_method: str = "gradcam"
    allowed: tuple[type[Explainer], ...] = (Explainer,)
    """Base classes the base method must derive from."""

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec | Sequence[LayerSpec] = "auto",
        *,
        method: str | None = None,
        reshape_transform=None,
        layout: str | None = None,
        fuse: str = "mean",
        **options,
    ) -> None:
        name = self.default_method if method is None else method
        cls = get_method(name)
        who = type(self).__name__
        if not cls.uses_layer or cls.signed:
            raise MethodError(
                f"{who} wraps a heatmap method that explains a layer; {cls.name!r} "
                f"{'returns signed input maps' if cls.signed else 'explains the input only'}"
            )
        if not issubclass(cls, self.allowed):
            kinds = ", ".join(k.__name__ for k in self.allowed)
            raise MethodError(f"{who} wraps {kinds} methods only; {cls.name!r} is not one")
        common = {"reshape_transform": reshape_transform, "layout": layout, "fuse": fuse}
        try:
            self.base: Explainer = cls(model, target_layer, **common, **options)
        except CamlibError:  # the base's own checks (an InputError is also a TypeError)
            raise
        except TypeError as error:  # an option the base method does not take
            raise MethodError(f"{who}(method={cls.name!r}): {error}") from None
        super().__init__(model, target_layer, **common)
        self.graph = cls.graph  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, method={self.base.name!r})"

    def base_attribute(
        self, inputs: torch.Tensor, targets: Targets
    ) -> torch.Tensor | list[torch.Tensor]:
        """The base method's raw maps for this call's (resolved) layers and forward args."""
        base = self.base
        base.layers, base._forward_args = self.layers, self._forward_args
        try:
            raw = base.attribute(inputs, targets)
        finally:
            base._forward_args = ()
        self.classes, self.scores = base.classes, base.scores
        return raw
