"""The transformers adapter: `AutoModelForImageClassification` models and their image processors.

The only module of genie_hub that calls transformers model APIs (`from_pretrained`, `save_pretrained`,
`model(pixel_values=...)`, `model.config`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import InputSpec, ModelAdapter, logits_of
from ..errors import GenieError, ModelLoadError, UnsupportedModelError, first_line


def _size_from_processor(processor) -> tuple[int, int] | None:
    """(height, width) of the processor's output: its crop where it crops, else the size it resizes to; None where
    it does neither (`do_resize=False`: the images keep their own size, so the model config's image_size)."""
    for attr, applies in (("crop_size", "do_center_crop"), ("size", "do_resize")):
        size = getattr(processor, attr, None)
        if size is None or not getattr(processor, applies, attr == "size"):
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


def _seven_digits(values: torch.Tensor) -> tuple[float, ...]:
    """Each value to 7 significant digits (the float32 noise of reading a processor's output goes), never -0.0."""
    return tuple(float(f"{v:.7g}") + 0.0 for v in values.tolist())


ATTENTION_IMPLEMENTATION = "genie_hub"
"""The name genie_hub's quantized attention is registered under in transformers' `AttentionInterface`."""


def register_attention(attention) -> str:
    """Register `attention` with transformers (global, idempotent for one function); returns its name, the
    value of `config._attn_implementation` that selects it."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_IMPLEMENTATION, attention)
    return ATTENTION_IMPLEMENTATION


def _refuse_file(name_or_path: str) -> None:
    """A model is a folder or a Hub id; a file (its config.json, its weights) is a common slip, said plainly."""
    if Path(str(name_or_path)).expanduser().is_file():
        raise ModelLoadError(f"Could not load model '{name_or_path}': it is a file. Pass the model's folder (the one "
                             "holding config.json), or a Hub id (owner/name).")


def _refuse_missing_weights(name_or_path: str, model: nn.Module, loading_info: dict) -> None:
    """transformers initializes at random every weight the checkpoint lacks and only logs it: a backbone saved
    without its classifier head (or a checkpoint stripped of its quantization config) would then be quantized,
    evaluated and published as if it were the model. Refused, naming what is missing."""
    missing = sorted(loading_info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ModelLoadError(
            f"{name_or_path} lacks {len(missing)} weight(s) that {type(model).__name__} needs ({shown}): transformers "
            "would fill them with random values, so every result would be meaningless. Load a checkpoint saved "
            "from this class with all its weights (a classifier, not a backbone without its head; a Genie "
            "checkpoint with its config.json as genie_hub wrote it).")


class TransformersAdapter(ModelAdapter):
    name = "transformers"

    def handles(self, model: nn.Module) -> bool:
        from transformers import PreTrainedModel

        return isinstance(model, PreTrainedModel)

    def can_load(self, name_or_path: str) -> bool:
        return True  # any folder or Hub id: transformers says what is wrong if it is not a classifier

    def logits(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        main_input = getattr(model, "main_input_name", None)
        if main_input == "input_ids":  # ImageGPT: an image as a sequence of colour-cluster token ids
            raise UnsupportedModelError(
                f"genie_hub cannot quantize {type(model).__name__}: it reads an image as token ids (its input is "
                "input_ids, e.g. ImageGPT's colour-cluster ids), not as pixel values, so there are no images to "
                "synthesize or calibrate with. Quantize a classifier that takes pixel_values (ResNet, RegNet, "
                "MobileNet, EfficientNet, ViT, DeiT, Swin, ConvNeXt, ...).")
        if main_input == "pixel_values":
            return logits_of(model(pixel_values=pixel_values))
        return logits_of(model(pixel_values))

    def input_spec(self, model: nn.Module, processor=None) -> InputSpec:
        """Geometry from the model config (channels, image_size) and processor (size, crop, mean/std)."""
        config = getattr(model, "config", None)
        channels = int(getattr(config, "num_channels", 0) or 0)
        if not channels:
            channels = super().input_spec(model).channels
        hw = _size_from_processor(processor) if processor is not None else None
        if hw is None:
            image_size = getattr(config, "image_size", None) or 224
            hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        height, width = int(hw[0]), int(hw[1])
        mean, std = self.pixel_normalization(processor, channels, height, width) if processor is not None else ((), ())
        return InputSpec(channels=channels, height=height, width=width, mean=mean, std=std)

    def pixel_normalization(self, processor, channels: int, height: int, width: int
                            ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """`InputSpec.mean` / `.std`: where `processor` puts black and white pixels of each channel.

        Read off its output for an all-black and an all-white image: whatever it does in between (rescale by
        1/255 or 1/128, normalize once or twice, subtract an offset), a per-channel affine map p -> a p + b is
        fixed by those two, std = 1 / a and mean = -b / a. Reading `image_mean` / `image_std` alone misses the
        rescale factor: EfficientNet-Lite0's (x - 127) / 128 has image_mean 127/128 and image_std 1 for pixels
        rescaled to [0, 2), i.e. mean 0.498 / std 0.502 for pixels in [0, 1]. Rounded to 7 significant digits, so
        a 1/255 rescale gives back image_mean / image_std exactly. A processor that cannot run on such images falls
        back to its attributes with its rescale factor."""
        import numpy as np
        from PIL import Image

        mode = "L" if channels == 1 else "RGB"
        images = [Image.new(mode, (width, height), value if mode == "L" else (value,) * 3) for value in (0, 255)]
        try:
            with np.errstate(all="ignore"):  # a broken normalization is reported below, not as numpy warnings
                x = self.to_pixel_values(images, processor, InputSpec(channels, height, width)).double()
        except Exception:  # noqa: BLE001 - any processor failure: the attribute route below
            x = None
        if x is not None and x.dim() != 4:  # SigLIP2's NaFlex processor: patch sequences, with masks and shapes
            raise UnsupportedModelError(
                f"The image processor ({type(processor).__name__}) makes pixel_values of shape {list(x.shape)} for 2 "
                f"images, not images [N, C, H, W] (e.g. sequences of flattened patches, fed with a patch mask and "
                "their grid shapes), and genie_hub synthesizes, calibrates with and evaluates on images. Quantize a "
                "model whose processor returns [N, C, H, W] pixel_values (ViT, DeiT, Swin, ConvNeXt, SigLIP, ...).")
        if x is not None and x.dim() == 4 and x.shape[:2] == (2, channels):
            black, white = x[:, :, x.shape[2] // 2, x.shape[3] // 2]  # constant images stay constant: the centre
            scale = white - black
            if bool(torch.isfinite(scale).all() and torch.isfinite(black).all() and (scale > 0).all()):
                return _seven_digits(-black / scale), _seven_digits(1 / scale)
        mean = tuple(float(v) for v in (getattr(processor, "image_mean", None) or ()))
        std = tuple(float(v) for v in (getattr(processor, "image_std", None) or ()))
        if not getattr(processor, "do_normalize", True) or not mean or not std:
            return (), ()
        if len(mean) != channels or len(std) != channels:
            raise ModelLoadError(
                f"The image processor normalizes {len(mean)}-channel images (image_mean {list(mean)}, image_std "
                f"{list(std)}), but the model takes {channels} channel(s) (its config's num_channels), so the "
                "processor cannot prepare its inputs (transformers refuses such a pair when it runs). The processor "
                "belongs to another model, or num_channels is wrong: fix preprocessor_config.json or config.json.")
        if not all(math.isfinite(v) for v in mean) or not all(math.isfinite(s) and s != 0 for s in std):
            raise ModelLoadError(
                f"The image processor's normalization cannot be used: image_mean {list(mean)}, image_std "
                f"{list(std)} (a std of 0 or a value that is not finite turns every pixel into inf or NaN). "
                "Fix image_mean / image_std in the model's preprocessor_config.json.")
        pixel_range = 255 * float(getattr(processor, "rescale_factor", 1 / 255)) \
            if getattr(processor, "do_rescale", True) else 255.0  # what a [0, 1] pixel spans before normalizing
        return tuple(m / pixel_range for m in mean), tuple(s / pixel_range for s in std)

    def route_attention(self, model: nn.Module, attention) -> bool:
        """Models written against `AttentionInterface` (ViT, DeiT, Swin, ...) call the registered function."""
        if not getattr(model, "_supports_attention_backend", False):
            return False
        model.set_attn_implementation(register_attention(attention))
        return True

    def calls_attention(self, module: nn.Module) -> bool:
        """A module whose forward looks its attention function up in `ALL_ATTENTION_FUNCTIONS` (transformers'
        pattern for every model written against `AttentionInterface`); read from the class's source, because a
        checkpoint is checked before any forward can run."""
        import inspect

        try:
            return "ALL_ATTENTION_FUNCTIONS" in inspect.getsource(type(module).forward)
        except (OSError, TypeError):
            return False

    def attention_detour(self, module: nn.Module) -> str | None:
        """transformers looks the function up by `module.config._attn_implementation` on every call, so
        `model.set_attn_implementation("sdpa")` (or `from_pretrained(attn_implementation=...)` under another
        loader) reroutes a routed model without touching its modules."""
        config = getattr(module, "config", None)
        current = getattr(config, "_attn_implementation", ATTENTION_IMPLEMENTATION)
        if config is None or current == ATTENTION_IMPLEMENTATION:
            return None
        return (f"the model's attention implementation is now {current!r} (set_attn_implementation or "
                f"config._attn_implementation), which runs plain attention. Call "
                f"model.set_attn_implementation({ATTENTION_IMPLEMENTATION!r}) to run the quantized attention again, "
                "or model.dequantize() for a floating-point model")

    def num_labels(self, model: nn.Module) -> int | None:
        return int(model.config.num_labels)

    def label(self, model: nn.Module, index: int) -> str:
        id2label = getattr(model.config, "id2label", None) or {}
        return str(id2label.get(index, id2label.get(str(index), f"class {index}")))

    # ---- loading and saving ------------------------------------------------------------------------------------
    def load(self, name_or_path: str, *, revision: str | None = None, token: str | None = None):
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        _refuse_file(name_or_path)
        # trust_remote_code=False: a repository's own Python code (an `auto_map` in its configs) is never run, and
        # transformers never stops a batch job to ask; the classes transformers ships load as usual.
        try:
            model, loading_info = AutoModelForImageClassification.from_pretrained(
                name_or_path, revision=revision, token=token, use_safetensors=True, dtype=torch.float32,
                trust_remote_code=False, output_loading_info=True)
        except Exception as exc:  # transformers raises OSError/ValueError/HTTP errors with long messages
            raise self.load_error(name_or_path, exc) from exc
        _refuse_missing_weights(name_or_path, model, loading_info)
        try:
            processor = AutoImageProcessor.from_pretrained(name_or_path, revision=revision, token=token,
                                                           trust_remote_code=False)
        except Exception as exc:  # none in the repo: the caller decides (`loading.require_processor`)
            processor_file = Path(name_or_path) / "preprocessor_config.json"
            if processor_file.is_file():  # one that is there but unreadable must not be guessed around
                remedy = ("Install the package it names (some transformers releases read image processors "
                          "only with torchvision), or another transformers release." if isinstance(exc, ImportError)
                          else "Restore the file from the model it came from (or delete it to load the model "
                          "without an image processor).")
                raise ModelLoadError(
                    f"{processor_file} cannot be loaded by transformers ({type(exc).__name__}: "
                    f"{first_line(exc)}), so the model's input size and normalization are unknown. {remedy}") from None
            processor = None
        model.eval()
        return model, processor

    def load_quantized(self, name_or_path: str, **kwargs) -> nn.Module:
        from transformers import AutoModelForImageClassification

        _refuse_file(name_or_path)
        kwargs.setdefault("trust_remote_code", False)  # as `load`: no repository code runs unless the caller says so
        return AutoModelForImageClassification.from_pretrained(name_or_path, **kwargs)

    def save(self, model: nn.Module, directory: str | os.PathLike, **kwargs) -> None:
        # The class method (no instance-level wrapper). Keys are written as the model names its modules
        # (`save_original_format=False`): transformers would otherwise map them back to an older layout for some
        # families (Swin's `attention.q_proj` -> `attention.self.query`), and the quantized layers' names in
        # `quantization_config` would no longer match the file. Loading such keys needs no renaming.
        kwargs.setdefault("save_original_format", False)
        type(model).save_pretrained(model, directory, **kwargs)

    def load_error(self, name: str, exc: Exception) -> Exception:
        from huggingface_hub import is_offline_mode

        if isinstance(exc, GenieError):  # genie_hub's own checks (a Genie checkpoint's): already say what to do
            return exc
        reason = f"{type(exc).__name__}: {first_line(exc)}"
        path = Path(name).expanduser()
        if not name.strip():
            return ModelLoadError("No model given (the name is empty): pass a Hub id (owner/name) or a local folder.")
        if "trust_remote_code" in str(exc):  # an `auto_map` to the repository's own code, for a type not shipped
            hint = ("It is a model with its own Python code (an auto_map in its config, for a model type transformers "
                    "does not ship), and genie_hub does not run a repository's own code: it quantizes the model "
                    "classes transformers ships.")
        elif "does not recognize this architecture" in str(exc):  # a model_type this transformers does not ship
            import transformers

            hint = (f"Its config.json names a model type that transformers {transformers.__version__} does not ship: "
                    "one added in a later transformers release (upgrade transformers within the 5.x genie_hub "
                    "supports), or one that only its repository's own code defines, which genie_hub does not run.")
        elif "ignore_mismatched_sizes" in str(exc) or "size mismatch" in str(exc):
            hint = ("Its weights do not have the shapes its config.json describes, e.g. a classifier for another "
                    "number of classes than config.json's id2label / num_labels: restore the config.json saved with "
                    "these weights.")
        elif path.is_dir() and (path / "model" / "config.json").is_file() and not (path / "config.json").is_file():
            hint = (f"It has no config.json, but its model/ subfolder has one: pass '{Path(name) / 'model'}' (the "
                    "quantized model of a `genie_hub quantize` output folder is in OUT/model).")
        elif path.is_dir() and (odd := next((f for f in sorted(path.glob("*.safetensors")) if not f.is_file()), None)):
            hint = (f"Its weights file {odd.name} is not a regular file (it is, or links to, a device, a pipe or a "
                    "folder), so transformers finds no weights there. Replace it with the real file.")
        elif isinstance(exc, ImportError):  # a model class that needs a package this machine lacks (Dinat: natten)
            text = " ".join(str(exc).split())
            text = text if len(text) <= 300 else text[:297].rstrip() + "..."
            hint = f"Its model class needs a package that is not installed ({text}). Install it, or quantize another model."
            return ModelLoadError(f"Could not load model '{name}'. {hint}")
        elif path.is_dir() and not any(path.glob("*.safetensors")) and any(path.glob("pytorch_model*.bin")):
            hint = ("It holds its weights only as a pickled pytorch_model.bin, and genie_hub loads safetensors weights "
                    "only (unpickling a file can run code). Convert it where you trust the file, e.g. "
                    "`AutoModelForImageClassification.from_pretrained(folder, use_safetensors=False)"
                    ".save_pretrained(folder)` writes model.safetensors.")
        elif path.is_dir():
            hint = ("The folder exists but does not hold a loadable transformers image classifier ("
                    + ("it has no config.json)." if not (path / "config.json").is_file()
                       else "it needs config.json and model.safetensors)."))
        elif path.is_absolute() or name.startswith(("./", "../", "~", ".\\")) or "\\" in name or name.count("/") > 1:
            return ModelLoadError(f"Could not load model '{name}': there is no such folder (and a path is not a Hub "
                                  "id, owner/name). Check the path.")
        elif is_offline_mode():
            hint = "HF_HUB_OFFLINE is set and the model is not in the local cache; unset it or pass a local folder."
        else:
            hint = ("Check the Hub id (owner/name) and your network, or pass a local folder. A gated or private "
                    "model needs HF_TOKEN or `hf auth login`. HF_ENDPOINT is honoured.")
        return ModelLoadError(f"Could not load model '{name}'. {hint} ({reason})")

    def card_metadata(self, model: nn.Module) -> dict[str, Any]:
        license_ = getattr(getattr(model, "config", None), "license", None)
        return {"license": license_} if license_ else {}
