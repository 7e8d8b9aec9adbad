"""Publishing (genie_hub.hub) against the loopback Hub (tests/hub_server.py) with the REAL clients.

huggingface_hub uploads, transformers.from_pretrained and datasets.load_dataset all talk HTTP to the server
that tests/conftest.py started for the session. These tests prove the client-side protocol and genie_hub's
behaviour (idempotent re-push, clear errors, untouched local folder); the real Hub's server-side rules are
covered by the opt-in tests/test_hub_live.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from genie_hub.errors import PushError
from genie_hub.hub import check_push_ready, default_repo_ids, push_output, push_space
from helpers_output import BASE_MODEL, NUM_IMAGES, build_output, fixed_input, make_genie_run, tree_hashes

MODEL_ID = "tester/resnet-50-genie-w4a4"
DATASET_ID = "tester/resnet-50-genie-w4a4-calibration"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built_output(tmp_path_factory) -> Path:
    """One output folder built once per module; tests copy it (building imports datasets and transformers)."""
    return build_output(tmp_path_factory.mktemp("built") / "out")


@pytest.fixture
def out(built_output, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(built_output, tmp_path / "out"))


def _expected_remote_model_files(out: Path, dataset_repo_id: str | None = DATASET_ID) -> dict[str, bytes]:
    """The local model files; README.md as published: the user's card with its `datasets:` link set."""
    from genie_hub.hub import _model_card_bytes

    files = {p.relative_to(out / "model").as_posix(): p.read_bytes()
             for p in sorted((out / "model").rglob("*")) if p.is_file()}
    linked = _model_card_bytes(out / "model" / "README.md", dataset_repo_id if (out / "dataset").is_dir() else None)
    return {**files, "README.md": linked} if linked else files


def _assert_model_repo_matches(hub, out: Path, repo_id: str = MODEL_ID) -> None:
    remote = hub.files(repo_id)
    expected = _expected_remote_model_files(out)
    assert {k: v for k, v in remote.items() if k != ".gitattributes"} == expected


def _assert_dataset_repo_matches(hub, out: Path, repo_id: str = DATASET_ID) -> None:
    remote = hub.files(repo_id, repo_type="dataset")
    expected = {p.relative_to(out / "dataset").as_posix(): p.read_bytes()
                for p in sorted((out / "dataset").rglob("*")) if p.is_file()}
    assert {k: v for k, v in remote.items() if k != ".gitattributes"} == expected


# --------------------------------------------------------------------------------------- pure helpers
def test_default_repo_ids():
    assert default_repo_ids("user", "microsoft/resnet-50", 4, 4) == (
        "user/resnet-50-genie-w4a4", "user/resnet-50-genie-w4a4-calibration")
    assert default_repo_ids("user", "/data/runs/my model!/", 2, 8)[0] == "user/my-model-genie-w2a8"
    assert default_repo_ids("user", "C:\\models\\Res.Net", 3, 3)[0] == "user/Res.Net-genie-w3a3"
    model_id, dataset_id = default_repo_ids("user", "org/" + "x" * 200, 4, 4)
    assert len(dataset_id.split("/")[1]) <= 96 and dataset_id == model_id + "-calibration"
    assert default_repo_ids("user", "...", 4, 4)[0] == "user/model-genie-w4a4"


# --------------------------------------------------------------------------------------- full round trip
def test_push_then_load_with_transformers_and_datasets(hub_server, out):
    import numpy as np
    import torch
    from datasets import Dataset, load_dataset
    from huggingface_hub import HfApi, ModelCard
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    local_model = AutoModelForImageClassification.from_pretrained(out / "model").eval()
    card_before = (out / "model" / "README.md").read_bytes()
    result = push_output(out)

    assert result["model"]["repo_id"] == MODEL_ID and result["dataset"]["repo_id"] == DATASET_ID
    assert result["model"]["url"] == f"{hub_server.url}/{MODEL_ID}"
    assert result["dataset"]["url"] == f"{hub_server.url}/datasets/{DATASET_ID}"
    assert not hub_server.repo(MODEL_ID).private

    # The published card (the user's: no genie_hub run record) links the calibration set and keeps the rest; the
    # local card is the user's, so it is left as it was.
    card = ModelCard.load(MODEL_ID)
    assert card.data.datasets == [DATASET_ID]
    assert card.data.base_model == BASE_MODEL and card.data.base_model_relation == "quantized"
    assert "Test fixture card." in card.text
    assert (out / "model" / "README.md").read_bytes() == card_before
    _assert_model_repo_matches(hub_server, out)
    _assert_dataset_repo_matches(hub_server, out)
    assert hub_server.repo(MODEL_ID).files_lfs() >= {"genie_model.safetensors"}
    assert "data/train-00000-of-00001.parquet" in hub_server.repo(DATASET_ID, "dataset").files_lfs()

    # run.json records the push and keeps every other key.
    run = json.loads((out / "run.json").read_text())
    assert run["base_model"] == BASE_MODEL and run["weight_bits"] == 4
    assert run["push"]["model"]["repo_id"] == MODEL_ID and run["push"]["dataset"]["repo_id"] == DATASET_ID
    assert run["push"]["model"]["commit"] == HfApi().model_info(MODEL_ID).sha

    # transformers downloads the model from the loopback Hub: same weights, same logits.
    remote_model = AutoModelForImageClassification.from_pretrained(MODEL_ID).eval()
    x = fixed_input()
    with torch.no_grad():
        assert torch.equal(remote_model(pixel_values=x).logits, local_model(pixel_values=x).logits)
    remote_state, local_state = remote_model.state_dict(), local_model.state_dict()
    assert remote_state.keys() == local_state.keys()
    assert all(torch.equal(remote_state[k], local_state[k]) for k in local_state)
    assert AutoImageProcessor.from_pretrained(MODEL_ID).size == {"height": 32, "width": 32}

    # datasets downloads the calibration set: the exact float tensors and the same PNG images.
    remote_ds = load_dataset(DATASET_ID, split="train")
    local_ds = Dataset.from_parquet(str(out / "dataset" / "data" / "train-00000-of-00001.parquet"))
    assert remote_ds.features == local_ds.features
    assert remote_ds.num_rows == local_ds.num_rows
    remote_px = np.asarray(remote_ds.with_format("numpy")["pixel_values"])
    local_px = np.asarray(local_ds.with_format("numpy")["pixel_values"])
    assert remote_px.dtype == np.float32 and np.array_equal(remote_px, local_px)
    assert remote_ds["batch_index"] == local_ds["batch_index"]
    for remote_image, local_image in zip(remote_ds["image"], local_ds["image"]):
        assert np.array_equal(np.asarray(remote_image), np.asarray(local_image))

    # Pushing again is a no-op: no new commits, same result.
    commits = (hub_server.commit_count(MODEL_ID), hub_server.commit_count(DATASET_ID, "dataset"))
    again = push_output(out)
    assert again["model"]["commit"] == result["model"]["commit"]
    assert (hub_server.commit_count(MODEL_ID), hub_server.commit_count(DATASET_ID, "dataset")) == commits
    assert not hub_server.unhandled, hub_server.unhandled


