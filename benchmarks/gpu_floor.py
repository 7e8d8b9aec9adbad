"""What a synthesis step cannot beat on this GPU: genie_hub's generator and a ResNet-50 forward + backward at batch
128, 224 px, bf16 autocast, channels_last, with nothing else (no swing, no BN-statistics loss, no optimizer).

    python benchmarks/gpu_floor.py [--batch 128] [--steps 20]

Issue #13 gives 0.099 s for such a step on an H200; a synthesis step far above this floor is overhead to remove.
Prints the median of --steps CUDA-event-timed steps after warm-up, eager and with torch.compile.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # genie_hub, where it is not installed
sys.path.insert(0, str(Path(__file__).resolve().parent))  # speed.py: the ResNet-50 it times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_floor.py needs a CUDA device.")
    from speed import resnet_224_config
    from transformers import ResNetForImageClassification

    from genie_hub.synthesis.generator import Generator

    torch.manual_seed(0)
    device = torch.device("cuda")
    model = ResNetForImageClassification(resnet_224_config("resnet50-224")).to(device).eval().requires_grad_(False)
    model.to(memory_format=torch.channels_last)
    generator = Generator(256, 3, 224, 224).to(device)
    latents = torch.randn(args.batch, 256, device=device, requires_grad=True)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            images = generator(latents).contiguous(memory_format=torch.channels_last)
            loss = model(pixel_values=images).logits.float().square().mean()
        loss.backward()

    for name, fn in (("eager", step), ("compiled", torch.compile(step))):
        for _ in range(5):
            fn()
        times = []
        for _ in range(args.steps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        print(f"floor {name}: generator + ResNet-50 forward+backward, batch {args.batch}, bf16, channels_last: "
              f"{statistics.median(times):.4f} s per step (median of {args.steps})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
