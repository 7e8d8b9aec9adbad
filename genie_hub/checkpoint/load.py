"""Load a Genie checkpoint: `from_pretrained` (transformers underneath) and `verify_checkpoint` (no model)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..adapters import loader_for
from ..errors import CheckpointError, GenieError, first_line
from .config import QUANT_METHOD, WEIGHTS_NAME, GenieQuantizationConfig
from .safetensors_check import read_headers, weight_files
from .validate import (forbidden_keys, layer_expectations, metadata_problems, refuse_plain_weights,
                       stored_value_problems, tensor_problems)


def _read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.exists():
        _output_folder_hint(directory)
        raise CheckpointError(f"{directory} has no config.json: it is not a saved transformers model. Save the "
                              "quantized model with genie_hub.checkpoint.save_quantized(q_model, folder).")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"The config file {path} is unreadable or not valid JSON ({exc}). It is corrupt: "
                              "save or download the checkpoint again.") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"The config file {path} does not hold a JSON object.")
    return config


def verify_checkpoint(directory: str | os.PathLike) -> GenieQuantizationConfig:
    """Check a local Genie checkpoint folder without building a model: config.json parses and has a Genie
    `quantization_config`, the weights are safetensors (never pickles), complete, hold the stored tensors of
    every listed layer with the dtypes and shapes the frozen format declares and values a saved model can hold
    (positive finite scales, zero points in range, finite floats), and record the same layers as config.json;
    no plain weights file sits next to them. Returns the parsed config. What needs the model itself (the keys
    of its unquantized layers, a layer's type against the architecture) is checked when it loads."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a folder: a Genie checkpoint is a folder with config.json and "
                              f"{WEIGHTS_NAME}.")
    if not weight_files(directory) and not weight_files(directory, WEIGHTS_NAME):
        _refuse_missing_weights(directory, WEIGHTS_NAME)  # says so when only pickled weights are there
    raw = _read_config(directory)
    block = raw.get("quantization_config")
    if not isinstance(block, dict) or block.get("quant_method") != QUANT_METHOD:
        raise CheckpointError(
            f"{directory / 'config.json'} has no Genie quantization_config (quant_method "
            f"{(block or {}).get('quant_method') if isinstance(block, dict) else None!r}): it is not a Genie "
            "checkpoint. Load FP models with genie_hub.loading.load_model.")
    config = GenieQuantizationConfig.from_dict(block)
    name = config.weights_file.removesuffix(".index.json") if config.weights_file else "model.safetensors"
    files = weight_files(directory, name)
    if not files:
        _refuse_missing_weights(directory, name)
    refuse_plain_weights(directory, config.weights_file)
    found = read_headers(files)

    def weight_shape_of(name: str) -> tuple[int, ...] | None:
        entry = found.get(f"{name}.weight_shape")
        if entry is None or entry[0]["dtype"] != "I64" or len(entry[0]["shape"]) != 1:
            return None
        return tuple(_read_small(entry[1], f"{name}.weight_shape"))

    expected, problems = layer_expectations(config.layers, weight_shape_of, config.format_version)
    problems += tensor_problems({key: info for key, (info, _) in found.items()}, expected,
                                forbidden=forbidden_keys(config.layers))
    problems += metadata_problems(files, config.layers, required=config.weights_file is not None)
    if not problems:  # every layer's tensors are there: their values can be read
        problems = stored_value_problems(files, config.layers)
    if problems:
        raise CheckpointError(
            f"The Genie checkpoint in {directory} is inconsistent with its config.json or holds invalid values: "
            f"{'; '.join(problems)}. "
            "Save or download the checkpoint again.")
    return config


def _output_folder_hint(directory: Path) -> None:
    """A `genie_hub quantize` output folder given for its model/: say where the checkpoint is."""
    if (directory / "model" / "config.json").is_file() and (directory / "run.json").is_file():
        raise CheckpointError(f"{directory} is a genie_hub output folder: its quantized model is in "
                              f"{directory / 'model'}; load that folder.")


def _refuse_missing_weights(directory: Path, name: str) -> None:
    _output_folder_hint(directory)
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl"))
    raise CheckpointError(
        f"{directory} has no {name}"
        + (f" (only pickled weights: {', '.join(pickles)}, which genie_hub never loads because unpickling can "
           "run arbitrary code)" if pickles else "")
        + ". Genie checkpoints are safetensors only: save the model with genie_hub.save_quantized.")


def _read_small(path: Path, key: str) -> list[int]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return [int(v) for v in handle.get_tensor(key).tolist()]
    except Exception as exc:
        raise CheckpointError(f"Could not read '{key}' from {path} ({type(exc).__name__}: {exc}). The file is corrupt: "
                              "save or download the checkpoint again.") from None


def _checkpoint_error(name: str, exc: Exception) -> GenieError:
    text = str(exc)
    first = first_line(exc) or type(exc).__name__
    lowered = text.lower()
    if "safetensor" in lowered or "deserializ" in lowered or "header" in lowered or "size mismatch" in lowered:
        return CheckpointError(f"Could not load the Genie checkpoint '{name}': its weights are unreadable or do not "
                               f"match its config ({type(exc).__name__}: {first}). Save or download it again.")
    return loader_for(name).load_error(name, exc)


def from_pretrained(name_or_path: str | os.PathLike, *, require_genie: bool = True, **kwargs):
    """Load a Genie checkpoint (local folder or Hub id) as a transformers image classifier, in eval mode.

    Registers the "genie" quantization method, then loads through the model adapter (transformers:
    `AutoModelForImageClassification.from_pretrained(name_or_path, use_safetensors=True, dtype=float32, **kwargs)`).
    Pickled weights are refused (`use_safetensors=False` raises). Local folders are checked first with
    `verify_checkpoint`. Errors: `CheckpointError` (corrupt, truncated, inconsistent, not a Genie checkpoint when
    `require_genie`), `ModelLoadError` (not found, network, auth).
    """
    from . import register

    register()
    if kwargs.get("use_safetensors") is False:
        raise CheckpointError("Genie checkpoints are loaded from safetensors only; use_safetensors=False (pickled "
                              "weights, which can run arbitrary code when loaded) is refused.")
    kwargs["use_safetensors"] = True
    kwargs.setdefault("dtype", torch.float32)
    name = str(name_or_path)
    local = Path(name) / (kwargs.get("subfolder") or "")  # transformers reads the checkpoint from the subfolder
    if local.is_dir():
        if require_genie:
            verify_checkpoint(local)
        elif not weight_files(local) and not weight_files(local, WEIGHTS_NAME):
            raise CheckpointError(f"{local} has no model.safetensors; pickled weights are never loaded.")
    try:
        loaded = loader_for(name).load_quantized(name, **kwargs)
    except GenieError:
        raise
    except Exception as exc:  # transformers raises OSError/ValueError/RuntimeError/HTTP errors
        raise _checkpoint_error(name, exc) from exc
    model, info = loaded if isinstance(loaded, tuple) else (loaded, None)  # output_loading_info=True: a pair
    block = getattr(model.config, "quantization_config", None)
    if require_genie and not isinstance(block, GenieQuantizationConfig):
        raise CheckpointError(f"'{name}' is not a Genie checkpoint (its config.json has no quantization_config with "
                              "quant_method 'genie'). Load FP models with genie_hub.loading.load_model, or pass "
                              "require_genie=False.")
    return model.eval() if info is None else (model.eval(), info)
