"""Genie-M block reconstruction: learn step sizes and rounding together, one unit at a time.

For each unit, in model order: cache the FP model's input x and output y (the teacher) and the quantized
model's input x_q (earlier units already quantized) for all calibration samples; then minimize
||unit_q(mix(x_q, x)) - y||^2 (summed over channels) + a rounding regularizer that pushes soft bits to 0/1.
Finished units are hard-rounded, frozen, and saved to a state file, so an interrupted run resumes there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import nn

from ..adapters import model_logits
from ..config import GenieConfig, without_synthesis_settings
from ..errors import ConfigError, ReconstructionDivergedError, first_line
from ..fileio import save_safetensors
from ..hooks import TemporaryHooks
from .. import optimization
from ..optimization import adam, optimize
from ..progress import progress_bar
from ..reproducibility import RECONSTRUCTION_SEED_OFFSET, batch_seed, fingerprint_differences, seed_everything
from .blocks import Unit, _first_tensor
from .layers import QuantizedOp
from .quantizers import ActQuantizer, qdrop_mix

logger = logging.getLogger("genie_hub.reconstruction")
ACT_INIT_SAMPLES = 256  # samples used to initialize activation steps of a unit
EVAL_CHUNK = 64


class _StopForward(Exception):
    pass


@dataclass
class UnitReport:
    """How one unit went: its output error with round-to-nearest weights and after reconstruction."""

    name: str
    kind: str
    num_ops: int
    steps: int
    error_round_to_nearest: float
    error_reconstructed: float
    seconds: float
    resumed: bool = False
    kept: str = "reconstructed"  # or "round-to-nearest", when reconstruction ended with a larger output error
    compiled: bool = False  # its training step ran under torch.compile (GenieConfig.compile)


class UnitOutcome(NamedTuple):
    """What `reconstruct_unit` returns."""

    error_round_to_nearest: float
    error_reconstructed: float
    kept: str
    compiled: bool


@torch.no_grad()
def capture(model: nn.Module, module_name: str, data: torch.Tensor, batch_size: int, device,
            with_output: bool, autocast=contextlib.nullcontext) -> tuple[torch.Tensor, torch.Tensor | None, tuple, dict]:
    """Run `model` on `data` and collect the input (and output) of `module_name`, stopping right after it."""
    module = model.get_submodule(module_name)
    inputs, outputs, extra = [], [], {}

    def pre_hook(mod, args, kwargs):
        inputs.append(args[0].detach().float())
        extra["args"], extra["kwargs"] = args[1:], kwargs
        if not with_output:
            raise _StopForward

    def post_hook(mod, args, kwargs, output):
        outputs.append(_first_tensor(output).detach().float())
        raise _StopForward

    with TemporaryHooks() as hooks:
        hooks.pre(module, pre_hook, with_kwargs=True, prepend=True)  # the block's input before block_input.py's hook
        if with_output:
            hooks.post(module, post_hook, with_kwargs=True)
        for chunk in data.split(batch_size):
            try:
                with autocast():
                    model_logits(model, chunk.to(device))
            except _StopForward:
                pass
    return (torch.cat(inputs), torch.cat(outputs) if with_output else None,
            extra.get("args", ()), extra.get("kwargs", {}))


def _unit_forward(unit: nn.Module, x: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    return _first_tensor(unit(x, *args, **kwargs)).float()


@torch.no_grad()
def _output_error(unit, x, y, args, kwargs) -> float:
    total = 0.0
    for xs, ys in zip(x.split(EVAL_CHUNK), y.split(EVAL_CHUNK)):
        total += float((_unit_forward(unit, xs, args, kwargs) - ys).pow(2).sum(1).mean()) * len(xs)
    return total / len(x)


def unit_training_loss(unit: nn.Module, x: torch.Tensor, target: torch.Tensor, args: tuple, kwargs: dict,
                       weight_quantizers: list, beta: float | torch.Tensor,
                       rounding_weight: float | torch.Tensor | None) -> torch.Tensor:
    """||unit(x) - target||^2 (summed over channels, averaged over samples) + rounding_weight * the rounding
    regularizer at `beta` (left out when `rounding_weight` is None: the warm-up steps)."""
    loss = (_unit_forward(unit, x, args, kwargs) - target).pow(2).sum(1).mean()
    if rounding_weight is not None and weight_quantizers:
        loss = loss + rounding_weight * sum(wq.rounding_regularizer(beta) for wq in weight_quantizers)
    return loss


class CompiledUnitLoss:
    """A unit's training loss (`unit_training_loss`) under torch.compile (`GenieConfig.compile`).

    beta and the rounding weight enter as tensors (0 during warm-up), so one graph serves every step; the
    quantizers trace their plain definitions (`ActQuantizer.traced_forward`, `WeightQuantizer.soft_weight`).
    If compiling fails, the unit runs eager with a warning, and `compiled` says which way it ran.
    """

    def __init__(self, eager: Callable, act_quantizers: list[ActQuantizer], name: str):
        self.eager, self.act_quantizers, self.name = eager, act_quantizers, name
        self.compiled = True

        def traced(x, target, beta, rounding_weight):
            self._clear()
            loss = eager(x, target, beta, rounding_weight)
            self._clear()  # nothing traced stays cached on a quantizer
            return loss

        self._compiled_function = torch.compile(traced, backend=optimization.COMPILE_BACKEND)

    def _clear(self) -> None:
        for aq in self.act_quantizers:
            aq.clear_cache()

    def __call__(self, x: torch.Tensor, target: torch.Tensor, beta: float, rounding_weight: float | None):
        if not self.compiled:
            return self.eager(x, target, beta, rounding_weight)
        as_tensor = lambda value: torch.tensor(value, dtype=torch.float32, device=x.device)
        try:
            return self._compiled_function(x, target, as_tensor(beta), as_tensor(rounding_weight or 0.0))
        except Exception as exc:  # noqa: BLE001 - whatever the compiler raises, the eager path computes the same
            message = first_line(exc)
            logger.warning("unit %s: torch.compile failed (%s: %s); this unit runs eager.", self.name,
                           type(exc).__name__, message)
            self.compiled = False
            self._clear()
            return self.eager(x, target, beta, rounding_weight)


def _act_quantizers(ops: list[QuantizedOp]) -> list[ActQuantizer]:
    seen, result = set(), []
    for op in ops:
        for q in op.act_quantizers().values():
            if id(q) not in seen:
                seen.add(id(q))
                result.append(q)
    return result


def reconstruct_unit(unit: nn.Module, ops: list[QuantizedOp], x_fp: torch.Tensor, x_q: torch.Tensor,
                     y_fp: torch.Tensor, args: tuple, kwargs: dict, config: GenieConfig, name: str,
                     autocast=contextlib.nullcontext, progress: bool = True,
                     overall=None) -> UnitOutcome:
    """Reconstruct one unit in place and freeze it. Reconstruction never makes a unit worse: when it ends with
    a larger output error on the calibration data than round-to-nearest (too few steps to anneal the rounding,
    degenerate data), the unit keeps its round-to-nearest weights and initial steps instead."""
    weight_quantizers = [op.weight_quantizer for op in ops if op.weight_quantizer is not None]
    act_quantizers = _act_quantizers(ops)
    with torch.no_grad():  # activation steps: Lp search on the quantized model's own inputs
        _unit_forward(unit, x_q[:ACT_INIT_SAMPLES], args, kwargs)
    for wq in weight_quantizers:
        wq.hard = True
    error_rtn = _output_error(unit, x_q, y_fp, args, kwargs)
    for wq in weight_quantizers:
        wq.hard = False
    initial = [p.detach().clone() for p in _learned(weight_quantizers, act_quantizers)]

    steps, compiled = config.reconstruction_steps, False
    if steps > 0 and weight_quantizers + act_quantizers:
        # One optimizer: steps on a cosine schedule down to 0 (CosineAnnealingLR's closed form), rounding constant.
        cosine, constant = (lambda step: 0.5 * (1 + math.cos(math.pi * step / steps))), (lambda step: 1.0)
        groups = [(params, lr, schedule) for params, lr, schedule in (
            ([wq.step.log_step for wq in weight_quantizers], config.lr_weight_step, cosine),
            ([aq.step.log_step for aq in act_quantizers], config.lr_act_step, cosine),
            ([wq.rounding for wq in weight_quantizers], config.lr_rounding, constant)) if params]
        optimizer = adam([{"params": params, "lr": lr} for params, lr, _ in groups], lr=groups[0][1])
        optimizers = [optimizer]
        schedulers = [torch.optim.lr_scheduler.LambdaLR(optimizer, [schedule for _, _, schedule in groups])]
        params = [p for params, _, _ in groups for p in params]
        for p in params:
            p.requires_grad_(True)
        for aq in act_quantizers:
            aq.qdrop_prob = config.qdrop_prob
        warmup = int(config.warmup * steps)
        count, batch = len(x_fp), min(config.reconstruction_batch_size, len(x_fp))

        def eager_loss(x, target, beta, rounding_weight):
            return unit_training_loss(unit, x, target, args, kwargs, weight_quantizers, beta, rounding_weight)

        loss_function = CompiledUnitLoss(eager_loss, act_quantizers, name) if config.compile else eager_loss

        def unit_loss(step: int) -> torch.Tensor:
            idx = torch.randperm(count, device=x_fp.device)[:batch]
            xq, xf = x_q[idx], x_fp[idx]
            mixed = qdrop_mix(xq, xf, config.qdrop_prob)
            progress_frac = (step - warmup) / max(1, steps - warmup)
            beta = config.beta_start + (config.beta_end - config.beta_start) * progress_frac
            with autocast():
                return loss_function(mixed, y_fp[idx], beta, config.rounding_weight if step >= warmup else None)

        def diverged(step: int, value: float) -> ReconstructionDivergedError:
            return ReconstructionDivergedError(
                f"Reconstruction of unit '{name}' diverged: the loss became {value} by step {step}. "
                "Units finished before it are saved; rerun the same command to resume from this unit "
                "(try --mixed-precision no, or fewer bits for this module via overrides).")

        try:
            optimize(steps, unit_loss, optimizers, schedulers, on_diverged=diverged, check_every=50,
                     desc=f"reconstruct {name}", progress=progress, overall=overall)
            compiled = isinstance(loss_function, CompiledUnitLoss) and loss_function.compiled
        finally:
            for aq in act_quantizers:
                aq.qdrop_prob = 0.0
            for p in params:
                p.requires_grad_(False)
    for wq in weight_quantizers:
        wq.hard = True
    error_final, kept = _output_error(unit, x_q, y_fp, args, kwargs), "reconstructed"
    if error_final > error_rtn:
        with torch.no_grad():
            for param, value in zip(_learned(weight_quantizers, act_quantizers), initial):
                param.copy_(value)
        logger.warning("unit %s: reconstruction ended with a larger output error than round-to-nearest "
                       "(%.4g > %.4g); keeping round-to-nearest for this unit (more reconstruction steps help: "
                       "--reconstruction-steps, or reconstruction_steps in GenieConfig).", name, error_final, error_rtn)
        error_final, kept = _output_error(unit, x_q, y_fp, args, kwargs), "round-to-nearest"
    for op in ops:
        op.freeze()
    return UnitOutcome(error_rtn, error_final, kept, compiled)


def _learned(weight_quantizers: list, act_quantizers: list[ActQuantizer]) -> list[torch.Tensor]:
    """Everything reconstruction changes: weight steps and rounding variables, activation steps."""
    return [*(p for wq in weight_quantizers for p in (wq.step.log_step, wq.rounding)),
            *(aq.step.log_step for aq in act_quantizers)]


def _without_synthesis_settings(fingerprint: dict) -> dict:
    """A state's fingerprint as resuming compares it: the calibration images are fingerprinted themselves, so the
    settings that only make them (`SYNTHESIS_ONLY_FIELDS`, which a few-shot run does not use) are left out."""
    config = fingerprint.get("config")
    return {**fingerprint, "config": without_synthesis_settings(config)} if isinstance(config, dict) else fingerprint


class ReconstructionState:
    """Frozen units on disk (safetensors), so an interrupted reconstruction resumes at the next unit."""

    def __init__(self, path: str | Path | None, fingerprint: dict):
        self.path = Path(path) if path is not None else None
        self.fingerprint = fingerprint
        self.finished: list[dict] = []
        self.tensors: dict[str, torch.Tensor] = {}
        self.signed: dict[str, bool | None] = {}
        if self.path is not None and self.path.exists():
            try:
                saved, tensors, finished, signed = self._read()
            except Exception as exc:  # noqa: BLE001 - truncated, overwritten or edited: its units are made again
                logger.warning("Ignoring the unreadable reconstruction state %s (%s: %s); every unit is "
                               "reconstructed again.", self.path, type(exc).__name__, first_line(exc))
                return
            if _without_synthesis_settings(saved) != _without_synthesis_settings(fingerprint):
                raise ConfigError(
                    f"{self.path} holds a reconstruction made with different settings, calibration data or "
                    f"model ({fingerprint_differences(saved, fingerprint)}). Use a new --output-dir, or delete "
                    "that file to start the reconstruction over.")
            self.tensors, self.finished, self.signed = tensors, finished, signed

    def _read(self) -> tuple[dict, dict[str, torch.Tensor], list[dict], dict[str, bool | None]]:
        """(fingerprint, tensors, finished units, signedness) of the state file; raises on anything damaged,
        non-finite tensors included (freeze() never stores them)."""
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        damaged = next((k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())),
                       None)
        if damaged is not None:
            raise ValueError(f"{damaged} holds NaN or infinite values")
        finished, signed = json.loads(meta["finished"]), json.loads(meta["signed"])
        if not isinstance(finished, list) or not all(isinstance(r, dict) and "name" in r for r in finished) \
                or not isinstance(signed, dict):
            raise ValueError("its list of finished units is malformed")
        return json.loads(meta.get("fingerprint", "{}")), tensors, finished, signed

    def done(self, unit_name: str) -> dict | None:
        return next((r for r in self.finished if r["name"] == unit_name), None)

    def restore(self, ops: dict[str, QuantizedOp], device) -> None:
        for name, op in ops.items():
            keys = {suffix: f"{name}.{suffix}" for suffix in op.stored_tensors()}
            missing = [key for key in keys.values() if key not in self.tensors]
            if missing:
                raise ConfigError(f"{self.path} is incomplete ({missing[0]} is missing). Delete it to start the "
                                  "reconstruction over.")
            op.load_frozen({suffix: self.tensors[key] for suffix, key in keys.items()}, self.signed.get(name),
                           device=device)

    def record(self, report: UnitReport, ops: dict[str, QuantizedOp]) -> None:
        self.finished.append(asdict(report))
        for name, op in ops.items():
            self.signed[name] = op.act_signed
            for suffix, tensor in op.to_frozen().items():
                self.tensors[f"{name}.{suffix}"] = tensor
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_safetensors(self.tensors, self.path, {
                "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
                "finished": json.dumps(self.finished), "signed": json.dumps(self.signed)})


def _compile_limits(units: int):
    """Every unit compiles its own graph of the one loss function: dynamo would stop compiling (and run eager)
    after 8 graphs of one function, its default limit."""
    import torch._dynamo

    return torch._dynamo.config.patch(recompile_limit=units + 8)


def reconstruct(fp_model: nn.Module, q_model: nn.Module, units: list[Unit], calibration: torch.Tensor,
                config: GenieConfig, *, device="cpu", autocast=contextlib.nullcontext,
                state: ReconstructionState | None = None, progress: bool = True) -> list[UnitReport]:
    """Reconstruct every unit of `q_model` in order; returns one report per unit."""
    state = state or ReconstructionState(None, {})
    fp_model.eval().requires_grad_(False)
    q_model.eval().requires_grad_(False)
    batch = max(config.reconstruction_batch_size, 64)
    reports = []
    steps = config.reconstruction_steps  # the bar counts steps over all units: its remaining time is the ETA
    outer = progress_bar(total=len(units) * steps, desc="Genie-M reconstruction", unit="step", disable=not progress)
    for index, unit in enumerate(units):
        ops = {name: q_model.get_submodule(name) for name in unit.ops}
        finished = state.done(unit.name)
        if finished is not None:
            state.restore(ops, device)
            reports.append(UnitReport(**{**finished, "resumed": True}))
            outer.total -= steps  # resumed: no time spent, so not counted in the rate
            outer.refresh()
            continue
        outer.set_postfix(unit=f"{index + 1}/{len(units)} {unit.name[-30:]}")
        started, counted = time.perf_counter(), outer.n
        seed_everything(batch_seed(config.seed, RECONSTRUCTION_SEED_OFFSET + index))
        x_fp, y_fp, args, kwargs = capture(fp_model, unit.name, calibration, batch, device, True, autocast)
        x_q, _, q_args, q_kwargs = capture(q_model, unit.name, calibration, batch, device, False, autocast)
        with _compile_limits(len(units)) if config.compile else contextlib.nullcontext():
            outcome = reconstruct_unit(
                q_model.get_submodule(unit.name), list(ops.values()), x_fp, x_q, y_fp, q_args, q_kwargs, config,
                unit.name, autocast=autocast, progress=progress, overall=outer)
        error_rtn, error_final = outcome.error_round_to_nearest, outcome.error_reconstructed
        outer.update(counted + steps - outer.n)  # a unit with nothing to learn ran no steps
        report = UnitReport(unit.name, unit.kind, len(ops), config.reconstruction_steps, error_rtn, error_final,
                            time.perf_counter() - started, kept=outcome.kept, compiled=outcome.compiled)
        logger.info("unit %s: output error %.4g (round-to-nearest) -> %.4g (reconstructed)", unit.name,
                    error_rtn, error_final)
        state.record(report, ops)
        reports.append(report)
        del x_fp, y_fp, x_q
    outer.close()
    return reports
