"""uint8 image arrays -> the model's normalized `pixel_values`, exactly as its image processor makes them."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from ..adapters import InputSpec
from ..errors import ConfigError
from ..loading import to_pixel_values

logger = logging.getLogger("genie_hub.data")

# ----------------------------------------------------------------------------------------------------------

def _as_hw(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return size, size
    size = dict(size)
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    return None


def _fast_normalize(images: torch.Tensor, processor) -> torch.Tensor | None:
    """Vectorised equivalent of a resize/rescale/normalize processor when no resampling is needed.

    Returns None when the processor would do more than rescale+normalize (resize to another size, crop,
    colour conversion), in which case the caller falls back to the processor itself.
    """
    if processor is None or images.ndim != 3:
        return None
    height, width = images.shape[-2:]
    if getattr(processor, "do_resize", False) and _as_hw(getattr(processor, "size", None)) != (height, width):
        return None
    if getattr(processor, "do_center_crop", False) and _as_hw(getattr(processor, "crop_size", None)) != (height, width):
        return None
    if getattr(processor, "do_convert_rgb", False) or getattr(processor, "do_pad", False):
        return None
    if getattr(processor, "include_top", False):  # EfficientNet-style second normalization
        return None
    if any(hasattr(processor, attr) and getattr(processor, attr) for attr in ("do_reduce_labels", "do_flip_channel_order")):
        return None
    mean = getattr(processor, "image_mean", None)
    std = getattr(processor, "image_std", None)
    do_normalize = getattr(processor, "do_normalize", False)
    if do_normalize and (mean is None or std is None or len(list(np.atleast_1d(mean))) != 1):
        return None
    # Same arithmetic as transformers' numpy pipeline: rescale in float64, cast to float32, normalize in float32.
    x = images.to(torch.float64).unsqueeze(1)
    if getattr(processor, "do_rescale", False):
        x = x * float(processor.rescale_factor)
    x = x.to(torch.float32)
    if do_normalize:
        m = torch.tensor(np.atleast_1d(mean), dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(np.atleast_1d(std), dtype=torch.float32).view(1, -1, 1, 1)
        x = (x - m) / s
    return x.contiguous()


def _to_pil(images: torch.Tensor) -> list:
    from PIL import Image

    arrays = images.cpu().numpy()
    if arrays.ndim == 4 and arrays.shape[-1] == 1:
        arrays = arrays[..., 0]
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arrays]


def uint8_to_pixel_values(images_uint8: torch.Tensor, processor, spec: InputSpec | None = None,
                          batch_size: int = 1024) -> torch.Tensor:
    """Convert uint8 images ([N, H, W] grayscale or [N, H, W, C]) to the model's normalized `pixel_values`.

    The result equals running `processor` on the same images as PIL images. A grayscale 1-channel processor
    whose size already matches gets a vectorised fast path; anything else (resizing, cropping, RGB models)
    goes through PIL and `genie_hub.loading.to_pixel_values`, in batches.
    """
    images = torch.as_tensor(images_uint8)
    if images.dtype != torch.uint8:
        raise ConfigError(f"Expected uint8 images, got {images.dtype}. Pass the raw 0-255 pixels.")
    if images.ndim not in (3, 4):
        raise ConfigError(f"Expected images shaped [N, H, W] or [N, H, W, C], got {tuple(images.shape)}.")
    channels = spec.channels if spec is not None else None
    if channels in (None, 1):
        fast = _fast_normalize(images, processor)
        if fast is not None:
            return fast
    if spec is None:
        if processor is None:
            raise ConfigError("uint8_to_pixel_values needs a processor or an InputSpec.")
        hw = _as_hw(getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False)
                    else getattr(processor, "size", None)) or tuple(images.shape[1:3])
        spec = InputSpec(channels=1 if images.ndim == 3 else images.shape[-1], height=hw[0], width=hw[1])
    outputs = []
    for start in range(0, images.shape[0], batch_size):
        outputs.append(to_pixel_values(_to_pil(images[start:start + batch_size]), processor, spec))
    if not outputs:
        return torch.empty((0, spec.channels, spec.height, spec.width))
    return torch.cat(outputs)


def fashion_mnist_pixel_values(images_uint8: torch.Tensor, processor, spec: InputSpec | None = None) -> torch.Tensor:
    """Fashion-MNIST uint8 images [N, 28, 28] -> `pixel_values` as the model's processor makes them."""
    return uint8_to_pixel_values(images_uint8, processor, spec)


def decode_image(value: dict):
    """An image given as {"path"} or as a datasets Image value stored undecoded ({"bytes", "path"}), as a PIL
    image; or, when it cannot be read (not an image, truncated, a decompression bomb), a short description of
    why. Evaluation sets and few-shot folders both read through it: one bad file among thousands is skipped with
    its name, not a crash after the whole quantization."""
    import io

    from PIL import Image, ImageOps

    where = Path(value.get("path") or "image").name
    try:
        with warnings.catch_warnings(record=True) as caught:  # PIL's bomb warning names no file: said here
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
        if any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught):
            logger.warning("%s is a very large image (%dx%d px); decoding it takes a lot of memory.", where,
                           *image.size)
        with image:
            image.load()
            try:  # upright, as `datasets` decodes it and viewers show it (phone photos are stored sideways)
                return ImageOps.exif_transpose(image)
            except Exception:  # noqa: BLE001 - a malformed EXIF block: the pixels as stored
                return image.copy()
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, ValueError, DecompressionBombError, ...
        return f"{where} ({type(exc).__name__})"


def open_image(path: str | Path, mode: str = "RGB"):
    """An image file as genie_hub reads every image (evaluate, few-shot folders, the Space), in `mode` ("L" or
    "RGB"): upright as its EXIF orientation says, 16-bit and float pixels rescaled rather than clipped, transparent
    pixels on white. `Image.open(path).convert(mode)` clips a 16-bit PNG to white and ignores EXIF, so a model
    card's snippet uses this to predict what genie_hub measured."""
    from ..adapters.base import in_model_mode
    from ..errors import DataError

    if mode not in ("L", "RGB"):
        raise ConfigError(f"mode must be 'L' (one channel) or 'RGB', got {mode!r}.")
    image = decode_image({"path": str(path)})
    if isinstance(image, str):
        raise DataError(f"Cannot read {path} as an image: {image}, not a readable image file.")
    return in_model_mode(image, mode)
