"""Labelled evaluation data from any image-classification dataset `datasets` can open, checked before compute.

Sources (`EvalSource.parse`):
- `fashion-mnist` (or `fashion-mnist:train`): the local IDX files (no download);
- a Hub dataset `owner/name[:config]:split` or `owner/name` (split "validation", else "test", else "train");
- a local folder: an `imagefolder` (one sub-folder per class) or a folder of parquet / arrow files, or one such file;
  `PATH:split` picks a split, else (as for the Hub) validation, else test, else train, where every file names its
  split by its top-level folder or the start of its name (`train/`, `val/`, `data/test-00000-of-00001.parquet`;
  `local_splits`).

`open_eval_set(source, model, ...)` opens it, finds the image and label columns from the features (or takes the
given ones), maps the dataset's class names onto the model's `id2label` by name (case, spaces, '_' and '-' do
not matter; identical lists map 1:1), checks its labels and first images, and raises a one-paragraph `DataError` for
anything that would fail later. It returns an `EvalSet` that yields (PIL images, model label indices) batches.
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from ..errors import DataError, first_line
from .fashion_mnist import FASHION_MNIST_LABELS, load_fashion_mnist
from .pixels import decode_image

logger = logging.getLogger("genie_hub.data")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DATA_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}
SPLIT_PREFERENCE = ("validation", "test", "train")
"""The split evaluated when none is named (Hub datasets and local folders alike)."""
SPLIT_WORDS = {"train": ("train", "training"), "validation": ("validation", "valid", "val", "dev"),
               "test": ("test", "testing", "eval", "evaluation")}
"""The words in a folder or file name that name its split (`datasets`' own keywords)."""
NO_LABEL = -1
"""`datasets`' ClassLabel value for an example without a label: skipped (and counted), not scored as wrong."""


@dataclass(frozen=True)
class EvalSource:
    """Where evaluation images come from: `kind` is "fashion-mnist", "hub" or "local"."""

    kind: str
    name: str
    config: str | None = None
    split: str | None = None

    @classmethod
    def parse(cls, text: str) -> "EvalSource":
        text = str(text).strip()
        lowered = text.lower().replace("_", "-")
        if lowered in ("fashion-mnist", "fashion-mnist:test", "fashion-mnist:train"):
            return cls("fashion-mnist", "fashion-mnist", split=lowered.partition(":")[2] or "test")
        if lowered.startswith("fashion-mnist:") and not Path(text).expanduser().exists():
            raise DataError(f"Fashion-MNIST has a train and a test split, no '{text.partition(':')[2]}': write "
                            "fashion-mnist (its test split, the held-out images) or fashion-mnist:train.")
        path = Path(text).expanduser()
        if path.exists():
            return cls("local", str(path))
        base, _, split = text.rpartition(":")
        if base and split and Path(base).expanduser().exists():  # PATH:split
            return cls("local", str(Path(base).expanduser()), split=split)
        name, *rest = hub_parts(text)
        if not _HUB_ID.match(name) or len(rest) > 2 or any(not part for part in rest):
            raise DataError(f"Unknown evaluation dataset '{text}': not 'fashion-mnist', not an existing local "
                            "folder or file, and not a Hub dataset id owner/name[:config]:split.")
        config, split = (rest if len(rest) == 2 else (None, rest[0] if rest else None))
        return cls("hub", name, config, split)

    @property
    def label(self) -> str:
        """How results name this source: a Hub id with config and split, or a local folder's name."""
        if self.kind == "local":
            return Path(self.name).name
        if self.kind == "fashion-mnist":
            return self.name
        return ":".join(part for part in (self.name, self.config, self.split) if part)


def hub_parts(text: str) -> list[str]:
    """"owner/name:config:split" split at its colons, except those inside a slice: "train[:10%]" stays one."""
    return re.split(r":(?![^\[]*\])", text)


@dataclass
class ReadTally:
    """What one pass of `EvalSet.batches` read: the rows of the split it went through (scored or skipped as
    unreadable or unlabelled) and whether it reached the split's end, so that an evaluation cut by a limit names
    exactly the rows it covered (`test[:rows]`), not the count of images it scored."""

    rows: int = 0
    reached_end: bool = False


@dataclass
class EvalSet:
    """An opened, checked evaluation set: batches of (PIL images, labels in the model's index space)."""

    source: EvalSource
    split: str
    num_images: int | None  # None when streaming
    dataset: object = field(repr=False)
    image_column: str | None = None
    label_column: str | None = None
    label_map: dict[int, int] | None = None  # dataset label -> model label (None: the same index)
    labelled: bool = True  # False: agreement with FP32 only (e.g. a folder of unlabelled photos)
    num_classes: int = 0  # the model's number of classes (the range of unmapped integer labels)

    def batches(self, batch_size: int = 64, limit: int | None = None,
                tally: ReadTally | None = None) -> Iterator[tuple[list, torch.Tensor]]:
        """(images, labels) batches: PIL images, or a uint8 tensor for the local Fashion-MNIST files. `limit`
        counts scored images; `tally`, when given, is filled with the rows read."""
        tally = tally if tally is not None else ReadTally()
        if self.source.kind == "fashion-mnist":  # uint8 [B, 28, 28] tensors: converted without PIL
            images, labels = self.dataset
            count = len(labels) if limit is None else min(limit, len(labels))
            for start in range(0, count, batch_size):
                stop = min(start + batch_size, count)
                tally.rows = stop
                yield images[start:stop], labels[start:stop].clone()
            tally.reached_end = count == len(labels)
            return
        images, labels, seen, unreadable, no_label = [], [], 0, [], 0
        for row in self.dataset:
            if limit is not None and seen >= limit:
                break
            tally.rows += 1
            if self.labelled:
                label = self.model_label(row[self.label_column])
                if label is None:
                    no_label += 1
                    continue
            image = read_image(row[self.image_column])
            if isinstance(image, str):
                unreadable.append(image)
                continue
            seen += 1
            images.append(image)
            if self.labelled:
                labels.append(label)
            if len(images) == batch_size:
                yield images, torch.tensor(labels) if self.labelled else None
                images, labels = [], []
        else:
            tally.reached_end = True
        if images:
            yield images, torch.tensor(labels) if self.labelled else None
        if unreadable:
            logger.warning("Skipped %d unreadable image(s) of %s, evaluated the other %d: %s%s", len(unreadable),
                           self.source.label, seen, ", ".join(unreadable[:5]), " ..." if len(unreadable) > 5 else "")
        if no_label:
            logger.warning("Skipped %d example(s) of %s without a label (-1 or empty), evaluated the other %d.",
                           no_label, self.source.label, seen)

    def model_label(self, value) -> int | None:
        """A row's label as the model's class index; None for "no label" (-1, empty). A label outside the dataset's
        classes is a DataError: scored as simply wrong, it would lower the top-1 without a word."""
        if value is None or value == NO_LABEL:
            return None
        label = int(value)
        if self.label_map is not None:
            if label not in self.label_map:
                raise DataError(f"'{self.source.label}' has label {label}, outside its {len(self.label_map)} classes.")
            return self.label_map[label]
        if not 0 <= label < self.num_classes:
            raise DataError(f"'{self.source.label}' has label {label}, outside the model's {self.num_classes} "
                            "classes: it is labelled for another model.")
        return label


def read_image(value):
    """A row's image as a PIL image, or a description of why it cannot be read (skipped, named in a warning).
    `datasets` Image values are stored undecoded (see `open_eval_set`); a column of file paths or raw bytes is
    read the same way."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        return decode_image(value)
    if isinstance(value, str):
        return decode_image({"path": value})
    if isinstance(value, (bytes, bytearray)):
        return decode_image({"bytes": bytes(value)})
    if value is None:
        return "an empty image"
    return value if hasattr(value, "convert") else f"a {type(value).__name__}, not an image"


def _exact(name) -> str:
    """A class name as compared exactly: in Unicode's composed form (NFC), since one name has two spellings: macOS
    names a folder "Café" with a separate accent (NFD), while a model's config.json usually composes it."""
    return unicodedata.normalize("NFC", str(name)).strip()


def _normalize(name: str) -> str:
    """A class name as compared: case, spaces, `_`, `-` and `/` do not matter. A folder cannot be named
    "T-shirt/top", so an imagefolder names that class "T-shirt_top" or "T-shirt top"."""
    return re.sub(r"[\s_\-/\\]+", " ", _exact(name)).strip().lower()


def map_labels(dataset_names: list[str], model_labels: dict[int, str], where: str) -> dict[int, int] | None:
    """dataset label index -> model label index, by name: the exact label first, then the label compared loosely
    (`_normalize`), then one unambiguous comma-separated synonym of it, as in ImageNet's "tench, Tinca tinca".
    None when both lists name the same classes in the same order (ImageNet's two "crane" classes included)."""
    model_names = [model_labels[i] for i in sorted(model_labels)]
    exact: dict[str, set[int]] = {}
    by_name: dict[str, set[int]] = {}
    synonyms: dict[str, set[int]] = {}  # ImageNet-style labels list synonyms: "tench, Tinca tinca"
    for index, name in model_labels.items():
        exact.setdefault(_exact(name), set()).add(index)
        by_name.setdefault(_normalize(name), set()).add(index)
        for synonym in str(name).split(","):
            synonyms.setdefault(_normalize(synonym), set()).add(index)
    same_order = [_normalize(n) for n in dataset_names] == [_normalize(n) for n in model_names]
    # Same loose names in the same order are the same classes, unless an exact name says otherwise: a model
    # with both "a/b" and "a b" keeps them apart.
    if same_order and all(i in exact.get(_exact(name), {i}) for i, name in enumerate(dataset_names)):
        return None
    mapping, missing, ambiguous = {}, [], []
    for index, name in enumerate(dataset_names):
        matches = [exact.get(_exact(name), set()), by_name.get(_normalize(name), set()),
                   synonyms.get(_normalize(name), set())]
        unique = next((match for match in matches if len(match) == 1), None)  # two "crane" classes: not unique
        if unique is not None:
            mapping[index] = next(iter(unique))
        else:
            (ambiguous if any(matches) else missing).append(name)
    if ambiguous:
        raise DataError(
            f"The labels of {where} cannot be mapped onto the model's classes: {len(ambiguous)} dataset class "
            f"name(s) match several of the model's classes (e.g. {', '.join(repr(m) for m in ambiguous[:5])}), so "
            "which class each means is unknown. Rename the dataset's classes to the model's exact id2label names.")
    if missing:
        raise DataError(
            f"The labels of {where} cannot be mapped onto the model's classes: {len(missing)} dataset class name(s) "
            f"are not among the model's id2label (e.g. {', '.join(repr(m) for m in missing[:5])}; the model has "
            f"{', '.join(repr(m) for m in model_names[:8])}{', ...' if len(model_names) > 8 else ''}). Evaluate on a "
            "dataset of the classes the model was trained on.")
    merged: dict[int, list[str]] = {}
    for index, target in mapping.items():
        merged.setdefault(target, []).append(dataset_names[index])
    target, names = next(((t, n) for t, n in merged.items() if len(n) > 1), (None, []))
    if names:  # `LABEL_0/` and `label_0/`: two folders of one class, or two classes scored as one
        raise DataError(
            f"The labels of {where} cannot be mapped onto the model's classes: the dataset classes "
            f"{', '.join(repr(n) for n in names)} all match the model's class {model_labels[target]!r}, so they "
            "would be scored as one class. Merge them into one class folder, or rename them to the model's exact "
            "id2label names.")
    return mapping


def _load(source: EvalSource, streaming: bool):
    import datasets

    if source.kind == "hub":
        split = source.split
        if split is None:
            try:
                splits = datasets.get_dataset_split_names(source.name, source.config)
            except Exception as exc:
                raise _open_error(source, exc) from exc
            split = _preferred_split(splits)
        return datasets.load_dataset(source.name, source.config, split=split, streaming=streaming), split
    path = Path(source.name).expanduser()
    if path.is_file():
        if path.suffix not in DATA_SUFFIXES:
            raise DataError(f"{path} is not a .parquet/.arrow file (or a folder).")
        return datasets.load_dataset(DATA_SUFFIXES[path.suffix], data_files=[str(path)], split="train",
                                     streaming=streaming), _chosen_split(source, ["train"])
    builder, by_split = local_data_files(path)
    split = _chosen_split(source, list(by_split))
    data_files = [str(f) for f in by_split[split]]  # class labels of an imagefolder come from the parent folders
    one_class = {"drop_labels": False} if builder == "imagefolder" and _one_class_folder(path, by_split[split]) else {}
    return datasets.load_dataset(builder, data_files=data_files, split="train", streaming=streaming,
                                 **one_class), split


def _one_class_folder(root: Path, files: list[Path]) -> bool:
    """Whether every image of an imagefolder split sits in one class folder (`photos/Bag/*.png`): `datasets` infers
    labels only from two or more, so one class (all the bags, to check that class alone) is asked for explicitly.
    Not for a folder of images with no class folder, the split folder itself, or labels from a metadata file."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    if any(f.name in ImageFolder.METADATA_FILENAMES for f in files):
        return False
    parents = {f.parent for f in files}
    if len(parents) != 1:
        return False
    parent = parents.pop()
    return parent != root and not (parent.parent == root and _split_named(parent.name))


def local_data_files(root: Path) -> tuple[str, dict[str, list[Path]]]:
    """The `datasets` builder and the files by split (`local_splits`) of a local evaluation folder.

    Hidden files and folders are skipped, as the few-shot reader skips them: a `.git`, or a cache someone keeps
    there, is not data. `datasets`' own metadata files (`metadata.csv`, ...) describe an imagefolder's images, so
    they neither make it a parquet folder nor count as a split's data: each split gets those that sit in or above
    its images' folders, as `datasets` applies them."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    visible = visible_files(root)
    metadata = [p for p in visible if p.name in ImageFolder.METADATA_FILENAMES]
    images = [p for p in visible if p.suffix.lower() in ImageFolder.EXTENSIONS]
    tables = [p for p in visible if p.suffix in DATA_SUFFIXES and p not in metadata]
    if tables and not (metadata and images):
        kinds = {DATA_SUFFIXES[f.suffix] for f in tables}
        if len(kinds) > 1:
            raise DataError(f"{root} mixes .parquet and .arrow files; give one kind of file.")
        return kinds.pop(), local_splits(root, tables)
    if not images:
        raise DataError(f"{root} holds no image, .parquet or .arrow file.")
    by_split = local_splits(root, images)
    for split, files in by_split.items():
        folders = {f.parent for f in files}
        by_split[split] = files + [m for m in metadata if any(m.parent == d or m.parent in d.parents for d in folders)]
    shared = next((m for m in metadata if sum(m in files for files in by_split.values()) > 1), None)
    if shared is not None:  # `datasets` would yield all its rows, other splits' images included, in each split
        raise DataError(f"{shared} describes the images of several splits of {root} ({', '.join(by_split)}), so each "
                        "split would read them all. Give each split folder its own metadata file, listing its own "
                        "images.")
    return "imagefolder", by_split


def visible_files(root: Path) -> list[Path]:
    """The files under `root`, sorted, following linked folders (a class folder linked from elsewhere is data)
    but each real folder once (a link loop ends), and skipping hidden files and folders (a `.git`, a cache)."""
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder, f) for f in files if not f.startswith(".") and Path(folder, f).is_file()]
    return sorted(found)


