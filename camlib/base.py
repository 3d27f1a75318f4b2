"""The one interface every method shares, the method registry, and :func:`explain`.

A method is a subclass of :class:`Explainer` that implements :meth:`Explainer.attribute`
(raw maps for a batch, one per target layer) and registers itself with :func:`register`.
Most methods subclass a family in :mod:`camlib.methods.families` and state only their
weighting. Everything else - input checks, layer resolution, the hooked forward pass,
the chosen classes and scores, upsampling, normalisation and multi-layer fusion - lives
here and in the modules it calls.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from .capture import Capture, Edit, Graph, outside_inference_mode, run_forward
from .errors import InputError, LayerError, MethodError, TargetError, warn
from .guided_relu import GuideSwitch
from .inputs import check_inputs, first_conv
from .layers import LayerRef, LayerSpec, _first_of, _pick, parse_layer, probe_layers
from .layouts import Arrangement, arrange, check_layout
from .maps import fuse as fuse_maps
from .maps import normalize_absmax, normalize_minmax, upsample
from .targets import Targets, check_targets

logger = logging.getLogger("camlib")

E = TypeVar("E", bound="type[Explainer]")


def _key(name: str) -> str:
    """Registry names ignore case, ``-``, ``_`` and spaces: ``Grad-CAM`` is ``gradcam``."""
    return "".join(c for c in str(name).lower() if c not in "-_ ")


class _Registry(dict):
    """Methods by name; look-ups normalise the name (see :func:`_key`)."""

    def __getitem__(self, name: str) -> type[Explainer]:
        return super().__getitem__(_key(name))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(_key(name))

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(_key(name), default)


METHODS: dict[str, type[Explainer]] = _Registry()
"""Registered methods by name (``"cam"``, ``"gradcam"``, ``"gradcam++"``, ...); see :func:`register`."""


def register(*names: str) -> Callable[[E], E]:
    """Class decorator: make a method available as ``camlib.explain(..., method=name)``.

    The first name is the method's main name (``cls.name``), the others aliases. Names
    ignore case, ``-``, ``_`` and spaces. A registered method works everywhere the
    built-ins do: :func:`explain`, several layers, :class:`camlib.Smooth`, the CLI.
    """
    if not names:
        raise MethodError("register() needs at least one name, e.g. @camlib.register('mine')")

    def add(cls: E) -> E:
        if not (isinstance(cls, type) and issubclass(cls, Explainer)):
            raise MethodError(
                f"@register({names[0]!r}) decorates Explainer subclasses, not {cls!r}"
            )
        for name in names:
            dict.__setitem__(METHODS, _key(name), cls)
        cls.name = names[0]
        return cls

    return add


def available_methods() -> list[str]:
    """The main names of every registered method, plugins included, sorted."""
    _load_plugins()
    return sorted({cls.name for cls in METHODS.values()})


def get_method(name: str) -> type[Explainer]:
    """The :class:`Explainer` subclass registered under ``name`` (case-insensitive)."""
    if name not in METHODS:
        _load_plugins()
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise MethodError(
            f"unknown method {name!r}; available: {', '.join(available_methods())}"
        ) from None


def not_one_map_per_image(cls: type) -> str | None:
    """Why ``cls`` does not give each image one map of its own, or ``None`` when it does.

    Read from the class flags: ``returns = "concepts"`` (K concept maps per image, DFF) and
    ``batch_independent = False`` (an image's map depends on the rest of its batch). Tools
    that score or write one map per image in batches they choose (``camlib evaluate``,
    ``camlib explain``) refuse such methods with this reason.
    """
    if getattr(cls, "returns", None) == "concepts":
        return (
            "returns K concept maps per image (N, K, H, W), not one map, factorised jointly "
            "over each call's batch"
        )
    if not getattr(cls, "batch_independent", True):
        return "computes each image's map from the whole batch (batch_independent = False)"
    return None


def _load_plugins() -> None:
    try:
        from .plugins import load_plugins
    except ImportError:  # pragma: no cover - plugins.py ships with camlib
        return
    load_plugins()


class Explainer:
    """Base class of every camlib method.

    Use it as a context manager or as a plain callable::

        with camlib.GradCAM(model, target_layer="layer4") as cam:
            maps = cam(images)                 # (N, H, W) in [0, 1]
            maps = cam(images, targets=[3, 7])

    Hooks live only during a call; after it (and after the ``with`` block) the model has
    exactly the hooks, modules, mode, ``requires_grad`` flags and ``.grad`` it had before.
    One explainer serves one call at a time (calls from several threads wait for each
    other); several explainers may share one model across threads.

    Args:
        model: the network to explain. camlib never calls ``eval()`` on it; it warns if
            the model is in training mode.
        target_layer: a dotted name (``"layer4.1.conv2"``; ``"act@-1"`` for the last call
            of a reused module, ``"norm:input"`` for a module's input), a module of
            ``model``, ``"auto"``/``None`` to pick the last spatial layer (see
            :func:`camlib.layers.find_target_layer`), or a list of these to fuse several
            layers' maps.
        reshape_transform: optional function mapping a layer's output (and its gradient)
            to (N, C, *grid), for layouts camlib cannot read by itself.
        layout: state a layer's layout instead of letting camlib read it:
            ``"channels_first"``, ``"channels_last"`` or ``"tokens"`` (see
            :mod:`camlib.layouts`).
        fuse: how several layers' maps combine: ``"mean"`` (default) or ``"max"``.

    Attributes:
        layer_name: name of the (first) layer explained (set once it is known).
        layer_names: names of all layers explained.
        target_layer: the (first) module explained.
        classes: (N,) classes explained by the last call (``None`` for a callable target,
            and after a call that failed).
        scores: (N,) model scores for those classes, detached.
        output: the model's output of the last ``differentiable=True`` call, with its
            graph (``None`` otherwise), so a training step needs one forward pass:
            ``loss = F.cross_entropy(cam.output, y) + lam * penalty(maps)``.
    """

    name: ClassVar[str] = ""
    uses_layer: ClassVar[bool] = True
    """Whether the method explains an inner layer (CAM, Grad-CAM) or only the input."""
    signed: ClassVar[bool] = False
    """Whether maps are signed (N, C, *size) input maps in [-1, 1] (guided methods)
    rather than (N, *size) heatmaps in [0, 1]."""
    graph: ClassVar[Graph] = "from_layer"
    """How much autograd graph the method's forward pass records (see :mod:`camlib.capture`)."""
    class_targets_only: ClassVar[bool] = False
    """Whether the method explains class scores only (no callable targets)."""
    differentiable: ClassVar[bool] = False
    """Whether ``explainer(x, differentiable=True)`` works: maps that carry gradient to the
    model's parameters (and to the input), so that a loss on the map trains the model.
    True for the gradient family (Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM);
    see :meth:`__call__`."""
    nondifferentiable_reason: ClassVar[str] = ""
    """Why ``differentiable=True`` is refused (in the error, the docs and the CLI)."""

    _CACHE_SIZE: ClassVar[int] = 16

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec | Sequence[LayerSpec] = "auto",
        *,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        layout: str | None = None,
        fuse: str = "mean",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(model, torch.jit.ScriptModule):
            raise InputError(
                "TorchScript models are not supported: module hooks and ReLU interception do "
                "not run inside a scripted or traced graph, so the maps would be wrong. Pass "
                "the eager nn.Module instead."
            )
        if fuse not in ("mean", "max"):
            raise MethodError(f"fuse must be 'mean' or 'max', got {fuse!r}")
        self.model = model
        self.reshape_transform = reshape_transform
        self.layout = check_layout(layout)
        self.fuse = fuse
        self.classes: torch.Tensor | None = None
        self.scores: torch.Tensor | None = None
        self.output: object = None
        self._lock = threading.RLock()
        self._resolved: OrderedDict[tuple, list[LayerRef]] = OrderedDict()
        self._arrangements: OrderedDict[tuple, Arrangement] = OrderedDict()
        self._forward_args: tuple = ()
        self._differentiable = False
        specs = list(target_layer) if isinstance(target_layer, (list, tuple)) else [target_layer]
        if not specs:
            raise LayerError("target_layer is an empty list; name at least one layer or 'auto'")
        self._auto = [s is None or (isinstance(s, str) and s == "auto") for s in specs]
        if any(self._auto) and len(specs) > 1:
            raise LayerError("'auto' cannot be combined with other layers in a target_layer list")
        self._first_conv = first_conv(model)
        self.layers: list[LayerRef] = []
        if self.uses_layer and not self._auto[0]:
            self.layers = [parse_layer(model, s) for s in specs]  # type: ignore[arg-type]

    # -- names -----------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        return [ref.spec for ref in self.layers]

    @property
    def layer_name(self) -> str | None:
        return self.layers[0].spec if self.layers else None

    @property
    def target_layer(self) -> nn.Module | None:
        return self.layers[0].module if self.layers else None

    # -- context manager -------------------------------------------------------------
    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the last call's results. Hooks never outlive a call, so none remain."""
        self.classes = self.scores = self.output = None

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
        additional_forward_args: Any = None,
        differentiable: bool = False,
    ) -> torch.Tensor:
        """Explain a batch.

        Args:
            inputs: (N, C, H, W) images ((N, C, L) signals, (N, C, D, H, W) volumes) on
                any device (moved to the model's device).
            targets: ``None`` (top class), an int, N ints, or ``output -> (N,)`` scores.
            upsample: resize maps to the input's size (linear/bilinear/trilinear,
                ``align_corners=False``).
            normalize: scale each map to [0, 1] (signed methods: [-1, 1]).
            additional_forward_args: further positional argument(s) of the model's
                forward (a tuple for several); only ``inputs`` is explained.
            differentiable: return maps that carry gradient to the model's parameters
                (and to ``inputs`` when it requires grad), so a loss on the maps trains
                the model (e.g. a penalty on map mass outside an object mask). The
                forward pass records the full graph (not only after the layer), the
                layer gradient is taken with ``create_graph=True``, and upsampling and
                normalisation stay in the graph (a constant map normalises to zeros with
                a zero gradient; see :func:`camlib.maps.normalize_minmax`). It costs one
                forward pass with a full graph plus one backward to the layer; the
                caller's ``loss.backward()`` then runs a double backward. ``self.output``
                holds the model's output with its graph, for the rest of the loss.
                Only methods whose class sets ``differentiable = True`` accept it (the
                gradient family: Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM);
                others raise :class:`~camlib.errors.MethodError` saying why
                (``nondifferentiable_reason``). It needs grad mode: under
                ``torch.no_grad()`` or ``torch.inference_mode()`` no graph can be
                recorded, so it raises :class:`~camlib.errors.MethodError` (as it does
                when neither a parameter nor ``inputs`` requires grad). camlib still
                leaves no hook behind, writes no ``.grad`` (the caller's backward does)
                and changes no mode or ``requires_grad``; it does not warn about training
                mode, the mode a training step runs in (BatchNorm statistics are updated
                by this forward pass, as by any training forward).

        Returns:
            The maps, a float32 tensor on the model's device (the model's float dtype
            when it is float64); with ``differentiable=True``, part of the autograd graph.
        """
        with self._lock:
            self.classes = self.scores = self.output = None
            if differentiable is not False:
                self._check_differentiable(differentiable)
            inputs = check_inputs(self.model, inputs, self._first_conv)
            if differentiable:
                self._check_something_trains(inputs)
            targets = check_targets(targets, inputs.shape[0])
            if callable(targets) and self.class_targets_only:
                raise TargetError(
                    f"{type(self).__name__} explains class scores only; a callable target needs "
                    f"a gradient or perturbation method (e.g. GradCAM)"
                )
            if not upsample and len(self.layers) > 1:
                raise LayerError(
                    f"{len(self.layers)} target layers are fused at the input's size, so "
                    f"upsample=False cannot keep each layer's own size; explain one layer at a "
                    f"time for raw maps"
                )
            if self.model.training and not differentiable:
                warn(
                    f"{type(self.model).__name__} is in training mode: BatchNorm running "
                    "statistics will be updated and dropout is active. Call model.eval() "
                    "before explaining."
                )
            self._forward_args = _as_args(additional_forward_args)
            self._differentiable = differentiable
            grad_before = torch.is_grad_enabled()
            try:
                # Gradients are needed whatever the caller's mode (no_grad, inference_mode);
                # the caller's mode is back on return, and maps carry no autograd history
                # (differentiable=True: grad mode is on and inference mode off, checked above).
                # Grad mode is switched by plain calls, restored in `finally`.
                size = tuple(inputs.shape[2:])
                with outside_inference_mode():
                    torch.set_grad_enabled(True)
                    if inputs.is_inference():  # made under torch.inference_mode(): copy out
                        inputs = inputs.clone()
                    if self.uses_layer:
                        self._resolve_layers(inputs)
                    raw = self.attribute(inputs, targets)
                    if differentiable:
                        raws = self._with_graph(raw if isinstance(raw, list) else [raw])
                        return self.postprocess(raws, size, upsample, normalize)
                torch.set_grad_enabled(False)
                raws = [r.detach() for r in (raw if isinstance(raw, list) else [raw])]
                return self.postprocess(raws, size, upsample, normalize)
            finally:
                torch.set_grad_enabled(grad_before)
                self._forward_args = ()
                self._differentiable = False

    # -- differentiable maps -------------------------------------------------------------
    def _check_differentiable(self, differentiable: object) -> None:
        """Refuse ``differentiable=True`` before any work when it cannot be honoured."""
        name = type(self).__name__
        if not isinstance(differentiable, bool):
            raise MethodError(f"differentiable must be True or False, got {differentiable!r}")
        if not self.differentiable:
            reason = self.nondifferentiable_reason or (
                _GUIDED_NOT_DIFFERENTIABLE if self.signed else _NOT_DECLARED
            )
            able = sorted({c.name for c in METHODS.values() if c.differentiable})
            raise MethodError(
                f"{name} cannot return differentiable maps: {reason}. Methods that can: "
                f"{', '.join(able) or 'none registered'}."
            )
        if torch.is_inference_mode_enabled() or not torch.is_grad_enabled():
            mode = (
                "torch.inference_mode()"
                if torch.is_inference_mode_enabled()
                else ("torch.no_grad() (grad mode is off)")
            )
            raise MethodError(
                f"{name}(..., differentiable=True) was called under {mode}, where no autograd "
                f"graph can be recorded, so the maps could not carry gradient to the model. "
                f"Call it with grad mode on (e.g. inside the training step, outside no_grad), "
                f"or drop differentiable=True to get plain maps (which work under no_grad)."
            )

    def _check_something_trains(self, inputs: torch.Tensor) -> None:
        if inputs.requires_grad or any(p.requires_grad for p in self.model.parameters()):
            return
        raise MethodError(
            f"{type(self).__name__}(..., differentiable=True): no parameter of "
            f"{type(self.model).__name__} requires grad and neither do the inputs, so the maps "
            f"would depend on nothing a loss could train. Unfreeze the parameters to train "
            f"(or pass inputs with requires_grad=True), or drop differentiable=True."
        )

    def _with_graph(self, raws: list[torch.Tensor]) -> list[torch.Tensor]:
        """The raw maps of a differentiable call, checked to be part of the graph."""
        for r in raws:
            if not r.requires_grad:
                raise MethodError(
                    f"{type(self).__name__} declares differentiable = True but its raw map "
                    f"carries no autograd graph (a detach or no_grad in its attribute()); set "
                    f"differentiable = False on the class or keep the map in the graph"
                )
        return raws

    def attribute(
        self, inputs: torch.Tensor, targets: Targets
    ) -> torch.Tensor | list[torch.Tensor]:
        """Raw maps for a checked batch on the model's device, one per target layer.

        Implemented by each method (or its family); see :mod:`camlib.methods.families`.
        """
        raise NotImplementedError

    def postprocess(
        self,
        raws: list[torch.Tensor],
        size: tuple[int, ...],
        do_upsample: bool,
        do_normalize: bool,
    ) -> torch.Tensor:
        """Raw maps -> the returned maps.

        Heatmaps (N, *grid): each layer's map is upsampled to ``size`` and min-max
        normalised to [0, 1]; several layers' maps are then fused (mean or max) and the
        result normalised again. Signed input maps (N, C, *size): divided by their
        largest absolute value. Computed in float32 (float64 stays float64).
        """
        raws = [r if r.dtype == torch.float64 else r.float() for r in raws]
        if self.signed:
            return self.normalize_maps(raws[0]) if do_normalize else raws[0]
        if len(raws) == 1:
            maps = upsample(raws[0], size) if do_upsample else raws[0]
            return normalize_minmax(maps) if do_normalize else maps
        fused = fuse_maps([normalize_minmax(upsample(r, size)) for r in raws], self.fuse)
        return normalize_minmax(fused) if do_normalize else fused

    def normalize_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """The method's normalisation: min-max to [0, 1], or abs-max for signed maps."""
        return normalize_absmax(maps) if self.signed else normalize_minmax(maps)

    # -- helpers for methods -----------------------------------------------------------
    def forward(
        self,
        inputs: torch.Tensor,
        targets: Targets,
        *,
        graph: Graph | None = None,
        guide: GuideSwitch | None = None,
        layers: Sequence[LayerRef] | None = None,
        edit: Edit | None = None,
        forward_args: tuple | None = None,
        record: bool = True,
    ) -> Capture:
        """Run the model once with the target layers captured; record classes and scores.

        In a ``differentiable=True`` call a ``"from_layer"`` graph becomes ``"full"`` (the
        whole graph, from the parameters and the caller's input), and ``record`` also
        keeps the model's output, with its graph, in ``self.output``."""
        graph = self.graph if graph is None else graph
        if self._differentiable and graph == "from_layer":
            graph = "full"
        cap = run_forward(
            self.model,
            inputs,
            targets,
            layers=self.layers if layers is None else layers,
            graph=graph,
            guide=guide,
            forward_args=self._forward_args if forward_args is None else forward_args,
            edit=edit,
        )
        if record:
            self.classes = cap.classes
            self.scores = cap.scores.detach() if cap.scores is not None else None
            if self._differentiable:
                self.output = cap.output
        return cap

    def arrangement(self, i: int, tensor: torch.Tensor, inputs: torch.Tensor) -> Arrangement:
        """How layer ``i``'s output becomes (N, C, *grid) (see :mod:`camlib.layouts`).

        Decided once per (layer, output shape, input shape) and cached (bounded): the
        decision depends on nothing else, and a layout that does not fit raises before it
        is cached, so every check still runs for every new shape."""
        ref = self.layers[i]
        key = (i, ref.spec, id(ref.module), tensor.shape, inputs.shape)
        found = self._arrangements.get(key)
        if found is not None:
            return found
        found = arrange(
            tensor,
            inputs.shape,
            name=ref.spec,
            module=ref.module,
            layout=self.layout,
            reshape_transform=self.reshape_transform,
        )
        self._arrangements[key] = found
        while len(self._arrangements) > self._CACHE_SIZE:
            self._arrangements.popitem(last=False)
        return found

    def feature_maps(self, cap: Capture) -> tuple[list[torch.Tensor], list[Arrangement]]:
        """Every captured activation laid out as (N, C, *grid), with its arrangement; the
        shapes are checked here, before any backward pass."""
        maps, arrangements = [], []
        for i, act in enumerate(cap.activations):
            a = self.arrangement(i, act, cap.inputs)
            fm = a.apply(act if self._differentiable else act.detach())
            self._check_map(i, fm, cap.inputs)
            maps.append(fm)
            arrangements.append(a)
        return maps, arrangements

    def _check_map(self, i: int, fm: object, inputs: torch.Tensor) -> None:
        ref = self.layers[i]
        want = inputs.dim()
        if not isinstance(fm, torch.Tensor) or fm.dim() != want or fm.shape[0] != inputs.shape[0]:
            got = tuple(fm.shape) if isinstance(fm, torch.Tensor) else type(fm).__name__
            via = "reshape_transform turned" if self.reshape_transform else "camlib laid out"
            raise LayerError(
                f"{via} the output of layer {ref.spec!r} into {got}; {type(self).__name__} "
                f"needs (N, C, *positions) with {want} dimensions and the same N as the "
                f"inputs {tuple(inputs.shape)}"
            )
        if fm.shape[2:].numel() == 1:
            raise LayerError(
                f"layer {ref.spec!r} gives a map with a single position (shape "
                f"{tuple(fm.shape)}): every map would be constant. Choose a layer before the "
                f"global pooling ('auto' picks the last one with positions)."
            )

    def gradients(
        self,
        scores: torch.Tensor,
        wrt: Sequence[torch.Tensor],
        *,
        retain_graph: bool = False,
        create_graph: bool | None = None,
    ) -> list[torch.Tensor]:
        """d(sum of scores)/d(each of ``wrt``) with one ``torch.autograd.grad``: no ``.grad``.

        ``create_graph`` (default: whether the call is ``differentiable=True``) records the
        gradient's own graph, so maps built from it can be differentiated again; the
        forward graph is then kept for the caller's backward."""
        create = self._differentiable if create_graph is None else create_graph
        if not scores.requires_grad:
            hint = (
                "; the custom target must return scores computed from the model output"
                if self.classes is None
                else " (the model output does not use it)"
            )
            raise LayerError(f"the target scores do not depend on {self._what()}{hint}")
        grads = torch.autograd.grad(
            scores.sum(),
            list(wrt),
            retain_graph=retain_graph or create,
            create_graph=create,
            allow_unused=True,
        )
        if any(g is None for g in grads):
            raise LayerError(f"the target scores do not depend on {self._what()}")
        return list(grads)  # type: ignore[arg-type]

    def gradient(
        self, scores: torch.Tensor, wrt: torch.Tensor, *, retain_graph: bool = False
    ) -> torch.Tensor:
        """d(sum of scores)/d(wrt) (see :meth:`gradients`)."""
        return self.gradients(scores, [wrt], retain_graph=retain_graph)[0]

    def _what(self) -> str:
        if not self.uses_layer:
            return "the input"
        names = ", ".join(repr(n) for n in self.layer_names)
        return f"layer {names}" if len(self.layers) == 1 else f"layers {names}"

    # -- layers --------------------------------------------------------------------------
    def _resolve_layers(self, inputs: torch.Tensor) -> None:
        """Pick ``"auto"`` layers and turn negative call indices into positions, once per
        input shape (a bounded cache)."""
        needs_probe = self._auto[0] or any(r.call is not None and r.call < 0 for r in self.layers)
        if not needs_probe:
            return
        key = (tuple(inputs.shape[1:]), self.model.training)
        if key in self._resolved:
            self._resolved.move_to_end(key)
            self.layers = self._resolved[key]
            return
        if self._auto[0]:
            name, probe = _pick(self.model, inputs, forward_args=self._forward_args)
            refs = [parse_layer(self.model, name)]
            logger.info(
                "%s picked target layer %r for inputs of shape %s",
                type(self).__name__,
                name,
                key[0],
            )
        else:
            probe = probe_layers(
                self.model, inputs[:1], _first_of(self._forward_args, inputs.shape[0])
            )
            refs = list(self.layers)
        resolved = []
        for ref in refs:
            if ref.call is not None and ref.call < 0:
                runs = probe.counts.get(ref.name, 0)
                if runs + ref.call < 0:
                    raise LayerError(
                        f"target layer {ref.spec!r} names call {ref.call}, but {ref.name!r} runs "
                        f"{runs} time(s) per forward pass"
                    )
                ref = LayerRef(ref.module, ref.name, runs + ref.call, ref.input)
            resolved.append(ref)
        self._resolved[key] = self.layers = resolved
        while len(self._resolved) > self._CACHE_SIZE:
            self._resolved.popitem(last=False)


_GUIDED_NOT_DIFFERENTIABLE = (
    "its input gradient passes through guided ReLUs, whose backward rule (keep positive "
    "gradients at positive inputs) replaces the true derivative and has no derivative of its "
    "own"
)
"""Why the signed (guided) methods refuse ``differentiable=True`` when their class says
nothing itself."""
_NOT_DECLARED = (
    "its class does not declare differentiable = True (its passes have not been checked for "
    "a differentiable path)"
)


def _as_args(value: Any) -> tuple:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, tuple) else (value,)


