"""Publish -> the last step: push a quantized output folder to the Hugging Face Hub.

An output folder (``genie_hub quantize ... --output-dir OUT``) holds ``OUT/model`` (the model repo),
``OUT/dataset`` (the synthetic calibration set, absent for some few-shot runs) and ``OUT/run.json``.
Publishing creates (or reuses) a datasets repo and a model repo and uploads both; the model card's
``datasets:`` metadata is pointed at the calibration repo so the Hub links them.

Everything goes through ``huggingface_hub.HfApi``, so ``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HOME`` and
``HF_HUB_OFFLINE`` behave exactly as in the rest of the Hugging Face stack. Uploads are idempotent (the Hub
is asked which files it already has), so re-running ``genie_hub push OUT`` after an interrupted push completes
it. Nothing in OUT is touched by a failed push; a successful one records the repo ids in ``run.json`` and
saves the cards genie_hub rendered back to OUT (a card the user edited is published as is and left alone).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import shlex
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, NamedTuple

from .errors import PushError
from .fileio import write_bytes
from .outputs import OutputLayout, RunRecord, card_sha256

logger = logging.getLogger("genie_hub")

__all__ = ["check_output_folder", "check_push_options", "check_push_ready", "check_push_targets", "check_repo_ids",
           "default_repo_ids", "describe_push", "push_output", "push_space", "space_repo_id"]

REPO_NAME_MAX = 96  # the Hub's limit on the name part of a repo id
CALIBRATION_SUFFIX = "-calibration"


def _endpoint() -> str:
    """The Hub endpoint as messages and run.json show it: without credentials written into it
    (`HF_ENDPOINT=https://user:pass@mirror`); "(empty HF_ENDPOINT)" when it is set empty."""
    from huggingface_hub import constants

    endpoint = re.sub(r"(?<=://)[^/@]*@", "", constants.ENDPOINT)
    return endpoint or "(empty HF_ENDPOINT)"


def _reason(exc: BaseException) -> str:
    """One line describing an exception (HTTP errors from huggingface_hub are multi-line)."""
    response = getattr(exc, "response", None)
    if getattr(response, "status_code", None) is not None:
        try:
            request = response.request
            where = f" on {request.method} {str(request.url).split('?')[0]}"
        except Exception:  # httpx raises if a Response carries no request
            where = ""
        detail = " ".join(str(getattr(exc, "server_message", None) or "").split())
        return f"HTTP {response.status_code}{where}" + (f": {detail[:300]}" if detail else "")
    text = " ".join(str(exc).split()) if str(exc) else ""
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _status_code(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def check_push_ready(token: str | None = None) -> str:
    """Fail fast, before any compute, if a push could not work; return the Hub username.

    Checks, in order: offline mode (``HF_HUB_OFFLINE``), that a token exists (``token``, ``HF_TOKEN`` or the
    one stored by ``hf auth login``) and that the Hub at ``HF_ENDPOINT`` accepts it (``whoami``).
    """
    return _whoami(token)[0]


def _whoami(token: str | None) -> tuple[str, set[str]]:
    """(user name, namespaces the token can create repos in: the user and their organizations)."""
    from huggingface_hub import HfApi, get_token, is_offline_mode

    if is_offline_mode():
        raise PushError(
            "Cannot push to the Hugging Face Hub: offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is "
            "set), so every Hub request would fail. Unset it and run again (a `genie_hub quantize` run can also "
            "go without --push and be published later with `genie_hub push OUT`)."
        )
    token = token or get_token()
    if not token:
        raise PushError(
            "Cannot push to the Hugging Face Hub: no access token found. Set HF_TOKEN to a token with write "
            "access (https://huggingface.co/settings/tokens) or run `hf auth login`, then run again. Nothing was "
            "computed or uploaded yet."
        )
    endpoint = _endpoint()
    try:
        info = HfApi(token=token).whoami()
    except Exception as exc:
        status = _status_code(exc)
        if status in (401, 403):
            raise PushError(
                f"Cannot push to the Hugging Face Hub: the token was rejected by {endpoint} (HTTP {status}). "
                "Check HF_TOKEN (it takes precedence over `hf auth login`) and that the token has write access."
            ) from exc
        raise PushError(
            f"Cannot push to the Hugging Face Hub: checking the token against {endpoint} failed ({_reason(exc)}). "
            "Check your network connection, and HF_ENDPOINT if you set it to a mirror or proxy."
        ) from exc
    name = info.get("name") if isinstance(info, dict) else None
    if not name:
        raise PushError(f"Cannot push to the Hugging Face Hub: {endpoint} returned no user name for this token.")
    orgs = {str(org.get("name")) for org in info.get("orgs") or [] if isinstance(org, dict) and org.get("name")}
    return str(name), {str(name), *orgs}


def _check_repo_id(kind: str, repo_id: str, namespaces: set[str]) -> None:
    """A valid Hub repo id in a namespace the token can write to, or a PushError naming the repo."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise PushError(f"Cannot push the {kind} repo '{repo_id}': not a valid Hub repo id ({_reason(exc)}). Use "
                        "owner/name with letters, digits, '-', '_' and '.'.") from None
    namespace = repo_id.split("/")[0]
    if namespace not in namespaces:
        raise PushError(f"Cannot push the {kind} repo '{repo_id}': this token can create repos only under "
                        f"{', '.join(sorted(namespaces))}, not '{namespace}'. Pick one of those namespaces.")


