"""Model and dataset cards, rendered from the Jinja templates in `model_cards/` and a `RunRecord`."""

from __future__ import annotations

import os
import platform
import shlex
from pathlib import Path
from typing import NamedTuple

from . import REPOSITORY_URL
from .config import format_override
from .outputs import RunRecord
from .synthesis.prior import describe_prior

TEMPLATE_DIRS = [Path(__file__).resolve().parent / "_bundled" / "model_cards",
                 Path(__file__).resolve().parent.parent / "model_cards"]


def template_path(name: str) -> Path:
    for directory in TEMPLATE_DIRS:
        if (directory / name).exists():
            return directory / name
    raise FileNotFoundError(f"Card template {name} not found in {[str(d) for d in TEMPLATE_DIRS]}")


def library_versions() -> dict[str, str]:
    import accelerate
    import datasets
    import huggingface_hub
    import torch
    import transformers

    from . import __version__

    return {"genie_hub": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "huggingface_hub": huggingface_hub.__version__, "datasets": datasets.__version__,
            "accelerate": accelerate.__version__, "python": platform.python_version()}


def machine_description() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    import os

    return f"CPU ({os.cpu_count()} cores, {platform.machine()})"


def _split_suffix(text: str) -> tuple[str, str]:
    """('folder', ':train') for a source given with its split ('folder:train'), else (text, '')."""
    base, colon, split = text.rpartition(":")
    if colon and base and split and not any(c in split for c in "/\\"):
        return base, colon + split
    return text, ""


def _is_local(text: str) -> bool:
    """A path on this machine rather than a Hub id ('owner/name' is a Hub id unless such a folder exists; a path
    of three or more parts never is), also with a ':split' after it."""
    for candidate in dict.fromkeys((text, _split_suffix(text)[0])):
        path = Path(candidate).expanduser()
        explicit = os.path.isabs(candidate) or candidate.startswith(("./", "../", "~", ".\\"))
        if explicit or path.is_dir() or (os.sep in candidate.strip(os.sep) and path.exists()) \
                or candidate.strip("/").count("/") >= 2:
            return True
    return False


def public_name(value: str | None) -> str | None:
    """What a card may say about a model or data source: a Hub id as is, a local path only as its folder name
    (cards are published; the paths of the machine that made them are not), with its ':split' where it has one."""
    if value is None:
        return None
    text = str(value)
    if not _is_local(text):
        return text
    base, suffix = _split_suffix(text)
    if suffix and not Path(text).expanduser().exists():  # 'clients/acme/photos:train' -> 'photos:train'
        return (Path(base.rstrip("/\\")).name or base) + suffix
    return Path(text.rstrip("/\\")).name or text


def public_command(command: str) -> str:
    """The command line with every local path reduced to its last component (`--flag=PATH` and `-oPATH` too)."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command

    def public_word(word: str) -> str:
        flag, equals, value = word.partition("=")
        if word.startswith("-") and equals:
            return f"{flag}={public_word(value)}" if value else word
        if len(word) > 2 and word[0] == "-" and word[1] != "-" and _is_local(word[2:]):  # `-o/abs/out`: attached
            return word[:2] + public_name(word[2:])
        return public_name(word) if _is_local(word) else word

    return shlex.join(public_word(word) for word in words)


def _hub_base(base_model: str | None) -> str | None:
    base = base_model or ""
    return base if not _is_local(base) and base.count("/") == 1 else None


class PublicNames(NamedTuple):
    """What the cards may say about where a run's model, data and command came from. Decided when the run is
    recorded (`public_names`), where relative paths resolve: a later `push` from another folder could not tell
    the local folder `models/x` from the Hub id `models/x`."""

    base_model: str | None  # a Hub id as is, a local folder as its name
    base_model_hub_id: str | None  # the card's `base_model:` link: --base-model, else the base when a Hub id
    calibration_source: str | None
    command: str


def public_names(run: RunRecord) -> PublicNames:
    """`run.public` when the run recorded it; else (records of older versions) decided now."""
    if run.public:
        return PublicNames(**run.public)
    return PublicNames(public_name(run.base_model), run.base_model_id or _hub_base(run.base_model),
                       public_name(run.calibration_source), public_command(run.command))


def base_license(model_id: str | None, revision: str | None = None) -> str | None:
    """The license on the base model's Hub card (None when offline, absent or unreadable: never fatal); for an
    embedded model (`genie-hub/<asset>`) the card installed with it."""
    if not model_id:
        return None
    try:
        from huggingface_hub import ModelCard

        from .loading import embedded_folder

        folder = embedded_folder(model_id)  # an embedded model's card ships with it: read offline
        readme = folder / "README.md" if folder is not None else None
        license_ = ModelCard.load(readme if readme is not None and readme.is_file() else model_id).data.license
    except Exception:
        return None
    return license_ if isinstance(license_, str) and license_ else None


def _branch(revision: str | None) -> str | None:
    """The revision a card's snippets must name: none for main (the default of every loader)."""
    return None if revision in (None, "main") else revision


