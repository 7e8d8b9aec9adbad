"""Small helpers shared by synthesis and quantization."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn


def model_logits(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Call a transformers classifier (or any nn.Module) and return its logits tensor."""
    if getattr(model, "main_input_name", None) == "pixel_values":
        out = model(pixel_values=pixel_values)
    else:
        out = model(pixel_values)
    return out.logits if hasattr(out, "logits") else out


def batch_seed(seed: int, batch_index: int) -> int:
    """A seed derived from (seed, batch index) only, so images do not depend on which process runs a batch."""
    digest = hashlib.sha256(f"genie:{seed}:{batch_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63 - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of the model's weights and buffers; detects resuming a run with another model."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        if tensor.numel():
            digest.update(tensor.detach().flatten()[:: max(1, tensor.numel() // 64)].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> None:
    """Write to a temporary name and rename, so a kill never leaves a half-written file under the real name."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
