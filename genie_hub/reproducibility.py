"""Seeds and fingerprints: what makes a run repeatable and a resumed run safe.

Every synthesis batch and reconstruction unit is seeded from (seed, index) alone, so results do not depend
on how work is spread over processes or where a run was interrupted. Fingerprints of the model and the
settings are stored next to finished work, so resuming with another model or other settings is refused.
"""

from __future__ import annotations

import hashlib
import random

import torch
from torch import nn

RECONSTRUCTION_SEED_OFFSET = 1_000_000
"""Unit i is seeded from index RECONSTRUCTION_SEED_OFFSET + i, apart from every synthesis batch index."""


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