def bits_tag(bits: int) -> str:
    return f"{bits}-bit"


def render_model_card(run: RunRecord, repo_id: str, dataset_repo_id: str | None = None, revision: str | None = None,
                      load_id: str | None = None):
    """The quantized model's card, for the model repo `repo_id` (linked to the calibration set's repo); its load
    snippets load `load_id` (default `repo_id`; before a push, the relative `OUT/model` folder, which loads from
    OUT's parent) and name `revision` when the model is pushed to a branch (main may be empty there)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    config = run.config
    eval_results = [EvalResult(task_type="image-classification", dataset_type=r["dataset_type"],
                               dataset_name=r["dataset_name"], dataset_config=r.get("dataset_config"),
                               dataset_split=r.get("split", "test"),
                               metric_type="accuracy" if r.get("metric", "top-1") == "top-1" else "top_5_accuracy",
                               metric_name=f"{r.get('metric', 'top-1')} accuracy", metric_value=r["quantized_value"],
                               verified=False)
                    for r in run.results if r.get("dataset_type")]
    names = public_names(run)
    hub_base = names.base_model_hub_id
    card_data = ModelCardData(
        base_model=hub_base, base_model_relation="quantized" if hub_base else None,
        library_name="transformers", pipeline_tag="image-classification", license=run.license,
        tags=["quantized", bits_tag(config["weight_bits"]), f"w{config['weight_bits']}a{config['act_bits']}", "genie",
              "zero-shot-quantization" if run.zero_shot else "few-shot-quantization", "genie_hub",
              "image-classification"],
        datasets=[dataset_repo_id] if dataset_repo_id else None, quantized_by="genie_hub",
        eval_results=eval_results or None,
        model_name=repo_id.split("/")[-1] if eval_results else None)  # the model-index needs a name, nothing else
    layers = run.layers
    units = run.units
    return ModelCard.from_template(
        card_data, template_path=str(template_path("genie_model_card.md")),
        model_name=repo_id.split("/")[-1], repo_id=repo_id, load_id=load_id or repo_id, revision=_branch(revision),
        base_model=names.base_model,
        dataset_repo_id=dataset_repo_id,
        weight_bits=config["weight_bits"], act_bits=config["act_bits"], zero_shot=run.zero_shot,
        calibration_source=names.calibration_source,
        num_samples=run.num_calibration_images or config["num_samples"], channels=run.input_spec.get("channels", 3),
        height=run.input_spec.get("height"), width=run.input_spec.get("width"),
        has_image_processor=run.has_image_processor is not False,
        prior=_prior(run), prior_description=describe_prior(_prior(run)),
        synthesis_iterations=config["synthesis_iterations"], synthesis_batch_size=config["synthesis_batch_size"],
        reconstruction_steps=config["reconstruction_steps"],
        reconstruction_batch_size=min(config["reconstruction_batch_size"],  # as reconstruction draws its batches
                                      run.num_calibration_images or config["reconstruction_batch_size"]),
        seed=config["seed"],
        first_layer_weight=config["first_layer"]["weight"], second_layer_act=config["second_layer_act_bits"],
        last_layer_weight=config["last_layer"]["weight"], last_layer_act=config["last_layer"]["act"],
        overrides=", ".join(f"`{format_override(pattern, bits)}`" for pattern, bits in
                            (config.get("overrides") or {}).items()) or None, layers=layers, num_units=len(units),
        attention_bits=sorted({l["act_bits"] for l in layers.values() if l["type"] == "QuantAttention"}),
        num_attention=sum(l["type"] == "QuantAttention" for l in layers.values()),
        num_float_attention=len(run.float_attention),
        num_block_units=sum(u["kind"] == "block" for u in units),
        num_layer_units=sum(u["kind"] == "layer" for u in units),
        results=[{"name": r["name"], "fp32": r["fp32"], "quantized": r["quantized"]} for r in run.results],
        results_protocol=run.results_protocol, command=names.command, versions=run.versions,
        machine=run.machine, repository_url=REPOSITORY_URL, torch_threads=run.torch_threads,
        num_processes=run.num_processes, synthesis_workers=run.synthesis_workers,
        synthesis_precision=config.get("synthesis_precision"), mixed_precision=config.get("mixed_precision"),
        wall_time=wall_time(run))


def wall_time(run: RunRecord) -> str:
    """The run's wall time for its card: of every command that computed in its folder where that is recorded
    (a resumed or re-evaluated run took them all), else of the command that finished it (older records)."""
    from .progress import format_duration

    if run.total_wall_seconds and (run.total_commands or 1) > 1:
        return (f"wall time {format_duration(run.total_wall_seconds)} over the {run.total_commands} commands that "
                f"computed it (resumed or rerun; the last took {format_duration(run.wall_seconds or 0)})")
    if run.wall_seconds:
        return f"wall time {format_duration(run.wall_seconds)}"
    return ""


SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))


def size_category(num_examples: int) -> str:
    """The Hub's `size_categories` value for a dataset of `num_examples` rows (as `datasets` chooses it)."""
    return next((name for bound, name in SIZE_CATEGORIES if num_examples < bound), "n>1B")


