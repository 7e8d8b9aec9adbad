"""`GenieHfQuantizer`: lets `transformers` load Genie checkpoints (`from_pretrained`, `pipeline`).

What happens in `from_pretrained` (transformers 5.x) once genie_hub has registered quant_method "genie":
1. `update_attn_implementation(config)` (the only hook that sees the model config before the weight files are
   resolved) removes the load guard `transformers_weights` from the config (see `save.py`).
2. The model is built from its config on the meta device; `_process_model_before_weight_loading` replaces
   each module listed in `quantization_config.layers` by the frozen Quant* module (empty buffers), so the
   model's parameter/buffer names are the checkpoint keys, then reads the safetensors *headers* and checks
   every tensor the model needs is there with the right shape and dtype (anything missing, unexpected or
   mis-shaped is a `CheckpointError`, never a silent random init).
3. transformers loads the tensors (integer tensors keep their dtype).
4. `_process_model_after_weight_loading` sets eval mode, checks the loaded buffers, and attaches
   `genie_layers` / `genie_config` to the model.
`model.dequantize()` replaces every Quant* module by its plain FP32 equivalent (`to_float`, shortcuts become
`nn.Identity`): weights are the dequantized ones, activation quantization is dropped.
"""

from __future__ import annotations

import math
import os
import re

import torch
from torch import nn
from transformers.quantizers import HfQuantizer

from ..errors import CheckpointError
from .config import GUARD_KEY, GenieQuantizationConfig, is_guard
from .safetensors_check import FLOAT_DTYPES, read_headers

_TORCH_TO_ST = {torch.int32: "I32", torch.uint8: "U8", torch.int64: "I64", torch.int8: "I8", torch.int16: "I16",
                torch.bool: "BOOL"}
_FP_TYPES = {"QuantConv2d": nn.Conv2d, "QuantLinear": nn.Linear, "QuantShortcut": nn.Identity}
_FROZEN_BUFFERS = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape")


