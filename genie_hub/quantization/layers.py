"""Quantized ops: Conv2d, Linear and the parameter-free residual shortcut.

Each op has two states:
- *reconstruction*: a `WeightQuantizer` (learned step + soft rounding) and an `ActQuantizer` at its input,
  both trainable; built from the FP module with `from_float`.
- *frozen*: integer codes packed into int32 plus per-channel scale and zero point, and a fixed input scale.
  This is exactly what a checkpoint stores (compressed-tensors names: `weight_packed`, `weight_scale`,
  `weight_zero_point`, `weight_shape`, `input_scale`), so a quantized model in memory and the same model
  reloaded run the same code on the same numbers.
Fake quantization: the forward dequantizes and runs FP kernels (no integer speed-up).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..checkpoint.packing import pack_codes, packed_width, unpack_codes
from .quantizers import ActQuantizer, WeightQuantizer, act_range_bounds


class QuantizedOp(nn.Module):
    """Shared machinery: input quantization and the frozen packed-weight representation."""

    has_weight = True

    def __init__(self, weight_bits: int | None, act_bits: int | None, act_signed: bool | None = None,
                 weight_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.weight_bits = weight_bits
        self.act_bits = act_bits
        self.act_signed = act_signed
        self.weight_shape_tuple = tuple(weight_shape) if weight_shape is not None else None
        self.weight_quantizer: WeightQuantizer | None = None
        self.input_quantizer: ActQuantizer | None = None
        self.frozen = False
        self._weight_cache: tuple | None = None

    def _take_float(self, module: nn.Module, weight_bits: int, input_quantizer: ActQuantizer | None,
                    method: str) -> "QuantizedOp":
        """Enter the reconstruction state from an FP Conv2d/Linear: FP bias, trainable weight quantizer."""
        self.to(module.weight.device)
        if module.bias is not None:
            self.bias = nn.Parameter(module.bias.detach().clone(), requires_grad=False)
        self.weight_quantizer = WeightQuantizer(module.weight, weight_bits, method).to(module.weight.device)
        self.input_quantizer = input_quantizer
        return self

    # ---- frozen representation -------------------------------------------------------------------------
    def _allocate_frozen(self, device=None) -> None:
        """Create the frozen buffers (empty), e.g. on the meta device before a checkpoint is loaded."""
        if self.has_weight:
            rows = self.weight_shape_tuple[0]
            per_row = math.prod(self.weight_shape_tuple[1:])
            self.register_buffer("weight_packed", torch.zeros(rows, packed_width(per_row, self.weight_bits),
                                                              dtype=torch.int32, device=device))
            self.register_buffer("weight_scale", torch.ones(rows, 1, device=device))
            self.register_buffer("weight_zero_point", torch.zeros(rows, 1, dtype=torch.uint8, device=device))
            self.register_buffer("weight_shape", torch.tensor(self.weight_shape_tuple, dtype=torch.int64,
                                                              device=device))
        if self.act_bits is not None:
            self.register_buffer("input_scale", torch.ones((), device=device))
        self.frozen = True

    @torch.no_grad()
    def freeze(self) -> None:
        """Hard-round and store integer codes; drop the trainable quantizers."""
        if self.frozen:
            return
        wq, aq = self.weight_quantizer, self.input_quantizer
        self._allocate_frozen(device=(wq.step.device if wq is not None else aq.step.device))
        if self.has_weight:
            self.weight_packed.copy_(pack_codes(wq.codes().to(torch.int64), self.weight_bits))
            self.weight_scale.copy_(wq.positive_step().detach())
            self.weight_zero_point.copy_(wq.zero_point.to(torch.uint8))
        if self.act_bits is not None:
            self.act_signed = bool(aq.signed)
            self.input_scale.copy_(aq.positive_step().detach().reshape(()))
        self.weight_quantizer = None
        self.input_quantizer = None

    def integer_codes(self) -> torch.Tensor:
        """The unpacked integer weight codes, [out, in*kh*kw]."""
        per_row = math.prod(self.weight_shape_tuple[1:])
        return unpack_codes(self.weight_packed, self.weight_bits, per_row)

    def quantized_weight(self) -> torch.Tensor:
        if not self.frozen:
            return self.weight_quantizer()
        key = (id(self.weight_packed), self.weight_packed._version, self.weight_scale._version,
               self.weight_zero_point._version, self.weight_packed.device, self.weight_scale.dtype)
        if self._weight_cache is None or self._weight_cache[0] != key:
            codes = self.integer_codes().to(self.weight_scale.dtype)
            weight = (self.weight_scale * (codes - self.weight_zero_point.to(self.weight_scale.dtype)))
            self._weight_cache = (key, weight.view(self.weight_shape_tuple))
        return self._weight_cache[1]

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_bits is None:
            return x
        if not self.frozen:
            return self.input_quantizer(x)
        q_min, q_max = act_range_bounds(self.act_bits, bool(self.act_signed))
        scale = self.input_scale.to(x.dtype)
        return torch.clamp(x / scale, q_min, q_max).round() * scale

    def _apply(self, fn, recurse=True):  # .to()/.cuda() invalidate the dequantized-weight cache
        self._weight_cache = None
        return super()._apply(fn, recurse)

    def layer_bits(self) -> dict:
        return {"type": type(self).__name__, "weight_bits": self.weight_bits, "act_bits": self.act_bits,
                "act_signed": self.act_signed}

    def extra_repr(self) -> str:
        return f"weight_bits={self.weight_bits}, act_bits={self.act_bits}, act_signed={self.act_signed}, " \
               f"frozen={self.frozen}"


class QuantConv2d(QuantizedOp):
    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *, weight_bits: int,
                 act_bits: int | None, act_signed: bool | None = None):
        kernel_size = nn.modules.utils._pair(kernel_size)
        super().__init__(weight_bits, act_bits, act_signed,
                         (out_channels, in_channels // groups, *kernel_size))
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.dilation = nn.modules.utils._pair(stride), nn.modules.utils._pair(dilation)
        self.padding = padding if isinstance(padding, str) else nn.modules.utils._pair(padding)
        self.groups, self.padding_mode = groups, padding_mode
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_bits: int, input_quantizer: ActQuantizer | None,
                   method: str = "lp") -> "QuantConv2d":
        op = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                 conv.groups, conv.bias is not None, conv.padding_mode, weight_bits=weight_bits,
                 act_bits=input_quantizer.bits if input_quantizer is not None else None)
        return op._take_float(conv, weight_bits, input_quantizer, method)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantize_input(x)
        weight = self.quantized_weight().to(x.dtype)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        if self.padding_mode != "zeros":
            pad = [p for p in reversed(self.padding) for _ in range(2)]
            x = F.pad(x, pad, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def to_float(self) -> nn.Conv2d:
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, self.groups, self.bias is not None, self.padding_mode,
                         device=self.weight_scale.device)
        with torch.no_grad():
            conv.weight.copy_(self.quantized_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv


class QuantLinear(QuantizedOp):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, weight_bits: int,
                 act_bits: int | None, act_signed: bool | None = None):
        super().__init__(weight_bits, act_bits, act_signed, (out_features, in_features))
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_bits: int, input_quantizer: ActQuantizer | None,
                   method: str = "lp") -> "QuantLinear":
        op = cls(linear.in_features, linear.out_features, linear.bias is not None, weight_bits=weight_bits,
                 act_bits=input_quantizer.bits if input_quantizer is not None else None)
        return op._take_float(linear, weight_bits, input_quantizer, method)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantize_input(x)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.quantized_weight().to(x.dtype), bias)

    def to_float(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                           device=self.weight_scale.device)
        with torch.no_grad():
            linear.weight.copy_(self.quantized_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


class QuantShortcut(QuantizedOp):
    """The parameter-free residual shortcut (an `nn.Identity`): quantizes its input, nothing else."""

    has_weight = False

    def __init__(self, *, act_bits: int, act_signed: bool | None = None, weight_bits: None = None):
        super().__init__(None, act_bits, act_signed)

    @classmethod
    def from_float(cls, identity: nn.Module, input_quantizer: ActQuantizer) -> "QuantShortcut":
        op = cls(act_bits=input_quantizer.bits)
        op.input_quantizer = input_quantizer
        return op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize_input(x)

    def to_float(self) -> nn.Identity:
        return nn.Identity()

    def layer_bits(self) -> dict:
        return {**super().layer_bits(), "weight_bits": None}


QUANTIZED_TYPES = {"QuantConv2d": QuantConv2d, "QuantLinear": QuantLinear, "QuantShortcut": QuantShortcut}