def check_repo_ids(targets: list[tuple[str, str]], token: str | None = None) -> None:
    """`check_push_ready`, then each (kind, repo id) of `targets` valid and in a namespace the token can write
    to: a batch of pushes (`zoo publish`) checks all its repos before it uploads to the first."""
    _, namespaces = _whoami(token)
    for kind, repo_id in targets:
        _check_repo_id(kind, repo_id, namespaces)


def _resolve_repo_ids(username: str, base_model: str | None, weight_bits: int | None, act_bits: int | None,
                      repo_id: str | None, dataset_repo_id: str | None, with_dataset: bool) -> tuple[str, str | None]:
    if repo_id is None:
        repo_id, default_dataset = default_repo_ids(username, base_model, weight_bits, act_bits)
    else:
        repo_id = _qualify(repo_id, username)
        default_dataset = repo_id + CALIBRATION_SUFFIX
    if not with_dataset:
        return repo_id, None
    return repo_id, _qualify(dataset_repo_id, username) if dataset_repo_id else default_dataset


def check_push_targets(base_model: str, weight_bits: int, act_bits: int, repo_id: str | None = None,
                       dataset_repo_id: str | None = None, token: str | None = None,
                       private: bool = False) -> tuple[str, str]:
    """Everything `quantize --push` can check before any compute: `check_push_ready`, that the (default) repo ids
    are valid and in a namespace the token can write to, and with `private` that none of them exists public.
    Returns the (model, dataset) repo ids."""
    from huggingface_hub import HfApi

    username, namespaces = _whoami(token)
    repo_id, dataset_repo_id = _resolve_repo_ids(username, base_model, weight_bits, act_bits, repo_id,
                                                 dataset_repo_id, with_dataset=True)
    _check_repo_id("model", repo_id, namespaces)  # first: a dataset id derived from a bad --repo-id names it
    _check_repo_id("dataset", dataset_repo_id, namespaces)
    _check_visibility(HfApi(token=token), [("dataset", dataset_repo_id), ("model", repo_id)], private)
    return repo_id, dataset_repo_id


def _sanitize_repo_name(name: str) -> str:
    """Turn a folder or model name into a valid Hub repo name ([A-Za-z0-9._-], no '--' or '..')."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
    name = re.sub(r"-{2,}", "-", name)
    name = re.sub(r"\.{2,}", ".", name)
    return name.strip("-.") or "model"


def _base_name(base_model: str | os.PathLike | None) -> str:
    """'microsoft/resnet-50' -> 'resnet-50'; '/data/runs/my_model/' -> 'my_model'."""
    text = str(base_model or "").replace("\\", "/").rstrip("/")
    return _sanitize_repo_name(text.rsplit("/", 1)[-1]) if text else "model"


def default_repo_ids(username: str, base_model: str, weight_bits: int, act_bits: int) -> tuple[str, str]:
    """Default (model repo id, calibration dataset repo id) under the user's namespace.

    ``("user", "microsoft/resnet-50", 4, 4)`` -> ``("user/resnet-50-genie-w4a4",
    "user/resnet-50-genie-w4a4-calibration")``. Local paths use their folder name. Names are cut so that the
    dataset name stays within the Hub's 96-character limit.
    """
    tag = f"genie-w{int(weight_bits)}" + (f"a{int(act_bits)}" if act_bits is not None else "")
    room = REPO_NAME_MAX - len(CALIBRATION_SUFFIX) - len(tag) - 1
    base = _base_name(base_model)[:room].rstrip("-.") or "model"
    name = f"{base}-{tag}"
    return f"{username}/{name}", f"{username}/{name}{CALIBRATION_SUFFIX}"


def _qualify(repo_id: str, username: str) -> str:
    """'name' -> 'username/name'; 'org/name' unchanged. 'org/' (the name forgotten) is refused, not read as the
    repo 'username/org'."""
    repo_id = repo_id.strip()
    if repo_id.endswith("/") or repo_id.startswith("/"):
        raise PushError(f"The repo id {repo_id!r} has an empty {'name' if repo_id.endswith('/') else 'namespace'} "
                        "part: give owner/name, or a bare name for a repo under your own namespace.")
    return repo_id if "/" in repo_id else f"{username}/{repo_id}"


def _read_run(run_path: Path) -> RunRecord | None:
    try:
        return RunRecord.load(run_path)
    except (OSError, ValueError) as exc:
        raise PushError(f"Cannot push: {run_path} is not a valid run record ({_reason(exc)}). Fix or regenerate "
                        "it.") from exc


def _folder_files(folder: Path) -> dict[str, Path]:
    """{path in repo: local path} of the regular files inside `folder` (hidden entries, .git and HF caches
    skipped). A symbolic link is refused: it could make the upload read a file from anywhere on the machine."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    if folder.is_symlink():  # resolving it would publish whatever folder it points to, outside OUT
        raise PushError(f"Cannot push: {folder} is a symbolic link. genie_hub uploads only files inside the output "
                        "folder; replace the link by the folder itself (move it into place) and run again.")
    root = folder.resolve()
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_symlink():
            raise PushError(f"Cannot push: {path} is a symbolic link. genie_hub uploads only regular files inside "
                            f"the output folder; replace the link by the file itself or remove it.")
        if path.is_file():
            if root not in path.resolve().parents:
                raise PushError(f"Cannot push: {path} resolves outside {folder}; remove it.")
            files[rel.as_posix()] = path
    return {rel: files[rel] for rel in filter_repo_objects(list(files), ignore_patterns=DEFAULT_IGNORE_PATTERNS)}