def evaluation_files(evalset: EvalSet) -> list[Path]:
    """The local files an opened evaluation set reads (none for Fashion-MNIST or a Hub dataset): its data files,
    and the image files their rows name by path."""
    if evalset.source.kind != "local":
        return []
    path = Path(evalset.source.name).expanduser()
    files = [path] if path.is_file() else local_data_files(path)[1][evalset.split]
    return files + [image for image in _images_named_by_path(evalset) if _is_readable_file(image)]


def _is_readable_file(path: Path) -> bool:
    """`path.is_file()`, False also where the name is too long or a folder on the way is closed to this user
    (`is_file` raises there): the evaluation skips such a row as unreadable, so it names no evaluation image."""
    try:
        return path.is_file()
    except OSError:
        return False


def _images_named_by_path(evalset: EvalSet) -> list[Path]:
    """The image files a data-file set (parquet, arrow) names in its image column, where a row holds a path and
    no bytes: `read_image` opens them, so they are evaluation images as much as the rows are. Read from the
    Arrow column, so the images' bytes are never loaded."""
    table = getattr(evalset.dataset, "data", None)  # a datasets.Dataset's Arrow table; none when streaming
    if evalset.image_column is None or table is None or evalset.image_column not in table.column_names:
        return []
    import pyarrow as pa
    import pyarrow.compute as pc

    column = table.column(evalset.image_column).combine_chunks()
    if pa.types.is_struct(column.type) and column.type.get_field_index("path") >= 0:
        paths = pc.struct_field(column, "path")
        if column.type.get_field_index("bytes") >= 0:  # a row with bytes is read from them, not from its path
            data = pc.struct_field(column, "bytes")
            paths = paths.filter(pc.or_kleene(pc.is_null(data), pc.equal(pc.binary_length(data), 0)))
    elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        paths = column
    else:
        return []
    return [Path(value) for value in paths.drop_null().to_pylist() if value]


