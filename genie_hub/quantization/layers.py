"""Quantized ops: Conv2d, Linear and the parameter-free residual shortcut (attention matmuls: `attention.py`).

Each op has two states:
- *reconstruction*: a `WeightQuantizer` (learned step + soft rounding) and an `ActQuantizer` at its input,
  both trainable; built from the FP module with `from_float`.
- *frozen*: exactly the tensors `format.stored_tensors` declares (integer codes packed into int32, per-channel
  scale and zero point, a fixed input scale), which is also what a checkpoint stores; `to_frozen()` returns
  them, `load_frozen()` restores them (resume), `from_frozen()` builds an empty frozen op next to an FP
  module (loading). A quantized model in memory and the same model reloaded run the same code on the same
  numbers.
Fake quantization: the forward dequantizes and runs FP kernels (no integer speed-up).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .format import FORMAT_VERSION, LayerSpec, frozen_value_problems, stored_tensors
from .packing import pack_codes, unpack_codes
from .quantizers import ActQuantizer, WeightQuantizer, act_range_bounds


class QuantizedOp(nn.Module):
    """Shared machinery: input quantization and the frozen packed-weight representation."""

    has_weight = True
    float_type: type[nn.Module] = nn.Module  # the FP module type this op replaces

    def __init__(self, weight_bits: int | None, act_bits: int | None, act_signed: bool | None = None,
                 weight_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.weight_bits = weight_bits
        self.act_bits = act_bits
        self.act_signed = act_signed
        self.weight_shape_tuple = tuple(weight_shape) if weight_shape is not None else None
        self.weight_quantizer: WeightQuantizer | None = None
        self.input_quantizer: ActQuantizer | None = None
        self.quantizes_input_of: str | None = None  # set by block_input.quantize_block_input
        self.frozen = False
        self._weight_cache: tuple | None = None

    # ---- construction ------------------------------------------------------------------------------------
    @classmethod
    def like(cls, module: nn.Module, spec: LayerSpec) -> "QuantizedOp":
        """An op with the geometry of the FP `module` and the bits of `spec`, in neither state yet."""
        raise NotImplementedError

    @classmethod
    def from_frozen(cls, module: nn.Module, spec: LayerSpec, format_version: int = FORMAT_VERSION) -> "QuantizedOp":
        """A frozen op with empty stored tensors of `format_version` (on the FP module's device, e.g. meta before
        loading), sharing the FP module's bias parameter."""
        op = cls.like(module, spec)
        if getattr(module, "bias", None) is not None:
            op.bias = module.bias
        weight = getattr(module, "weight", None)
        op._allocate_frozen(device=weight.device if weight is not None else None, format_version=format_version)
        return op

    @classmethod
    def from_float(cls, module: nn.Module, weight_bits: int, input_quantizer: ActQuantizer | None,
                   method: str = "lp") -> "QuantizedOp":
        """The reconstruction state from an FP Conv2d/Linear: FP bias, trainable weight quantizer, the given
        (possibly shared) input quantizer."""
        act_bits = input_quantizer.bits if input_quantizer is not None else None
        op = cls.like(module, LayerSpec(cls.__name__, weight_bits, act_bits))
        op.to(module.weight.device)
        if module.bias is not None:
            op.bias = nn.Parameter(module.bias.detach().clone(), requires_grad=False)
        op.weight_quantizer = WeightQuantizer(module.weight, weight_bits, method).to(module.weight.device)
        op.input_quantizer = input_quantizer
        return op

    def _empty_float(self, device) -> nn.Module:
        """An FP module of this op's geometry (weights uninitialized)."""
        raise NotImplementedError

    def to_float(self) -> nn.Module:
        """The FP module with the dequantized weight and the bias (input quantization dropped)."""
        module = self._empty_float(self.weight_scale.device)
        with torch.no_grad():
            module.weight.copy_(self.quantized_weight())
            if self.bias is not None:
                module.bias.copy_(self.bias)
        return module

    # ---- frozen representation -------------------------------------------------------------------------
    def spec(self) -> LayerSpec:
        return LayerSpec(type(self).__name__, self.weight_bits, self.act_bits, self.act_signed, self.quantizes_input_of)

    def stored_tensors(self, format_version: int = FORMAT_VERSION):
        return stored_tensors(self.spec(), self.weight_shape_tuple, format_version)

    def _allocate_frozen(self, device=None, format_version: int = FORMAT_VERSION) -> None:
        """Register the frozen buffers that `format.stored_tensors` declares (zeros; `weight_shape` filled in)."""
        for suffix, stored in self.stored_tensors(format_version).items():
            tensor = torch.zeros(stored.shape, dtype=stored.dtype, device=device)
            if suffix == "weight_shape":
                tensor = torch.tensor(self.weight_shape_tuple, dtype=stored.dtype, device=device)
            elif suffix == "weight_scale" or suffix in self.spec().act_scales:
                tensor = torch.ones(stored.shape, dtype=stored.dtype, device=device)
            self.register_buffer(suffix, tensor)
        self._drop_quantizers()
        self.frozen = True
        self._weight_cache = None

    @torch.no_grad()
    def freeze(self) -> None:
        """Hard-round and store integer codes; drop the trainable quantizers."""
        if self.frozen:
            return
        wq, act_quantizers = self.weight_quantizer, self.act_quantizers()
        if act_quantizers:
            self.act_signed = bool(next(iter(act_quantizers.values())).signed)
        self._allocate_frozen(device=(wq.floor.device if wq is not None
                                      else next(iter(act_quantizers.values())).step.log_step.device))
        if self.has_weight:
            self.weight_packed.copy_(pack_codes(wq.codes().to(torch.int64), self.weight_bits))
            self.weight_scale.copy_(wq.positive_step().detach())
            self.weight_zero_point.copy_(wq.zero_point)
        for suffix, quantizer in act_quantizers.items():
            getattr(self, suffix).copy_(quantizer.positive_step().detach().reshape(()))

    @torch.no_grad()
    def upgrade_frozen(self) -> None:
        """Convert stored tensors loaded from an older format version to the current dtypes (values unchanged),
        so the op saves in the current format."""
        for suffix, stored in self.stored_tensors().items():
            tensor = getattr(self, suffix)
            if tensor.dtype != stored.dtype:
                setattr(self, suffix, tensor.to(stored.dtype))
        self._weight_cache = None

    def to_frozen(self) -> dict[str, torch.Tensor]:
        """The stored tensors of a frozen op, by suffix (what a checkpoint and the resume state hold)."""
        if not self.frozen:
            raise RuntimeError("to_frozen() needs a frozen op: call freeze() first.")
        return {suffix: getattr(self, suffix) for suffix in self.stored_tensors()}

    @torch.no_grad()
    def load_frozen(self, tensors: dict[str, torch.Tensor], act_signed: bool | None, device=None) -> None:
        """Enter the frozen state with stored tensors (`to_frozen()` of an earlier run): resuming."""
        self.act_signed = act_signed
        self._allocate_frozen(device=device)
        for suffix, tensor in tensors.items():
            getattr(self, suffix).copy_(tensor)

    def frozen_problems(self, name: str) -> list[str]:
        """Values `freeze()` can never produce (after loading a checkpoint), as messages."""
        return frozen_value_problems(name, self.spec(), self.weight_shape_tuple, self.to_frozen())

    def integer_codes(self) -> torch.Tensor:
        """The unpacked integer weight codes, [out, in*kh*kw]."""
        per_row = math.prod(self.weight_shape_tuple[1:])
        return unpack_codes(self.weight_packed, self.weight_bits, per_row)

    def quantized_weight(self) -> torch.Tensor:
        if not self.frozen:
            return self.weight_quantizer()
        if torch.compiler.is_compiling():  # in a graph: dequantized there (fused), no Python cache to guard on
            return self._dequantized_weight()
        key = (id(self.weight_packed), self.weight_packed._version, self.weight_scale._version,
               self.weight_zero_point._version, self.weight_packed.device, self.weight_scale.dtype)
        # The cached tensor's own version too: an in-place edit of the returned weight (`op.weight.clamp_()`) is
        # not kept; the stored codes, which the checkpoint saves, stay what the model computes with. A weight made
        # under torch.inference_mode has no version and cannot be used by autograd: it serves that mode only.
        cached = self._weight_cache
        if cached is None or cached[0] != key or (not torch.is_inference_mode_enabled() if cached[1].is_inference()
                                                  else cached[1]._version != cached[2]):
            weight = self._dequantized_weight()
            self._weight_cache = (key, weight, None if weight.is_inference() else weight._version)
        return self._weight_cache[1]

    def _dequantized_weight(self) -> torch.Tensor:
        codes = self.integer_codes().to(self.weight_scale.dtype)
        weight = self.weight_scale * (codes - self.weight_zero_point.to(self.weight_scale.dtype))
        return weight.view(self.weight_shape_tuple)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight, read-only: model code reads `module.weight` (e.g. transformers' ViT embeddings
        take its dtype). A plain attribute computed from the stored tensors, never a Parameter or a buffer, so it
        is not in the state dict and a checkpoint never holds `<name>.weight`."""
        if not self.has_weight:
            raise AttributeError(f"{type(self).__name__} has no weight")
        weight = self.quantized_weight()
        # No version counter: an in-place edit could not be noticed, so hand out a copy (a compiled graph makes
        # its own tensor, and dynamo cannot trace is_inference).
        if not torch.compiler.is_compiling() and weight.is_inference():
            weight = weight.clone()
        # In the dtype of the op's float parameters: a model loaded with dtype=bfloat16 keeps its scales in fp32,
        # and ViT's embeddings cast pixel_values to `projection.weight.dtype` before their bf16 LayerNorms.
        return weight.to(self.bias.dtype) if self.bias is not None else weight

    def act_quantizers(self) -> dict[str, ActQuantizer]:
        """The trainable activation quantizers, by the suffix of the scale each one freezes into (what
        reconstruction learns, besides the weight)."""
        return {"input_scale": self.input_quantizer} if self.input_quantizer is not None else {}

    def _drop_quantizers(self) -> None:
        """Frozen ops keep stored tensors only."""
        self.weight_quantizer = None
        self.input_quantizer = None

    def quantize_frozen(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """x on the frozen grid of `scale` (this op's bits and signedness), as a checkpoint defines it."""
        q_min, q_max = act_range_bounds(self.act_bits, bool(self.act_signed))
        scale = scale.to(x.dtype)
        return torch.clamp(x / scale, q_min, q_max).round() * scale

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_bits is None:
            return x
        if not self.frozen:
            return self.input_quantizer(x)
        return self.quantize_frozen(x, self.input_scale)

    def _apply(self, fn, recurse=True):  # .to()/.cuda() invalidate the dequantized-weight cache
        self._weight_cache = None
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"weight_bits={self.weight_bits}, act_bits={self.act_bits}, act_signed={self.act_signed}, " \
               f"frozen={self.frozen}"


class QuantConv2d(QuantizedOp):
    float_type = nn.Conv2d

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
    def like(cls, conv: nn.Conv2d, spec: LayerSpec) -> "QuantConv2d":
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                   conv.groups, conv.bias is not None, conv.padding_mode, weight_bits=spec.weight_bits,
                   act_bits=spec.act_bits, act_signed=spec.act_signed)


    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantize_input(x)
        weight = self.quantized_weight().to(x.dtype)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        if self.padding_mode != "zeros":
            pad = [p for p in reversed(self.padding) for _ in range(2)]
            x = F.pad(x, pad, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def _empty_float(self, device) -> nn.Conv2d:
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, self.groups, self.bias is not None, self.padding_mode, device=device)


