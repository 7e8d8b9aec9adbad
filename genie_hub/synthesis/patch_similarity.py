"""Patch-similarity entropy: a synthesis prior for models without BatchNorm (ViT, DeiT, Swin, ConvNeXt).

A BN-free model stores no statistics of its training data, but it still separates real images into patches
that differ from each other: on real photos, the cosine similarities between the patch features of a
transformer layer spread over a wide range, while on noise or flat images they pile up near one value.
PSAQ-ViT (Li et al., ECCV 2022) synthesizes images by *maximizing the differential entropy* of those
similarities, estimated with a Gaussian kernel density estimate. genie_hub applies it to every repeated
block of the model (the transformer layers of ViT/DeiT, the Swin blocks, the ConvNeXt layers: the elements
of the innermost `nn.ModuleList`/`nn.Sequential` whose elements each hold two or more Conv2d/Linear ops,
found without class names). A block's output is read as tokens: [B, N, D] as is, a [B, C, H, W] map as H*W
tokens of C features.

Per block and image: cosine similarity between every pair of tokens (upper triangle, no diagonal), a
Gaussian KDE evaluated at `KDE_POINTS` points, differential entropy by the trapezoidal rule; the loss is
minus the mean entropy, summed over blocks. PSAQ-ViT uses bandwidth 0.01 and 10 points from the smallest to
the largest similarity: when the similarities spread over more than a few bandwidths, that grid samples
narrow spikes at its end points (which are data points) and the estimate swings by orders of magnitude, and
a tight cluster scores about 0 instead of very negative, because the density's mass outside [min, max] is
not integrated. Here the grid reaches 3 bandwidths past the data, and the bandwidth is 0.01 or the grid
spacing, whichever is larger, so the trapezoid integrates the density it estimates.
Blocks with many tokens use a fixed, evenly strided subset of `MAX_TOKENS` of them (memory grows with its
square).

Plus PSAQ-ViT's class-confidence term, without labels: each image's prediction should be confident (low
entropy) while the batch covers many classes (high entropy of the mean prediction), so images do not
collapse onto one class. Genie-D's generator + latents, swing convolution (the patch embedding is a strided
conv) and per-image mean/std prior apply unchanged.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from ..adapters import logits_of
from ..hooks import TemporaryHooks
from .bn_stats import batchnorm_layers
from .prior import SynthesisPrior

OPS = (nn.Conv2d, nn.Linear)
KDE_BANDWIDTH = 0.01
KDE_POINTS = 32
MAX_TOKENS = 96
CONFIDENCE_WEIGHT = 1.0


def repeated_blocks(model: nn.Module) -> list[str]:
    """Names of the elements of the innermost ModuleLists/Sequentials whose elements all hold >= 2 ops."""
    def op_count(module: nn.Module) -> int:
        return sum(isinstance(m, OPS) for m in module.modules())

    lists = []
    for name, container in model.named_modules():
        if isinstance(container, (nn.ModuleList, nn.Sequential)):
            children = list(container.named_children())
            if len(children) >= 1 and all(op_count(child) >= 2 for _, child in children):
                lists.append((name, [f"{name}.{child}" if name else child for child, _ in children]))
    names = [n for n, _ in lists]
    innermost = [(n, kids) for n, kids in lists
                 if not any(o != n and o.startswith(n + ".") for o in names)]
    return [child for _, kids in innermost for child in kids]


MAX_EXTRA_TOKENS = 8
"""At most this many tokens besides the patches (class, distillation, register tokens) are dropped."""


def _tokens(output, patches: int | None = None) -> torch.Tensor | None:
    """The block's output as [B, N, D] patch tokens, or None if it is not a feature map or token sequence.

    A sequence with up to MAX_EXTRA_TOKENS more tokens than the model has patches (`patches`, the grid of its
    first conv, the patch embedding) leads with its class, distillation or register tokens: they are dropped.
    Without a patch count, a sequence one or two longer than a square is taken to lead with them."""
    while isinstance(output, (tuple, list)) and output:
        output = output[0]
    if hasattr(output, "last_hidden_state"):
        output = output.last_hidden_state
    if not isinstance(output, torch.Tensor) or not output.is_floating_point():
        return None
    if output.dim() == 4:
        return output.flatten(2).transpose(1, 2)
    if output.dim() == 3:
        count = output.shape[1]
        if patches is not None:
            extra = count - patches
            return output[:, extra:] if 0 < extra <= MAX_EXTRA_TOKENS else output
        for extra in (1, 2):  # ViT's class token, DeiT's class + distillation tokens: keep the patch tokens
            if not math.isqrt(count) ** 2 == count and math.isqrt(count - extra) ** 2 == count - extra:
                return output[:, extra:]
        return output
    return None


def similarity_entropy(tokens: torch.Tensor) -> torch.Tensor:
    """Mean over images of the differential entropy of the pairwise cosine similarities of `tokens` [B, N, D]."""
    tokens = tokens.float()
    count = tokens.shape[1]
    if count > MAX_TOKENS:
        tokens = tokens[:, torch.linspace(0, count - 1, MAX_TOKENS, device=tokens.device).long()]
        count = MAX_TOKENS
    unit = F.normalize(tokens, dim=-1, eps=1e-8)
    sims = unit @ unit.transpose(1, 2)
    rows, cols = torch.triu_indices(count, count, offset=1, device=tokens.device)
    values = sims[:, rows, cols]  # [B, P]
    low, high = values.min().detach(), values.max().detach()
    # The grid reaches 3 bandwidths past the data and its spacing never exceeds the bandwidth:
    # h >= (span + 6h) / (points - 1)  <=>  h >= span / (points - 7).
    bandwidth = torch.clamp((high - low) / (KDE_POINTS - 7), min=KDE_BANDWIDTH)
    grid = (low - 3 * bandwidth) + (high - low + 6 * bandwidth) * torch.linspace(0, 1, KDE_POINTS,
                                                                               device=values.device)
    diffs = grid.view(1, -1, 1) - values.unsqueeze(1)  # [B, points, P]
    density = torch.exp(-diffs.pow(2) / (2 * bandwidth**2)).mean(dim=2) / torch.sqrt(2 * math.pi * bandwidth**2)
    density = density + 1e-4
    return torch.trapezoid(-density * torch.log(density), grid, dim=-1).mean()


def confidence_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean per-image prediction entropy minus the entropy of the batch's mean prediction."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    p = log_p.exp()
    per_image = -(p * log_p).sum(dim=-1).mean()
    mean_p = p.mean(dim=0)
    batch = -(mean_p * torch.log(mean_p + 1e-12)).sum()
    return per_image - batch


class PatchSimilarityPrior(SynthesisPrior):
    """PSAQ-ViT's prior: diverse patch-to-patch similarities in every transformer (or LayerNorm CNN) block,
    plus confident, class-balanced predictions. For models without BatchNorm statistics."""

    name = "patch-similarity"
    description = ("the entropy of patch-to-patch feature similarities in every transformer block, maximized "
                   "(PSAQ-ViT's prior for models without BatchNorm), plus confident, class-balanced predictions")

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.blocks = repeated_blocks(model)

    @classmethod
    def applies_to(cls, model: nn.Module) -> bool:
        return not batchnorm_layers(model) and bool(repeated_blocks(model))

    @contextlib.contextmanager
    def attached(self, groups: int = 1) -> Iterator["PatchSimilarityPrior"]:
        patches: list[int] = []  # the patch grid of this forward, from the first conv's output

        def embedding_hook(module: nn.Module, args: tuple, output) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                patches[:] = [output.shape[-2] * output.shape[-1]]

        def block_hook(module: nn.Module, args: tuple, output) -> None:
            tokens = _tokens(output, patches[0] if patches else None)
            if tokens is not None and tokens.shape[1] >= 2:
                self.terms.append(torch.stack([-similarity_entropy(part) for part in tokens.chunk(groups)]))

        def model_hook(module: nn.Module, args: tuple, output) -> None:
            patches.clear()  # every forward starts from none: a compiled step then sees the same state each time
            logits = logits_of(output)
            if logits.dim() == 2 and logits.shape[0] > groups:  # a batch of one image has no batch entropy
                self.terms.append(torch.stack([CONFIDENCE_WEIGHT * confidence_loss(part)
                                               for part in logits.chunk(groups)]))

        with TemporaryHooks() as hooks:
            embedding = next((m for m in self.model.modules() if isinstance(m, nn.Conv2d)), None)
            if embedding is not None:
                hooks.post(embedding, embedding_hook)
            for name in self.blocks:
                hooks.post(self.model.get_submodule(name), block_hook)
            hooks.post(self.model, model_hook)
            yield self
