"""Where does a model calibrated on Genie's images lose to one calibrated on real images?

A diagnostic for issue #10's remaining gap (EfficientNet on Fashion-MNIST, W4A4: Genie 1.04 points below
few-shot at 256 images). For one seed it quantizes the model twice with the same settings, once on the cached
Genie images and once on the cached real images of `calibration_variants.py`, then:

- swaps parts of the real-calibrated model into the Genie-calibrated one (the classifier, the blocks, only the
  activation scales, only the weights) and reports top-1 on the 10k test images: the parts that recover the
  gap are where it is;
- compares the activations that the FP model's quantized convolutions read on the two calibration sets
  (std, tail quantiles, kurtosis per tensor) and the kurtosis of every BatchNorm input (median over channels):
  Genie-D matches BatchNorm means and stds, not the shape of the distribution.

    python benchmarks/calibration_variants.py --model benchmarks/models/fashion-mnist-efficientnet \
        --seeds 0 --variants genie real --output /tmp/cv          # caches both calibration sets
    python benchmarks/calibration_gap.py --model benchmarks/models/fashion-mnist-efficientnet --seeds 0 1 2 \
        --output benchmarks/results/calibration_gap_efficientnet

Reconstruction settings are those of `calibration_variants.py` (quick profile, 200 steps per unit, W4A4), so
the two plain rows equal its `genie` and `real` rows.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SWAPS = {  # row -> (state-dict prefixes taken from the real-calibrated model, which tensors)
    "genie (plain)": ((), "all"),
    "+ real classifier": (("classifier.",), "all"),
    "+ real blocks (all but stem, top conv and classifier)": ((".encoder.blocks.",), "all"),
    "+ real activation scales (every layer)": (("",), "act"),
    "+ real weights (every layer, Genie's activation scales)": (("",), "weights"),
    "real (plain)": (("",), "all"),
}


def _is_act_scale(key: str) -> bool:
    return key.endswith("_scale") and not key.endswith("weight_scale")


def swapped(genie: nn.Module, real: nn.Module, prefixes: tuple[str, ...], which: str) -> nn.Module:
    """A copy of `genie` with the chosen stored tensors of `real` (both are frozen Genie models of one FP model)."""
    model = copy.deepcopy(genie)
    source, target = real.state_dict(), model.state_dict()
    for key in target:
        if not any(prefix in key if prefix.startswith(".") else key.startswith(prefix) for prefix in prefixes):
            continue
        if which == "all" or (which == "act") == _is_act_scale(key):
            target[key].copy_(source[key])
    return model


def input_statistics(model: nn.Module, images: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per quantized-conv input tensor: std, p99.99/std and kurtosis; per BatchNorm input: median channel kurtosis."""
    captured: dict[str, torch.Tensor] = {}
    modules = [(name, module) for name, module in model.named_modules()
               if isinstance(module, (nn.Conv2d, nn.BatchNorm2d))]
    handles = [module.register_forward_pre_hook(lambda m, args, name=name: captured.__setitem__(name, args[0].detach()))
               for name, module in modules]
    with torch.no_grad():
        model(pixel_values=images)
    for handle in handles:
        handle.remove()
    generator = torch.Generator().manual_seed(0)
    out = {}
    for name, module in modules:
        x = captured[name].float()
        if isinstance(module, nn.BatchNorm2d):
            channels = x.transpose(0, 1).flatten(1)
            centred = channels - channels.mean(1, keepdim=True)
            kurtosis = (centred.pow(4).mean(1) / centred.pow(2).mean(1).pow(2))
            out[name] = {"bn_kurtosis": float(kurtosis[torch.isfinite(kurtosis)].median())}
        else:
            flat = x.flatten()
            sample = flat[torch.randperm(flat.numel(), generator=generator)[:200_000]]
            centred = flat - flat.mean()
            out[name] = {"std": float(flat.std()),
                         "p9999_over_std": float(sample.abs().quantile(0.9999) / flat.std()),
                         "kurtosis": float(centred.pow(4).mean() / centred.pow(2).mean().pow(2))}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--synthesis-iterations", type=int, default=200)
    parser.add_argument("--reconstruction-steps", type=int, default=200)
    parser.add_argument("--cache", default="/tmp/genie_hub_calibration_variants")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", required=True, help="writes <output>.json and <output>.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from accelerate import Accelerator

    from genie_hub import GenieConfig, quantize
    from genie_hub.data import fashion_mnist_pixel_values, load_fashion_mnist
    from genie_hub.evaluation import evaluate_top1
    from genie_hub.loading import input_spec, load_model

    model, processor = load_model(args.model)
    model.eval()
    spec = input_spec(model, processor)
    test_images, test_labels = load_fashion_mnist("test")
    test_x = fashion_mnist_pixel_values(test_images, processor, spec)
    cache = Path(args.cache) / Path(args.model).name
    results: dict = {"command": "python benchmarks/calibration_gap.py " + " ".join(map(shlex.quote, sys.argv[1:])),
                     "seeds": {}}
    for seed in args.seeds:
        sets, quantized = {}, {}
        for source in ("genie", "real"):
            path = cache / f"{source}-plain-{args.num_samples}-{args.synthesis_iterations}-{seed}.pt"
            if not path.exists():
                parser.error(f"{path} is missing: run calibration_variants.py --variants genie real --seeds {seed} "
                             "with the same settings first.")
            sets[source] = torch.load(path)
            config = GenieConfig.from_profile(
                "quick", weight_bits=4, act_bits=4, seed=seed, num_samples=len(sets[source]),
                synthesis_batch_size=64, synthesis_iterations=args.synthesis_iterations,
                reconstruction_steps=args.reconstruction_steps)
            quantized[source] = quantize(model, sets[source], config, accelerator=Accelerator(cpu=True),
                                         progress=False).model
        top1 = {row: evaluate_top1(swapped(quantized["genie"], quantized["real"], prefixes, which), test_x, test_labels)
                * 100 for row, (prefixes, which) in SWAPS.items()}
        print(f"seed {seed}: " + ", ".join(f"{row} {value:.2f}" for row, value in top1.items()), flush=True)
        stats = {source: input_statistics(model, images) for source, images in sets.items()}
        results["seeds"][str(seed)] = {"top1": top1, "statistics": stats}
    Path(f"{args.output}.json").write_text(json.dumps(results, indent=1) + "\n")
    write_table(results, Path(f"{args.output}.md"), args)
    return 0


