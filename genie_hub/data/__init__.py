"""Real images: Fashion-MNIST (evaluation and few-shot), pixel conversion, few-shot calibration sources.

- `fashion_mnist.py`: the IDX files, found at $GENIE_HUB_FASHION_MNIST_DIR or the Debian package location;
- `pixels.py`: uint8 arrays -> `pixel_values` exactly as the model's image processor makes them;
- `calibration.py`: `load_calibration_images(source, ...)` for `--few-shot` (Fashion-MNIST, a folder, a Hub id).
"""

from ..errors import DataError
from .calibration import IMAGE_EXTENSIONS, check_apart_from_evaluation, few_shot_folder, few_shot_key, load_calibration_images
from .fashion_mnist import (DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_ENV, FASHION_MNIST_LABELS, FASHION_MNIST_SOURCE,
                            fashion_mnist_dir, load_fashion_mnist, read_idx)
from .pixels import fashion_mnist_pixel_values, uint8_to_pixel_values

__all__ = [
    "DataError",
    "FASHION_MNIST_LABELS",
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST_ENV",
    "FASHION_MNIST_SOURCE",
    "IMAGE_EXTENSIONS",
    "read_idx",
    "fashion_mnist_dir",
    "load_fashion_mnist",
    "uint8_to_pixel_values",
    "fashion_mnist_pixel_values",
    "load_calibration_images",
    "check_apart_from_evaluation",
    "few_shot_folder",
    "few_shot_key",
]
