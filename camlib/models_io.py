"""Loading a model named on the command line, and the preprocessing that goes with it.

``MODEL`` is one of:

* ``torchvision:NAME`` - ``torchvision.models.get_model(NAME)``; ``--weights FILE`` loads a
  state dict, ``--weights DEFAULT`` (or ``IMAGENET1K_V1``, ``ResNet50_Weights.IMAGENET1K_V2``)
  torchvision's own weights (from the torch hub cache, downloaded once if absent);
* ``timm:NAME`` - ``timm.create_model(NAME)`` when timm is installed (``--weights
  pretrained`` for timm's weights);
* ``package.module:callable`` or ``path/to/file.py:callable`` - a function or class that
  returns an ``nn.Module`` (called with no arguments);
* the path of a file written with ``torch.save(model)``. Such a file is a pickle, and
  unpickling runs whatever code the file names, so it is refused unless
  ``trust_pickle=True`` (``--trust-pickle``). State dicts never need it: they are read
  with ``torch.load(weights_only=True)``, which cannot run code.

Preprocessing: the whole image is resized to the model's input size (no centre crop, so
the map covers every pixel of the image) and normalised with a mean and std: those of
torchvision's weights' transforms when known, ImageNet's at 224 x 224 otherwise, unless
``size``/``mean``/``std`` are given. Models whose first convolution takes one channel get
grayscale images.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import CamlibError
from .inputs import first_conv

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN = (0.449,)  # ImageNet's mean and std averaged over R, G, B
GRAY_STD = (0.226,)
DEFAULT_SIZE = 224


class ModelLoadError(CamlibError, ValueError):
    """The MODEL or its weights cannot be loaded (or are refused)."""


@dataclass(frozen=True)
class Preprocess:
    """Image -> model input: resize to ``size`` (H, W), scale to [0, 1], normalise."""

    size: tuple[int, int] = (DEFAULT_SIZE, DEFAULT_SIZE)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3
    interpolation: str = "bilinear"
    """``"bilinear"`` or ``"bicubic"`` (antialiased), as the weights' transforms say."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """(H, W, C) uint8 image -> (channels, *size) float32 normalised tensor."""
        x = image.permute(2, 0, 1).unsqueeze(0).float()
        x = torch.nn.functional.interpolate(
            x, size=self.size, mode=self.interpolation, align_corners=False, antialias=True
        )
        x = x.squeeze(0).div_(255.0)
        if self.interpolation == "bicubic":
            x.clamp_(0.0, 1.0)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(-1, 1, 1)
        return x.sub_(mean).div_(std)


@dataclass
class LoadedModel:
    """A model ready to explain, with what is known about its inputs and classes."""

    model: nn.Module
    preprocess: Preprocess
    categories: list[str] | None = None
    """Class names by index, when known (torchvision weights, ``--labels``)."""
    spec: str = ""
    notes: list[str] = field(default_factory=list)


def load_model(
    spec: str,
    *,
    weights: str | None = None,
    trust_pickle: bool = False,
    size: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    labels: str | Path | None = None,
) -> LoadedModel:
    """Build the model named by ``spec`` (see the module docstring), in eval mode on the CPU.

    Args:
        spec: ``torchvision:NAME``, ``timm:NAME``, ``pkg.module:callable``,
            ``file.py:callable`` or a ``torch.save(model)`` file.
        weights: a state-dict file (read with ``weights_only=True``), or a torchvision
            weights name (``DEFAULT``, ``IMAGENET1K_V1``), or ``pretrained`` for timm.
        trust_pickle: allow unpickling a whole-model file (runs code from the file).
        size: input size, one int (square) or (H, W).
        mean, std: per-channel normalisation (one value or one per channel).
        labels: a text file with one class name per line.
    """
    tv_weights = None
    timm_config: dict | None = None
    if spec.startswith("torchvision:"):
        model, tv_weights = _torchvision(spec.split(":", 1)[1], weights)
        if tv_weights is None and weights is not None:
            model = _load_state_dict(
                model, weights, rebuild=lambda k: _torchvision_rebuild(spec, k)
            )
    elif spec.startswith("timm:"):
        model, timm_config = _timm(spec.split(":", 1)[1], weights)
        if weights is not None and weights != "pretrained":
            model = _load_state_dict(model, weights, rebuild=None)
    elif _looks_like_file(spec):
        model = _pickled_model(Path(spec), trust_pickle)
        if weights is not None:
            model = _load_state_dict(model, weights, rebuild=None)
    elif ":" in spec:
        model = _callable(spec)
        if weights is not None:
            model = _load_state_dict(model, weights, rebuild=None)
    else:
        raise ModelLoadError(
            f"MODEL {spec!r} is not a file and has no recognised form; use torchvision:NAME "
            f"(e.g. torchvision:resnet50), timm:NAME, package.module:callable, "
            f"path/to/file.py:callable, or the path of a torch.save(model) file"
        )
    model.eval()
    pre = _preprocess(model, tv_weights, timm_config, size, mean, std)
    categories = None
    if tv_weights is not None:
        categories = list(tv_weights.meta.get("categories") or []) or None
    if labels is not None:
        categories = [
            line.strip() for line in Path(labels).read_text().splitlines() if line.strip()
        ]
    return LoadedModel(model, pre, categories, spec)


