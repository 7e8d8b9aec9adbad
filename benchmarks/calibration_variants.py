"""Which change to synthesis or reconstruction closes the gap between Genie's images and real ones?

An exploratory companion to `accuracy.py`: it calibrates one Fashion-MNIST model (W4A4 by default) on
calibration sets that are synthesized once per seed and cached, under named variants of the synthesis prior or
of Genie-M's settings, and reports top-1 on the 10k test images against the plain Genie row of the same seed.
Because reconstruction of these 28 px models takes about 30 s, a dozen variants over 3 seeds fit in an hour on
one core. A variant that wins here is a candidate for the library (and for a full `accuracy.py` run), not a
result by itself.

    python benchmarks/calibration_variants.py --model benchmarks/models/fashion-mnist-efficientnet \
        --seeds 0 1 2 --output benchmarks/results/calibration_variants_efficientnet

With the default settings (256 images = 4 batches of 64, 200 synthesis iterations, 200 reconstruction steps,
W4A4, quick profile) the `genie` and `real` rows are exactly what `accuracy.py --methods genie fewshot` gives
with `--num-samples 256 --synthesis-batch-size 64 --synthesis-iterations 200 --reconstruction-steps 200
--fewshot-samples 256` on the same model. Synthesis variants patch genie_hub's synthesis loop for the duration
of one synthesis (see `synthesis_patch`); nothing here changes the library.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import genie_hub.synthesis.loop as synthesis_loop  # noqa: E402 - this checkout's genie_hub, just put first

SOURCES = {
    "genie": "Genie-D images (generator + latents, BN statistics + image prior)",
    "pixels": "BN-distilled pixels (ZeroQ-style, synthesis_method='pixels')",
    "real": "real Fashion-MNIST training images (few-shot)",
}


@contextlib.contextmanager
def clamp_to_pixel_range(low: float, high: float):
    """The generator's images clamped to what a processor can produce from pixels in [0, 1]."""
    from genie_hub.synthesis.generator import Generator

    original = Generator.forward
    with mock.patch.object(Generator, "forward", lambda self, z: original(self, z).clamp(low, high)):
        yield


@contextlib.contextmanager
def without_image_prior():
    """No per-image mean/std prior: only the generator's output BatchNorm fixes the batch's pixel statistics."""
    with mock.patch.object(synthesis_loop, "input_prior_loss",
                           lambda images, target, groups: torch.zeros(groups or 1, device=images.device)):
        yield


@contextlib.contextmanager
def with_class_loss(weight: float):
    """DeepInversion's cross-entropy term added to the prior: image i of a batch is pulled towards class
    i mod num_classes (balanced classes, more class-like images)."""
    captured: dict[str, torch.Tensor] = {}
    original_logits, original_prior = synthesis_loop.model_logits, synthesis_loop.input_prior_loss

    def logits(model, images):
        captured["logits"] = original_logits(model, images)
        return captured["logits"]

    def prior(images, target, groups):
        terms = []
        for part in captured["logits"].float().chunk(groups or 1):
            labels = torch.arange(part.shape[0], device=part.device) % part.shape[1]
            terms.append(torch.nn.functional.cross_entropy(part, labels))
        return original_prior(images, target, groups) + weight * torch.stack(terms)

    with mock.patch.object(synthesis_loop, "model_logits", logits), \
            mock.patch.object(synthesis_loop, "input_prior_loss", prior):
        yield


@contextlib.contextmanager
def with_entropy_reward(weight: float):
    """The opposite of the class loss: the prior minus `weight` x the entropy of each image's prediction, so the
    images stay less confident (harder samples, after HAST, CVPR 2023): 800 synthesis iterations, which make
    Genie's images more confident, cost a point here."""
    captured: dict[str, torch.Tensor] = {}
    original_logits, original_prior = synthesis_loop.model_logits, synthesis_loop.input_prior_loss

    def logits(model, images):
        captured["logits"] = original_logits(model, images)
        return captured["logits"]

    def prior(images, target, groups):
        terms = []
        for part in captured["logits"].float().chunk(groups or 1):
            log_p = part.log_softmax(-1)
            terms.append((log_p.exp() * log_p).sum(-1).mean())  # minus the mean entropy
        return original_prior(images, target, groups) + weight * torch.stack(terms)

    with mock.patch.object(synthesis_loop, "model_logits", logits), \
            mock.patch.object(synthesis_loop, "input_prior_loss", prior):
        yield


