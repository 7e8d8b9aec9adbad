"""The calibration set handed from the data stage (synthesis or real images) to quantization."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class BatchStats:
    """Losses of one synthesis batch. `*_prior_loss` is the prior's term alone, without swing convolution or
    the image prior, so it is comparable across batches and runs."""

    batch_index: int
    initial_loss: float
    final_loss: float
    initial_prior_loss: float
    final_prior_loss: float
    compiled: bool = False  # its steps ran under torch.compile (`GenieConfig.compile`)

    def to_dict(self) -> dict:
        return dict(vars(self))


@dataclass
class Calibration:
    """Calibration images as the model's normalized `pixel_values` [N, C, H, W], and where they came from.

    `source` is "synthetic" for Genie-D images, else the few-shot source as given; `prior` names the synthesis
    prior (None for real images); `batch_indices[i]` is the synthesis batch of image i (0 for real images);
    `synthesis_workers` is how many one-thread processes synthesized the batches of this call in parallel
    (`synthesis/workers.py`; 1: the serial loop, on every thread).
    """

    pixel_values: torch.Tensor
    source: str
    prior: str | None = None
    batch_indices: list[int] = field(default_factory=list)
    batch_stats: list[BatchStats] = field(default_factory=list)
    synthesis_workers: int = 1

    def __post_init__(self) -> None:
        if not self.batch_indices:
            self.batch_indices = [0] * len(self.pixel_values)

    @property
    def synthesis_compiled(self) -> bool:
        """Every synthesis batch ran its steps under torch.compile (`GenieConfig.compile`; batches resumed from
        an earlier run count as they ran then)."""
        return bool(self.batch_stats) and all(stats.compiled for stats in self.batch_stats)

    @property
    def zero_shot(self) -> bool:
        return self.source == "synthetic"

    def __len__(self) -> int:
        return len(self.pixel_values)

    def loss_summary(self) -> str:
        """'initial -> final' prior loss per synthesis batch, for cards and logs."""
        return ", ".join(f"{s.initial_prior_loss:.3g} -> {s.final_prior_loss:.3g}" for s in self.batch_stats)