class QuantLinear(QuantizedOp):
    float_type = nn.Linear

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, weight_bits: int,
                 act_bits: int | None, act_signed: bool | None = None):
        super().__init__(weight_bits, act_bits, act_signed, (out_features, in_features))
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def like(cls, linear: nn.Linear, spec: LayerSpec) -> "QuantLinear":
        return cls(linear.in_features, linear.out_features, linear.bias is not None, weight_bits=spec.weight_bits,
                   act_bits=spec.act_bits, act_signed=spec.act_signed)


    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantize_input(x)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.quantized_weight().to(x.dtype), bias)

    def _empty_float(self, device) -> nn.Linear:
        return nn.Linear(self.in_features, self.out_features, self.bias is not None, device=device)


class QuantShortcut(QuantizedOp):
    """The parameter-free residual shortcut (an `nn.Identity`): quantizes its input, nothing else."""

    has_weight = False
    float_type = nn.Identity

    def __init__(self, *, act_bits: int, act_signed: bool | None = None, weight_bits: None = None):
        super().__init__(None, act_bits, act_signed)

    @classmethod
    def like(cls, identity: nn.Module, spec: LayerSpec) -> "QuantShortcut":
        return cls(act_bits=spec.act_bits, act_signed=spec.act_signed)

    @classmethod
    def from_float(cls, identity: nn.Module, input_quantizer: ActQuantizer) -> "QuantShortcut":
        op = cls.like(identity, LayerSpec("QuantShortcut", None, input_quantizer.bits))
        op.input_quantizer = input_quantizer
        return op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize_input(x)

    def to_float(self) -> nn.Identity:
        return nn.Identity()

