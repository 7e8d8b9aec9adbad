"""The one check of a checkpoint's tensors against what its layers need, from safetensors headers alone.

Every entry point uses it: `verify_checkpoint` (before loading a local folder, after saving, before pushing)
and the transformers quantizer (before transformers reads any weight). The expected tensors of a quantized
layer come from the frozen-format core (`genie_hub.quantization.format`); those of the rest of the model
from the model itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..errors import CheckpointError
from ..quantization.format import (FORBIDDEN_SUFFIX, FORMAT_VERSION, SAFETENSORS_DTYPES, LayerSpec,
                                   frozen_value_problems, stored_tensors)
from .safetensors_check import FLOAT_DTYPES

PLAIN_WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                      "pytorch_model.bin.index.json")
"""What plain transformers would load: never present in a Genie checkpoint folder."""


@dataclass(frozen=True)
class Expected:
    """An expected tensor: a safetensors dtype code (None: any float dtype) and a shape (None: any shape)."""

    dtype: str | None
    shape: tuple[int, ...] | None

    @classmethod
    def like(cls, tensor: torch.Tensor) -> "Expected":
        dtype = None if tensor.is_floating_point() else SAFETENSORS_DTYPES.get(tensor.dtype, str(tensor.dtype))
        return cls(dtype, tuple(tensor.shape))


def layer_expectations(layers: dict[str, LayerSpec], weight_shape_of: Callable[[str], tuple[int, ...] | None],
                       format_version: int = FORMAT_VERSION) -> tuple[dict[str, Expected], list[str]]:
    """{key: Expected} for the stored tensors of every quantized layer. `weight_shape_of(name)` gives a layer's
    weight shape, or None when it is unknown: that layer's shapes are then not checked (its tensors' presence
    and dtypes still are) and the unusable weight shape is reported as a problem."""
    expected: dict[str, Expected] = {}
    problems = []
    for name, spec in layers.items():
        shape = weight_shape_of(name) if spec.has_weight else None
        known = not spec.has_weight or (shape is not None and len(shape) >= 2 and all(d > 0 for d in shape))
        if not known and shape is not None:
            problems.append(f"'{name}.weight_shape' holds {list(shape)}, not a weight shape")
        for suffix, stored in stored_tensors(spec, shape if known else (1, 1), format_version).items():
            expected[f"{name}.{suffix}"] = Expected(stored.safetensors_dtype, stored.shape if known else None)
    return expected, problems


def tensor_problems(found: dict[str, dict], expected: dict[str, Expected], *, forbidden: Iterable[str] = (),
                    closed: bool = False, may_be_missing: Callable[[str], bool] = lambda key: False) -> list[str]:
    """What is wrong with the tensors `found` ({key: {"dtype", "shape"}} from headers) against `expected`.

    `forbidden` keys must be absent; with `closed`, keys not in `expected` are problems too."""
    problems = []
    missing = [key for key in expected if key not in found and not may_be_missing(key)]
    if missing:
        problems.append(f"{len(missing)} tensor(s) are missing (e.g. {', '.join(missing[:4])})")
    wrong = []
    for key, want in expected.items():
        info = found.get(key)
        if info is None:
            continue
        if want.shape is not None and tuple(info["shape"]) != want.shape:
            wrong.append(f"'{key}' has shape {list(info['shape'])}, expected {list(want.shape)}")
        elif want.dtype is None and info["dtype"] not in FLOAT_DTYPES:
            wrong.append(f"'{key}' has dtype {info['dtype']}, expected a float")
        elif want.dtype is not None and info["dtype"] != want.dtype:
            wrong.append(f"'{key}' has dtype {info['dtype']}, expected {want.dtype}")
    if wrong:
        problems.append(f"{len(wrong)} tensor(s) do not match their layer ({'; '.join(wrong[:4])})")
    present = [key for key in forbidden if key in found]
    if present:
        problems.append(f"quantized layer(s) also store an FP or integer copy under 'weight' (e.g. {present[0]})")
    if closed:
        unexpected = [key for key in found if key not in expected]
        if unexpected:
            problems.append(f"{len(unexpected)} tensor(s) belong to no layer of the model (e.g. "
                            f"{', '.join(unexpected[:4])})")
    return problems


def forbidden_keys(layers: Iterable[str]) -> list[str]:
    return [f"{name}.{FORBIDDEN_SUFFIX}" for name in layers]


def metadata_problems(files: Iterable, layers: dict[str, LayerSpec], required: bool) -> list[str]:
    """The layers each weight file records in its metadata must be config.json's (format 2 writes them; an edit
    of bits or signedness in config.json alone would otherwise load with wrong grids)."""
    import json

    from .config import LAYERS_METADATA_KEY
    from .safetensors_check import read_metadata

    expected = {name: spec.to_dict() for name, spec in layers.items()}
    problems = []
    for file in files:
        recorded = read_metadata(file).get(LAYERS_METADATA_KEY)
        if recorded is None:
            if required:
                problems.append(f"{getattr(file, 'name', file)} does not record its layers")
            continue
        try:
            recorded = json.loads(recorded)
        except ValueError:
            problems.append(f"{getattr(file, 'name', file)} records unreadable layers")
            continue
        if recorded != expected:
            names = sorted(n for n in set(recorded) | set(expected) if recorded.get(n) != expected.get(n))
            problems.append(f"config.json's quantization_config.layers disagree with what "
                            f"{getattr(file, 'name', file)} was saved with (e.g. '{names[0]}': config.json "
                            f"{expected.get(names[0])}, weights {recorded.get(names[0])})")
    return problems


def stored_value_problems(files: Iterable[Path], layers: dict[str, LayerSpec]) -> list[str]:
    """Values no saved Genie model holds, read from the files themselves (the loaders check the same on the
    loaded model): a quantized layer's scales and zero points (`frozen_value_problems`), non-finite floats,
    negative BatchNorm variances. Run it after the header check, which guarantees every layer's tensors are there."""
    from safetensors import safe_open

    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            tensors.update({key: handle.get_tensor(key) for key in handle.keys()})
    problems = [f"{key} has non-finite values" for key, tensor in tensors.items()
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    problems += [f"{key} is negative" for key, tensor in tensors.items()
                 if key.endswith(".running_var") and tensor.is_floating_point() and bool((tensor < 0).any())]
    for name, spec in layers.items():
        stored = {suffix: tensors[f"{name}.{suffix}"] for suffix in stored_tensors(spec, (1, 1))}
        shape = tuple(int(v) for v in stored["weight_shape"].tolist()) if spec.has_weight else None
        problems += frozen_value_problems(name, spec, shape, stored)
    return list(dict.fromkeys(problems))


def refuse_plain_weights(directory: Path, weights_file: str | None) -> None:
    """A Genie checkpoint that names its weights file (format 2 on) never sits next to plain weights: plain
    transformers would load those as the model, so such a folder is refused by every loader, not only one."""
    plain = [name for name in PLAIN_WEIGHT_NAMES if (directory / name).exists()] if weights_file else []
    if plain:
        raise CheckpointError(
            f"{directory} holds {', '.join(plain)} next to its Genie weights ({weights_file}): plain transformers "
            "would load that file as this model's weights. It does not belong to the checkpoint; delete it, or "
            "save or download the checkpoint again.")
