"""BatchNorm statistics matching: the loss Genie-D minimizes.

For every BatchNorm2d of the frozen model, the batch statistics of its *input* should equal the running
statistics stored during training. That is all the model remembers of its training data.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ..errors import NoBatchNormError
from ..utils import model_logits


def batchnorm_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules()
            if isinstance(m, nn.BatchNorm2d) and m.track_running_stats and m.running_mean is not None]


def require_batchnorm(model: nn.Module) -> list[nn.BatchNorm2d]:
    layers = batchnorm_layers(model)
    if not layers:
        name = type(model).__name__
        raise NoBatchNormError(
            f"{name} has no BatchNorm2d layers with running statistics, so zero-shot synthesis has nothing to "
            "match (Genie-D distils images from BatchNorm statistics; models such as ViT, ConvNeXt or Swin use "
            "LayerNorm). Use few-shot mode instead and calibrate on real images: "
            "`genie_hub quantize MODEL --few-shot DATASET` or `quantize(model, calibration_images, config)`.")
    return layers


def bn_statistics_loss(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """||mu_batch - mu_run||^2 / C + ||sigma_batch - sqrt(var_run + 1e-6)||^2 / C (sigma: unbiased std)."""
    x = x.float()
    mean = x.mean(dim=(0, 2, 3))
    std = x.transpose(0, 1).flatten(1).std(dim=1, unbiased=True)
    channels = x.shape[1]
    target_std = torch.sqrt(bn.running_var.float() + 1e-6)
    return ((mean - bn.running_mean.float()).pow(2).sum() + (std - target_std).pow(2).sum()) / channels


def input_prior_loss(images: torch.Tensor) -> torch.Tensor:
    """Each image's per-channel spatial mean -> 0 and std -> 1 (squared L2 / batch size)."""
    flat = images.float().flatten(2)
    mean, std = flat.mean(dim=2), flat.std(dim=2)
    return (mean.pow(2).sum() + (std - 1).pow(2).sum()) / images.shape[0]


class BNStatisticsLoss:
    """Collects `bn_statistics_loss` over all BN layers during one forward pass."""

    def __init__(self, layers: list[nn.BatchNorm2d]):
        self.layers = layers
        self.terms: list[torch.Tensor] = []

    @contextlib.contextmanager
    def attached(self) -> Iterator["BNStatisticsLoss"]:
        def hook(module: nn.BatchNorm2d, args: tuple) -> None:
            self.terms.append(bn_statistics_loss(args[0], module))

        handles = [bn.register_forward_pre_hook(hook) for bn in self.layers]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def pop(self) -> torch.Tensor:
        """Sum of the terms collected since the last call."""
        total = torch.stack(self.terms).sum() if self.terms else torch.zeros(())
        self.terms = []
        return total


@torch.no_grad()
def measure_bn_loss(model: nn.Module, images: torch.Tensor) -> float:
    """The BN-statistics loss (without the prior) of a batch of images, for diagnostics and tests."""
    collector = BNStatisticsLoss(require_batchnorm(model))
    with collector.attached():
        model_logits(model, images)
    return float(collector.pop())
