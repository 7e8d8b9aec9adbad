"""The whole job behind `genie_hub quantize`: load -> synthesize -> quantize -> save -> (evaluate) -> (push).

Everything lands in one output folder (`outputs.OutputLayout`), laid out so that each part can be uploaded
or resumed on its own; `outputs.RunRecord` (run.json) records how it was made.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from .adapters import adapter_for
from .arguments import preserved_state
from .calibration import Calibration
from .config import GenieConfig, make_accelerator, resolve_precision
from .data import few_shot_folder
from .errors import ConfigError, DataError, first_line
from .evaluation import DatasetEvaluation, EvalSet, evaluate_on_dataset
from .loading import input_spec, is_default_model, load_model, require_processor, resolve_model_path
from .optimization import fused_adam_supported
from .outputs import OutputLayout, RunRecord, card_sha256, run_settings
from .progress import format_duration, paper_cpu_warning, projected_seconds

logger = logging.getLogger("genie_hub")


def _evaluate_command(model_dir: Path, base_model: str, evalset, limit: int | None) -> str:
    """The `genie_hub evaluate` command that scores the saved model on the same set, as this run would have."""
    source = evalset.source
    dataset = (f"{source.name}:{source.split}" if source.kind == "fashion-mnist" or (source.kind == "local" and
               source.split) else source.name if source.kind == "local" else source.label)
    words = ["genie_hub", "evaluate", str(model_dir), "--dataset", dataset, "--fp32", base_model]
    if evalset.image_column:
        words += ["--image-column", evalset.image_column]
    if evalset.labelled and evalset.label_column:
        words += ["--label-column", evalset.label_column]
    if not evalset.labelled:
        words.append("--unlabelled")
    if limit:
        words += ["--limit", str(limit)]
    return shlex.join(words)


def run_quantization(model: str | None = None, config: GenieConfig | None = None, *,
                     output_dir: str | Path | None = None, few_shot: str | None = None,
                     evaluate: str | None = "auto", accelerator=None, push: bool = False,
                     repo_id: str | None = None, dataset_repo_id: str | None = None, private: bool = False,
                     revision: str | None = None, command: str | None = None, overwrite: bool = False,
                     eval_limit: int | None = None, eval_image_column: str | None = None,
                     eval_label_column: str | None = None, eval_unlabelled: bool = False,
                     synthesis_dir: str | Path | None = None, base_model_id: str | None = None,
                     progress: bool = True, token: str | None = None, push_revision: str | None = None,
                     create_pr: bool = False, commit_message: str | None = None) -> Path | None:
    """Run the full job; returns the output folder (on the main process; None on the others).

    Everything that can be checked is checked before any compute: the evaluation dataset, the output folder
    (`OutputLayout.claim`), the Hub token and repo ids when pushing, the model, the override patterns.
    `synthesis_dir` keeps the synthesis shards elsewhere than OUT/work (the zoo shares them between entries
    that differ only in bits: shards are keyed by every setting that changes the images).
    `token`, `push_revision`, `create_pr` and `commit_message` are those of `hub.push_output`."""
    started = time.time()
    config = config or GenieConfig()
    if output_dir is not None and not str(output_dir).strip():
        raise ConfigError("The output folder is an empty string. Pass a folder with -o, or leave -o out for "
                          "genie_output/<model>-genie-w<W>a<A>.")
    base_model = resolve_model_path(model)
    if base_model_id is not None:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(base_model_id)
        except HFValidationError as exc:
            raise ConfigError(f"--base-model {base_model_id!r} is not a Hub model id (owner/name): {exc}") from None
    if push:  # fail fast: before hours of compute
        from .hub import check_push_options, check_push_targets

        check_push_options(push_revision, create_pr, commit_message)
        check_push_targets(base_model, config.weight_bits, config.act_bits, repo_id,
                           dataset_repo_id if not few_shot else None, token=token, private=private)
    given_precision = config.mixed_precision
    if accelerator is None:
        accelerator, config = make_accelerator(config)
    else:
        config = resolve_precision(config, accelerator)
    check_launch(accelerator)
    if command and given_precision is None and config.mixed_precision not in (None, "no"):
        command += f" --mixed-precision {config.mixed_precision}"  # from accelerate: the card's command must redo it
    layout = (OutputLayout(Path(output_dir).expanduser()) if output_dir is not None
              else OutputLayout.default_for(base_model, config.weight_bits, config.act_bits))
    with accelerator.main_process_first():
        fp_model, processor = load_model(model, revision=revision)
    spec = input_spec(fp_model, processor)
    from .quantization import check_quantizable

    probe = torch.randn(2, *spec.shape, generator=torch.Generator().manual_seed(0))  # no global RNG draw
    check_quantizable(fp_model, config, probe)  # a model genie_hub cannot quantize fails here, before compute
    # Synthetic and real calibration images alike are made at the processor's size and normalization, and the
    # result is evaluated and used through it: without one, all of it would rest on a guess (224 px, none).
    require_processor(processor, base_model, "`genie_hub quantize`",
                      "calibrate on images unlike the model's inputs, writing a model nothing could evaluate")
    evalset, fashion_mnist_missing = _open_evaluation(evaluate, model, fp_model, eval_image_column,
                                                      eval_label_column, eval_unlabelled)
    if spec.channels not in (1, 3) and (few_shot or evalset is not None):
        from .adapters.base import real_images_refused

        raise ConfigError(real_images_refused(spec.channels))
    if few_shot:  # reading real images is cheap next to the run: a bad source fails here
        from .data import check_apart_from_evaluation, load_calibration_images
        from .synthesis import require_known_prior

        require_known_prior(config.synthesis_prior)  # unused here, yet recorded in run.json
        if evalset is not None:
            check_apart_from_evaluation(few_shot, evalset)
        calibration = Calibration(load_calibration_images(few_shot, processor, spec, config.num_samples, config.seed),
                                  source=few_shot)
    else:
        from .synthesis import select_prior

        select_prior(fp_model, config.synthesis_prior)  # a model no prior applies to fails here
    settings = run_settings(base_model, revision, few_shot or "synthetic", config.results_dict())
    thread_counts = [torch.get_num_threads()]
    earlier: tuple[float, int] | None = None  # set once this process holds the folder and starts computing
    try:  # the folder is held from its claim until this run ends, however it ends
        if accelerator.is_main_process:
            eval_folder = evalset.source.name if evalset is not None and evalset.source.kind == "local" else None
            data_folders = tuple(str(folder) for folder in (few_shot_folder(few_shot) if few_shot else None,
                                                           eval_folder) if folder)
            local_inputs = tuple(source for source in (base_model, *data_folders, synthesis_dir) if source)
            layout.claim(settings, overwrite=overwrite, inputs=local_inputs, data_folders=data_folders)
            if few_shot and (layout.dataset_dir.exists() or layout.dataset_dir.is_symlink()):
                raise ConfigError(
                    f"{layout.dataset_dir} exists, but a few-shot run makes no synthetic images, and `genie_hub push` "
                    "would publish that folder as this model's calibration set. Move it out of the output folder, "
                    "or pass --overwrite to start over there.")
            thread_counts = layout.record_threads(torch.get_num_threads())
            if len(thread_counts) > 1:
                logger.warning(
                    "This run continues work made at another torch thread count (%s; now %d). The parts already "
                    "finished keep that count's float rounding, so the result matches an uninterrupted run at neither "
                    "count; run.json and the card then give no thread count to reproduce it with.",
                    ", ".join(map(str, thread_counts)), torch.get_num_threads())
            logger.info("genie_hub: %s -> W%dA%d, %s profile, output %s", base_model, config.weight_bits,
                        config.act_bits, config.profile, layout.root)
            earlier = layout.earlier_elapsed()  # the commands before this one, counted with it in run.json
        accelerator.wait_for_everyone()
        if config.profile == "paper" and accelerator.device.type == "cpu" and accelerator.is_main_process:
            warn_paper_on_cpu(fp_model, spec, config, zero_shot=not few_shot)

        if not few_shot:
            from .synthesis import synthesize

            calibration = synthesize(fp_model, config, spec=spec, output_dir=synthesis_dir or layout.synthetic_dir,
                                     accelerator=accelerator, progress=progress)
        if not accelerator.is_main_process:
            return None  # reconstruction, saving and publishing run on the main process only

        from .checkpoint import save_quantized
        from .quantization import quantize

        result = quantize(fp_model, calibration, config, accelerator=accelerator,
                          state_path=layout.reconstruction_state, progress=progress)
        result.model.to("cpu")
        fp_model.to("cpu")

        evaluation, evaluation_error = None, None
        if evalset is not None:
            try:
                evaluation = evaluate_on_dataset(fp_model, result.model, processor, spec, evalset, limit=eval_limit,
                                                 progress=progress)
            except Exception as exc:  # noqa: BLE001 - a stream that drops, a bad file: the model must not be lost
                evaluation_error = f"{type(exc).__name__}: {first_line(exc)}"
                logger.error(
                    "The evaluation on %s failed after quantization (%s). The quantized model is saved without "
                    "results; evaluate it once the dataset reads (`%s`), or rerun this command, which resumes.",
                    evalset.source.label, evaluation_error,
                    _evaluate_command(layout.model_dir, base_model, evalset, eval_limit))

        from .cards import base_license, library_versions, machine_description, render_dataset_card, render_model_card
        from .synthesis.loop import prefers_channels_last

        elapsed = time.time() - started  # this command's; run.json also counts the earlier ones in the folder
        run = RunRecord(
            base_model=base_model, base_model_revision=revision, base_model_id=base_model_id,
            zero_shot=calibration.zero_shot,
            calibration_source=few_shot or "synthetic (Genie-D)", num_calibration_images=len(calibration),
            has_image_processor=processor is not None,
            weight_bits=config.weight_bits, act_bits=config.act_bits, config=config.to_dict(),
            input_spec=spec.to_dict(),
            layers={name: layer.to_dict() for name, layer in result.layers.items()},
            units=[unit.to_dict() for unit in result.units], unit_errors=[vars(r) for r in result.report],
            float_attention=result.float_attention,
            evaluation=evaluation.to_dict() if evaluation else None, evaluation_error=evaluation_error,
            command=command or " ".join(shlex.quote(a) for a in ["genie_hub", *sys.argv[1:]]),
            versions=library_versions(), machine=machine_description(), num_processes=accelerator.num_processes,
            torch_threads=thread_counts[0] if len(thread_counts) == 1 else None,  # None: mixed, not reproducible
            adam_fused=fused_adam_supported(accelerator.device),
            synthesis_channels_last=None if few_shot else prefers_channels_last(accelerator.device),
            synthesis_workers=None if few_shot else calibration.synthesis_workers,
            synthesis_compiled=None if few_shot else calibration.synthesis_compiled,
            wall_seconds=round(elapsed, 1), total_wall_seconds=round(earlier[0] + elapsed, 1),
            total_commands=earlier[1] + 1, settings=settings)
        from .cards import public_names

        run.public = public_names(run)._asdict()  # here, where the run's relative paths resolve
        run.license = adapter_for(fp_model).card_metadata(fp_model).get("license") or base_license(
            run.public["base_model_hub_id"], revision)
        previous = _previous_record(layout)
        if evaluation is not None:
            run.results, run.results_protocol = _results_table(evaluation)
        elif previous is not None and previous.evaluation:  # the same model: its results still hold
            run.evaluation, run.results, run.results_protocol = (previous.evaluation, previous.results,
                                                                previous.results_protocol)
            logger.info("No evaluation in this run: the results of the earlier run in %s (the same settings, so the "
                        "same model) are kept.", layout.root)
        if calibration.zero_shot:
            run.synthetic = {"num_samples": len(calibration), "shape": list(calibration.pixel_values.shape[1:]),
                             "prior": calibration.prior, "loss_summary": calibration.loss_summary()}
        run.push, model_id, dataset_id = _pushed_ids(previous)
        model_id = model_id or layout.root.resolve().name
        dataset_id = dataset_id or f"{model_id}-calibration"
        edited = _edited_cards(layout, previous)
        card = str(render_model_card(run, repo_id=model_id, load_id=None if run.push else f"{model_id}/model"))
        card = card.encode("utf-8")
        save_quantized(result, layout.model_dir, processor=processor, keep_added_files=True,
                       extra_files={} if "model" in edited else {"README.md": card})
        if calibration.zero_shot:
            from .synthetic_dataset import export_synthetic_dataset

            def dataset_card(summary: dict):  # the card describes the files as written (features, sizes)
                run.synthetic["dataset"] = summary
                if "dataset" in edited:
                    return None
                return render_dataset_card(run, repo_id=dataset_id, model_repo_id=model_id if run.push else None,
                                           load_id=None if run.push else f"{layout.root.resolve().name}/dataset")

            export_synthetic_dataset(calibration.pixel_values, spec, calibration.batch_indices, layout.dataset_dir,
                                     dataset_card, storage=config.dataset_storage, keep_added_files=True)
        digests = {"model": card_sha256(layout.model_dir / "README.md"),
                   "dataset": card_sha256(layout.dataset_dir / "README.md"), **edited}
        run.cards = {kind: digest for kind, digest in digests.items() if digest}  # how `push` tells edited cards
        run.save(layout.run_file)  # last: a folder with run.json is a finished run
        _print_summary(run, layout.root, fashion_mnist_missing=fashion_mnist_missing)
        if push:
            from .hub import describe_push, push_output

            pushed = push_output(layout.root, repo_id=repo_id, dataset_repo_id=dataset_repo_id, private=private,
                                 token=token, revision=push_revision, create_pr=create_pr,
                                 commit_message=commit_message)
            print(describe_push(pushed), flush=True)
        return layout.root
    finally:
        if earlier is not None:
            try:
                layout.add_elapsed(time.time() - started)
            except OSError as exc:  # a full disk must not hide how the run ended
                logger.warning("Could not record this command's wall time in %s (%s).", layout.elapsed_file, exc)
        layout.unlock()


def _previous_record(layout: OutputLayout) -> RunRecord | None:
    """The record of the finished run this one repeats (same settings, so the same model), if any."""
    try:
        return RunRecord.load(layout.run_file)  # None after --overwrite: claim() deleted it
    except (OSError, ValueError):
        return None


def _edited_cards(layout: OutputLayout, previous: RunRecord | None) -> dict[str, str]:
    """{kind: the digest genie_hub recorded} for each card of a finished run that the user has edited since: a
    rerun keeps such a card as it is (and files added next to it), as `push` does, instead of rendering it again."""
    recorded = previous.cards if previous is not None and isinstance(previous.cards, dict) else {}
    edited = {}
    for kind, folder in (("model", layout.model_dir), ("dataset", layout.dataset_dir)):
        digest = card_sha256(folder / "README.md")
        if recorded.get(kind) and digest and digest != recorded[kind]:
            logger.warning("%s was edited after the run that wrote it: kept as it is (delete it and run this command "
                           "again for a card rendered from this run).", folder / "README.md")
            edited[kind] = recorded[kind]
    return edited


def _pushed_ids(previous: RunRecord | None) -> tuple[dict | None, str | None, str | None]:
    """(the push record, model repo id, dataset repo id) of `previous`: rerunning a published folder keeps what
    `genie_hub push` recorded, and its cards keep naming the published repos."""
    push = previous.push if previous is not None and isinstance(previous.push, dict) else None
    if not push:
        return None, None, None
    repo = lambda kind: (push.get(kind) or {}).get("repo_id") if isinstance(push.get(kind), dict) else None
    return push, repo("model"), repo("dataset")


def seconds_per_image(model, spec, batch_size: int = 32, budget_s: float = 5.0) -> float:
    """Seconds of one forward+backward pass of `model` per image on its device: the unit both Genie-D and Genie-M
    costs scale with. Timed at batch 4, then at `batch_size`, the runs' working batch, when that pass is projected
    to take at most `budget_s` (the faster of two passes each): a small model costs 3x more per image at batch 4
    than at 32 on a CPU, so batch 4 alone overstates its runs; a large one is compute-bound, and batch 4 is close
    enough.
    Leaves the model's parameters and gradients untouched."""
    from .adapters import model_logits

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    def timed(batch: int) -> float:
        x = torch.randn(batch, spec.channels, spec.height, spec.width, device=device, requires_grad=True)
        begin = time.perf_counter()
        torch.autograd.grad(model_logits(model, x).float().square().sum(), x)  # no .grad lands on the model
        return (time.perf_counter() - begin) / batch

    try:  # two passes per batch size, the faster kept: the first pass at a new shape pays for allocation
        per_image = min(timed(4), timed(4))
        if batch_size > 4 and per_image * batch_size <= budget_s:
            per_image = min(timed(batch_size), timed(batch_size))
    finally:
        model.train(was_training)
    return per_image