def _preferred_split(splits: list[str]) -> str | None:
    return next((s for s in SPLIT_PREFERENCE if s in splits), splits[0] if splits else None)


def _split_named(word: str) -> str | None:
    return next((split for split, words in SPLIT_WORDS.items() if word.lower() in words), None)


def named_split(where: str | Path, word: str, splits: list[str]) -> str:
    """The split of a local folder that `PATH:word` names: the word itself, or the split it is a word for (`val`
    names `validation`, as it does for the folder `val/`)."""
    split = word if word in splits else _split_named(word)
    if split not in splits:
        raise DataError(f"{where} has no split '{word}'; its splits are {', '.join(splits)}. Write "
                        f"{where}:{splits[0]}{', for example' if len(splits) > 1 else ''}.")
    return split


SHARD_NAME = re.compile(r"(.+)-\d{5}-of-\d{5}\..+")
"""A data file of split `group(1)` as `datasets` writes a Hub repo's (`data/holdout-00000-of-00001.parquet`): the
split is named by the file, whatever the name."""


def local_splits(root: Path, files: list[Path]) -> dict[str, list[Path]]:
    """The files of a local folder by split. A folder is split only where every file says its split: each sits in
    a top-level folder named as one (`train/`, `val/`, a saved DatasetDict), or each file name starts with one
    (`test-00000-of-00001.parquet`, `data/train.parquet`). Splits of other names count where `datasets` reads
    them as splits: the folders a saved DatasetDict's `dataset_dict.json` lists, and `data/NAME-00000-of-00001.*`
    shards (`SHARD_NAME`). Anything less is one set, "train": a class folder named
    `test` beside `boat`, or under `train/`, is a class, and `my-eval-set.parquet` beside `more.parquet` is data."""
    relative = [f.relative_to(root) for f in files]
    by_folder = [_split_named(r.parts[0]) if len(r.parts) > 1 else None for r in relative]
    by_name = [_split_named(re.split(r"[-_.]", r.name, maxsplit=1)[0]) for r in relative]
    saved = _saved_split_names(root)
    by_saved = [r.parts[0] if len(r.parts) > 1 and r.parts[0] in saved else None for r in relative]
    by_shard = [match.group(1) if len(r.parts) == 2 and r.parts[0] == "data" and (match := SHARD_NAME.fullmatch(r.name))
                else None for r in relative]
    for named in (by_folder, by_name, by_saved, by_shard):
        if all(named):
            grouped: dict[str, list[Path]] = {}
            for split, file in zip(named, files):
                grouped.setdefault(split, []).append(file)
            return grouped
    return {"train": files}


