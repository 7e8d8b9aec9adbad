"""`GenieHfQuantizer`: lets `transformers` load Genie checkpoints (`from_pretrained`, `pipeline`).

What happens in `from_pretrained` (transformers 5.x, the public `HfQuantizer` hooks the built-in quantizers
use) once genie_hub has registered quant_method "genie":
1. `validate_environment` refuses a transformers major version genie_hub was not tested with.
   The config hook (`update_attn_implementation`, or `update_tp_plan` in transformers up to 5.17) points the
   config's `transformers_weights` at genie_model.safetensors (see `save.py`); why there, and not in a
   dedicated hook, is explained at `_prepare_config`.
2. The model is built from its config on the meta device; `_process_model_before_weight_loading` replaces
   each module listed in `quantization_config.layers` by the frozen Quant* module (empty buffers), so the
   model's parameter/buffer names are the checkpoint keys, then reads the safetensors *headers* and checks
   every tensor the model needs is there with the right shape and dtype (anything missing, unexpected or
   mis-shaped is a `CheckpointError`, never a silent random init).
3. transformers loads the tensors (integer tensors keep their dtype).
4. `_process_model_after_weight_loading` sets eval mode and checks the loaded values (`QuantizedOp.frozen_problems`:
   what `freeze()` can never produce). `model.config.quantization_config` describes every layer.
The model is `torch.compile`-able (`is_compileable`): the Quant* forward passes are plain tensor code, and
compiled logits equal eager ones exactly (tested).
transformers 5 removed the `update_missing_keys` / `update_expected_keys` hooks of 4.x; the header check of
step 2 is what replaces them here.
`model.dequantize()` replaces every Quant* module by its plain FP32 equivalent (`to_float`, shortcuts become
`nn.Identity`, attention matmuls are removed): weights are the dequantized ones, activation quantization is dropped.
A layer with `quantizes_input_of` gets its residual block's entry hook back (`quantization/block_input.py`).
A checkpoint with quantized attention (`QuantAttention` layers) sets the config's attention implementation to
genie_hub's registered attention function in `update_attn_implementation`, before the model is built.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
from torch import nn
from transformers.quantizers import HfQuantizer

from ..adapters import adapter_for
from ..adapters.transformers_adapter import register_attention
from ..errors import CheckpointError, GenieError
from ..quantization import QUANTIZED_TYPES, LayerSpec, QuantizedOp, quantized_ops
from ..quantization.attention import ATTENTION_CHILD, attach, attention_forward
from ..quantization.block_input import quantize_block_input, release_block_input
from .config import GUARD_KEY, GenieQuantizationConfig, is_guard
from .safetensors_check import read_headers
from .validate import Expected, layer_expectations, metadata_problems, refuse_plain_weights, tensor_problems

logger = logging.getLogger("genie_hub.checkpoint")


SUPPORTED_TRANSFORMERS = (5,)
"""transformers major versions this quantizer is written for and tested with (its hooks changed from 4 to 5)."""


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


def _attention_child(model: nn.Module, ckpt_name: str, name: str, spec: LayerSpec, format_version: int) -> QuantizedOp:
    """The frozen `QuantAttention` of checkpoint layer `ckpt_name`, to attach at `name` (it replaces no module):
    its parent must be a module whose attention runs through the registered attention function."""
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name)
    except AttributeError:
        parent = None
    if child != ATTENTION_CHILD or parent is None or not adapter_for(model).calls_attention(parent):
        what = (f"a {type(parent).__name__}, which computes no attention through transformers' attention interface"
                if parent is not None and child == ATTENTION_CHILD else "not the quantized_matmul of a module of "
                f"the {type(model).__name__} built from config.json")
        raise CheckpointError(
            f"The checkpoint's quantization_config lists '{ckpt_name}' as a QuantAttention, but its parent is {what}. "
            f"{_mismatch_advice(model)}")
    return QUANTIZED_TYPES[spec.type].from_frozen(parent, spec, format_version)


def _mismatch_advice(model: nn.Module) -> str:
    """What to do when the checkpoint's quantized layers are not the model's modules. transformers renames the
    modules of some architectures between releases (ViT's attention and layers, between 5.0 and 5.17) and
    converts plain weights on load, but a Genie checkpoint names its layers by module path, so it loads with
    the transformers release whose layout it was saved in (config.json's transformers_version)."""
    import transformers

    saved = getattr(getattr(model, "config", None), "transformers_version", None)
    if isinstance(saved, str) and saved and saved != transformers.__version__:
        return (f"The checkpoint was saved with transformers {saved}, and this is {transformers.__version__}: "
                "transformers renames the modules of some architectures between releases, and a Genie checkpoint "
                f"names its quantized layers by module. Load it with that release (pip install "
                f"\"transformers=={saved}\"), or quantize the base model again with this one.")
    return ("config.json and the quantization layers do not belong together: save or download the checkpoint "
            "again.")


def _frozen_module(model: nn.Module, name: str, fp: nn.Module, spec: LayerSpec, format_version: int) -> QuantizedOp:
    cls = QUANTIZED_TYPES[spec.type]
    if not isinstance(fp, cls.float_type) or (not spec.has_weight and type(fp) is not nn.Identity):
        raise CheckpointError(
            f"The checkpoint's quantization_config lists '{name}' as a {spec.type}, but in the model built from its "
            f"config that module is a {type(fp).__name__} (expected {cls.float_type.__name__}). "
            f"{_mismatch_advice(model)}")
    return cls.from_frozen(fp, spec, format_version)


def _fp_tensor_problems(model: nn.Module) -> list[str]:
    """Values no trained model holds: non-finite floats anywhere, negative BatchNorm variances."""
    problems = []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not tensor.is_meta and not bool(torch.isfinite(tensor).all()):
            problems.append(f"{name} has non-finite values")
    for name, module in model.named_modules():
        running_var = getattr(module, "running_var", None)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and running_var is not None \
                and not running_var.is_meta and bool((running_var < 0).any()):
            problems.append(f"{name}.running_var is negative")
    return problems


class GenieHfQuantizer(HfQuantizer):
    """transformers quantizer for quant_method "genie" (pre-quantized Genie checkpoints only)."""

    requires_calibration = True
    quantization_config: GenieQuantizationConfig

    def __init__(self, quantization_config: GenieQuantizationConfig, **kwargs):
        if isinstance(quantization_config, dict):
            quantization_config = GenieQuantizationConfig.from_dict(quantization_config)
        super().__init__(quantization_config, **kwargs)

    # ---- environment and config -----------------------------------------------------------------------------
    def validate_environment(self, *args, **kwargs):
        import transformers

        major = int(transformers.__version__.split(".")[0])
        if major not in SUPPORTED_TRANSFORMERS:
            raise GenieError(
                f"genie_hub loads Genie checkpoints with transformers {' or '.join(map(str, SUPPORTED_TRANSFORMERS))}.x, "
                f"but transformers {transformers.__version__} is installed. Install a supported release "
                "(pip install 'transformers>=5,<6').")

    def update_attn_implementation(self, config):
        """Where later transformers 5.x releases (5.25, not 5.17) hand the quantizer the model config."""
        return self._prepare_config(super().update_attn_implementation(config))

    def update_tp_plan(self, config):
        """Where transformers 5.0 to 5.17 hands the quantizer the model config (the hook is gone in 5.25)."""
        return self._prepare_config(config)

    def _prepare_config(self, config):
        """Point `config.transformers_weights` at the Genie weights file (format 2) or drop the load guard (format 1).

        Done in the config hooks because they are the only ones that receive the model config before transformers
        resolves the weight files (`from_pretrained` reads `config.transformers_weights` right after
        `get_hf_quantizer`, which calls them); `validate_environment` and `update_device_map` do not see the config,
        and `_process_model_before_weight_loading` runs after the files are resolved. transformers has no public
        hook for "which file holds the weights", and which config hook it calls changed within 5.x, so each one
        that exists routes here (idempotent)."""
        if any(spec.type == "QuantAttention" for spec in self.quantization_config.layers.values()):
            # Quantized attention matmuls run in genie_hub's registered attention function (see quantization/attention.py).
            implementation = register_attention(attention_forward)
            requested = config._attn_implementation  # from_pretrained(attn_implementation=...), None if not given
            if requested not in (None, implementation):
                logger.warning(
                    "attn_implementation=%r is not used: this checkpoint's attention matmuls are quantized, and "
                    "they run only in genie_hub's attention function (%r).", requested, implementation)
            config._attn_implementation = implementation
        weights_file = self.quantization_config.weights_file
        if weights_file is not None:  # format 2: genie_model.safetensors, which plain transformers never reads
            setattr(config, GUARD_KEY, weights_file)
        elif is_guard(getattr(config, GUARD_KEY, None)):
            delattr(config, GUARD_KEY)  # format 1: the guard is for plain transformers; load model.safetensors
        return config

    # ---- before / after weight loading -----------------------------------------------------------------------
    def _process_model_before_weight_loading(self, model, **kwargs):
        # `checkpoint_files` is what `from_pretrained` passes to `preprocess_model` (transformers 5): the resolved
        # weight files. No public hook shows them before loading, and reading their headers here is what makes a
        # missing, unexpected or mis-shaped tensor an error instead of a silently random-initialized layer.
        checkpoint_files = kwargs.get("checkpoint_files")
        if not checkpoint_files:
            raise CheckpointError(
                "A Genie checkpoint loads from its safetensors weight files (from_pretrained of a folder or Hub id); "
                "this load passed none (a state_dict, a distributed or GGUF checkpoint), so its tensors could not "
                "be checked. Save the model with save_pretrained / genie_hub.save_quantized and load that folder.")
        layers = self.quantization_config.layers
        to_model = _prefix_mapper(model, layers)
        for ckpt_name, spec in layers.items():
            name = to_model(ckpt_name)
            if name is None:
                continue  # a head module the (base) model being loaded does not have
            if spec.type == "QuantAttention":
                format_version = self.quantization_config.format_version
                attach(model, name, _attention_child(model, ckpt_name, name, spec, format_version),
                       adapter_for(model).attention_detour)
                continue
            try:
                fp = model.get_submodule(name)
            except AttributeError:
                raise CheckpointError(
                    f"The checkpoint's quantization_config lists the layer '{ckpt_name}', which the "
                    f"{type(model).__name__} built from config.json does not have. {_mismatch_advice(model)}") from None
            op = _frozen_module(model, ckpt_name, fp, spec, self.quantization_config.format_version)
            model.set_submodule(name, op)
            if spec.quantizes_input_of is not None:  # a residual block's input, quantized at its entry
                block = to_model(spec.quantizes_input_of)  # contains the op (checked in LayerSpec.from_dict)
                quantize_block_input(model.get_submodule(block), block, op)
        self._check_checkpoint(model, list(checkpoint_files))
        return model

    def _check_checkpoint(self, model, files: list[str]) -> None:
        """Compare the safetensors headers with what the (swapped) model expects: names, shapes, and dtypes (the
        quantized layers' exactly, as the frozen format stores them; any float for the rest); refuse shards
        outside the checkpoint's folder and plain weights next to it, as `verify_checkpoint` does."""
        folder = os.path.dirname(os.path.normpath(str(files[0])))
        weights_file = self.quantization_config.weights_file  # the file, or the shards' index, in the folder
        beside = weights_file is None or os.path.exists(os.path.join(folder, weights_file))
        if not beside and not any(os.path.exists(str(f)) for f in files):
            raise CheckpointError(
                f"The Genie checkpoint in {folder} has no {weights_file}, the weights file its config.json names: "
                "the file is missing (an interrupted download or copy), or config.json belongs to another "
                "checkpoint. Save or download the checkpoint again.")
        # The folder is the first file's: shards all outside the checkpoint's folder are not beside its index.
        outside = [str(f) for f in files if os.path.dirname(os.path.normpath(str(f))) != folder or not beside]
        if outside:
            raise CheckpointError(
                f"The Genie checkpoint's shard index names weight files outside its folder {folder} (e.g. "
                f"{outside[0]}): a shard is a plain file name next to the index. The index is corrupt or was "
                "edited: save or download the checkpoint again.")
        refuse_plain_weights(Path(folder), weights_file)
        found = read_headers(files)
        where = str(files[0]) if len(files) == 1 else f"{len(files)} shards in {os.path.dirname(str(files[0]))}"
        to_model = _prefix_mapper(model, found)
        # `_keys_to_ignore_on_load_*` are the model class's declared tolerances (PreTrainedModel attributes that
        # transformers' own loading report applies, and that quantizer_gemma reads and extends the same way):
        # honouring them keeps this check exactly as strict as transformers, no stricter.
        ignore_missing = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_missing", None) or ())]
        ignore_unexpected = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_unexpected", None)
                                                     or ())]
        tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
        expected = {name: Expected.like(tensor) for name, tensor in model.state_dict().items()}
        stored, _ = layer_expectations(self.quantization_config.layers, lambda name: None,
                                       self.quantization_config.format_version)  # dtypes; shapes come from the model
        for key, want in stored.items():
            name = to_model(key)
            if name in expected:
                expected[name] = Expected(want.dtype, expected[name].shape)
        present = {}
        for key, (info, _) in found.items():
            name = to_model(key)
            if name is not None and (name in expected or not any(p.search(name) for p in ignore_unexpected)):
                present[name] = info
        problems = tensor_problems(present, expected, closed=True, may_be_missing=lambda key: key in tied or any(
            p.search(key) for p in ignore_missing))
        problems += metadata_problems(files, self.quantization_config.layers,
                                      required=self.quantization_config.weights_file is not None)
        if problems:
            raise CheckpointError(
                f"The Genie checkpoint {where} does not match its config.json: {'; '.join(problems)}. A layer's bits "
                "or shape in quantization_config disagree with the stored tensors, or the file is from another "
                "model, or from_pretrained was given an argument that reshapes the model (num_labels=..., "
                "ignore_mismatched_sizes: a quantized model keeps the shapes it was saved with). Loading it would "
                "leave layers with random weights, so it is refused: save or download the checkpoint again.")

    def _process_model_after_weight_loading(self, model, **kwargs):
        from .save import install_save_guard

        model.eval()
        if all(tensor.is_meta for tensor in model.state_dict().values()):
            raise CheckpointError(
                "This load put every weight on the meta device (device_map='meta'), but a Genie model is defined by "
                "its stored quantized tensors, which are checked as they load. Load it on a real device "
                "(device_map='cpu' or 'auto').")
        problems = []
        for name, op in quantized_ops(model).items():
            op._weight_cache = None
            op.frozen = True
            # Every tensor is in the files (checked before loading), so one still on the meta device was not loaded.
            not_loaded = [f"{name}.{suffix} was not loaded" for suffix, tensor in op.to_frozen().items()
                          if tensor.is_meta]
            problems.extend(not_loaded or op.frozen_problems(name))
            op.upgrade_frozen()  # an older format's dtypes -> the current ones, so it saves in the current format
        problems = list(dict.fromkeys(problems + _fp_tensor_problems(model)))  # a scale is also a float tensor
        if problems:
            raise CheckpointError(
                f"The Genie checkpoint of {getattr(model, 'name_or_path', '') or 'this model'} holds invalid "
                f"tensors: {'; '.join(problems[:5])}"
                + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
                + ". The file is corrupt or was edited: save or download the checkpoint again.")
        install_save_guard(model)
        return model

    # ---- dequantize / capabilities -------------------------------------------------------------------------
    def _dequantize(self, model, dtype=None):
        from .save import remove_save_guard

        for name, op in quantized_ops(model).items():
            if op.quantizes_input_of is not None:
                release_block_input(op, model.get_submodule(op.quantizes_input_of))
            fp = op.to_float()
            if fp is None:  # an attached QuantAttention: its module runs plain attention without it
                parent, _, child = name.rpartition(".")
                delattr(model.get_submodule(parent), child)
                continue
            if dtype is not None and isinstance(dtype, torch.dtype):
                fp = fp.to(dtype)
            model.set_submodule(name, fp)
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

    @property
    def is_compileable(self) -> bool:
        return True