def synthesis_seconds_per_image(model, spec, config: GenieConfig, budget_s: float = 5.0) -> float:
    """Seconds per image of one real synthesis step (generator, model, prior, swing convolutions) on the model's
    device: with a small model the generator and the prior cost more than the model's own pass (2-13x for the
    tiny test models), so that pass alone understates synthesis. Each timing is the difference between 3 and 1
    iterations of a fresh batch, so setting up the batch is not counted; at batch 4, then at the run's synthesis
    batch when that is projected to take at most `budget_s`. Leaves the model and every random stream as they were."""
    import dataclasses
    import random

    from .synthesis import synthesize_batch
    from .synthesis.loop import synthesis_autocast

    device = next(model.parameters()).device
    autocast = synthesis_autocast(config, device)

    def timed(batch: int) -> float:
        seconds = []
        for iterations in (1, 3):
            steps = dataclasses.replace(config, synthesis_iterations=iterations, compile=False)
            begin = time.perf_counter()
            synthesize_batch(model, spec, batch, 0, steps, device=device, autocast=autocast, progress=False)
            seconds.append(time.perf_counter() - begin)
        return max(seconds[1] - seconds[0], seconds[1] / 6) / 2 / batch  # / 6: a floor if timing noise wins

    python_state = random.getstate()
    with torch.random.fork_rng(devices=[]), preserved_state(model):
        model.eval().requires_grad_(False)  # as synthesis runs it: gradients for the images only
        try:
            per_image = timed(4)
            if config.synthesis_batch_size > 4 and 3 * per_image * config.synthesis_batch_size <= budget_s:
                per_image = timed(config.synthesis_batch_size)
        finally:
            random.setstate(python_state)
    return per_image