def _saved_split_names(root: Path) -> set[str]:
    """The splits a DatasetDict saved with `save_to_disk` lists in its `dataset_dict.json` (none elsewhere)."""
    import json

    try:
        splits = json.loads((root / "dataset_dict.json").read_text(encoding="utf-8")).get("splits")
    except (OSError, ValueError, AttributeError):
        return set()
    return {split for split in splits if isinstance(split, str) and split} if isinstance(splits, list) else set()


def _chosen_split(source: EvalSource, splits: list[str], log: bool = True) -> str:
    """The named split (`PATH:split`), else the preferred one; with several, which one is said in the log."""
    if source.split is not None:
        return named_split(source.name, source.split, splits)
    split = _preferred_split(splits)
    if log and len(splits) > 1:
        logger.info("%s holds the splits %s: evaluating on %s (name another as %s:SPLIT).", source.name,
                    ", ".join(splits), split, source.name)
    return split


def _loose_images_hint(source: EvalSource) -> str:
    """Why a local imagefolder has no labels when some of its images sit beside its class folders: `datasets`
    takes labels from sub-folder names only when every image is in one."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    root = Path(source.name).expanduser()
    if source.kind != "local" or not root.is_dir():
        return ""
    loose = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in ImageFolder.EXTENSIONS]
    if not loose or not any(p.is_dir() for p in root.iterdir()):
        return ""
    return (f" {len(loose)} image(s) sit directly in {root} beside its class folders (e.g. {loose[0]}), and an "
            "imagefolder takes labels from folder names only when every image is in a class folder: move them "
            "into theirs.")


def _open_error(source: EvalSource, exc: Exception) -> DataError:
    from huggingface_hub import is_offline_mode

    first = first_line(exc)
    if source.kind == "local":  # a file or folder here: no Hub id, token or offline mode to blame
        empty, total = _empty_data_files(source)
        if empty:
            return DataError(_empty_message(source, empty, total))
        return DataError(f"Could not open the evaluation dataset '{source.label}' ({source.name}): `datasets` could "
                         "not read its files. Check that they are complete .parquet/.arrow files or images, and that "
                         f"they all have the same columns. ({type(exc).__name__}: {first})")
    hint = ("HF_HUB_OFFLINE is set and the dataset is not cached; unset it or use a local folder."
            if is_offline_mode() and source.kind == "hub" else
            "Check the dataset id, config and split (owner/name[:config]:split), or the folder; a gated or private "
            "dataset needs HF_TOKEN.")
    return DataError(f"Could not open the evaluation dataset '{source.label}'. {hint} ({type(exc).__name__}: {first})")


def _empty_data_files(source: EvalSource) -> tuple[list[Path], int]:
    """The .parquet/.arrow files of a local source's split that hold no rows, and how many files the split has:
    `datasets` cannot read a set of no rows ("Instruction 'train' corresponds to no data!"), nor an empty parquet
    file beside others. None of none when the source is an imagefolder or its files cannot be listed."""
    path = Path(source.name).expanduser()
    try:
        if path.is_file():
            files = [path]
        else:
            builder, by_split = local_data_files(path)
            if builder == "imagefolder":
                return [], 0
            files = by_split[_chosen_split(source, list(by_split), log=False)]
    except (DataError, OSError, KeyError):
        return [], 0
    return [file for file in files if _row_count(file) == 0], len(files)


def _row_count(path: Path) -> int | None:
    """The rows of a .parquet file (from its footer) or an .arrow file (Arrow's stream or file format, memory
    mapped); None where it cannot be read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".parquet":
            return pq.ParquetFile(path).metadata.num_rows
        with pa.memory_map(str(path)) as mapped:
            try:
                return pa.ipc.open_stream(mapped).read_all().num_rows
            except pa.ArrowInvalid:
                mapped.seek(0)
                return pa.ipc.open_file(mapped).read_all().num_rows
    except Exception:  # noqa: BLE001 - a damaged file: not an empty one
        return None


