"""Atomic file writes: every file genie_hub writes appears complete under its real name, or not at all.

One rule for JSON, safetensors, parquet and raw bytes: write to a temporary sibling, then `os.replace` it
into place (atomic on POSIX and Windows within one folder). A killed run therefore never leaves a truncated
file that a resumed run, a loader or an upload could mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

logger = logging.getLogger("genie_hub")


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


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file as bytes, the same for the same tensors and metadata in every process.

    `safetensors` itself writes the metadata map in a per-process random order (a Rust HashMap), so files with
    two or more metadata keys would differ from run to run; here the tensors are serialized by safetensors and
    the metadata is inserted with sorted keys (the header stays padded to 8 bytes, as safetensors pads it)."""
    from safetensors.torch import save

    raw = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + length])
    header.pop("__metadata__", None)
    if metadata:
        header = {"__metadata__": {k: metadata[k] for k in sorted(metadata)}, **header}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + length:]


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically and deterministically (see `safetensors_bytes`)."""
    write_bytes(path, safetensors_bytes(tensors, metadata))


def process_running(pid: int) -> bool:
    """Whether a process with this id exists (a killed run's id is not, unless the system reused it)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # none, or a number no process id can be
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _leftovers(parent: Path, prefix: str, suffix: str = "") -> list[Path]:
    """`<prefix><pid><suffix>` entries in `parent` whose process is no longer running (a killed run's)."""
    found = []
    for path in parent.glob(f"{glob.escape(prefix)}*{suffix}") if parent.is_dir() else ():
        pid = path.name[len(prefix):len(path.name) - len(suffix)]
        if pid.isdigit() and not process_running(int(pid)):
            found.append(path)
    return found


@contextlib.contextmanager
def staging_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh, empty folder `<path>.<pid>`, removed on exit unless it was renamed away (e.g. by `replace_dir`).

    Named per process, so two processes saving to one place (a library call under `accelerate launch`, two
    runs into one folder) never delete each other's files; a killed process's leftover is removed here."""
    import shutil

    path = Path(path)
    for leftover in _leftovers(path.parent, f"{path.name}."):
        shutil.rmtree(leftover, ignore_errors=True)
    path = path.with_name(f"{path.name}.{os.getpid()}")
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        if path.exists():
            shutil.rmtree(path)


def recover_interrupted_swaps(folder: str | os.PathLike, names: tuple[str, ...]) -> None:
    """Finish what a `replace_dir` of `folder/<name>` (for each of `names`) killed between its two renames left:
    the old copy `.<name>.<pid>.old` goes back to `<name>` when nothing took its place, and is removed when
    something did. Only those names: anything else in the folder is not genie_hub's to touch."""
    folder = Path(folder)
    for name in names:
        for old in _leftovers(folder, f".{name}.", ".old"):
            if (folder / name).exists():
                remove_path(old, ignore_errors=True)
            else:
                os.replace(old, folder / name)


def remove_dead_temporaries(folder: str | os.PathLike, recursive: bool = True) -> None:
    """Delete the `.<name>.<pid>.tmp` files (`atomic_path`'s) that a killed process left under `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for tmp in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        pid = tmp.name[:-len(".tmp")].rpartition(".")[2]
        if tmp.is_file() and pid.isdigit() and not process_running(int(pid)):
            tmp.unlink(missing_ok=True)


def replace_dir(source: str | os.PathLike, target: str | os.PathLike,
                keep_added: Callable[[Path], bool] | None = None) -> None:
    """Move the complete folder `source` to `target`, replacing a folder there. Each step is a rename, so at
    any moment `target` is either the old complete folder or the new one (or, for an instant between the two
    renames, absent, with the old one kept under a hidden name until the new one is in place).

    With `keep_added`, files of the old folder that `source` does not have (ones the user added) and for whose
    relative path `keep_added` is true are carried into it first: rewriting a folder of one's own must not
    delete someone else's files in it (the caller's predicate leaves out what would change what the folder is,
    such as a stray weights file)."""
    import shutil

    source, target = Path(source), Path(target)
    if not target.exists():
        os.replace(source, target)
        return
    if keep_added:
        dropped = []
        for path in sorted(target.rglob("*")):
            relative = path.relative_to(target)
            kept = source / relative
            if kept.exists() or kept.is_symlink() or any(folder in dropped for folder in relative.parents):
                continue
            if not keep_added(relative):
                dropped.append(relative)
                continue
            if path.is_dir() and not path.is_symlink():
                kept.mkdir(parents=True)  # an empty folder of the user's is kept too
                continue
            kept.parent.mkdir(parents=True, exist_ok=True)
            try:  # a hard link: no second copy of a large file, and nothing to lose when the old folder goes
                os.link(path, kept, follow_symlinks=False)
            except OSError:
                shutil.copy2(path, kept, follow_symlinks=False)
        if dropped:
            logger.warning("Not kept from the earlier %s, as they would change what loads: %s.", target,
                           ", ".join(map(str, dropped)))
    old = target.with_name(f".{target.name}.{os.getpid()}.old")
    os.replace(target, old)
    os.replace(source, target)
    remove_path(old)


def remove_path(path: Path, ignore_errors: bool = False) -> None:
    """Delete a file, a symlink (never what it points to) or a folder with its contents."""
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=ignore_errors)
    else:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            if not ignore_errors:
                raise


def through_link(folder: str | os.PathLike) -> Path:
    """The folder a symlink points to, else `folder`: a folder the user linked elsewhere (a larger disk) is
    rewritten there, next to its real location, and the link stays."""
    folder = Path(folder)
    return folder.resolve() if folder.is_symlink() else folder
