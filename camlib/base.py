"""The one interface every method shares, the method registry, and :func:`explain`.

A method is a subclass of :class:`Explainer` that implements :meth:`Explainer.attribute`
(the raw maps for a batch) and registers itself with :func:`register`. Everything else -
input checks, layer resolution, the one forward pass with its hooks, the chosen classes
and scores, upsampling and normalisation - lives here and in the modules it calls.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from .capture import Capture, Graph, run_forward
from .errors import CamlibError, InputError, LayerError
from .guided_relu import GuideSwitch
from .layers import LayerSpec, find_target_layer, layer_name, resolve_layer
from .maps import normalize_minmax, upsample
from .targets import Targets, check_targets

logger = logging.getLogger("camlib")

METHODS: dict[str, type[Explainer]] = {}
"""Registered methods by name (``"cam"``, ``"gradcam"``, ...); see :func:`register`."""

E = TypeVar("E", bound="type[Explainer]")


def register(*names: str) -> Callable[[E], E]:
    """Class decorator: make a method available as ``camlib.explain(..., method=name)``."""

    def add(cls: E) -> E:
        for name in names:
            METHODS[name.lower()] = cls
        cls.name = names[0]
        return cls

    return add


def get_method(name: str) -> type[Explainer]:
    """The :class:`Explainer` subclass registered under ``name`` (case-insensitive)."""
    try:
        return METHODS[name.lower()]
    except KeyError:
        raise CamlibError(
            f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}"
        ) from None


class Explainer:
    """Base class of every camlib method.

    Use it as a context manager or as a plain callable::

        with camlib.GradCAM(model, target_layer="layer4") as cam:
            maps = cam(images)                 # (N, H, W) in [0, 1]
            maps = cam(images, targets=[3, 7])

    Hooks live only during a call; after it (and after the ``with`` block) the model has
    exactly the hooks, modules, mode, ``requires_grad`` flags and ``.grad`` it had before.

    Args:
        model: the network to explain. camlib never calls ``eval()`` on it; it warns if
            the model is in training mode.
        target_layer: a dotted name (``"layer4.1.conv2"``), a module of ``model``, or
            ``"auto"``/``None`` to pick the last spatial layer (see
            :func:`camlib.layers.find_target_layer`).
        reshape_transform: optional function mapping the layer's output (and its
            gradient) to (N, C, h, w), for layers that return tokens.

    Attributes:
        layer_name: dotted name of the layer being explained (set once it is known).
        target_layer: the module being explained.
        classes: (N,) classes explained by the last call (``None`` for a callable target).
        scores: (N,) model scores for those classes, detached.
    """

    name: ClassVar[str] = ""
    uses_layer: ClassVar[bool] = True
    """Whether the method explains an inner layer (CAM, Grad-CAM) or only the input."""

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec = "auto",
        *,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(model, torch.jit.ScriptModule):
            raise InputError(
                "TorchScript models are not supported: module hooks and ReLU interception do "
                "not run inside a scripted or traced graph, so the maps would be wrong. Pass "
                "the eager nn.Module instead."
            )
        self.model = model
        self.reshape_transform = reshape_transform
        self.target_layer: nn.Module | None = None
        self.layer_name: str | None = None
        self._auto_layers: dict[tuple[int, ...], str] = {}
        self._auto = self.uses_layer and (target_layer is None or target_layer == "auto")
        if self.uses_layer and not self._auto:
            self.target_layer = resolve_layer(model, target_layer)  # type: ignore[arg-type]
            self.layer_name = layer_name(model, self.target_layer)
        self.classes: torch.Tensor | None = None
        self.scores: torch.Tensor | None = None

    # -- context manager -------------------------------------------------------------
    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the last call's results. Hooks never outlive a call, so none remain."""
        self.classes = self.scores = None

    def __repr__(self) -> str:
        layer = f", target_layer={self.layer_name!r}" if self.uses_layer else ""
        return f"{type(self).__name__}({type(self.model).__name__}{layer})"

    # -- the call ----------------------------------------------------------------------
    def __call__(
        self,
        inputs: torch.Tensor,
        targets: Targets = None,
        *,
        upsample: bool = True,
        normalize: bool = True,
    ) -> torch.Tensor:
        """Explain a batch.

        Args:
            inputs: (N, C, H, W) images on any device (moved to the model's device).
            targets: ``None`` (top class), an int, N ints, or ``output -> (N,)`` scores.
            upsample: resize maps to (H, W) bilinearly (``align_corners=False``).
            normalize: scale each map to [0, 1] (signed methods: [-1, 1]).

        Returns:
            The maps, a tensor on the model's device.
        """
        inputs = self._check_inputs(inputs)
        targets = check_targets(targets, inputs.shape[0])
        if self.model.training:
            warnings.warn(
                f"{type(self.model).__name__} is in training mode: BatchNorm running statistics "
                "will be updated and dropout is active. Call model.eval() before explaining.",
                stacklevel=2,
            )
        # Gradients are needed whatever the caller's mode (torch.no_grad(), inference_mode);
        # the caller's mode is back on return, and the maps carry no autograd history.
        with torch.inference_mode(False), torch.enable_grad():
            if inputs.is_inference():  # made under torch.inference_mode(): copy out
                inputs = inputs.clone()
            if self._auto:
                self._pick_layer(inputs)
            raw = self.attribute(inputs, targets)
        with torch.no_grad():
            size = (inputs.shape[-2], inputs.shape[-1])
            return self.postprocess(raw.detach(), size, upsample, normalize)

    def attribute(self, inputs: torch.Tensor, targets: Targets) -> torch.Tensor:
        """Raw maps for a checked batch on the model's device. Implemented by each method."""
        raise NotImplementedError

    def postprocess(
        self, raw: torch.Tensor, size: tuple[int, int], do_upsample: bool, do_normalize: bool
    ) -> torch.Tensor:
        """Default for (N, h, w) maps: bilinear upsampling, then per-image min-max to [0, 1]."""
        maps = upsample(raw, size) if do_upsample else raw
        return normalize_minmax(maps) if do_normalize else maps

    # -- helpers for methods -----------------------------------------------------------
    def forward(
        self,
        inputs: torch.Tensor,
        targets: Targets,
        *,
        graph: Graph,
        guide: GuideSwitch | None = None,
    ) -> Capture:
        """Run the model once with the target layer captured; record classes and scores."""
        cap = run_forward(
            self.model,
            inputs,
            targets,
            layer=self.target_layer if self.uses_layer else None,
            layer_name=self.layer_name or "",
            graph=graph,
            guide=guide,
        )
        self.classes = cap.classes
        self.scores = cap.scores.detach()
        return cap

    def feature_map(self, tensor: torch.Tensor) -> torch.Tensor:
        """Apply ``reshape_transform`` and check the result is (N, C, h, w)."""
        if self.reshape_transform is None:
            if tensor.dim() != 4:
                raise LayerError(
                    f"target layer {self.layer_name!r} returned a tensor of shape "
                    f"{tuple(tensor.shape)}; {type(self).__name__} needs an (N, C, h, w) feature "
                    f"map. Choose a convolutional layer (target_layer='auto' picks the last one), "
                    f"or pass reshape_transform= to turn token outputs into (N, C, h, w)."
                )
            return tensor
        out = self.reshape_transform(tensor)
        if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[0] != tensor.shape[0]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise LayerError(
                f"reshape_transform turned the {tuple(tensor.shape)} output of layer "
                f"{self.layer_name!r} into {got}; it must return (N, C, h, w) with the same N"
            )
        return out

    def gradient(
        self, scores: torch.Tensor, wrt: torch.Tensor, *, retain_graph: bool = False
    ) -> torch.Tensor:
        """d(sum of scores)/d(wrt) with ``torch.autograd.grad``: no parameter ``.grad``."""
        if not scores.requires_grad:
            hint = (
                "; the custom target must return scores computed from the model output"
                if self.classes is None
                else " (the model output does not use it)"
            )
            raise LayerError(f"the target scores do not depend on {self._what(wrt)}{hint}")
        (grad,) = torch.autograd.grad(
            scores.sum(), wrt, retain_graph=retain_graph, allow_unused=True
        )
        if grad is None:
            raise LayerError(f"the target scores do not depend on {self._what(wrt)}")
        return grad

    def _what(self, wrt: torch.Tensor) -> str:
        return f"layer {self.layer_name!r}" if self.uses_layer else "the input"

    def _check_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        if not isinstance(inputs, torch.Tensor):
            raise InputError(
                f"inputs must be a torch.Tensor batch (N, C, H, W), got {type(inputs).__name__}"
            )
        if inputs.dim() != 4:
            hint = " Add a batch dimension with inputs.unsqueeze(0)." if inputs.dim() == 3 else ""
            raise InputError(
                f"inputs must be a batch of images of shape (N, C, H, W); got shape "
                f"{tuple(inputs.shape)}.{hint}"
            )
        if inputs.shape[0] == 0:
            raise InputError("inputs is an empty batch (N = 0)")
        if not inputs.dtype.is_floating_point:
            raise InputError(
                f"inputs must be a floating-point tensor, got {inputs.dtype}; convert images "
                f"with .float() (and normalise them as the model expects)"
            )
        # The dtype is left to the model: its forward may cast (torch names any mismatch).
        device = _model_device(self.model)
        return inputs if device is None or inputs.device == device else inputs.to(device)

    def _pick_layer(self, inputs: torch.Tensor) -> None:
        key = tuple(inputs.shape[1:])
        if key not in self._auto_layers:
            # warnings point at the caller of __call__ (_pick_layer -> __call__ -> user)
            self._auto_layers[key] = find_target_layer(self.model, inputs, stacklevel=3)
            logger.info(
                "camlib: %s picked target layer %r for inputs of shape %s",
                type(self).__name__,
                self._auto_layers[key],
                key,
            )
        self.layer_name = self._auto_layers[key]
        self.target_layer = resolve_layer(self.model, self.layer_name)


def _model_device(model: nn.Module) -> torch.device | None:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None


def explain(
    model: nn.Module,
    inputs: torch.Tensor,
    method: str = "gradcam",
    target_layer: LayerSpec = "auto",
    targets: Targets = None,
    *,
    upsample: bool = True,
    normalize: bool = True,
    **options: Any,
) -> torch.Tensor:
    """One-shot explanation: ``camlib.explain(model, images, method="gradcam")``.

    ``method`` is any registered name (see ``camlib.METHODS``); ``options`` go to the
    method's constructor (e.g. ``fc_layer=`` for CAM). ``target_layer`` is ignored by
    methods that explain the input only (Guided Backprop).
    """
    cls = get_method(method)
    if cls.uses_layer:
        options["target_layer"] = target_layer
    with cls(model, **options) as explainer:
        return explainer(inputs, targets, upsample=upsample, normalize=normalize)
