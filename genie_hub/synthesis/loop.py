"""Genie-D: synthesize calibration images batch by batch, across accelerate processes, resumably.

Each batch gets a fresh generator and fresh latents, both optimized so that the frozen model's BatchNorm
input statistics match its running statistics. Batches are seeded from (seed, batch index) and written to
disk as soon as they finish: a killed run skips them on restart, and any number of processes produces the
same images.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import GenieConfig
from ..errors import ConfigError, GenieError
from ..loading import InputSpec, input_spec
from ..utils import atomic_save_safetensors, batch_seed, model_fingerprint, model_logits, seed_everything
from .bn_stats import BNStatisticsLoss, input_prior_loss, measure_bn_loss, require_batchnorm
from .generator import Generator
from .swing import swing_convolutions

logger = logging.getLogger("genie_hub.synthesis")

SHARD_PATTERN = "batch_{:05d}.safetensors"


def synthesize_batch(model: nn.Module, spec: InputSpec, batch_size: int, batch_index: int, config: GenieConfig,
                     device: torch.device | str = "cpu", autocast: Callable | None = None,
                     progress: bool = True) -> tuple[torch.Tensor, dict]:
    """Optimize one batch (a fresh generator and latents); return the final images and loss statistics."""
    seed_everything(batch_seed(config.seed, batch_index))
    bn_loss = BNStatisticsLoss(require_batchnorm(model))
    if config.synthesis_method == "pixels":
        # ZeroQ-style baseline: the pixels are the variables; no generator, no swing convolution.
        generator = DirectPixels(batch_size, spec.channels, spec.height, spec.width).to(device)
        latents = torch.zeros(batch_size, 1, device=device)  # ignored by DirectPixels
        per_image, shared = [generator.pixels], []
        swing = contextlib.nullcontext()
    else:
        generator = Generator(config.latent_dim, spec.channels, spec.height, spec.width).to(device).train()
        latents = torch.randn(batch_size, config.latent_dim, device=device).requires_grad_(True)
        per_image, shared = [latents], list(generator.parameters())
        swing = swing_convolutions(model)
    optimizers = [torch.optim.Adam(per_image, lr=config.lr_latent)]
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizers[0], factor=0.1, patience=100, min_lr=1e-4)
    schedulers = []
    if shared:
        optimizers.append(torch.optim.Adam(shared, lr=config.lr_generator))
        schedulers.append(torch.optim.lr_scheduler.StepLR(optimizers[1], step_size=100, gamma=0.95))
    autocast = autocast or contextlib.nullcontext

    with torch.no_grad():
        initial_bn_loss = measure_bn_loss(model, generator(latents))
    history: list[float] = []
    bar = tqdm(range(config.synthesis_iterations), desc=f"synthesis batch {batch_index}", disable=not progress,
               leave=False, dynamic_ncols=True)
    images = None
    with bn_loss.attached(), swing:
        for _ in bar:
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            with autocast():
                images = generator(latents)
                model_logits(model, images)
            loss = bn_loss.pop() + input_prior_loss(images)
            if not math.isfinite(loss.item()):
                raise GenieError(f"Synthesis loss became {loss.item()} in batch {batch_index}; finished batches "
                                 "are kept on disk. Try --mixed-precision no or a different --seed.")
            loss.backward()
            for opt in optimizers:
                opt.step()
            plateau.step(loss.item())
            for scheduler in schedulers:
                scheduler.step()
            history.append(loss.item())
            if len(history) % 10 == 1:
                bar.set_postfix(loss=f"{loss.item():.4f}")
    images = images.detach().float() if images is not None else generator(latents).detach().float()
    stats = {"initial_loss": history[0] if history else float("nan"),
             "final_loss": history[-1] if history else float("nan"),
             # BN-statistics term alone, without swing or prior: comparable across batches and runs
             "initial_bn_loss": initial_bn_loss, "final_bn_loss": measure_bn_loss(model, images)}
    return images, stats


class DirectPixels(nn.Module):
    """The ZeroQ-style baseline's 'generator': the images themselves are the parameters."""

    def __init__(self, batch_size: int, channels: int, height: int, width: int):
        super().__init__()
        self.pixels = nn.Parameter(torch.randn(batch_size, channels, height, width))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.pixels


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
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
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

    def save(self, batch_index: int, images: torch.Tensor, stats: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        metadata = {"fingerprint": json.dumps(self.fingerprint, sort_keys=True), "stats": json.dumps(stats),
                    "batch_index": str(batch_index)}
        atomic_save_safetensors({"pixel_values": images}, self.path(batch_index), metadata)

    def load(self, batch_index: int) -> torch.Tensor:
        from safetensors.torch import load_file

        return load_file(str(self.path(batch_index)))["pixel_values"]

    def stats(self, batch_index: int) -> dict:
        from safetensors import safe_open

        with safe_open(str(self.path(batch_index)), framework="pt") as handle:
            return json.loads((handle.metadata() or {}).get("stats", "{}"))


def synthesize(model: nn.Module, config: GenieConfig | None = None, *, spec: InputSpec | None = None,
               processor=None, output_dir: str | Path | None = None, accelerator=None,
               progress: bool = True) -> torch.Tensor:
    """Genie-D: return `config.num_samples` synthetic images shaped like the model's input.

    With `output_dir`, finished batches are stored there and skipped when the call is repeated; with an
    `accelerate.Accelerator` running several processes, the pending batches are split between them (an
    `output_dir` is then required) and every process returns the full set.
    """
    config = config or GenieConfig()
    spec = spec or input_spec(model, processor)
    require_batchnorm(model)
    if accelerator is None:
        from accelerate import Accelerator

        accelerator = Accelerator(mixed_precision=config.mixed_precision)
    if accelerator.num_processes > 1 and output_dir is None:
        raise ConfigError("Synthesis on several processes needs an output_dir to exchange finished batches.")

    device = accelerator.device
    was_training = model.training
    grad_flags = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    model.to(device)
    sizes = config.synthesis_batch_sizes()
    fingerprint = {**config.synthesis_fingerprint(), "input": spec.to_dict(), "model": model_fingerprint(model),
                   "batch_sizes": sizes}
    store = ShardStore(output_dir, fingerprint) if output_dir is not None else None
    in_memory: dict[int, torch.Tensor] = {}
    pending = [b for b in range(len(sizes)) if store is None or not store.is_finished(b)]
    if store is not None and len(pending) < len(sizes):
        logger.info("Resuming synthesis: %d of %d batches already on disk.", len(sizes) - len(pending), len(sizes))
    try:
        with accelerator.split_between_processes(pending) as mine:
            for batch_index in mine:
                images, stats = synthesize_batch(
                    model, spec, sizes[batch_index], batch_index, config, device=device,
                    autocast=accelerator.autocast, progress=progress and accelerator.is_local_main_process)
                logger.info("synthesis batch %d: BN-statistics loss %.4g -> %.4g", batch_index,
                            stats["initial_bn_loss"], stats["final_bn_loss"])
                if store is not None:
                    store.save(batch_index, images, stats)
                else:
                    in_memory[batch_index] = images.cpu()
        accelerator.wait_for_everyone()
    finally:
        model.train(was_training)
        for param, flag in zip(model.parameters(), grad_flags):
            param.requires_grad_(flag)
    batches = [store.load(b) if store is not None else in_memory[b] for b in range(len(sizes))]
    return torch.cat(batches)
