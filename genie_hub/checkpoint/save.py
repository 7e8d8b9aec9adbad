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

from ..errors import CheckpointError
from .config import GUARD_KEY, GUARD_MESSAGE, GenieQuantizationConfig, is_guard
from .safetensors_check import read_headers, weight_files

PACKED_SUFFIXES = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape")


def write_guard(save_directory: str | os.PathLike) -> None:
    """Add the load guard to `save_directory/config.json` (idempotent)."""
    path = Path(save_directory) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if is_guard(config.get(GUARD_KEY)) and config[GUARD_KEY] == GUARD_MESSAGE:
        return
    config[GUARD_KEY] = GUARD_MESSAGE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def is_genie_quantized(model) -> bool:
    from ..quantization.layers import QuantizedOp

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


def check_saved(save_directory: str | os.PathLike, config: GenieQuantizationConfig) -> dict[str, int]:
    """Verify a saved folder: every layer's packed tensors are there, no quantized layer has a `weight`.
    Returns {file name: size in bytes}."""
    directory = Path(save_directory)
    files = weight_files(directory)
    if not files:
        raise CheckpointError(f"No model.safetensors was written to {directory}.")
    keys = read_headers(files)
    problems = []
    for name, spec in config.layers.items():
        needed = (PACKED_SUFFIXES if spec["type"] != "QuantShortcut" else ()) + (
            ("input_scale",) if spec["act_bits"] is not None else ())
        problems += [f"{name}.{s} missing" for s in needed if f"{name}.{s}" not in keys]
        if f"{name}.weight" in keys:
            problems.append(f"{name}.weight present (an FP or integer copy of a quantized weight)")
    if problems:
        raise CheckpointError(f"The checkpoint written to {directory} is inconsistent: {'; '.join(problems[:5])}. "
                              "This is a bug in genie_hub; please report it.")
    return {f.name: f.stat().st_size for f in files}


def save_quantized(q_model, save_directory: str | os.PathLike, processor=None, *,
                   max_shard_size: int | str = "10GB") -> Path:
    """Save a model returned by `genie_hub.quantization.quantize` (or loaded from a Genie checkpoint).

    Writes config.json (with `quantization_config` and the load guard), the packed `model.safetensors`
    and, when given, the image processor. Sets `q_model.config.quantization_config`, and makes later
    `q_model.save_pretrained(...)` calls write the same format. Returns the folder.
    """
    from ..quantization.layers import QuantizedOp

    if not hasattr(q_model, "save_pretrained") or not hasattr(q_model, "config"):
        raise CheckpointError(f"save_quantized needs a transformers model (PreTrainedModel), got "
                              f"{type(q_model).__name__}.")
    config = GenieQuantizationConfig.from_model(q_model)
    stray = [name for name, m in q_model.named_modules()
             if isinstance(m, QuantizedOp) and "weight" in dict(m.named_parameters(recurse=False))]
    if stray:
        raise CheckpointError(f"Quantized layer '{stray[0]}' still holds an FP `weight`; refusing to save it.")
    broken = [f"{name}.{buffer}" for name, m in q_model.named_modules() if isinstance(m, QuantizedOp)
              for buffer in ("weight_scale", "input_scale")
              if hasattr(m, buffer) and not bool(torch.isfinite(getattr(m, buffer)).all())]
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
    _class_save_pretrained(q_model)(directory, max_shard_size=max_shard_size)
    write_guard(directory)
    check_saved(directory, config)
    if processor is not None:
        processor.save_pretrained(directory)
    install_save_guard(q_model)
    return directory
