"""Load -> the first stage: resolve a Hub id or local folder to a model, its image processor and input spec.

The input spec (channels, height, width, normalization) comes from the model's adapter, which reads the
model config and image processor, so synthesis never assumes 224 px RGB.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .adapters import InputSpec, adapter_for, loader_for
from .adapters.base import ModelAdapter
from .arguments import refuse_non_finite
from .errors import ConfigError, ModelLoadError

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL_DIR = ASSETS_DIR / "fashion-mnist-resnet"
"""The embedded default model: a small ResNet trained on Fashion-MNIST (see benchmarks/train_default_model.py)."""
DEFAULT_QUANTIZED_DIR = ASSETS_DIR / "fashion-mnist-resnet-genie-w4a4"
"""Its Genie W4A4 quantized version (quick profile), used by the Space when nothing else is given."""


EMBEDDED_HUB_NAMESPACE = "genie-hub"
"""The embedded models are published as `genie-hub/<asset folder>`; apps show them by that id, never by path."""


def embedded_hub_id(path: str | os.PathLike) -> str | None:
    """`genie-hub/<name>` for a model folder shipped in genie_hub/assets/, else None."""
    folder = Path(str(path)).expanduser()
    if folder.parent.resolve() == ASSETS_DIR.resolve() and (folder / "config.json").is_file():
        return f"{EMBEDDED_HUB_NAMESPACE}/{folder.name}"
    return None


def embedded_folder(model_id: str) -> Path | None:
    """The local copy of an embedded model named by its Hub id (`genie-hub/<asset>`), when it is installed."""
    namespace, _, name = str(model_id).strip().partition("/")
    if namespace != EMBEDDED_HUB_NAMESPACE or not name or "/" in name or name in (".", ".."):
        return None
    folder = ASSETS_DIR / name
    return folder if (folder / "config.json").is_file() else None


def resolve_model_path(name_or_path: str | os.PathLike | None) -> str:
    """`None` means the embedded default model; an existing folder becomes its absolute path (what a run records
    must name the same folder from any directory: the Space and the zoo read it later, from elsewhere); anything
    else is a Hub id."""
    if name_or_path is None:
        if not (DEFAULT_MODEL_DIR / "config.json").exists():
            raise ModelLoadError(
                f"The embedded default model is missing from {DEFAULT_MODEL_DIR}. Reinstall genie_hub, or "
                "regenerate it with `python benchmarks/train_default_model.py`."
            )
        return str(DEFAULT_MODEL_DIR)
    folder = Path(str(name_or_path)).expanduser()
    return os.path.abspath(folder) if str(name_or_path).strip() and folder.is_dir() else str(name_or_path)


def is_default_model(name_or_path: str | os.PathLike | None) -> bool:
    return name_or_path is None or Path(str(name_or_path)).resolve() == DEFAULT_MODEL_DIR.resolve()


def load_model(name_or_path: str | os.PathLike | None = None, *, revision: str | None = None,
               token: str | None = None) -> tuple[nn.Module, object | None]:
    """Load an image classifier and its image processor (None when the repo has none), in eval mode, fp32.

    Only safetensors weights are accepted: pickled `.bin` checkpoints are refused.
    """
    name = resolve_model_path(name_or_path)
    if revision is not None and Path(name).is_dir():  # recorded as the base model's revision, yet never used
        raise ConfigError(f"--revision {revision} names a revision of a Hub model, but {name_or_path or name} is a "
                          "local folder, which has only the files in it. Leave --revision out, or pass the Hub id.")
    model, processor = loader_for(name).load(name, revision=revision, token=token)
    refuse_non_finite(model, str(name_or_path or name))
    return model, processor


def require_processor(processor, name: str, purpose: str, consequence: str = "report wrong numbers") -> None:
    """Refuse to prepare images for `name` without its image processor: the size and normalization would be
    guessed (224 px, no normalization when the config does not say), and results measured on such images are
    wrong without any sign of it (a 28 px Fashion-MNIST ResNet scored 10 % instead of 92 %). `consequence`: what
    `purpose` would then do wrong. A model-folder problem, like a missing config: ModelLoadError (exit 1)."""
    if processor is None:
        raise ModelLoadError(
            f"{name} has no image processor (preprocessor_config.json), so {purpose} would prepare its images "
            f"at a guessed size and normalization and {consequence}. Copy the preprocessor_config.json of "
            "the model it came from into the folder: a model's save_pretrained does not write one (genie_hub "
            "quantize writes it into OUT/model).")


def input_spec(model: nn.Module, processor=None) -> InputSpec:
    """Read the input geometry and normalization from the model config and (optionally) its processor."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"input_spec takes the model (an nn.Module), got {type(model).__name__}.")
    if processor is not None and (isinstance(processor, (str, bytes, os.PathLike)) or not callable(processor)):
        raise TypeError(f"processor must be the model's image processor object (load_model returns it, or "
                        f"transformers.AutoImageProcessor.from_pretrained(...)), got {type(processor).__name__} "
                        f"{processor!r:.80}.")
    return adapter_for(model).input_spec(model, processor)


def to_pixel_values(images: Sequence, processor, spec: InputSpec) -> torch.Tensor:
    """Turn PIL images into normalized `pixel_values`, converting the colour mode to what the model takes."""
    return ModelAdapter().to_pixel_values(images, processor, spec)


__all__ = ["ASSETS_DIR", "DEFAULT_MODEL_DIR", "DEFAULT_QUANTIZED_DIR", "EMBEDDED_HUB_NAMESPACE", "InputSpec",
           "embedded_folder", "embedded_hub_id", "input_spec", "is_default_model", "load_model", "require_processor",
           "resolve_model_path", "to_pixel_values"]
