"""One small `genie_hub quantize` job, for tests/test_reproducibility.py (run in a fresh, single-thread process).

usage: pinned_run.py OUT_ROOT FAMILY WEIGHT_BITS ACT_BITS FEW_SHOT(0|1)
Prints PIN{json}: sha256 of OUT/model/genie_model.safetensors and of the pixel tensor of each synthesis shard.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)  # results are bit-exact per thread count; the pins were made with one thread
sys.path.insert(0, str(Path(__file__).resolve().parent))

from safetensors.torch import load_file  # noqa: E402
from tiny_models import save_tiny_model  # noqa: E402

from genie_hub.cli import main  # noqa: E402


def run(root: Path, family: str, weight_bits: str, act_bits: str, few_shot: bool) -> dict[str, str]:
    save_tiny_model(root / "fp", family)
    args = ["-q", "quantize", str(root / "fp"), "-o", str(root / "out"), "--profile", "quick", "--num-samples", "12",
            "--batch-size", "8", "--synthesis-iterations", "10", "--reconstruction-steps", "10", "-w", weight_bits,
            "-a", act_bits, "--synthesis-precision", "fp32"]  # fp32: auto would follow the CPU's bf16 support
    if few_shot:
        from PIL import Image

        (root / "photos").mkdir()
        rng = np.random.RandomState(0)
        for i in range(12):
            Image.fromarray(rng.randint(0, 256, (40, 36, 3), dtype=np.uint8)).save(root / "photos" / f"{i:02d}.png")
        args += ["--few-shot", str(root / "photos")]
    assert main(args) == 0
    weights = root / "out/model/genie_model.safetensors"
    digests = {"genie_model.safetensors": hashlib.sha256(weights.read_bytes()).hexdigest()}
    for shard in sorted((root / "out/work/synthetic").glob("batch_*.safetensors")):
        pixels = load_file(str(shard))["pixel_values"].contiguous().numpy().tobytes()
        digests[shard.name] = hashlib.sha256(pixels).hexdigest()
    return digests


if __name__ == "__main__":
    out_root, family, weight_bits, act_bits, few_shot = sys.argv[1:6]
    print("PIN" + json.dumps(run(Path(out_root), family, weight_bits, act_bits, few_shot == "1")))
