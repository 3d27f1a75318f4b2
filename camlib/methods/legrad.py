"""LeGrad (Bousselham et al., 2024, "LeGrad: An Explainability Method for Vision Transformers
via Feature Formation Sensitivity")."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..base import Explainer, MethodError, register
from ..errors import LayerError
from ..layers import LayerRef, LayerSpec
from ..targets import Targets, class_logits, class_scores
from .families import work

_MHA = inspect.signature(F.multi_head_attention_forward)


def _attention_of(block: nn.Module, name: str) -> nn.MultiheadAttention:
    found = [m for m in block.modules() if isinstance(m, nn.MultiheadAttention)]
    if len(found) != 1:
        raise LayerError(
            f"LeGrad explains transformer blocks that contain one nn.MultiheadAttention; "
            f"layer {name!r} ({type(block).__name__}) contains {len(found)}"
        )
    mha = found[0]
    if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
        raise LayerError(
            f"LeGrad: the attention of layer {name!r} uses separate key/value sizes, bias_k/"
            f"bias_v or add_zero_attn, which camlib does not recompute"
        )
    return mha


class AttentionProbe(TorchFunctionMode):
    """While active, the given attention modules' ``F.multi_head_attention_forward`` calls
    are computed with explicit softmax probabilities, kept in ``probs`` (one
    (N, heads, L, S) tensor per module, a node of the autograd graph). Outputs equal the
    ordinary ones to rounding; other calls pass through. Nothing is patched: leaving the
    ``with`` block (also by an exception) ends it."""

    def __init__(self, modules: Sequence[nn.MultiheadAttention]) -> None:
        super().__init__()
        self.slots = {id(m.in_proj_weight): i for i, m in enumerate(modules)}
        self.probs: list[torch.Tensor | None] = [None] * len(modules)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.multi_head_attention_forward:
            bound = _MHA.bind(*args, **kwargs)
            bound.apply_defaults()
            slot = self.slots.get(id(bound.arguments["in_proj_weight"]))
            if slot is not None:
                return self._explicit(slot, bound.arguments)
        return func(*args, **kwargs)

    def _explicit(self, slot: int, a: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if a["key_padding_mask"] is not None or a["attn_mask"] is not None or a["is_causal"]:
            raise LayerError("LeGrad does not recompute masked attention")
        if a["training"] and a["dropout_p"] > 0:
            raise LayerError(
                "LeGrad: attention dropout is active (the model is in training mode); call "
                "model.eval() first"
            )
        query, key, value, heads = a["query"], a["key"], a["value"], a["num_heads"]
        (tgt, n, e), src = query.shape, key.shape[0]
        d = e // heads
        w, b = a["in_proj_weight"], a["in_proj_bias"]
        bs = (None, None, None) if b is None else b.chunk(3)
        q, k, v = (
            F.linear(t, wi, bi)
            for t, wi, bi in zip((query, key, value), w.chunk(3), bs, strict=True)
        )
        q = q.reshape(tgt, n * heads, d).transpose(0, 1)
        k = k.reshape(src, n * heads, d).transpose(0, 1)
        v = v.reshape(src, n * heads, d).transpose(0, 1)
        scores = (q @ k.transpose(1, 2) / math.sqrt(d)).view(n, heads, tgt, src)
        self.probs[slot] = probs = torch.softmax(scores, dim=-1)  # the node gradients reach
        out = (probs.view(n * heads, tgt, src) @ v).transpose(0, 1).reshape(tgt * n, e)
        out = F.linear(out, a["out_proj_weight"], a["out_proj_bias"]).view(tgt, n, e)
        if not a["need_weights"]:
            return out, None
        return out, (probs.mean(1) if a["average_attn_weights"] else probs)


@register("legrad")
class LeGrad(Explainer):
    r"""LeGrad: positive gradients of every layer's class score w.r.t. its attention maps.

    .. math:: s^l = \mathrm{head}\big(\mathrm{norm}(\mathrm{pool}(Z^l))\big)_c, \quad
              E^l = \frac{1}{H\,T}\sum_{h=1}^{H}\sum_{i=1}^{T}
                    \mathrm{ReLU}\Big(\frac{\partial s^l}{\partial A^l_{h,i,:}}\Big), \quad
              L = \frac{1}{|\mathcal{L}|}\sum_{l \in \mathcal{L}} E^l_{\text{patches}}

    with :math:`Z^l` the output tokens of block l, :math:`A^l` its (N, H, T, T) attention
    probabilities, the mean over heads and over all T query rows (class token and patches,
    as the authors' code and torchcam), keys restricted to the patch tokens and laid out on
    the patch grid. ``pool="mean"`` averages the tokens (the authors' code, torchcam);
    ``pool="cls"`` reads the class token, as the classifier does. The class c is the
    target (top class by default), fixed on the model's output.

    Supports blocks built on ``nn.MultiheadAttention`` (torchvision's ViTs): the attention
    probabilities, which torchvision never materialises (``need_weights=False``), are
    recomputed explicitly inside the call by a scoped ``TorchFunctionMode``
    (:class:`AttentionProbe`); the model is not modified. ``target_layer="auto"`` takes
    every block (module with an ``nn.MultiheadAttention`` child). The score head defaults
    to torchvision's ``encoder.ln`` then ``heads``; pass ``head=`` (tokens (N, T, D) ->
    logits (N, K), pooling included) for other models. Class targets only.

    Cost: one forward (graph from the first block's input) and one backward per block.

    Args:
        head: maps a block's output tokens to class logits (default: torchvision ViT).
        pool: ``"mean"`` or ``"cls"``, for the default head.
    """

    class_targets_only = True
    needs_attention: ClassVar[bool] = True
    """LeGrad reads attention maps: it explains transformers, and refuses CNNs."""

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec | Sequence[LayerSpec] = "auto",
        *,
        head: Callable[[torch.Tensor], torch.Tensor] | None = None,
        pool: str = "mean",
        **options,
    ) -> None:
        if pool not in ("mean", "cls"):
            raise MethodError(f"LeGrad: pool must be 'mean' or 'cls', got {pool!r}")
        if head is not None and not callable(head):
            raise MethodError(f"LeGrad: head must be callable, got {type(head).__name__}")
        if target_layer is None or (isinstance(target_layer, str) and target_layer == "auto"):
            target_layer = [
                name
                for name, m in model.named_modules()
                if any(isinstance(c, nn.MultiheadAttention) for c in m.children())
            ]
            if not target_layer:
                raise LayerError(
                    f"LeGrad explains vision transformers; {type(model).__name__} has no "
                    f"nn.MultiheadAttention"
                )
        super().__init__(model, target_layer, **options)
        for ref in self.layers:
            if ref.input or ref.call is not None:
                raise LayerError(f"LeGrad takes whole blocks; got {ref.spec!r}")
        self.blocks: list[LayerRef] = self.layers
        """The blocks explained; ``layers`` holds the first (one map comes out)."""
        self.layers = self.blocks[:1]
        self.attentions = [_attention_of(ref.module, ref.spec) for ref in self.blocks]
        if head is None:
            encoder = getattr(model, "encoder", None)
            norm, heads = getattr(encoder, "ln", None), getattr(model, "heads", None)
            if not (isinstance(norm, nn.Module) and isinstance(heads, nn.Module)):
                raise LayerError(
                    f"LeGrad needs the classifier head to score each block: pass head=(tokens "
                    f"-> logits) for {type(model).__name__} (the default is torchvision's ViT "
                    f"encoder.ln + heads)"
                )

            def head(tokens: torch.Tensor) -> torch.Tensor:
                pooled = tokens.mean(1) if pool == "mean" else tokens[:, 0]
                return heads(norm(pooled))

        self.head, self.pool = head, pool

    def attribute(self, inputs: torch.Tensor, targets: Targets) -> torch.Tensor:
        first = self.blocks[0]
        entry = LayerRef(first.module, first.name, None, True)  # the graph starts here
        probe = AttentionProbe(self.attentions)
        with probe:
            cap = self.forward(inputs, targets, layers=[entry, *self.blocks])
        tokens = cap.activations[1:]
        missing = [r.spec for r, p in zip(self.blocks, probe.probs, strict=True) if p is None]
        if missing:
            raise LayerError(f"LeGrad: the attention of {missing} did not run")
        a = self.arrangement(0, tokens[0], inputs)
        if a.kind != "tokens":
            raise LayerError(
                f"LeGrad needs token outputs (N, T, D) with a patch grid; layer "
                f"{first.spec!r} reads as {a.kind}"
            )
        n, total = inputs.shape[0], None
        for i, (z, probs) in enumerate(zip(tokens, probe.probs, strict=True)):
            logits = class_logits(self.head(z), n)
            score = class_scores(logits, cap.classes)  # type: ignore[arg-type]
            (grad,) = torch.autograd.grad(
                score.sum(), probs, retain_graph=i < len(tokens) - 1, allow_unused=True
            )
            if grad is None:
                raise LayerError(
                    f"LeGrad: the score of {self.blocks[i].spec!r} ignores its attention"
                )
            relevance = work(grad).clamp_min(0).mean(dim=(1, 2))[:, a.prefix :]
            total = relevance if total is None else total + relevance
        return (total / len(tokens)).reshape(n, *a.grid)  # type: ignore[union-attr]
