"""Genie-D: synthesize calibration images batch by batch, across accelerate processes, resumably.

Each batch gets fresh image parameters (a generator and latents, see `generator.py`), optimized so that the
frozen model's prior loss (BatchNorm statistics by default, see `prior.py`) is small. Batches are seeded
from (seed, batch index) and written to disk as soon as they finish: a killed run skips them on restart,
and any number of processes produces the same images.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..adapters import InputSpec, model_logits
from ..arguments import check_accelerator, check_config, check_model, preserved_state
from ..calibration import BatchStats, Calibration
from ..config import GenieConfig, make_accelerator, resolve_precision, warn_paper_default
from ..errors import ConfigError, GenieError, first_line
from ..fileio import save_safetensors
from ..loading import input_spec
from .. import optimization
from ..optimization import PlateauOnDevice, adam, fused_adam_supported, optimize, tensor_lr
from ..progress import progress_bar
from ..reproducibility import batch_seed, fingerprint_differences, model_fingerprint, seed_everything
from .generator import image_source
from .image_prior import PixelTarget, input_prior_loss, pixel_target
from . import swing  # the module: SWING_MIN_SIZE is read at run time (benchmarks ablate it)
from .bn_stats import BatchNormPrior, unmatched_batchnorm
from .prior import SynthesisPrior, select_prior
from .workers import available_memory_bytes, fit_in_memory, plan_workers, run_in_workers

logger = logging.getLogger("genie_hub.synthesis")

SHARD_PATTERN = "batch_{:05d}.safetensors"


def prefers_channels_last(device: torch.device | str) -> bool:
    """Whether synthesis runs the model and the generator channels_last: on CUDA, where cuDNN's NHWC kernels
    (and bf16 tensor cores) are fastest. On CPU the default layout was as fast or faster (a synthesis step of
    the embedded model, 37 vs 39 ms, and of EfficientNet-Lite0 at 224 px, 2.8-3.6 vs 3.2-3.6 s)."""
    return torch.device(device).type == "cuda"


_EAGER_BF16_CPU_SAID = False


def compiles_synthesis(config: GenieConfig, device: torch.device | str) -> bool:
    """Whether synthesis steps run under torch.compile: with `config.compile`, except in bf16 on a CPU. There,
    inductor's backward of the generator's transposed convolution corrupted the heap on a ViT (torch 2.13; the
    process died with "corrupted size vs. prev_size", a crash no fallback can catch), so synthesis runs eager
    and reconstruction alone is compiled."""
    global _EAGER_BF16_CPU_SAID
    if not config.compile:
        return False
    if torch.device(device).type == "cpu" and config.synthesis_precision == "bf16":
        if not _EAGER_BF16_CPU_SAID:
            logger.warning("--compile: synthesis runs eager in bf16 on a CPU (torch.compile crashed the process "
                           "there); reconstruction is compiled. Pass --synthesis-precision fp32 to compile "
                           "synthesis too.")
            _EAGER_BF16_CPU_SAID = True
        return False
    return True


def synthesis_autocast(config: GenieConfig, device: torch.device | str) -> Callable:
    """The autocast context of synthesis steps, from `config.synthesis_precision` as `resolve_precision` set it."""
    if config.synthesis_precision == "bf16":
        return lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext


class _BatchRun:
    """What one synthesis batch owns, also when it shares its steps with other batches: its image parameters
    (fresh, from its own seed), its optimizers and learning-rate schedules, the RNG of its swing offsets and
    its losses."""

    def __init__(self, batch_index: int, batch_size: int, spec: InputSpec, config: GenieConfig,
                 device: torch.device | str, channels_last: bool):
        self.batch_index = batch_index
        seed_everything(batch_seed(config.seed, batch_index))
        self.source = image_source(config.synthesis_method, batch_size, spec.channels, spec.height, spec.width,
                                   config.latent_dim, device, target=pixel_target(spec))
        if channels_last:
            self.source.generator.to(memory_format=torch.channels_last)
        # Swing offsets continue the batch's seeded stream, so they are the draws it would make alone.
        self.swing_rng = torch.Generator()
        self.swing_rng.set_state(torch.get_rng_state())
        # The latents' lr drops on a plateau of the loss; with fused Adam the decision is made on the device.
        plateau = dict(factor=0.1, patience=100, min_lr=1e-4)
        if fused_adam_supported(device):
            lr = tensor_lr(config.lr_latent, device)
            self.optimizers = [adam(self.source.per_image, lr=lr)]
            self.plateau = PlateauOnDevice(lr, **plateau)
        else:  # Adam takes a tensor lr only fused: torch's scheduler, which reads the loss on the host
            self.optimizers = [adam(self.source.per_image, lr=config.lr_latent)]
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizers[0], **plateau)
        self.schedulers = []
        if self.source.shared:
            self.optimizers.append(adam(self.source.shared, lr=config.lr_generator))
            self.schedulers.append(torch.optim.lr_scheduler.StepLR(self.optimizers[1], step_size=100, gamma=0.95))
        self.first_loss: torch.Tensor | None = None
        self.last_loss: torch.Tensor | None = None

    def images(self) -> torch.Tensor:
        return self.source.generator(self.source.latents)

    def record(self, loss: torch.Tensor) -> None:
        """The step's loss (a scalar tensor, not read on the host): the plateau schedule steps on it; the first
        and the last are kept for the batch's statistics."""
        loss = loss.detach()
        self.plateau.step(loss if isinstance(self.plateau, PlateauOnDevice) else float(loss))
        if self.first_loss is None:
            self.first_loss = loss
        self.last_loss = loss

    def loss_summary(self) -> tuple[float, float]:
        """(first, last) step loss; NaN without steps."""
        if self.first_loss is None:
            return float("nan"), float("nan")
        return float(self.first_loss), float(self.last_loss)


