"""Genie-D: synthesize calibration images batch by batch, across accelerate processes, resumably.

Each batch gets fresh image parameters (a generator and latents, see `generator.py`), optimized so that the
frozen model's prior loss (BatchNorm statistics by default, see `prior.py`) is small. Batches are seeded
from (seed, batch index) and written to disk as soon as they finish: a killed run skips them on restart,
and any number of processes produces the same images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..adapters import InputSpec, model_logits
from ..calibration import BatchStats, Calibration
from ..config import GenieConfig, make_accelerator
from ..errors import ConfigError, GenieError
from ..fileio import save_safetensors
from ..loading import input_spec
from ..optimization import adam, optimize
from ..progress import progress_bar
from ..reproducibility import batch_seed, model_fingerprint, seed_everything
from .generator import image_source
from .image_prior import input_prior_loss, pixel_target
from .prior import SynthesisPrior, select_prior
from .swing import swing_convolutions

logger = logging.getLogger("genie_hub.synthesis")

SHARD_PATTERN = "batch_{:05d}.safetensors"


def prefers_channels_last(device: torch.device | str) -> bool:
    """Whether synthesis runs the model and the generator channels_last: on CUDA, where cuDNN's NHWC kernels
    (and bf16 tensor cores) are fastest. On CPU the default layout was as fast or faster (a synthesis step of
    the embedded model, 37 vs 39 ms, and of EfficientNet-Lite0 at 224 px, 2.8-3.6 vs 3.2-3.6 s)."""
    return torch.device(device).type == "cuda"


def synthesize_batch(model: nn.Module, spec: InputSpec, batch_size: int, batch_index: int, config: GenieConfig,
                     device: torch.device | str = "cpu", autocast: Callable | None = None, progress: bool = True,
                     prior: SynthesisPrior | None = None, overall=None,
                     channels_last: bool = False) -> tuple[torch.Tensor, BatchStats]:
    """Optimize one batch (fresh image parameters); return the final images and their loss statistics.
    With `channels_last`, the generator computes in that layout (the model is the caller's to convert)."""
    seed_everything(batch_seed(config.seed, batch_index))
    prior = prior or select_prior(model, config.synthesis_prior)
    target = pixel_target(spec)
    source = image_source(config.synthesis_method, batch_size, spec.channels, spec.height, spec.width,
                          config.latent_dim, device, target=target)
    if channels_last:
        source.generator.to(memory_format=torch.channels_last)
    optimizers = [adam(source.per_image, lr=config.lr_latent)]
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizers[0], factor=0.1, patience=100, min_lr=1e-4)
    schedulers = []
    if source.shared:
        optimizers.append(adam(source.shared, lr=config.lr_generator))
        schedulers.append(torch.optim.lr_scheduler.StepLR(optimizers[1], step_size=100, gamma=0.95))
    autocast = autocast or contextlib.nullcontext

    with torch.no_grad():
        initial_prior_loss = prior.measure(source.generator(source.latents))
    losses: list[float] = []
    last: dict[str, torch.Tensor] = {}

    def batch_loss(step: int) -> torch.Tensor:
        with autocast():
            last["images"] = source.generator(source.latents)
            model_logits(model, last["images"])
        return prior.pop() + input_prior_loss(last["images"], target)

    def after_step(step: int, loss: torch.Tensor) -> None:
        value = loss.item()  # ReduceLROnPlateau decides on the host, every step
        plateau.step(value)
        if not losses:
            losses.append(value)
        losses[1:] = [value]

    def diverged(step: int, value: float) -> GenieError:
        return GenieError(f"Synthesis loss became {value} in batch {batch_index} (by iteration {step}); finished "
                          "batches are kept on disk. Try --mixed-precision no or a different --seed.")

    with prior.attached(), swing_convolutions(model) if source.swing else contextlib.nullcontext():
        optimize(config.synthesis_iterations, batch_loss, optimizers, schedulers, on_diverged=diverged,
                 after_step=after_step, check_every=10, desc=f"synthesis batch {batch_index}", progress=progress,
                 overall=overall)
    images = last["images"] if last else source.generator(source.latents)
    images = images.detach().float().contiguous()
    stats = BatchStats(batch_index=batch_index, initial_loss=losses[0] if losses else float("nan"),
                       final_loss=losses[-1] if losses else float("nan"),
                       initial_prior_loss=initial_prior_loss, final_prior_loss=prior.measure(images))
    return images, stats


