"""The Genie-D generator: maps latent vectors to images in the model's normalized input space."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class Generator(nn.Module):
    """Linear -> BN -> up x2 -> conv3x3 -> BN -> LeakyReLU -> up -> conv3x3 -> Tanh -> BN(affine=False).

    Works for any (height, width, channels): the seed map is ceil(size/4) and the last upsampling goes
    straight to the target size. Its BNs always use batch statistics (they normalize the batch being
    synthesized, they are not a model being trained), so it is kept in train mode.
    """

    def __init__(self, latent_dim: int, channels: int, height: int, width: int, hidden: int = 128):
        super().__init__()
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
        return self.bn_out(torch.tanh(self.conv2(x)))
