"""The one optimisation loop behind Genie-D (synthesis) and Genie-M (reconstruction).

Both stages run thousands of tiny Adam steps, so per-step overhead matters: the loss is checked for NaN/inf
on the device every step (no host synchronisation) and read back only every `check_every` steps, when the
progress bar is updated and a divergence is reported. A divergence is therefore reported up to
`check_every - 1` steps after it happened; the run stops either way and finished work stays on disk.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .progress import progress_bar

COMPILE_BACKEND = "inductor"  # what GenieConfig.compile compiles with (tests use "aot_eager": the same trace)


def fused_adam_supported(device: torch.device | str) -> bool:
    """Whether this torch has a fused Adam kernel for float32 tensors on `device`."""
    try:
        torch.optim.Adam([torch.zeros(1, device=device, requires_grad=True)], fused=True)
    except (RuntimeError, TypeError):
        return False
    return True


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam over `params` (tensors, or param-group dicts as torch takes them), fused into one kernel per group
    where torch has one for these tensors (float, CPU or CUDA).

    The same update rule (up to float rounding: run.json records which kernel ran); the unfused version makes
    about ten passes over every parameter, which is most of a synthesis step at 224 px (the generator's first
    layer alone has 100M weights) and a third of a reconstruction step's elementwise work.
    """
    params = list(params)
    tensors = [p for item in params for p in (item["params"] if isinstance(item, dict) else [item])]
    if tensors and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors) \
            and fused_adam_supported(tensors[0].device):
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr)


def tensor_lr(value: float, device: torch.device | str) -> torch.Tensor:
    """A learning rate that fused Adam reads on the device, so that a schedule can change it without a host
    round trip: float64 on CPU (the same update as the Python float), float32 elsewhere (CUDA's kernel reads
    float32; the rate then differs from the float in the 8th digit)."""
    device = torch.device(device)
    return torch.tensor(value, dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)


class PlateauOnDevice:
    """torch's `ReduceLROnPlateau` (mode "min", relative threshold, no cooldown) for an optimizer whose lr is the
    tensor `lr` (`tensor_lr`), decided on the device from a loss tensor: no `.item()` per step, which on a GPU
    stalls the launch of the next step until the last one has finished. The same decisions as torch's, in
    float64 as its Python floats are (`tests/test_fast_paths.py` runs both on one loss sequence)."""

    def __init__(self, lr: torch.Tensor, factor: float, patience: int, min_lr: float, threshold: float = 1e-4,
                 eps: float = 1e-8):
        self.lr = lr
        self.master = lr if lr.dtype == torch.float64 else lr.double()
        self.factor, self.patience, self.min_lr, self.threshold, self.eps = factor, patience, min_lr, threshold, eps
        self.best = torch.full((), float("inf"), dtype=torch.float64, device=lr.device)
        self.bad_steps = torch.zeros((), dtype=torch.int64, device=lr.device)

    def step(self, loss: torch.Tensor) -> None:
        value = loss.detach().double()
        better = value < self.best * (1.0 - self.threshold)
        self.best = torch.where(better, value, self.best)
        self.bad_steps = torch.where(better, 0, self.bad_steps + 1)
        reduce = self.bad_steps > self.patience
        reduced = torch.clamp(self.master * self.factor, min=self.min_lr)
        self.master.copy_(torch.where(reduce & (self.master - reduced > self.eps), reduced, self.master))
        if self.lr is not self.master:
            self.lr.copy_(self.master)
        self.bad_steps = torch.where(reduce, 0, self.bad_steps)


def optimize(steps: int, compute_loss: Callable[[int], torch.Tensor], optimizers: Sequence[torch.optim.Optimizer],
             schedulers: Sequence = (), *, on_diverged: Callable[[int, float], Exception],
             after_step: Callable[[int, torch.Tensor], None] | None = None, check_every: int = 50,
             desc: str = "", progress: bool = True, overall=None) -> None:
    """Run `steps` steps of: loss = compute_loss(step); backward; every optimizer steps; every scheduler steps.

    `on_diverged(step, value)` builds the exception raised when the loss was non-finite at some step up to
    `step`; `after_step(step, loss)` runs last in each step (e.g. a scheduler that needs the loss value).
    `overall` is the stage's bar over all its steps (every batch or unit), advanced by one per step: its
    remaining time is the ETA of the whole stage.
    """
    # No bar object at all when none is shown: a forked synthesis worker (`synthesis/workers.py`) must not take
    # tqdm's lock, which a thread of its parent may have held at the fork.
    bar = progress_bar(range(steps), desc=desc, leave=False, unit="step") if progress else None
    non_finite = None
    for step in bar if bar is not None else range(steps):
        loss = compute_loss(step)
        bad = ~torch.isfinite(loss.detach())
        non_finite = bad if non_finite is None else non_finite | bad
        if step % check_every == 0 or step == steps - 1:
            if bool(non_finite):
                raise on_diverged(step, float(loss.detach()))
            if bar is not None:
                bar.set_postfix(loss=f"{float(loss.detach()):.4g}")
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
        if after_step is not None:
            after_step(step, loss)
        if overall is not None:
            overall.update(1)