class ShardStore:
    """Finished synthesis batches on disk, one safetensors file each, with the settings that made them."""

    def __init__(self, directory: str | Path, fingerprint: dict):
        self.directory = Path(directory)
        self.fingerprint = fingerprint

    def path(self, batch_index: int) -> Path:
        return self.directory / SHARD_PATTERN.format(batch_index)

    def is_finished(self, batch_index: int) -> bool:
        path = self.path(batch_index)
        if not path.exists():
            return False
        try:
            meta = self._metadata(batch_index)
        except Exception:
            logger.warning("Ignoring unreadable shard %s; it will be synthesized again.", path)
            return False
        saved = json.loads(meta.get("fingerprint", "{}"))
        if saved != self.fingerprint:
            raise ConfigError(
                f"{self.directory} already holds synthetic images made with different settings or another "
                f"model ({path.name}: {saved} vs now {self.fingerprint}). Use a new --output-dir, or delete "
                "that folder to start over.")
        return True

    def save(self, batch_index: int, images: torch.Tensor, stats: BatchStats) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        metadata = {"fingerprint": json.dumps(self.fingerprint, sort_keys=True), "stats": json.dumps(stats.to_dict()),
                    "batch_index": str(batch_index)}
        save_safetensors({"pixel_values": images}, self.path(batch_index), metadata)

    def load(self, batch_index: int) -> torch.Tensor:
        from safetensors.torch import load_file

        return load_file(str(self.path(batch_index)))["pixel_values"]

    def stats(self, batch_index: int) -> BatchStats:
        return BatchStats(**json.loads(self._metadata(batch_index).get("stats", "{}")))

    def _metadata(self, batch_index: int) -> dict:
        from safetensors import safe_open

        with safe_open(str(self.path(batch_index)), framework="pt") as handle:
            return handle.metadata() or {}


def synthesize(model: nn.Module, config: GenieConfig | None = None, *, spec: InputSpec | None = None,
               processor=None, output_dir: str | Path | None = None, accelerator=None,
               progress: bool = True) -> Calibration:
    """Genie-D: `config.num_samples` synthetic images shaped like the model's input, as a `Calibration`.

    With `output_dir`, finished batches are stored there and skipped when the call is repeated; with an
    `accelerate.Accelerator` running several processes, the pending batches are split between them (an
    `output_dir` is then required) and every process returns the full set.
    """
    config = config or GenieConfig()
    if spec is None:
        spec = input_spec(model, processor)
        if processor is None:  # the size then comes from the config alone, often its 224 px default
            logger.warning(
                "synthesize() got no processor and no spec, so the images are %dx%d (the model config's image_size) "
                "and the pixel prior ignores the model's input normalization. Pass processor= (load_model returns "
                "it) or spec= to synthesize images like the model's real inputs.", spec.height, spec.width)
    prior = select_prior(model, config.synthesis_prior)
    if accelerator is None:
        accelerator, config = make_accelerator(config)
    elif config.mixed_precision is None:  # the images depend on it: the shards' fingerprint names the real one
        config = dataclasses.replace(config, mixed_precision=str(accelerator.mixed_precision))
    if accelerator.num_processes > 1 and output_dir is None:
        raise ConfigError("Synthesis on several processes needs an output_dir to exchange finished batches.")

    device = accelerator.device
    was_training = model.training
    grad_flags = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    model.to(device)
    channels_last = prefers_channels_last(device)
    sizes = config.synthesis_batch_sizes()
    fingerprint = {**config.synthesis_fingerprint(), "prior": prior.name, "input": spec.to_dict(),
                   "pixel_target": pixel_target(spec).to_dict(),
                   "model": model_fingerprint(model), "batch_sizes": sizes}
    store = ShardStore(output_dir, fingerprint) if output_dir is not None else None
    in_memory: dict[int, tuple[torch.Tensor, BatchStats]] = {}
    pending = [b for b in range(len(sizes)) if store is None or not store.is_finished(b)]
    if store is not None and len(pending) < len(sizes):
        logger.info("Resuming synthesis: %d of %d batches already on disk.", len(sizes) - len(pending), len(sizes))
    try:
        if channels_last:
            model.to(memory_format=torch.channels_last)
        with accelerator.split_between_processes(pending) as mine, progress_bar(
                total=len(mine) * config.synthesis_iterations, desc="Genie-D synthesis", unit="step",
                disable=not (progress and accelerator.is_local_main_process)) as overall:
            for batch_index in mine:
                overall.set_postfix(batch=f"{batch_index + 1}/{len(sizes)}")
                images, stats = synthesize_batch(
                    model, spec, sizes[batch_index], batch_index, config, device=device,
                    autocast=accelerator.autocast, progress=progress and accelerator.is_local_main_process,
                    prior=prior, overall=overall, channels_last=channels_last)
                logger.info("synthesis batch %d: %s loss %.4g -> %.4g", batch_index, prior.name,
                            stats.initial_prior_loss, stats.final_prior_loss)
                if store is not None:
                    store.save(batch_index, images, stats)
                else:
                    in_memory[batch_index] = (images.cpu(), stats)
        accelerator.wait_for_everyone()
    finally:
        if channels_last:  # the caller's model goes back to the default layout
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)
        for param, flag in zip(model.parameters(), grad_flags):
            param.requires_grad_(flag)
    if store is not None:
        batches = [(store.load(b), store.stats(b)) for b in range(len(sizes))]
    else:
        batches = [in_memory[b] for b in range(len(sizes))]
    return Calibration(pixel_values=torch.cat([images for images, _ in batches]), source="synthetic",
                       prior=prior.name, batch_indices=[b for b, size in enumerate(sizes) for _ in range(size)],
                       batch_stats=[stats for _, stats in batches])