def write_table(results: dict, output: Path, args: argparse.Namespace) -> None:
    seeds = sorted(results["seeds"])
    lines = [f"# Where Genie's calibration loses to real images: {args.model}, W4A4", "",
             f"{args.num_samples} images, {args.synthesis_iterations} synthesis iterations, "
             f"{args.reconstruction_steps} reconstruction steps per unit, quick profile; seeds {', '.join(seeds)}.", "",
             f"Command: `{results['command']}`", "",
             "## Top-1 (%) of the Genie-calibrated model with parts of the real-calibrated one", "",
             "| model | top-1 (mean ± std) | per seed |", "|---|---|---|"]
    for row in SWAPS:
        values = [results["seeds"][s]["top1"][row] for s in seeds]
        spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        lines.append(f"| {row} | {statistics.mean(values):.2f}{spread} | "
                     + ", ".join(f"{v:.2f}" for v in values) + " |")
    first = results["seeds"][seeds[0]]["statistics"]
    lines += ["", f"## Inputs of the quantized convolutions and BatchNorm layers (seed {seeds[0]}: Genie / real)", "",
              "| layer input | std ratio | p99.99 / std | kurtosis |", "|---|---|---|---|"]
    for name, genie in first["genie"].items():
        real = first["real"][name]
        if "bn_kurtosis" in genie:
            lines.append(f"| {name} (BatchNorm, median channel) | | | {genie['bn_kurtosis']:.2f} / {real['bn_kurtosis']:.2f} |")
        else:
            lines.append(f"| {name} | {genie['std'] / real['std']:.2f} | {genie['p9999_over_std']:.1f} / "
                         f"{real['p9999_over_std']:.1f} | {genie['kurtosis']:.1f} / {real['kurtosis']:.1f} |")
    output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
