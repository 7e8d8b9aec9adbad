"""The model zoo: a registry of quantized models, built into one folder, published with a leaderboard.

    genie_hub zoo list                       what is registered, built and published
    genie_hub zoo build [NAMES]              builds the missing entries (resumable; a failure does not stop the rest)
    genie_hub zoo publish --namespace NS     pushes every built entry, then the leaderboard repo NS/genie-hub-zoo

The registry (`registry.json` beside this file, or `--registry FILE`) holds one entry per model. Each entry is
built with `pipeline.run_quantization` into `ZOO_DIR/<name>/` (a normal output folder, so it resumes and
publishes like any other); `ZOO_DIR/leaderboard.md|json` summarize every built entry.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import REPOSITORY_URL
from ..config import GenieConfig
from ..errors import ConfigError, GenieError, first_line
from ..fileio import write_bytes, write_json
from ..hub import CALIBRATION_SUFFIX, REPO_NAME_MAX
from ..outputs import OutputLayout, RunRecord

logger = logging.getLogger("genie_hub.zoo")

REGISTRY = Path(__file__).resolve().parent / "registry.json"
LEADERBOARD = "leaderboard"
ZOO_REPO = "genie-hub-zoo"
"""Name of the model repo whose card holds the published leaderboard."""


MODEL_RECIPES = ("recipe:efficientnet-lite0",)
EVAL_RECIPES = ("recipe:sample-photos",)
SET_BY_ENTRY = {"weight_bits": "weight_bits", "act_bits": "act_bits", "profile": "profile", "synthesis_prior": "prior"}
"""GenieConfig fields that an entry sets with its own keys (field: entry key): `settings` must not set them again."""


@dataclass
class ZooEntry:
    name: str
    model: str  # "embedded" (the default model), "embedded:<asset folder>", "recipe:efficientnet-lite0", a Hub id, a folder
    weight_bits: int
    act_bits: int
    profile: str = "quick"
    eval_dataset: str | None = None  # any --eval-dataset source, or "recipe:sample-photos"
    eval_unlabelled: bool = False  # the evaluation images have no labels: agreement with FP32 only
    prior: str = "auto"
    few_shot: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # further GenieConfig fields
    built_here: bool = True

    def config(self) -> GenieConfig:
        return GenieConfig.from_profile(self.profile, weight_bits=self.weight_bits, act_bits=self.act_bits,
                                        synthesis_prior=self.prior, **self.settings)

    def problems(self) -> list[str]:
        """What makes this entry unusable before its settings are even read: a name that is not one plain folder
        name (it becomes ZOO_DIR/<name>, and `..` or `/` would write outside the zoo folder), values of the wrong
        type, or settings that are not GenieConfig fields."""
        found = []
        name = self.name
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or ".." in name:
            found.append(f"name {name!r} must be one folder name of letters, digits, '.', '_' and '-' (no '/' or "
                         "'..')")
        elif not _hub_repo_name(name):
            found.append(f"name ({len(name)} characters) must be a Hub repo name, since `zoo publish` pushes the entry "
                         f"as NAMESPACE/<name> and its calibration images as NAMESPACE/<name>{CALIBRATION_SUFFIX}: "
                         "letters, digits, '.', '_' and '-', not ending with '.' or '-', without '--' or '..', not "
                         f"ending with '.git', and at most {MAX_NAME} characters")
        for key in ("model", "profile", "prior"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key).strip():
                found.append(f"{key} must be a non-empty string, got {getattr(self, key)!r}")
        for key in ("weight_bits", "act_bits"):  # "4" in JSON is a string: said here, with the entry's name
            if not isinstance(getattr(self, key), int) or isinstance(getattr(self, key), bool):
                found.append(f"{key} must be a whole number (4, not \"4\"), got {getattr(self, key)!r}")
        for key in ("eval_dataset", "few_shot"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                found.append(f"{key} must be a string or null, got {getattr(self, key)!r}")
        for key, known in (("model", MODEL_RECIPES), ("eval_dataset", EVAL_RECIPES)):
            value = getattr(self, key)
            if isinstance(value, str) and value.startswith("recipe:") and value not in known:
                found.append(f"{key} {value!r} is not a recipe genie_hub has (recipes: {', '.join(known)})")
        for key in ("eval_unlabelled", "built_here"):
            if not isinstance(getattr(self, key), bool):
                found.append(f"{key} must be true or false, got {getattr(self, key)!r}")
        if not isinstance(self.settings, dict):
            found.append(f"settings must be an object of GenieConfig fields, got {self.settings!r}")
        else:
            known = {f.name for f in dataclasses.fields(GenieConfig)}
            unknown = sorted(set(self.settings) - known)
            if unknown:
                found.append(f"settings has unknown GenieConfig field(s) {', '.join(map(str, unknown))}")
            repeated = [key for key in SET_BY_ENTRY if key in self.settings]
            if repeated:
                found.append("settings repeats " + ", ".join(f"{key} (set it with the entry's own "
                                                              f"{SET_BY_ENTRY[key]!r} key only)" for key in repeated))
        return found


MAX_NAME = REPO_NAME_MAX - len(CALIBRATION_SUFFIX)
"""The longest entry name whose repos are valid Hub repo names (its calibration dataset's name is longer)."""


def _hub_repo_name(name: str) -> bool:
    """Whether NAMESPACE/`name` and its calibration dataset NAMESPACE/`name`-calibration are valid Hub repo ids."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        for repo_name in (name, name + CALIBRATION_SUFFIX):
            validate_repo_id(f"ns/{repo_name}")
    except HFValidationError:
        return False
    return True


def _zoo_folder(zoo_dir: str | os.PathLike) -> Path:
    """The zoo folder of `list`, `build` and `publish`: a file there is refused by each alike (`list` read it as a
    zoo with nothing built)."""
    zoo_dir = Path(zoo_dir)
    if zoo_dir.exists() and not zoo_dir.is_dir():
        raise ConfigError(f"The zoo folder {zoo_dir} is a file. Pass a folder with -o.")
    return zoo_dir


def load_registry(path: str | os.PathLike | None = None) -> list[ZooEntry]:
    """The entries of a registry file, checked: unique names, known keys, valid settings."""
    path = Path(path) if path is not None else REGISTRY
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # Windows editors may start UTF-8 with a BOM
        raw = data["entries"]
        entries = [ZooEntry(**item) for item in raw]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"The zoo registry {path} is unreadable or malformed ({type(exc).__name__}: {exc}). Each "
                          "entry needs name, model, weight_bits and act_bits.") from None
    for entry in entries:
        problems = entry.problems()
        if problems:
            shown = repr(entry.name) if len(str(entry.name)) <= 100 else repr(entry.name[:100]) + "..."
            raise ConfigError(f"The zoo registry {path} has an invalid entry {shown}: {'; '.join(problems)}.")
        try:
            entry.config()
        except ConfigError as exc:
            raise ConfigError(f"The zoo registry {path} has an invalid entry {entry.name!r}: {exc}") from None
    names = [entry.name for entry in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"The zoo registry {path} repeats the entry name(s) {', '.join(duplicates)}.")
    for entry in entries:
        entry.config()  # invalid bits or settings fail here, before anything is built
    return entries


def select(entries: list[ZooEntry], names: list[str] | None, *, built_here_only: bool) -> list[ZooEntry]:
    if names:
        unknown = [name for name in names if name not in {entry.name for entry in entries}]
        if unknown:
            raise ConfigError(f"Unknown zoo entr{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}. "
                              f"Registered: {', '.join(entry.name for entry in entries)}.")
        return [entry for entry in entries if entry.name in names]
    return [entry for entry in entries if entry.built_here or not built_here_only]


RESOLVED_AT_RUN = {"mixed_precision": None, "synthesis_precision": "auto"}
"""GenieConfig fields a run resolves on its machine when left at these values; run.json holds the result."""


@dataclass(frozen=True)
class EntryState:
    """What ZOO_DIR/<name> holds for its registry entry now.

    kind: "missing" (nothing finished: building it resumes what an interrupted build left), "built",
    "unevaluated" (built, but without an evaluation on the entry's evaluation set: it failed, or the set
    changed; building it again evaluates it, without quantizing again), "damaged" (built with the entry's
    settings, but files are missing or unreadable: building it again repairs it from the finished work) or
    "stale" (built for other settings than the entry now asks for, or with none readable: it is never taken
    for the entry, and only deleting the folder lets it be rebuilt)."""

    kind: str
    reason: str = ""
    record: RunRecord | None = None
    settings: dict | None = None  # what the folder was built (or started) with, where readable


def entry_state(zoo_dir: Path, entry: ZooEntry) -> EntryState:
    """Compare the folder with everything that decides the entry's result: base model, calibration source and
    the GenieConfig it makes (bits, profile, prior, settings), as `claim` compares a rerun's; then its files."""
    layout = OutputLayout(zoo_dir / entry.name)
    record, damage = _read_record(layout.run_file)
    settings = (record.settings if record is not None and isinstance(record.settings, dict)
                else _started_settings(layout))
    if settings is None:
        if damage:
            return EntryState("stale", f"{damage}, and no settings to check it against or resume it with")
        if record is not None:
            return EntryState("stale", "an older genie_hub built it without recording its settings")
        if layout.holds_results():
            return EntryState("stale", "the folder is not empty and is not a genie_hub output folder")
        return EntryState("missing")
    change = _settings_change(settings, entry, zoo_dir)
    if change:
        return EntryState("stale", change, None, settings)
    if record is None and damage is None:
        return EntryState("missing", settings=settings)
    damage = damage or _missing_files(layout, record)
    if damage:
        return EntryState("damaged", damage, None, settings)
    unevaluated = _evaluation(record, entry)[1]
    if unevaluated:
        return EntryState("unevaluated", unevaluated, record, settings)
    return EntryState("built", record=record, settings=settings)


def _evaluation(record: RunRecord, entry: ZooEntry) -> tuple[dict | None, str | None]:
    """(the record's evaluation on the entry's evaluation set, or None; why it lacks one the entry asks for).
    Sets are compared as run.json names them: a local folder's name, a Hub id with config and split."""
    got = record.evaluation
    if entry.eval_dataset in (None, "", "none"):
        return None, None
    if entry.eval_dataset == "auto":  # the pipeline's choice: any evaluation, or none
        return got, None
    label, split = _eval_name(entry.eval_dataset)
    if got and got.get("dataset") == label and split in (None, got.get("split")) and (
            got.get("fp32_top1") is None) == entry.eval_unlabelled:
        return got, None
    if record.evaluation_error:
        return None, f"evaluation failed: {record.evaluation_error}"
    if got:
        return None, (f"evaluated on {got.get('dataset')} ({got.get('split')}"
                      f"{', unlabelled' if got.get('fp32_top1') is None else ''}), the registry now asks for "
                      f"{label}{' (unlabelled)' if entry.eval_unlabelled else ''}")
    return None, "not evaluated"


def _eval_name(source: str) -> tuple[str, str | None]:
    """(the name run.json gives the evaluation set `source`, its split where the source names one)."""
    from ..data.eval_datasets import EvalSource

    if source == "recipe:sample-photos":
        return "sample-photos", None
    try:
        parsed = EvalSource.parse(source)
    except GenieError:  # e.g. a folder that is gone: no recorded evaluation is on it
        return source, None
    return parsed.label, parsed.split


def _read_record(path: Path) -> tuple[RunRecord | None, str | None]:
    """(the record, what makes it unusable or None). A malformed record is returned too: its settings may
    still say whether the folder can be resumed."""
    try:
        record = RunRecord.load(path)
    except (OSError, ValueError) as exc:
        return None, f"its run.json is unreadable ({exc})"
    if record is None:
        return None, None
    expected = {"config": dict, "layers": dict, "settings": (dict, type(None)), "evaluation": (dict, type(None)),
                "push": (dict, type(None))}
    wrong = [key for key, kind in expected.items() if not isinstance(getattr(record, key), kind)]
    if wrong:
        return record, f"its run.json is malformed ({', '.join(wrong)} of the wrong type)"
    if not record.complete:
        return record, "its run.json records no finished run (no quantized layers)"
    return record, None


def _started_settings(layout: OutputLayout) -> dict | None:
    """The settings an interrupted run recorded before computing (work/settings.json), if readable."""
    try:
        settings = json.loads(layout.settings_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return settings if isinstance(settings, dict) else None


def _missing_files(layout: OutputLayout, record: RunRecord) -> str | None:
    """Which file a built folder lacks (model config and weights; the calibration set of a zero-shot run)."""
    from ..checkpoint.config import WEIGHTS_NAME
    from ..checkpoint.safetensors_check import weight_files

    if not (layout.model_dir / "config.json").is_file():
        return f"{layout.model_dir / 'config.json'} is missing"
    try:
        files = weight_files(layout.model_dir, WEIGHTS_NAME)
    except GenieError as exc:
        return first_line(exc)
    absent = [path for path in files or [layout.model_dir / WEIGHTS_NAME] if not path.is_file()]
    if absent:
        return f"{absent[0]} is missing"
    if record.synthetic and not any(layout.dataset_dir.glob("**/*.parquet")):
        return f"{layout.dataset_dir} (its calibration set) is missing"
    return None


def _settings_change(recorded: dict, entry: ZooEntry, zoo_dir: Path) -> str | None:
    """How the settings a folder was built with differ from those the entry makes now, or None."""
    from ..outputs import settings_change

    config = recorded.get("config")
    if not isinstance(config, dict):
        return "its recorded settings are malformed (no config)"
    change = settings_change(recorded, _wanted_settings(entry, zoo_dir, recorded))
    if change is None:
        return None
    return (f"it was built as W{config.get('weight_bits')}A{config.get('act_bits')} ({config.get('profile')} "
            f"profile) with other settings than the registry now asks for ({change})")


def _wanted_settings(entry: ZooEntry, zoo_dir: Path, recorded: dict | None) -> dict:
    """The settings (`outputs.run_settings`) the pipeline records for this entry."""
    from ..loading import resolve_model_path
    from ..outputs import run_settings

    return run_settings(resolve_model_path(_model_path(entry, zoo_dir)), None, entry.few_shot or "synthetic",
                        _run_config(entry, recorded).results_dict())


def _run_config(entry: ZooEntry, recorded: dict | None) -> GenieConfig:
    """The entry's config, with the fields a run resolves on its machine (`RESOLVED_AT_RUN`) taken from what the
    folder recorded where the entry leaves them open: they do not make it stale, and a rerun resumes it."""
    config = entry.config()
    old = (recorded or {}).get("config")
    if not isinstance(old, dict):
        return config
    resolved = {key: old[key] for key, open_value in RESOLVED_AT_RUN.items()
                if getattr(config, key) == open_value and old.get(key) is not None}
    return dataclasses.replace(config, **resolved)


def _model_path(entry: ZooEntry, zoo_dir: Path) -> str | None:
    """The entry's base model (a Hub id, or an absolute folder; None: the embedded default), not made yet."""
    from ..loading import ASSETS_DIR

    if entry.model == "embedded":
        return None
    if entry.model.startswith("embedded:"):
        return str(ASSETS_DIR / entry.model.split(":", 1)[1])
    if entry.model == "recipe:efficientnet-lite0":
        return os.path.abspath(zoo_dir / "_bases" / "efficientnet-lite0")
    return entry.model


def _model_source(entry: ZooEntry, zoo_dir: Path) -> str | None:
    """`_model_path`, with a recipe's folder made first."""
    path = _model_path(entry, zoo_dir)
    if entry.model == "recipe:efficientnet-lite0":
        from ..recipes import convert_efficientnet_lite0

        _prepared(Path(path), convert_efficientnet_lite0)
    return path


def _eval_source(entry: ZooEntry, zoo_dir: Path) -> str:
    if entry.eval_dataset == "recipe:sample-photos":
        from ..recipes import write_sample_photos

        return str(_prepared(zoo_dir / "_data" / "sample-photos", write_sample_photos))
    return entry.eval_dataset or "none"


def _prepared(folder: Path, make: Callable[[Path], Path]) -> Path:
    """`folder`, made by `make` unless an earlier build finished it. `make` writes the folder whole (a staging
    folder renamed into place) and `<folder>.complete` is written after it, so that a folder without the marker
    (what an interrupted build of an earlier genie_hub, which wrote in place, left) is made again, not used."""
    marker = folder.with_name(f"{folder.name}.complete")
    if not (folder.is_dir() and marker.is_file()):
        make(folder)
        write_bytes(marker, b"")
    return folder


def _synthesis_dir(entry: ZooEntry, zoo_dir: Path) -> Path:
    """Entries that differ only in bits make the same images: they share one shard folder (the shards carry the
    fingerprint of every setting that changes them, so a mismatch is refused, never mixed)."""
    import hashlib

    key = json.dumps([entry.model, entry.config().synthesis_fingerprint(), entry.config().num_samples,
                      entry.prior], sort_keys=True)
    return zoo_dir / "_synthetic" / hashlib.sha256(key.encode()).hexdigest()[:16]


def build(zoo_dir: str | os.PathLike, names: list[str] | None = None, *, registry: str | os.PathLike | None = None,
          progress: bool = True) -> dict[str, str]:
    """Build the selected entries that are not built yet; returns {name: "built" | "built, evaluation failed: ..."
    | "skipped (already built)" | "failed: ..."}. A damaged or unevaluated entry is run again (the pipeline
    resumes from its finished work); a stale one is reported, not touched. One entry's failure is logged and
    reported, and the others are still built. Writes the leaderboard."""
    zoo_dir = _zoo_folder(zoo_dir)
    entries = load_registry(registry)
    outcome: dict[str, str] = {}
    for entry in select(entries, names, built_here_only=True):
        try:
            outcome[entry.name] = _build_entry(zoo_dir, entry, progress)
        except (GenieError, OSError, RuntimeError, ValueError) as exc:
            first = first_line(exc) or type(exc).__name__
            logger.error("zoo: %s failed: %s", entry.name, first)
            outcome[entry.name] = f"failed: {first}"
    write_leaderboard(zoo_dir, entries)
    return outcome


def _build_entry(zoo_dir: Path, entry: ZooEntry, progress: bool) -> str:
    """One entry's outcome (see `build`); the pipeline's own checks decide whether its folder may be reused."""
    from ..pipeline import run_quantization

    state = entry_state(zoo_dir, entry)
    if state.kind == "stale":
        logger.error("zoo: %s was not rebuilt: %s. Delete %s to rebuild it.", entry.name, state.reason,
                     zoo_dir / entry.name)
        return f"failed: {state.reason}; delete {zoo_dir / entry.name} to rebuild it"
    if state.kind == "built":
        return "skipped (already built)"
    if state.kind in ("damaged", "unevaluated"):
        logger.warning("zoo: %s: %s; running it again (the finished work is reused, not recomputed).", entry.name,
                       state.reason)
    logger.info("zoo: building %s", entry.name)
    run_quantization(_model_source(entry, zoo_dir), _run_config(entry, state.settings),
                     output_dir=zoo_dir / entry.name, few_shot=entry.few_shot, evaluate=_eval_source(entry, zoo_dir),
                     eval_unlabelled=entry.eval_unlabelled, synthesis_dir=_synthesis_dir(entry, zoo_dir),
                     command=f"genie_hub zoo build {entry.name}", progress=progress)
    after = entry_state(zoo_dir, entry)
    return {"built": "built", "unevaluated": f"built, {after.reason}"}.get(after.kind, f"failed: {after.reason}")


def leaderboard_rows(zoo_dir: Path, entries: list[ZooEntry]) -> list[dict[str, Any]]:
    from ..cards import public_names

    rows = []
    for entry in entries:
        state = entry_state(zoo_dir, entry)
        if state.kind not in ("built", "unevaluated"):  # built for other settings, or damaged: not this entry's row
            continue
        record = state.record
        evaluation = _evaluation(record, entry)[0] or {}
        weights = zoo_dir / entry.name / "model" / "genie_model.safetensors"
        fp32, quantized = evaluation.get("fp32_top1"), evaluation.get("quantized_top1")
        unevaluated = state.kind == "unevaluated"
        rows.append({
            "name": entry.name, "model": public_names(record).base_model if entry.model != "embedded"
            else "fashion-mnist-resnet", "bits": f"W{entry.weight_bits}A{entry.act_bits}",
            "profile": entry.profile, "eval_dataset": _eval_name(entry.eval_dataset)[0] if unevaluated
            else evaluation.get("dataset"), "eval_split": evaluation.get("split"),
            "eval_status": ("evaluation failed" if record.evaluation_error else "not evaluated") if unevaluated
            else None,
            "num_images": evaluation.get("num_images"), "fp32_top1": fp32, "quantized_top1": quantized,
            "drop": None if fp32 is None else fp32 - quantized, "top1_agreement": evaluation.get("top1_agreement"),
            "file_bytes": weights.stat().st_size if weights.exists() else None, "wall_seconds": record.total_wall_seconds or record.wall_seconds,
            "hardware": record.machine, "repo_id": (record.push or {}).get("model", {}).get("repo_id")
            if record.push else None})
    return rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _eval_cell(row: dict[str, Any]) -> str:
    """The evaluation set, its size and kind; a failed or missing evaluation is said, never shown as unlabelled."""
    if row.get("eval_status"):
        return f"{row['eval_dataset']} ({row['eval_status']})"
    if row["num_images"] is None:
        return "-"
    return f"{row['eval_dataset']} ({row['num_images']} img{'' if row['fp32_top1'] is not None else ', unlabelled'})"


def leaderboard_markdown(rows: list[dict[str, Any]], link: bool = False) -> str:
    lines = ["| model | base | bits | profile | eval set | FP32 top-1 | quantized top-1 | drop | agreement | "
             "weights | wall time | hardware |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        name = f"[{row['name']}](https://huggingface.co/{row['repo_id']})" if link and row["repo_id"] else row["name"]
        size = "-" if row["file_bytes"] is None else f"{row['file_bytes'] / 1e6:.2f} MB"
        wall = "-" if row["wall_seconds"] is None else f"{row['wall_seconds'] / 60:.1f} min"
        lines.append(f"| {name} | {row['model']} | {row['bits']} | {row['profile']} | {_eval_cell(row)} | "
                     f"{_pct(row['fp32_top1'])} | "
                     f"{_pct(row['quantized_top1'])} | {_pct(row['drop'])} | {_pct(row['top1_agreement'])} | {size} | "
                     f"{wall} | {row['hardware']} |")
    return "\n".join(lines) + "\n"


def write_leaderboard(zoo_dir: Path, entries: list[ZooEntry]) -> list[dict[str, Any]]:
    rows = leaderboard_rows(zoo_dir, entries)
    zoo_dir.mkdir(parents=True, exist_ok=True)
    write_json(zoo_dir / f"{LEADERBOARD}.json", {"entries": rows}, sort_keys=False)
    write_bytes(zoo_dir / f"{LEADERBOARD}.md", ("# genie_hub zoo\n\nBuilt with `genie_hub zoo build`; accuracy in %, "
                                                "drop = FP32 - quantized (points).\n\n"
                                                + leaderboard_markdown(rows)).encode("utf-8"))
    return rows


def publish(zoo_dir: str | os.PathLike, namespace: str, *, registry: str | os.PathLike | None = None,
            private: bool = False, token: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Push every built entry as NS/<name> (+ NS/<name>-calibration), then the leaderboard repo NS/genie-hub-zoo,
    whose card links every entry. Re-running updates the same repos in place. A stale, damaged, unevaluated or
    missing folder (`entry_state`) is not published (under `skipped`, with what to do); a failure to push the
    leaderboard repo is a PushError. `dry_run`: every check, and each entry's push plan (`push_output`'s dry run)
    under `entries`, with nothing pushed or written."""
    from ..hub import check_push_ready, push_output

    _check_namespace(namespace)
    zoo_dir = _zoo_folder(zoo_dir)
    check_push_ready(token)
    entries = load_registry(registry)
    built, skipped = [], {}
    for entry in entries:
        state = entry_state(zoo_dir, entry)
        fix = {"stale": f"delete {zoo_dir / entry.name} and run `genie_hub zoo build {entry.name}` to rebuild it",
               "damaged": f"run `genie_hub zoo build {entry.name}` to repair it",
               "unevaluated": f"run `genie_hub zoo build {entry.name}` to evaluate it"}.get(state.kind)
        if fix:
            logger.warning("zoo: %s is not published: %s; %s.", entry.name, state.reason, fix)
            skipped[entry.name] = f"skipped: {state.reason}; {fix}"
        elif state.kind == "built":
            built.append(entry)
        else:  # missing: said, so that a leaderboard short of an entry is not a surprise
            skipped[entry.name] = f"not built in {zoo_dir} (`genie_hub zoo build {entry.name}` builds it)"
    if not built:
        raise ConfigError(f"Nothing to publish: no zoo entry is built in {zoo_dir} for its current registry settings"
                          f"{' (see the warnings above)' if skipped else ''}. Run `genie_hub zoo build` first.")
    _check_before_pushing(zoo_dir, built, namespace, token)
    if dry_run:
        plans = {entry.name: push_output(zoo_dir / entry.name, repo_id=f"{namespace}/{entry.name}", private=private,
                                         token=token, dry_run=True) for entry in built}
        return {"dry_run": True, "entries": plans, "skipped": skipped, "leaderboard": f"{namespace}/{ZOO_REPO}"}
    pushed = {}
    for entry in built:
        result = push_output(zoo_dir / entry.name, repo_id=f"{namespace}/{entry.name}", private=private, token=token)
        pushed[entry.name] = result["model"]["repo_id"]
    rows = write_leaderboard(zoo_dir, entries)
    repo_id = f"{namespace}/{ZOO_REPO}"
    _push_leaderboard(repo_id, rows, list(pushed.values()), private=private, token=token)
    return {"entries": pushed, "skipped": skipped, "leaderboard": repo_id}


def _check_namespace(namespace: str) -> None:
    """A Hub user or organization name: an empty one would publish the entries under the token's own user."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(f"{namespace}/x")
        valid = bool(namespace.strip())
    except HFValidationError:
        valid = False
    if not valid:
        raise ConfigError(f"--namespace {namespace!r} is not a Hub user or organization name. Pass the one to "
                          "publish the zoo under (letters, digits, '-', '_' and '.'), e.g. --namespace my-org.")


def _check_before_pushing(zoo_dir: Path, built: list[ZooEntry], namespace: str, token: str | None) -> None:
    """Every repo and every entry folder `publish` will push, checked before the first upload, so that a bad one
    stops the publication before anything is on the Hub rather than halfway."""
    from ..errors import PushError
    from ..hub import check_output_folder, check_repo_ids

    targets = [("model", f"{namespace}/{ZOO_REPO}")]
    for entry in built:
        targets += [("model", f"{namespace}/{entry.name}"), ("dataset", f"{namespace}/{entry.name}-calibration")]
    check_repo_ids(targets, token)
    for entry in built:
        try:
            check_output_folder(zoo_dir / entry.name)
        except PushError as exc:
            raise PushError(f"Zoo entry {entry.name} cannot be published, so nothing was: {exc} Deleting "
                            f"{zoo_dir / entry.name / 'model'} and running `genie_hub zoo build {entry.name}` makes "
                            "its model again from the finished work; then publish again.") from None


def _push_leaderboard(repo_id: str, rows: list[dict[str, Any]], published: list[str], *, private: bool,
                      token: str | None) -> None:
    """The leaderboard repo's card and leaderboard.json, in one commit; a Hub failure is a PushError saying what
    is already published and that rerunning `zoo publish` completes it."""
    from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, ModelCardData

    from ..errors import PushError
    from ..hub import _endpoint, _reason

    card = ModelCard.from_template(
        ModelCardData(library_name="transformers", tags=["genie_hub", "quantized", "model-zoo"]), template_str="---\n{{ card_data }}\n---\n\n# genie_hub model zoo\n\n"
        f"Zero-shot quantized vision models made with [genie_hub]({REPOSITORY_URL}) "
        "(Genie, CVPR 2023). Load any of them with `import genie_hub` and "
        "`AutoModelForImageClassification.from_pretrained(repo_id)`.\n\n{{ table }}\n",
        table=leaderboard_markdown(rows, link=True))
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.create_commit(repo_id, operations=[
            CommitOperationAdd("README.md", str(card).encode("utf-8")),
            CommitOperationAdd(f"{LEADERBOARD}.json",
                               (json.dumps({"entries": rows}, indent=2) + "\n").encode("utf-8"))],
            commit_message="Update the genie_hub zoo leaderboard")
    except Exception as exc:
        raise PushError(
            f"Pushing the zoo leaderboard repo '{repo_id}' to {_endpoint()} failed ({_reason(exc)}). Already "
            f"published: {', '.join(published)}. Run the same `genie_hub zoo publish` command again to retry: files "
            "already on the Hub are not uploaded again.") from exc


def status(zoo_dir: str | os.PathLike, *, registry: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Per registered entry: built here or not, its state in zoo_dir (`entry_state`), published repo id."""
    zoo_dir = _zoo_folder(zoo_dir)
    rows = []
    for entry in load_registry(registry):
        state = entry_state(zoo_dir, entry)
        record = state.record
        rows.append({**asdict(entry), "built": state.kind == "built", "state": state.kind, "reason": state.reason,
                     "published": (record.push or {}).get("model", {}).get("repo_id") if record and record.push
                     else None})
    return rows
