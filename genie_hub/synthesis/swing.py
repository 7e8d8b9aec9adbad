"""Swing convolution: a random +-1 px shift before every strided conv (that reads a map of `SWING_MIN_SIZE` px
or more), during synthesis only.

Strided convs see only one phase of their input grid; shifting it each iteration keeps the synthesized
images from locking onto that aliasing pattern. Implemented as temporary forward pre-hooks, so the model is
never modified: leaving the context removes every hook.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..hooks import TemporaryHooks


def swing_reference(x: torch.Tensor, offset_h: int, offset_w: int) -> torch.Tensor:
    """Reflect-pad by 1 and crop back to the input size at (offset_h, offset_w) in {0, 1, 2}: the definition."""
    height, width = x.shape[-2:]
    mode = "reflect" if min(height, width) > 1 else "replicate"
    padded = F.pad(x, (1, 1, 1, 1), mode=mode)
    return padded[..., offset_h:offset_h + height, offset_w:offset_w + width]


class _ReflectShift(torch.autograd.Function):
    """Shift by one along `dim` (shift -1: rows [1, 0, 1, ..., n-2]; +1: rows [1, ..., n-1, n-2]), reflecting at
    the border; one copy forward and one backward. Autograd through pad + crop instead allocates and zero-fills
    the padded size twice per backward, about a tenth of a 224 px synthesis step."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, shift: int) -> torch.Tensor:
        ctx.dim, ctx.shift = dim, shift
        n = x.shape[dim]
        if shift < 0:
            return torch.cat([x.narrow(dim, 1, 1), x.narrow(dim, 0, n - 1)], dim)
        return torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 2, 1)], dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        dim, n = ctx.dim, grad.shape[ctx.dim]
        zero = torch.zeros_like(grad.narrow(dim, 0, 1))
        if ctx.shift < 0:  # x[0] fed out[1]; x[1] fed out[0] and out[2]; x[n-1] fed nothing
            result = torch.cat([grad.narrow(dim, 1, n - 1), zero], dim)
            result.narrow(dim, 1, 1).add_(grad.narrow(dim, 0, 1))
        else:  # x[0] fed nothing; x[i] fed out[i-1]; x[n-2] also fed out[n-1]
            result = torch.cat([zero, grad.narrow(dim, 0, n - 1)], dim)
            result.narrow(dim, n - 2, 1).add_(grad.narrow(dim, n - 1, 1))
        return result, None, None


def swing(x: torch.Tensor, offset_h: int, offset_w: int) -> torch.Tensor:
    """`swing_reference(x, offset_h, offset_w)`, computed as reflected one-pixel shifts (no padded copy; offset 1
    on both axes is x itself). Maps one pixel high or wide (replicate padding there) take the definition."""
    if min(x.shape[-2:]) <= 1:
        return swing_reference(x, offset_h, offset_w)
    for dim, offset in ((x.dim() - 2, offset_h), (x.dim() - 1, offset_w)):
        if offset != 1:
            x = _ReflectShift.apply(x, dim, offset - 1)
    return x


SWING_MIN_SIZE = 14
"""Strided convs whose input map is smaller than this (on either side) do not swing. A 1 px shift of an S px map
moves its content by 1/S and reflects one border row in S: a small jitter at the sizes the method was designed
for, but at 5 or 3 px it replaces a fifth to a third of the map, and the deep BatchNorm statistics of a
low-resolution model cannot be matched under it (MobileNetV2 at 28 px, quick profile, 200 iterations:
BN-statistics loss 1.82 with every strided conv swinging, 0.37 from this size on, 0.018 with no swing). 14 px is
the smallest strided-conv input of the paper's models at 224 px (ResNet's last stage), so they swing exactly
as in the reference."""


def strided_convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and tuple(m.stride) != (1, 1)]


@contextlib.contextmanager
def swing_convolutions(model: nn.Module, rngs: Sequence[torch.Generator] = ()) -> Iterator[list[nn.Conv2d]]:
    """Within the context, every strided Conv2d of `model` swings its input (one offset per forward), where the
    input is at least `SWING_MIN_SIZE` px on each side.

    Offsets come from torch's global RNG, which the synthesis loop seeds per batch, or with `rngs` from one
    generator per synthesis batch in the forward (the batch is that many equal parts, each swung by its own
    offsets: the draws of each batch are those it would make alone).
    """

    def draw(rng: torch.Generator | None) -> list[int]:
        return torch.randint(0, 3, (2,), generator=rng).tolist()

    def hook(module: nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        if min(x.shape[-2:]) < SWING_MIN_SIZE:
            return None
        if len(rngs) > 1:
            x = torch.cat([swing(part, *draw(rng)) for part, rng in zip(x.chunk(len(rngs)), rngs)])
        else:
            x = swing(x, *draw(rngs[0] if rngs else None))
        return (x, *args[1:])

    convs = strided_convs(model)
    with TemporaryHooks() as hooks:
        for conv in convs:
            hooks.pre(conv, hook)
        yield convs
