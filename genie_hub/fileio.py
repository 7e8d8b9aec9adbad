"""Atomic file writes: every file genie_hub writes appears complete under its real name, or not at all.

One rule for JSON, safetensors, parquet and raw bytes: write to a temporary sibling, then `os.replace` it
into place (atomic on POSIX and Windows within one folder). A killed run therefore never leaves a truncated
file that a resumed run, a loader or an upload could mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import torch


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed to `path`, on error it is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same folder: os.replace stays atomic
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, data: Any, *, sort_keys: bool = True) -> None:
    """Pretty-printed JSON (values JSON cannot hold are written as strings)."""
    write_bytes(path, (json.dumps(data, indent=2, sort_keys=sort_keys, default=str) + "\n").encode("utf-8"))


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file` of CPU, contiguous copies, atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