def _verify_model_folder(model_dir: Path) -> None:
    """The same checks as loading (a full `from_pretrained`): nothing unloadable is ever published."""
    from .checkpoint import from_pretrained
    from .errors import GenieError

    try:
        model = from_pretrained(model_dir)
    except GenieError as exc:
        raise PushError(f"Cannot push: {model_dir} does not load as a Genie checkpoint, so it is not published. "
                        f"{exc}") from exc
    if model.config.quantization_config.weights_file is None:
        raise PushError(
            f"Cannot push: {model_dir} is a Genie format 1 checkpoint (weights in model.safetensors), which "
            "transformers releases before 5.0 load as plain weights, randomly initialized. Re-save it in the "
            "current format first: `genie_hub.save_quantized(genie_hub.from_pretrained(OLD), NEW)`.")


def _check_model_matches_run(model_dir: Path, run: RunRecord, run_path: Path) -> None:
    """The checkpoint is the one run.json describes (bits, quantized layers): its cards are rendered from run.json,
    so a model folder swapped for another checkpoint would be published under a card that misdescribes it."""
    import json

    try:
        quant = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["quantization_config"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # loading it (`_verify_model_folder`) said what is wrong
    recorded = {"weight_bits": run.weight_bits, "act_bits": run.act_bits, "layers": run.layers or None}
    differ = [key for key, value in recorded.items() if value is not None and quant.get(key) != value]
    if differ:
        found = "; ".join(f"{key} {quant.get(key)!r} in its config.json, {recorded[key]!r} in run.json"
                          if key != "layers" else "other quantized layers" for key in differ)
        raise PushError(
            f"Cannot push: the checkpoint in {model_dir} is not the one {run_path} describes ({found}), so its "
            "card would misdescribe it. Put back the model folder that run wrote, or rerun the quantize command "
            "to regenerate the folder. Nothing was uploaded.")


def _check_dataset_matches_run(files: dict[str, Path], run: RunRecord, run_path: Path) -> None:
    """The parquet files hold as many images as the run made: a shard added to or removed from OUT/dataset/data
    would be published as part of the calibration set, and `load_dataset` would refuse the split sizes."""
    import pyarrow.parquet as pq

    expected = run.synthetic.get("num_samples") if isinstance(run.synthetic, dict) else None
    shards = [path for rel, path in files.items() if rel.endswith(".parquet")]
    try:
        rows = sum(pq.ParquetFile(path).metadata.num_rows for path in shards)
    except Exception as exc:  # noqa: BLE001 - not parquet, truncated: what pyarrow says
        raise PushError(f"Cannot push: a data file of the calibration set does not read as parquet ({_reason(exc)}). "
                        "Rerun the quantize command to regenerate the folder. Nothing was uploaded.") from exc
    if isinstance(expected, int) and rows != expected:
        raise PushError(
            f"Cannot push: the calibration set's data files ({', '.join(sorted(p.name for p in shards))}) hold {rows} "
            f"images, but {run_path} records {expected}: a shard was added or removed by hand. Put back the files "
            "the run wrote, or rerun the quantize command to regenerate them. Nothing was uploaded.")


def _model_card_bytes(readme: Path, dataset_repo_id: str | None) -> bytes | None:
    """The README to publish: the local card with ``datasets: [dataset_repo_id]``; None if unchanged/absent."""
    if dataset_repo_id is None or not readme.is_file():
        return None
    from huggingface_hub import ModelCard

    original = readme.read_bytes()
    try:
        card = ModelCard(original.decode("utf-8"), ignore_metadata_errors=True)
    except Exception as exc:
        raise PushError(
            f"Cannot push: the model card {readme} could not be parsed ({_reason(exc)}). Fix its YAML header."
        ) from exc
    if card.data.datasets == [dataset_repo_id]:
        return None
    card.data.datasets = [dataset_repo_id]
    updated = str(card).encode("utf-8")
    return None if updated == original else updated


class _Card(NamedTuple):
    """What to publish as one repo's README.md: `data` (None: the local file as it is), and whether it is
    genie_hub's own card (`save`): once published it is saved over the local file and its sha256 recorded."""

    data: bytes | None
    save: bool


def _rendered_cards(run: RunRecord, run_path: Path, repo_id: str, dataset_repo_id: str | None,
                    revision: str | None) -> tuple[bytes, bytes | None]:
    """Both cards rendered from run.json for the ids (and branch) being pushed; a run.json this genie_hub cannot
    render (hand-edited, or written by an older version) is a PushError, before any upload."""
    from .cards import render_dataset_card, render_model_card

    try:
        model_card = str(render_model_card(run, repo_id, dataset_repo_id, revision=revision)).encode("utf-8")
        dataset_card = None
        if dataset_repo_id and run.synthetic:
            dataset_card = str(render_dataset_card(run, dataset_repo_id, repo_id, revision=revision)).encode("utf-8")
    except Exception as exc:  # noqa: BLE001 - any missing key or wrong type in a hand-edited record
        raise PushError(
            f"Cannot push: the cards could not be rendered from {run_path} ({_reason(exc)}); it lacks a key or holds "
            "a value of the wrong type (edited by hand, or written by another genie_hub version). Rerun the "
            "quantize command that made this folder to regenerate run.json (it resumes from the finished work). "
            "Nothing was uploaded.") from exc
    return model_card, dataset_card


def _plan_card(kind: str, readme: Path, rendered: bytes | None, digests: dict | None,
               dataset_repo_id: str | None) -> _Card:
    """The card genie_hub rendered, unless the local card is the user's (not the bytes genie_hub wrote, whose
    sha256 `digests`, run.json's `cards`, records; None, from an older genie_hub: the cards count as
    genie_hub's): then the user's card is published (a model card with its `datasets:` link set) and the local
    file is left alone."""
    if not readme.is_file():
        return _Card(rendered, rendered is not None)
    local = readme.read_bytes()
    ours = digests is None or card_sha256(readme) == digests.get(kind)
    if rendered is not None and (local == rendered or ours):
        return _Card(None if local == rendered else rendered, True)
    if rendered is not None:
        logger.info("%s was edited (it is not the card genie_hub wrote): publishing it as it is%s, not the card "
                    "rendered from run.json, and leaving the file unchanged. Delete it to publish genie_hub's card.",
                    readme, " with its datasets: link set" if kind == "model" and dataset_repo_id else "")
    return _Card(_model_card_bytes(readme, dataset_repo_id) if kind == "model" else None, False)


def _card_plans(run: RunRecord, layout: OutputLayout, repo_id: str, dataset_repo_id: str | None,
                revision: str | None) -> tuple[_Card, _Card]:
    """(model card, dataset card) to publish: rendered from run.json for a genie_hub run, else the local ones."""
    model_readme, dataset_readme = layout.model_dir / "README.md", layout.dataset_dir / "README.md"
    if not run.complete:  # not a genie_hub run record: the folder's own cards
        return (_plan_card("model", model_readme, None, {}, dataset_repo_id),
                _plan_card("dataset", dataset_readme, None, {}, None))
    model_card, dataset_card = _rendered_cards(run, layout.run_file, repo_id, dataset_repo_id, revision)
    return (_plan_card("model", model_readme, model_card, run.cards, dataset_repo_id),
            _plan_card("dataset", dataset_readme, dataset_card, run.cards, None))


def _data_file_patterns(configs) -> list[str]:
    """Every `data_files` pattern of a dataset card's `configs` (a string, a list of them, or a list of
    {split, path} with a string or list path)."""
    patterns: list[str] = []
    for config in configs if isinstance(configs, list) else []:
        data_files = config.get("data_files") if isinstance(config, dict) else None
        for entry in data_files if isinstance(data_files, list) else [data_files] if data_files else []:
            paths = entry.get("path") if isinstance(entry, dict) else entry
            patterns += [str(path) for path in (paths if isinstance(paths, list) else [paths]) if path]
    return patterns


def _check_user_dataset_card(readme: Path, files: set[str]) -> None:
    """A dataset card the user wrote is published as it is: it must parse, and each data file pattern of its
    `configs` must match a file the repo will hold (`files`), or `load_dataset(repo)` fails on the published repo.
    genie_hub's own card is rendered to match the data."""
    from huggingface_hub import DatasetCard

    try:
        card = DatasetCard(readme.read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001 - YAML errors, a header that is not a mapping, bad encoding
        raise PushError(
            f"Cannot push: the dataset card {readme} could not be parsed ({_reason(exc)}), and `load_dataset` of the "
            "published repo would fail on it. Fix its YAML header, or delete the file to publish the card genie_hub "
            "renders. Nothing was uploaded.") from None
    for pattern in _data_file_patterns(card.data.get("configs")):
        if not any(fnmatch.fnmatchcase(name, pattern) for name in files):
            raise PushError(
                f"Cannot push: the dataset card {readme} names the data files '{pattern}' in its configs, and no "
                "file of the dataset folder (or of the repo) matches them, so `load_dataset` of the published repo "
                "would fail. Fix the card's configs, or delete the file to publish the card genie_hub renders. "
                "Nothing was uploaded.")


MODEL_WEIGHT_PATTERNS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
                         "pytorch_model.bin.index.json", "genie_model*.safetensors", "genie_model.safetensors.index.json",
                         "processor_config.json", "adapter_config.json", "adapter_model.safetensors",
                         "adapter_model.bin")
"""Remote files at a model repo's top level that a push replaces as a whole: weights that transformers or genie_hub
would load beside the ones pushed (shards included), a `processor_config.json` (transformers prefers its image
processor to the pushed `preprocessor_config.json`) and a PEFT adapter (transformers would load it over the
model). Nothing in a subfolder, nothing else."""
DATASET_DATA_PATTERNS = ("data/train-*",)
"""Remote shards of the train split that a push replaces as a whole: another would join the split. Other splits
and files in data/ stay."""


def _remote_files(api, repo_id: str, repo_type: str, revision: str | None) -> set[str]:
    """The files of the repo at `revision` (main by default); none when the repo or branch does not exist yet."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        return set(api.list_repo_files(repo_id, repo_type=repo_type, revision=revision or "main"))
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return set()


def _stale_remote_files(api, repo_id: str, repo_type: str, revision: str | None, local: set[str],
                        patterns: tuple[str, ...], dry_run: bool = False) -> list[str]:
    """Files matching `patterns` in the repo (at the branch the commit goes to) that the local folder lacks: they
    are deleted in the same commit, as `Dataset.push_to_hub` deletes the shards it does not rewrite. A pattern
    matches at its own folder depth only (fnmatch's `*` would cross `/`). A dry run reads a branch that does not
    exist yet as main, which the push would create it from."""
    remote = _remote_files(api, repo_id, repo_type, revision)
    if dry_run and not remote and revision not in (None, "main"):
        remote = _remote_files(api, repo_id, repo_type, None)
    stale = sorted(name for name in remote if name not in local and any(
        name.count("/") == pattern.count("/") and fnmatch.fnmatchcase(name, pattern) for pattern in patterns))
    for name in stale:
        logger.info("%s %s from %s: the pushed folder replaces it (%s).", "Would delete" if dry_run else "Deleting",
                    name, repo_id, "another shard of the train split" if repo_type == "dataset" else
                    "files that transformers would load beside the new ones")
    return stale


def _dry_run_record(api, repo_id: str, repo_type: str, files: dict[str, Path], card: _Card, revision: str | None,
                    create_pr: bool, patterns: tuple[str, ...]) -> dict:
    """What a push would do to one repo, read from the Hub without changing it: the files it would upload (with
    their sizes and where README.md comes from), the remote files it would delete, whether the repo exists."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        api.repo_info(repo_id, repo_type=repo_type)
        exists = True
    except RepositoryNotFoundError:
        exists = False
    upload = {rel: path.stat().st_size for rel, path in files.items()}
    if card.data is not None:
        upload["README.md"] = len(card.data)
    readme = ("none" if "README.md" not in upload else "the card genie_hub renders from run.json" if card.save
              else "the folder's own card, as it is" + (" (its datasets: link set)" if card.data is not None else ""))
    branch = None if create_pr else revision
    record = {"repo_id": repo_id, "exists": exists, "upload": dict(sorted(upload.items())), "readme": readme,
              "delete": _stale_remote_files(api, repo_id, repo_type, branch, set(files), patterns, dry_run=True)}
    if revision not in (None, "main"):
        record["revision"] = revision
    if create_pr:
        record["create_pr"] = True
    return record


def _commit_operations(files: dict[str, Path], card: _Card, stale: list[str]) -> list:
    """Add every local file (README.md from `card` when it says so, also when there is no local README), delete
    the stale remote ones."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    sources: dict[str, bytes | str] = {rel: str(path) for rel, path in files.items()}
    if card.data is not None:
        sources["README.md"] = card.data
    return ([CommitOperationAdd(path_in_repo=rel, path_or_fileobj=source) for rel, source in sources.items()]
            + [CommitOperationDelete(path_in_repo=rel) for rel in stale])


def retry_command(out: Path, repo_id: str, dataset_repo_id: str | None, private: bool, revision: str | None,
                  create_pr: bool, commit_message: str | None) -> str:
    """The `genie_hub push` command that repeats a push exactly: the resolved repo ids and every option given, so a
    retry cannot land in other repos (the defaults come from run.json and the token's user) or drop --private."""
    words = ["genie_hub", "push", str(out), "--repo-id", repo_id]
    if dataset_repo_id:
        words += ["--dataset-repo-id", dataset_repo_id]
    words += ["--private"] if private else []
    words += ["--revision", revision] if revision is not None else []
    words += ["--create-pr"] if create_pr else []
    words += ["--commit-message", commit_message] if commit_message is not None else []
    return " ".join(shlex.quote(word) for word in words)


def _push_failed(kind: str, repo_id: str, out: Path, exc: BaseException, done: list[str], retry: str) -> PushError:
    status = _status_code(exc)
    hint = ""
    if status in (401, 403):
        hint = " The token was refused: check that it has write access to this namespace."
    already = f" Already published: {', '.join(done)}." if done else ""
    return PushError(
        f"Pushing the {kind} repo '{repo_id}' to {_endpoint()} failed ({_reason(exc)}).{hint}{already} The local "
        f"folder {out} is intact (nothing in it was changed); run `{retry}` to retry: files that already reached "
        "the Hub are skipped, so the retry completes the upload."
    )


def _check_visibility(api, targets: list[tuple[str, str]], private: bool) -> None:
    """With `private`, every existing repo of `targets` ((repo type, id)) must already be private: the Hub keeps an
    existing repo's visibility whatever `create_repo(private=True)` asks, so the push would publish into a public
    repo. Checked before any upload."""
    from huggingface_hub.errors import RepositoryNotFoundError

    if not private:
        return
    for repo_type, repo_id in targets:
        try:
            info = api.repo_info(repo_id, repo_type=repo_type)
        except RepositoryNotFoundError:
            continue  # created private
        except Exception as exc:  # noqa: BLE001 - the push itself reports a Hub that cannot be reached
            raise PushError(f"Cannot push with --private: checking whether the {repo_type} repo '{repo_id}' exists "
                            f"and is private failed ({_reason(exc)}). Nothing was uploaded; run again.") from exc
        if not getattr(info, "private", False):
            raise PushError(
                f"Cannot push with --private: the {repo_type} repo '{repo_id}' already exists and is public, and an "
                "existing repo keeps its visibility, so the files would be published. Make it private on the Hub "
                "(its Settings) and run again, or push to a new repo id. Nothing was uploaded.")


MODEL_COMMIT_MESSAGE = "Upload Genie quantized model with genie_hub"
DATASET_COMMIT_MESSAGE = "Upload Genie synthetic calibration set with genie_hub"


def check_push_options(revision: str | None = None, create_pr: bool = False, commit_message: str | None = None) -> None:
    """The options of `huggingface-cli upload` that genie_hub takes, checked before any compute or upload."""
    if create_pr and revision not in (None, "main"):
        raise PushError(f"--create-pr opens pull requests against main, so it cannot be combined with the revision "
                        f"'{revision}'. Drop one of them (a branch gets the commit directly).")
    if revision is not None and (not revision.strip() or revision.startswith("refs/pr/")):
        raise PushError(f"Cannot push to the revision {revision!r}: give a branch name (created when missing), or "
                        "use --create-pr to open a pull request.")
    if commit_message is not None and not commit_message.strip():
        raise PushError("The commit message is empty: give a non-empty --commit-message or leave it out.")


def _ensure_branch(api, repo_id: str, repo_type: str, revision: str | None) -> None:
    """Create the branch `revision` when it does not exist yet, as `huggingface-cli upload --revision` does."""
    from huggingface_hub.errors import RevisionNotFoundError

    if revision in (None, "main"):
        return
    try:
        api.repo_info(repo_id, repo_type=repo_type, revision=revision)
    except RevisionNotFoundError:
        api.create_branch(repo_id, repo_type=repo_type, branch=revision, exist_ok=True)


class _EmptyCommitNotice(logging.Filter):
    """huggingface_hub skips a commit of files the repo already holds and warns "No files have been modified"
    (shown even under -q). The push summary says so in genie_hub's words, so the warning is taken, not shown."""

    MESSAGE = "No files have been modified since last commit"

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(self.MESSAGE):
            self.seen = True
            return False
        return True


@contextmanager
def _empty_commit_notice() -> Iterator[_EmptyCommitNotice]:
    notice = _EmptyCommitNotice()
    loggers = [logging.getLogger(name) for name in ("huggingface_hub.hf_api", "huggingface_hub._upload_pipeline")]
    for hub_logger in loggers:
        hub_logger.addFilter(notice)
    try:
        yield notice
    finally:
        for hub_logger in loggers:
            hub_logger.removeFilter(notice)


def _commit_record(info, repo_id: str, url, revision: str | None, create_pr: bool, unchanged: bool) -> dict:
    """What run.json keeps of one commit. `unchanged`: huggingface_hub skipped it, the repo already held these
    files (with --create-pr, no pull request was opened)."""
    record = {"repo_id": repo_id, "url": str(url), "commit": info.oid, "commit_url": info.commit_url}
    if revision not in (None, "main"):
        record["revision"] = revision
    if getattr(info, "pr_url", None):
        record.update(pr_url=info.pr_url, pr_revision=info.pr_revision)
    elif unchanged or create_pr:  # a pull request asked for and none opened: the commit was skipped as empty
        record["unchanged"] = True
        if create_pr:
            record["create_pr"] = True
    return record


def check_output_folder(output_dir: str | os.PathLike, dataset_repo_id: str | None = None) -> RunRecord:
    """What `push_output` checks in an output folder before any request, as one call (`zoo publish` checks every
    entry this way before pushing the first): a finished run, a checkpoint that loads and is the one run.json
    describes, the calibration set a zero-shot run needs, no symbolic link. PushError for any problem; returns
    the folder's run record."""
    layout = OutputLayout(Path(output_dir))
    out, model_dir, dataset_dir, run_path = layout.root, layout.model_dir, layout.dataset_dir, layout.run_file
    if not out.is_dir():
        raise PushError(f"Cannot push: the output folder {out} does not exist. Pass the --output-dir of a "
                        "finished `genie_hub quantize` run.")
    if not model_dir.is_dir() or not (model_dir / "config.json").is_file():
        if OutputLayout(out.parent).run_file.is_file():  # OUT/model, OUT/dataset, OUT/work: a folder inside OUT
            raise PushError(f"Cannot push {out}: it is the {out.name}/ folder of the output folder {out.parent}, and "
                            f"`genie_hub push` takes that one (it publishes model/ and dataset/ together): "
                            f"genie_hub push {shlex.quote(str(out.parent))}")
        raise PushError(f"Cannot push: {model_dir} is missing or has no config.json, so {out} is not a finished "
                        "`genie_hub quantize` output. Re-run the quantization (or point to the right folder).")
    if not run_path.is_file():  # written last: without it the run stopped after the model, before the dataset
        raise PushError(f"Cannot push: {out} has no run.json, so its `genie_hub quantize` run did not finish (it "
                        "writes run.json last, after the model and the calibration set). Rerun the same quantize "
                        "command: it resumes from the finished work and completes the folder.")
    _folder_files(model_dir)  # refuses a symbolic link
    has_dataset = dataset_dir.is_dir() or dataset_dir.is_symlink()
    dataset_files = _folder_files(dataset_dir) if has_dataset else {}
    if has_dataset and not any(p.endswith(".parquet") for p in dataset_files):
        raise PushError(f"Cannot push: {dataset_dir} exists but holds no parquet data file; the calibration set "
                        "is incomplete. Re-run the quantization, or delete that folder to push the model alone.")
    if dataset_repo_id is not None and not has_dataset:
        raise PushError(f"Cannot push the dataset repo '{dataset_repo_id}': {out} has no dataset folder (runs "
                        "calibrated on real images publish the model only). Drop the dataset repo id.")
    run = _read_run(run_path)  # there: checked above
    if run.synthetic and not has_dataset:
        raise PushError(f"Cannot push: {run_path} records a zero-shot run, calibrated on synthetic images, but "
                        f"{dataset_dir} is missing, so the model would be published without its calibration set "
                        "(as if it were a few-shot run). Put the dataset folder back, or rerun the quantize command "
                        "to complete the folder. Nothing was uploaded.")
    if run.synthetic and has_dataset:
        _check_dataset_matches_run(dataset_files, run, run_path)
    _verify_model_folder(model_dir)
    _check_model_matches_run(model_dir, run, run_path)
    return run


def push_output(output_dir: str | os.PathLike, repo_id: str | None = None, dataset_repo_id: str | None = None,
                private: bool = False, token: str | None = None, *, revision: str | None = None,
                create_pr: bool = False, commit_message: str | None = None, dry_run: bool = False) -> dict:
    """Publish OUT/dataset as a datasets repo, then OUT/model as a model repo; return what was pushed.

    Like `huggingface-cli upload`: `token` (default: HF_TOKEN, else the stored `hf auth login` token),
    `revision` (a branch of both repos, created from main when missing), `create_pr` (each repo gets a pull
    request instead of a commit on main) and `commit_message` (the title of both commits).

    Repo ids default to :func:`default_repo_ids` from run.json (a bare name gets the user's namespace; a given
    model id without a dataset id gets ``<model id>-calibration``). The dataset goes first so that the model
    card's ``datasets:`` link points to an existing repo. Each repo gets one commit, which also deletes the remote
    files the folder replaces as a whole (other ``data/`` shards, other weight files). A genie_hub run's cards are
    rendered from run.json for the ids and branch pushed; a card the user edited (bytes genie_hub never wrote,
    see ``run.json["cards"]``) is published as it is, with the model card's ``datasets:`` link set. Cards are
    taken from memory, so a failed push leaves OUT byte-identical; after success genie_hub's own cards are
    saved to OUT (a user's card is left alone) and the result is recorded under ``"push"`` in run.json.
    The folder is checked first (a checkpoint that is not the one run.json describes, a zero-shot run without
    its dataset folder, a symbolic link, an unrenderable run.json): PushError for any problem, naming the repo
    that failed. `dry_run` makes every check and Hub read of a push (token, namespaces, visibility, the remote
    files it would delete) and returns the plan (`"dry_run": True`, per repo: files and sizes to upload, files to
    delete) without creating, committing or writing anything.
    """
    from huggingface_hub import HfApi

    check_push_options(revision, create_pr, commit_message)
    layout = OutputLayout(Path(output_dir))
    out, model_dir, dataset_dir, run_path = layout.root, layout.model_dir, layout.dataset_dir, layout.run_file
    run = check_output_folder(out, dataset_repo_id)
    model_files = _folder_files(model_dir)
    has_dataset = dataset_dir.is_dir() or dataset_dir.is_symlink()
    dataset_files = _folder_files(dataset_dir) if has_dataset else {}

    username, namespaces = _whoami(token)
    if repo_id is None:
        missing = [key for key in ("base_model", "weight_bits") if getattr(run, key) is None]
        if missing:
            raise PushError(f"Cannot choose a repo name: {run_path} lacks {', '.join(missing)}. Pass the model "
                            "repo id explicitly (--repo-id).")
    repo_id, dataset_repo_id = _resolve_repo_ids(username, run.base_model, run.weight_bits, run.act_bits, repo_id,
                                                 dataset_repo_id, with_dataset=has_dataset)
    _check_repo_id("model", repo_id, namespaces)  # first: a dataset id derived from a bad --repo-id names it
    if has_dataset:
        _check_repo_id("dataset", dataset_repo_id, namespaces)
    card, dataset_card = _card_plans(run, layout, repo_id, dataset_repo_id, revision)  # before any upload
    api = HfApi(token=token)
    _check_visibility(api, [("dataset", dataset_repo_id)] * has_dataset + [("model", repo_id)], private)
    if has_dataset and not dataset_card.save and (dataset_dir / "README.md").is_file():  # the user's card, as it is
        _check_user_dataset_card(dataset_dir / "README.md", set(dataset_files) | _remote_files(
            api, dataset_repo_id, "dataset", None if create_pr else revision))
    if dry_run:
        return {"dry_run": True, "endpoint": _endpoint(), "private": bool(private),
                "dataset": _dry_run_record(api, dataset_repo_id, "dataset", dataset_files, dataset_card, revision,
                                           create_pr, DATASET_DATA_PATTERNS) if has_dataset else None,
                "model": _dry_run_record(api, repo_id, "model", model_files, card, revision, create_pr,
                                         MODEL_WEIGHT_PATTERNS)}
    retry = retry_command(out, repo_id, dataset_repo_id, private, revision, create_pr, commit_message)
    done: list[str] = []
    result: dict = {"endpoint": _endpoint(), "private": bool(private), "model": None, "dataset": None}
    target = {"revision": revision, "create_pr": create_pr}
    branch = None if create_pr else revision  # a pull request is opened against main

    if has_dataset:
        try:
            url = api.create_repo(dataset_repo_id, repo_type="dataset", private=private, exist_ok=True)
            _ensure_branch(api, dataset_repo_id, "dataset", revision)
            stale = _stale_remote_files(api, dataset_repo_id, "dataset", branch, set(dataset_files),
                                        DATASET_DATA_PATTERNS)
            with _empty_commit_notice() as notice:
                info = api.create_commit(repo_id=dataset_repo_id, repo_type="dataset",
                                         operations=_commit_operations(dataset_files, dataset_card, stale),
                                         commit_message=commit_message or DATASET_COMMIT_MESSAGE, **target)
        except Exception as exc:
            raise _push_failed("dataset", dataset_repo_id, out, exc, done, retry) from exc
        result["dataset"] = _commit_record(info, dataset_repo_id, url, revision, create_pr, notice.seen)
        done.append(f"dataset {dataset_repo_id}")

    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        _ensure_branch(api, repo_id, "model", revision)
        stale = _stale_remote_files(api, repo_id, "model", branch, set(model_files), MODEL_WEIGHT_PATTERNS)
        with _empty_commit_notice() as notice:
            info = api.create_commit(repo_id=repo_id, repo_type="model",
                                     operations=_commit_operations(model_files, card, stale),
                                     commit_message=commit_message or MODEL_COMMIT_MESSAGE, **target)
    except Exception as exc:
        raise _push_failed("model", repo_id, out, exc, done, retry) from exc
    result["model"] = _commit_record(info, repo_id, url, revision, create_pr, notice.seen)
    result["pushed_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")

    # Success: keep OUT consistent with what is now on the Hub (genie_hub's own cards only: a user's stays as is).
    run = _read_run(run_path)
    cards = dict(run.cards or {})
    for plan, readme, kind in ((card, model_dir / "README.md", "model"),
                               (dataset_card, dataset_dir / "README.md", "dataset")):
        if plan.save:
            if plan.data is not None:
                write_bytes(readme, plan.data)
            cards[kind] = card_sha256(readme)
    run.push = result
    run.cards = cards or run.cards
    run.save(run_path)
    return result


def space_repo_id(repo_id: str, token: str | None = None) -> str:
    """The full id of the Space `push_space` will create (a bare name gets the user's namespace), checked
    before the Space folder is prepared: its requirements.txt names the wheel by its URL in that repo."""
    username, namespaces = _whoami(token)
    repo_id = _qualify(repo_id, username)
    _check_repo_id("Space", repo_id, namespaces)
    return repo_id


def describe_push(result: dict) -> str:
    """What a push published, one line per repo (the pull request when one was opened); for a dry run, what it
    would publish and delete."""
    if result.get("dry_run"):
        return _describe_dry_run(result)
    lines = []
    for kind, label in (("model", "Model:  "), ("dataset", "Dataset:")):
        record = result.get(kind)
        if not record:
            continue
        where = (f" (pull request {record['pr_url']})" if record.get("pr_url")
                 else " (no changes: it already holds these files, so no pull request was opened)"
                 if record.get("unchanged") and record.get("create_pr")
                 else " (no changes: it already holds these files)" if record.get("unchanged")
                 else f" (branch {record['revision']})" if record.get("revision") else "")
        lines.append(f"{label} {record['url']}{where}")
    return "\n".join(lines)


def _describe_dry_run(result: dict) -> str:
    lines = [f"Dry run: nothing was uploaded. A push to {result['endpoint']} would make these commits"
             + (" (new repos private):" if result["private"] else ":")]
    for kind in ("dataset", "model"):
        record = result.get(kind)
        if not record:
            continue
        where = (" (a pull request against main)" if record.get("create_pr")
                 else f" (branch {record['revision']})" if record.get("revision") else "")
        total = sum(record["upload"].values())
        lines.append(f"{kind.capitalize()} repo {record['repo_id']}{'' if record['exists'] else ' (new)'}{where}: "
                     f"upload {len(record['upload'])} files, {total / 1e6:.2f} MB; README.md: {record['readme']}")
        lines += [f"  + {rel} ({size:,} bytes)" for rel, size in record["upload"].items()]
        lines += [f"  - {rel} (deleted: the pushed folder replaces it)" for rel in record["delete"]]
    return "\n".join(lines)


SPACE_OWNED_PATTERNS = ("space_config.json", "wheels/*")
"""The Space files genie_hub writes and replaces as a whole: a re-push deletes the remote ones the new folder
lacks (the models of an earlier push, older wheels); other files in the Space stay."""


def push_space(space_dir: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create (or reuse) a Gradio Space and upload `space_dir` to it; return the Space URL.

    A bare name gets the user's namespace. The folder must hold the Space's README.md (YAML header) and its app.
    The commit deletes the remote files matching SPACE_OWNED_PATTERNS that the folder does not hold.
    """
    from huggingface_hub import HfApi

    folder = Path(space_dir)
    if not folder.is_dir() or not (folder / "README.md").is_file():
        raise PushError(f"Cannot push the Space: {folder} is missing or has no README.md (the Space header). "
                        "Generate the Space folder first.")
    username, namespaces = _whoami(token)
    repo_id = _qualify(repo_id, username)
    _check_repo_id("Space", repo_id, namespaces)
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=folder,
                          commit_message="Upload Genie demo Space with genie_hub",
                          delete_patterns=list(SPACE_OWNED_PATTERNS))
    except Exception as exc:
        raise PushError(
            f"Pushing the Space '{repo_id}' to {_endpoint()} failed ({_reason(exc)}). Nothing on this machine was "
            "changed; run the same command again to retry (files already uploaded are skipped)."
        ) from exc
    return str(url)
