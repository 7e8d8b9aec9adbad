"""Accuracy benchmark: Genie against its baselines, on the embedded Fashion-MNIST ResNet and on EfficientNet-Lite0.

    python benchmarks/accuracy.py --seeds 0 1 2 --bits 4/4 2/4 --profile quick --part all \
        --output benchmarks/results/accuracy

Part "embedded" (the embedded default Fashion-MNIST ResNet, top-1 on the 10k test images), per bit setting:
  rtn      round-to-nearest, min/max ranges (weights per-channel, activations per-tensor max), no reconstruction;
           activation ranges measured on the Genie synthetic images of the same seed (so the row stays zero-shot)
  noise    Genie-M calibrated on Gaussian noise N(0, 1) in the normalized input space
  zeroq    Genie-M calibrated on BN-distilled pixels without a generator (ZeroQ-style, synthesis_method="pixels")
  genie    Genie-D + Genie-M (zero-shot)
  fewshot  Genie-M on 1024 real Fashion-MNIST training images (seed-dependent subset)
noise/zeroq/genie use the profile's num_samples calibration images; the synthetic images of one seed are shared
by all bit settings (synthesis does not depend on bits).

Part "efficientnet" (EfficientNet-Lite0, ImageNet, converted by genie_hub.recipes): agreement with the FP32 model on
the real photos shipped with scikit-image and gradio (plus matplotlib's grace_hopper when matplotlib is
installed), 7 views each, for round-to-nearest, noise, ZeroQ-style and Genie. On CPU a reduced setting is used unless --profile paper (see --effnet-* options).

Results are written after every row to <output>.md and <output>.json, so a killed run keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from genie_hub.runtime import reuse_freed_memory  # noqa: E402 - this checkout's genie_hub, just put first
from genie_hub.config import SYNTHESIS_PRECISIONS  # noqa: E402

METHOD_LABELS = {
    "fp32": "FP32 (no quantization)",
    "rtn": "Round-to-nearest, min/max (act. ranges from Genie synthetic images)",
    "noise": "Genie-M on Gaussian noise N(0,1)",
    "zeroq": "Genie-M on BN-distilled pixels (ZeroQ-style, no generator)",
    "genie": "Genie (Genie-D + Genie-M), zero-shot",
    "fewshot": "Genie-M on real training images (few-shot)",
}
PRIOR_LABELS = {  # the same rows for a model without BatchNorm: its synthesis prior is patch-similarity
    "zeroq": "Genie-M on pixels optimized for the patch-similarity prior (PSAQ-ViT-style, no generator)",
    "genie": "Genie-D (generator + latents) with the patch-similarity prior + Genie-M, zero-shot",
}
EMBEDDED_ORDER = ["rtn", "noise", "zeroq", "genie", "fewshot"]
EFFNET_ORDER = ["rtn", "noise", "zeroq", "genie"]

ABLATIONS = {
    "log-step": "weight and activation steps learned directly with the reference's absolute Adam lrs (1e-4, 4e-5)",
    "through-zero": "weight ranges widened to include 0 (zero point inside the grid)",
    "pixel-target": "synthetic images pulled to mean 0 / std 1 whatever the processor's normalization",
    "fp-skip": "a block that adds its input back with no module on the skip (MobileNetV2, EfficientNet, ConvNeXt) "
               "adds the FP input (no quantizer at the block's entry)",
    "swing-all": "every strided conv swings during synthesis, however small its input map (the reference; now "
                 "maps under 14 px do not)",
}
"""Each fix of issue #10 that can be switched back to genie_hub 0.1's behaviour, for one benchmark row each (0.1
followed the reference in log-step, pixel-target and swing-all; in through-zero and fp-skip the reference already did what
the fix does).
The shared A8 shortcut quantizer is ablated with an override instead (`--override` of the CLI), and the QDrop
meaning is the same distribution at the default qdrop_prob 0.5, so it has no row."""


def apply_ablations(names: list[str]) -> None:
    """Patch genie_hub in this process back to genie_hub 0.1's behaviour for `names` (benchmark use only)."""
    import torch
    from torch import nn

    from genie_hub.quantization import quantizers, reconstruction
    from genie_hub.synthesis import image_prior, loop

    if "log-step" in names:
        class AbsoluteStep(nn.Module):  # the reference: the step itself is the parameter, floored at MIN_STEP
            def __init__(self, step):
                super().__init__()
                self.log_step = nn.Parameter(step.detach().float().clone())  # name kept for the optimizer wiring

            def forward(self):
                return self.log_step.clamp(min=quantizers.MIN_STEP)

            @torch.no_grad()
            def set(self, step):
                self.log_step.fill_(float(step))

        quantizers.LogStep = AbsoluteStep
        original = reconstruction.reconstruct_unit

        def reference_lrs(*args, **kwargs):
            import dataclasses
            args = list(args)
            args[7] = dataclasses.replace(args[7], lr_weight_step=1e-4, lr_act_step=4e-5)  # the config
            return original(*args, **kwargs)

        reconstruction.reconstruct_unit = reference_lrs
    if "through-zero" in names:
        def through_zero(weight, bits, method="lp"):  # genie_hub 0.1's range: [min(w, 0), max(w, 0)]
            levels = 2**bits - 1
            w_max = weight.max(dim=1, keepdim=True).values.clamp(min=0)
            w_min = weight.min(dim=1, keepdim=True).values.clamp(max=0)
            best_err = torch.full_like(w_max, float("inf"))
            best_step, best_zero = torch.ones_like(w_max), torch.zeros_like(w_max)
            for ratio in (quantizers.CLIP_RATIOS if method == "lp" else [1.0]):
                step = ((w_max - w_min) * ratio / levels).clamp(min=quantizers.MIN_STEP)
                zero = (-w_min * ratio / step).round()
                quantized = (torch.clamp((weight / step).round() + zero, 0, levels) - zero) * step
                err = (weight - quantized).abs().pow(quantizers.LP_NORM).mean(dim=1, keepdim=True)
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_step = torch.where(better, step, best_step)
                best_zero = torch.where(better, zero, best_zero)
            return best_step, best_zero

        quantizers.init_weight_range = through_zero
    if "pixel-target" in names:
        loop.pixel_target = lambda spec: image_prior.PixelTarget.standard(spec.channels)
    if "swing-all" in names:
        from genie_hub.synthesis import swing

        swing.SWING_MIN_SIZE = 0
    if "fp-skip" in names:
        from genie_hub.quantization import prepare

        prepare._quantize_skip = lambda *args, **kwargs: None


