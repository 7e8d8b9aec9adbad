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


# Nearest upsampling x2 then a 3x3 conv (padding 1) is a transposed conv with stride 2, padding 1 and a 4x4
# kernel: output row 2i+a reads upsampled rows 2i+a-1..2i+a+1, i.e. input rows (i-1, i, i) for a = 0 and
# (i, i, i+1) for a = 1, so each input row meets 2 of the output's 4 phases with a sum of the 3x3 kernel's
# rows. TRANSPOSED_TAPS[k] says which 3x3 rows (columns) add up to tap k of the 4x4 kernel.
TRANSPOSED_TAPS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def upsample2x_conv3x3(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """conv(nearest_upsample_x2(x)) for a 3x3, stride-1, padding-1 conv, as one transposed conv.

    The same function (up to float rounding), at 4/9 of the multiply-adds and without the 4x larger upsampled
    tensor and its gradient: the generator's two upsample+conv pairs were most of a synthesis step on CPU.
    """
    taps = TRANSPOSED_TAPS.to(conv.weight)
    kernel = torch.einsum("pk,oikl,ql->iopq", taps, conv.weight, taps)  # [in, out, 4, 4], as conv_transpose2d takes
    return F.conv_transpose2d(x, kernel, conv.bias, stride=2, padding=1)


def _is_plain_3x3(conv: nn.Conv2d) -> bool:
    return (tuple(conv.kernel_size) == (3, 3) and tuple(conv.stride) == (1, 1) and tuple(conv.padding) == (1, 1)
            and tuple(conv.dilation) == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


def upsample_conv(x: torch.Tensor, conv: nn.Conv2d, size: tuple[int, int]) -> torch.Tensor:
    """conv(nearest_upsample(x, size)): the fused form when `size` doubles x, the plain one otherwise."""
    if tuple(size) == (2 * x.shape[-2], 2 * x.shape[-1]) and _is_plain_3x3(conv):
        return upsample2x_conv3x3(x, conv)
    return conv(F.interpolate(x, size=size, mode="nearest"))


class Generator(nn.Module):
    """Linear -> BN -> up x2 -> conv3x3 -> BN -> LeakyReLU -> up -> conv3x3 -> Tanh -> BN(affine=False).

    Works for any (height, width, channels): the seed map is ceil(size/4) and the last upsampling goes
    straight to the target size. Its BNs always use batch statistics (they normalize the batch being
    synthesized, they are not a model being trained), so it is kept in train mode. Each upsample+conv pair
    runs as `upsample_conv` (the same function, about twice as fast when the upsampling doubles the size).
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
        x = F.leaky_relu(self.bn1(upsample_conv(x, self.conv1, (2 * x.shape[-2], 2 * x.shape[-1]))), 0.2)
        x = upsample_conv(x, self.conv2, self.size)
        return self.target.place(self.bn_out(torch.tanh(x)))


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
