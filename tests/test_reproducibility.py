"""Same command, same seed -> the same bytes: `model.safetensors` and the synthetic images are pinned.

The digests were computed at commit 32c80bc (before the package was reshaped into adapters, priors and a
frozen-format core) with tests/pinned_run.py, on this project's CPU machine with one thread. A change that
moves any of them changes results: either it is a bug, or it is a deliberate change of the method, which
then updates these pins in the same commit and says why. Float results depend on the thread count and the
CPU's kernels, so the runs use one thread; a machine of another CPU family may need its own pins.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "pinned_run.py"

PINS = {
    ("resnet-basic", "2", "4", "0"): {
        "model.safetensors": "e8e3e92a21ed69234aa9d43fcf437d1164ac0c9878cf65c365278c48a587fd4b",
        "batch_00000.safetensors": "da460ab6fdfd68cf7bd06244c2345249e14efefcc86123e5e15ae8f278719ce7",
        "batch_00001.safetensors": "030dc578d6d539e7de56ef946db54f533cac627f225b854cd86bec144fec5b8d"},
    ("mobilenet-v2", "4", "4", "0"): {
        "model.safetensors": "8a58e8a5a7a3d0377854b23f1d2654566d2a1b4cf932fc4a359131b8ff698995",
        "batch_00000.safetensors": "f654cef3232e6481ac2aa286bf573969f1cefab6494463f42f59ddb222a10470",
        "batch_00001.safetensors": "9e52f27744a8b2ff1a011597eebfa25a801967caaeb05ae1c1f9ddcd25be66c0"},
    ("regnet", "4", "8", "1"): {  # few-shot from a folder of 12 PNGs: no synthesis shards
        "model.safetensors": "ba35f85ad6743588d1538c0441aea030dc4cb12f0274d3707dd4e5bd6aab8252"},
}


@pytest.mark.parametrize("case", list(PINS), ids=["-".join(c) for c in PINS])
def test_same_command_same_bytes(case, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), *case], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = json.loads(proc.stdout.split("PIN", 1)[1])
    assert digests == PINS[case]
