"""SS-CAM (Wang et al., 2020, "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature
Localization") and the sampled Score-CAM machinery it shares with IS-CAM."""

from __future__ import annotations

import torch
from torch import nn

from ..base import MethodError, register
from ..capture import Capture
from ..layouts import Arrangement
from ..targets import Targets, class_probabilities
from .families import _index_args, constant_channels, minmax_masks
from .scorecam import ScoreCAM


class SampledScoreCAM(ScoreCAM):
    r"""Score-CAM whose weight averages the class probability over ``samples`` changed masks:

    .. math:: w_k = \frac{1}{S}\sum_{s=1}^{S} \mathrm{softmax}\big(f(X \odot T_s(H_k))\big)_c

    A method gives :meth:`perturb` (:math:`T_s`). Every (image, channel, sample) triple is
    one row of the batched no-grad forwards, ``batch_size`` rows at a time, so a call costs
    one forward plus ``samples`` forwards per (image, non-constant channel). A constant
    :math:`H_k` is skipped (weight 0), as in Score-CAM.
    """

    def __init__(
        self, model: nn.Module, target_layer="auto", *, samples: int = 10, **options
    ) -> None:
        super().__init__(model, target_layer, **options)
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise MethodError(
                f"{type(self).__name__}: samples must be a positive int, got {samples!r}"
            )
        self.samples = samples

    def perturb(self, masks: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """(B, 1, *size) masks for rows whose sample numbers (0 .. samples-1) are ``sample``."""
        raise NotImplementedError

    def prepare(self, inputs: torch.Tensor) -> None:
        """Draw what :meth:`perturb` needs for this call (noise), once, before any forward."""

    def channel_weights(
        self,
        inputs: torch.Tensor,
        act: torch.Tensor,
        layer: int,
        arrangement: Arrangement,
        cap: Capture,
        targets: Targets,
    ) -> torch.Tensor:
        size, (n, c), s = tuple(inputs.shape[2:]), act.shape[:2], self.samples
        args = self._forward_args
        self.prepare(inputs)

        def run(rows: torch.Tensor, slots: torch.Tensor) -> object:
            channels, sample = slots.div(s, rounding_mode="floor"), slots.remainder(s)
            masks = self.perturb(minmax_masks(act, rows, channels, size), sample)
            masked = inputs.index_select(0, rows) * masks.to(inputs.dtype)
            return self.model(masked, *_index_args(args, rows, n))

        keep = (~constant_channels(act)).repeat_interleave(s, dim=1)  # (N, C * S) slots
        scores = self.evaluate(inputs, keep, cap, targets, run, class_probabilities)
        return scores.view(n, c, s).mean(-1)


@register("sscam", "ss-cam", "smoothscorecam")
class SSCAM(SampledScoreCAM):
    r"""SS-CAM: Score-CAM with Gaussian noise added to each mask, averaged over samples.

    .. math:: w_k = \frac{1}{S}\sum_{s=1}^{S}
              \mathrm{softmax}\big(f(X \odot (H_k + \delta_s))\big)_c, \quad
              \delta_s \sim \mathcal{N}(0, \sigma^2), \quad
              L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

    with :math:`H_k` Score-CAM's mask (the channel upsampled to the input size and min-max
    scaled to [0, 1]) and :math:`\sigma` = ``std`` in the mask's units. The S noise maps
    (one value per input pixel, shared by the input's channels) are drawn once per call
    from a generator seeded with ``seed`` on the model's device, and every image and channel
    uses the same S maps: a call is reproducible, and an image's map does not depend on the
    batch it is explained in or on ``batch_size``. (torchcam draws new noise for every
    image and channel; the expectation is the same.) With ``std=0`` SS-CAM is Score-CAM.
    Cost: one forward + ``samples`` no-grad forwards per (image, non-constant channel).

    Args:
        samples: noise samples S (default 35, as torchcam).
        std: the noise's standard deviation (default 2.0, as torchcam).
        seed: seeds the noise.
        batch_size: rows per forward pass.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer="auto",
        *,
        samples: int = 35,
        std: float = 2.0,
        seed: int = 0,
        **options,
    ) -> None:
        super().__init__(model, target_layer, samples=samples, **options)
        if not (isinstance(std, (int, float)) and std >= 0) or isinstance(std, bool):
            raise MethodError(f"SSCAM: std must be a number >= 0, got {std!r}")
        self.std, self.seed = float(std), seed
        self._noise: torch.Tensor | None = None

    def prepare(self, inputs: torch.Tensor) -> None:
        self._noise = ssc_noise(self.samples, inputs, self.std, self.seed)

    def perturb(self, masks: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        return masks + self._noise.index_select(0, sample).to(masks.dtype)  # type: ignore[union-attr]


def ssc_noise(samples: int, inputs: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    """SS-CAM's S noise maps, (S, 1, *size): ``std`` times standard normals from a generator
    seeded with ``seed`` on the inputs' device, in the maps' working precision."""
    gen = torch.Generator(device=inputs.device).manual_seed(seed)
    dtype = torch.float64 if inputs.dtype == torch.float64 else torch.float32
    shape = (samples, 1, *inputs.shape[2:])
    return torch.randn(shape, generator=gen, device=inputs.device, dtype=dtype) * std