@contextlib.contextmanager
def with_jitter(pixels: int):
    """DeepInversion's augmentation: each synthesis step shows the model the batch shifted by up to `pixels`
    in each direction (wrapping around) and, half the time, mirrored, so the images match the BN statistics
    under the small shifts and flips the model was trained with, not only as they are."""
    original = synthesis_loop.model_logits

    def logits(model, images):
        dy, dx = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,)))
        images = torch.roll(images, shifts=(dy, dx), dims=(-2, -1))
        return original(model, images.flip(-1) if torch.rand(()) < 0.5 else images)

    with mock.patch.object(synthesis_loop, "model_logits", logits):
        yield


@contextlib.contextmanager
def with_slack(fraction: float):
    """DSG's slack distribution alignment (Zhang et al., CVPR 2021): a BN layer's batch mean and std are
    matched only up to a margin of `fraction` x its running std, as real batches scatter around the running
    statistics, so exact matching does not squeeze the images towards one another."""
    import genie_hub.synthesis.bn_stats as bn_stats

    def loss(x, bn, groups=None):
        parts = x.float().unflatten(0, (groups or 1, -1))
        mean = parts.mean(dim=(1, 3, 4))
        std = parts.transpose(1, 2).flatten(2).std(dim=2)
        target_std = torch.sqrt(bn.running_var.float() + 1e-6)
        margin = fraction * target_std
        losses = ((torch.relu((mean - bn.running_mean.float()).abs() - margin).pow(2)
                   + torch.relu((std - target_std).abs() - margin).pow(2)).sum(dim=1) / x.shape[1])
        return losses if groups else losses[0]

    with mock.patch.object(bn_stats, "bn_statistics_loss", loss):
        yield


@contextlib.contextmanager
def with_tail_penalty(weight: float):
    """The BN statistics loss plus `weight` x the mean over channels of relu(kurtosis - 3) of each BN input: a
    Gaussian-tail prior that BatchNorm's stored mean and variance cannot express. `calibration_gap.py` found
    Genie's BN inputs past block 1 heavier-tailed than real ones (median channel kurtosis 5.1 vs 3.6 at
    block 6's projection), with the lost point in the weights learned on them."""
    import genie_hub.synthesis.bn_stats as bn_stats

    original = bn_stats.bn_statistics_loss

    def loss(x, bn, groups=None):
        parts = x.float().unflatten(0, (groups or 1, -1)).transpose(1, 2).flatten(2)  # [groups, C, n]
        centred = parts - parts.mean(dim=2, keepdim=True)
        variance = centred.pow(2).mean(dim=2)
        kurtosis = centred.pow(4).mean(dim=2) / (variance.pow(2) + 1e-12)
        tails = weight * torch.relu(kurtosis - 3).mean(dim=1)
        return original(x, bn, groups) + (tails if groups else tails[0])

    with mock.patch.object(bn_stats, "bn_statistics_loss", loss):
        yield


@contextlib.contextmanager
def with_free_image_brightness():
    """The image prior without its per-image mean term: each image keeps its std target but may be darker or
    brighter than the others, as real images are (the generator's output BatchNorm still fixes the batch mean)."""
    def prior(images, target, groups):
        parts = images.float().chunk(groups or 1)
        target = target or synthesis_loop.PixelTarget.standard(images.shape[1])
        target_std = torch.tensor(target.std, device=images.device).view(1, -1)
        return torch.stack([(part.flatten(2).std(dim=2) - target_std).pow(2).sum() / part.shape[0]
                            for part in parts])

    with mock.patch.object(synthesis_loop, "input_prior_loss", prior):
        yield


@dataclass(frozen=True)
class Variant:
    """One row: where the calibration images come from, what changes, and how to say it in the table."""

    source: str  # a key of SOURCES
    description: str
    synthesis_patch: Callable[[float, float], contextlib.AbstractContextManager] | None = None  # (low, high)
    overrides: dict = field(default_factory=dict)  # GenieConfig fields for reconstruction
    transform: str | None = None  # "clamp", "flip" or "plus-pixels": applied to the cached images


