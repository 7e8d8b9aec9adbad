"""How synthetic images are parameterized: Genie-D's generator + latents, or the pixels themselves.

`image_source(method, ...)` returns what the synthesis loop optimizes; `method` is `GenieConfig.synthesis_method`:
- "genie": a fresh `Generator` and fresh latents per batch, optimized together (shared generator weights tie
  the images of a batch together), with swing convolution;
- "pixels": the ZeroQ-style baseline: the pixels are the variables, no generator, no swing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .image_prior import PixelTarget


class Generator(nn.Module):
    """Linear -> BN -> up x2 -> conv3x3 -> BN -> LeakyReLU -> up -> conv3x3 -> Tanh -> BN(affine=False).

    Works for any (height, width, channels): the seed map is ceil(size/4) and the last upsampling goes
    straight to the target size. Its BNs always use batch statistics (they normalize the batch being
    synthesized, they are not a model being trained), so it is kept in train mode.
    """

    def __init__(self, latent_dim: int, channels: int, height: int, width: int, hidden: int = 128,
                 target: PixelTarget | None = None):
        super().__init__()
        self.target = target or PixelTarget.standard(channels)  # where the last BN's output is moved to
        self.size = (height, width)
        self.seed_size = (math.ceil(height / 4), math.ceil(width / 4))
        self.hidden = hidden
        self.project = nn.Linear(latent_dim, hidden * self.seed_size[0] * self.seed_size[1])
        self.bn0 = nn.BatchNorm2d(hidden)
        self.conv1 = nn.Conv2d(hidden, hidden // 2, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(hidden // 2)
        self.conv2 = nn.Conv2d(hidden // 2, channels, 3, padding=1)
        self.bn_out = nn.BatchNorm2d(channels, affine=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(z.shape[0], self.hidden, *self.seed_size)
        x = self.bn0(x)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.leaky_relu(self.bn1(self.conv1(x)), 0.2)
        x = F.interpolate(x, size=self.size, mode="nearest")
        return self.target.place(self.bn_out(torch.tanh(self.conv2(x))))


class DirectPixels(nn.Module):
    """The ZeroQ-style baseline's 'generator': the images themselves are the parameters."""

    def __init__(self, batch_size: int, channels: int, height: int, width: int, target: PixelTarget | None = None):
        super().__init__()
        target = target or PixelTarget.standard(channels)
        self.pixels = nn.Parameter(target.place(torch.randn(batch_size, channels, height, width)))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.pixels


@dataclass
class ImageSource:
    """`images = generator(latents)`; `per_image` and `shared` are the parameters optimized at the latent and
    generator learning rates; `swing` says whether strided convolutions swing during synthesis."""

    generator: nn.Module
    latents: torch.Tensor
    per_image: list[torch.Tensor]
    shared: list[torch.Tensor]
    swing: bool


SYNTHESIS_METHODS = ("genie", "pixels")


def image_source(method: str, batch_size: int, channels: int, height: int, width: int, latent_dim: int,
                 device: torch.device | str = "cpu", target: PixelTarget | None = None) -> ImageSource:
    """Fresh parameters for one synthesis batch (drawn from torch's global RNG, seeded per batch), starting
    where `target` (the image prior's per-channel mean/std, `image_prior.py`) says real pixels live."""
    if method == "pixels":
        pixels = DirectPixels(batch_size, channels, height, width, target).to(device)
        return ImageSource(pixels, torch.zeros(batch_size, 1, device=device), [pixels.pixels], [], swing=False)
    if method == "genie":
        generator = Generator(latent_dim, channels, height, width, target=target).to(device).train()
        latents = torch.randn(batch_size, latent_dim, device=device).requires_grad_(True)
        return ImageSource(generator, latents, [latents], list(generator.parameters()), swing=True)
    raise ValueError(f"unknown synthesis method {method!r}; expected one of {SYNTHESIS_METHODS}")