# --------------------------------------------------------------------------------------- failures and resume
@pytest.mark.parametrize("mode", ["500", "drop", "drop_after_commit"])
def test_failed_model_commit_leaves_folder_intact_and_retry_completes(hub_server, out, mode):
    before = tree_hashes(out)
    fault = hub_server.inject_failure("commit", mode=mode, repo_id=MODEL_ID)

    with pytest.raises(PushError) as info:
        push_output(out)
    message = str(info.value)
    assert fault.triggered == 1
    assert f"model repo '{MODEL_ID}'" in message
    assert "intact" in message and f"genie_hub push {out}" in message
    assert f"dataset {DATASET_ID}" in message  # says what did get published
    assert "\n" not in message
    assert tree_hashes(out) == before  # nothing in OUT changed: not the card, not run.json
    _assert_dataset_repo_matches(hub_server, out)
    expected_commits = 2 if mode == "drop_after_commit" else 1  # the lost-response commit did land
    assert hub_server.commit_count(MODEL_ID) == expected_commits

    result = push_output(out)
    assert result["model"]["repo_id"] == MODEL_ID
    _assert_model_repo_matches(hub_server, out)
    _assert_dataset_repo_matches(hub_server, out)
    assert hub_server.commit_count(MODEL_ID) == 2  # the retry only commits what is missing
    assert hub_server.commit_count(DATASET_ID, "dataset") == 2  # dataset re-upload was a no-op
    assert json.loads((out / "run.json").read_text())["push"]["model"]["commit"] == result["model"]["commit"]


def test_the_retry_command_of_a_failed_push_repeats_its_targets_and_options(hub_server, out, capsys):
    """The printed retry publishes where the failed push was going, private as asked (a bare `genie_hub push OUT`
    would take the default ids from run.json, public)."""
    import shlex

    from genie_hub.cli import main

    hub_server.inject_failure("commit", mode="500", repo_id="genie-org/my-model")
    assert main(["push", str(out), "--repo-id", "genie-org/my-model", "--private", "--commit-message", "v 1"]) == 1
    retry = capsys.readouterr().err.split("run `", 1)[1].split("`", 1)[0]
    words = shlex.split(retry)
    assert words[:3] == ["genie_hub", "push", str(out)]
    assert "--private" in words and words[words.index("--repo-id") + 1] == "genie-org/my-model"
    assert words[words.index("--dataset-repo-id") + 1] == "genie-org/my-model-calibration"
    assert words[words.index("--commit-message") + 1] == "v 1"
    assert main(words[1:]) == 0
    assert sorted(repo_id for _, repo_id in hub_server.repos) == ["genie-org/my-model",
                                                                  "genie-org/my-model-calibration"]
    assert all(hub_server.repo(repo_id, repo_type).private for repo_type, repo_id in hub_server.repos)
    assert b"- genie-org/my-model-calibration" in hub_server.files("genie-org/my-model")["README.md"]


def test_private_is_refused_for_an_existing_public_repo_before_any_upload(hub_server, out):
    from genie_hub.hub import check_push_targets

    hub_server.create_repo(DATASET_ID, "dataset", private=False)
    with pytest.raises(PushError, match=f"dataset repo '{DATASET_ID}' already exists and is public"):
        push_output(out, private=True)
    with pytest.raises(PushError, match="already exists and is public"):  # quantize --push: before any compute
        check_push_targets(BASE_MODEL, 4, 4, private=True)
    assert check_push_targets(BASE_MODEL, 4, 4) == (MODEL_ID, DATASET_ID)
    assert hub_server.commit_count(DATASET_ID, "dataset") == 1 and ("model", MODEL_ID) not in hub_server.repos
    hub_server.repo(DATASET_ID, "dataset").private = True  # made private on the Hub: the push goes ahead
    push_output(out, private=True)
    assert hub_server.repo(MODEL_ID).private and hub_server.repo(DATASET_ID, "dataset").private
    push_output(out)  # without --private an existing repo is used as it is


