"""Read and check safetensors headers without loading tensors (and without ever unpickling anything).

The safetensors layout: 8 bytes little-endian u64 N, N bytes of JSON header {name: {dtype, shape,
data_offsets: [begin, end]}, "__metadata__": {...}}, then the data section. A complete file is exactly
8 + N + max(end) bytes long, which is how truncation is detected before transformers memory-maps it.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from pathlib import Path

from ..errors import CheckpointError

DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
MAX_HEADER_BYTES = 100_000_000


def _corrupt(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"The checkpoint file {path} is not a valid safetensors file: {what}. It is truncated or corrupt "
        "(an interrupted download or copy?). Delete it and download/save the checkpoint again.")


def read_header(path: str | os.PathLike) -> dict[str, dict]:
    """{tensor name: {"dtype": "I32", "shape": [..]}} of one .safetensors file; CheckpointError when it is
    unreadable, truncated, padded with trailing bytes, or its header is inconsistent."""
    return _parse(Path(path))[0]


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `__metadata__` string map of one .safetensors file (after the same checks as `read_header`)."""
    return _parse(Path(path))[1]


def _parse(path: Path) -> tuple[dict[str, dict], dict[str, str]]:
    if path.suffix != ".safetensors":
        raise CheckpointError(
            f"Refusing to read {path}: Genie checkpoints are safetensors only (pickled .bin/.pt weights can run "
            "code when loaded and are never opened).")
    try:
        status = path.stat()
        if not stat.S_ISREG(status.st_mode):  # a link to /dev/zero or a pipe: no size to check, endless bytes
            raise CheckpointError(f"The checkpoint file {path} is not a regular file (it is, or links to, a device, "
                                  "a pipe or a folder), so it holds no checkpoint. Replace it with the real file.")
        size = status.st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise _corrupt(path, f"the file has only {size} bytes, less than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                if prefix.startswith(b"PK\x03\x04") or prefix[:1] == b"\x80" and prefix[1:2] in b"\x02\x03\x04\x05":
                    raise CheckpointError(
                        f"The checkpoint file {path} is not a safetensors file: it starts like a torch.save (zip) or "
                        "pickle file renamed to .safetensors, which genie_hub never opens (unpickling can run "
                        "arbitrary code). Save the model with save_pretrained (safetensors) and load that.")
                raise _corrupt(path, f"the header claims {header_len} bytes but the file has {size} bytes")
            raw = handle.read(header_len)
    except OSError as exc:
        raise CheckpointError(f"Could not read the checkpoint file {path}: {exc}.") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, f"its JSON header does not parse ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a JSON object")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _corrupt(path, "its __metadata__ is not a map of strings")
    tensors: dict[str, dict] = {}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError):
            raise _corrupt(path, f"the header entry of '{name}' is malformed") from None
        if dtype not in DTYPE_BYTES:
            raise _corrupt(path, f"tensor '{name}' has unknown dtype {dtype!r}")
        if any(d < 0 for d in shape) or end - begin != math.prod(shape) * DTYPE_BYTES[dtype] or begin < 0:
            raise _corrupt(path, f"tensor '{name}' ({dtype} {shape}) does not match its byte range [{begin}, {end})")
        tensors[name] = {"dtype": dtype, "shape": shape}
        spans.append((begin, end))
    data_len = max((end for _, end in spans), default=0)
    expected = 8 + header_len + data_len
    if size < expected:
        raise _corrupt(path, f"it is truncated: the header describes {expected} bytes but the file has {size}")
    if size > expected:
        raise _corrupt(path, f"it has {size - expected} unexpected trailing bytes after the tensor data")
    spans.sort()
    position = 0
    for begin, end in spans:
        if begin != position:
            raise _corrupt(path, "its tensor byte ranges overlap or leave holes")
        position = end
    return tensors, metadata


def weight_files(directory: str | os.PathLike, name: str = "model.safetensors") -> list[Path]:
    """The safetensors weight file(s) called `name` in a saved model folder (one file, or the shards listed by
    `<name>.index.json`); [] when there are none."""
    directory = Path(directory)
    single = directory / name
    index = directory / f"{name}.index.json"
    if single.exists():
        return [single]
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"The shard index {index} is unreadable or malformed ({exc}). Save or download "
                                  "the checkpoint again.") from None
        names = sorted({str(name) for name in weight_map.values()})
        outside = [name for name in names if Path(name).name != name or name in ("", ".", "..")]
        if outside:
            raise CheckpointError(f"The shard index {index} names weight files outside its folder (e.g. "
                                  f"{outside[0]!r}): a shard is a plain file name next to the index. The index is "
                                  "corrupt or was edited: save or download the checkpoint again.")
        return [directory / name for name in names]
    return []


def read_headers(files: list[str | os.PathLike]) -> dict[str, tuple[dict, Path]]:
    """Merge the headers of several shard files: {tensor name: (info, file)}."""
    merged: dict[str, tuple[dict, Path]] = {}
    for file in files:
        path = Path(file)
        if not path.exists():
            raise CheckpointError(f"The checkpoint file {path} is missing. Save or download the checkpoint again.")
        header = read_header(path)  # first: a link to a device or a folder is named as not a regular file
        refuse_foreign_link(path)
        for name, info in header.items():
            if name in merged:
                raise CheckpointError(f"Tensor '{name}' appears in both {merged[name][1]} and {path}: the shards are "
                                      "inconsistent. Save or download the checkpoint again.")
            merged[name] = (info, path)
    return merged


def refuse_foreign_link(path: Path) -> None:
    """A weights file that is a symbolic link must stay inside its folder, or be a Hugging Face cache snapshot's
    link to the cache's `blobs/` (snapshots/<revision>/file -> ../../blobs/<hash>): a link elsewhere loads
    another checkpoint's weights, which its headers may well match, under this folder's config and card."""
    if not path.is_symlink():
        return
    folder, target = path.parent.resolve(), path.resolve()
    if folder in target.parents or target.parent == folder.parent.parent / "blobs":
        return
    raise CheckpointError(f"The weights file {path} is a symbolic link to {target}, outside its folder: the folder "
                          "would load another checkpoint's weights. Copy the real file into the folder, or load the "
                          "folder the link points into.")
