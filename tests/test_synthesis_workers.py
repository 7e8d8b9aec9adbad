"""Synthesis batches in parallel one-thread worker processes (`genie_hub/synthesis/workers.py`)."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from huggingface_hub import ModelCard

from genie_hub.cli import main
from genie_hub.config import GenieConfig
from genie_hub.errors import ConfigError, GenieError
from genie_hub.loading import input_spec
from genie_hub.synthesis import synthesize
from genie_hub.synthesis import loop
from genie_hub.synthesis.generator import image_source
from genie_hub.synthesis.loop import step_memory_bytes
from genie_hub.synthesis.prior import select_prior
from genie_hub.synthesis.workers import fit_in_memory, fork_available, plan_workers, run_in_workers
from tiny_models import save_tiny_model, tiny_model

pytestmark = pytest.mark.skipif(not fork_available(), reason="worker processes are forked (Linux)")


@pytest.fixture
def one_thread():
    """The serial loop at one thread computes what each one-thread worker computes: bit-identical images."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_automatic_workers_take_one_thread_each_when_there_is_a_batch_for_every_thread():
    assert plan_workers(0, groups=2, device="cpu", num_processes=1, threads=2) == 2
    assert plan_workers(0, groups=5, device="cpu", num_processes=1, threads=4) == 4
    assert plan_workers(0, groups=2, device="cpu", num_processes=1, threads=4) == 1  # 4 threads on each batch
    assert plan_workers(0, groups=8, device="cpu", num_processes=1, threads=1) == 1
    assert plan_workers(0, groups=1, device="cpu", num_processes=1, threads=2) == 1
    assert plan_workers(3, groups=8, device="cpu", num_processes=1, threads=1) == 3  # asked for: one thread each
    assert plan_workers(3, groups=2, device="cpu", num_processes=1, threads=8) == 2  # never more than the batches
    assert plan_workers(1, groups=8, device="cpu", num_processes=1, threads=8) == 1
    # A GPU, or accelerate processes (which split the batches already), synthesize in their own process.
    assert plan_workers(4, groups=8, device="cuda", num_processes=1, threads=8) == 1
    assert plan_workers(4, groups=8, device="cpu", num_processes=2, threads=8) == 1


def test_workers_cannot_be_planned_without_fork(monkeypatch):
    monkeypatch.setattr("genie_hub.synthesis.workers.fork_available", lambda: False)
    assert plan_workers(2, groups=4, device="cpu", num_processes=1, threads=2) == 1


def test_workers_that_would_not_fit_in_memory_are_fewer_unless_asked_for(caplog):
    gib = 2**30
    assert fit_in_memory(4, 1 * gib, available=10 * gib) == 4
    assert fit_in_memory(4, 3 * gib, available=10 * gib) == 2  # 80 % of 10 GiB holds two
    assert fit_in_memory(4, 9 * gib, available=10 * gib) == 1  # not even two: the serial loop
    assert fit_in_memory(4, 3 * gib, available=None) == 4  # unknown: as planned
    assert fit_in_memory(4, 3 * gib, available=10 * gib, requested=4) == 4  # asked for: followed, with a warning
    assert "may be killed for memory" in caplog.text


def test_step_memory_grows_with_the_batch_and_leaves_the_rng_alone():
    model = tiny_model("resnet-basic").requires_grad_(False)
    config, prior = GenieConfig.from_profile("quick"), select_prior(model, "auto")
    torch.manual_seed(0)
    state = torch.get_rng_state()
    small, large = (step_memory_bytes(model, input_spec(model), b, config, prior) for b in (4, 40))
    assert torch.equal(torch.get_rng_state(), state)
    generator = image_source("genie", 2, 3, 32, 32, config.latent_dim).generator
    parameters = 4 * sum(p.numel() * 4 for p in generator.parameters())
    assert small > parameters and large - parameters == pytest.approx(10 * (small - parameters), rel=0.01)
    assert prior.terms == []  # the probe's loss terms are not left for the first step


def test_a_negative_worker_count_is_refused():
    with pytest.raises(ConfigError, match=r"synthesis_workers \(--synthesis-workers\) must be 0"):
        GenieConfig.from_profile("quick", synthesis_workers=-1)


def test_workers_make_the_images_of_the_serial_loop(tmp_path, one_thread):
    model = tiny_model("resnet-basic").train()
    model.classifier.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    config = GenieConfig.from_profile("quick", num_samples=10, synthesis_batch_size=4, synthesis_iterations=4)
    serial = synthesize(model, config, spec=input_spec(model), progress=False)
    parallel = synthesize(model, GenieConfig.from_profile("quick", num_samples=10, synthesis_batch_size=4,
                                                          synthesis_iterations=4, synthesis_workers=2),
                          spec=input_spec(model), output_dir=tmp_path, progress=False)
    assert (serial.synthesis_workers, parallel.synthesis_workers) == (1, 2)
    assert torch.equal(parallel.pixel_values, serial.pixel_values)
    assert [vars(s) for s in parallel.batch_stats] == [vars(s) for s in serial.batch_stats]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"batch_0000{b}.safetensors" for b in range(3)]
    # Without an output folder the workers hand their batches over through a temporary one.
    in_memory = synthesize(model, GenieConfig.from_profile("quick", num_samples=10, synthesis_batch_size=4,
                                                           synthesis_iterations=4, synthesis_workers=3),
                           spec=input_spec(model), progress=False)
    assert in_memory.synthesis_workers == 3 and torch.equal(in_memory.pixel_values, serial.pixel_values)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags  # the caller's model as it was


