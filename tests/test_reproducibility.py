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
- issue 10, swing only on maps of 14 px or more (synthesis/swing.py, SWING_MIN_SIZE): the tiny 32 px ResNet and
  MobileNetV2 read smaller maps in their strided convs, so their synthetic images and weights move (the
  few-shot RegNet run does not synthesize). Benchmark rows: benchmarks/results/accuracy_mobilenet_v2.md (Genie
  with and without the change, 5 seeds) and the README main job.
- issue 13, QDrop masks drawn as 16-bit integers, four per 64-bit draw of the generator, instead of one float
  per element (quantization/quantizers.py, qdrop_keep): the same Bernoulli(0.5) masks in distribution, other
  draws, so every reconstructed weight moves; the synthetic images do not. Benchmark rows:
  benchmarks/results/speed_accuracy_check.md (the README main job at seeds 0-2, and MobileNetV2 W3A3 at
  seeds 0-2, before and after).
- issue 13, the BN-statistics loss reads each channel's mean and variance from the BatchNorm kernel's
  statistics pass on CPU (synthesis/bn_stats.py, channel_statistics) instead of torch.var_mean, whose serial
  Welford reduction was 4-20x slower: the same statistics up to float rounding, so every synthetic image and
  the weights after them move; the few-shot RegNet run does not. Benchmark rows:
  benchmarks/results/speed_accuracy_check.md.
- issue 13, QDrop masks made from as few random bits as the probability needs: one bit per element at QDrop's
  0.5, eight elements per random byte through a 256-row table (quantization/quantizers.py, qdrop_keep),
  instead of a 16-bit integer per element: the same Bernoulli(0.5) masks in distribution, other draws, so every
  reconstructed weight moves; the synthetic images do not. Benchmark rows: benchmarks/results/
  speed_accuracy_check.md (the README main job and the embedded RegNet at seeds 0-2, before and after).

Made with tests/pinned_run.py with one thread. Float results depend on the thread count and on the CPU's kernels,
so the runs use one thread, and each case holds one pin set per kind of CPU the suite has run on: a run must
equal one of them (a change of numbers by the code moves every set alike, so it still fails). The second sets
came from an Intel Xeon with AMX (Sapphire Rapids class, 2026-12-05), where the code of the first sets gave
other bytes (checked at be3f15d, the commit before this session's changes). A machine of yet another CPU family
may need its own: add what the failure prints, after checking that the code at the pins' commit gives it too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "pinned_run.py"

PINS = {  # case: (pins on the first CPU kind, pins on the AMX Xeon)
    ("resnet-basic", "2", "4", "0"): ({
        "genie_model.safetensors": "dc001228768480b2c6d24e15efe4c93ca842a5ac43b9ef45575916d2ac00234b",
        "batch_00000.safetensors": "9c993697deb8dfa65d046c0cc4db500d72f797d78575f9a9b43539086edb47c8",
        "batch_00001.safetensors": "d109f165d11d62d614f410a32153671851e4402f0f19c08f6bae7ee83ce0f987"}, {
        "genie_model.safetensors": "8968de64aa6198cdd483e41166ff8b470533b3685df1a49b694999838f02b809",
        "batch_00000.safetensors": "88ac122537926ba30ea8de2f0f913b76b17fa7b478887933de96638a4764e122",
        "batch_00001.safetensors": "747a925743d90f3817a7005a3a7bd216abc6b905ddd7528f192f49c8e4b6ec5f"}),
    ("mobilenet-v2", "4", "4", "0"): ({
        "genie_model.safetensors": "df1804dc43f29f669a378f43c2b924cd08ff17a10c58e16d2f3ddd80303d1776",
        "batch_00000.safetensors": "2c96b0f1d1d66511b62791b004e999c8c390fc894c56fd397eb0719d00bb1b59",
        "batch_00001.safetensors": "dd0bda7fab5989821357c99f800611fb213c5f679ba2a7a30f0c77ac1419a2ee"}, {
        "genie_model.safetensors": "8f6b88c0ad332b0529ace98d405bdfb4c31c9bf693cff7893d80f7f6150b3b88",
        "batch_00000.safetensors": "d6e0b1f9b99c5f2a3446872c9d6b67dadb009021908474e8f7631ded00b1c396",
        "batch_00001.safetensors": "88b71b587c2fea611f40af54e4d505d17fb2db69329265f6e8cf139132c2c5fe"}),
    ("regnet", "4", "8", "1"): ({  # few-shot from a folder of 12 PNGs: no synthesis shards
        "genie_model.safetensors": "26d1403155e5a4b76ddf8fc2ae39ec71678e7a5f5610fa01d86eff74f21caaca"}, {
        "genie_model.safetensors": "6522e499762e5d18781ca6cdbd94378baf764a833889c9170c52e6cee58e8993"}),
}


@pytest.mark.parametrize("case", list(PINS), ids=["-".join(c) for c in PINS])
def test_same_command_same_bytes(case, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), *case], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = json.loads(proc.stdout.split("PIN", 1)[1])
    assert digests in PINS[case], f"no pin set of this case matches (another CPU kind, or moved numbers): {digests}"


def test_fingerprint_differences_name_the_nested_settings_that_changed():
    from genie_hub.reproducibility import fingerprint_differences

    saved = {"config": {"seed": 0, "bits": {"weight": 4}}, "model": "abc", "gone": 1}
    now = {"config": {"seed": 1, "bits": {"weight": 4}}, "model": "abc", "new": 2}
    assert fingerprint_differences(saved, now) == "config.seed: 0 vs now 1; gone: 1 vs now None; new: None vs now 2"
    many = {f"k{i}": i for i in range(6)}
    assert fingerprint_differences(many, {}, limit=2) == "k0: 0 vs now None; k1: 1 vs now None; and 4 more"