def _batch_names(indices: Sequence[int]) -> str:
    return f"batch {indices[0]}" if len(indices) == 1 else f"batches {indices[0]}-{indices[-1]}"


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def synthesis_step(model: nn.Module, prior: SynthesisPrior, generators: list[nn.Module], latents: list[torch.Tensor],
                   target: PixelTarget, autocast: Callable) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One forward of a synthesis step: each batch's images from its generator, the model on all of them (the
    prior's hooks attached) within `autocast()`, and each batch's loss (prior + image prior, outside it);
    returns (losses [batches], images)."""
    with autocast():
        parts = [generator(z) for generator, z in zip(generators, latents)]
        images = _joined(parts)
        model_logits(model, images)
    return prior.pop() + input_prior_loss(images, target, len(parts)), parts


class CompiledSynthesisStep:
    """`synthesis_step` under torch.compile (`GenieConfig.compile`), for GPUs: the synthesis step is then one
    graph (generator, model, the prior's and swing's hooks, losses) instead of a few hundred kernel launches.

    The swing offsets come in through `swing.DrawnSwing`, and the generators and latents as arguments, so one
    graph serves every step and every batch (a new batch's generator is new parameters, not a new graph). If
    compiling fails, the run goes on eager with a warning; `compiled` says which way it ran.
    """

    def __init__(self, prior: SynthesisPrior, drawn: swing.DrawnSwing | None):
        self.prior, self.drawn = prior, drawn
        self.compiled = True
        self._compiled_function = torch.compile(synthesis_step, backend=optimization.COMPILE_BACKEND)

    def __call__(self, *args) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if not self.compiled:
            return synthesis_step(*args)
        try:
            return self._compiled_function(*args)
        except Exception as exc:  # noqa: BLE001 - whatever the compiler raises, the eager path computes the same
            logger.warning("synthesis: torch.compile failed (%s: %s); synthesis runs eager.", type(exc).__name__,
                           first_line(exc))
            self.compiled = False
            self.prior.terms = []  # what a failed call may have left
            if self.drawn is not None:
                self.drawn.rewind()
            return synthesis_step(*args)


def synthesize_batches(model: nn.Module, spec: InputSpec, batch_size: int, batch_indices: Sequence[int],
                       config: GenieConfig, device: torch.device | str = "cpu", autocast: Callable | None = None,
                       progress: bool = True, prior: SynthesisPrior | None = None, overall=None,
                       channels_last: bool = False) -> list[tuple[torch.Tensor, BatchStats]]:
    """Optimize the batches `batch_indices` (each `batch_size` images, fresh image parameters) together, in one
    forward and backward of the model per step; return each batch's final images and loss statistics.

    Each batch keeps its own generator and latents, optimizers, schedules, swing offsets and statistics (the
    prior matches each batch's statistics alone), so the images are those of synthesizing it alone, up to
    float rounding; one larger forward only uses a GPU better. With `channels_last`, the generators compute in
    that layout (the model is the caller's to convert)."""
    prior = prior or select_prior(model, config.synthesis_prior)
    target = pixel_target(spec)
    runs = [_BatchRun(b, batch_size, spec, config, device, channels_last) for b in batch_indices]
    groups = len(runs)
    autocast = autocast or contextlib.nullcontext

    generators, latents = [run.source.generator for run in runs], [run.source.latents for run in runs]

    with torch.no_grad():
        initial_prior_losses = prior.measure(_joined([run.images() for run in runs]), groups)
    last: dict[str, Any] = {}
    swinging: contextlib.AbstractContextManager = contextlib.nullcontext()
    drawn = None
    compiled = compiles_synthesis(config, device)
    if runs[0].source.swing and compiled:  # offsets drawn before each step, read by the compiled graph
        example = torch.zeros(1, spec.channels, spec.height, spec.width, device=device)
        drawn = swing.DrawnSwing(model, example, [run.swing_rng for run in runs])
        swinging = drawn.attached(model)
    elif runs[0].source.swing:
        swinging = swing.swing_convolutions(model, [run.swing_rng for run in runs])
    step_function = CompiledSynthesisStep(prior, drawn) if compiled else synthesis_step

    def step_loss(step: int) -> torch.Tensor:
        if drawn is not None:
            drawn.draw()
        last["per_batch"], last["parts"] = step_function(model, prior, generators, latents, target, autocast)
        return last["per_batch"].sum()  # each batch's parameters get the gradient of its own loss only

    def after_step(step: int, loss: torch.Tensor) -> None:
        for run, batch_loss in zip(runs, last["per_batch"].detach().unbind()):
            run.record(batch_loss)

    def diverged(step: int, value: float) -> GenieError:
        return GenieError(f"Synthesis loss became {value} in {_batch_names(batch_indices)} (by iteration {step}); "
                          "finished batches are kept on disk. Try --mixed-precision no or a different --seed.")

    with prior.attached(groups), swinging:
        optimize(config.synthesis_iterations, step_loss, [o for run in runs for o in run.optimizers],
                 [s for run in runs for s in run.schedulers], on_diverged=diverged, after_step=after_step,
                 check_every=10, desc=f"synthesis {_batch_names(batch_indices)}", progress=progress,
                 overall=overall)
    # The images of the last step (the pixels method's are its parameters, so they include the last update).
    images = _joined(last["parts"] if last else [run.images() for run in runs]).detach().float().contiguous()
    final_prior_losses = prior.measure(images, groups)
    results = []
    for i, (run, part) in enumerate(zip(runs, images.chunk(groups))):
        initial_loss, final_loss = run.loss_summary()
        stats = BatchStats(batch_index=run.batch_index, initial_loss=initial_loss, final_loss=final_loss,
                           initial_prior_loss=initial_prior_losses[i], final_prior_loss=final_prior_losses[i],
                           compiled=isinstance(step_function, CompiledSynthesisStep) and step_function.compiled)
        results.append((part.clone() if groups > 1 else part, stats))
    return results


def synthesize_batch(model: nn.Module, spec: InputSpec, batch_size: int, batch_index: int, config: GenieConfig,
                     **kwargs) -> tuple[torch.Tensor, BatchStats]:
    """Optimize one batch (fresh image parameters); return the final images and their loss statistics.
    Keyword arguments as `synthesize_batches`."""
    return synthesize_batches(model, spec, batch_size, [batch_index], config, **kwargs)[0]


def step_groups(batch_indices: Sequence[int], sizes: Sequence[int], per_step: int) -> list[list[int]]:
    """`batch_indices` in order, in groups of up to `per_step` consecutive batches of equal size: the batches
    that share a synthesis step (a remainder batch of another size goes alone)."""
    groups: list[list[int]] = []
    for b in batch_indices:
        if groups and len(groups[-1]) < per_step and sizes[groups[-1][-1]] == sizes[b]:
            groups[-1].append(b)
        else:
            groups.append([b])
    return groups


def step_memory_bytes(model: nn.Module, spec: InputSpec, batch_size: int, config: GenieConfig,
                      prior: SynthesisPrior) -> int:
    """About how much memory one synthesis step of `batch_size` images takes beyond the model itself: what
    autograd saves in a step of 2 images (weights excluded), scaled to the batch, x1.5 for the gradients of the
    backward pass, plus the image parameters with their gradients and two Adam moments. Within 15 % of the
    measured peak on the embedded model (85 vs 92 MB at batch 64) and EfficientNet-Lite0 (4.1 vs 3.5 GB at 16)."""
    probe = 2
    with torch.random.fork_rng(devices=[]), torch.enable_grad():  # the probe's draws leave no trace
        source = image_source(config.synthesis_method, probe, spec.channels, spec.height, spec.width,
                              config.latent_dim, "cpu", target=pixel_target(spec))
        fixed = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers(),
                                                          *source.generator.parameters()]}
        saved: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in fixed:
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), prior.attached(1):
            model_logits(model, source.generator(source.latents))
            prior.pop()
    parameters = sum(p.numel() * p.element_size() for p in source.generator.parameters())
    return int(1.5 * sum(saved.values()) * batch_size / probe) + 4 * parameters


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
            differing = fingerprint_differences(saved, self.fingerprint)
            raise ConfigError(
                f"{self.directory} already holds synthetic images made with different settings or another "
                f"model ({path.name}, {differing}). Use a new --output-dir, or start over there "
                "(`genie_hub quantize --overwrite` deletes that folder with the rest of the run's work).")
        try:  # synthesis never stores a non-finite image (it stops on a NaN loss): a damaged or edited file
            readable = bool(torch.isfinite(self.load(batch_index)).all())
        except Exception:  # noqa: BLE001 - truncated data, another tensor name
            readable = False
        if not readable:
            logger.warning("Ignoring damaged shard %s (unreadable images or NaN/infinite pixels); it will be "
                           "synthesized again.", path)
        return readable

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
    check_model(model, "synthesize")
    check_accelerator(accelerator, "synthesize", "it then makes one, on the GPU where there is one")
    paper_default = config is None
    config = config or GenieConfig()
    check_config(config, "synthesize")
    if output_dir is not None and (not str(output_dir).strip() or Path(output_dir).is_file()):
        raise ConfigError(f"output_dir {str(output_dir)!r} is {'a file' if str(output_dir).strip() else 'empty'}: "
                          "pass a folder for the finished batches (created if missing), or None to keep them in "
                          "memory only.")
    if spec is None:
        spec = input_spec(model, processor)
        if processor is None:  # the size then comes from the config alone, often its 224 px default
            logger.warning(
                "synthesize() got no processor and no spec, so the images are %dx%d (the model config's image_size) "
                "and the pixel prior ignores the model's input normalization. Pass processor= (load_model returns "
                "it) or spec= to synthesize images like the model's real inputs.", spec.height, spec.width)
    prior = select_prior(model, config.synthesis_prior)
    unmatched = unmatched_batchnorm(model) if prior.name == BatchNormPrior.name else []
    if unmatched:
        logger.warning("%d BatchNorm layer(s) that are not BatchNorm2d (e.g. %s) are not matched by the %s prior, "
                       "which matches the inputs of the %d BatchNorm2d layers only, as Genie does; the images follow "
                       "what those remember.", len(unmatched), ", ".join(unmatched[:3]), prior.name, len(prior.layers))
    if accelerator is None:
        accelerator, config = make_accelerator(config)
    elif config.mixed_precision is None or config.synthesis_precision == "auto":  # (once: the pipeline resolved it)
        config = resolve_precision(config, accelerator)  # the images depend on it: the shards' fingerprint names it
    if accelerator.num_processes > 1 and output_dir is None:
        raise ConfigError("Synthesis on several processes needs an output_dir to exchange finished batches.")

    device = accelerator.device
    if paper_default:
        warn_paper_default("synthesize", config, device)
    with preserved_state(model):  # the caller's model comes back in its own modes, also after an error
        return _synthesize_all(model, spec, config, accelerator, prior, output_dir, progress)


