"""The whole job behind `genie_hub quantize`: load -> synthesize -> quantize -> save -> (evaluate) -> (push).

Everything lands in one output folder, laid out so that each part can be uploaded or resumed on its own:

    OUT/model/     the quantized model (config.json with quantization_config, model.safetensors,
                   preprocessor_config.json, README.md): a model repo
    OUT/dataset/   the synthetic images (data/*.parquet + README.md): a datasets repo
    OUT/work/      synthesis shards and reconstruction state: what makes a killed run resumable
    OUT/run.json   settings, command, versions, per-unit errors and results
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from pathlib import Path

import torch

from .config import GenieConfig
from .errors import GenieError
from .loading import DEFAULT_MODEL_DIR, input_spec, load_model, resolve_model_path
from .utils import atomic_write_json

logger = logging.getLogger("genie_hub")


def default_output_dir(model: str | None, config: GenieConfig) -> Path:
    name = Path(resolve_model_path(model)).name if model is None or Path(str(model)).exists() else str(model).split("/")[-1]
    return Path("genie_output") / f"{name}-genie-w{config.weight_bits}a{config.act_bits}"


def is_default_model(model: str | None) -> bool:
    return model is None or Path(str(model)).resolve() == DEFAULT_MODEL_DIR.resolve()


def evaluate_on_dataset(fp_model, q_model, processor, spec, dataset: str, limit: int | None = None) -> dict | None:
    """Top-1 of both models on a labelled test set (currently: fashion-mnist). None if the data is absent."""
    from .data import DataError, fashion_mnist_pixel_values, load_fashion_mnist
    from .evaluation import agreement, predict_logits

    if dataset != "fashion-mnist":
        raise GenieError(f"Unknown evaluation dataset '{dataset}'. Supported: fashion-mnist.")
    try:
        images, labels = load_fashion_mnist("test")
    except DataError as exc:
        logger.warning("Skipping the evaluation: %s", exc)
        return None
    if limit:
        images, labels = images[:limit], labels[:limit]
    pixel_values = fashion_mnist_pixel_values(images, processor, spec)
    fp_logits = predict_logits(fp_model, pixel_values)
    q_logits = predict_logits(q_model, pixel_values)
    agree = agreement(fp_logits, q_logits)
    return {"dataset": "fashion-mnist", "split": "test", "num_images": len(labels),
            "fp32_top1": (fp_logits.argmax(-1) == labels).float().mean().item(),
            "quantized_top1": (q_logits.argmax(-1) == labels).float().mean().item(),
            "top1_agreement": agree["top1_agreement"], "kl_fp_q": agree["kl_fp_q"]}


def run_quantization(model: str | None = None, config: GenieConfig | None = None, *,
                     output_dir: str | Path | None = None, few_shot: str | None = None,
                     evaluate: str | None = "auto", accelerator=None, push: bool = False,
                     repo_id: str | None = None, dataset_repo_id: str | None = None, private: bool = False,
                     revision: str | None = None, command: str | None = None, progress: bool = True) -> Path | None:
    """Run the full job; returns the output folder (on the main process; None on the others)."""
    from accelerate import Accelerator

    started = time.time()
    config = config or GenieConfig()
    if push:  # fail fast: before hours of compute
        from .hub import check_push_ready

        check_push_ready()
    accelerator = accelerator or Accelerator(mixed_precision=config.mixed_precision)
    out = Path(output_dir) if output_dir is not None else default_output_dir(model, config)
    with accelerator.main_process_first():
        fp_model, processor = load_model(model, revision=revision)
    spec = input_spec(fp_model, processor)
    base_model = str(model) if model is not None else str(DEFAULT_MODEL_DIR)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        logger.info("genie_hub: %s -> W%dA%d, %s profile, output %s", base_model, config.weight_bits,
                    config.act_bits, config.profile, out)

    if few_shot:
        from .data import load_calibration_images

        calibration = load_calibration_images(few_shot, processor, spec, config.num_samples, config.seed)
        batch_indices = [0] * len(calibration)
    else:
        from .synthesis import synthesize

        calibration = synthesize(fp_model, config, spec=spec, output_dir=out / "work" / "synthetic",
                                 accelerator=accelerator, progress=progress)
        sizes = config.synthesis_batch_sizes()
        batch_indices = [b for b, size in enumerate(sizes) for _ in range(size)]
    if not accelerator.is_main_process:
        return None  # reconstruction, saving and publishing run on the main process only

    from .checkpoint import save_quantized
    from .quantization import quantize

    q_model = quantize(fp_model, calibration, config, accelerator=accelerator,
                       state_path=out / "work" / "reconstruction.safetensors", progress=progress)
    q_model.to("cpu")
    fp_model.to("cpu")
    save_quantized(q_model, out / "model", processor=processor)

    results, protocol = [], ""
    eval_dataset = ("fashion-mnist" if is_default_model(model) else None) if evaluate == "auto" else evaluate
    evaluation = None
    if eval_dataset:
        evaluation = evaluate_on_dataset(fp_model, q_model, processor, spec, eval_dataset)
        if evaluation is not None:
            results.append({"name": f"{eval_dataset} test top-1 ({evaluation['num_images']} images)",
                            "fp32": f"{100 * evaluation['fp32_top1']:.2f}",
                            "quantized": f"{100 * evaluation['quantized_top1']:.2f}",
                            "quantized_value": round(100 * evaluation["quantized_top1"], 2),
                            "dataset_type": "zalando-datasets/fashion_mnist", "dataset_name": "Fashion-MNIST",
                            "split": "test"})
            protocol = ("Top-1 accuracy (%) on the Fashion-MNIST test split, measured by genie_hub right after "
                        f"quantization; top-1 agreement with FP32 {100 * evaluation['top1_agreement']:.2f} %.")

    from .cards import library_versions, machine_description, render_dataset_card, render_model_card

    run = {"base_model": base_model, "base_model_revision": revision, "method": "genie",
           "zero_shot": not few_shot, "calibration_source": few_shot or "synthetic (Genie-D)",
           "weight_bits": config.weight_bits, "act_bits": config.act_bits, "config": config.to_dict(),
           "input_spec": spec.to_dict(), "layers": q_model.genie_layers, "units": q_model.genie_units,
           "unit_errors": [vars(r) for r in q_model.genie_report], "evaluation": evaluation,
           "results": results, "results_protocol": protocol, "license": _license_of(fp_model),
           "command": command or " ".join(shlex.quote(a) for a in ["genie_hub", *sys.argv[1:]]),
           "versions": library_versions(), "machine": machine_description(),
           "num_processes": accelerator.num_processes, "wall_seconds": round(time.time() - started, 1)}
    local_id = out.resolve().name
    render_model_card(run, repo_id=local_id).save(out / "model" / "README.md")
    if not few_shot:
        from .synthetic_dataset import export_synthetic_dataset
        from .synthesis import ShardStore

        store = ShardStore(out / "work" / "synthetic", {})
        losses = [store.stats(b) for b in range(len(config.synthesis_batch_sizes()))]
        loss_summary = ", ".join(f"{s.get('initial_bn_loss', float('nan')):.3g} -> {s.get('final_bn_loss', float('nan')):.3g}"
                                 for s in losses)
        run["synthetic"] = {"num_samples": len(calibration), "shape": list(calibration.shape[1:]),
                            "loss_summary": loss_summary}
        card = render_dataset_card(run, repo_id=f"{local_id}-calibration", model_repo_id=None, **run["synthetic"])
        export_synthetic_dataset(calibration, spec, batch_indices, out / "dataset", card)
    atomic_write_json(out / "run.json", run)
    _print_summary(run, out)
    if push:
        from .hub import push_output

        push_output(out, repo_id=repo_id, dataset_repo_id=dataset_repo_id, private=private)
    return out


def _license_of(model) -> str | None:
    return getattr(getattr(model, "config", None), "license", None)


def _print_summary(run: dict, out: Path) -> None:
    lines = [f"Done in {run['wall_seconds'] / 60:.1f} min. Output: {out}"]
    errors = run["unit_errors"]
    if errors:
        better = sum(e["error_reconstructed"] <= e["error_round_to_nearest"] for e in errors)
        lines.append(f"Reconstruction lowered the output error of {better}/{len(errors)} units below "
                     "round-to-nearest.")
    if run["evaluation"]:
        ev = run["evaluation"]
        lines.append(f"{ev['dataset']} test top-1 on {ev['num_images']} images: FP32 {100 * ev['fp32_top1']:.2f} % | "
                     f"W{run['weight_bits']}A{run['act_bits']} {100 * ev['quantized_top1']:.2f} % "
                     f"(agreement {100 * ev['top1_agreement']:.2f} %)")
    elif run["base_model"] and is_default_model(run["base_model"]):
        lines.append("Fashion-MNIST test data not found, so no accuracy was measured: install it with "
                     "`apt-get install dataset-fashion-mnist` (or set GENIE_HUB_FASHION_MNIST_DIR) and run "
                     f"`genie_hub evaluate {out / 'model'} --dataset fashion-mnist`.")
    lines.append(f"Load it: AutoModelForImageClassification.from_pretrained('{out / 'model'}') after `import genie_hub`; "
                 f"publish it: genie_hub push {out}")
    print("\n".join(lines), flush=True)
