"""Save a Genie-quantized model as a transformers checkpoint: config.json + packed model.safetensors.

What is written (by transformers' own `save_pretrained`, safetensors only):
- `model.safetensors`: for every quantized op `<name>.weight_packed` (int32), `.weight_scale` (f32),
  `.weight_zero_point` (uint8), `.weight_shape` (int64), `.input_scale` (f32, when its input is quantized)
  and `.bias` (FP); every other tensor of the model (BatchNorm parameters and statistics, ...) unchanged.
  No quantized layer has a `<name>.weight` key: no FP copy, no integer codes under an FP name.
- `config.json`: the model config plus `quantization_config` (see `config.py`) and the load guard below.
- the image processor's `preprocessor_config.json` when one is given.

Load guard (what happens WITHOUT genie_hub): transformers does not know quant_method "genie"; it only logs
"Unknown quantization type ... skip", builds plain Conv2d/Linear layers and, finding no `weight` keys,
initializes them randomly (checked on transformers 5.24: a warning, no error). To make that impossible,
config.json also carries a top-level `"transformers_weights"` entry holding a message. transformers 5 reads
that key as the explicit weights file name and, since it is not a `*.safetensors` name, raises before any
model is built:

    ValueError: The transformers file in the config seems to be incorrect: ...: GENIE-QUANTIZED CHECKPOINT
    (...): this folder must be loaded with genie_hub. Run `pip install genie_hub` and `import genie_hub` ...

With genie_hub imported, the registered `GenieHfQuantizer` removes that entry before the weight file is
looked up, so the standard `model.safetensors` is loaded. transformers drops `transformers_weights` whenever
it saves a config, so the guard is written again after every save: by `save_quantized`, and by the
`save_pretrained` (and hence `push_to_hub`) of a loaded or saved Genie model, which `install_save_guard`
wraps.
"""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import torch

from ..adapters import adapter_for
from ..errors import CheckpointError
from ..fileio import write_json
from ..quantization import QuantizationResult, QuantizedOp, quantized_ops
from .config import GUARD_KEY, GUARD_MESSAGE, GenieQuantizationConfig, is_guard


def write_guard(save_directory: str | os.PathLike) -> None:
    """Add the load guard to `save_directory/config.json` (idempotent)."""
    path = Path(save_directory) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if is_guard(config.get(GUARD_KEY)) and config[GUARD_KEY] == GUARD_MESSAGE:
        return
    config[GUARD_KEY] = GUARD_MESSAGE
    write_json(path, config)


def is_genie_quantized(model) -> bool:
    return any(isinstance(m, QuantizedOp) for m in model.modules())


def _class_save_pretrained(model):
    return type(model).save_pretrained.__get__(model)


def save_pretrained(self, save_directory, *args, push_to_hub: bool = False, **kwargs):
    """`PreTrainedModel.save_pretrained` of a Genie model: refreshes `quantization_config` and writes the
    load guard into config.json (installed on the instance by `install_save_guard`)."""
    if not is_genie_quantized(self):  # e.g. after model.dequantize(): a plain FP model again
        return _class_save_pretrained(self)(save_directory, *args, push_to_hub=push_to_hub, **kwargs)
    self.config.quantization_config = GenieQuantizationConfig.from_model(self)
    hub_kwargs = {k: kwargs.pop(k) for k in ("repo_id", "commit_message", "create_pr", "private") if k in kwargs}
    result = _class_save_pretrained(self)(save_directory, *args, **kwargs)
    if (Path(save_directory) / "config.json").exists():
        write_guard(save_directory)
    if push_to_hub:  # push_to_hub saves through this method again, into a temporary folder, guard included
        repo_id = hub_kwargs.pop("repo_id", os.path.basename(os.path.normpath(str(save_directory))))
        self.push_to_hub(repo_id, token=kwargs.get("token"), **hub_kwargs)
    return result


def install_save_guard(model) -> None:
    """Make `model.save_pretrained` (and `push_to_hub`, which calls it) write the Genie load guard."""
    model.save_pretrained = types.MethodType(save_pretrained, model)


def remove_save_guard(model) -> None:
    model.__dict__.pop("save_pretrained", None)


def bind(result: QuantizationResult) -> None:
    """Make `result.model` a Genie checkpoint-to-be: its config carries the Genie `quantization_config`, and its
    `save_pretrained` / `push_to_hub` write the Genie format (guard included). No-op for models without a
    config (plain nn.Modules, which cannot be saved as transformers checkpoints anyway)."""
    if getattr(result.model, "config", None) is None:
        return
    result.model.config.quantization_config = GenieQuantizationConfig.from_result(result)
    install_save_guard(result.model)


def save_quantized(quantized, save_directory: str | os.PathLike, processor=None, *,
                   max_shard_size: int | str = "10GB") -> Path:
    """Save a `QuantizationResult` (or a model loaded from a Genie checkpoint) as a Genie checkpoint.

    Writes config.json (with `quantization_config` and the load guard), the packed `model.safetensors`
    and, when given, the image processor, then verifies the folder with the same checks as loading. Later
    `model.save_pretrained(...)` calls write the same format. Returns the folder.
    """
    from .load import verify_checkpoint

    q_model = quantized.model if isinstance(quantized, QuantizationResult) else quantized
    if not hasattr(q_model, "save_pretrained") or not hasattr(q_model, "config"):
        raise CheckpointError(f"save_quantized needs a transformers model (PreTrainedModel), got "
                              f"{type(q_model).__name__}.")
    config = (GenieQuantizationConfig.from_result(quantized) if isinstance(quantized, QuantizationResult)
              else GenieQuantizationConfig.from_model(q_model))
    ops = quantized_ops(q_model)
    stray = [name for name, m in ops.items() if "weight" in dict(m.named_parameters(recurse=False))]
    if stray:
        raise CheckpointError(f"Quantized layer '{stray[0]}' still holds an FP `weight`; refusing to save it.")
    broken = [f"{name}.{suffix}" for name, m in ops.items() if m.frozen for suffix, tensor in m.to_frozen().items()
              if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if broken:
        raise CheckpointError(
            f"Refusing to save: {len(broken)} quantization scale(s) are NaN/inf (e.g. {', '.join(broken[:3])}), so the "
            "model outputs NaN. The calibration activations of those layers were probably all (near) zero; "
            "quantize again with other calibration data, or keep those layers in FP via overrides.")
    directory = Path(save_directory)
    if directory.is_file():
        raise CheckpointError(f"Cannot save to {directory}: it is a file, not a folder.")
    directory.mkdir(parents=True, exist_ok=True)
    q_model.config.quantization_config = config
    adapter_for(q_model).save(q_model, directory, max_shard_size=max_shard_size)
    write_guard(directory)
    verify_checkpoint(directory)
    if processor is not None:
        processor.save_pretrained(directory)
    install_save_guard(q_model)
    return directory
