"""Checking a batch before anything runs: its type, rank, layout, channels and values.

Every check names what was passed and what to do, before torch raises something
further from the user's mistake. Inputs are (N, C, *positions): (N, C, L) signals,
(N, C, H, W) images, (N, C, D, H, W) volumes.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from .errors import InputError

_CONVS = {nn.Conv1d: 3, nn.Conv2d: 4, nn.Conv3d: 5}
_RECIPE = (
    "For an (H, W, C) uint8 numpy array or a PIL image: "
    "torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float().div(255)[None], then "
    "normalise as the model expects (or use the weights' transforms(), e.g. "
    "torchvision.models.ResNet50_Weights.DEFAULT.transforms()(img)[None])."
)


def first_conv(model: nn.Module) -> nn.Module | None:
    """The first Conv1d/2d/3d among the model's modules (registration order), if any."""
    for m in model.modules():
        if type(m) in _CONVS or isinstance(m, tuple(_CONVS)):
            return m
    return None


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter (or buffer); ``None`` if it has neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None


def check_inputs(
    model: nn.Module, inputs: object, conv: nn.Module | None | bool = True
) -> torch.Tensor:
    """Validate a batch for ``model`` and move it to the model's device.

    Raises :class:`~camlib.errors.InputError` for non-tensors (with a conversion recipe), a missing
    batch dimension, channels-last images, a channel count the first convolution
    cannot take, integer dtypes, empty batches and non-finite values. ``conv`` is the
    model's first convolution when the caller knows it (``True``: look it up).
    """
    if not isinstance(inputs, torch.Tensor):
        kind = type(inputs).__name__
        module = type(inputs).__module__.split(".")[0]
        hint = f" {_RECIPE}" if module in ("numpy", "PIL") else ""
        raise InputError(
            f"inputs must be a torch.Tensor batch (N, C, H, W), got {kind} ({module}).{hint}"
        )
    if conv is True:
        conv = first_conv(model)
    rank = next((r for c, r in _CONVS.items() if isinstance(conv, c)), None)
    shape = tuple(inputs.shape)
    channels = conv.in_channels if conv is not None else None
    if rank is not None and inputs.dim() == rank - 1 and _channel_fits(shape[0], channels):
        raise InputError(
            f"inputs of shape {shape} look like one unbatched sample for a model whose first "
            f"layer is {type(conv).__name__}: add a batch dimension with inputs.unsqueeze(0)."
        )
    if (
        inputs.dim() == 4
        and shape[-1] in (1, 3)
        and shape[1] not in (1, 3)
        and (channels is None or shape[1] != channels)
    ):
        want = f" (the model's first convolution takes {channels})" if channels else ""
        raise InputError(
            f"inputs of shape {shape} look channels-last (N, H, W, C); camlib needs "
            f"(N, C, H, W){want}: use inputs.permute(0, 3, 1, 2)."
        )
    if inputs.dim() == 3 and shape[-1] in (1, 3) and rank == 4:
        raise InputError(
            f"inputs of shape {shape} look like one (H, W, C) image; use "
            f"inputs.permute(2, 0, 1).unsqueeze(0) to get (1, C, H, W)."
        )
    expected = f"(N, C, {'L' if rank == 3 else 'D, H, W' if rank == 5 else 'H, W'})"
    mismatch = (rank is not None and inputs.dim() != rank) or (
        channels is not None and 3 <= inputs.dim() <= 5 and shape[1] != channels
    )
    if mismatch and shape[0] > 0 and not _conv_reads_input(model, conv, inputs):
        # The first convolution reads something the model made from the input (TResNet's
        # space-to-depth, CSATv2's DCT stem, a video model folding frames into the
        # batch): its channel count and rank say nothing about the input.
        rank = channels = None
    if rank is not None and inputs.dim() != rank:
        raise InputError(
            f"inputs must have shape {expected} for a model whose first layer is "
            f"{type(conv).__name__}; got {shape}."
        )
    if not 3 <= inputs.dim() <= 5:
        hint = " Add a batch dimension with inputs.unsqueeze(0)." if inputs.dim() == 3 else ""
        raise InputError(
            f"inputs must be a batch (N, C, L), (N, C, H, W) or (N, C, D, H, W); got shape "
            f"{shape}.{hint}"
        )
    if shape[0] == 0:
        raise InputError("inputs is an empty batch (N = 0)")
    if channels is not None and shape[1] != channels and conv.groups == 1:
        raise InputError(
            f"inputs have {shape[1]} channels (shape {shape}) but the model's first "
            f"convolution takes {channels}"
            + (
                "; repeat a grayscale image with inputs.expand(-1, 3, -1, -1)"
                if shape[1] == 1 and channels == 3
                else "; convert RGB to one channel with inputs.mean(1, keepdim=True)"
                if shape[1] == 3 and channels == 1
                else ""
            )
        )
    if not inputs.dtype.is_floating_point:
        raise InputError(
            f"inputs must be a floating-point tensor, got {inputs.dtype}; convert images "
            f"with .float() (and normalise them as the model expects)"
        )
    # One reduction on the common path: a NaN or Inf makes the sum non-finite; only then
    # (or when a huge finite sum overflows) are the non-finite values counted.
    if inputs.device.type != "meta" and not bool(torch.isfinite(inputs.sum())):
        bad = int((~torch.isfinite(inputs)).sum())
    else:
        bad = 0
    if bad:
        raise InputError(
            f"inputs hold {bad} non-finite value(s) (NaN or Inf) out of {inputs.numel()}; "
            f"the maps would be NaN. Clean or mask them first."
        )
    # The dtype is left to the model: its forward may cast (torch names any mismatch).
    device = model_device(model)
    return inputs if device is None or inputs.device == device else inputs.to(device)


class _Reached(Exception):
    """Stops the check's forward pass at the first convolution."""


def _conv_reads_input(model: nn.Module, conv: nn.Module | None, inputs: torch.Tensor) -> bool:
    """Whether ``conv`` receives ``inputs`` itself (its values, same shape) in a forward.

    Runs only when the shapes disagree with the first convolution, and only up to that
    convolution (a hook stops the pass there), on the first image; the buffers of a model
    in training mode are put back. A model that fails before reaching it counts as
    reading its input (the channel message is then the useful one); one that finishes
    without calling it does not.
    """
    if conv is None or inputs.device.type == "meta":
        return True
    owner = threading.get_ident()
    seen: list[bool] = []
    sample = inputs[:1]

    def check(module: nn.Module, args: tuple) -> None:
        if threading.get_ident() != owner:
            return
        first = args[0] if args else None
        seen.append(
            isinstance(first, torch.Tensor)
            and first.shape == sample.shape
            and bool(torch.equal(first.to(sample.dtype), sample.to(first.device)))
        )
        raise _Reached

    saved = [(b, b.clone()) for b in model.buffers()] if model.training else []
    handle = conv.register_forward_pre_hook(check)
    try:
        with torch.inference_mode(False), torch.no_grad():
            model(sample.clone() if sample.is_inference() else sample)
    except _Reached:
        pass
    except Exception:  # noqa: BLE001 - the model cannot run this input anyway
        return True
    finally:
        handle.remove()
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
    return bool(seen) and seen[0]  # a forward that never reached it: it reads no input


def _channel_fits(first: int, channels: int | None) -> bool:
    return channels is None or first == channels
