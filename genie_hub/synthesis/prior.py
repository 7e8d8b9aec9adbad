"""The synthesis prior interface: what the frozen model says real images look like, as a loss.

Genie-D optimizes images so that a prior's loss is small. A prior observes one forward pass of the frozen
model through hooks and returns its loss terms; it is chosen by name, or automatically (`"auto"`: the first
registered prior that applies to the model). Adding a prior is one file with a `SynthesisPrior` subclass and
one `register_prior` call in `synthesis/__init__.py`.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..adapters import model_logits
from ..errors import ConfigError, NoBatchNormError


def zero_non_finite(grad: torch.Tensor) -> torch.Tensor:
    """A gradient hook for std terms: a channel or image whose values are all equal has d(std)/dx = 0/0; it
    contributes no gradient instead of turning every image into NaN."""
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


class SynthesisPrior:
    """Base class. Subclasses set `name` and `description` (one phrase, for cards), implement `applies_to` and
    `attached`."""

    name = ""
    description = ""

    def __init__(self, model: nn.Module):
        self.model = model
        self.terms: list[torch.Tensor] = []

    @classmethod
    def applies_to(cls, model: nn.Module) -> bool:
        raise NotImplementedError

    def attached(self, groups: int = 1) -> contextlib.AbstractContextManager["SynthesisPrior"]:
        """A context within which every forward pass of the model appends this prior's loss terms (subclasses
        implement it with `contextlib.contextmanager` and forward hooks). The batch is `groups` equal
        synthesis batches one after another; each term holds one loss per batch (shape [groups]), computed on
        that batch alone, as if it were the only one in the forward."""
        raise NotImplementedError

    def pop(self) -> torch.Tensor:
        """The loss of each group (shape [groups]): the sum of the terms collected since the last call."""
        total = torch.stack(self.terms, dim=1).sum(dim=1) if self.terms else torch.zeros(1)
        self.terms = []
        return total

    @torch.no_grad()
    def measure(self, images: torch.Tensor, groups: int = 1) -> list[float]:
        """The prior's loss of each of `groups` equal batches in `images` (no swing, no image prior):
        diagnostics and tests."""
        with self.attached(groups):
            model_logits(self.model, images)
        return self.pop().tolist()


_PRIORS: dict[str, type[SynthesisPrior]] = {}


def no_prior_error(model: nn.Module) -> NoBatchNormError:
    return NoBatchNormError(
        f"{type(model).__name__} has no BatchNorm2d layers with running statistics and no repeated blocks "
        "(transformer layers: elements of a ModuleList each holding two or more Conv2d/Linear layers), so no "
        f"zero-shot synthesis prior applies (registered: {', '.join(_PRIORS) or 'none'}). Use few-shot mode "
        "instead and calibrate on real images: `genie_hub quantize MODEL --few-shot DATASET` or "
        "`quantize(model, calibration_images, config)`.")


def register_prior(prior: type[SynthesisPrior]) -> type[SynthesisPrior]:
    _PRIORS[prior.name] = prior
    return prior


def prior_names() -> list[str]:
    return list(_PRIORS)


def describe_prior(name: str | None) -> str:
    """The registered prior's one-phrase description (for cards); the name itself if it is unknown."""
    prior = _PRIORS.get(name or "")
    return prior.description if prior is not None and prior.description else str(name)


def require_known_prior(name: str) -> None:
    """A prior name must be registered (or "auto"), even where it goes unused: it is recorded in run.json."""
    if name != "auto" and name not in _PRIORS:
        raise ConfigError(f"Unknown synthesis prior '{name}'. Choose 'auto' or one of: {', '.join(_PRIORS)}.")


def select_prior(model: nn.Module, name: str = "auto") -> SynthesisPrior:
    """The prior called `name` for `model`, or with "auto" the first registered one that applies."""
    if name == "auto":
        for prior in _PRIORS.values():
            if prior.applies_to(model):
                return prior(model)
        raise no_prior_error(model)
    require_known_prior(name)
    if not _PRIORS[name].applies_to(model):
        raise ConfigError(f"The synthesis prior '{name}' does not apply to {type(model).__name__}. Use 'auto' "
                          "to pick one that does, or few-shot mode with real images.")
    return _PRIORS[name](model)