def test_a_repo_id_without_a_name_is_refused(hub_server, out):
    with pytest.raises(PushError, match="'genie-org/' has an empty name part"):
        push_output(out, repo_id="genie-org/")
    assert not hub_server.repos


def test_failed_dataset_commit_names_the_dataset_repo(hub_server, out):
    before = tree_hashes(out)
    hub_server.inject_failure("commit", mode="drop", repo_id=DATASET_ID)
    with pytest.raises(PushError) as info:
        push_output(out)
    assert f"dataset repo '{DATASET_ID}'" in str(info.value) and "Already published" not in str(info.value)
    assert tree_hashes(out) == before
    assert (("model", MODEL_ID) not in hub_server.repos)  # stopped before the model

    push_output(out)
    _assert_dataset_repo_matches(hub_server, out)
    _assert_model_repo_matches(hub_server, out)


def test_lost_lfs_upload_is_retried_by_the_client(hub_server, out):
    """A dropped LFS PUT is retried by huggingface_hub's backoff (1 s): the push still succeeds."""
    fault = hub_server.inject_failure("lfs_upload", mode="drop", times=1)
    push_output(out)
    assert fault.triggered == 1
    _assert_model_repo_matches(hub_server, out)


# --------------------------------------------------------------------------------------- variants
def test_push_without_dataset_folder_pushes_model_only(hub_server, built_output, tmp_path):
    out = build_output(tmp_path / "out", with_dataset=False)
    card_before = (out / "model" / "README.md").read_bytes()
    result = push_output(out, repo_id="my-tiny-w4a4", private=True)
    assert result["dataset"] is None and result["model"]["repo_id"] == "tester/my-tiny-w4a4"
    assert [key for key in hub_server.repos] == [("model", "tester/my-tiny-w4a4")]
    assert hub_server.repo("tester/my-tiny-w4a4").private
    assert (out / "model" / "README.md").read_bytes() == card_before  # no dataset: card untouched
    _assert_model_repo_matches(hub_server, out, "tester/my-tiny-w4a4")  # no dataset: the card as it is
    with pytest.raises(PushError, match="no dataset folder"):
        push_output(out, dataset_repo_id="tester/some-calibration")


def test_explicit_repo_ids_and_org_namespace(hub_server, out):
    result = push_output(out, repo_id="genie-org/tiny", dataset_repo_id="calib")
    assert result["model"]["repo_id"] == "genie-org/tiny"
    assert result["dataset"]["repo_id"] == "tester/calib"
    assert json.loads(hub_server.files("genie-org/tiny")["config.json"])["model_type"] == "resnet"
    assert b"- tester/calib" in hub_server.files("genie-org/tiny")["README.md"]


def test_missing_or_incomplete_output_raises_push_error(hub_server, out, tmp_path):
    with pytest.raises(PushError, match="does not exist"):
        push_output(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PushError, match="config.json"):
        push_output(tmp_path / "empty")
    with pytest.raises(PushError, match=f"model/ folder of the output folder {out}.*genie_hub push {out}$"):
        push_output(out / "model")  # the folder inside OUT: the error names OUT
    with pytest.raises(PushError, match=f"dataset/ folder of the output folder {out}.*genie_hub push {out}$"):
        push_output(out / "dataset")
    unfinished = tmp_path / "unfinished"  # a run stopped after writing the model (run.json comes last)
    shutil.copytree(out / "model", unfinished / "model")
    with pytest.raises(PushError, match="has no run.json, so its `genie_hub quantize` run did not finish"):
        push_output(unfinished, repo_id="tester/unfinished")
    (out / "dataset" / "data" / "train-00000-of-00001.parquet").unlink()
    with pytest.raises(PushError, match="no parquet"):
        push_output(out)
    assert not hub_server.repos  # nothing was created


def test_forbidden_namespace_is_a_push_error(hub_server, out):
    with pytest.raises(PushError, match="model repo 'someone-else/x'"):  # the id given, not the one derived
        push_output(out, repo_id="someone-else/x")
    with pytest.raises(PushError, match="model repo 'tester/b/c': not a valid Hub repo id"):
        push_output(out, repo_id="tester/b/c")
    with pytest.raises(PushError, match="dataset repo 'someone-else/d'"):
        push_output(out, repo_id="tester/x", dataset_repo_id="someone-else/d")
    assert not hub_server.repos


# --------------------------------------------------------------------------------------- preflight checks
def test_check_push_ready_returns_username(hub_server):
    assert check_push_ready() == "tester"
    assert check_push_ready(token="another-token") == "tester"


def test_check_push_ready_without_token(hub_server, monkeypatch, out):
    monkeypatch.delenv("HF_TOKEN")  # HF_HOME is an empty temp dir: no stored token either
    with pytest.raises(PushError, match="HF_TOKEN"):
        check_push_ready()
    before = tree_hashes(out)
    with pytest.raises(PushError, match="no access token"):
        push_output(out)
    assert tree_hashes(out) == before and not hub_server.repos


def test_check_push_ready_rejected_token(hub_server):
    hub_server.rejected_tokens.add("hf_loopback_test_token")
    with pytest.raises(PushError, match="rejected"):
        check_push_ready()


def test_check_push_ready_unreachable_endpoint(hub_server, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(PushError, match="HF_ENDPOINT") as info:
        check_push_ready()
    assert "http://127.0.0.1:9" in str(info.value)


def _run_python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)


CHECK_SNIPPET = """
from genie_hub.errors import PushError
from genie_hub.hub import check_push_ready
try:
    print("USER", check_push_ready())
except PushError as exc:
    print("PUSHERROR", exc)
"""


