"""Fashion-MNIST from its original IDX files (the Debian package `dataset-fashion-mnist`, or any folder)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError

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


