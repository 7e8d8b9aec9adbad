"""Save a Genie-quantized model as a transformers checkpoint: config.json + packed genie_model.safetensors.

What is written (transformers' own `save_pretrained` first, then made a Genie checkpoint, safetensors only):
- `genie_model.safetensors` (or shards listed by `genie_model.safetensors.index.json`): for every quantized
  op the tensors `genie_hub.quantization.format` declares (`weight_packed`, `weight_scale`,
  `weight_zero_point`, `weight_shape`, `input_scale`) and its FP `bias`; every other tensor of the model
  (BatchNorm parameters and statistics, ...) unchanged. No quantized layer has a `<name>.weight` key. Its
  safetensors metadata repeats the `layers` of config.json, which loading cross-checks.
- `config.json`: the model config plus `quantization_config` (see `config.py`) and the load guard below.
- the image processor's `preprocessor_config.json` when one is given, and any extra files (the model card).

Never loadable as plain FP weights: plain transformers looks for `model.safetensors` (or `pytorch_model.bin`),
which a Genie checkpoint does not have, so every transformers version refuses it; transformers >= 5 also
reads config.json's top-level `"transformers_weights"`, which holds a message, and raises with it:

    ValueError: The transformers file in the config seems to be incorrect: ...: GENIE-QUANTIZED CHECKPOINT
    (...): this folder must be loaded with genie_hub. Run `pip install genie_hub` and `import genie_hub` ...

With genie_hub imported, the registered `GenieHfQuantizer` points `transformers_weights` at
`genie_model.safetensors` before the weight file is looked up.

Nothing half-written is ever visible: the checkpoint is written into a hidden staging folder next to the
target, verified with the same checks as loading, and only then renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import types
from pathlib import Path

import torch

from ..adapters import adapter_for
from ..errors import CheckpointError
from ..fileio import replace_dir, save_safetensors, staging_dir, through_link, write_bytes, write_json
from ..quantization import QuantizationResult, QuantizedOp, quantized_ops
from .config import GUARD_KEY, GUARD_MESSAGE, LAYERS_METADATA_KEY, WEIGHTS_NAME, GenieQuantizationConfig
from .safetensors_check import read_metadata, weight_files
from .validate import PLAIN_WEIGHT_NAMES

logger = logging.getLogger("genie_hub.checkpoint")


def is_genie_quantized(model) -> bool:
    return any(isinstance(m, QuantizedOp) for m in model.modules())


def _finish(directory: Path, config: GenieQuantizationConfig) -> None:
    """Turn what transformers wrote into `directory` into a Genie checkpoint: weights renamed to
    genie_model.safetensors with the layers in their metadata, `quantization_config` and the guard in
    config.json."""
    from safetensors.torch import load_file

    files = weight_files(directory)
    if not files:
        raise CheckpointError(f"No model.safetensors was written to {directory}.")
    layers = json.dumps({name: spec.to_dict() for name, spec in config.layers.items()}, sort_keys=True)
    for file in files:  # same tensors, same byte layout; only the metadata grows
        metadata = {**read_metadata(file), LAYERS_METADATA_KEY: layers}
        save_safetensors(load_file(str(file)), file, metadata)
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.exists():
        single.rename(directory / WEIGHTS_NAME)
        config.weights_file = WEIGHTS_NAME
    else:
        index.rename(directory / f"{WEIGHTS_NAME}.index.json")
        config.weights_file = f"{WEIGHTS_NAME}.index.json"
    path = directory / "config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["quantization_config"] = config.to_dict()
    data[GUARD_KEY] = GUARD_MESSAGE
    write_json(path, data)


def _write(q_model, config: GenieQuantizationConfig, directory: Path, processor=None,
           extra_files: dict[str, bytes] | None = None, **save_kwargs) -> None:
    """Write a complete, verified Genie checkpoint into the empty folder `directory`."""
    from .load import verify_checkpoint

    q_model.config.quantization_config = config
    adapter_for(q_model).save(q_model, directory, **save_kwargs)
    _finish(directory, config)
    if processor is not None:
        processor.save_pretrained(directory)
    for name, data in (extra_files or {}).items():
        write_bytes(directory / name, data)
    verify_checkpoint(directory)


def _class_save_pretrained(model):
    return type(model).save_pretrained.__get__(model)


SHARD_PATTERNS = ("model-*-of-*.safetensors", "genie_model-*-of-*.safetensors")
"""The shard names transformers gives a sharded save (as `<weights name>-0000i-of-0000n.safetensors`)."""


def save_pretrained(self, save_directory, *args, push_to_hub: bool = False, **kwargs):
    """`PreTrainedModel.save_pretrained` of a Genie model (installed on the instance by `install_save_guard`):
    writes a Genie checkpoint into `save_directory`, keeping the folder's other files, replacing plain weight
    files that would contradict it. `push_to_hub` saves through here too."""
    if not is_genie_quantized(self):  # e.g. after model.dequantize(): a plain FP model again
        return _class_save_pretrained(self)(save_directory, *args, push_to_hub=push_to_hub, **kwargs)
    check_savable(self)
    config = GenieQuantizationConfig.from_model(self)
    hub_kwargs = {k: kwargs.pop(k) for k in ("repo_id", "commit_message", "create_pr", "private") if k in kwargs}
    target = Path(save_directory)
    target.mkdir(parents=True, exist_ok=True)
    with staging_dir(target / ".genie-staging") as staging:
        _write(self, config, staging, **{k: v for k, v in kwargs.items() if k == "max_shard_size"})
        shards = [p.name for pattern in SHARD_PATTERNS for p in target.glob(pattern)]  # an earlier sharded save's
        for stale in (*PLAIN_WEIGHT_NAMES, WEIGHTS_NAME, f"{WEIGHTS_NAME}.index.json", *shards):
            if (target / stale).exists():
                (target / stale).unlink()
        files = sorted(staging.iterdir(), key=lambda p: p.name == "config.json")  # config.json last
        for file in files:
            os.replace(file, target / file.name)
    if push_to_hub:  # push_to_hub saves through this method again, into a temporary folder
        repo_id = hub_kwargs.pop("repo_id", os.path.basename(os.path.normpath(str(save_directory))))
        self.push_to_hub(repo_id, token=kwargs.get("token"), **hub_kwargs)
    return None


def install_save_guard(model) -> None:
    """Make `model.save_pretrained` (and `push_to_hub`, which calls it) write the Genie format."""
    model.save_pretrained = types.MethodType(save_pretrained, model)


def remove_save_guard(model) -> None:
    model.__dict__.pop("save_pretrained", None)


def bind(result: QuantizationResult) -> None:
    """Make `result.model` a Genie checkpoint-to-be: its config carries the Genie `quantization_config`, and its
    `save_pretrained` / `push_to_hub` write the Genie format. No-op for models without a config (plain
    nn.Modules, which cannot be saved as transformers checkpoints anyway)."""
    if getattr(result.model, "config", None) is None:
        return
    result.model.config.quantization_config = GenieQuantizationConfig.from_result(result)
    install_save_guard(result.model)


def _not_weights(relative: Path) -> bool:
    """A file a replaced checkpoint folder may keep: anything but weights and the config that names them at its
    top level (a stray weights file beside the new ones could be loaded instead of them; in a subfolder,
    `from_pretrained` never reads it)."""
    name = relative.name
    return len(relative.parts) > 1 or not (
        name == "config.json" or name.endswith(".index.json")
        or relative.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack"))


def save_quantized(quantized, save_directory: str | os.PathLike, processor=None, *,
                   extra_files: dict[str, bytes] | None = None, max_shard_size: int | str = "10GB",
                   keep_added_files: bool = False) -> Path:
    """Save a `QuantizationResult` (or a model loaded from a Genie checkpoint) as a Genie checkpoint folder.

    The folder is written complete (config.json with `quantization_config` and the load guard, the packed
    weights, the image processor when given, `extra_files` such as {"README.md": card}) into a staging folder,
    verified with the same checks as loading, then renamed into place; an existing Genie checkpoint there is
    replaced, any other non-empty folder is refused; with `keep_added_files`, the files of the replaced folder
    that this save does not write (a user's additions), weights and configs excepted, are kept. Later
    `model.save_pretrained(...)` calls write the same format. Returns the folder.
    """
    q_model = quantized.model if isinstance(quantized, QuantizationResult) else quantized
    if not hasattr(q_model, "save_pretrained") or not hasattr(q_model, "config"):
        raise CheckpointError(f"save_quantized needs a transformers model (PreTrainedModel), got "
                              f"{type(q_model).__name__}.")
    config = (GenieQuantizationConfig.from_result(quantized) if isinstance(quantized, QuantizationResult)
              else GenieQuantizationConfig.from_model(q_model))
    check_savable(q_model)
    for name, data in (extra_files or {}).items():  # before anything is written
        if not isinstance(name, str) or name in ("", ".", "..") or os.path.basename(name) != name or "\\" in name:
            raise CheckpointError(f"extra_files name {name!r} is not a plain file name: each extra file is written "
                                  "into the checkpoint folder itself, e.g. {'README.md': card}.")
        if not isinstance(data, (bytes, bytearray)):
            raise CheckpointError(f"extra_files[{name!r}] is a {type(data).__name__}: pass bytes (e.g. "
                                  "text.encode('utf-8')).")
    if isinstance(quantized, QuantizationResult) and processor is not None:
        _warn_other_size(quantized, processor)
    directory = through_link(save_directory)
    check_replaceable(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(directory.with_name(f".{directory.name}.staging")) as staging:
        _write(q_model, config, staging, processor, extra_files, max_shard_size=max_shard_size)
        replace_dir(staging, directory, keep_added=_not_weights if keep_added_files else None)
    install_save_guard(q_model)
    if processor is None and not (directory / "preprocessor_config.json").exists():
        logger.warning("%s is saved without an image processor (preprocessor_config.json), so pipeline() and "
                       "`genie_hub evaluate` cannot prepare images for it. Pass the base model's processor: "
                       "save_quantized(result, folder, processor=processor), with the processor load_model returns.",
                       directory)
    return directory


def _warn_other_size(result: QuantizationResult, processor) -> None:
    """Activation ranges fit the size of the images they were calibrated on (a CNN's activations change with
    the resolution), so a processor that makes images of another size gets a model tuned for inputs it never
    sees."""
    from ..loading import input_spec

    spec = input_spec(result.model, processor)
    if result.calibration_size is not None and result.calibration_size != (spec.height, spec.width):
        logger.warning(
            "The model was calibrated on %dx%d images, but the processor saved with it makes %dx%d ones, which the "
            "activation ranges were not fitted to. Calibrate on images the processor makes (synthesize(..., "
            "processor=processor), or few-shot images through it) for a model that fits its inputs.",
            *result.calibration_size, spec.height, spec.width)


def check_savable(q_model) -> None:
    """Refuse, before any file is written, a model whose quantized layers cannot be stored as they are: an FP
    weight left in a quantized layer, NaN/inf scales, scales in another float type than the format's float32
    (a model cast with `.to(torch.float16)`), or other float tensors in another type (loaded with `dtype=`, which
    keeps the scales float32 but rounds the rest)."""
    ops = quantized_ops(q_model)
    stray = [name for name, m in ops.items() if "weight" in dict(m.named_parameters(recurse=False))]
    if stray:
        raise CheckpointError(f"Quantized layer '{stray[0]}' still holds an FP `weight`; refusing to save it.")
    frozen = {f"{name}.{suffix}": tensor for name, m in ops.items() if m.frozen
              for suffix, tensor in m.to_frozen().items() if tensor.is_floating_point()}
    broken = [key for key, tensor in frozen.items() if not bool(torch.isfinite(tensor).all())]
    if broken:
        raise CheckpointError(
            f"Refusing to save: {len(broken)} quantization scale(s) are NaN/inf (e.g. {', '.join(broken[:3])}), so the "
            "model outputs NaN. The calibration activations of those layers were probably all (near) zero; "
            "quantize again with other calibration data, or keep those layers in FP via overrides.")
    cast = sorted({str(tensor.dtype).removeprefix("torch.") for tensor in frozen.values()} - {"float32"})
    if cast:
        raise CheckpointError(
            f"The model's quantization scales are {', '.join(cast)} (the model was cast, e.g. with "
            ".to(torch.float16)), but a Genie checkpoint stores them in float32. Cast it back first: "
            "model.to(torch.float32).save_pretrained(folder) (float16/bfloat16 values convert to float32 exactly).")
    half = sorted({str(tensor.dtype).removeprefix("torch.") for tensor in [*q_model.parameters(), *q_model.buffers()]
                   if tensor.is_floating_point()} - {"float32"})
    if half:  # loaded with from_pretrained(dtype=torch.float16): the scales stay float32, the rest does not
        raise CheckpointError(
            f"The model holds {', '.join(half)} tensors (its BatchNorm statistics, biases or embeddings: it was loaded "
            "with dtype=torch.float16 or similar), but a Genie checkpoint stores them in float32, and saving them "
            "would also make every later load ask for that precision. Load the checkpoint again without dtype= "
            "(float32) and save that model; a half-precision load rounded the values it holds.")


def check_replaceable(directory: Path) -> None:
    """A checkpoint may be written to `directory` if it is absent, empty, or a Genie checkpoint (replaced whole)."""
    if directory.is_file():
        raise CheckpointError(f"Cannot save to {directory}: it is a file, not a folder.")
    if directory.is_dir() and any(directory.iterdir()):
        try:
            config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
            genie = config.get("quantization_config", {}).get("quant_method") == "genie"
        except (OSError, ValueError, AttributeError):
            genie = False
        if not genie:
            raise CheckpointError(
                f"Cannot save to {directory}: the folder is not empty and does not hold a Genie checkpoint, so "
                "saving would replace files genie_hub did not write. Choose a new or empty folder, or delete it.")


__all__ = ["bind", "check_replaceable", "check_savable", "install_save_guard", "is_genie_quantized",
           "remove_save_guard", "save_quantized"]