def test_offline_mode_is_a_push_error(hub_server, hub_subprocess_env):
    # HF_HUB_OFFLINE is read when huggingface_hub is imported: check it in a fresh interpreter.
    proc = _run_python(CHECK_SNIPPET, hub_subprocess_env(HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr
    assert "PUSHERROR" in proc.stdout and "HF_HUB_OFFLINE" in proc.stdout, proc.stdout


def test_stored_token_is_used_when_hf_token_is_unset(hub_server, hub_subprocess_env, tmp_path):
    home = tmp_path / "hf_home"
    home.mkdir()
    proc = _run_python(CHECK_SNIPPET, hub_subprocess_env(HF_TOKEN=None, HF_HOME=str(home)))
    assert "PUSHERROR" in proc.stdout and "no access token" in proc.stdout, proc.stdout + proc.stderr
    (home / "token").write_text("hf_stored_token")
    proc = _run_python(CHECK_SNIPPET, hub_subprocess_env(HF_TOKEN=None, HF_HOME=str(home)))
    assert proc.stdout.strip() == "USER tester", proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------- Space
def test_push_space(hub_server, tmp_path):
    from huggingface_hub import HfApi

    space = tmp_path / "space"
    space.mkdir()
    (space / "README.md").write_text(
        "---\ntitle: Genie demo\nsdk: gradio\nsdk_version: 6.31.0\napp_file: app.py\npython_version: '3.11'\n"
        f"models:\n- {MODEL_ID}\nshort_description: Genie W4A4 demo\n---\n\n# Demo\n")
    (space / "app.py").write_text("import gradio as gr\n\ngr.Interface(lambda x: x, 'text', 'text').launch()\n")
    (space / "requirements.txt").write_text("genie_hub\n")

    url = push_space(space, "genie-demo")
    assert url == f"{hub_server.url}/spaces/tester/genie-demo"
    repo = hub_server.repo("tester/genie-demo", "space")
    assert repo.sdk == "gradio" and not repo.private
    remote = hub_server.files("tester/genie-demo", "space")
    assert {k: v for k, v in remote.items() if k != ".gitattributes"} == {
        p.name: p.read_bytes() for p in space.iterdir()}
    info = HfApi().space_info("tester/genie-demo")
    assert info.sdk == "gradio" and info.card_data.app_file == "app.py"

    (space / "app.py").write_text("print('v2')\n")  # re-push updates the Space
    assert push_space(space, "tester/genie-demo") == url
    assert hub_server.files("tester/genie-demo", "space")["app.py"] == b"print('v2')\n"

    hub_server.inject_failure("commit", mode="500", repo_id="tester/genie-demo")
    (space / "app.py").write_text("print('v3')\n")
    with pytest.raises(PushError, match="Space 'tester/genie-demo'.*Nothing on this machine was changed"):
        push_space(space, "genie-demo")
    with pytest.raises(PushError, match="README.md"):
        push_space(tmp_path / "missing", "genie-demo")


# --------------------------------------------------------------------------------------- the server itself
def test_server_keeps_history_and_answers_like_the_hub(hub_server, tmp_path):
    """Pinned revisions still resolve after a new commit; missing folders/files get the Hub's error codes."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RemoteEntryNotFoundError, RepositoryNotFoundError

    api = HfApi()
    api.create_repo("tester/history")
    folder = tmp_path / "f"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("v1")
    (folder / "sub" / "w.safetensors").write_bytes(b"\0binary" * 100)
    first = api.upload_folder(repo_id="tester/history", folder_path=folder).oid
    (folder / "a.txt").write_text("v2")
    second = api.upload_folder(repo_id="tester/history", folder_path=folder).oid
    assert first != second
    assert Path(hf_hub_download("tester/history", "a.txt", revision=first)).read_text() == "v1"
    assert Path(hf_hub_download("tester/history", "a.txt")).read_text() == "v2"
    assert Path(hf_hub_download("tester/history", "sub/w.safetensors")).read_bytes() == b"\0binary" * 100
    assert sorted(api.list_repo_files("tester/history")) == [".gitattributes", "a.txt", "sub/w.safetensors"]
    lfs = {f.path: f.lfs for f in api.list_repo_tree("tester/history", recursive=True) if hasattr(f, "lfs")}
    assert lfs["sub/w.safetensors"] is not None and lfs["a.txt"] is None
    with pytest.raises(RemoteEntryNotFoundError):
        list(api.list_repo_tree("tester/history", path_in_repo="nope"))
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("tester/history", "nope.txt")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("tester/does-not-exist")
    api.delete_file("a.txt", repo_id="tester/history")
    assert "a.txt" not in hub_server.files("tester/history")
    assert [c.commit_id for c in api.list_repo_commits("tester/history")][1:3] == [second, first]


# --------------------------------------------------------------------------------------- huggingface-cli upload options
def test_push_to_a_branch_with_a_commit_message(hub_server, out):
    from huggingface_hub import HfApi
    from transformers import AutoModelForImageClassification

    result = push_output(out, revision="genie-v2", commit_message="Quantized with genie_hub")
    assert hub_server.commit_count(MODEL_ID) == 1 and hub_server.commit_count(DATASET_ID, "dataset") == 1  # main
    for repo_id, repo_type, kind in ((MODEL_ID, "model", "model"), (DATASET_ID, "dataset", "dataset")):
        head = hub_server.branch(repo_id, "genie-v2", repo_type)
        assert head is not None and head.title == "Quantized with genie_hub"
        assert result[kind]["revision"] == "genie-v2" and result[kind]["commit"] == head.sha
    _assert_model_repo_matches_at(hub_server, out, "genie-v2")
    model = AutoModelForImageClassification.from_pretrained(MODEL_ID, revision="genie-v2")
    assert model.config.quantization_config.quant_method == "genie"
    assert HfApi().list_repo_commits(MODEL_ID, revision="genie-v2")[0].title == "Quantized with genie_hub"
    again = push_output(out, revision="genie-v2")  # the branch exists now: nothing changed, no new commit
    assert again["model"]["commit"] == result["model"]["commit"]


def _assert_model_repo_matches_at(hub, out: Path, revision: str) -> None:
    remote = hub.files(MODEL_ID, revision=revision)
    assert {k: v for k, v in remote.items() if k != ".gitattributes"} == _expected_remote_model_files(out)


def test_push_as_pull_requests(hub_server, out):
    from huggingface_hub import hf_hub_download

    result = push_output(out, create_pr=True)
    assert hub_server.commit_count(MODEL_ID) == 1 and hub_server.commit_count(DATASET_ID, "dataset") == 1
    assert result["model"]["pr_url"].endswith(f"/{MODEL_ID}/discussions/1")
    assert result["dataset"]["pr_url"].endswith(f"/datasets/{DATASET_ID}/discussions/1")
    assert result["model"]["pr_revision"] == "refs/pr/1"
    assert hub_server.pull_request(MODEL_ID, 1).sha == result["model"]["commit"]
    _assert_model_repo_matches_at(hub_server, out, "refs/pr/1")
    config = hf_hub_download(MODEL_ID, "config.json", revision="refs/pr/1")
    assert json.loads(Path(config).read_text())["quantization_config"]["quant_method"] == "genie"
    assert json.loads((out / "run.json").read_text())["push"]["model"]["pr_url"] == result["model"]["pr_url"]


def test_explicit_token_is_used_instead_of_hf_token(hub_server, out, monkeypatch):
    import os

    hub_server.rejected_tokens.add(os.environ["HF_TOKEN"])
    try:
        with pytest.raises(PushError, match="rejected"):
            push_output(out)
        assert push_output(out, token="hf_another_valid_token")["model"]["repo_id"] == MODEL_ID
    finally:
        hub_server.rejected_tokens.discard(os.environ["HF_TOKEN"])


def test_push_options_are_checked_before_any_upload(hub_server, out):
    with pytest.raises(PushError, match="--create-pr"):
        push_output(out, create_pr=True, revision="dev")
    with pytest.raises(PushError, match="commit message"):
        push_output(out, commit_message="  ")
    assert not hub_server.repos


def test_cli_push_takes_the_upload_options(hub_server, out, capsys):
    from genie_hub.cli import main

    assert main(["push", str(out), "--create-pr", "--commit-message", "Genie W4A4", "--token", "hf_cli"]) == 0
    printed = capsys.readouterr().out
    assert f"{MODEL_ID}/discussions/1" in printed and "pull request" in printed
    assert hub_server.pull_request(MODEL_ID, 1).title == "Genie W4A4"
    assert main(["push", str(out), "--revision", "dev", "--create-pr"]) == 1
    assert "--create-pr" in capsys.readouterr().err


def test_a_pull_request_without_changes_says_none_was_opened(hub_server, out, capsys, caplog):
    """huggingface_hub skips an empty commit, so `--create-pr` on a repo that already holds the files opens no
    pull request: the output says so rather than print a commit URL as if something had been proposed."""
    from genie_hub.cli import main

    push_output(out)
    commits = hub_server.commit_count(MODEL_ID)
    assert main(["push", str(out), "--create-pr"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("no pull request was opened") == 2 and "discussions" not in printed
    assert hub_server.commit_count(MODEL_ID) == commits and hub_server.pull_request(MODEL_ID, 1) is None
    assert json.loads((out / "run.json").read_text())["push"]["model"]["unchanged"] is True
    # A plain re-push of the same files: no commit, said once in genie_hub's words (huggingface_hub's own warning,
    # shown even under -q, is taken).
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert main(["-q", "push", str(out)]) == 0
    assert capsys.readouterr().out.count("(no changes: it already holds these files)") == 2
    assert not [r for r in caplog.records if "No files have been modified" in r.getMessage()]
    assert hub_server.commit_count(MODEL_ID) == commits


# --------------------------------------------------------------------------------------- a genie_hub run's cards and checks
@pytest.fixture
def genie_out(out) -> Path:
    """`out` with what `genie_hub quantize` leaves: a complete run.json and the cards rendered from it."""
    return make_genie_run(out)


def test_genie_cards_are_rendered_for_the_pushed_ids_and_recorded(hub_server, genie_out):
    push_output(genie_out)
    card = hub_server.files(MODEL_ID)["README.md"]
    assert f'from_pretrained("{MODEL_ID}")'.encode() in card and f"- {DATASET_ID}".encode() in card
    assert (genie_out / "model" / "README.md").read_bytes() == card  # genie_hub's own card: saved
    run = json.loads((genie_out / "run.json").read_text())
    assert run["cards"]["model"] == __import__("hashlib").sha256(card).hexdigest()


def test_a_deleted_card_is_published_rendered_from_run_json(hub_server, genie_out):
    (genie_out / "model" / "README.md").unlink()
    (genie_out / "dataset" / "README.md").unlink()
    push_output(genie_out)
    card = hub_server.files(MODEL_ID)["README.md"]
    assert f'from_pretrained("{MODEL_ID}")'.encode() in card
    assert f'load_dataset("{DATASET_ID}"'.encode() in hub_server.files(DATASET_ID, "dataset")["README.md"]
    assert (genie_out / "model" / "README.md").read_bytes() == card


def test_an_edited_card_is_published_as_it_is_and_left_alone(hub_server, genie_out, caplog):
    readme, dataset_readme = genie_out / "model" / "README.md", genie_out / "dataset" / "README.md"
    readme.write_text(readme.read_text() + "\n## My notes\n\nUSER EDIT\n")
    dataset_readme.write_text(dataset_readme.read_text() + "\nDATASET USER EDIT\n")
    before = tree_hashes(genie_out)
    with caplog.at_level("INFO", logger="genie_hub"):
        push_output(genie_out)
    card = hub_server.files(MODEL_ID)["README.md"].decode()
    assert "USER EDIT" in card and f"- {DATASET_ID}" in card  # the user's card, linked to the calibration set
    assert hub_server.files(DATASET_ID, "dataset")["README.md"] == dataset_readme.read_bytes()
    after = tree_hashes(genie_out)
    assert {k: v for k, v in after.items() if k != "run.json"} == {k: v for k, v in before.items() if k != "run.json"}
    assert "edited" in caplog.text and str(readme) in caplog.text


@pytest.mark.parametrize("header,error", [
    ("configs: [\n", "could not be parsed"),
    ("configs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/nothing-*\n",
     "names the data files 'data/nothing-\\*'"),
])
def test_an_edited_dataset_card_that_would_break_load_dataset_is_refused(hub_server, genie_out, header, error):
    """Published as it is, a user's dataset card with a broken YAML header, or configs that name no file, made
    `load_dataset(repo)` fail on the published repo."""
    dataset_readme = genie_out / "dataset" / "README.md"
    dataset_readme.write_text(f"---\n{header}---\n\nMy card\n")
    with pytest.raises(PushError, match=error):
        push_output(genie_out)
    assert not hub_server.repos  # nothing uploaded
    if "data/nothing" in header:  # a file the repo already holds counts: another split kept there
        from huggingface_hub import HfApi

        HfApi().create_repo(DATASET_ID, repo_type="dataset")
        HfApi().upload_file(path_or_fileobj=b"x", path_in_repo="data/nothing-0.parquet", repo_id=DATASET_ID,
                            repo_type="dataset")
        push_output(genie_out)


def test_stale_remote_shards_and_weights_are_deleted_in_the_same_commit(hub_server, genie_out):
    from datasets import load_dataset
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(MODEL_ID)
    api.upload_file(path_or_fileobj=b"stale weights" * 10, path_in_repo="model.safetensors", repo_id=MODEL_ID)
    for name in ("processor_config.json", "adapter_config.json", "adapter_model.safetensors"):  # read over ours
        api.upload_file(path_or_fileobj=b"{}", path_in_repo=name, repo_id=MODEL_ID)
    api.upload_file(path_or_fileobj=b"notes", path_in_repo="NOTES.md", repo_id=MODEL_ID)
    for name in ("fp32/model.safetensors", "training_args.bin"):  # not the repo's weights: left alone
        api.upload_file(path_or_fileobj=b"mine", path_in_repo=name, repo_id=MODEL_ID)
    api.create_repo(DATASET_ID, repo_type="dataset")
    for name in ("data/test-00000-of-00001.parquet", "data/LICENSE.txt"):  # another split, another file: kept
        api.upload_file(path_or_fileobj=b"mine", path_in_repo=name, repo_id=DATASET_ID, repo_type="dataset")
    shard = (genie_out / "dataset" / "data" / "train-00000-of-00001.parquet").read_bytes()
    api.upload_file(path_or_fileobj=shard, path_in_repo="data/train-00000-of-00002.parquet", repo_id=DATASET_ID,
                    repo_type="dataset")
    commits = hub_server.commit_count(MODEL_ID), hub_server.commit_count(DATASET_ID, "dataset")
    push_output(genie_out)
    assert (hub_server.commit_count(MODEL_ID), hub_server.commit_count(DATASET_ID, "dataset")) == (
        commits[0] + 1, commits[1] + 1)
    model_files = set(hub_server.files(MODEL_ID))
    assert not model_files & {"model.safetensors", "processor_config.json", "adapter_config.json",
                              "adapter_model.safetensors"}  # only these top-level files are replaced
    assert {"NOTES.md", "fp32/model.safetensors", "training_args.bin"} <= model_files
    assert sorted(f for f in hub_server.files(DATASET_ID, "dataset") if f.startswith("data/")) == [
        "data/LICENSE.txt", "data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet"]
    assert load_dataset(DATASET_ID, split="train").num_rows == NUM_IMAGES  # the card's configs read train-* only


def _edit_run(out: Path, edit) -> None:
    data = json.loads((out / "run.json").read_text())
    edit(data)
    (out / "run.json").write_text(json.dumps(data))


def test_a_checkpoint_other_than_the_recorded_one_is_refused(hub_server, genie_out):
    _edit_run(genie_out, lambda d: d.update(weight_bits=8))
    with pytest.raises(PushError, match="weight_bits 4 in its config.json, 8 in run.json"):
        push_output(genie_out)
    _edit_run(genie_out, lambda d: (d.update(weight_bits=4), d["layers"].popitem()))
    with pytest.raises(PushError, match="other quantized layers"):
        push_output(genie_out)
    assert not hub_server.repos


def test_a_zero_shot_run_without_its_dataset_folder_is_refused(hub_server, genie_out):
    shutil.rmtree(genie_out / "dataset")
    with pytest.raises(PushError, match="zero-shot run.*dataset"):
        push_output(genie_out)
    assert not hub_server.repos


@pytest.mark.parametrize("edit", [
    lambda d: [d["config"].pop(k) for k in ("second_layer_act_bits", "first_layer")],
    lambda d: d["synthetic"].pop("loss_summary"),
    lambda d: d.update(config="oops"),
], ids=["old-config", "no-loss-summary", "wrong-type"])
def test_a_run_json_the_cards_cannot_be_rendered_from_is_a_push_error(hub_server, genie_out, edit):
    _edit_run(genie_out, edit)
    with pytest.raises(PushError, match="run.json.*Rerun the quantize command"):
        push_output(genie_out)
    assert not hub_server.repos


def test_a_branch_push_names_the_branch_in_both_cards(hub_server, genie_out):
    push_output(genie_out, revision="exp")
    card = hub_server.files(MODEL_ID, revision="exp")["README.md"].decode()
    assert f'from_pretrained("{MODEL_ID}", revision="exp")' in card
    dataset_card = hub_server.files(DATASET_ID, "dataset", revision="exp")["README.md"].decode()
    assert f'load_dataset("{DATASET_ID}", revision="exp", split="train")' in dataset_card


@pytest.mark.parametrize("folder", ["model", "dataset"])
def test_a_symlinked_model_or_dataset_folder_is_refused(hub_server, out, tmp_path, folder):
    elsewhere = tmp_path / "elsewhere"
    shutil.move(str(out / folder), elsewhere)
    (out / folder).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(PushError, match="symbolic link"):
        push_output(out)
    assert not hub_server.repos


def test_a_space_re_push_deletes_the_files_genie_hub_owns_and_no_others(hub_server, tmp_path):
    from huggingface_hub import HfApi

    space = tmp_path / "space"
    (space / "wheels").mkdir(parents=True)
    (space / "README.md").write_text("---\nsdk: gradio\napp_file: app.py\n---\n")
    (space / "app.py").write_text("print('app')\n")
    (space / "space_config.json").write_text('{"quantized_model": "tester/old"}\n')
    (space / "wheels" / "genie_hub-0.1.0-py3-none-any.whl").write_bytes(b"old wheel")
    push_space(space, "genie-demo")
    HfApi().upload_file(path_or_fileobj=b"mine", path_in_repo="NOTES.md", repo_id="tester/genie-demo",
                        repo_type="space")
    (space / "space_config.json").unlink()  # defaults now
    (space / "wheels" / "genie_hub-0.1.0-py3-none-any.whl").unlink()
    (space / "wheels" / "genie_hub-0.2.0-py3-none-any.whl").write_bytes(b"new wheel")
    push_space(space, "genie-demo")
    remote = set(hub_server.files("tester/genie-demo", "space"))
    assert "space_config.json" not in remote and "wheels/genie_hub-0.1.0-py3-none-any.whl" not in remote
    assert {"wheels/genie_hub-0.2.0-py3-none-any.whl", "NOTES.md", "app.py"} <= remote


def test_cli_push_space_checks_the_models_exist_and_passes_the_token(hub_server, monkeypatch, capsys, caplog):
    import genie_hub.space as space
    from genie_hub.cli import main
    from huggingface_hub import HfApi

    assert main(["push-space", "tester/cmp", "--fp32", "genie-hub/fashion-mnist-resnet", "--quantized",
                 "tester/typo"]) == 1
    assert "tester/typo is not a model on the Hub" in capsys.readouterr().err
    assert ("space", "tester/cmp") not in hub_server.repos  # refused before any upload

    HfApi().create_repo("tester/q")
    embedded = (Path(__file__).resolve().parents[1]
                / "genie_hub/assets/fashion-mnist-resnet-genie-w4a4/config.json").read_bytes()
    HfApi().upload_file(path_or_fileobj=embedded, path_in_repo="config.json", repo_id="tester/q")
    seen = {}

    def prepared(*args, **kwargs):
        seen.update(kwargs)
        raise space.GenieError("stop here")

    monkeypatch.setattr(space, "prepare_space_folder", prepared)
    with caplog.at_level("WARNING", logger="genie_hub"):
        assert main(["push-space", "tester/cmp", "--quantized", "tester/q", "--private", "--token", "hf_cli"]) == 1
    assert seen["token"] == "hf_cli"
    assert "private Space cannot download its own genie_hub wheel" in caplog.text


def test_cli_push_space_refuses_two_models_that_cannot_be_compared(hub_server, capsys):
    """A Space whose FP32 and quantized defaults differ in classes or architecture fails every Compare; a side
    left out is the embedded default's, so a lone --quantized of another model is refused too (helper-29)."""
    from genie_hub.cli import main
    from huggingface_hub import HfApi

    for model_id, config in (("tester/two", {"model_type": "resnet", "id2label": {"0": "cat", "1": "dog"}}),
                             ("tester/regnet", {"model_type": "regnet", "num_labels": 10}),
                             ("tester/no-config", None)):
        HfApi().create_repo(model_id)
        if config:
            HfApi().upload_file(path_or_fileobj=json.dumps(config).encode(), path_in_repo="config.json",
                                repo_id=model_id)
    assert main(["push-space", "tester/cmp", "--quantized", "tester/two"]) == 1
    assert "has 10 classes and 'tester/two' 2" in capsys.readouterr().err
    assert main(["push-space", "tester/cmp", "--fp32", "tester/regnet"]) == 1
    assert "'tester/regnet' is a 'regnet' model and 'genie-hub/fashion-mnist-resnet-genie-w4a4' a 'resnet'" in \
        capsys.readouterr().err
    assert main(["push-space", "tester/cmp", "--fp32", "tester/no-config", "--quantized", "tester/two"]) == 1
    assert "config.json of 'tester/no-config' could not be read" in capsys.readouterr().err
    plain = (Path(__file__).resolve().parents[1] / "genie_hub/assets/fashion-mnist-resnet/config.json").read_bytes()
    HfApi().create_repo("tester/plain")
    HfApi().upload_file(path_or_fileobj=plain, path_in_repo="config.json", repo_id="tester/plain")
    assert main(["push-space", "tester/cmp", "--quantized", "tester/plain"]) == 1  # the FP model as "quantized"
    assert "'tester/plain' has no quantization_config" in capsys.readouterr().err
    assert main(["push-space", "tester/cmp", "--fp32", "genie-hub/fashion-mnist-resnet-genie-w4a4"]) == 1
    assert "is itself quantized" in capsys.readouterr().err
    assert ("space", "tester/cmp") not in hub_server.repos  # refused before any upload


def test_cards_of_a_record_without_digests_are_genie_hubs(hub_server, genie_out):
    """run.json of an older genie_hub has no "cards" digests: its cards are taken as genie_hub's (as that version
    did) and rendered for the pushed ids."""
    _edit_run(genie_out, lambda d: d.pop("cards"))
    push_output(genie_out)
    assert f'from_pretrained("{MODEL_ID}")'.encode() in hub_server.files(MODEL_ID)["README.md"]
    assert f'load_dataset("{DATASET_ID}"'.encode() in hub_server.files(DATASET_ID, "dataset")["README.md"]


def test_a_shard_added_to_the_calibration_set_by_hand_is_refused(hub_server, genie_out):
    """Every parquet file in OUT/dataset/data is published as the train split: one more than the run wrote would
    join it (and `load_dataset` would refuse the card's split size)."""
    data = genie_out / "dataset" / "data"
    shutil.copy(data / "train-00000-of-00001.parquet", data / "train-extra.parquet")
    with pytest.raises(PushError, match=r"hold \d+ images, but .* records \d+: a shard was added or removed"):
        push_output(genie_out)
    assert not hub_server.repos



def test_endpoint_credentials_are_never_shown(monkeypatch):
    from huggingface_hub import constants

    from genie_hub.hub import _endpoint

    monkeypatch.setattr(constants, "ENDPOINT", "https://alice:s3cret@mirror.example.org/hub")
    assert _endpoint() == "https://mirror.example.org/hub"
    monkeypatch.setattr(constants, "ENDPOINT", "")
    assert _endpoint() == "(empty HF_ENDPOINT)"


def test_a_dry_run_lists_what_a_push_would_do_and_changes_nothing(hub_server, genie_out, capsys):
    from huggingface_hub import HfApi

    from genie_hub.cli import main

    before = tree_hashes(genie_out)
    plan = push_output(genie_out, dry_run=True)
    assert not hub_server.repos and tree_hashes(genie_out) == before  # no repo created, OUT untouched
    model, dataset = plan["model"], plan["dataset"]
    assert plan["dry_run"] and (model["repo_id"], dataset["repo_id"]) == (MODEL_ID, DATASET_ID)
    assert not model["exists"] and model["delete"] == [] and model["readme"].startswith("the card genie_hub renders")
    local = {p.relative_to(genie_out / "model").as_posix(): p.stat().st_size
             for p in (genie_out / "model").rglob("*") if p.is_file()}
    assert {k: v for k, v in model["upload"].items() if k != "README.md"} == {
        k: v for k, v in local.items() if k != "README.md"}
    assert "data/train-00000-of-00001.parquet" in dataset["upload"]

    # An existing repo with weights the push would replace, and a branch that does not exist yet (read as main).
    api = HfApi()
    api.create_repo(MODEL_ID)
    api.upload_file(path_or_fileobj=b"stale weights", path_in_repo="model.safetensors", repo_id=MODEL_ID)
    api.upload_file(path_or_fileobj=b"notes", path_in_repo="NOTES.md", repo_id=MODEL_ID)
    commits = hub_server.commit_count(MODEL_ID)
    assert main(["push", str(genie_out), "--dry-run", "--revision", "dev"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("Dry run: nothing was uploaded.")
    assert f"Model repo {MODEL_ID} (branch dev)" in printed and f"Dataset repo {DATASET_ID} (new) (branch dev)" in printed
    assert "  - model.safetensors (deleted" in printed and "NOTES.md" not in printed
    assert "  + config.json (" in printed and "  + data/train-00000-of-00001.parquet (" in printed
    assert hub_server.commit_count(MODEL_ID) == commits and hub_server.branch(MODEL_ID, "dev") is None
    assert ("dataset", DATASET_ID) not in hub_server.repos and tree_hashes(genie_out) == before

    push_output(genie_out)  # the real push deletes what the dry run listed
    assert "model.safetensors" not in hub_server.files(MODEL_ID)


def test_a_dry_run_makes_the_checks_of_a_push(hub_server, genie_out):
    from huggingface_hub import HfApi

    HfApi().create_repo(MODEL_ID)  # public: --private must be refused, dry or not
    with pytest.raises(PushError, match="already exists and is public"):
        push_output(genie_out, private=True, dry_run=True)
    with pytest.raises(PushError, match="namespace"):
        push_output(genie_out, repo_id="someone-else/model", dry_run=True)