def warn_paper_on_cpu(model, spec, config: GenieConfig, zero_shot: bool = True) -> float:
    """Warn, with the projected duration, that the paper profile is starting on a CPU; returns the projection."""

    projected = projected_seconds(num_samples=config.num_samples, synthesis_iterations=config.synthesis_iterations,
                                  reconstruction_steps=config.reconstruction_steps,
                                  reconstruction_batch_size=config.reconstruction_batch_size,
                                  seconds_per_image=seconds_per_image(model, spec, config.reconstruction_batch_size),
                                  synthesis_seconds_per_image=synthesis_seconds_per_image(model, spec, config)
                                  if zero_shot else 0.0)
    logger.warning(paper_cpu_warning(projected))
    return projected


def _requested_processes(parent_command: list[str]) -> int | None:
    """The `--num_processes N` of an `accelerate launch` command line, None when it has none."""
    for index, token in enumerate(parent_command):
        for flag in ("--num_processes", "--num-processes"):
            if token == flag and index + 1 < len(parent_command):
                value = parent_command[index + 1]
            elif token.startswith(flag + "="):
                value = token.split("=", 1)[1]
            else:
                continue
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _parent_command() -> list[str]:
    """The parent process's argv (Linux /proc; empty elsewhere)."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as handle:
            return [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def _configured_processes(parent_command: list[str]) -> int | None:
    """`num_processes` of the accelerate config file the launcher reads (--config_file, else the default one)."""
    try:
        from accelerate.commands.config.config_args import default_config_file, load_config_from_file

        path = next((parent_command[i + 1] for i, word in enumerate(parent_command[:-1])
                     if word in ("--config_file", "--config-file")), None)
        path = path or next((w.split("=", 1)[1] for w in parent_command if w.startswith("--config_file=")), None)
        if path is None and not os.path.isfile(default_config_file):
            return None
        return int(load_config_from_file(path).num_processes)
    except Exception:  # noqa: BLE001 - no config, an unreadable one: nothing was asked for
        return None


def check_launch(accelerator, parent_command: list[str] | None = None) -> None:
    """Refuse, before any compute, a multi-process launch that accelerate turned into one process.

    On a machine without GPUs `accelerate launch --num_processes N` (with --cpu, or from a config file, or with
    neither) starts ONE process and tells the program nothing; genie_hub sees it from the launcher's command line
    (the parent process) or its config file, and says which command runs N CPU processes (torch.distributed's
    launcher, `--multi_gpu`, with ACCELERATE_USE_CPU=1). And `--multi_gpu` without ACCELERATE_USE_CPU=1 there
    starts N processes that each see one: every one would run the whole job into the same folder."""
    world = os.environ.get("WORLD_SIZE", "")
    if world.isdigit() and int(world) > accelerator.num_processes:
        raise ConfigError(
            f"This is one of {world} processes that torch.distributed's launcher started (WORLD_SIZE={world}), but "
            f"accelerate runs each as a single process (no GPU per process), so every one would run the whole job "
            "into the same output folder. On CPU run `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
            f"--num_processes {world} -m genie_hub quantize ...` (gloo backend), or launch one process.")
    if accelerator.num_processes > 1:
        return
    command = _parent_command() if parent_command is None else parent_command
    if not any("accelerate" in part for part in command[:3]):
        return
    requested = _requested_processes(command) or _configured_processes(command)
    if requested is not None and requested > 1:
        raise ConfigError(
            f"`accelerate launch` with {requested} processes (--num_processes or its config file) starts a single "
            "process on this machine (without GPUs, accelerate's --cpu and default launchers ignore "
            f"--num_processes), so this run would use one process, not {requested}. For {requested} CPU processes "
            f"run `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes {requested} -m genie_hub "
            "quantize ...` (torch.distributed on CPU, gloo backend), or drop --num_processes to run one process.")


def _open_evaluation(evaluate: str | None, model: str | None, fp_model, image_column: str | None,
                     label_column: str | None, unlabelled: bool = False) -> tuple[EvalSet | None, bool]:
    """(the checked evaluation set or None, whether the automatic Fashion-MNIST evaluation was skipped), before
    any compute. "auto": Fashion-MNIST for the embedded model, skipped with a warning when its files are not
    installed; nothing for other models."""
    from .evaluation import open_evaluation

    if evaluate in (None, "", "none"):
        return None, False
    if evaluate == "auto":
        if not is_default_model(model):
            return None, False
        given = [flag for flag, value in (("--eval-image-column", image_column), ("--eval-label-column", label_column),
                                          ("--eval-unlabelled", unlabelled)) if value]
        if given:  # said, not ignored, as with --eval-dataset fashion-mnist
            raise ConfigError(f"{', '.join(given)}: --eval-dataset auto evaluates the embedded model on Fashion-MNIST's "
                              "local files, which hold labelled images with no columns to choose. Leave them out, or "
                              "name the dataset they are for with --eval-dataset.")
        try:
            return open_evaluation("fashion-mnist", fp_model), False
        except DataError as exc:
            logger.warning("Skipping the evaluation: %s", exc)
            return None, True
    return open_evaluation(evaluate, fp_model, image_column=image_column, label_column=label_column,
                           unlabelled=unlabelled), False


def _results_table(evaluation: DatasetEvaluation) -> tuple[list[dict], str]:
    """The card's results rows (and their model-index metadata) and the sentence saying how they were measured."""
    fashion = evaluation.dataset.startswith("fashion-mnist")
    where = "Fashion-MNIST" if fashion else evaluation.dataset
    if evaluation.fp32_top1 is None:  # unlabelled images: how often the quantized model agrees with FP32
        row = {"name": f"{where}: top-1 agreement with FP32 ({evaluation.num_images} images)", "fp32": "100.00",
               "quantized": f"{100 * evaluation.top1_agreement:.2f}", "metric": "agreement",
               "quantized_value": round(100 * evaluation.top1_agreement, 2)}
        return [row], (f"Top-1 agreement (%) with the FP32 model on {evaluation.num_images} unlabelled images "
                       f"of {where}; KL(FP32 || quantized) {evaluation.kl_fp_q:.4g}.")
    split = evaluation.evaluated_split
    rows = [{"name": f"{where} {split} {metric} ({evaluation.num_images} images)",
             "fp32": f"{100 * fp:.2f}", "quantized": f"{100 * q:.2f}", "quantized_value": round(100 * q, 2),
             "metric": metric, "dataset_type": "zalando-datasets/fashion_mnist" if fashion else evaluation.hub_id,
             "dataset_name": where, "dataset_config": evaluation.config, "split": split}
            for metric, fp, q in (("top-1", evaluation.fp32_top1, evaluation.quantized_top1),
                                  ("top-5", evaluation.fp32_top5, evaluation.quantized_top5)) if q is not None]
    part = (f"the {split} split" if evaluation.complete
            else f"the first {evaluation.num_images} images of the {evaluation.split} split ({split})"
            if not evaluation.skipped_rows
            else f"the {evaluation.num_images} readable, labelled images among the first {evaluation.rows_read} "
                 f"rows of the {evaluation.split} split ({split})")
    protocol = (f"Accuracy (%) on {part} of {where}, measured by genie_hub right after "
                f"quantization; top-1 agreement with FP32 {100 * evaluation.top1_agreement:.2f} %, "
                f"KL(FP32 || quantized) {evaluation.kl_fp_q:.4g}.")
    return rows, protocol


