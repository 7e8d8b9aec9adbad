"""Same command, same seed -> the same bytes: the weights file and the synthetic images are pinned.

History of the pins (each change of them is deliberate and says why):
- commit 32c80bc (before the package was reshaped into adapters, priors and a frozen-format core): the first
  pins; the reshaping left every byte unchanged.
- checkpoint format 2 (issue 14): weights stored as genie_model.safetensors with the layers in the metadata
  (the tensors checked identical to 32c80bc's), and a reconstruction unit that ends with a larger output error
  than round-to-nearest keeps round-to-nearest (in these 10-step runs the 8-bit stem does), which changes the
  tensors of that unit and of the units after it. The synthetic images are unchanged since 32c80bc.
- issue 10 (Genie-M beyond the reference): steps learned in log space with relative lrs, each weight row's own
  [min, max] range (int32 zero points, format 3), one quantizer per tensor at its readers' finest bits, and
  synthetic pixels placed by the processor's normalization. The tiny models' processors map the pixel range
  (mean = std = 0.5), so their synthetic images move too. Benchmark rows that justify the change:
  benchmarks/results/accuracy_mobilenet_v2.md and accuracy_efficientnet.md.
- issue 13 (speed): the generator's upsample+conv pairs run as transposed convs, the BN-statistics loss and the
  soft-rounded weight and the activation quantizer with QDrop have closed-form gradients, Adam is fused, and
  reconstruction uses one optimizer with LambdaLR's closed-form cosine. The same functions up to float rounding (tests/test_fast_paths.py), so every
  byte moves; the main job's accuracy did not (92.16 % -> 92.13 % W4A4 top-1 on Fashion-MNIST, seed 0).
- issue 10 fix 5: a block that adds its input back with no module on the skip (MobileNetV2's inverted
  residuals) quantizes that input at its entry with its first conv's grid (quantization/block_input.py), so
  its skip adds the quantized tensor. The MobileNetV2 weights move; ResNet and RegNet (identity shortcut
  modules) and every synthetic image do not. Benchmark rows: benchmarks/results/accuracy_mobilenet_v2.md.

Made with tests/pinned_run.py on this project's CPU machine with one thread. Float results depend on the
thread count and the CPU's kernels, so the runs use one thread; a machine of another CPU family may need its
own pins.
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
        "genie_model.safetensors": "2e1cbcfdf644bfc7355068843118c7f9b7ed2f21a47815b00c7729ccbdba424f",
        "batch_00000.safetensors": "46a82e46675590a89b8ad51460aee55753f1802493fb9a9dacd1e20354d530ce",
        "batch_00001.safetensors": "5506597f005d4194c4c11ac5f91ca9f45548e795fbf8655bcf31cdb9cd3d9595"},
    ("mobilenet-v2", "4", "4", "0"): {
        "genie_model.safetensors": "1cdf237707fa176ec8b6193fef2108f891486b30d78d7f761784a6c44163c2de",
        "batch_00000.safetensors": "dfda9e7bcfd407b450ba0c1ffeffa172d17bf5ea1291c2e6a992a9c24378aa46",
        "batch_00001.safetensors": "ad3ff19bf7e2772301ca4bbad5831cdb9ee7e4072b1d73421c3272f6b2bc3ae0"},
    ("regnet", "4", "8", "1"): {  # few-shot from a folder of 12 PNGs: no synthesis shards
        "genie_model.safetensors": "72438d84519d106b6ae5455239fc8cca19354559cdc37ac346672724e2d1f258"},
}


@pytest.mark.parametrize("case", list(PINS), ids=["-".join(c) for c in PINS])
def test_same_command_same_bytes(case, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), *case], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = json.loads(proc.stdout.split("PIN", 1)[1])
    assert digests == PINS[case]