def explain(
    model: nn.Module,
    inputs: torch.Tensor,
    method: str = "gradcam",
    target_layer: LayerSpec | Sequence[LayerSpec] = "auto",
    targets: Targets = None,
    *,
    upsample: bool = True,
    normalize: bool = True,
    additional_forward_args: Any = None,
    differentiable: bool = False,
    **options: Any,
) -> torch.Tensor:
    """One-shot explanation: ``camlib.explain(model, images, method="gradcam")``.

    ``method`` is any registered name (see :func:`available_methods`); ``options`` go to
    the method's constructor (e.g. ``fc_layer=`` for CAM, ``batch_size=`` for Score-CAM).
    Methods that explain the input only (Guided Backprop) take no ``target_layer``:
    naming one is an error, as with the class. ``differentiable=True`` returns maps in the
    autograd graph (see :meth:`Explainer.__call__`).
    """
    cls = get_method(method)
    if cls.uses_layer or (target_layer is not None and target_layer != "auto"):
        options["target_layer"] = target_layer
    try:
        explainer = cls(model, **options)
    except TypeError as error:
        if "unexpected keyword argument" not in str(error):
            raise
        accepted = [
            p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "model")
        ]
        accepted += [
            p for p in inspect.signature(Explainer.__init__).parameters if p not in accepted
        ]
        raise MethodError(
            f"{cls.name}: {error}; its options are "
            f"{', '.join(p for p in accepted if p not in ('self', 'model', 'options'))}"
        ) from None
    with explainer:
        return explainer(
            inputs,
            targets,
            upsample=upsample,
            normalize=normalize,
            additional_forward_args=additional_forward_args,
            differentiable=differentiable,
        )
