"""The frozen format: what a quantized op stores, defined once.

A frozen op is fully described by its `LayerSpec` (type, bit-widths, signedness of its input) and the shape
of the weight it replaces. From these two, `stored_tensors` gives the name suffix, dtype and shape of every
tensor the op holds (compressed-tensors names). Freezing and resuming (`layers.py`, `reconstruction.py`),
saving, loading and header validation (`genie_hub.checkpoint`) all read this one definition, so a new
stored tensor is declared here and nowhere else.

Values: weight = weight_scale * (code - weight_zero_point), codes packed by `packing.py`; input
x_q = input_scale * round(clamp(x / input_scale, q_min, q_max)). A `QuantAttention` (the two matmuls of an
attention module) has no weight and one such scale per quantized operand: `query_scale`, `key_scale`,
`value_scale` (signed grids); its fourth operand, the softmax probabilities, uses a fixed logarithmic grid
(`attention.quantize_probabilities`) and stores nothing.

Versions: 4 adds `quantizes_input_of` (a residual block's input quantized at its entry, `block_input.py`): a
reader of version 3 would ignore it and run that skip in FP, so it must refuse the file. 3 stores
`weight_zero_point` as int32, because a row's range is its own [min, max] and a row whose
weights all have one sign needs a zero point outside [0, 2^b - 1]; 1 and 2 stored it as uint8 within the
grid. Older versions still load (`stored_tensors(..., format_version)` describes them).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..config import MAX_BITS, MIN_BITS
from .packing import packed_width

FORMAT_VERSION = 4
MAX_ZERO_POINT = 2**24
"""Largest |weight_zero_point|: codes + zero point stay exact in float32 arithmetic."""

LAYER_TYPES = ("QuantConv2d", "QuantLinear", "QuantShortcut", "QuantAttention")
WEIGHTLESS_TYPES = ("QuantShortcut", "QuantAttention")
ACT_SCALES: dict[str, tuple[str, ...]] = {"QuantAttention": ("query_scale", "key_scale", "value_scale")}
"""The stored activation scales of each type whose input is not one tensor (default: `input_scale`)."""
INPUT_SCALE_TYPES = ("QuantConv2d", "QuantLinear")
"""Types with a weight and one `input_scale`: the ops that may quantize their residual block's input."""
FORBIDDEN_SUFFIX = "weight"
"""No quantized op stores `<name>.weight`: no FP copy of a quantized weight, no integer codes under an FP name."""

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.int32: "I32", torch.uint8: "U8", torch.int64: "I64",
                      torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64", torch.int8: "I8",
                      torch.int16: "I16", torch.bool: "BOOL"}