def _empty_message(source: EvalSource, empty: list[Path], total: int) -> str:
    path = Path(source.name).expanduser()
    if path.is_file():
        return (f"{path} holds no rows (no examples to evaluate). Give a .parquet/.arrow file with labelled images, "
                "or a folder of them.")
    names = ", ".join(str(file.relative_to(path)) for file in empty[:3]) + (" ..." if len(empty) > 3 else "")
    if len(empty) == total:
        return (f"{path} holds no rows (no examples to evaluate): its data file(s) {names} are empty. Give a "
                "folder whose .parquet/.arrow files hold labelled images.")
    return (f"{len(empty)} data file(s) of {path} hold no rows ({names}), and `datasets` reads neither a split of "
            "no examples nor an empty .parquet file among others. Remove the empty file(s), or give a folder whose "
            "files hold labelled images.")


def open_eval_set(source: str | EvalSource, model_labels: dict[int, str], *, image_column: str | None = None,
                  label_column: str | None = None, streaming: bool | None = None,
                  unlabelled: bool = False) -> EvalSet:
    """Open and check an evaluation set for a model with classes `model_labels` (see the module docstring).

    `streaming` defaults to on for Hub datasets (nothing large is downloaded up front) and off for local ones.
    `unlabelled`: the set has no labels (a folder of photos); only agreement with FP32 is measured."""
    source = source if isinstance(source, EvalSource) else EvalSource.parse(source)
    if source.kind == "fashion-mnist":
        if image_column or label_column or unlabelled:  # said, not ignored: the IDX files have no columns
            raise DataError("Fashion-MNIST's local files hold labelled images, with no columns to choose: the image "
                            "and label column options and the unlabelled switch do not apply to it. Leave them out.")
        images, labels = load_fashion_mnist(source.split)
        mapping = map_labels(list(FASHION_MNIST_LABELS), model_labels, "Fashion-MNIST")
        if mapping is not None:
            labels = torch.tensor([mapping[int(v)] for v in labels])
        return EvalSet(source, source.split, len(labels), (images, labels))
    import datasets

    streaming = source.kind == "hub" if streaming is None else streaming
    try:
        dataset, split = _load(source, streaming)
    except DataError:
        raise
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, ConnectionError, ...
        raise _open_error(source, exc) from exc
    features = dataset.features
    if features is None:  # some streamed datasets only know their features after the first row
        dataset = dataset._resolve_features()
        features = dataset.features
    where = f"'{source.label}' (split {split})"
    if image_column is not None and image_column not in features:  # the user named it: say that name
        raise DataError(f"{where} has no column '{image_column}' (columns: {', '.join(features)}). Name its image "
                        "column with --image-column (`genie_hub evaluate`) or --eval-image-column (`genie_hub "
                        "quantize`).")
    image_column = image_column or next((c for c, f in features.items() if isinstance(f, datasets.Image)),
                                        next((c for c, f in features.items() if _is_image_struct(f)), None))
    if image_column is None:
        raise DataError(f"{where} has no image column (columns: {', '.join(features)}). Name it with --image-column "
                        "(`genie_hub evaluate`) or --eval-image-column (`genie_hub quantize`).")
    if isinstance(features[image_column], datasets.Image):  # decoded in `batches`, where an unreadable one is skipped
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    elif not (_is_image_struct(features[image_column]) or (
            isinstance(features[image_column], datasets.Value)
            and features[image_column].dtype in ("string", "large_string", "binary", "large_binary"))):
        raise DataError(f"The column '{image_column}' of {where} holds {features[image_column]}, not images (an "
                        "Image feature, a {bytes, path} struct, file paths or encoded bytes).")
    _check_images(dataset, image_column, where)
    if unlabelled:
        return EvalSet(source, split, None if streaming else len(dataset), dataset, image_column, labelled=False)
    if label_column is not None and label_column not in features:  # the user named it: say that name
        raise DataError(f"{where} has no column '{label_column}' (columns: {', '.join(features)}). Name its label "
                        "column with --label-column (`genie_hub evaluate`) or --eval-label-column (`genie_hub "
                        "quantize`).")
    label_column = label_column or next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)),
                                        next((c for c in ("label", "labels") if c in features), None))
    if label_column is None:
        raise DataError(f"{where} has no label column (columns: {', '.join(features)}).{_loose_images_hint(source)} "
                        "Name it with --label-column "
                        "(`genie_hub evaluate`; --eval-label-column for `genie_hub quantize`), or, for images without "
                        "labels such as a folder of photos, pass --unlabelled (--eval-unlabelled) to measure agreement "
                        "with FP32 only.")
    feature = features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        mapping = map_labels(list(feature.names), model_labels, where)
    elif getattr(feature, "dtype", "").startswith(("int", "uint")):
        mapping = None  # plain integers: taken as the model's own class indices (checked on the first row)
    else:
        raise DataError(f"The label column '{label_column}' of {where} holds {feature}, not class indices. "
                        f"{_label_type_hint(feature, label_column)}")
    evalset = EvalSet(source, split, None if streaming else len(dataset), dataset, image_column, label_column,
                      mapping, num_classes=len(model_labels))
    # Every label of a local set now (a streamed one: the first rows here, the rest as they come): a label outside
    # the classes is an error before any compute, examples without one are skipped and counted.
    values = [row[label_column] for row in dataset.take(CHECKED_ROWS)] if streaming else list(dataset[label_column])
    labels = [evalset.model_label(value) for value in values]  # raises for a label outside the classes
    if not streaming and values and all(label is None for label in labels):  # streamed: skipped as they come
        raise DataError(f"No example of {where} has a label (all are -1 or empty): pass --unlabelled "
                        "(--eval-unlabelled) to measure agreement with FP32 only.")
    return evalset


