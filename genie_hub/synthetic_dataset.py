"""The synthetic calibration images as a `datasets` dataset: the float tensors plus PNG previews.

`storage="exact"` keeps the float32 tensors the model was calibrated on; `"fp16"` halves the size (at 224 px
the exact tensors take ~0.6 MB per image) at the cost of rounding them to float16, which the card says.
Either way `load_synthetic_dataset` returns float32 tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .adapters import InputSpec
from .fileio import replace_dir, staging_dir, through_link

DATA_FILE = "data/train-00000-of-00001.parquet"
DATA_FILES_PATTERN = "data/train-*"
"""What the card's `configs:` declares: every train shard under data/ (one today)."""
STORAGE_DTYPES = {"exact": "float32", "fp16": "float16"}


def preview_images(pixel_values: torch.Tensor, spec: InputSpec) -> list:
    """De-normalize to [0, 255] uint8 PIL images (lossy: clipped and rounded; for previews only)."""
    from PIL import Image

    pixels = (spec.denormalize(pixel_values) * 255).round().to(torch.uint8).cpu().numpy()
    if pixels.shape[1] == 1:
        return [Image.fromarray(p[0], mode="L") for p in pixels]
    if pixels.shape[1] == 3:
        return [Image.fromarray(np.transpose(p, (1, 2, 0)), mode="RGB") for p in pixels]
    return [Image.fromarray(p[0], mode="L") for p in pixels]  # other channel counts: first channel only


def build_dataset(pixel_values: torch.Tensor, spec: InputSpec, batch_indices: list[int], storage: str = "exact"):
    """The `datasets.Dataset` of the calibration set: `image` (preview), `pixel_values` (float32, or float16
    with storage="fp16"), `batch_index`."""
    from datasets import Array3D, Dataset, Features, Image, Value

    if storage not in STORAGE_DTYPES:
        raise ValueError(f"storage must be one of {', '.join(STORAGE_DTYPES)}, got {storage!r}")
    dtype = STORAGE_DTYPES[storage]
    features = Features({"image": Image(), "pixel_values": Array3D(shape=tuple(pixel_values.shape[1:]), dtype=dtype),
                         "batch_index": Value("int32")})
    return Dataset.from_dict({"image": preview_images(pixel_values, spec),
                              "pixel_values": pixel_values.float().cpu().numpy().astype(dtype),
                              "batch_index": batch_indices}, features=features)


def dataset_summary(dataset, parquet_file: Path, storage: str) -> dict[str, Any]:
    """What the dataset card's `dataset_info` and `configs` need (and run.json keeps for pushing later).
    `num_bytes` is the Arrow size of the table as read back from the parquet file, which is what `datasets`
    reports for the split once loaded (the in-memory table it was written from is a little smaller)."""
    import pyarrow.parquet as pq

    return {"features": dataset.features.to_dict(), "num_examples": len(dataset),
            "num_bytes": int(pq.read_table(parquet_file).nbytes), "download_size": parquet_file.stat().st_size,
            "data_files": DATA_FILES_PATTERN, "storage": storage}


def export_synthetic_dataset(pixel_values: torch.Tensor, spec: InputSpec, batch_indices: list[int],
                             directory: str | Path, card=None, storage: str = "exact",
                             keep_added_files: bool = False) -> dict[str, Any]:
    """Write `directory/data/train-*.parquet` (+ README.md card): a folder ready to upload as a datasets repo.

    `card` is a card object, or a function of the dataset summary (features, sizes) that returns one, so the
    card can describe the files exactly. The folder is built next to `directory` and renamed into place
    complete, replacing an earlier one (keeping the files of it outside data/ that this export does not write,
    with `keep_added_files`). Returns the summary (see `dataset_summary`)."""
    directory = through_link(directory)
    with staging_dir(directory.with_name(f".{directory.name}.staging")) as staging:
        (staging / "data").mkdir()
        dataset = build_dataset(pixel_values, spec, batch_indices, storage)
        dataset.to_parquet(str(staging / DATA_FILE))
        summary = dataset_summary(dataset, staging / DATA_FILE, storage)
        if callable(card):
            card = card(summary)
        if card is not None:
            card.save(staging / "README.md")
        replace_dir(staging, directory,  # data/ is the dataset: a stray file there would join it
                    keep_added=(lambda relative: relative.parts[0] != "data") if keep_added_files else None)
    return summary


def load_synthetic_dataset(directory_or_repo: str | Path, split: str = "train") -> torch.Tensor:
    """Read back the calibration tensors (float32, whichever storage was used) from an exported folder or a Hub
    datasets repo."""
    from datasets import load_dataset

    path = Path(directory_or_repo)
    if path.is_dir():
        dataset = load_dataset("parquet", data_files=str(path / "data" / "*.parquet"), split=split)
    else:
        dataset = load_dataset(str(directory_or_repo), split=split)
    return torch.stack(list(dataset.with_format("torch")["pixel_values"])).float()


__all__ = ["DATA_FILE", "DATA_FILES_PATTERN", "build_dataset", "export_synthetic_dataset", "load_synthetic_dataset",
           "preview_images"]