def _prefix_mapper(model: nn.Module, names) -> callable:
    """Map checkpoint-side names to model-side names across the base-model prefix (e.g. `resnet.`), the way
    transformers does when a task checkpoint is loaded into a base model or the other way round.
    Returns f(name) -> model name, or None for names of a head the model does not have."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    model_has = bool(prefix) and isinstance(getattr(model, prefix, None), nn.Module)
    names = list(names)
    ckpt_has = bool(prefix) and any(n == prefix or n.startswith(prefix + ".") for n in names)
    if not prefix or model_has == ckpt_has:
        return lambda name: name
    if ckpt_has:  # task checkpoint -> base model: strip the prefix, drop the head
        return lambda name: name[len(prefix) + 1:] if name.startswith(prefix + ".") else None
    return lambda name: f"{prefix}.{name}"  # base checkpoint -> task model


def _frozen_module(name: str, fp: nn.Module, spec: dict) -> nn.Module:
    from ..quantization.layers import QuantConv2d, QuantLinear, QuantShortcut

    kind = spec["type"]
    if not isinstance(fp, _FP_TYPES[kind]) or (kind == "QuantShortcut" and type(fp) is not nn.Identity):
        raise CheckpointError(
            f"The checkpoint's quantization_config lists '{name}' as a {kind}, but in the model built from its "
            f"config that module is a {type(fp).__name__} (expected {_FP_TYPES[kind].__name__}). config.json "
            "and the quantization layers do not belong together: save or download the checkpoint again.")
    bits = dict(weight_bits=spec["weight_bits"], act_bits=spec["act_bits"], act_signed=spec["act_signed"])
    if kind == "QuantConv2d":
        op = QuantConv2d(fp.in_channels, fp.out_channels, fp.kernel_size, fp.stride, fp.padding, fp.dilation,
                         fp.groups, fp.bias is not None, fp.padding_mode, **bits)
        device = fp.weight.device
    elif kind == "QuantLinear":
        op = QuantLinear(fp.in_features, fp.out_features, fp.bias is not None, **bits)
        device = fp.weight.device
    else:
        op = QuantShortcut(act_bits=spec["act_bits"], act_signed=spec["act_signed"])
        device = None
    if getattr(fp, "bias", None) is not None:
        op.bias = fp.bias  # the (meta) parameter of the FP module: same dtype and device
    op._allocate_frozen(device=device)
    # Scales stay float32 whatever dtype the model is loaded in: the dequantized weight is computed in fp32.
    if op.has_weight:
        op.register_buffer("weight_scale", torch.empty(op.weight_scale.shape, dtype=torch.float32,
                                                       device=op.weight_scale.device))
    if op.act_bits is not None:
        op.register_buffer("input_scale", torch.empty((), dtype=torch.float32, device=op.input_scale.device))
    return op


class GenieHfQuantizer(HfQuantizer):
    """transformers quantizer for quant_method "genie" (pre-quantized Genie checkpoints only)."""

    requires_calibration = True
    quantization_config: GenieQuantizationConfig

    def __init__(self, quantization_config: GenieQuantizationConfig, **kwargs):
        if isinstance(quantization_config, dict):
            quantization_config = GenieQuantizationConfig.from_dict(quantization_config)
        super().__init__(quantization_config, **kwargs)
        self.validated_files: list[str] = []
        self.model_layers: dict[str, dict] = {}

    # ---- environment and config -----------------------------------------------------------------------------
    def validate_environment(self, *args, **kwargs):
        return

    def update_attn_implementation(self, config):
        config = super().update_attn_implementation(config)
        if is_guard(getattr(config, GUARD_KEY, None)):
            delattr(config, GUARD_KEY)  # the guard is for plain transformers; we load the standard weight file
        return config

    # ---- before / after weight loading -----------------------------------------------------------------------
    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        layers = self.quantization_config.layers
        to_model = _prefix_mapper(model, layers)
        self.model_layers = {}
        for ckpt_name, spec in layers.items():
            name = to_model(ckpt_name)
            if name is None:
                continue  # a head module the (base) model being loaded does not have
            try:
                fp = model.get_submodule(name)
            except AttributeError:
                raise CheckpointError(
                    f"The checkpoint's quantization_config lists the layer '{ckpt_name}', which the "
                    f"{type(model).__name__} built from config.json does not have. The config and the quantization "
                    "layers do not belong together: save or download the checkpoint again.") from None
            model.set_submodule(name, _frozen_module(ckpt_name, fp, spec))
            self.model_layers[name] = dict(spec)
        self.validated_files = []
        if checkpoint_files:
            self._check_checkpoint(model, list(checkpoint_files))
        return model

    def _check_checkpoint(self, model, files: list[str]) -> None:
        """Compare the safetensors headers with what the (swapped) model expects: names, shapes, int dtypes."""
        found = read_headers(files)
        where = str(files[0]) if len(files) == 1 else f"{len(files)} shards in {os.path.dirname(str(files[0]))}"
        to_model = _prefix_mapper(model, found)
        expected = model.state_dict()
        ignore_missing = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_missing", None) or ())]
        ignore_unexpected = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_unexpected", None)
                                                     or ())]
        tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
        seen, unexpected, wrong = set(), [], []
        for key, (info, _) in found.items():
            name = to_model(key)
            if name is None:
                continue
            if name not in expected:
                if not any(p.search(name) for p in ignore_unexpected):
                    unexpected.append(key)
                continue
            seen.add(name)
            ref = expected[name]
            if tuple(info["shape"]) != tuple(ref.shape):
                wrong.append(f"'{key}' has shape {list(info['shape'])}, expected {list(ref.shape)}")
            elif ref.is_floating_point():
                if info["dtype"] not in FLOAT_DTYPES:
                    wrong.append(f"'{key}' has dtype {info['dtype']}, expected a float")
            elif _TORCH_TO_ST.get(ref.dtype) != info["dtype"]:
                wrong.append(f"'{key}' has dtype {info['dtype']}, expected {_TORCH_TO_ST.get(ref.dtype, ref.dtype)}")
        missing = [k for k in expected if k not in seen and k not in tied
                   and not any(p.search(k) for p in ignore_missing)]
        problems = []
        if missing:
            problems.append(f"{len(missing)} tensor(s) the model needs are missing (e.g. {', '.join(missing[:4])})")
        if wrong:
            problems.append(f"{len(wrong)} tensor(s) do not match the layer they belong to ({'; '.join(wrong[:4])})")
        if unexpected:
            problems.append(f"{len(unexpected)} tensor(s) belong to no layer of the model (e.g. "
                            f"{', '.join(unexpected[:4])})")
        if problems:
            raise CheckpointError(
                f"The Genie checkpoint {where} does not match its config.json: {'; '.join(problems)}. A layer's bits "
                "or shape in quantization_config disagree with the stored tensors, or the file is from another "
                "model. Loading it would leave layers with random weights, so it is refused: save or download the "
                "checkpoint again.")
        self.validated_files = [str(f) for f in files]

    def _process_model_after_weight_loading(self, model, **kwargs):
        from ..quantization.layers import QuantizedOp
        from .save import install_save_guard

        model.eval()
        problems = []
        for name, op in model.named_modules():
            if not isinstance(op, QuantizedOp):
                continue
            op._weight_cache = None
            op.frozen = True
            names = (_FROZEN_BUFFERS if op.has_weight else ()) + (("input_scale",) if op.act_bits is not None else ())
            not_loaded = [f"{name}.{buffer} was not loaded" for buffer in names
                          if getattr(op, buffer).is_meta or (not self.validated_files and not getattr(
                              getattr(op, buffer), "_is_hf_initialized", False))]
            if not_loaded:
                problems.extend(not_loaded)
                continue
            if op.has_weight:
                shape = tuple(int(v) for v in op.weight_shape.tolist())
                if shape != op.weight_shape_tuple:
                    problems.append(f"{name}.weight_shape is {list(shape)}, the layer is {list(op.weight_shape_tuple)}")
                if int(op.weight_zero_point.max()) >= 2**op.weight_bits:
                    problems.append(f"{name}.weight_zero_point exceeds {op.weight_bits}-bit codes")
                if not bool(torch.isfinite(op.weight_scale).all()):
                    problems.append(f"{name}.weight_scale has non-finite values")
            # Only finiteness is checked: a learned step may legitimately end up tiny (or even <= 0) and the
            # checkpoint must reproduce whatever the in-memory model computed.
            if op.act_bits is not None and not math.isfinite(float(op.input_scale)):
                problems.append(f"{name}.input_scale is {float(op.input_scale)}")
        if problems:
            raise CheckpointError(
                f"The Genie checkpoint of {getattr(model, 'name_or_path', '') or 'this model'} holds invalid "
                f"quantized tensors: {'; '.join(problems[:5])}"
                + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
                + ". The file is corrupt or was edited: save or download the checkpoint again.")
        model.genie_layers = {name: dict(spec) for name, spec in self.model_layers.items()}
        genie_dict = self.quantization_config.genie_config
        if genie_dict:
            from ..config import GenieConfig

            try:
                model.genie_config = GenieConfig.from_dict(genie_dict)
            except Exception:  # provenance only: a config from another genie_hub version must not block loading
                model.genie_config = None
        install_save_guard(model)
        return model

    # ---- dequantize / capabilities -------------------------------------------------------------------------
    def _dequantize(self, model, dtype=None):
        from ..quantization.layers import QuantizedOp
        from .save import remove_save_guard

        for name, op in [(n, m) for n, m in model.named_modules() if isinstance(m, QuantizedOp)]:
            fp = op.to_float()
            if dtype is not None and isinstance(dtype, torch.dtype):
                fp = fp.to(dtype)
            model.set_submodule(name, fp)
        for attr in ("genie_layers", "genie_config"):
            if hasattr(model, attr):
                delattr(model, attr)
        remove_save_guard(model)
        return model

    def is_serializable(self, *args, **kwargs) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False

    @property
    def is_qat_trainable(self) -> bool:
        return False
