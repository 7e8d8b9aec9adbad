"""Synthesis batches in parallel worker processes on a multi-core CPU, one thread each.

A synthesis step of a small model is many small kernels: with two threads one step of the embedded 28 px
model ran 1.38x faster than with one, while two one-thread processes, each on its own batch, made 1.9x the
throughput of one (this project's 2-core machine). Batches are independent (each has its own seed, generator,
latents and swing offsets), so spreading them over processes changes only the speed: the images are those of
the serial run up to float rounding, as with more or fewer threads.

The workers are forked, so they share the loaded model without pickling it or importing anything again. A
forked child must stay on one thread: GNU OpenMP (torch's CPU thread pool) hangs in a fork child that opens
a parallel region with more threads once the parent has used them. Each worker writes its finished batches to
the shard store, as a run on several accelerate processes does, so that a killed run resumes from them.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import os
import sys
import time
import warnings
from typing import Callable, Sequence

import torch

from ..errors import GenieError

logger = logging.getLogger("genie_hub.synthesis")
REPORT_SECONDS = 0.5  # how often a worker reports its steps to the parent's progress bar


def fork_available() -> bool:
    """Linux with fork and working POSIX semaphores (the workers' stop event and group counter need them; some
    sandboxes have no /dev/shm, where multiprocessing.synchronize cannot be imported)."""
    if not sys.platform.startswith("linux") or "fork" not in multiprocessing.get_all_start_methods():
        return False
    try:
        importlib.import_module("multiprocessing.synchronize")
    except ImportError:
        return False
    return True


def plan_workers(requested: int, groups: int, device: torch.device | str, num_processes: int,
                 threads: int | None = None) -> int:
    """How many worker processes synthesize `groups` step groups: `requested` (`GenieConfig.synthesis_workers`)
    when it is >= 1, else automatically: as many as torch has threads, when there is a group for each of them;
    else 1 (the serial loop, which uses every thread in each step).

    Never more than one on a GPU, under an accelerate launch of several processes (they already split the
    batches), or where processes cannot be forked (macOS, Windows)."""
    threads = torch.get_num_threads() if threads is None else threads
    if torch.device(device).type != "cpu" or num_processes > 1 or not fork_available() or groups < 2:
        return 1
    if requested >= 1:
        return min(requested, groups)
    return threads if threads >= 2 and groups >= threads else 1


def available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (what can be allocated without swapping), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def fit_in_memory(workers: int, bytes_per_worker: int, available: int | None, requested: int = 0) -> int:
    """`workers`, fewer where that many would not fit in 80 % of `available` memory (each holds its own
    activations and image parameters; the serial loop needs one such share too). An explicit request
    (`requested` >= 1) is followed, with a warning, as asked."""
    if available is None or workers <= 1:
        return workers
    fitting = max(1, int(0.8 * available // max(bytes_per_worker, 1)))
    if fitting >= workers:
        return workers
    gib = 2**30
    if requested >= 1:
        logger.warning("%d synthesis workers need about %.1f GiB of memory and %.1f GiB are available; they may be "
                       "killed for memory (lower --synthesis-workers).", workers, workers * bytes_per_worker / gib,
                       available / gib)
        return workers
    logger.info("Synthesis: %d workers at about %.1f GiB each would not fit in the %.1f GiB available; using %d.",
                workers, bytes_per_worker / gib, available / gib, fitting)
    return fitting


class _StepReporter:
    """What a worker hands `optimize` as the overall bar: steps add up and reach the parent every
    REPORT_SECONDS (one message per step would cost more than the step on small models)."""

    def __init__(self, messages):
        self.messages, self.pending, self.last = messages, 0, time.monotonic()

    def update(self, steps: int = 1) -> None:
        self.pending += steps
        if time.monotonic() - self.last >= REPORT_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.messages.put(("steps", self.pending))
            self.pending, self.last = 0, time.monotonic()

    def set_postfix(self, *args, **kwargs) -> None:
        pass


def _die_with_parent(parent: int) -> None:
    """Have Linux kill this worker when its parent dies: a parent killed with SIGKILL (the out-of-memory killer)
    runs no cleanup, and an orphaned worker would go on computing, and writing batches, for hours."""
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)  # noqa: SLF001


def _worker(work: Callable, groups: Sequence, next_group, stop, messages, parent: int) -> None:
    _die_with_parent(parent)
    torch.set_num_threads(1)
    reporter = _StepReporter(messages)
    try:
        while not stop.is_set():
            with next_group.get_lock():
                index = next_group.value
                next_group.value += 1
            if index >= len(groups):
                break
            result = work(groups[index], reporter)
            reporter.flush()
            messages.put(("done", result))
    except BaseException as exc:  # noqa: BLE001 - every failure reaches the parent, which raises it
        reporter.flush()
        try:
            messages.put(("error", exc))
        except Exception:  # noqa: BLE001 - an exception that cannot be pickled: its text
            messages.put(("error", GenieError(f"{type(exc).__name__}: {exc}")))
        os._exit(1)  # noqa: SLF001 - no atexit handlers or finalizers of the parent's objects in a fork child
    os._exit(0)  # noqa: SLF001


def run_in_workers(work: Callable, groups: Sequence, workers: int, overall=None,
                   on_result: Callable | None = None) -> None:
    """`work(group, bar)` for every group, in `workers` forked one-thread processes, each taking the next group
    when it has finished one.

    `bar.update(n)` in a worker advances `overall` here; each return value of `work` is handed to
    `on_result` here as it arrives. When a worker raises, the others finish the group they are on (its work is
    kept) and start no other; then the first error is raised here. A worker that dies without one (killed for
    memory, say) raises a GenieError. An interrupt (Ctrl-C) stops every worker at once."""
    context = multiprocessing.get_context("fork")
    messages, stop, next_group = context.SimpleQueue(), context.Event(), context.Value("i", 0)
    processes = [context.Process(target=_worker, args=(work, groups, next_group, stop, messages, os.getpid()),
                                 daemon=True)
                 for _ in range(workers)]
    with warnings.catch_warnings():  # Python 3.12+ warns about fork in a process with threads (torch's own)
        warnings.simplefilter("ignore", DeprecationWarning)
        for process in processes:
            process.start()
    error: BaseException | None = None
    finished = False
    try:
        while True:
            if messages.empty():
                if not any(p.is_alive() for p in processes) and messages.empty():
                    break
                time.sleep(0.05)
                continue
            kind, value = messages.get()
            if kind == "steps" and overall is not None:
                overall.update(value)
            elif kind == "done" and on_result is not None:
                on_result(value)
            elif kind == "error" and error is None:
                error = value
                stop.set()
        finished = True
    finally:
        if not finished:  # interrupted here: no worker outlives the call (nor a parent killed outright)
            stop.set()
            for process in processes:
                with contextlib.suppress(Exception):
                    process.terminate()
        for process in processes:
            process.join()
    if error is not None:
        raise error
    failed = [p.exitcode for p in processes if p.exitcode]
    if failed:
        raise GenieError(f"A synthesis worker process stopped with exit code {failed[0]} (a negative code is the "
                         f"signal that killed it, e.g. -9 when the system ran out of memory). Finished batches "
                         "are kept on disk: rerun the same command to resume, with --synthesis-workers 1 to "
                         "synthesize one batch at a time.")
