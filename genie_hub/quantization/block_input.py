"""A residual block's input, quantized once where the block starts (issue #10, fix 5).

genie_hub quantizes activations where they are read: each op owns its input quantizer. A block whose skip
connection is a module (ResNet's and RegNet's `nn.Identity` shortcut, wrapped as a `QuantShortcut`) therefore
adds a quantized tensor. transformers' MobileNetV2, EfficientNet and ConvNeXt blocks add their input back with a
bare `x + f(x)`, so the addend would stay in floating point: an integer deployment cannot add an FP tensor, and
the reference, which quantizes every block's output (the next block's input and skip), does not.

So such a block (`Unit.adds_input`) gets a forward pre-hook that quantizes its input with its first op's input
quantizer; the first op and the skip connection then read the same quantized tensor. The first op reads it
again through its own quantizer: the shared quantizer hands back that very tensor (QDrop mask included), and a
copy of it (MobileNetV2's TF-style zero padding makes one, even of zero width) quantizes to the same values
(during reconstruction that copy draws its own QDrop mask, so the first op sees an FP element with chance
qdrop_prob² instead of qdrop_prob; the skip sees qdrop_prob). The op records the block
(`LayerSpec.quantizes_input_of`), so a checkpoint reinstalls the hook on load.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import QuantizedOp


class BlockInputQuantization:
    """The forward pre-hook: replace the block's first positional input by `op.quantize_input(input)`.

    A callable object rather than a closure, so `copy.deepcopy` of a model hands the copy's hook the copy's op."""

    def __init__(self, op: QuantizedOp):
        self.op = op

    def __call__(self, block: nn.Module, args: tuple):
        if not args or not isinstance(args[0], torch.Tensor):
            return None
        return (self.op.quantize_input(args[0]), *args[1:])


def quantize_block_input(block: nn.Module, block_name: str, op: QuantizedOp) -> None:
    """Quantize `block`'s input with `op`'s input quantizer, at the block's entry (see the module docstring)."""
    if op.act_bits is None:
        raise ValueError(f"{block_name}: its first op has an FP input, so there is no grid to quantize the block "
                         "input to.")
    release_block_input(op, block)
    if op.input_quantizer is not None:
        op.input_quantizer.shared = True  # the first op then gets the hook's very output back
    op.quantizes_input_of = block_name
    block.register_forward_pre_hook(BlockInputQuantization(op))


def release_block_input(op: QuantizedOp, block: nn.Module) -> None:
    """Remove `op`'s hook from `block` (dequantizing: the block then adds its FP input again)."""
    for key, hook in list(block._forward_pre_hooks.items()):
        if isinstance(hook, BlockInputQuantization) and hook.op is op:
            del block._forward_pre_hooks[key]
    op.quantizes_input_of = None