def _label_type_hint(feature, label_column: str) -> str:
    """What to do with a label column that holds neither a ClassLabel nor integers, by what it holds."""
    dtype = getattr(feature, "dtype", "")
    if isinstance(feature, list) or type(feature).__name__ in ("List", "LargeList", "Sequence"):
        return ("Each example holds a list of labels (multi-label), which is not supported: top-1 accuracy needs "
                "one class per image. Give a column with one class index (or one class name as a ClassLabel) per "
                "image.")
    if dtype.startswith("float") or dtype in ("double", "halffloat"):
        return ("Class indices stored as floats are usually whole numbers with missing values (pandas makes an "
                "integer column with a NaN float64): cast the column to integers, keeping the missing ones as "
                f"empty (pandas: `df['{label_column}'].astype('Int64')`; examples without a label are skipped), or "
                "drop the rows without a label first.")
    if dtype == "bool":
        return ("True/False is not a class: if False and True are the model's classes 0 and 1, cast the column to "
                f"integers (pandas: `df['{label_column}'].astype(int)`); otherwise give each image its class index "
                "or class name.")
    if dtype in ("string", "large_string"):
        return ("Class names as strings: cast the column to a ClassLabel first (datasets' "
                f"`dataset.class_encode_column('{label_column}')`), and they are mapped by name.")
    return ("Give a column of integer class indices (the model's id2label), or of class names as a ClassLabel "
            f"(datasets' `dataset.class_encode_column('{label_column}')`), mapped by name.")