def _dataset_metadata(card_data, summary: dict) -> None:
    """`dataset_info` (features, split sizes) and `configs` (the data files), as `Dataset.push_to_hub` writes them."""
    from datasets import DatasetInfo, Features, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.splits import SplitDict
    from datasets.utils.metadata import MetadataConfigs

    splits = SplitDict()
    splits.add(SplitInfo(name="train", num_bytes=summary["num_bytes"], num_examples=summary["num_examples"]))
    info = DatasetInfo(features=Features.from_dict(summary["features"]), splits=splits,
                       download_size=summary["download_size"], dataset_size=summary["num_bytes"])
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    MetadataConfigs({"default": {"data_files": [{"split": "train", "path": summary["data_files"]}]}}
                    ).to_dataset_card_data(card_data)


def _prior(run: RunRecord) -> str:
    """The synthesis prior that made a zero-shot run's images (records from before priors were named: BN)."""
    return (run.synthetic or {}).get("prior") or "bn-statistics"


def render_dataset_card(run: RunRecord, repo_id: str, model_repo_id: str | None, revision: str | None = None,
                        load_id: str | None = None):
    """The synthetic calibration set's card, for the datasets repo `repo_id` (a zero-shot run's record); its
    `load_dataset` snippet loads `load_id` (default `repo_id`; before a push, the relative `OUT/dataset` folder, as
    the model card's snippet loads `OUT/model`) and names `revision` when the set is pushed to a branch.

    The images have no labels: the task category is `other` (not image-classification), annotations none."""
    from huggingface_hub import DatasetCard, DatasetCardData

    config = run.config
    names = public_names(run)
    num_samples, shape = run.synthetic["num_samples"], run.synthetic["shape"]
    summary = run.synthetic.get("dataset")  # written with the files (absent in records of older versions)
    storage = (summary or {}).get("storage") or config.get("dataset_storage", "exact")
    card_data = DatasetCardData(
        pretty_name=f"Genie synthetic calibration images for {names.base_model}", license=run.license,
        task_categories=["other"], annotations_creators=["no-annotation"],
        tags=["synthetic", "genie", "zero-shot-quantization", "calibration", "quantization", "genie_hub"],
        size_categories=[size_category(num_samples)])
    if summary:
        _dataset_metadata(card_data, summary)
    return DatasetCard.from_template(
        card_data, template_path=str(template_path("genie_dataset_card.md")), pretty_name=card_data.pretty_name,
        base_model=names.base_model, base_model_revision=run.base_model_revision, model_repo_id=model_repo_id,
        repo_id=repo_id, load_id=load_id or repo_id, revision=_branch(revision), shape=list(shape), shape_str=", ".join(str(s) for s in shape), num_samples=num_samples,
        synthesis_batch_size=config["synthesis_batch_size"], synthesis_iterations=config["synthesis_iterations"],
        latent_dim=config["latent_dim"], lr_latent=config["lr_latent"], lr_generator=config["lr_generator"],
        seed=config["seed"], prior=_prior(run), prior_description=describe_prior(_prior(run)),
        loss_summary=run.synthetic["loss_summary"], command=names.command,
        repository_url=REPOSITORY_URL, storage=storage,
        download_size=_size_text(summary["download_size"]) if summary else None)


def _size_text(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.1f} MB" if num_bytes >= 100_000 else f"{num_bytes / 1e3:.1f} kB"
