"""RefineCAM: multi-layer refinement by product ("How to Evaluate and Refine your CAM",
arXiv:2605.14641; pytorch-grad-cam's and torchcam's ``RefineCAM``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..base import MethodError, register
from ..layers import LayerSpec
from ..maps import normalize_minmax, upsample
from ..targets import Targets
from .wrapped import WrappedCAM


@register("refinecam", "refine-cam")
class RefineCAM(WrappedCAM):
    r"""RefineCAM: the product of a base method's normalised maps over several layers.

    .. math:: L = \mathrm{minmax}\Big(\prod_{l} \mathrm{minmax}\big(\mathrm{up}(L_l)\big)\Big)

    with :math:`L_l` the base method's raw map at layer l (``method=``, default Grad-CAM++,
    as both peers), ``up`` bilinear to the input size (``align_corners=False``) and
    minmax the per-image scaling to [0, 1] (a constant map becomes 0). A position survives
    only where every layer marks it, which removes the noise of early layers. With one
    layer it is the base method. Costs what the base method costs for all the layers at
    once (one forward and one backward for the gradient methods).

    pytorch-grad-cam 1.5.7 computes this formula (its per-layer maps are min-max scaled at
    the layer's size, resized, then scaled again, which equals ``minmax(up(.))``, since
    bilinear resizing commutes with affine maps), with 1e-7 in its divisions. torchcam
    0.5 min-max scales at the layer's size and resizes after, without scaling again, to the
    largest layer's size by default: its factors need not span [0, 1].

    Args:
        method: the base method (default ``"gradcam++"``).
        fuse: not accepted (the layers are multiplied): any value raises
            :class:`~camlib.errors.MethodError` rather than being ignored.
        **options: the base method's options.
    """

    default_method = "gradcam++"

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec | Sequence[LayerSpec] = "auto",
        *,
        fuse: str | None = None,
        **options,
    ) -> None:
        if fuse is not None:
            raise MethodError(
                f"RefineCAM combines its layers by the product of their normalised maps (its "
                f"definition); fuse={fuse!r} does not apply. Leave fuse out, or use "
                f"{self.default_method!r} with target_layer=[...] and fuse= for a mean or max"
            )
        super().__init__(model, target_layer, **options)

    def attribute(self, inputs: torch.Tensor, targets: Targets) -> list[torch.Tensor]:
        raw = self.base_attribute(inputs, targets)
        return raw if isinstance(raw, list) else [raw]

    def postprocess(
        self,
        raws: list[torch.Tensor],
        size: tuple[int, ...],
        do_upsample: bool,
        do_normalize: bool,
    ) -> torch.Tensor:
        raws = [r if r.dtype == torch.float64 else r.float() for r in raws]
        if len(raws) == 1:
            return super().postprocess(raws, size, do_upsample, do_normalize)
        product = normalize_minmax(upsample(raws[0], size))
        for r in raws[1:]:
            product = product * normalize_minmax(upsample(r, size))
        return normalize_minmax(product) if do_normalize else product
