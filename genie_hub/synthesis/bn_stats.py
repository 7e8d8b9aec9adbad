"""BatchNorm statistics matching: the loss Genie-D minimizes.

For every BatchNorm2d of the frozen model, the batch statistics of its *input* should equal the running
statistics stored during training. That is all the model remembers of its training data.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ..hooks import TemporaryHooks
from .prior import SynthesisPrior, no_prior_error


def batchnorm_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules()
            if isinstance(m, nn.BatchNorm2d) and m.track_running_stats and m.running_mean is not None]


def unmatched_batchnorm(model: nn.Module) -> list[str]:
    """The model's other BatchNorm layers with running statistics (BatchNorm1d after LeViT's Linear layers,
    BatchNorm3d): Genie's prior matches BatchNorm2d inputs only, as the reference does, so these are said, not
    matched."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and not isinstance(m, nn.BatchNorm2d) and m.track_running_stats and m.running_mean is not None]


def require_batchnorm(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The model's BatchNorm layers; `NoBatchNormError` (pointing to few-shot mode) when there are none."""
    layers = batchnorm_layers(model)
    if not layers:
        raise no_prior_error(model)
    return layers


def channel_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, biased variance) per group and channel of `x` [groups, batch, C, H, W], each [groups, C].

    On CPU, the BatchNorm kernel's statistics pass (two vectorized passes per channel): `torch.var_mean` over
    dims (1, 3, 4) runs a serial Welford reduction there, 4-20x slower (on EfficientNet-Lite0's 112 px maps,
    29 vs 7 ms per BN input; about a fifth of a synthesis step). Elsewhere `torch.var_mean`, which is fast."""
    if x.device.type == "cpu":
        stats = [torch.ops.aten.batch_norm_update_stats(group, None, None, 0.0) for group in x.unbind(0)]
        return torch.stack([mean for mean, _ in stats]), torch.stack([var for _, var in stats])
    var, mean = torch.var_mean(x, dim=(1, 3, 4), correction=0)
    return mean, var


class _BatchStatisticsLoss(torch.autograd.Function):
    """The loss of `bn_statistics_loss` with its gradient in closed form, for `groups` batches at once.

    d(loss)/dx is affine in x per channel: 2(mu - mu_run)/(C n) + 2(sigma - sigma_run)/(C (n - 1) sigma) * (x - mu).
    One fused pass computes it, where autograd through mean and std makes about ten passes over the BN input;
    with one BN per conv, that was about a third of a synthesis step at 224 px. `x` is [groups, batch, C, H, W]
    (several synthesis batches in one forward, each matched on its own statistics); the loss is one per group.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, running_mean: torch.Tensor, target_std: torch.Tensor) -> torch.Tensor:
        count = x[0].numel() // x.shape[2]
        correction = 1 if count > 1 else 0  # one value per channel: std 0, not 0/0
        mean, var = channel_statistics(x.float())  # [groups, C]
        std = (var * (count / (count - correction))).sqrt()
        channels = x.shape[2]
        loss = ((mean - running_mean).pow(2).sum(dim=1) + (std - target_std).pow(2).sum(dim=1)) / channels
        slope = torch.where(std > 0, 2 * (std - target_std) / (channels * (count - correction) * std),
                            torch.zeros_like(std))  # all values equal: no gradient through std
        offset = 2 * (mean - running_mean) / (channels * count) - slope * mean
        ctx.save_for_backward(x, offset, slope)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, offset, slope = ctx.saved_tensors
        shape = (x.shape[0], 1, -1, 1, 1)
        grad_x = torch.addcmul((offset * grad[:, None]).view(shape), x.float(), (slope * grad[:, None]).view(shape))
        return grad_x.to(x.dtype), None, None


def bn_statistics_loss(x: torch.Tensor, bn: nn.BatchNorm2d, groups: int | None = None) -> torch.Tensor:
    """||mu_batch - mu_run||^2 / C + ||sigma_batch - sqrt(var_run + 1e-6)||^2 / C (sigma: unbiased std).

    With `groups`, `x` holds that many equal batches one after another, and the result is one loss per batch
    (shape [groups]), each on its own batch statistics; without, one loss for all of `x`.

    Two degenerate cases stay finite: a channel that holds one value per batch (a batch of one image on a 1x1
    map) has std 0 instead of the unbiased 0/0, and a channel whose values are all equal (a dead channel, or
    activations that vanished in a badly scaled model) contributes no gradient through its std instead of the
    0/0 of d(std)/dx, which would turn every image into NaN."""
    target_std = torch.sqrt(bn.running_var.float() + 1e-6)
    losses = _BatchStatisticsLoss.apply(x.unflatten(0, (groups or 1, -1)), bn.running_mean.float(), target_std)
    return losses if groups else losses[0]


class BatchNormPrior(SynthesisPrior):
    """Genie-D's prior: the input statistics of every BatchNorm2d match its running statistics."""

    name = "bn-statistics"
    description = ("the model's own BatchNorm statistics (Genie-D: the input mean/std of every BatchNorm layer "
                   "matches its running statistics)")

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.layers = batchnorm_layers(model)

    @classmethod
    def applies_to(cls, model: nn.Module) -> bool:
        return bool(batchnorm_layers(model))

    @contextlib.contextmanager
    def attached(self, groups: int = 1) -> Iterator["BatchNormPrior"]:
        def hook(module: nn.BatchNorm2d, args: tuple) -> None:
            self.terms.append(bn_statistics_loss(args[0], module, groups))

        with TemporaryHooks() as hooks:
            for bn in self.layers:
                hooks.pre(bn, hook)
            yield self


def measure_bn_loss(model: nn.Module, images: torch.Tensor) -> float:
    """The BN-statistics loss (without the image prior) of a batch of images, for diagnostics and tests."""
    require_batchnorm(model)
    return BatchNormPrior(model).measure(images)[0]
