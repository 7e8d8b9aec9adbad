"""Real calibration images for the few-shot path: Fashion-MNIST, an image folder, or a Hub dataset.

Nothing here downloads anything except a Hub dataset id (through `datasets.load_dataset`, which honours
HF_HUB_OFFLINE / HF_ENDPOINT / HF_TOKEN like the rest of genie_hub).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from ..adapters import InputSpec
from ..errors import ConfigError, DataError, first_line
from ..loading import to_pixel_values
from .eval_datasets import EvalSet, evaluation_files, hub_parts, local_splits, named_split, visible_files
from .fashion_mnist import FASHION_MNIST_SOURCE, load_fashion_mnist
from .pixels import _fast_normalize, _to_pil, decode_image

logger = logging.getLogger("genie_hub.data")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
# ----------------------------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.\-\[\]%:+]+)?$")


def _subset(n_total: int, num_samples: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n_total, generator=generator)[:num_samples].tolist()


def _list_image_files(folder: Path) -> list[Path]:
    return [p for p in visible_files(folder) if p.suffix.lower() in IMAGE_EXTENSIONS]


def _calibration_files(folder: Path, split: str | None = None) -> list[Path]:
    """The image files of `folder` that calibration draws from: the named split, else the train split of a folder
    with splits, else all of them."""
    files = _list_image_files(folder)
    if not files:
        raise DataError(f"No image files found in {folder} (searched recursively for "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))}). Put calibration images there or pick another "
                        "source.")
    splits = local_splits(folder, files)
    if split is not None:  # PATH:split, as --eval-dataset reads it
        return splits[named_split(folder, split, list(splits))]
    if len(splits) > 1:  # calibrating on the images a model is then evaluated on would flatter it
        if "train" not in splits:
            raise DataError(f"{folder} holds the splits {', '.join(splits)} but no train split: calibrating on "
                            "evaluation images would flatter the results. Pass a folder of training images, or "
                            f"name the split to calibrate on ({folder}:{next(iter(splits))}).")
        logger.info("%s holds the splits %s: calibrating on train.", folder, ", ".join(splits))
        return splits["train"]
    return files


def _folder_images(folder: Path, num_samples: int, seed: int, split: str | None = None) -> list:
    files = _calibration_files(folder, split)
    images, bad = [], []
    for index in _subset(len(files), len(files), seed):  # the seeded order; an unreadable file's place goes to
        image = decode_image({"path": str(files[index])})  # the next file, so N readable images are N
        (bad if isinstance(image, str) else images).append(image)
        if len(images) == num_samples:
            break
    if bad:
        logger.warning("Skipped %d unreadable image file(s) in %s: %s%s", len(bad), folder, ", ".join(bad[:5]),
                       " ..." if len(bad) > 5 else "")
    if not images:
        raise DataError(f"None of the image files in {folder} could be read. Check that they are valid images.")
    return images


def _hub_images(name: str, config: str | None, split: str, num_samples: int, seed: int) -> list:
    where = f"'{name}'" + (f" (config '{config}')" if config else "")
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise DataError("Loading calibration images from the Hub needs the `datasets` package: "
                        "`pip install datasets`.") from exc
    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ConnectionError, ValueError...)
        from huggingface_hub import is_offline_mode

        hint = ("HF_HUB_OFFLINE is set and the dataset is not cached; unset it or use a local image folder."
                if is_offline_mode() else
                "Check the dataset id (owner/name, optionally owner/name[:config]:split), config and split name, and "
                "your network; a gated or private dataset needs HF_TOKEN. Or use a local image folder instead.")
        first = first_line(exc)
        raise DataError(f"Could not load calibration dataset {where} (split '{split}'). {hint} "
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


def _resolve(source: str) -> tuple[str, str, str | None, str | None]:
    """(kind, where, config, split) of a few-shot source: Fashion-MNIST's train split, a local folder (with the
    split `PATH:split` names, else None) or a Hub dataset (with its config and split, default train)."""
    name, _, split = source.lower().replace("_", "-").partition(":")
    if name == FASHION_MNIST_SOURCE and split not in ("", "train"):
        raise DataError(f"Few-shot calibration reads Fashion-MNIST's train split only ('{source}' names another): "
                        "calibrating on the held-out images the model is evaluated on would flatter its results. Write "
                        f"--few-shot {FASHION_MNIST_SOURCE}.")
    if name == FASHION_MNIST_SOURCE:
        return FASHION_MNIST_SOURCE, FASHION_MNIST_SOURCE, None, "train"
    path, split = Path(source).expanduser(), None
    base, _, named = source.rpartition(":")
    if not path.exists() and base and named and Path(base).expanduser().is_dir():  # PATH:split
        path, split = Path(base).expanduser(), named
    if path.is_dir():
        return "local", str(path), None, split
    if path.exists():
        raise DataError(f"Calibration source {path} is a file; give a folder of images, 'fashion-mnist', or a Hub "
                        "dataset id (owner/name[:config][:split]).")
    if _HUB_ID.match(source) and not source.startswith((".", "/", "~")):
        name, *rest = hub_parts(source)  # owner/name[:config][:split], as --eval-dataset reads it
        if len(rest) > 2 or not all(rest):
            raise DataError(f"Calibration source '{source}' is not a Hub dataset id: write owner/name, "
                            "owner/name:split or owner/name:config:split.")
        config, split = rest if len(rest) == 2 else (None, rest[0] if rest else "train")
        return "hub", name, config, split
    raise DataError(f"Unknown calibration source '{source}': it is not an existing folder, not "
                    "'fashion-mnist', and not a Hub dataset id. Use a local folder of images, 'fashion-mnist', "
                    "or owner/name[:config][:split].")


def few_shot_folder(source: str) -> Path | None:
    """The local folder a few-shot source reads (`PATH` or `PATH:split`), None for Fashion-MNIST or a Hub id."""
    kind, where, _, _ = _resolve(source)
    return Path(where) if kind == "local" else None


def few_shot_key(source: str) -> str:
    """One spelling per set of few-shot images, so that a rerun resumes however it names them: a local folder
    by its resolved path, with `:split` only where the split is not the one the folder alone gives (`ds:train`
    and `ds` are one source when `ds/` has train/ and val/). Other sources as given."""
    kind, where, _, split = _resolve(source)
    if kind != "local":
        return source
    folder = Path(where).resolve()
    if split is None:
        return str(folder)
    splits = local_splits(folder, _list_image_files(folder))
    named = named_split(folder, split, list(splits))
    return str(folder) if named == "train" or len(splits) == 1 else f"{folder}:{named}"


def _identity(path: Path) -> tuple[int, int]:
    """A file as the disk knows it: the same under any name, symlink or hard link."""
    status = path.stat()
    return status.st_dev, status.st_ino


def _split_names(split: str | None) -> set[str]:
    """The splits a `datasets` split expression reads: "train+validation[:10%]" -> {"train", "validation"}."""
    return {part.split("[", 1)[0].strip() for part in str(split).split("+")}


def check_apart_from_evaluation(source: str, evalset: EvalSet) -> None:
    """Refuse few-shot images that are among the evaluation images: the card would report accuracy measured on
    the images the model was calibrated on, which flatters it. Checked before compute; a local folder is compared
    file by file (the same folder, one inside the other, the same split named two ways, linked files, the files a
    data file names by path), a Hub dataset by the splits its split expressions read. Copies of the files are not
    recognised."""
    kind, where, config, split = _resolve(source)
    evaluated = evalset.source
    if kind == FASHION_MNIST_SOURCE:
        shared = evaluated.kind == FASHION_MNIST_SOURCE and evalset.split == "train"
    elif kind == "local":
        shared = evaluated.kind == "local" and bool(
            {_identity(f) for f in _calibration_files(Path(where), split)}
            & {_identity(f) for f in evaluation_files(evalset)})
    else:
        shared = (evaluated.kind == "hub" and evaluated.name.lower() == where.lower()
                  and bool(_split_names(split) & _split_names(evalset.split))  # slices of one split count as one
                  and (config == evaluated.config or None in (config, evaluated.config)))
    if shared:
        advice = ("Evaluate on another split (its validation or test split) or another set."
                  if "train" in _split_names(evalset.split) else  # the calibration split already: say what else
                  "Calibrate on another split (its train split, for example) or evaluate on another set.")
        raise DataError(
            f"The few-shot calibration images ({source}) are among the evaluation images ({evaluated.label}, split "
            f"{evalset.split}, compared whole, also under --eval-limit): the results would be measured on images the "
            f"model was calibrated on, and flattered. {advice}")


def load_calibration_images(source: str, processor, spec: InputSpec, num_samples: int, seed: int = 0) -> torch.Tensor:
    """Real calibration images for the few-shot path, as normalized `pixel_values` [n, C, H, W].

    `source` is one of:
    - "fashion-mnist": a seeded random subset of the local Fashion-MNIST training split;
    - a local folder: image files found recursively (jpg, png, ...), a seeded random subset; in a folder with
      splits (`train/` and `val/`, as `eval_datasets.local_splits` reads them) the train split, or the one
      named as `PATH:split`;
    - a Hub dataset id "owner/name", "owner/name:split" or "owner/name:config:split" (default split "train"),
      loaded with `datasets.load_dataset`; the first Image column is used.
    When fewer than `num_samples` images exist, all of them are returned (with a warning). Images are converted
    to the model's colour mode (grayscale or RGB) and preprocessed by `processor`.
    """
    if int(num_samples) < 1:
        raise ConfigError(f"num_samples must be at least 1 (got {num_samples}).")
    num_samples = int(num_samples)
    source = str(source).strip()
    kind, where, config, split = _resolve(source)
    if kind == FASHION_MNIST_SOURCE:
        images, _ = load_fashion_mnist("train")
        subset = images[_subset(images.shape[0], num_samples, seed)]
        if spec.channels == 1:
            fast = _fast_normalize(subset, processor)
            if fast is not None:
                return fast
        return to_pixel_values(_to_pil(subset), processor, spec)
    if kind == "local":
        pil_images = _folder_images(Path(where), num_samples, seed, split)
    else:
        pil_images = _hub_images(where, config, split, num_samples, seed)
    if len(pil_images) < num_samples:
        logger.warning("Calibration source '%s' has only %d readable image(s); using all of them instead of %d.",
                       source, len(pil_images), num_samples)
    return to_pixel_values(pil_images, processor, spec)
