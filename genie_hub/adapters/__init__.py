"""Model adapters: the one place that knows how a model library loads, runs, saves and labels models.

`adapter_for(model)` returns the adapter that handles a model object (transformers first, then the generic
`nn.Module` base); `loader_for(name)` the adapter that can load a source. Add a library with one file
holding a `ModelAdapter` subclass and a `register_adapter(...)` call here.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import InputSpec, ModelAdapter, logits_of
from .transformers_adapter import TransformersAdapter

_ADAPTERS: list[ModelAdapter] = []
_FALLBACK = ModelAdapter()


def register_adapter(adapter: ModelAdapter) -> None:
    """Add an adapter; adapters registered earlier are asked first."""
    _ADAPTERS.append(adapter)


register_adapter(TransformersAdapter())


def adapter_for(model: nn.Module) -> ModelAdapter:
    return next((a for a in _ADAPTERS if a.handles(model)), _FALLBACK)


def loader_for(name_or_path: str) -> ModelAdapter:
    return next((a for a in _ADAPTERS if a.can_load(name_or_path)), _FALLBACK)


def model_logits(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The logits of any supported classifier for a batch of `pixel_values`."""
    return adapter_for(model).logits(model, pixel_values)


__all__ = ["InputSpec", "ModelAdapter", "TransformersAdapter", "adapter_for", "loader_for", "logits_of",
           "model_logits", "register_adapter"]