@dataclass(frozen=True)
class LayerSpec:
    """One quantized op: its type, weight bits (None for a weightless shortcut), input bits (None = FP input)
    and whether its input grid is signed (None until calibrated, and for FP inputs)."""

    type: str
    weight_bits: int | None
    act_bits: int | None
    act_signed: bool | None = None
    quantizes_input_of: str | None = None
    """A residual block (module name) whose input this op's input grid quantizes once, at the block's entry, so
    the block's skip connection adds the quantized tensor its first op reads (`block_input.py`). Absent from the
    stored dict when None."""

    @property
    def has_weight(self) -> bool:
        return self.type not in WEIGHTLESS_TYPES

    @property
    def act_scales(self) -> tuple[str, ...]:
        """Suffixes of the stored activation scales (none for an FP input)."""
        return ACT_SCALES.get(self.type, ("input_scale",)) if self.act_bits is not None else ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["quantizes_input_of"] is None:
            del data["quantizes_input_of"]
        return data

    @classmethod
    def from_dict(cls, name: str, data: Any) -> "LayerSpec":
        """Parse and check one entry of a checkpoint's `layers`; ValueError says what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"layer '{name}' must map to a dict, got {type(data).__name__}.")
        kind = data.get("type")
        if kind not in LAYER_TYPES:
            raise ValueError(f"layer '{name}' has type {kind!r}; expected one of {', '.join(LAYER_TYPES)}.")
        weight_bits, act_bits, act_signed = data.get("weight_bits"), data.get("act_bits"), data.get("act_signed")
        if kind in WEIGHTLESS_TYPES:
            if weight_bits is not None:
                raise ValueError(f"layer '{name}' is a {kind} (no weight) but has weight_bits={weight_bits!r}.")
            check_bits(f"layer '{name}' act_bits", act_bits, allow_none=False)
        else:
            check_bits(f"layer '{name}' weight_bits", weight_bits, allow_none=False)
            check_bits(f"layer '{name}' act_bits", act_bits, allow_none=True)
        if kind == "QuantAttention" and act_signed is not True:
            raise ValueError(f"layer '{name}' is a QuantAttention, whose queries, keys and values are on signed grids, "
                             f"but act_signed is {act_signed!r}; expected true.")
        if act_bits is not None and not isinstance(act_signed, bool):
            raise ValueError(f"layer '{name}' quantizes its input (act_bits={act_bits}) but act_signed is "
                             f"{act_signed!r}; expected true or false.")
        block = data.get("quantizes_input_of")
        if block is not None and (kind not in INPUT_SCALE_TYPES or act_bits is None or not isinstance(block, str)
                                  or not block or not name.startswith(block + ".")):
            raise ValueError(
                f"layer '{name}' has quantizes_input_of={block!r}; expected the name of a module that contains it, "
                f"on a {' or '.join(INPUT_SCALE_TYPES)} that quantizes its input.")
        return cls(kind, weight_bits, act_bits, act_signed if act_bits is not None else None, block)


def check_bits(where: str, value: Any, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not MIN_BITS <= value <= MAX_BITS:
        raise ValueError(f"{where} is {value!r}; expected an integer from {MIN_BITS} to {MAX_BITS}"
                         + (" or null" if allow_none else "") + ".")


@dataclass(frozen=True)
class StoredTensor:
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def safetensors_dtype(self) -> str:
        return SAFETENSORS_DTYPES[self.dtype]


def stored_tensors(spec: LayerSpec, weight_shape: tuple[int, ...] | None,
                   format_version: int = FORMAT_VERSION) -> dict[str, StoredTensor]:
    """{suffix: StoredTensor} of a frozen op in `format_version`, in the order the op registers them."""
    tensors: dict[str, StoredTensor] = {}
    if spec.has_weight:
        if not weight_shape or len(weight_shape) < 2:
            raise ValueError(f"a {spec.type} needs a weight shape of rank >= 2, got {weight_shape!r}")
        rows, per_row = int(weight_shape[0]), math.prod(int(d) for d in weight_shape[1:])
        tensors["weight_packed"] = StoredTensor(torch.int32, (rows, packed_width(per_row, spec.weight_bits)))
        tensors["weight_scale"] = StoredTensor(torch.float32, (rows, 1))
        zero_point_dtype = torch.int32 if format_version >= 3 else torch.uint8
        tensors["weight_zero_point"] = StoredTensor(zero_point_dtype, (rows, 1))
        tensors["weight_shape"] = StoredTensor(torch.int64, (len(weight_shape),))
    for suffix in spec.act_scales:
        tensors[suffix] = StoredTensor(torch.float32, ())
    return tensors


def frozen_value_problems(name: str, spec: LayerSpec, weight_shape: tuple[int, ...] | None,
                          tensors: dict[str, torch.Tensor]) -> list[str]:
    """Values a frozen op can never hold after `freeze()` (a corrupt or edited checkpoint), as messages."""
    problems = []
    if spec.has_weight:
        stored_shape = tuple(int(v) for v in tensors["weight_shape"].tolist())
        if stored_shape != tuple(weight_shape):
            problems.append(f"{name}.weight_shape is {list(stored_shape)}, the layer is {list(weight_shape)}")
        if int(tensors["weight_zero_point"].abs().max()) > MAX_ZERO_POINT:
            problems.append(f"{name}.weight_zero_point exceeds {MAX_ZERO_POINT} in magnitude")
        problems += _scale_problems(f"{name}.weight_scale", tensors["weight_scale"])
    for suffix in spec.act_scales:
        problems += _scale_problems(f"{name}.{suffix}", tensors[suffix])
    return problems


MAX_SCALE = 1e6
"""Steps are learned and stored clamped to >= MIN_STEP > 0; a step above 1e6 would mean weights or activations
beyond 1e6 * 2^bits, which no calibrated vision model has: such a value is an edit or corruption."""


def _scale_problems(key: str, scale: torch.Tensor) -> list[str]:
    if not bool(torch.isfinite(scale).all()):
        return [f"{key} has non-finite values"]
    if bool((scale <= 0).any()):
        return [f"{key} has values <= 0 (min {float(scale.min()):.3g})"]
    if bool((scale > MAX_SCALE).any()):
        return [f"{key} has values above {MAX_SCALE:g} (max {float(scale.max()):.3g})"]
    return []