VARIANTS: dict[str, Variant] = {
    "genie": Variant("genie", "Genie as in the library (the reference row)"),
    "real": Variant("real", "few-shot: 256 real training images"),
    "pixels": Variant("pixels", "ZeroQ-style pixels"),
    "clamp-after": Variant("genie", "Genie's images clamped to the pixel range after synthesis", transform="clamp"),
    "clamp-during": Variant("genie", "the generator's output clamped to the pixel range during synthesis",
                            synthesis_patch=clamp_to_pixel_range),
    "no-image-prior": Variant("genie", "no per-image mean/std prior during synthesis",
                              synthesis_patch=lambda low, high: without_image_prior()),
    "class-loss-0.1": Variant("genie", "+ 0.1 x cross-entropy to balanced target classes during synthesis",
                              synthesis_patch=lambda low, high: with_class_loss(0.1)),
    "class-loss-0.02": Variant("genie", "+ 0.02 x cross-entropy to balanced target classes during synthesis",
                               synthesis_patch=lambda low, high: with_class_loss(0.02)),
    "entropy-0.1": Variant("genie", "- 0.1 x prediction entropy during synthesis (less confident images)",
                           synthesis_patch=lambda low, high: with_entropy_reward(0.1)),
    "entropy-0.02": Variant("genie", "- 0.02 x prediction entropy during synthesis (less confident images)",
                            synthesis_patch=lambda low, high: with_entropy_reward(0.02)),
    "jitter-2": Variant("genie", "the batch shifted by up to 2 px and mirrored at random at each synthesis step",
                        synthesis_patch=lambda low, high: with_jitter(2)),
    "slack-0.1": Variant("genie", "BN statistics matched up to 0.1 x the running std (DSG's slack alignment)",
                         synthesis_patch=lambda low, high: with_slack(0.1)),
    "slack-0.3": Variant("genie", "BN statistics matched up to 0.3 x the running std (DSG's slack alignment)",
                         synthesis_patch=lambda low, high: with_slack(0.3)),
    "tails-0.01": Variant("genie", "+ 0.01 x per-channel excess kurtosis above 3 of each BN input (Gaussian-tail prior)",
                          synthesis_patch=lambda low, high: with_tail_penalty(0.01)),
    "tails-0.1": Variant("genie", "+ 0.1 x per-channel excess kurtosis above 3 of each BN input (Gaussian-tail prior)",
                         synthesis_patch=lambda low, high: with_tail_penalty(0.1)),
    "free-brightness": Variant("genie", "image prior without its per-image mean term (std term kept)",
                               synthesis_patch=lambda low, high: with_free_image_brightness()),
    "qdrop-0.25": Variant("genie", "QDrop keeps FP values with probability 0.25", overrides={"qdrop_prob": 0.25}),
    "qdrop-0.75": Variant("genie", "QDrop keeps FP values with probability 0.75", overrides={"qdrop_prob": 0.75}),
    "act-lr-1e-4": Variant("genie", "activation-step lr 1e-4 (default 1e-3)", overrides={"lr_act_step": 1e-4}),
    "act-lr-1e-2": Variant("genie", "activation-step lr 1e-2", overrides={"lr_act_step": 1e-2}),
    "weight-lr-1e-3": Variant("genie", "weight-step lr 1e-3 (default 1e-2)", overrides={"lr_weight_step": 1e-3}),
    "rounding-lr-3e-4": Variant("genie", "rounding lr 3e-4 (default 1e-3)", overrides={"lr_rounding": 3e-4}),
    "rounding-lr-3e-3": Variant("genie", "rounding lr 3e-3", overrides={"lr_rounding": 3e-3}),
    "rounding-weight-0.1": Variant("genie", "rounding regularizer weight 0.1 (default 1)",
                                   overrides={"rounding_weight": 0.1}),
    "rounding-weight-10": Variant("genie", "rounding regularizer weight 10", overrides={"rounding_weight": 10.0}),
    "batch-64": Variant("genie", "reconstruction batch 64 (default 32)", overrides={"reconstruction_batch_size": 64}),
    "flip": Variant("genie", "Genie's images plus their mirror images (twice the set)", transform="flip"),
    "plus-pixels": Variant("genie", "Genie's images plus as many ZeroQ-style pixel images", transform="plus-pixels"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a Fashion-MNIST classifier (train_default_model.py)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--bits", default="4/4")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--synthesis-batch-size", type=int, default=64)
    parser.add_argument("--synthesis-iterations", type=int, default=200)
    parser.add_argument("--reconstruction-steps", type=int, default=200)
    parser.add_argument("--cache", default="/tmp/genie_hub_calibration_variants",
                        help="where calibration sets are kept between runs (outside the repository)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", required=True, help="writes <output>.jsonl (one line per run) and <output>.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from accelerate import Accelerator

    from genie_hub import GenieConfig, quantize, synthesize
    from genie_hub.data import fashion_mnist_pixel_values, load_calibration_images, load_fashion_mnist
    from genie_hub.evaluation import evaluate_top1
    from genie_hub.loading import input_spec, load_model

    model, processor = load_model(args.model)
    model.eval()
    spec = input_spec(model, processor)
    low, high = ((0.0 - spec.mean[0]) / spec.std[0], (1.0 - spec.mean[0]) / spec.std[0])
    test_images, test_labels = load_fashion_mnist("test")
    test_x = fashion_mnist_pixel_values(test_images, processor, spec)
    weight_bits, act_bits = (int(b) for b in args.bits.split("/"))
    cache = Path(args.cache) / Path(args.model).name
    cache.mkdir(parents=True, exist_ok=True)
    jsonl = Path(f"{args.output}.jsonl")
    command = "python benchmarks/calibration_variants.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    def settings(seed: int, **extra: Any) -> GenieConfig:
        return GenieConfig.from_profile("quick", **{
            "weight_bits": weight_bits, "act_bits": act_bits, "seed": seed, "num_samples": args.num_samples,
            "synthesis_batch_size": args.synthesis_batch_size, "synthesis_iterations": args.synthesis_iterations,
            "reconstruction_steps": args.reconstruction_steps, **extra})

    def calibration_set(source: str, patch_name: str | None, patch: Callable | None, seed: int) -> torch.Tensor:
        path = cache / f"{source}-{patch_name or 'plain'}-{args.num_samples}-{args.synthesis_iterations}-{seed}.pt"
        if not path.exists():
            if source == "real":
                images = load_calibration_images("fashion-mnist", processor, spec, args.num_samples, seed)
            else:
                extra = {"synthesis_method": "pixels"} if source == "pixels" else {}
                with patch(low, high) if patch else contextlib.nullcontext():
                    images = synthesize(model, settings(seed, **extra), spec=spec, accelerator=Accelerator(cpu=True),
                                        progress=False).pixel_values
            torch.save(images, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)
        return torch.load(path)

    for seed in args.seeds:
        for name in args.variants:
            variant = VARIANTS[name]
            patch, transform = variant.synthesis_patch, variant.transform
            images = calibration_set(variant.source, name if patch else None, patch, seed)
            if transform == "clamp":
                images = images.clamp(low, high)
            elif transform == "flip":
                images = torch.cat([images, images.flip(-1)])
            elif transform == "plus-pixels":
                images = torch.cat([images, calibration_set("pixels", None, None, seed)])
            started = time.perf_counter()
            config = settings(seed, **{**variant.overrides, "num_samples": images.shape[0]})
            quantized = quantize(model, images, config, accelerator=Accelerator(cpu=True), progress=False).model
            row = {"variant": name, "seed": seed, "top1": evaluate_top1(quantized, test_x, test_labels),
                   "seconds": round(time.perf_counter() - started, 1), "num_images": int(images.shape[0]),
                   "command": command}
            print(f"seed {seed} {name}: top-1 {row['top1'] * 100:.2f}", flush=True)
            with jsonl.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
    write_table(jsonl, Path(f"{args.output}.md"), args)
    return 0


def write_table(jsonl: Path, output: Path, args: argparse.Namespace) -> None:
    """Mean ± std per variant over the seeds in the results file, and the paired difference to `genie` (mean ±
    std over the seeds both have: a variant is better than plain Genie only where that mean clears its spread)."""
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    by_variant: dict[str, dict[int, float]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], {})[row["seed"]] = row["top1"] * 100
    reference = by_variant.get("genie", {})
    lines = [f"# Calibration variants: {args.model}, W{args.bits.replace('/', 'A')}", "",
             f"Settings: {args.num_samples} images = batches of {args.synthesis_batch_size}, "
             f"{args.synthesis_iterations} synthesis iterations, {args.reconstruction_steps} reconstruction steps "
             "per unit, quick profile otherwise; the `genie` row is the library's prior at these settings.", "",
             f"Command(s): {', '.join(sorted({'`' + r['command'] + '`' for r in rows}))}", "",
             "| variant | what changes | top-1 (mean ± std) | paired Δ vs genie | per seed |", "|---|---|---|---|---|"]
    for name, by_seed in by_variant.items():
        values = [by_seed[s] for s in sorted(by_seed)]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        paired = [by_seed[s] - reference[s] for s in sorted(by_seed) if s in reference]
        delta = "" if not paired or name == "genie" else f"{statistics.mean(paired):+.2f}" + (
            f" ± {statistics.stdev(paired):.2f}" if len(paired) > 1 else "")
        lines.append(f"| {name} | {VARIANTS[name].description} | {statistics.mean(values):.2f} ± {spread:.2f} | {delta} | "
                     + ", ".join(f"{by_seed[s]:.2f} (seed {s})" for s in sorted(by_seed)) + " |")
    output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