# Reduced CPU setting for EfficientNet-Lite0 at 224 px (the generator at 224 px is expensive on CPU).
EFFNET_CPU_DEFAULTS = dict(num_samples=32, synthesis_batch_size=16, synthesis_iterations=120,
                           reconstruction_steps=150, reconstruction_batch_size=16)
# The photographs among the images in gradio's wheel (the others are logos and a 61 px icon).
GRADIO_PHOTOS = ("cheetah.jpg", "cheetah1.jpg", "lion.jpg", "tower.jpg", "groot.jpeg")


# ----------------------------------------------------------------------------------------------------------
# Result bookkeeping and writers (no torch work here; tested by tests/test_benchmarks.py)
# ----------------------------------------------------------------------------------------------------------

def parse_bits(text: str) -> tuple[int, int]:
    try:
        w, a = text.lower().replace("w", "").replace("a", "/").strip("/").split("/")
        return int(w), int(a)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bits must look like 4/4 or W4A4, got {text!r}") from exc


def bits_tag(bits: tuple[int, int] | list[int] | None) -> str:
    return "FP32" if bits is None else f"W{bits[0]}A{bits[1]}"


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt_pm(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    if not values:
        return "-"
    m, s = mean_std([v * scale for v in values])
    if len(values) == 1:
        return f"{m:.{digits}f} (n=1)"
    return f"{m:.{digits}f} ± {s:.{digits}f} (n={len(values)})"


def variant_name(ablate: list[str]) -> str:
    return "ablated " + "+".join(sorted(ablate)) if ablate else ""


def embedded_summary(rows: list[dict]) -> list[dict]:
    """Aggregate the embedded rows over seeds: one entry per (bits, method, variant)."""
    out = []
    fp = [r for r in rows if r["part"] == "embedded" and r["method"] == "fp32"]
    fp_mean = mean_std([r["top1"] for r in fp])[0] if fp else float("nan")
    if fp:
        out.append({"bits": None, "method": "fp32", "top1": [r["top1"] for r in fp], "seeds": [r["seed"] for r in fp],
                    "wall_s": [r["wall_s"] for r in fp], "delta_vs_fp32": 0.0})
    bit_settings = []
    for r in rows:
        if r["part"] == "embedded" and r["bits"] is not None and tuple(r["bits"]) not in bit_settings:
            bit_settings.append(tuple(r["bits"]))
    for bits in bit_settings:
        variants = sorted({r.get("variant", "") for r in rows if r["part"] == "embedded"})
        for method, variant in [(m, v) for m in EMBEDDED_ORDER for v in variants]:
            sel = [r for r in rows if r["part"] == "embedded" and r["method"] == method
                   and r.get("variant", "") == variant and r["bits"] is not None and tuple(r["bits"]) == bits]
            if not sel:
                continue
            top1 = [r["top1"] for r in sel]
            out.append({"bits": list(bits), "method": method, "variant": variant, "top1": top1,
                        "seeds": [r["seed"] for r in sel],
                        "wall_s": [r["wall_s"] for r in sel],
                        "delta_vs_fp32": mean_std(top1)[0] - fp_mean if fp else float("nan")})
    return out


def render_markdown(results: dict) -> str:
    lines = [f"# genie_hub accuracy benchmark", ""]
    commands = results.get("commands") or [results["command"]]
    lines += ["Command" + ("s" if len(commands) > 1 else "") + ": " + "; ".join(f"`{c}`" for c in commands), "",
              f"Machine: {results.get('machine', '?')}; started {results.get('started', '?')}; "
              f"status: **{results.get('status', '?')}**", ""]
    versions = results.get("library_versions") or {}
    if versions:
        lines += ["Library versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    rows = results.get("rows", [])

    emb = [r for r in rows if r["part"] == "embedded"]
    if emb or "embedded" in results.get("parts", []):
        s = results.get("settings", {}).get("embedded", {})
        model = s.get("model", "embedded default model")
        lines += [f"## Fashion-MNIST: {s.get('architecture', 'ResNet')} ({model}), top-1 on the 10,000 test images", ""]
        ablated = [name for name in ABLATIONS if any(name in r.get("variant", "") for r in emb)]
        if ablated:
            lines += ["Rows marked [ablated ...] undo one fix of issue #10, back to genie_hub 0.1's behaviour: "
                      + "; ".join(f"{name}: {ABLATIONS[name]}" for name in ablated)
                      + " (one seed each: compare with the seed spread of the full rows).", ""]
        if s:
            lines += [f"Settings: profile `{s.get('profile')}`, {s.get('num_samples')} calibration images for "
                      f"noise/pixel-synthesis/Genie (synthesis batch {s.get('synthesis_batch_size')}, "
                      f"{s.get('synthesis_iterations')} synthesis iterations), {s.get('reconstruction_steps')} "
                      f"reconstruction steps per unit (batch {s.get('reconstruction_batch_size')}), few-shot row on "
                      f"{s.get('fewshot_samples')} real training images (seed-dependent subset); seeds {s.get('seeds')}; device "
                      f"{s.get('device')}. Mean ± sample std over the seeds that finished (n = how many).", ""]
        lines += ["| Bits | Method | Top-1 (%) | Δ vs FP32 (points) | Seeds | Wall time per run (s) |",
                  "|---|---|---|---|---|---|"]
        for entry in embedded_summary(rows):
            delta = entry["delta_vs_fp32"]
            delta_s = "-" if entry["method"] == "fp32" or math.isnan(delta) else f"{delta * 100:+.2f}"
            wall = ", ".join(f"{w:.0f}" for w in entry["wall_s"])
            labels = PRIOR_LABELS if s.get("prior", "bn-statistics") != "bn-statistics" else {}
            label = labels.get(entry["method"], METHOD_LABELS[entry["method"]]) + (
                f" [{entry['variant']}]" if entry.get("variant") else "")
            lines.append(f"| {bits_tag(entry['bits'])} | {label} | {fmt_pm(entry['top1'])} "
                         f"| {delta_s} | {', '.join('-' if x is None else str(x) for x in entry['seeds'])} | {wall} |")
        synth = [r for r in results.get("synthesis", []) if r["part"] == "embedded"]
        if synth:
            lines += ["", "Synthesis (shared by all bit settings of a seed):", "",
                      f"| Seed | Method | Images | Wall time (s) | Final {s.get('prior', 'bn-statistics')} loss (per batch) |",
                      "|---|---|---|---|---|"]
            for r in synth:
                losses = ", ".join(f"{x:.3g}" for x in r.get("final_bn_loss", []))
                lines.append(f"| {r['seed']} | {r['method']} | {r['num_images']} | {r['wall_s']:.0f} | {losses} |")
        lines += [""]
        rtn44 = [e for e in embedded_summary(rows) if e["method"] == "rtn" and e["bits"] == [4, 4]]
        if rtn44:
            lines += [f"Round-to-nearest W4A4 loss vs FP32: **{-rtn44[0]['delta_vs_fp32'] * 100:.2f} points** "
                      f"(mean over seeds {rtn44[0]['seeds']}).", ""]
        lines += ["Row wall times include calibration-data preparation that is not shared (noise, real images), "
                  "quantization/reconstruction and the 10k-image evaluation; synthesis time is listed separately "
                  "and not included in the Genie/ZeroQ-style rows.", ""]

    eff = [r for r in rows if r["part"] == "efficientnet"]
    eff_info = results.get("settings", {}).get("efficientnet")
    if eff or eff_info:
        lines += ["## EfficientNet-Lite0 (ImageNet): agreement with the FP32 model on real photos", ""]
        seeds = sorted({r["seed"] for r in eff})
        if eff_info:
            lines += [f"Setting: **{eff_info.get('label')}** — {eff_info.get('num_samples')} synthetic images "
                      f"(batch {eff_info.get('synthesis_batch_size')}, {eff_info.get('synthesis_iterations')} synthesis "
                      f"iterations), {eff_info.get('reconstruction_steps')} reconstruction steps per unit (batch "
                      f"{eff_info.get('reconstruction_batch_size')}); seeds {', '.join(map(str, seeds))}; device "
                      f"{eff_info.get('device')}. Evaluation set: {eff_info.get('num_eval')} views "
                      f"({eff_info.get('views_note')}) of the photos {', '.join(eff_info.get('photos', []))}.", ""]
        genie_synth = [r for r in results.get("synthesis", []) if r["part"] == "efficientnet" and r["method"] == "genie"]
        if genie_synth:
            lines += ["Genie-D synthesis per run: " + "; ".join(
                f"seed {r['seed']}: {r['wall_s']:.0f} s, final BN-statistics loss "
                f"{', '.join(f'{x:.3g}' for x in r['final_bn_loss'])}" for r in genie_synth) + ".", ""]
        if len(seeds) > 1:
            lines += ["Mean ± sample std over the seeds (n = how many); one view is "
                      f"{100 / max(1, eff[0]['agreement']['num_samples']):.1f} points of agreement.", ""]
        lines += ["| Bits | Method | Top-1 agreement (%) | Top-5 overlap (%) | Mean KL(FP‖Q) (nats) | Seeds | "
                  "Wall time per run (s) |", "|---|---|---|---|---|---|---|"]
        groups: dict[tuple, list[dict]] = {}
        for r in eff:  # one row per (bits, method, variant), as in the embedded part
            groups.setdefault((tuple(r["bits"]), r["method"], r.get("variant", "")), []).append(r)
        ordered = sorted(groups, key=lambda key: ([tuple(r["bits"]) for r in eff].index(key[0]),
                                                  EFFNET_ORDER.index(key[1]), key[2]))
        for bits, method, variant in ordered:
            sel = sorted(groups[(bits, method, variant)], key=lambda r: r["seed"])
            cells = [fmt_pm([r["agreement"][k] for r in sel], scale, digits)
                     for k, scale, digits in (("top1_agreement", 100, 1), ("top5_overlap", 100, 1), ("kl_fp_q", 1, 4))]
            seeds_cell = ", ".join(str(r["seed"]) for r in sel)
            walls = ", ".join(f"{r['wall_s']:.0f}" for r in sel)
            label = METHOD_LABELS[method] + (f" [{variant}]" if variant else "")
            lines.append(f"| {bits_tag(list(bits))} | {label} | {' | '.join(cells)} | {seeds_cell} | {walls} |")
        lines += [""]
    for note in results.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines).rstrip() + "\n"


EMBEDDED_SETUP_KEYS = ("model", "architecture", "profile", "num_samples", "synthesis_batch_size", "synthesis_iterations",
                       "reconstruction_steps", "reconstruction_batch_size", "device", "prior")


def merge_results(parts: list[dict]) -> dict:
    """Combine the results of separate runs (e.g. the embedded and the efficientnet part) into one."""
    eval_sets = {json.dumps([p.get("settings", {}).get("efficientnet", {}).get(k) for k in ("photos", "views_note")])
                 for p in parts if "efficientnet" in p.get("settings", {})}
    if len(eval_sets) > 1:
        raise SystemExit("These results score EfficientNet-Lite0 on different photo sets; their rows cannot be "
                         "merged. Rerun the older seeds with this checkout.")
    # Fashion-MNIST rows carry no model or budget of their own: the part's settings say it, and one is shown.
    setups = {json.dumps({k: v for k, v in p["settings"]["embedded"].items() if k in EMBEDDED_SETUP_KEYS},
                         sort_keys=True) for p in parts if "embedded" in p.get("settings", {})}
    if len(setups) > 1:
        raise SystemExit("These results hold Fashion-MNIST rows of different models or settings ("
                         + " vs ".join(sorted(setups)) + "); their rows would be pooled under one model. Merge the "
                         "runs of each model and setting separately.")
    merged: dict[str, Any] = {"commands": [], "started": None, "status": None, "machine": None,
                              "library_versions": {}, "parts": [], "settings": {}, "rows": [], "synthesis": [],
                              "notes": [], "runs": []}
    for part in parts:
        merged["commands"] += part.get("commands") or [part["command"]]
        merged["started"] = merged["started"] or part.get("started")
        merged["machine"] = merged["machine"] or part.get("machine")
        merged["library_versions"] = merged["library_versions"] or part.get("library_versions", {})
        for key in ("parts", "rows", "synthesis", "notes"):
            merged[key] += [x for x in part.get(key, []) if key != "notes" or x not in merged["notes"]]
        merged["settings"].update(part.get("settings", {}))
        merged["runs"].append({k: part.get(k) for k in ("command", "started", "status", "machine", "total_wall_s",
                                                          "torch_threads")})
    statuses = sorted({r["status"] for r in merged["runs"] if r.get("status")})
    merged["status"] = statuses[0] if len(statuses) == 1 else "; ".join(statuses)
    return merged


def write_results(results: dict, output: str | Path) -> tuple[Path, Path]:
    """Write `<output>.json` and `<output>.md` atomically (tmp file + rename)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    md_path, json_path = output.with_name(output.name + ".md"), output.with_name(output.name + ".json")
    for path, text in ((json_path, json.dumps(results, indent=2, default=str) + "\n"), (md_path, render_markdown(results))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return md_path, json_path


# ----------------------------------------------------------------------------------------------------------
# The runs
# ----------------------------------------------------------------------------------------------------------

class Runner:
    def __init__(self, args: argparse.Namespace, argv: list[str]):
        from genie_hub.cards import library_versions, machine_description

        self.args = args
        self.device = torch.device(args.device)
        self.results: dict[str, Any] = {
            "command": "python benchmarks/accuracy.py " + " ".join(shlex.quote(a) for a in argv),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "status": "running",
            "machine": machine_description(), "library_versions": library_versions(),
            "torch_threads": torch.get_num_threads(), "parts": [], "settings": {}, "rows": [], "synthesis": [],
            "notes": list(args.note or []),
        }

    def save(self) -> None:
        write_results(self.results, self.args.output)

    def add_row(self, row: dict) -> None:
        lrs = [f"{name} {value:g}" for name, value in (("lr_weight_step", self.args.lr_weight_step),
                                                        ("lr_act_step", self.args.lr_act_step)) if value is not None]
        precision = [f"synthesis {self.args.synthesis_precision}"] if self.args.synthesis_precision else []
        row = {**row, "variant": ", ".join(filter(None, [variant_name(self.args.ablate), *lrs, *precision]))}
        self.results["rows"].append(row)
        self.save()
        if row["part"] == "embedded":
            print(f"| {row['part']} | seed {row['seed']} | {bits_tag(row['bits'])} | {row['method']} | "
                  f"top-1 {row['top1'] * 100:.2f} | {row['wall_s']:.0f} s |", flush=True)
        else:
            a = row["agreement"]
            print(f"| {row['part']} | {bits_tag(row['bits'])} | {row['method']} | agree {a['top1_agreement'] * 100:.1f} | "
                  f"top5 {a['top5_overlap'] * 100:.1f} | KL {a['kl_fp_q']:.4f} | {row['wall_s']:.0f} s |", flush=True)

    def accelerator(self, config):
        from accelerate import Accelerator

        return Accelerator(cpu=self.device.type == "cpu", mixed_precision=config.mixed_precision)

    def config(self, bits: tuple[int, int] | None, seed: int, base: dict, **extra):
        from genie_hub import GenieConfig

        w, a = bits if bits is not None else (4, 4)
        chosen = {"synthesis_precision": self.args.synthesis_precision} if self.args.synthesis_precision else {}
        return GenieConfig.from_profile(self.args.profile, weight_bits=w, act_bits=a, seed=seed,
                                        **{**chosen, **base, **extra})

    def synth(self, part: str, model, spec, config, method: str) -> torch.Tensor:
        from genie_hub import synthesize

        t0 = time.perf_counter()
        calibration = synthesize(model, config, spec=spec, accelerator=self.accelerator(config),
                                 progress=self.args.progress)
        wall = time.perf_counter() - t0
        images = calibration.pixel_values
        losses = [stats.final_prior_loss for stats in calibration.batch_stats]
        record = {"part": part, "seed": config.seed, "method": method, "num_images": int(images.shape[0]),
                  "wall_s": wall, "final_bn_loss": losses}
        self.results["synthesis"].append(record)
        self.save()
        print(f"synthesis {part} seed {config.seed} {method}: {images.shape[0]} images in {wall:.0f} s, "
              f"BN loss {', '.join(f'{x:.3g}' for x in losses)}", flush=True)
        return images

    def quantize(self, model, calibration, config, range_init="lp"):
        from genie_hub import quantize

        return quantize(model, calibration, config, accelerator=self.accelerator(config), range_init=range_init,
                        progress=self.args.progress).model

    # --- embedded ----------------------------------------------------------------------------------------
    def embedded(self) -> None:
        from genie_hub.data import fashion_mnist_pixel_values, load_calibration_images, load_fashion_mnist
        from genie_hub.evaluation import evaluate_top1
        from genie_hub.loading import input_spec, load_model
        from genie_hub.synthesis import select_prior

        args = self.args
        model, processor = load_model(args.fmnist_model)
        model.to(self.device).eval()
        spec = input_spec(model, processor)
        test_images, test_labels = load_fashion_mnist("test")
        test_x = fashion_mnist_pixel_values(test_images, processor, spec)
        base = {k: v for k, v in dict(num_samples=args.num_samples, synthesis_iterations=args.synthesis_iterations,
                                      reconstruction_steps=args.reconstruction_steps,
                                      synthesis_batch_size=args.synthesis_batch_size,
                                      lr_weight_step=args.lr_weight_step, lr_act_step=args.lr_act_step).items()
                if v is not None}
        probe = self.config((4, 4), 0, base)
        self.results["parts"].append("embedded")
        self.results["settings"]["embedded"] = {
            "profile": args.profile, "num_samples": probe.num_samples, "synthesis_batch_size": probe.synthesis_batch_size,
            "synthesis_iterations": probe.synthesis_iterations, "reconstruction_steps": probe.reconstruction_steps,
            "reconstruction_batch_size": probe.reconstruction_batch_size, "fewshot_samples": args.fewshot_samples,
            "lr_weight_step": probe.lr_weight_step, "lr_act_step": probe.lr_act_step,
            "seeds": args.seeds, "bits": [list(b) for b in args.bits], "device": str(self.device),
            "input_spec": spec.to_dict(), "num_test_images": int(test_x.shape[0]),
            "model": args.fmnist_model or "embedded default model", "architecture": type(model).__name__,
            "prior": select_prior(model).name,
            "ablate": list(args.ablate),
            "config_example": probe.to_dict(),
        }
        t0 = time.perf_counter()
        fp = evaluate_top1(model, test_x, test_labels)
        self.add_row({"part": "embedded", "method": "fp32", "bits": None, "seed": None, "top1": fp,
                      "wall_s": time.perf_counter() - t0})
        for seed in args.seeds:
            genie_images = zeroq_images = None
            wanted = set(args.methods)
            if wanted & {"genie", "rtn"}:
                genie_images = self.synth("embedded", model, spec, self.config((4, 4), seed, base), "genie")
            if "zeroq" in wanted:
                zeroq_images = self.synth("embedded", model, spec,
                                          self.config((4, 4), seed, base, synthesis_method="pixels"), "zeroq (pixels)")
            for bits in args.bits:
                for method in EMBEDDED_ORDER:
                    if method not in wanted:
                        continue
                    t0 = time.perf_counter()
                    info: dict[str, Any] = {}
                    if method == "rtn":
                        cfg = self.config(bits, seed, base, reconstruction_steps=0)
                        q = self.quantize(model, genie_images, cfg, range_init="minmax")
                        info["calibration"] = f"{genie_images.shape[0]} Genie synthetic images (activation ranges)"
                    elif method == "noise":
                        cfg = self.config(bits, seed, base)
                        q = self.quantize(model, noise_images(cfg.num_samples, spec, seed), cfg)
                        info["calibration"] = f"{cfg.num_samples} N(0,1) noise images"
                    elif method == "zeroq":
                        cfg = self.config(bits, seed, base)
                        q = self.quantize(model, zeroq_images, cfg)
                        info["calibration"] = f"{zeroq_images.shape[0]} BN-distilled pixel images"
                    elif method == "genie":
                        cfg = self.config(bits, seed, base)
                        q = self.quantize(model, genie_images, cfg)
                        info["calibration"] = f"{genie_images.shape[0]} Genie synthetic images"
                    else:  # fewshot
                        cfg = self.config(bits, seed, base, num_samples=args.fewshot_samples)
                        real = load_calibration_images("fashion-mnist", processor, spec, args.fewshot_samples, seed)
                        q = self.quantize(model, real, cfg)
                        info["calibration"] = f"{real.shape[0]} real Fashion-MNIST training images (subset seed {seed})"
                    top1 = evaluate_top1(q, test_x, test_labels)
                    self.add_row({"part": "embedded", "method": method, "bits": list(bits), "seed": seed, "top1": top1,
                                  "wall_s": time.perf_counter() - t0, "reconstruction_steps": cfg.reconstruction_steps,
                                  **info})
                    del q

    # --- efficientnet ------------------------------------------------------------------------------------
    def efficientnet_photos(self):
        import numpy as np
        from PIL import Image
        from skimage import data as skdata

        photos = {}
        # RGB photographs shipped inside the scikit-image wheel (no download); `cat` is the same image as chelsea.
        for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"):
            try:
                arr = getattr(skdata, name)()
            except Exception as exc:  # a data file that is not in the wheel needs pooch + network
                print(f"skipping skimage.data.{name}: {type(exc).__name__}", flush=True)
                continue
            if arr.ndim == 3 and arr.shape[-1] == 3:
                photos[f"skimage.{name}"] = Image.fromarray(np.ascontiguousarray(arr))
        try:
            photos["skimage.stereo_motorcycle"] = Image.fromarray(np.ascontiguousarray(skdata.stereo_motorcycle()[0]))
        except Exception as exc:
            print(f"skipping skimage.data.stereo_motorcycle: {type(exc).__name__}", flush=True)
        try:
            import matplotlib.cbook as cbook

            with cbook.get_sample_data("grace_hopper.jpg") as fh:
                photos["matplotlib.grace_hopper"] = Image.open(fh).convert("RGB").copy()
        except Exception:
            pass
        import gradio

        media = Path(gradio.__file__).parent / "media_assets" / "images"
        for name in GRADIO_PHOTOS:
            if (media / name).is_file():
                with Image.open(media / name) as img:
                    photos[f"gradio.{name}"] = img.convert("RGB")
            else:
                print(f"skipping gradio media_assets/images/{name}: not in this gradio version", flush=True)
        return photos

    def efficientnet_views(self, photos: dict) -> tuple[list, str]:
        """Each photo plus its mirror, and 4 corner crops + 1 centre crop (75 % side) of it: 7 views a photo."""
        from PIL import ImageOps

        views = []
        for img in photos.values():
            w, h = img.size
            cw, ch = int(w * 0.75), int(h * 0.75)
            boxes = [(0, 0, cw, ch), (w - cw, 0, w, ch), (0, h - ch, cw, h), (w - cw, h - ch, w, h),
                     ((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)]
            views += [img, ImageOps.mirror(img)] + [img.crop(b) for b in boxes]
        return views, "full photo, its mirror image, 4 corner crops and 1 centre crop of 75 % side"

    def efficientnet(self) -> None:
        from genie_hub.evaluation import agreement, predict_logits
        from genie_hub.loading import input_spec, load_model, to_pixel_values
        from genie_hub.recipes import convert_efficientnet_lite0

        args = self.args
        cache = Path(args.effnet_cache).expanduser()
        if not (cache / "config.json").exists():
            convert_efficientnet_lite0(cache)
        model, processor = load_model(str(cache))
        model.to(self.device).eval()
        spec = input_spec(model, processor)
        photos = self.efficientnet_photos()
        views, views_note = self.efficientnet_views(photos)
        x = to_pixel_values(views, processor, spec)
        fp_logits = predict_logits(model, x, batch_size=16)

        reduced = args.profile != "paper"
        values = dict(EFFNET_CPU_DEFAULTS) if reduced else {}
        for key in ("num_samples", "synthesis_iterations", "reconstruction_steps", "synthesis_batch_size"):
            v = getattr(args, f"effnet_{key}")
            if v is not None:
                values[key] = v
        label = ("reduced CPU setting (NOT the paper profile)" if reduced else f"profile {args.profile}")
        probe = self.config((4, 4), args.seeds[0], values)
        self.results["parts"].append("efficientnet")
        self.results["settings"]["efficientnet"] = {
            "label": label, "num_samples": probe.num_samples, "synthesis_batch_size": probe.synthesis_batch_size,
            "synthesis_iterations": probe.synthesis_iterations, "reconstruction_steps": probe.reconstruction_steps,
            "reconstruction_batch_size": probe.reconstruction_batch_size, "seeds": list(args.seeds),
            "device": str(self.device), "photos": list(photos), "num_eval": int(x.shape[0]), "views_note": views_note,
            "model_dir": str(cache), "fp32_top1_classes": [model.config.id2label[int(i)] for i in fp_logits.argmax(-1)[::7]],
            "bits": [list(b) for b in args.effnet_bits],
        }
        self.save()
        for seed in args.seeds:
            config = self.config((4, 4), seed, values)
            images = self.synth("efficientnet", model, spec, config, "genie")
            calibration = {"rtn": images, "genie": images}
            if "zeroq" in args.effnet_methods:
                calibration["zeroq"] = self.synth("efficientnet", model, spec,
                                                  self.config((4, 4), seed, values, synthesis_method="pixels"),
                                                  "zeroq (pixels)")
            if "noise" in args.effnet_methods:
                calibration["noise"] = noise_images(config.num_samples, spec, seed)
            for bits in args.effnet_bits:
                for method in (m for m in EFFNET_ORDER if m in args.effnet_methods):
                    t0 = time.perf_counter()
                    if method == "rtn":
                        q = self.quantize(model, images, self.config(bits, seed, values, reconstruction_steps=0),
                                          "minmax")
                    else:
                        q = self.quantize(model, calibration[method], self.config(bits, seed, values))
                    q_logits = predict_logits(q, x, batch_size=16)
                    self.add_row({"part": "efficientnet", "method": method, "bits": list(bits), "seed": seed,
                                  "agreement": agreement(fp_logits, q_logits), "wall_s": time.perf_counter() - t0})
                    del q


def noise_images(count: int, spec, seed: int) -> torch.Tensor:
    """The noise row's calibration set: N(0, 1) in the normalized input space, seeded apart from synthesis."""
    return torch.randn((count, *spec.shape), generator=torch.Generator().manual_seed(10_000 + seed))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--bits", type=parse_bits, nargs="+", default=[(4, 4), (2, 4)], help="W/A settings, e.g. 4/4 2/4")
    p.add_argument("--profile", choices=["quick", "paper"], default="quick")
    p.add_argument("--num-samples", type=int, help="override the profile's number of synthetic / noise images")
    p.add_argument("--synthesis-batch-size", type=int)
    p.add_argument("--synthesis-iterations", type=int)
    p.add_argument("--reconstruction-steps", type=int)
    p.add_argument("--fewshot-samples", type=int, default=1024)
    p.add_argument("--lr-weight-step", type=float, help="override GenieConfig.lr_weight_step (an lr sweep)")
    p.add_argument("--lr-act-step", type=float, help="override GenieConfig.lr_act_step (an lr sweep)")
    p.add_argument("--synthesis-precision", choices=SYNTHESIS_PRECISIONS,
                   help="GenieConfig.synthesis_precision for every run (default: the config's, auto); labels the rows")
    p.add_argument("--methods", nargs="+", default=EMBEDDED_ORDER, choices=EMBEDDED_ORDER,
                   help="embedded-part methods to run (default: all)")
    p.add_argument("--part", choices=["embedded", "efficientnet", "all"], default="all")
    p.add_argument("--fmnist-model", default=None,
                   help="the Fashion-MNIST classifier of the 'embedded' part (default: the embedded ResNet; e.g. "
                        "benchmarks/models/fashion-mnist-mobilenet-v2 from train_default_model.py --family ...)")
    p.add_argument("--ablate", nargs="+", default=[], choices=sorted(ABLATIONS),
                   help="undo these fixes of issue #10, back to genie_hub 0.1's behaviour (ablation rows; see ABLATIONS)")
    p.add_argument("--effnet-bits", type=parse_bits, nargs="+", default=[(8, 8), (4, 4)])
    p.add_argument("--effnet-methods", nargs="+", default=["rtn", "genie"], choices=EFFNET_ORDER,
                   help="EfficientNet-Lite0 rows (noise and zeroq each add a Genie-M run per bit setting; zeroq "
                        "also a pixel synthesis)")
    p.add_argument("--effnet-num-samples", type=int)
    p.add_argument("--effnet-synthesis-batch-size", type=int)
    p.add_argument("--effnet-synthesis-iterations", type=int)
    p.add_argument("--effnet-reconstruction-steps", type=int)
    p.add_argument("--effnet-cache", default=os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"),
                                                          "genie_hub", "efficientnet-lite0"),
                   help="where the converted EfficientNet-Lite0 is kept (outside the repository)")
    p.add_argument("--output", default="benchmarks/results/accuracy", help="writes <output>.md and <output>.json")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 was fastest under contention)")
    p.add_argument("--note", action="append", help="free-text note copied into the results")
    p.add_argument("--progress", action="store_true", help="show tqdm bars")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="run nothing: merge results files of earlier runs (plus --note) into <output>.md/.json")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.merge:
        merged = merge_results([json.loads(Path(f).read_text()) for f in args.merge])
        merged["notes"] += [n for n in (args.note or []) if n not in merged["notes"]]
        merged["merged_from"] = args.merge
        merged["commands"].append("python benchmarks/accuracy.py " + " ".join(shlex.quote(a) for a in argv))
        write_results(merged, args.output)
        print(render_markdown(merged))
        return 0
    torch.set_num_threads(args.threads)
    reuse_freed_memory()  # as the command line does: no result changes, large tensors stop page-faulting
    apply_ablations(args.ablate)
    runner = Runner(args, argv)
    t0 = time.perf_counter()
    try:
        if args.part in ("embedded", "all"):
            runner.embedded()
        if args.part in ("efficientnet", "all"):
            runner.efficientnet()
        runner.results["status"] = "finished"
    except BaseException as exc:
        runner.results["status"] = f"interrupted ({type(exc).__name__}: {exc})"
        raise
    finally:
        runner.results["total_wall_s"] = time.perf_counter() - t0
        runner.save()
        print(render_markdown(runner.results), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
