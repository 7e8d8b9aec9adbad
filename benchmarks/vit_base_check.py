"""ViT-Base/16 at 224 px (random weights) on CPU: does one quick-profile synthesis batch and one reconstruction
unit fit in memory, and how long does a step take? (issue #11)

    python benchmarks/vit_base_check.py [--steps 2] [--unit-steps 10] [--output benchmarks/results/vit_base_check]

Synthesis: one batch of the quick profile's size (64 images) with the auto prior (patch-similarity: ViT has no
BatchNorm), run for 1 and for 1 + --steps iterations; the difference / --steps is the time per step (setup, the
generator's construction and the prior's hooks, cancel out). A quick-profile batch runs 400 such steps.
Reconstruction: the first transformer layer (`vit.layers.0`, the unit with W4A4 Linear layers and the quantized
attention matmuls), captured on those 64 images, reconstructed for 1 and 1 + --unit-steps steps at the quick
profile's batch of 32. Peak memory is the process's maximum resident set size after each phase.
Writes <output>.md and <output>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="timed synthesis steps (after one untimed step)")
    parser.add_argument("--unit-steps", type=int, default=10, help="timed reconstruction steps of the unit")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", default="benchmarks/results/vit_base_check")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer 32 px ViT instead (tests the script)")
    parser.add_argument("--note", default="", help="conditions worth recording (e.g. other load on the machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from transformers import ViTConfig, ViTForImageClassification

    from genie_hub import GenieConfig, synthesize
    from genie_hub.adapters import InputSpec
    from genie_hub.quantization import prepare_model, quantized_ops
    from genie_hub.quantization.reconstruction import capture, reconstruct_unit

    torch.manual_seed(0)
    size = 32 if args.tiny else 224
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8,
                 image_size=size) if args.tiny else {}
    model = ViTForImageClassification(ViTConfig(num_labels=1000, **shape)).eval()  # google/vit-base-patch16-224
    spec = InputSpec(3, size, size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # its processor's normalization
    quick = GenieConfig.from_profile("quick", weight_bits=4, act_bits=4)
    batch = quick.synthesis_batch_size
    rows: dict = {"note": args.note, "model": f"ViTForImageClassification(ViTConfig({shape or ''})) random weights, {size} px",
                  "parameters": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads(),
                  "machine": f"{platform.machine()} {os.cpu_count()} cpus, "
                             f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
                  "torch": torch.__version__, "synthesis_batch": batch,
                  "reconstruction_batch": quick.reconstruction_batch_size,
                  "command": "python " + " ".join(shlex.quote(a) for a in ["benchmarks/vit_base_check.py",
                                                                         *(argv if argv is not None else sys.argv[1:])])}
    print(f"ViT-Base: {rows['parameters']:,} parameters, {rows['threads']} threads", flush=True)

    def synth(iterations: int):
        config = GenieConfig.from_profile("quick", num_samples=batch, synthesis_iterations=iterations)
        start = time.perf_counter()
        calibration = synthesize(model, config, spec=spec, progress=False)
        return time.perf_counter() - start, calibration

    t1, _ = synth(1)
    t2, calibration = synth(1 + args.steps)
    rows["synthesis_step_s"] = (t2 - t1) / args.steps
    rows["synthesis_prior"] = calibration.prior
    rows["synthesis_peak_rss_gib"] = peak_rss_gib()
    rows["quick_batch_projected_min"] = rows["synthesis_step_s"] * quick.synthesis_iterations / 60
    print(f"synthesis: {rows['synthesis_step_s']:.1f} s/step at batch {batch} ({calibration.prior}), "
          f"peak RSS {rows['synthesis_peak_rss_gib']:.1f} GiB", flush=True)

    pixels = calibration.pixel_values
    q_model, units, _ = prepare_model(model, quick, pixels[:2])
    unit = next(u for u in units if u.kind == "block")
    x_fp, y_fp, _, _ = capture(model, unit.name, pixels, 16, "cpu", True)

    def reconstruct(steps: int) -> float:
        q_copy, _, _ = prepare_model(model, quick, pixels[:2])
        x_q, _, args_q, kwargs_q = capture(q_copy, unit.name, pixels, 16, "cpu", False)
        ops = [quantized_ops(q_copy)[name] for name in unit.ops]
        config = GenieConfig.from_profile("quick", weight_bits=4, act_bits=4, reconstruction_steps=steps)
        start = time.perf_counter()
        reconstruct_unit(q_copy.get_submodule(unit.name), ops, x_fp, x_q, y_fp, args_q, kwargs_q, config, unit.name,
                         progress=False)
        return time.perf_counter() - start

    r1 = reconstruct(1)
    r2 = reconstruct(1 + args.unit_steps)
    rows["unit"] = unit.name
    rows["unit_ops"] = list(unit.ops)
    rows["reconstruction_step_s"] = (r2 - r1) / args.unit_steps
    rows["peak_rss_gib"] = peak_rss_gib()
    rows["quick_unit_projected_min"] = rows["reconstruction_step_s"] * quick.reconstruction_steps / 60
    print(f"reconstruction of {unit.name} ({len(unit.ops)} ops): {rows['reconstruction_step_s']:.2f} s/step, "
          f"peak RSS {rows['peak_rss_gib']:.1f} GiB", flush=True)

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    output.with_suffix(".md").write_text(f"""# {"A tiny ViT" if args.tiny else "ViT-Base/16"} at {size} px on CPU (random weights)

`{rows['command']}` on {rows['machine']}, torch {rows['torch']}, {rows['threads']} threads;
{rows['parameters']:,} parameters.

| phase | batch | time per step | peak RSS | quick profile, projected |
|---|---|---|---|---|
| synthesis ({rows['synthesis_prior']} prior, generator + latents) | {batch} | {rows['synthesis_step_s']:.1f} s | {rows['synthesis_peak_rss_gib']:.1f} GiB | {rows['quick_batch_projected_min']:.0f} min per batch of {batch} ({quick.synthesis_iterations} steps) |
| reconstruction of `{unit.name}` (W4A4, {len(unit.ops)} ops incl. attention) | {quick.reconstruction_batch_size} | {rows['reconstruction_step_s']:.2f} s | {rows['peak_rss_gib']:.1f} GiB | {rows['quick_unit_projected_min']:.1f} min per unit ({quick.reconstruction_steps} steps) |

Peak RSS is the whole process's maximum so far (model, the synthetic batch, both phases). Step times are the
difference of two runs divided by the extra steps, so setup is not counted.
{chr(10) + "Conditions: " + args.note + chr(10) if args.note else ""}""")
    print(f"wrote {output.with_suffix('.md')} and {output.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
