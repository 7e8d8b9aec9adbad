"""How a run meets accelerate and the CPU: the mixed precision accelerate is configured with, multi-process
CPU launches, and the thread count recorded for bit-exact reproduction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genie_hub.cli import main
from genie_hub.errors import ConfigError
from genie_hub.pipeline import check_launch
from tiny_models import save_tiny_model

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--profile", "quick", "--num-samples", "8", "--batch-size", "4", "--synthesis-iterations", "2",
        "--reconstruction-steps", "2", "--seed", "1", "--eval-dataset", "none"]
RESOLVE = """
import sys
from genie_hub.config import GenieConfig, make_accelerator
from genie_hub.errors import ConfigError
flag = sys.argv[1] if len(sys.argv) > 1 else None
try:
    accelerator, config = make_accelerator(GenieConfig.from_profile("quick", mixed_precision=flag))
except ConfigError as exc:
    print("refused:", exc)
else:
    print(config.mixed_precision, accelerator.mixed_precision)
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    return {**env, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), **extra}


def _resolve(*flag: str, **env: str) -> str:
    result = subprocess.run([sys.executable, "-c", RESOLVE, *flag], env=_env(**env), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_mixed_precision_comes_from_accelerate_unless_the_flag_is_given():
    """ACCELERATE_MIXED_PRECISION is what `accelerate launch --mixed_precision` / `accelerate config` set."""
    assert _resolve() == "no no"
    assert _resolve(ACCELERATE_MIXED_PRECISION="bf16") == "bf16 bf16"
    assert _resolve("no", ACCELERATE_MIXED_PRECISION="bf16") == "no no"  # the flag wins
    assert _resolve("bf16") == "bf16 bf16"
    refused = _resolve(ACCELERATE_MIXED_PRECISION="fp16")
    assert refused.startswith("refused:") and "--mixed-precision bf16" in refused and "fp16" in refused


TWICE = """
from genie_hub.config import GenieConfig, make_accelerator
from genie_hub.errors import ConfigError
for flag in ("no", "no", "bf16"):
    try:
        make_accelerator(GenieConfig.from_profile("quick", mixed_precision=flag))
    except ConfigError as exc:
        print("refused:", exc)
    else:
        print("ok", flag)
"""


def test_a_second_mixed_precision_in_one_process_is_refused_clearly():
    """accelerate keeps one state per process: a second run with another mixed precision gets genie_hub's error
    (what to do), not accelerate's ValueError; the same setting again is fine."""
    result = subprocess.run([sys.executable, "-c", TWICE], env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    first, second, third = result.stdout.strip().splitlines()
    assert (first, second) == ("ok no", "ok no")
    assert third.startswith("refused:") and "mixed_precision='bf16'" in third and "new process" in third


def test_accelerate_mixed_precision_reaches_the_run_record(tmp_path):
    save_tiny_model(tmp_path / "base", "resnet-basic")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "genie_hub", "quantize", str(tmp_path / "base"), "-o", str(out),
                             "-q", *TINY], env=_env(ACCELERATE_MIXED_PRECISION="bf16"), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["mixed_precision"] == "bf16"
    assert run["command"].endswith(" --mixed-precision bf16")  # the card's command redoes it without accelerate's
    assert run["command"].count("--mixed-precision") == 1


def test_cpu_launch_that_would_run_one_process_is_refused_before_compute(tmp_path):
    """`accelerate launch --cpu --num_processes 2` starts a single process: genie_hub says so and what works."""
    save_tiny_model(tmp_path / "base", "resnet-basic")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = subprocess.run([*launch, "-m", "genie_hub", "quantize", str(tmp_path / "base"), "-o",
                             str(tmp_path / "out"), *TINY], env=_env(OMP_NUM_THREADS="1"), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode != 0
    assert "starts a single process" in result.stderr and "--multi_gpu --num_processes 2" in result.stderr
    assert not (tmp_path / "out").exists()  # refused before the output folder was claimed


class _OneProcess:
    num_processes = 1


def test_check_launch_reads_the_launcher_command(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    launcher = ["/usr/bin/python3", "/usr/local/bin/accelerate", "launch", "--cpu"]
    with pytest.raises(ConfigError, match="--num_processes 4"):
        check_launch(_OneProcess(), [*launcher, "--num_processes=4", "-m", "genie_hub", "quantize"])
    check_launch(_OneProcess(), [*launcher, "--num_processes", "1", "-m", "genie_hub"])  # one process was asked for
    check_launch(_OneProcess(), ["bash", "-c", "genie_hub quantize --num_processes 4"])  # not accelerate's launcher
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    with pytest.raises(ConfigError, match="single process"):  # the default launcher on a machine without GPUs
        check_launch(_OneProcess(), launcher[:3] + ["--num_processes", "4"])


def test_check_launch_reads_the_config_file_and_the_world_size(monkeypatch, tmp_path):
    """A MULTI_CPU config that `accelerate config` writes starts one process without --multi_gpu; torchrun's
    processes that accelerate each runs as a single one would all write the same folder."""
    config = tmp_path / "cfg.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_CPU\nnum_processes: 2\n"
                      "use_cpu: true\nmixed_precision: 'no'\nmachine_rank: 0\nnum_machines: 1\n")
    launcher = ["/usr/bin/python3", "/usr/local/bin/accelerate", "launch", "--config_file", str(config)]
    with pytest.raises(ConfigError, match="2 processes"):
        check_launch(_OneProcess(), [*launcher, "-m", "genie_hub", "quantize"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="WORLD_SIZE=2.*ACCELERATE_USE_CPU=1"):
        check_launch(_OneProcess(), [])
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_launch(_OneProcess(), [])


def test_thread_count_is_recorded_in_run_json_and_the_card(tmp_path):
    from huggingface_hub import ModelCard

    save_tiny_model(tmp_path / "base", "resnet-basic")
    out = tmp_path / "out"

    def quantize_at(threads: int) -> None:
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(threads)
            assert main(["quantize", str(tmp_path / "base"), "-o", str(out), "-q", *TINY,
                         "--synthesis-batches-per-step", "2"]) == 0
        finally:
            torch.set_num_threads(before)

    quantize_at(1)
    record = json.loads((out / "run.json").read_text())
    assert record["torch_threads"] == 1
    assert record["config"]["synthesis_batches_per_step"] == 2  # the speed settings that ran
    assert record["adam_fused"] is True  # this torch has a fused CPU Adam: the kernel that ran is recorded
    assert record["synthesis_channels_last"] is False  # the CPU layout (channels_last is CUDA's)
    assert record["synthesis_compiled"] is False
    assert [unit["compiled"] for unit in record["unit_errors"]] == [False] * len(record["unit_errors"])
    reproduce = ModelCard.load(out / "model" / "README.md").text.split("## Reproduce")[1]
    assert "torch used 1 CPU thread" in reproduce and "OMP_NUM_THREADS=1" in reproduce

    # Rerun (or resumed) at another thread count: the finished work keeps 1 thread's rounding, so the record
    # no longer names a count that would reproduce it.
    quantize_at(2)
    assert json.loads((out / "run.json").read_text())["torch_threads"] is None
    assert json.loads((out / "work" / "threads.json").read_text()) == [1, 2]
    assert "OMP_NUM_THREADS" not in ModelCard.load(out / "model" / "README.md").text
