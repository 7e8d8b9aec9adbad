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

from ..adapters import model_logits
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


def reflect_index(size: int, offset: torch.Tensor) -> torch.Tensor:
    """The rows (or columns) `swing_reference` reads along an axis of `size` at `offset` (a 0-d integer tensor in
    {0, 1, 2}): i + offset - 1, reflected at both borders."""
    index = (torch.arange(size, device=offset.device) + (offset - 1)).abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def swing_by_tensor(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """`swing(x, *offsets)` with `offsets` a tensor [2], as gathers: what torch.compile traces, so that a compiled
    step takes the offsets as an input instead of compiling a graph for each of the 9 pairs at every strided conv
    (with `.tolist()` in the graph it would also break there)."""
    if min(x.shape[-2:]) <= 1:  # replicate padding: the definition's only other case, in int offsets
        return swing_reference(x, *(int(o) for o in offsets))
    rows, cols = x.dim() - 2, x.dim() - 1
    x = torch.index_select(x, rows, reflect_index(x.shape[rows], offsets[0]))
    return torch.index_select(x, cols, reflect_index(x.shape[cols], offsets[1]))


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


class DrawnSwing:
    """Swing for a compiled synthesis step: the offsets of a whole step are drawn before it (`draw`), into a
    tensor that the hooks read (`swing_by_tensor`), so the compiled graph has them as an input.

    The draws are those `swing_convolutions` makes one conv at a time (the same generator, the same order: one
    forward of a single image finds the strided convs that swing, in the order they run), so a compiled step
    swings exactly as the eager one does.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, rngs: Sequence[torch.Generator]):
        """`example`: one input image (batch of one) of the synthesis size, on the model's device."""
        self.rngs = list(rngs)
        self.device = example.device
        self.offsets: torch.Tensor | None = None  # [len(rngs), swings per forward, 2], the current step's
        self._position = 0
        swings = [0]

        def count(module: nn.Module, args: tuple) -> None:
            swings[0] += min(args[0].shape[-2:]) >= SWING_MIN_SIZE

        with TemporaryHooks() as hooks, torch.no_grad():
            for conv in strided_convs(model):
                hooks.pre(conv, count)
            model_logits(model, example)
        self.swings_per_forward = swings[0]

    def draw(self) -> None:
        """The offsets of the next forward, from each batch's generator."""
        self.offsets = torch.stack([torch.randint(0, 3, (self.swings_per_forward, 2), generator=rng)
                                    for rng in self.rngs]).to(self.device)
        self._position = 0

    def rewind(self) -> None:
        """Read the current offsets from the first swing again (a step that is run again)."""
        self._position = 0

    @contextlib.contextmanager
    def attached(self, model: nn.Module) -> Iterator["DrawnSwing"]:
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            x = args[0]
            if min(x.shape[-2:]) < SWING_MIN_SIZE:
                return None
            offsets = self.offsets[:, self._position]
            self._position += 1
            if len(self.rngs) > 1:
                x = torch.cat([swing_by_tensor(part, pair) for part, pair in zip(x.chunk(len(self.rngs)), offsets)])
            else:
                x = swing_by_tensor(x, offsets[0])
            return (x, *args[1:])

        with TemporaryHooks() as hooks:
            for conv in strided_convs(model):
                hooks.pre(conv, hook)
            yield self