def _synthesize_all(model: nn.Module, spec: InputSpec, config: GenieConfig, accelerator, prior: SynthesisPrior,
                    output_dir: str | Path | None, progress: bool) -> Calibration:
    """`synthesize` after its checks: every pending batch, stored in `output_dir` (or memory) and returned."""
    device = accelerator.device
    model.eval().requires_grad_(False)
    model.to(device)
    channels_last = prefers_channels_last(device)
    sizes = config.synthesis_batch_sizes()
    fingerprint = {**config.synthesis_fingerprint(), "prior": prior.name, "input": spec.to_dict(),
                   "pixel_target": pixel_target(spec).to_dict(),
                   "model": model_fingerprint(model), "batch_sizes": sizes}
    if config.synthesis_method == "genie":  # earlier versions swung maps of every size: their shards are other images
        fingerprint["swing_min_size"] = swing.SWING_MIN_SIZE
    store = ShardStore(output_dir, fingerprint) if output_dir is not None else None
    in_memory: dict[int, tuple[torch.Tensor, BatchStats]] = {}
    if accelerator.num_processes > 1:  # every process lists the finished batches before any starts a new one:
        accelerator.wait_for_everyone()  # a late one would see fewer pending, and the shares would not line up
    pending = [b for b in range(len(sizes)) if store is None or not store.is_finished(b)]
    if store is not None and len(pending) < len(sizes):
        logger.info("Resuming synthesis: %d of %d batches already on disk.", len(sizes) - len(pending), len(sizes))
    scratch, workers = contextlib.ExitStack(), 1
    try:
        if channels_last:
            model.to(memory_format=torch.channels_last)
        with accelerator.split_between_processes(pending) as mine:
            groups = step_groups(mine, sizes, config.synthesis_batches_per_step)
            workers = plan_workers(config.synthesis_workers, len(groups), device, accelerator.num_processes)
            if workers > 1:
                workers = fit_in_memory(workers, step_memory_bytes(model, spec, sizes[groups[0][0]] * len(groups[0]),
                                                                   config, prior), available_memory_bytes(),
                                        requested=config.synthesis_workers)
            if workers > 1 and store is None:  # workers hand their batches over on disk
                store = ShardStore(scratch.enter_context(tempfile.TemporaryDirectory(prefix="genie_hub-")),
                                   fingerprint)

            autocast = synthesis_autocast(config, device)

            def synthesize_group(group: list[int], overall, progress: bool) -> list[tuple[int, BatchStats]]:
                try:
                    finished = synthesize_batches(model, spec, sizes[group[0]], group, config, device=device,
                                                  autocast=autocast, progress=progress, prior=prior,
                                                  overall=overall, channels_last=channels_last)
                except torch.OutOfMemoryError as exc:
                    raise GenieError(
                        f"Synthesis ran out of memory on {device} in {_batch_names(group)} "
                        f"({len(group)} x {sizes[group[0]]} images per step). Lower --synthesis-batches-per-step "
                        f"(now {config.synthesis_batches_per_step}; it changes only the speed) or --batch-size, "
                        "or use --synthesis-precision bf16; finished batches are kept on disk and a rerun of the "
                        "same command resumes from them.") from exc
                for batch_index, (images, stats) in zip(group, finished):
                    if store is not None:
                        store.save(batch_index, images, stats)
                    else:
                        in_memory[batch_index] = (images.cpu(), stats)
                return [(batch_index, stats) for batch_index, (_, stats) in zip(group, finished)]

            def log_finished(finished: list[tuple[int, BatchStats]]) -> None:
                for batch_index, stats in finished:
                    logger.info("synthesis batch %d: %s loss %.4g -> %.4g", batch_index, prior.name,
                                stats.initial_prior_loss, stats.final_prior_loss)

            show = progress and accelerator.is_local_main_process
            with progress_bar(total=len(groups) * config.synthesis_iterations, desc="Genie-D synthesis",
                              unit="step", disable=not show) as overall:
                if workers > 1:
                    overall.set_postfix(batches=len(mine), workers=workers)
                    run_in_workers(lambda group, bar: synthesize_group(group, bar, False), groups, workers,
                                   overall=overall, on_result=log_finished)
                else:
                    for group in groups:
                        overall.set_postfix(batch=f"{group[0] + 1}" + (f"-{group[-1] + 1}" if len(group) > 1 else "")
                                            + f"/{len(sizes)}")
                        log_finished(synthesize_group(group, overall, show))
        accelerator.wait_for_everyone()
        if store is not None:
            batches = [(store.load(b), store.stats(b)) for b in range(len(sizes))]
        else:
            batches = [in_memory[b] for b in range(len(sizes))]
    finally:
        scratch.close()
        if channels_last:  # the caller's model goes back to the default layout
            model.to(memory_format=torch.contiguous_format)
    return Calibration(pixel_values=torch.cat([images for images, _ in batches]), source="synthetic",
                       prior=prior.name, batch_indices=[b for b, size in enumerate(sizes) for _ in range(size)],
                       batch_stats=[stats for _, stats in batches], synthesis_workers=workers)
