"""Swing convolution: a random +-1 px shift before every strided conv, during synthesis only.

Strided convs see only one phase of their input grid; shifting it each iteration keeps the synthesized
images from locking onto that aliasing pattern. Implemented as temporary forward pre-hooks, so the model is
never modified: leaving the context removes every hook.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from ..hooks import TemporaryHooks


def swing(x: torch.Tensor, offset_h: int, offset_w: int) -> torch.Tensor:
    """Reflect-pad by 1 and crop back to the input size at (offset_h, offset_w) in {0, 1, 2}."""
    height, width = x.shape[-2:]
    mode = "reflect" if min(height, width) > 1 else "replicate"
    padded = F.pad(x, (1, 1, 1, 1), mode=mode)
    return padded[..., offset_h:offset_h + height, offset_w:offset_w + width]


def strided_convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and tuple(m.stride) != (1, 1)]


@contextlib.contextmanager
def swing_convolutions(model: nn.Module) -> Iterator[list[nn.Conv2d]]:
    """Within the context, every strided Conv2d of `model` swings its input (one offset per forward).

    Offsets come from torch's global RNG, which the synthesis loop seeds per batch.
    """

    def hook(module: nn.Module, args: tuple) -> tuple:
        offset_h, offset_w = torch.randint(0, 3, (2,)).tolist()
        return (swing(args[0], offset_h, offset_w), *args[1:])

    convs = strided_convs(model)
    with TemporaryHooks() as hooks:
        for conv in convs:
            hooks.pre(conv, hook)
        yield convs