# -- the kinds of MODEL ---------------------------------------------------------------------
def _torchvision(name: str, weights: str | None) -> tuple[nn.Module, object | None]:
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        known = torchvision.models.list_models()
        import difflib

        close = difflib.get_close_matches(name, known, n=4)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ModelLoadError(
            f"torchvision has no model {name!r}.{hint} See torchvision.models.list_models()"
        ) from None
    enum = None
    if weights is not None and not Path(weights).exists():
        try:
            enum = torchvision.models.get_weight(weights) if "." in weights else None
        except (ValueError, KeyError, AttributeError):
            enum = None
        if enum is None:
            try:
                enum = torchvision.models.get_model_weights(name)[weights]
            except (KeyError, ValueError):
                raise ModelLoadError(
                    f"--weights {weights!r} is neither an existing file nor a weights name of "
                    f"torchvision:{name} (known: "
                    f"{', '.join(['DEFAULT', *_weight_names(name)])})"
                ) from None
        return builder(weights=enum), enum
    return builder(weights=None), None


def _weight_names(name: str) -> list[str]:
    import torchvision

    try:
        return [w.name for w in torchvision.models.get_model_weights(name)]
    except (ValueError, KeyError):
        return []


def _torchvision_rebuild(spec: str, num_classes: int) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(
        spec.split(":", 1)[1], weights=None, num_classes=num_classes
    )


def _timm(name: str, weights: str | None) -> tuple[nn.Module, dict]:
    try:
        import timm
    except ImportError:
        raise ModelLoadError(
            f"MODEL timm:{name} needs timm, which is not installed (pip install timm)"
        ) from None
    model = timm.create_model(name, pretrained=weights == "pretrained")
    config = timm.data.resolve_data_config({}, model=model)
    return model, config


def _looks_like_file(spec: str) -> bool:
    path = Path(spec)
    return path.is_file() or (":" not in spec and path.suffix in (".pt", ".pth", ".pkl", ".bin"))


