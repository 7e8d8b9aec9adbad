"""Where synthetic pixels should live: the image prior's targets, read from the model's input normalization.

Genie-D ends its generator in a BatchNorm without affine (per-channel batch mean 0, std 1) and pulls each
image's per-channel mean to 0 and std to 1. That is where real pixels land after a processor that
standardizes with its training data's statistics (ImageNet mean/std, or Fashion-MNIST's 0.286/0.353). Many
processors instead map the pixel range onto a fixed interval, e.g. (x - 127.5) / 127.5 (mean = std = 0.5):
there real photos have std ~0.5, and a std-1 synthetic image is about twice too large for every layer.

The rule: a processor std >= 0.45 (`InputSpec.std`: its normalization of pixels in [0, 1], whatever its rescale
factor) cannot be a pixel statistic of data in [0, 1] (that needs half the pixels at 0 and half at 1), so such
a processor maps a range; the targets are then natural-image statistics (ImageNet's per-channel mean and std,
the standard estimate for photos) carried through that mapping. Otherwise (data statistics, or no
normalization known) the targets are mean 0, std 1, as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapters import InputSpec
from .prior import zero_non_finite

NATURAL_MEAN = (0.485, 0.456, 0.406)
NATURAL_STD = (0.229, 0.224, 0.225)
RANGE_MAPPING_STD = 0.45


@dataclass(frozen=True)
class PixelTarget:
    """Per-channel target mean and std of synthetic images in the model's input space."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def standard(cls, channels: int) -> "PixelTarget":
        return cls((0.0,) * channels, (1.0,) * channels)

    def place(self, standardized: torch.Tensor) -> torch.Tensor:
        """Move images with per-channel mean 0 / std 1 (the generator's last BatchNorm) to the target."""
        if self.is_standard:
            return standardized
        mean = torch.tensor(self.mean, dtype=standardized.dtype, device=standardized.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=standardized.dtype, device=standardized.device).view(1, -1, 1, 1)
        return standardized * std + mean

    @property
    def is_standard(self) -> bool:
        return all(m == 0.0 for m in self.mean) and all(s == 1.0 for s in self.std)

    def to_dict(self) -> dict:
        return {"mean": [round(m, 6) for m in self.mean], "std": [round(s, 6) for s in self.std]}


def pixel_target(spec: InputSpec) -> PixelTarget:
    """The image prior's targets for a model with input `spec` (see the module docstring)."""
    channels = spec.channels
    if len(spec.mean) != channels or len(spec.std) != channels or all(s < RANGE_MAPPING_STD for s in spec.std):
        return PixelTarget.standard(channels)
    if channels == 3:
        natural_mean, natural_std = NATURAL_MEAN, NATURAL_STD
    else:  # grey or other channel counts: the average over RGB
        natural_mean = (sum(NATURAL_MEAN) / 3,) * channels
        natural_std = (sum(NATURAL_STD) / 3,) * channels
    return PixelTarget(tuple((n - m) / s for n, m, s in zip(natural_mean, spec.mean, spec.std)),
                       tuple(n / s for n, s in zip(natural_std, spec.std)))


def input_prior_loss(images: torch.Tensor, target: PixelTarget | None = None, groups: int | None = None
                     ) -> torch.Tensor:
    """Each image's per-channel spatial mean -> target mean and std -> target std (squared L2 / batch size).
    With `groups`, `images` holds that many equal batches and the result is one loss per batch."""
    if groups:
        return torch.stack([input_prior_loss(part, target) for part in images.chunk(groups)])
    target = target or PixelTarget.standard(images.shape[1])
    flat = images.float().flatten(2)
    if flat.requires_grad:
        flat.register_hook(zero_non_finite)  # a constant image has no std gradient (see bn_stats)
    mean, std = flat.mean(dim=2), flat.std(dim=2, unbiased=flat.shape[2] > 1)
    target_mean = torch.tensor(target.mean, dtype=flat.dtype, device=flat.device).view(1, -1)
    target_std = torch.tensor(target.std, dtype=flat.dtype, device=flat.device).view(1, -1)
    return ((mean - target_mean).pow(2).sum() + (std - target_std).pow(2).sum()) / images.shape[0]
