"""Real-image data access: Fashion-MNIST from the local IDX files, and calibration images for few-shot runs.

Nothing here downloads anything except `load_calibration_images` given a Hub dataset id (which goes through
`datasets.load_dataset` and honours HF_HUB_OFFLINE / HF_ENDPOINT / HF_TOKEN like the rest of genie_hub).
"""

from __future__ import annotations

import gzip
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, GenieError
from .loading import InputSpec, to_pixel_values

__all__ = [
    "DataError",
    "FASHION_MNIST_LABELS",
    "DEFAULT_FASHION_MNIST_DIR",
    "IMAGE_EXTENSIONS",
    "read_idx",
    "fashion_mnist_dir",
    "load_fashion_mnist",
    "uint8_to_pixel_values",
    "fashion_mnist_pixel_values",
    "load_calibration_images",
]


class DataError(GenieError):
    """Images or labels could not be found or read (missing dataset, empty folder, unknown source)."""


FASHION_MNIST_LABELS: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
"""Fashion-MNIST class names, index = label."""

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "GENIE_HUB_FASHION_MNIST_DIR"
FASHION_MNIST_SOURCE = "fashion-mnist"

_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# ----------------------------------------------------------------------------------------------------------
# IDX / Fashion-MNIST
# ----------------------------------------------------------------------------------------------------------

def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array in native byte order.

    Layout: 2 zero bytes, a type code byte, the number of dimensions, one big-endian uint32 per dimension,
    then the raw big-endian data.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"Could not read IDX file {path}: {exc}. Re-download or reinstall the dataset.") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()}). "
                        "Point genie_hub at the original *-idx?-ubyte(.gz) files.")
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {path} is truncated (header). Re-download or reinstall the dataset.")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if len(raw) - header != count * dtype.itemsize:
        raise DataError(f"IDX file {path} holds {len(raw) - header} data bytes but its header {dims} needs "
                        f"{count * dtype.itemsize}; the file is truncated or corrupt. Re-download or reinstall it.")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=True)


def fashion_mnist_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the Fashion-MNIST IDX files: `root`, else $GENIE_HUB_FASHION_MNIST_DIR, else the
    Debian package location /usr/share/datasets/fashion-mnist."""
    if root is not None:
        return Path(root)
    env = os.environ.get(FASHION_MNIST_ENV)
    return Path(env) if env else DEFAULT_FASHION_MNIST_DIR


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def load_fashion_mnist(split: str = "test", root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST images (uint8 [N, 28, 28]) and labels (int64 [N]) from the original IDX files.

    `split` is "train" (60000 images) or "test" (10000). See `fashion_mnist_dir` for where files are looked up.
    """
    if split not in _FASHION_MNIST_FILES:
        raise ConfigError(f"Unknown Fashion-MNIST split '{split}'. Use 'train' or 'test'.")
    directory = fashion_mnist_dir(root)
    image_stem, label_stem = _FASHION_MNIST_FILES[split]
    image_path, label_path = _find_idx(directory, image_stem), _find_idx(directory, label_stem)
    if image_path is None or label_path is None:
        missing = image_stem if image_path is None else label_stem
        raise DataError(
            f"Fashion-MNIST '{split}' files were not found in {directory} (looked for {missing}.gz). Install them "
            f"with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or set {FASHION_MNIST_ENV} to a folder "
            f"holding the original IDX files ({image_stem}.gz and {label_stem}.gz)."
        )
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0] or images.dtype != np.uint8:
        raise DataError(f"Fashion-MNIST files in {directory} are inconsistent: images {images.shape} "
                        f"{images.dtype}, labels {labels.shape}. Reinstall `dataset-fashion-mnist`.")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


# ----------------------------------------------------------------------------------------------------------
# uint8 arrays -> model inputs
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


# ----------------------------------------------------------------------------------------------------------
# Calibration images for the few-shot path
# ----------------------------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.\-\[\]%:+]+)?$")


def _subset(n_total: int, num_samples: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n_total, generator=generator)[:num_samples].tolist()