def test_an_error_in_a_worker_is_raised_and_finished_batches_stay_on_disk(tmp_path, monkeypatch, one_thread):
    model = tiny_model("resnet-basic")
    real = loop.synthesize_batches

    def fails_on_batch_1(model, spec, batch_size, batch_indices, config, **kwargs):
        if 1 in batch_indices:
            raise ConfigError("batch 1 cannot be made")
        return real(model, spec, batch_size, batch_indices, config, **kwargs)

    monkeypatch.setattr(loop, "synthesize_batches", fails_on_batch_1)  # forked workers inherit the patch
    config = GenieConfig.from_profile("quick", num_samples=8, synthesis_batch_size=4, synthesis_iterations=2,
                                      synthesis_workers=2)
    with pytest.raises(ConfigError, match="batch 1 cannot be made"):
        synthesize(model, config, spec=input_spec(model), output_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch_00000.safetensors"]
    monkeypatch.setattr(loop, "synthesize_batches", real)
    resumed = synthesize(model, config, spec=input_spec(model), output_dir=tmp_path, progress=False)
    assert resumed.synthesis_workers == 1  # one batch was left to make
    assert len(resumed) == 8


def _count_steps(group, bar):
    for _ in range(group):
        bar.update(1)
    return group * 10


def _killed(group, bar):
    if group == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return group


class _Bar:
    def __init__(self):
        self.n = 0

    def update(self, steps):
        self.n += steps


def test_worker_steps_reach_the_progress_bar_and_every_result_arrives():
    bar, results = _Bar(), []
    run_in_workers(_count_steps, [3, 4, 5, 6, 7], 2, overall=bar, on_result=results.append)
    assert bar.n == 3 + 4 + 5 + 6 + 7
    assert sorted(results) == [30, 40, 50, 60, 70]


def test_a_killed_worker_is_reported_with_its_signal():
    with pytest.raises(GenieError, match="exit code -9.*--synthesis-workers 1"):
        run_in_workers(_killed, [1, 2], 2)


def test_the_worker_count_is_recorded_in_run_json_and_the_card(tmp_path, one_thread):
    save_tiny_model(tmp_path / "base", "resnet-basic")
    out = tmp_path / "out"
    assert main(["quantize", str(tmp_path / "base"), "-o", str(out), "-q", "--profile", "quick", "--num-samples",
                 "8", "--batch-size", "4", "--synthesis-iterations", "2", "--reconstruction-steps", "2",
                 "--synthesis-workers", "2"]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["synthesis_workers"] == 2 and record["config"]["synthesis_workers"] == 2
    card = ModelCard.load(out / "model" / "README.md").text
    assert "made by 2 worker processes of one thread each" in card


def test_synthesis_runs_serially_when_workers_would_not_fit_in_memory(monkeypatch):
    model = tiny_model("resnet-basic")
    config = GenieConfig.from_profile("quick", num_samples=8, synthesis_batch_size=4, synthesis_iterations=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # automatic: 2 workers for the 2 batches, where memory allows
    try:
        assert synthesize(model, config, spec=input_spec(model), progress=False).synthesis_workers == 2
        monkeypatch.setattr(loop, "available_memory_bytes", lambda: 1)
        assert synthesize(model, config, spec=input_spec(model), progress=False).synthesis_workers == 1
    finally:
        torch.set_num_threads(threads)


def test_no_workers_where_posix_semaphores_are_missing(monkeypatch):
    """Some sandboxes have no /dev/shm: multiprocessing.synchronize cannot be imported there."""
    import importlib

    real = importlib.import_module

    def no_semaphores(name, *args):
        if name == "multiprocessing.synchronize":
            raise ImportError("This platform lacks a functioning sem_open implementation")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_semaphores)
    assert not fork_available()
    assert plan_workers(2, groups=4, device="cpu", num_processes=1, threads=2) == 1


def test_workers_die_with_a_parent_killed_outright(tmp_path):
    """SIGKILL (the out-of-memory killer) runs no cleanup in the parent: the kernel must end its workers, or
    they go on synthesizing, and writing batches, with nobody to use them."""
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys, time\n"
        "from genie_hub.synthesis.workers import run_in_workers\n"
        "def work(group, bar):\n"
        f"    open(os.path.join({str(tmp_path)!r}, f'worker{{group}}.pid'), 'w').write(str(os.getpid()))\n"
        "    time.sleep(120)\n"
        "run_in_workers(work, [0, 1], 2)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path.parent), *sys.path]))}
    parent = subprocess.Popen([sys.executable, str(script)], env=env)
    try:
        deadline = time.time() + 60
        while len(list(tmp_path.glob("worker*.pid"))) < 2 and time.time() < deadline:
            time.sleep(0.1)
        pids = [int(p.read_text()) for p in tmp_path.glob("worker*.pid")]
        assert len(pids) == 2
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 10
        alive = pids
        while alive and time.time() < deadline:
            time.sleep(0.1)
            alive = [pid for pid in pids if _running(pid)]
        assert alive == []
    finally:
        parent.kill()


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False
