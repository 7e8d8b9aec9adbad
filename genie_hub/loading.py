"""Load -> the first step: resolve a Hub id or local folder to a model, its image processor and input spec.

The input spec (channels, height, width, normalization) is read from the model's config and image
processor, so synthesis never assumes 224 px RGB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .errors import ModelLoadError

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL_DIR = ASSETS_DIR / "fashion-mnist-resnet"
"""The embedded default model: a small ResNet trained on Fashion-MNIST (see benchmarks/train_default_model.py)."""
DEFAULT_QUANTIZED_DIR = ASSETS_DIR / "fashion-mnist-resnet-genie-w4a4"
"""Its Genie W4A4 quantized version (quick profile), used by the Space when nothing else is given."""


@dataclass(frozen=True)
class InputSpec:
    """What the model expects as `pixel_values`: shape and the normalization applied by its processor."""

    channels: int
    height: int
    width: int
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict:
        return {"channels": self.channels, "height": self.height, "width": self.width,
                "mean": list(self.mean), "std": list(self.std)}

    def denormalize(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Map normalized model inputs back to [0, 1] pixels (for previews only)."""
        x = pixel_values.float()
        if self.mean and self.std:
            mean = torch.tensor(self.mean, dtype=x.dtype).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype).view(1, -1, 1, 1)
            x = x * std + mean
        return x.clamp(0, 1)


def _size_from_processor(processor) -> tuple[int, int] | None:
    for attr in ("crop_size", "size"):
        size = getattr(processor, attr, None)
        if size is None:
            continue
        if isinstance(size, int):
            return size, size
        size = dict(size)
        if "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        if "shortest_edge" in size and attr == "size" and not getattr(processor, "do_center_crop", False):
            edge = int(size["shortest_edge"])
            return edge, edge
    return None


def input_spec(model: nn.Module, processor=None) -> InputSpec:
    """Read the input geometry and normalization from the model config and (optionally) its processor."""
    config = getattr(model, "config", None)
    channels = int(getattr(config, "num_channels", 0) or 0)
    if not channels:
        first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        channels = first_conv.in_channels if first_conv is not None else 3
    hw = _size_from_processor(processor) if processor is not None else None
    if hw is None:
        image_size = getattr(config, "image_size", None) or 224
        hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    mean = tuple(float(v) for v in (getattr(processor, "image_mean", None) or ()))
    std = tuple(float(v) for v in (getattr(processor, "image_std", None) or ()))
    if processor is not None and not getattr(processor, "do_normalize", True):
        mean, std = (), ()
    if mean and len(mean) != channels:
        mean, std = (mean * channels)[:channels], (std * channels)[:channels]
    return InputSpec(channels=channels, height=int(hw[0]), width=int(hw[1]), mean=mean, std=std)


def resolve_model_path(name_or_path: str | os.PathLike | None) -> str:
    """`None` means the embedded default model; an existing folder is used as-is; anything else is a Hub id."""
    if name_or_path is None:
        if not (DEFAULT_MODEL_DIR / "config.json").exists():
            raise ModelLoadError(
                f"The embedded default model is missing from {DEFAULT_MODEL_DIR}. Reinstall genie_hub, or "
                "regenerate it with `python benchmarks/train_default_model.py`."
            )
        return str(DEFAULT_MODEL_DIR)
    return str(name_or_path)


def _load_error(name: str, exc: Exception) -> ModelLoadError:
    from huggingface_hub import is_offline_mode

    local = Path(name).exists()
    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if local:
        hint = ("The folder exists but does not hold a loadable transformers image classifier "
                "(it needs config.json and model.safetensors).")
    elif is_offline_mode():
        hint = ("HF_HUB_OFFLINE is set and the model is not in the local cache; unset it or pass a local folder.")
    else:
        hint = ("Check the Hub id (owner/name) and your network, or pass a local folder. A gated or private "
                "model needs HF_TOKEN or `hf auth login`. HF_ENDPOINT is honoured.")
    return ModelLoadError(f"Could not load model '{name}'. {hint} ({reason})")


def load_model(name_or_path: str | os.PathLike | None = None, *, revision: str | None = None,
               token: str | None = None) -> tuple[nn.Module, object | None]:
    """Load an image classifier and its image processor (None when the repo has none), in eval mode, fp32.

    Only safetensors weights are accepted: pickled `.bin` checkpoints are refused.
    """
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    name = resolve_model_path(name_or_path)
    try:
        model = AutoModelForImageClassification.from_pretrained(
            name, revision=revision, token=token, use_safetensors=True, dtype=torch.float32)
    except Exception as exc:  # transformers raises OSError/ValueError/HTTP errors with long messages
        raise _load_error(name, exc) from exc
    try:
        processor = AutoImageProcessor.from_pretrained(name, revision=revision, token=token)
    except Exception:
        processor = None
    model.eval()
    return model, processor


def to_pixel_values(images: Sequence, processor, spec: InputSpec) -> torch.Tensor:
    """Turn PIL images into normalized `pixel_values`, converting the colour mode to what the model takes."""
    mode = "L" if spec.channels == 1 else "RGB"
    converted = [im.convert(mode) for im in images]
    if processor is None:
        import numpy as np

        arrays = [np.asarray(im.resize((spec.width, spec.height)), dtype="float32") / 255.0 for im in converted]
        x = torch.from_numpy(np.stack(arrays))
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        if spec.mean:
            x = (x - torch.tensor(spec.mean).view(1, -1, 1, 1)) / torch.tensor(spec.std).view(1, -1, 1, 1)
        return x
    return processor(images=converted, return_tensors="pt")["pixel_values"].float()