def _list_image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _folder_images(folder: Path, num_samples: int, seed: int) -> list:
    from PIL import Image, UnidentifiedImageError

    files = _list_image_files(folder)
    if not files:
        raise DataError(f"No image files found in {folder} (searched recursively for "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))}). Put calibration images there or pick another "
                        "source.")
    chosen = [files[i] for i in _subset(len(files), num_samples, seed)]
    images, bad = [], []
    for path in chosen:
        try:
            with Image.open(path) as im:
                im.load()
                images.append(im.copy())
        except (UnidentifiedImageError, OSError) as exc:
            bad.append(f"{path.name} ({type(exc).__name__})")
    if bad:
        warnings.warn(f"Skipped {len(bad)} unreadable image file(s) in {folder}: {', '.join(bad[:5])}"
                      + (" ..." if len(bad) > 5 else ""), stacklevel=3)
    if not images:
        raise DataError(f"None of the image files in {folder} could be read. Check that they are valid images.")
    return images


def _hub_images(source: str, num_samples: int, seed: int) -> list:
    name, _, split = source.partition(":")
    split = split or "train"
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise DataError("Loading calibration images from the Hub needs the `datasets` package: "
                        "`pip install datasets`.") from exc
    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ConnectionError, ValueError...)
        from huggingface_hub import is_offline_mode

        hint = ("HF_HUB_OFFLINE is set and the dataset is not cached; unset it or use a local image folder."
                if is_offline_mode() else
                "Check the dataset id (owner/name, optionally owner/name:split) and split name, and your network; "
                "a gated or private dataset needs HF_TOKEN. Or use a local image folder instead.")
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"Could not load calibration dataset '{name}' (split '{split}'). {hint} "
                        f"({type(exc).__name__}: {first})") from exc
    image_columns = [col for col, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
    if not image_columns:
        raise DataError(f"Dataset '{name}' (split '{split}') has no Image column (columns: "
                        f"{', '.join(dataset.column_names)}). Use a dataset of images, or a local image folder.")
    if len(dataset) == 0:
        raise DataError(f"Dataset '{name}' split '{split}' is empty. Pick another split or dataset.")
    indices = _subset(len(dataset), num_samples, seed)
    column = dataset.select(indices)[image_columns[0]]
    return list(column)


def load_calibration_images(source: str, processor, spec: InputSpec, num_samples: int, seed: int = 0) -> torch.Tensor:
    """Real calibration images for the few-shot path, as normalized `pixel_values` [n, C, H, W].

    `source` is one of:
    - "fashion-mnist": a seeded random subset of the local Fashion-MNIST training split;
    - a local folder: image files found recursively (jpg, png, ...), a seeded random subset;
    - a Hub dataset id "owner/name" or "owner/name:split" (default split "train"), loaded with
      `datasets.load_dataset`; the first Image column is used.
    When fewer than `num_samples` images exist, all of them are returned (with a warning). Images are converted
    to the model's colour mode (grayscale or RGB) and preprocessed by `processor`.
    """
    if int(num_samples) < 1:
        raise ConfigError(f"num_samples must be at least 1 (got {num_samples}).")
    num_samples = int(num_samples)
    source = str(source).strip()
    if source.lower().replace("_", "-") in (FASHION_MNIST_SOURCE, FASHION_MNIST_SOURCE + ":train"):
        images, _ = load_fashion_mnist("train")
        subset = images[_subset(images.shape[0], num_samples, seed)]
        if spec.channels == 1:
            fast = _fast_normalize(subset, processor)
            if fast is not None:
                return fast
        return to_pixel_values(_to_pil(subset), processor, spec)
    path = Path(source).expanduser()
    if path.is_dir():
        pil_images = _folder_images(path, num_samples, seed)
    elif path.exists():
        raise DataError(f"Calibration source {path} is a file; give a folder of images, 'fashion-mnist', or a Hub "
                        "dataset id (owner/name[:split]).")
    elif _HUB_ID.match(source) and not source.startswith((".", "/", "~")):
        pil_images = _hub_images(source, num_samples, seed)
    else:
        raise DataError(f"Unknown calibration source '{source}': it is not an existing folder, not "
                        "'fashion-mnist', and not a Hub dataset id. Use a local folder of images, 'fashion-mnist', "
                        "or owner/name[:split].")
    if len(pil_images) < num_samples:
        warnings.warn(f"Calibration source '{source}' has only {len(pil_images)} image(s); "
                      f"using all of them instead of {num_samples}.", stacklevel=2)
    return to_pixel_values(pil_images, processor, spec)