def _is_image_struct(feature) -> bool:
    """A {bytes, path} struct column: how images are stored by Arrow writers other than `datasets` (pandas,
    polars, Spark), an Image feature without its metadata; `read_image` reads its rows as it reads an Image's.
    A path that is None in every row has Arrow's null type (pandas writes `{"bytes": ..., "path": None}` so)."""
    import datasets

    return (isinstance(feature, dict) and bool(feature) and set(feature) <= {"bytes", "path"}
            and all(isinstance(f, datasets.Value) for f in feature.values())
            and feature.get("bytes", datasets.Value("binary")).dtype in ("binary", "large_binary")
            and feature.get("path", datasets.Value("string")).dtype in ("string", "large_string", "null"))


CHECKED_ROWS = 8
"""How many rows of a set are read before compute to check that its images decode (and, streamed, its labels)."""


def _check_images(dataset, image_column: str, where: str) -> None:
    """One of the first rows' images must decode: a column of something else, or a folder of unreadable files,
    fails here rather than after a whole quantization (single unreadable images are skipped later, named)."""
    try:
        rows = list(dataset.take(CHECKED_ROWS))
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds on a broken file
        first = first_line(exc)
        raise DataError(f"Could not read {where} ({type(exc).__name__}: {first}).") from exc
    if not rows:
        raise DataError(f"{where} is empty.")
    read = [read_image(row[image_column]) for row in rows]
    if all(isinstance(image, str) for image in read):
        raise DataError(f"None of the first {len(rows)} images of {where} can be read ({', '.join(read[:3])}): "
                        "check the files, or name the image column with --image-column (--eval-image-column).")