def _print_summary(run: RunRecord, out: Path, fashion_mnist_missing: bool = False) -> None:
    """The closing lines of `genie_hub quantize`; `fashion_mnist_missing`: the automatic evaluation of the embedded
    model was skipped because the test data is not installed (not when the user chose --eval-dataset none)."""
    lines = [f"Done in {format_duration(run.wall_seconds)}. Output: {out}"]
    if run.unit_errors:
        better = sum(e["error_reconstructed"] < e["error_round_to_nearest"] for e in run.unit_errors)
        kept = sum(e.get("kept") == "round-to-nearest" for e in run.unit_errors)
        lines.append(f"Reconstruction lowered the output error of {better}/{len(run.unit_errors)} units below "
                     "round-to-nearest" + (f"; {kept} kept round-to-nearest, which was better." if kept else "."))
    if run.evaluation and run.evaluation.get("fp32_top1") is None:
        ev = run.evaluation
        lines.append(f"{ev['dataset']}: top-1 agreement with FP32 on {ev['num_images']} unlabelled images "
                     f"{100 * ev['top1_agreement']:.2f} %, KL {ev['kl_fp_q']:.4g}")
    elif run.evaluation:
        ev = run.evaluation
        where = ev["dataset"] if ev["dataset"].endswith(f":{ev['split']}") else f"{ev['dataset']} {ev['split']}"
        images = f"{ev['num_images']} images" if ev.get("complete", True) else f"the first {ev['num_images']} images"
        if not ev.get("complete", True) and (ev.get("rows_read") or ev["num_images"]) > ev["num_images"]:
            images = f"{ev['num_images']} images of the first {ev['rows_read']} rows"  # the others were skipped
        lines.append(f"{where} top-1 on {images}: FP32 {100 * ev['fp32_top1']:.2f} % | "
                     f"W{run.weight_bits}A{run.act_bits} {100 * ev['quantized_top1']:.2f} % "
                     f"(agreement {100 * ev['top1_agreement']:.2f} %)")
    elif fashion_mnist_missing:
        lines.append("Fashion-MNIST test data not found, so no accuracy was measured: install it with "
                     "`apt-get install dataset-fashion-mnist` (or set GENIE_HUB_FASHION_MNIST_DIR) and run "
                     f"`genie_hub evaluate {shlex.quote(str(out / 'model'))} --dataset fashion-mnist`.")
    lines.append(f"Load it: AutoModelForImageClassification.from_pretrained({str(out / 'model')!r}) after "
                 f"`import genie_hub`; publish it: genie_hub push {shlex.quote(str(out))}")
    print("\n".join(lines), flush=True)
