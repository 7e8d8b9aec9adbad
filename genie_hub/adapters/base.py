"""The model adapter interface: everything genie_hub needs from a model library, in one place.

Synthesis, quantization, evaluation and the Space never call a model library directly; they ask the
adapter that handles the model (`genie_hub.adapters.adapter_for(model)`) for its logits, its input spec and
its labels, and loading/saving go through the adapter that handles the source. Supporting another library
(timm, a plain torch module zoo) is one new file with a subclass of `ModelAdapter` and one
`register_adapter` call.

The base class itself handles any `nn.Module` whose forward takes a pixel tensor and returns logits (or an
object with a `.logits` attribute); it cannot load or save.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn


def eight_bit(image):
    """A 16-bit or float grayscale image (PIL modes I;16*, I, F) as 8-bit "L", scaled rather than clipped: PIL's
    own convert clips them to 0-255, which turns a 16-bit PNG almost white and a float image in [0, 1] black.
    16-bit images (I;16*) are 16-bit data (x / 257), a dark one too; 32-bit integers ("I", which older Pillow
    also gives 16-bit PNGs) are read as 16-bit data when any value exceeds 255; floats within [0, 1] are scaled by
    255, other floats are clipped as PIL would. Other modes are returned as they are."""
    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    import numpy as np
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() >= 0 and finite.max() <= 1:
            values = values * 255
    elif image.mode.startswith("I;16") or (values.size and values.max() > 255):
        values = values / 257
    return Image.fromarray(np.nan_to_num(values).clip(0, 255).round().astype(np.uint8))  # 2-D uint8: "L"


def in_model_mode(image, mode: str):
    """`image` in `mode` ("L" or "RGB") as genie_hub reads every image (evaluation sets, few-shot folders, the
    Space), so that they all feed a model the same pixels: 16-bit and float pixels rescaled (`eight_bit`),
    transparent pixels composited on white, as a browser shows them (PIL's convert drops the alpha and keeps
    whatever colour transparent pixels store, often black), colour spaces PIL cannot turn into "L" via RGB."""
    from PIL import Image

    image = eight_bit(image)
    if image.mode in ("RGBA", "RGBa", "LA", "PA") or "transparency" in image.info:  # also L/RGB/P with tRNS
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    elif image.mode in ("LAB", "HSV", "YCbCr", "CMYK"):
        image = image.convert("RGB")
    return image.convert(mode)


def real_images_refused(channels: int) -> str:
    """Why images (photos: RGB or grayscale) cannot be the inputs of a model of `channels` channels."""
    return (f"The model takes {channels}-channel inputs, and images (few-shot sources, evaluation sets, photos) have "
            "3 (RGB) or 1 (grayscale), so they cannot be fed to it. Quantize it zero-shot without an evaluation set "
            "(`--eval-dataset none`, no --few-shot), or call genie_hub.quantize with pixel_values you prepare.")


@dataclass(frozen=True)
class InputSpec:
    """What the model expects as `pixel_values`: shape and the normalization applied by its processor.

    `mean` and `std` say where the processor puts a pixel p in [0, 1] (black 0, white 1) of each channel:
    `pixel_values = (p - mean) / std`. They are the processor's `image_mean` / `image_std` only when it first
    rescales by 1/255; a processor that rescales by 1/128 (EfficientNet-Lite0's (x - 127) / 128) or normalizes
    twice has other values (`TransformersAdapter.input_spec` reads them off the processor's output)."""

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


def logits_of(output: Any) -> torch.Tensor:
    """The logits tensor of a model output: a tensor, an object with `.logits`, a dict or a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        from ..errors import UnsupportedModelError

        raise UnsupportedModelError(
            f"The model's output ({type(output).__name__}) holds no logits (no `logits` field, and it is not a "
            "tensor or a tuple), so genie_hub cannot read its predictions to synthesize images, quantize or evaluate "
            "it (PP-LCNet, for one, returns its class scores as last_hidden_state). Quantize a classifier whose "
            "output has logits.")
    return logits


class ModelAdapter:
    """Base adapter: a plain `nn.Module` image classifier. Subclasses override what their library adds."""

    name = "torch"

    # ---- which models and sources this adapter handles ------------------------------------------------------
    def handles(self, model: nn.Module) -> bool:
        return isinstance(model, nn.Module)

    def can_load(self, name_or_path: str) -> bool:
        return False

    # ---- running a model -----------------------------------------------------------------------------------
    def logits(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        return logits_of(model(pixel_values))

    def input_spec(self, model: nn.Module, processor=None) -> InputSpec:
        """A plain module says nothing about its input: 224 px, the first conv's channels, no normalization.
        A processor given for it is not read (its attributes differ by library), so that is said, not ignored."""
        first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        channels = first_conv.in_channels if first_conv is not None else 3
        if processor is not None:
            logging.getLogger("genie_hub").warning(
                "The processor given for %s is not read (no genie_hub adapter handles this model type): its input "
                "is taken to be %dx%d with %d channel(s) and no normalization. Pass spec=InputSpec(channels, height, "
                "width, mean, std) to say what it takes.", type(model).__name__, 224, 224, channels)
        return InputSpec(channels=channels, height=224, width=224)

    def route_attention(self, model: nn.Module, attention) -> bool:
        """Make every attention of `model` run through `attention(module, query, key, value, attention_mask,
        scaling=..., dropout=...) -> (output, probabilities)`, the library's own attention extension point (how
        genie_hub quantizes the attention matmuls). False where there is none: attention stays in FP."""
        return False

    def calls_attention(self, module: nn.Module) -> bool:
        """Whether `module` computes attention through the function `route_attention` installs."""
        return False

    def attention_detour(self, module: nn.Module) -> str | None:
        """Why `module`'s attention would now bypass the function `route_attention` installed (the user switched
        the model's attention back), with how to undo it; None while it runs through that function."""
        return None

    def num_labels(self, model: nn.Module) -> int | None:
        return None

    def label(self, model: nn.Module, index: int) -> str:
        return f"class {index}"

    def to_pixel_values(self, images: Sequence, processor, spec: InputSpec) -> torch.Tensor:
        """PIL images -> normalized `pixel_values`, converted to the colour mode the model takes."""
        if spec.channels not in (1, 3):
            from ..errors import DataError

            raise DataError(real_images_refused(spec.channels))
        mode = "L" if spec.channels == 1 else "RGB"
        converted = [in_model_mode(im, mode) for im in images]
        if processor is None:
            import numpy as np

            arrays = [np.asarray(im.resize((spec.width, spec.height)), dtype="float32") / 255.0 for im in converted]
            x = torch.from_numpy(np.stack(arrays))
            x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
            if spec.mean:
                x = (x - torch.tensor(spec.mean).view(1, -1, 1, 1)) / torch.tensor(spec.std).view(1, -1, 1, 1)
            return x
        if mode == "L":  # transformers 5.0 refuses 2-D (grayscale PIL) images; H x W x 1 reads the same everywhere
            import numpy as np

            converted = [np.asarray(im)[..., None] for im in converted]
        return processor(images=converted, return_tensors="pt")["pixel_values"].float()

    # ---- loading and saving (library-specific) --------------------------------------------------------------
    def load(self, name_or_path: str, *, revision: str | None = None, token: str | None = None):
        """(model in eval mode, fp32; its image processor or None). Safetensors weights only."""
        raise NotImplementedError(f"The {self.name} adapter cannot load models.")

    def load_quantized(self, name_or_path: str, **kwargs) -> nn.Module:
        """A quantized checkpoint through the library's own loader (quantization hooks registered first)."""
        raise NotImplementedError(f"The {self.name} adapter cannot load quantized checkpoints.")

    def save(self, model: nn.Module, directory: str | os.PathLike, **kwargs) -> None:
        """The library's own save (weights + config), without genie_hub's checkpoint additions."""
        raise NotImplementedError(f"The {self.name} adapter cannot save models.")

    def load_error(self, name: str, exc: Exception) -> Exception:
        """Turn a loader's exception into a one-paragraph `GenieError` for the user."""
        from ..errors import ModelLoadError

        return ModelLoadError(f"Could not load model '{name}' ({type(exc).__name__}: {exc}).")

    def card_metadata(self, model: nn.Module) -> dict[str, Any]:
        """Metadata for the model card: {"license": ...} when the model declares it."""
        return {}
