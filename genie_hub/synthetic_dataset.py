"""The synthetic calibration images as a `datasets` dataset: exact float tensors plus PNG previews."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .adapters import InputSpec
from .fileio import replace_dir, staging_dir

DATA_FILE = "data/train-00000-of-00001.parquet"


def preview_images(pixel_values: torch.Tensor, spec: InputSpec) -> list:
    """De-normalize to [0, 255] uint8 PIL images (lossy: clipped and rounded; for previews only)."""
    from PIL import Image

    pixels = (spec.denormalize(pixel_values) * 255).round().to(torch.uint8).cpu().numpy()
    if pixels.shape[1] == 1:
        return [Image.fromarray(p[0], mode="L") for p in pixels]
    if pixels.shape[1] == 3:
        return [Image.fromarray(np.transpose(p, (1, 2, 0)), mode="RGB") for p in pixels]
    return [Image.fromarray(p[0], mode="L") for p in pixels]  # other channel counts: first channel only


def build_dataset(pixel_values: torch.Tensor, spec: InputSpec, batch_indices: list[int]):
    from datasets import Array3D, Dataset, Features, Image, Value

    features = Features({"image": Image(), "pixel_values": Array3D(shape=tuple(pixel_values.shape[1:]), dtype="float32"),
                         "batch_index": Value("int32")})
    return Dataset.from_dict({"image": preview_images(pixel_values, spec),
                              "pixel_values": pixel_values.float().cpu().numpy(),
                              "batch_index": batch_indices}, features=features)


def export_synthetic_dataset(pixel_values: torch.Tensor, spec: InputSpec, batch_indices: list[int],
                             directory: str | Path, card=None) -> Path:
    """Write `directory/data/train-*.parquet` (+ README.md card): a folder ready to upload as a datasets repo.
    The folder is built next to `directory` and renamed into place complete, replacing an earlier one."""
    directory = Path(directory)
    with staging_dir(directory.with_name(f".{directory.name}.staging")) as staging:
        (staging / "data").mkdir()
        build_dataset(pixel_values, spec, batch_indices).to_parquet(str(staging / DATA_FILE))
        if card is not None:
            card.save(staging / "README.md")
        replace_dir(staging, directory)
    return directory


def load_synthetic_dataset(directory_or_repo: str | Path, split: str = "train") -> torch.Tensor:
    """Read back the exact calibration tensors from an exported folder or a Hub datasets repo."""
    from datasets import load_dataset

    path = Path(directory_or_repo)
    if path.is_dir():
        dataset = load_dataset("parquet", data_files=str(path / "data" / "*.parquet"), split=split)
    else:
        dataset = load_dataset(str(directory_or_repo), split=split)
    return torch.stack(list(dataset.with_format("torch")["pixel_values"])).float()
