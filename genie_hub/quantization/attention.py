"""Quantized attention: the two matmuls of an attention layer, with every operand quantized.

transformers computes attention in one function picked by the model config (its `AttentionInterface`);
genie_hub registers `attention_forward` there through the model's adapter (`ModelAdapter.route_attention`)
and attaches a `QuantAttention` as the child `quantized_matmul` of each module that calls it. The function
reads that child, so the model's own code (projections, head reshapes, Swin's relative position bias and
window masks) runs unchanged; a module without the child runs plain attention. A module with the child refuses
to run once the model is switched to another attention function (`attach`), which would skip the child silently.

Operands: queries, keys and values get per-tensor signed grids with learned steps (the `ActQuantizer` of every
Linear input: LSQ, QDrop during reconstruction). Scores, mask and softmax stay in floating point (FP32
softmax). The probabilities get a logarithmic grid, p_q = 2^(-k/r) for codes k = 0 .. 2^a-2 and 0 below that:
softmax outputs span orders of magnitude, mostly near 1/N with a few near 1, so a uniform 4-bit grid would zero
almost all of them. At 4 bits r = 1 (FQ-ViT's Log2 quantizer: every probability above 2^-14 within a factor of
sqrt(2)); with more bits the grid gets r codes per halving while still spanning 2^-16 .. 1 (r = 15 at 8 bits).
`benchmarks/probability_grid.py` (Fashion-MNIST ViT, Lp ranges, no reconstruction, 5000 test images): at W4A4
attention in FP 84.64 %, uniform on [0, 1] 79.68 %, this grid (= power of two there) 83.80 %; at W8A8 85.66 /
85.58 / 85.48 %, and a power-of-two grid 85.26 %. It has no parameter, so nothing about it is stored.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import GenieError, UnsupportedModelError
from .format import ACT_SCALES, LayerSpec
from .layers import QuantizedOp
from .quantizers import ActQuantizer

ATTENTION_CHILD = "quantized_matmul"
"""The name of the `QuantAttention` child of an attention module (its tensors: `<module>.quantized_matmul.*`)."""

PROBABILITY_OCTAVES = 16
"""The probability grid spans at least 2^-16 .. 1 (smaller probabilities add < 2e-5 of a value each)."""


def codes_per_octave(bits: int) -> int:
    """How many grid points each halving of a probability gets: 1 (a power-of-two grid) at 4-5 bits, more when
    the bits can span PROBABILITY_OCTAVES more finely (15 at 8 bits: any probability within 2.3 %)."""
    return max(1, (2**bits - 2) // PROBABILITY_OCTAVES)


def quantize_probabilities(probs: torch.Tensor, bits: int) -> torch.Tensor:
    """Probabilities on the grid {2^(-k/r) : k = 0 .. 2^bits - 2} and 0, r = `codes_per_octave(bits)`;
    straight-through gradient."""
    per_octave = codes_per_octave(bits)
    code = torch.clamp(torch.round(-per_octave * torch.log2(probs)), 0, 2**bits - 1)  # p = 0 -> the zero code
    quantized = torch.where(code >= 2**bits - 1, torch.zeros_like(probs), torch.exp2(-code / per_octave))
    return probs + (quantized - probs).detach()


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
              scaling: float | None, dropout: float, training: bool,
              quantize_probs: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scaling + mask) v for [batch, heads, tokens, head_dim] operands (transformers' eager
    attention, with a hook on the probabilities); returns ([batch, tokens, heads, head_dim], probabilities)."""
    if key.shape[1] != query.shape[1]:  # grouped key/value heads
        repeats = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(repeats, dim=1), value.repeat_interleave(repeats, dim=1)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(-2, -1)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores + attention_mask
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=training)
    if quantize_probs is not None:
        probs = quantize_probs(probs)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                      **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention function genie_hub routes a model's attention through (transformers' signature)."""
    op = module._modules.get(ATTENTION_CHILD)
    if isinstance(op, QuantAttention):
        return op(query, key, value, attention_mask, scaling, dropout)
    for record in _recorders:
        record(module)
    return attention(query, key, value, attention_mask, scaling, dropout, module.training)


_recorders: list[Callable[[nn.Module], None]] = []


@contextlib.contextmanager
def recording_attention(record: Callable[[nn.Module], None]) -> Iterator[None]:
    """Call `record(module)` for every module whose attention runs through `attention_forward` (and has no
    quantized child yet) while the context is open: how `prepare` finds attention modules without class names."""
    _recorders.append(record)
    try:
        yield
    finally:
        _recorders.remove(record)


def check_attention_module(name: str, module: nn.Module) -> None:
    """Only bidirectional attention (every vision classifier's) is computed here: refuse a causal one."""
    if getattr(module, "is_causal", False):
        raise UnsupportedModelError(
            f"genie_hub cannot quantize the attention of '{name}' ({type(module).__name__}): it is causal, and "
            "genie_hub's quantized attention handles the bidirectional attention of image classifiers only. Keep "
            f"it in floating point with --override '{name}.{ATTENTION_CHILD}=/fp' or report the model.")


def attach(model: nn.Module, name: str, op: "QuantAttention", detour: Callable[[nn.Module], str | None]) -> None:
    """Attach `op` at `name` (`<attention module>.quantized_matmul`) and guard its attention module: a model
    switched to another attention function (`adapter.attention_detour` says why) would run plain attention and
    skip `op` without a sign, so the module refuses to run instead."""
    model.set_submodule(name, op)
    parent = model.get_submodule(name.rpartition(".")[0])
    if not any(isinstance(hook, functools.partial) and hook.func is _refuse_detour
               for hook in parent._forward_pre_hooks.values()):
        parent.register_forward_pre_hook(functools.partial(_refuse_detour, detour))


def _refuse_detour(detour: Callable[[nn.Module], str | None], module: nn.Module, args) -> None:
    if isinstance(module._modules.get(ATTENTION_CHILD), QuantAttention) and (why := detour(module)) is not None:
        raise GenieError(
            f"This {type(module).__name__}'s attention matmuls are quantized, and they run only in genie_hub's "
            f"attention function, but {why}.")


class QuantAttention(QuantizedOp):
    """Both matmuls of one attention module, attached as its `quantized_matmul` child (it replaces no module)."""

    has_weight = False
    float_type = None  # attached next to the module it serves, see `attention_forward`

    def __init__(self, *, act_bits: int):
        super().__init__(None, act_bits, True)  # queries, keys and values: signed grids
        self.query_quantizer: ActQuantizer | None = None
        self.key_quantizer: ActQuantizer | None = None
        self.value_quantizer: ActQuantizer | None = None

    @classmethod
    def like(cls, module: nn.Module, spec: LayerSpec) -> "QuantAttention":
        return cls(act_bits=spec.act_bits)

    @classmethod
    def for_bits(cls, act_bits: int, method: str = "lp") -> "QuantAttention":
        """The reconstruction state: three trainable signed quantizers (steps from their first input)."""
        op = cls(act_bits=act_bits)
        op.query_quantizer, op.key_quantizer, op.value_quantizer = (
            ActQuantizer(act_bits, signed=True, method=method) for _ in range(3))
        return op

    def act_quantizers(self) -> dict[str, ActQuantizer]:
        quantizers = (self.query_quantizer, self.key_quantizer, self.value_quantizer)
        if any(q is None for q in quantizers):
            return {}
        return dict(zip(ACT_SCALES["QuantAttention"], quantizers))

    def _drop_quantizers(self) -> None:
        super()._drop_quantizers()
        self.query_quantizer = self.key_quantizer = self.value_quantizer = None

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, scaling: float | None, dropout: float):
        if self.frozen:
            query, key, value = (self.quantize_frozen(t, getattr(self, suffix))
                                 for t, suffix in zip((query, key, value), ACT_SCALES["QuantAttention"]))
        else:
            query, key, value = self.query_quantizer(query), self.key_quantizer(key), self.value_quantizer(value)
        return attention(query, key, value, attention_mask, scaling, dropout, self.training,
                         lambda probs: quantize_probabilities(probs, self.act_bits))

    def to_float(self) -> None:
        """Nothing: dequantizing removes the child, and the module runs plain attention again."""
        return None