def _pickled_model(path: Path, trust: bool) -> nn.Module:
    if not path.is_file():
        raise ModelLoadError(f"MODEL file {str(path)!r} does not exist")
    try:  # weights_only=True cannot run code: a state dict or plain tensors load here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, ValueError, TypeError):
        obj = None
    if isinstance(obj, Mapping):
        raise ModelLoadError(
            f"{str(path)!r} holds a state dict (tensors by name), not a model. Name the "
            f"architecture as MODEL and pass the file as weights, e.g. "
            f"`camlib explain torchvision:resnet50 --weights {path} ...` or "
            f"`camlib explain mypkg.models:Net --weights {path} ...`"
        )
    if not trust:
        raise ModelLoadError(
            f"refusing to load {str(path)!r}: it is a pickled object (torch.save(model)), and "
            f"unpickling runs whatever code the file names - a file from someone else can "
            f"do anything on this machine. If you made the file or trust its source, pass "
            f"--trust-pickle. Safer: save model.state_dict() and pass it with --weights next "
            f"to the architecture (torchvision:NAME or package.module:callable)."
        )
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - whatever the pickle does when it fails
        raise ModelLoadError(
            f"{str(path)!r} could not be unpickled: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(
            f"{str(path)!r} unpickled to a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def _callable(spec: str) -> nn.Module:
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ModelLoadError(f"MODEL {spec!r} must look like package.module:callable")
    try:
        if target.endswith(".py"):
            path = Path(target).resolve()
            if not path.is_file():
                raise ModelLoadError(f"MODEL {spec!r}: no file {target!r}")
            name = f"_camlib_model_{path.stem}"
            loader_spec = importlib.util.spec_from_file_location(name, path)
            assert loader_spec is not None and loader_spec.loader is not None
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[name] = module
            loader_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))  # as `python -m` would
            module = importlib.import_module(target)
    except ImportError as exc:
        raise ModelLoadError(f"MODEL {spec!r}: cannot import {target!r}: {exc}") from exc
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(f"MODEL {spec!r}: {target!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    model = obj if isinstance(obj, nn.Module) else obj() if callable(obj) else obj
    if not isinstance(model, nn.Module):
        raise ModelLoadError(
            f"MODEL {spec!r} gave a {type(model).__name__}, not a torch.nn.Module; point at a "
            f"function or class that returns the model"
        )
    return model


def _load_state_dict(model: nn.Module, weights: str, rebuild) -> nn.Module:
    """Read ``weights`` with ``weights_only=True`` and load it into ``model`` (strict).

    Accepts a bare state dict or a checkpoint with it under ``state_dict``/``model``;
    strips the ``module.`` prefix DataParallel/DDP add. When the classifier's size
    differs and ``rebuild(num_classes)`` is given, the model is rebuilt with that size
    (the classes are the last 2-D weight's rows). Returns the model holding the weights.
    """
    path = Path(weights)
    if not path.is_file():
        raise ModelLoadError(f"--weights {weights!r}: no such file")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"--weights {weights!r} is not a plain state dict: torch.load(weights_only=True) "
            f"refused it ({str(exc).splitlines()[0]}). Save model.state_dict(), not the model."
        ) from None
    if isinstance(sd, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in sd and isinstance(sd[key], Mapping):
                sd = sd[key]
                break
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelLoadError(f"--weights {weights!r} does not hold a state dict of tensors")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    try:
        model.load_state_dict(sd)
        return model
    except RuntimeError as exc:
        error = exc
    if rebuild is not None:
        last = [v for k, v in sd.items() if k.endswith("weight") and v.dim() == 2]
        if last:
            new = rebuild(int(last[-1].shape[0]))
            try:
                new.load_state_dict(sd)
            except RuntimeError:
                pass
            else:
                return new
    first = str(error).splitlines()
    raise ModelLoadError(
        f"--weights {weights!r} does not fit {type(model).__name__}: "
        f"{' '.join(s.strip() for s in first[:4])}"
    )


# -- preprocessing -------------------------------------------------------------------------
def input_channels(model: nn.Module) -> int:
    """Channels the model's first convolution takes (3 when it has none)."""
    conv = first_conv(model)
    return int(conv.in_channels) if conv is not None else 3


def _preprocess(
    model: nn.Module,
    tv_weights: object | None,
    timm_config: dict | None,
    size: Sequence[int] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> Preprocess:
    channels = input_channels(model)
    d_size: tuple[int, int] = (DEFAULT_SIZE, DEFAULT_SIZE)
    d_mean, d_std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (GRAY_MEAN, GRAY_STD)
    interpolation = "bilinear"
    if tv_weights is not None:
        t = tv_weights.transforms()
        crop = getattr(t, "crop_size", [DEFAULT_SIZE])
        d_size = (int(crop[0]), int(crop[-1]))
        d_mean = tuple(float(v) for v in getattr(t, "mean", d_mean))
        d_std = tuple(float(v) for v in getattr(t, "std", d_std))
        mode = str(getattr(t, "interpolation", "bilinear")).lower()
        interpolation = "bicubic" if "bicubic" in mode else "bilinear"
    elif timm_config is not None:
        d_size = tuple(int(v) for v in timm_config["input_size"][1:])  # type: ignore[assignment]
        d_mean = tuple(float(v) for v in timm_config["mean"])
        d_std = tuple(float(v) for v in timm_config["std"])
        interpolation = "bicubic" if timm_config.get("interpolation") == "bicubic" else "bilinear"
    if size is not None:
        s = tuple(int(v) for v in size)
        d_size = (s[0], s[0]) if len(s) == 1 else (s[0], s[1])
    m = tuple(float(v) for v in (mean if mean is not None else d_mean))
    sd = tuple(float(v) for v in (std if std is not None else d_std))
    if channels == 1 and len(m) == 3 and mean is None:
        m, sd = GRAY_MEAN, GRAY_STD
    for what, values in (("mean", m), ("std", sd)):
        if len(values) not in (1, channels):
            raise ModelLoadError(
                f"--{what} has {len(values)} values; the model takes {channels} channel(s): "
                f"give 1 or {channels}"
            )
    if any(v <= 0 for v in sd):
        raise ModelLoadError(f"--std values must be > 0, got {sd}")
    if len(m) == 1 and channels > 1:
        m = m * channels
    if len(sd) == 1 and channels > 1:
        sd = sd * channels
    if channels not in (1, 3):
        raise ModelLoadError(
            f"the model's first convolution takes {channels} channels; image files give 1 "
            f"(grayscale) or 3 (RGB)"
        )
    return Preprocess(d_size, m, sd, channels, interpolation)
