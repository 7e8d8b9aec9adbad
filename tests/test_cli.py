"""`genie_hub quantize / evaluate` end to end, as a user runs them (tiny settings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from genie_hub.cli import main
from genie_hub.data import fashion_mnist_dir
from tiny_models import IMAGE_SIZE, save_tiny_model

TINY = ["--profile", "quick", "--num-samples", "8", "--batch-size", "4", "--synthesis-iterations", "3",
        "--reconstruction-steps", "3", "--seed", "1"]
HAVE_FASHION_MNIST = (fashion_mnist_dir() / "t10k-labels-idx1-ubyte.gz").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    save_tiny_model(root / "base", "regnet")
    out = root / "out"
    assert main(["quantize", str(root / "base"), "-o", str(out), "-w", "3", "-a", "4", "--override",
                 "classifier.1=8/8", *TINY]) == 0
    return root, out


def test_quantize_writes_a_complete_hub_ready_folder(tiny_run):
    root, out = tiny_run
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "genie"
    assert config["quantization_config"]["weight_bits"] == 3
    for name in ("genie_model.safetensors", "preprocessor_config.json", "README.md"):
        assert (out / "model" / name).exists()
    assert not any(k.endswith(".weight") and "convolution" in k for k in load_file(str(out / "model" / "genie_model.safetensors")))
    card = (out / "model" / "README.md").read_text()
    metadata = card.split("---")[1]
    assert "base_model" not in metadata and str(root) not in metadata  # a local base: no Hub relation, no path
    assert "pipeline_tag: image-classification" in card and "genie" in card and "No real data was used" in card
    assert "--override classifier.1=8/8" in card  # the exact command
    assert "; wall time " in card and "commands that computed it" not in card  # one command made it
    assert "steps per unit, batch 8)" in card  # 8 images: reconstruction's batches of 32 hold all 8
    run = json.loads((out / "run.json").read_text())
    assert run["zero_shot"] and run["weight_bits"] == 3 and len(run["unit_errors"]) == len(run["units"])
    # The dataset folder holds exactly the synthesized tensors, with previews.
    from datasets import load_dataset

    from genie_hub.synthetic_dataset import load_synthetic_dataset

    dataset = load_dataset("parquet", data_files=str(out / "dataset" / "data" / "*.parquet"), split="train")
    shards = torch.cat([load_file(str(p))["pixel_values"] for p in sorted((out / "work" / "synthetic").glob("batch_*"))])
    assert torch.equal(load_synthetic_dataset(out / "dataset"), shards)
    assert dataset[0]["image"].size == (IMAGE_SIZE, IMAGE_SIZE)
    dataset_card = (out / "dataset" / "README.md").read_text()
    assert "synthetic" in dataset_card and "no-annotation" in dataset_card and "calibration only" in dataset_card
    assert "dataset_info:" in dataset_card and "path: data/train-*" in dataset_card and "Storage: **exact**" in dataset_card


def test_quantized_folder_loads_with_transformers(tiny_run):
    from transformers import AutoModelForImageClassification

    import genie_hub
    from genie_hub.errors import CheckpointError

    _, out = tiny_run
    with pytest.raises(CheckpointError, match=f"is a genie_hub output folder: its quantized model is in {out}/model"):
        genie_hub.from_pretrained(out)  # the output folder, not its model/ (helper-30)
    model = AutoModelForImageClassification.from_pretrained(out / "model")
    logits = model(pixel_values=torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)).logits
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()


def test_rerun_resumes_without_redoing_work(tiny_run, capsys):
    root, out = tiny_run
    shards = {p: p.stat().st_mtime_ns for p in (out / "work" / "synthetic").glob("batch_*")}
    assert main(["quantize", str(root / "base"), "-o", str(out), "-w", "3", "-a", "4", "--override",
                 "classifier.1=8/8", *TINY]) == 0
    assert shards == {p: p.stat().st_mtime_ns for p in (out / "work" / "synthetic").glob("batch_*")}
    run = json.loads((out / "run.json").read_text())
    assert all(u["resumed"] for u in run["unit_errors"])
    # The card and the zoo count the first command's minutes too, not only this rerun's (helper-29: "0.0 min").
    first = json.loads((out / "work" / "elapsed.json").read_text())
    assert first["commands"] == 2 and run["total_commands"] == 2
    assert run["total_wall_seconds"] > run["wall_seconds"] > 0
    assert "over the 2 commands that computed it" in (out / "model" / "README.md").read_text()


def test_the_closing_lines_quote_the_output_folder_so_they_paste_safely(capsys):
    import ast
    import shlex

    from genie_hub.outputs import RunRecord
    from genie_hub.pipeline import _print_summary

    out = Path("runs") / "o'ut $(touch x) dir"
    _print_summary(RunRecord(wall_seconds=1.0), out, fashion_mnist_missing=True)
    printed = capsys.readouterr().out
    push = printed.rsplit("publish it: ", 1)[1].strip()
    assert shlex.split(push) == ["genie_hub", "push", str(out)]
    evaluate = printed.split("`genie_hub evaluate ", 1)[1].split(" --dataset", 1)[0]
    assert shlex.split(evaluate) == [str(out / "model")]
    load = printed.split("from_pretrained(", 1)[1].split(") after", 1)[0]
    assert ast.literal_eval(load) == str(out / "model")


def test_unknown_model_is_one_clear_line(tmp_path, capsys):
    assert main(["quantize", "nobody/no-such-model", "-o", str(tmp_path / "o"), *TINY]) == 1
    err = capsys.readouterr().err
    assert "Could not load model 'nobody/no-such-model'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_prior_that_does_not_apply_is_refused_before_any_work(tmp_path, capsys):
    from transformers import ConvNextConfig, ConvNextForImageClassification, ViTImageProcessor

    ConvNextForImageClassification(ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1],
                                                  num_labels=3)).save_pretrained(tmp_path / "convnext")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "convnext")
    assert main(["quantize", str(tmp_path / "convnext"), "-o", str(tmp_path / "o"), "--synthesis-prior",
                 "bn-statistics", *TINY]) == 2
    err = capsys.readouterr().err
    assert "does not apply" in err and "few-shot" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_push_without_token_refuses_before_synthesis(tmp_path):
    save_tiny_model(tmp_path / "base", "resnet-basic")
    env = {k: v for k, v in __import__("os").environ.items() if k != "HF_TOKEN"}
    env["HF_HOME"] = str(tmp_path / "hf-home")
    result = subprocess.run([sys.executable, "-m", "genie_hub", "quantize", str(tmp_path / "base"), "-o",
                             str(tmp_path / "o"), "--push", *TINY], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1 and "token" in result.stderr.lower() and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not HAVE_FASHION_MNIST, reason="apt-get install dataset-fashion-mnist")
def test_default_model_job_reports_fp32_and_quantized_top1(tmp_path, capsys):
    out = tmp_path / "default"
    assert main(["quantize", "-o", str(out), "--profile", "quick", "--num-samples", "8", "--batch-size", "8",
                 "--synthesis-iterations", "2", "--reconstruction-steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "fashion-mnist test top-1 on 10000 images: FP32 92." in printed
    run = json.loads((out / "run.json").read_text())
    assert run["evaluation"]["num_images"] == 10000 and 0.5 < run["evaluation"]["quantized_top1"] <= 1
    card = (out / "model" / "README.md").read_text()
    assert "Fashion-MNIST test top-1" in card and "Fashion-MNIST test top-5" in card
    assert main(["evaluate", str(out / "model"), "--fp32", str(Path(run["base_model"])), "--limit", "500"]) == 0
    printed = capsys.readouterr().out
    assert "on 500 images of fashion-mnist (test[:500])" in printed and "top-1 agreement" in printed


def test_options_that_would_have_no_effect_are_refused_or_named_before_anything_runs(tmp_path, hub_server, capsys,
                                                                                      caplog):
    """--repo-id without --push, --eval-limit with --eval-dataset none: each would be silently ignored, and whoever
    typed it expected it to act. --synthesis-iterations with --few-shot is named in a warning."""
    cases = [(["--repo-id", "me/x", "--create-pr", "--token", "hf_x"], "--repo-id, --create-pr, --token (only --push"),
             (["--eval-dataset", "none", "--eval-limit", "5", "--eval-unlabelled"],
              "--eval-limit, --eval-unlabelled (nothing is evaluated"),
             ([str(tmp_path), "--eval-limit", "5"], "--eval-limit (nothing is evaluated: --eval-dataset is none, or auto")]
    out = tmp_path / "out"
    for options, needle in cases:
        assert main(["quantize", "-o", str(out), *options]) == 2
        err = capsys.readouterr().err
        assert "have no effect in this run" in err and needle in err, err
        assert not out.exists()
    save_tiny_model(tmp_path / "local", "resnet-basic")  # a local folder has no revisions: refused, not recorded
    assert main(["quantize", str(tmp_path / "local"), "-o", str(out), "--revision", "dev", "--eval-dataset", "none"]) == 2
    assert "local folder, which has only the files in it" in capsys.readouterr().err and not out.exists()
    (tmp_path / "empty").mkdir()
    with caplog.at_level("WARNING", logger="genie_hub"):
        assert main(["quantize", "-o", str(out), "--few-shot", str(tmp_path / "empty"), "--synthesis-iterations", "5",
                     "--dataset-storage", "fp16", "--push", "--dataset-repo-id", "me/d"]) != 0  # refused next
    assert any("--synthesis-iterations, --dataset-storage, --dataset-repo-id: no effect in a --few-shot run"
               in r.getMessage() for r in caplog.records)
    capsys.readouterr()
    assert main(["quantize", "-o", str(out), "--few-shot", str(tmp_path / "empty"), "--synthesis-prior", "nonsense",
                 "--eval-dataset", "none"]) == 2  # an unknown name is still an error, not recorded
    assert "Unknown synthesis prior 'nonsense'" in capsys.readouterr().err


def test_column_options_with_the_automatic_fashion_mnist_evaluation_are_refused_before_compute(tmp_path, capsys):
    """The embedded model's default evaluation (--eval-dataset auto) is Fashion-MNIST, which has no columns: the
    column options and --eval-unlabelled were silently ignored there (the run went on to report labelled top-1),
    while --eval-dataset fashion-mnist refused them."""
    out = tmp_path / "out"
    for options in (["--eval-image-column", "img"], ["--eval-label-column", "y"], ["--eval-unlabelled"]):
        assert main(["quantize", "-o", str(out), "-q", *TINY, *options]) == 2
        err = capsys.readouterr().err
        assert f"{options[0]}: --eval-dataset auto evaluates the embedded model on Fashion-MNIST" in err, err
        assert not out.exists()


@pytest.mark.skipif(not HAVE_FASHION_MNIST, reason="apt-get install dataset-fashion-mnist")
def test_few_shot_calibrates_on_real_images(tmp_path):
    out = tmp_path / "fewshot"
    assert main(["quantize", "-o", str(out), "--few-shot", "fashion-mnist", "--eval-dataset", "none",
                 "--profile", "quick", "--num-samples", "16", "--reconstruction-steps", "2"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["zero_shot"] is False and run["calibration_source"] == "fashion-mnist"
    assert not (out / "dataset").exists() and not (out / "work" / "synthetic").exists()
    assert "Few-shot calibration" in (out / "model" / "README.md").read_text()


def test_a_few_shot_folder_with_fewer_images_than_asked_is_reported_as_it_was_used(tmp_path):
    """Five photos and --num-samples 16: calibration uses the five (with a warning), and run.json and the card say
    five, not sixteen."""
    from PIL import Image

    save_tiny_model(tmp_path / "fp", "resnet-basic")
    (tmp_path / "photos").mkdir()
    rng = np.random.RandomState(0)
    for i in range(5):
        Image.fromarray(rng.randint(0, 256, (40, 36, 3), dtype=np.uint8)).save(tmp_path / "photos" / f"{i}.png")
    out = tmp_path / "out"
    assert main(["-q", "quantize", str(tmp_path / "fp"), "-o", str(out), "--few-shot", str(tmp_path / "photos"),
                 "--profile", "quick", "--num-samples", "16", "--reconstruction-steps", "2"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["num_calibration_images"] == 5 and run["config"]["num_samples"] == 16
    card = (out / "model" / "README.md").read_text()
    assert "Few-shot calibration: 5 real images" in card and "Calibration: 5 real images" in card
    assert "16 real images" not in card


def test_the_default_model_with_no_evaluation_asked_does_not_claim_missing_test_data(tmp_path, capsys):
    out = tmp_path / "default"
    assert main(["quantize", "-o", str(out), "--eval-dataset", "none", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "Done in" in printed and "test data not found" not in printed


def test_the_default_model_without_its_test_data_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GENIE_HUB_FASHION_MNIST_DIR", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    assert main(["quantize", "-o", str(tmp_path / "default"), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "Fashion-MNIST test data not found" in printed and "genie_hub evaluate" in printed


def test_the_load_snippet_of_a_grayscale_models_card_runs(tmp_path, monkeypatch, capsys):
    """transformers' pipeline converts images to RGB, which a one-channel model cannot read: the card of the
    embedded (grayscale) model shows the processor + model call instead, and that code runs as written."""
    import re

    from PIL import Image

    from genie_hub.cards import render_model_card
    from genie_hub.outputs import RunRecord

    out = tmp_path / "out"
    assert main(["-q", "quantize", "-o", str(out), "--eval-dataset", "none", *TINY]) == 0
    run = RunRecord.load(out / "run.json")
    assert run.input_spec["channels"] == 1
    card = (out / "model" / "README.md").read_text()  # as written: before a push it loads OUT/model (helper-31)
    assert 'from_pretrained("out/model")' in card and "No evaluation was run for this checkpoint when" in card
    snippet = re.search(r"## How to load\n\n```python\n(.*?)```", card, re.S).group(1)
    assert "pipeline(" not in snippet and "pipeline" in card  # said why, not offered
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 30, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    exec(compile(snippet, "card snippet", "exec"), {})
    printed = capsys.readouterr().out.strip()
    assert printed in json.loads((out / "model" / "config.json").read_text())["id2label"].values()
    # The dataset card's snippet loads OUT/dataset as well (it named "out-calibration", which is nothing: helper-32).
    dataset_card = (out / "dataset" / "README.md").read_text()
    snippet = re.search(r"```python\n(from datasets import load_dataset.*?)```", dataset_card, re.S).group(1)
    assert 'load_dataset("out/dataset"' in snippet
    scope: dict = {}
    exec(compile(snippet, "dataset card snippet", "exec"), scope)
    from genie_hub.synthetic_dataset import load_synthetic_dataset

    assert scope["calibration"].shape[0] == run.synthetic["num_samples"]  # the synthetic images, from the folder
    assert torch.equal(scope["calibration"], load_synthetic_dataset(out / "dataset"))
    run.input_spec["channels"] = 3
    assert 'pipeline("image-classification"' in str(render_model_card(run, repo_id="user/rgb"))
    assert "matmuls in floating point" not in card
    run.float_attention = ["encoder.layer.0.attention"]
    assert "Attention (1 modules): **matmuls in floating point**" in str(render_model_card(run, repo_id="user/x"))


def test_push_publishes_model_and_dataset_with_cards_for_the_real_ids(tiny_run, hub_server):
    from huggingface_hub import DatasetCard, ModelCard
    from transformers import AutoModelForImageClassification

    from genie_hub.synthetic_dataset import load_synthetic_dataset

    _, out = tiny_run
    assert main(["push", str(out)]) == 0
    repo, dataset_repo = "tester/base-genie-w3a4", "tester/base-genie-w3a4-calibration"
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    remote = AutoModelForImageClassification.from_pretrained(repo)
    local = AutoModelForImageClassification.from_pretrained(out / "model")
    assert torch.equal(remote(pixel_values=x).logits, local(pixel_values=x).logits)
    assert torch.equal(load_synthetic_dataset(dataset_repo), load_synthetic_dataset(out / "dataset"))
    card = ModelCard.load(repo)
    assert card.data.datasets == [dataset_repo] and f'from_pretrained("{repo}")' in card.text
    dataset_card = DatasetCard.load(dataset_repo, repo_type="dataset")
    assert f'load_dataset("{dataset_repo}"' in dataset_card.text
    assert dataset_card.data.dataset_info["splits"][0]["num_examples"] == len(load_synthetic_dataset(dataset_repo))
    assert dataset_card.data.configs[0]["data_files"] == [{"split": "train", "path": "data/train-*"}]
    assert json.loads((out / "run.json").read_text())["push"]["model"]["repo_id"] == repo

    # The same quantize command again (it finds the run finished) keeps the push record and the published ids.
    root = out.parent
    assert main(["quantize", str(root / "base"), "-o", str(out), "-w", "3", "-a", "4", "--override",
                 "classifier.1=8/8", *TINY]) == 0
    assert json.loads((out / "run.json").read_text())["push"]["model"]["repo_id"] == repo
    assert f'from_pretrained("{repo}")' in (out / "model" / "README.md").read_text()
    assert f'load_dataset("{dataset_repo}"' in (out / "dataset" / "README.md").read_text()


def test_push_space_publishes_the_app_pointing_at_the_given_models(hub_server, capsys):
    from huggingface_hub import HfApi

    config = {"model_type": "resnet", "id2label": {"0": "a", "1": "b"}}
    quantized = {**config, "quantization_config": {"quant_method": "genie"}}
    for model_id, content in (("tester/base", config), ("tester/base-genie-w3a4", quantized)):
        HfApi().create_repo(model_id)  # push-space checks that they exist and can be compared
        HfApi().upload_file(path_or_fileobj=json.dumps(content).encode(), path_in_repo="config.json", repo_id=model_id)
    assert main(["push-space", "tester/genie-compare", "--fp32", "tester/base",
                 "--quantized", "tester/base-genie-w3a4"]) == 0
    assert "spaces/tester/genie-compare" in capsys.readouterr().out
    files = set(HfApi().list_repo_files("tester/genie-compare", repo_type="space"))
    assert {"app.py", "README.md", "requirements.txt"} <= files
    readme = HfApi().hf_hub_download("tester/genie-compare", "README.md", repo_type="space")
    text = Path(readme).read_text()
    assert "tester/base-genie-w3a4" in text and "sdk: gradio" in text


def test_push_space_names_a_bad_wheel_or_a_local_folder_before_any_request(tmp_path, monkeypatch, capsys):
    """Local mistakes come first: before, an unreachable endpoint's error hid them, and a text file named like a
    wheel was published into requirements.txt, to fail the Space's build (helper-29)."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: any request would fail
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    fake = tmp_path / "genie_hub-9.9.9-py3-none-any.whl"
    fake.write_text("not a wheel")
    assert main(["push-space", "tester/s", "--fp32", "a/b", "--quantized", "a/c", "--wheel", str(fake)]) == 1
    assert "not a zip archive holding the genie_hub package" in capsys.readouterr().err
    assert main(["push-space", "tester/s", "--quantized", str(tmp_path)]) == 1
    assert "must be a Hub id 'owner/name'" in capsys.readouterr().err


def test_card_metadata_names_the_base_model_its_license_and_the_bits(hub_server, tmp_path, capsys):
    from huggingface_hub import HfApi, ModelCard

    api = HfApi()
    api.create_repo("tester/base-model")
    api.upload_file(path_or_fileobj=b"---\nlicense: mit\nlibrary_name: transformers\n---\n\n# Base\n",
                    path_in_repo="README.md", repo_id="tester/base-model")
    save_tiny_model(tmp_path / "local-copy", "resnet-basic")
    out = tmp_path / "out"
    assert main(["quantize", str(tmp_path / "local-copy"), "-o", str(out), "--base-model", "tester/base-model",
                 *TINY]) == 0
    data = ModelCard.load(out / "model" / "README.md").data
    assert (data.base_model, data.base_model_relation, data.license) == ("tester/base-model", "quantized", "mit")
    assert data.quantized_by == "genie_hub" and "w4a4" in data.tags and "4-bit" in data.tags
    assert getattr(data, "model_name", None) is None  # no results: no model-index, no stray name
    assert main(["quantize", str(tmp_path / "local-copy"), "-o", str(tmp_path / "x"), "--base-model", "not an id",
                 *TINY]) == 2
    assert "--base-model" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- console output and help
def _cli_env(**extra: str) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_DISABLE_PROGRESS_BARS",
                                                            "HF_DATASETS_DISABLE_PROGRESS_BARS")}
    return {**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **extra}


def _run_cli(tmp_path: Path, name: str, *flags: str, **env: str) -> str:
    if not (tmp_path / "base").exists():
        save_tiny_model(tmp_path / "base", "resnet-basic")
    result = subprocess.run([sys.executable, "-m", "genie_hub", "quantize", str(tmp_path / "base"), "-o",
                             str(tmp_path / name), *TINY, *flags], env=_cli_env(**env), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def test_progress_bars_show_overall_eta_and_quiet_silences_every_library(tmp_path):
    shown = _run_cli(tmp_path, "loud")
    assert "Genie-D synthesis" in shown and "Genie-M reconstruction" in shown and "%|" in shown
    assert "Loading weights" in shown  # transformers' own bar: what -q must silence too
    assert "<" in shown.split("Genie-M reconstruction")[-1]  # elapsed<remaining: the ETA over all units
    quiet = _run_cli(tmp_path, "quiet", "-q")  # after the subcommand
    assert "%|" not in quiet and "it/s" not in quiet and "step/s" not in quiet, quiet[-2000:]
    assert "(reconstructed)" not in quiet and "bn-statistics loss" not in quiet  # no per-unit / per-batch info
    assert "(reconstructed)" in shown and "bn-statistics loss" in shown


def test_quiet_hides_huggingface_hubs_retry_notices():
    """`-q` showed huggingface_hub's raw "'[Errno -2] Name or service not known' thrown while requesting HEAD ..."
    before genie_hub's own error for an unreachable Hub id."""
    import logging

    from genie_hub.progress import quiet

    retries = logging.getLogger("huggingface_hub.utils._http")
    level = retries.level
    try:
        quiet()
        assert not retries.isEnabledFor(logging.WARNING) and retries.isEnabledFor(logging.ERROR)
    finally:
        retries.setLevel(level)


def test_hf_hub_disable_progress_bars_silences_genie_hub_bars(tmp_path):
    from genie_hub.progress import progress_bar

    stderr = _run_cli(tmp_path, "nobars", HF_HUB_DISABLE_PROGRESS_BARS="1")
    assert "Genie-D synthesis" not in stderr and "Genie-M reconstruction" not in stderr
    assert "%|" not in stderr, stderr[-2000:]  # nor transformers' or datasets' bars: one switch for all
    assert "unit regnet" in stderr or "unit resnet" in stderr  # the log lines stay
    assert progress_bar(range(3)).disable  # this session runs with HF_HUB_DISABLE_PROGRESS_BARS=1 (conftest)


def test_log_lines_are_written_above_the_bars(capsys):
    import logging

    from tqdm import tqdm as plain_tqdm

    from genie_hub.progress import logs_above_bars

    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    root.addHandler(handler)
    try:
        with logs_above_bars():
            assert handler not in root.handlers  # replaced by tqdm's writer while bars may be on screen
            bar = plain_tqdm(total=2, file=sys.stderr)
            logging.getLogger("genie_hub.test").warning("a log line")
            bar.close()
        assert handler in root.handlers
    finally:
        root.removeHandler(handler)
    assert "a log line\n" in capsys.readouterr().err


def _subparsers(parser) -> list:
    import argparse

    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((name, sub))
                found.extend((f"{name} {n}", s) for n, s in _subparsers(sub))
    return found


def test_every_option_of_every_subcommand_shows_its_default():
    import argparse

    from genie_hub.cli import build_parser

    parser = build_parser()
    commands = _subparsers(parser)
    assert {"quantize", "evaluate", "push", "space", "push-space", "zoo build", "zoo publish"} <= {n for n, _ in commands}
    missing = [f"{name}: {action.option_strings[0]}" for name, sub in [("genie_hub", parser), *commands]
               for action in sub._actions
               if action.option_strings and not action.required and action.help != argparse.SUPPRESS
               and not isinstance(action, (argparse._HelpAction, argparse._VersionAction))
               and "default" not in (action.help or "")]
    assert not missing, missing
    help_text = dict(commands)["quantize"].format_help()
    for expected in ("weight bit-width of most layers (default: 4)", "(default: paper 1024, quick 128)",
                     "(default: 0)", "--push-revision", "--create-pr", "--commit-message", "--token"):
        assert expected in " ".join(help_text.split()), expected
    assert "HF_TOKEN" in dict(commands)["push"].format_help()


def test_token_is_never_recorded():
    from genie_hub.cli import recorded_command

    assert recorded_command(["quantize", "m", "--push", "--token", "hf_secret", "-w", "2"]) == \
        "genie_hub quantize m --push -w 2"
    assert "hf_secret" not in recorded_command(["push", "out", "--token=hf_secret"])
    assert "hf_secret" not in recorded_command(["push", "out", "--commit-message", "x hf_secret"], "hf_secret")


def test_abbreviated_options_are_refused_so_a_token_cannot_be_recorded(capsys):
    """argparse would read `--tok` as `--token` and the recorded command would keep it: no abbreviations."""
    with pytest.raises(SystemExit):
        main(["push", "out", "--tok", "hf_secret"])
    assert "unrecognized arguments: --tok" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["quantize", "--num-sample", "8"])
    with pytest.raises(SystemExit):
        main(["push", "out", "--token", " "])
    assert "the token is empty" in capsys.readouterr().err


def test_an_unknown_option_gets_the_closest_ones(capsys):
    with pytest.raises(SystemExit):
        main(["quantize", "--bits", "4"])
    assert "--bits: did you mean --act-bits or --weight-bits?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["push", "out", "--revison", "dev", "--zzz"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --revison dev --zzz (--revison: did you mean --revision?)" in err
    assert "genie_hub push --help" in err
    with pytest.raises(SystemExit):
        main(["push", "out", "--tokne=hf_secret"])
    assert capsys.readouterr().err.count("hf_secret") == 1  # argparse's own echo; the hint adds none
    with pytest.raises(SystemExit):
        main(["zoo", "build", "--registy", "r.json"])  # a nested command: its own options
    err = capsys.readouterr().err
    assert "--registy: did you mean --registry?" in err and "genie_hub zoo build --help" in err
    with pytest.raises(SystemExit):  # argparse reports the missing --namespace first: the hint still comes
        main(["zoo", "publish", "--namspace", "me"])
    err = capsys.readouterr().err
    assert "required: --namespace" in err and "--namspace: did you mean --namespace?" in err


def test_quantize_push_options_are_checked_before_compute(tmp_path, hub_server, capsys):
    save_tiny_model(tmp_path / "base", "resnet-basic")
    assert main(["quantize", str(tmp_path / "base"), "-o", str(tmp_path / "o"), "--push", "--create-pr",
                 "--push-revision", "dev", *TINY]) == 1
    assert "--create-pr" in capsys.readouterr().err and not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------- the paper profile on a CPU
def test_projected_time_of_a_run():
    from genie_hub.progress import format_duration, paper_cpu_warning, projected_seconds

    # ResNet-50 on a 2-core CPU: about 1 s per image per forward+backward.
    paper = dict(num_samples=1024, synthesis_iterations=4000, reconstruction_steps=20000, reconstruction_batch_size=32)
    assert projected_seconds(**paper, seconds_per_image=1.0, synthesis_seconds_per_image=3.0) == \
        3 * 1024 * 4000 + 2 * 20000 * 32
    assert projected_seconds(**paper, seconds_per_image=1.0, synthesis_seconds_per_image=0.0) == 2 * 20000 * 32
    assert format_duration(45) == "45 s" and format_duration(720) == "12 min" and format_duration(3.4 * 3600) == "3.4 h"
    assert format_duration(31 * 3600) == "31 h" and format_duration(100 * 3600) == "4.2 days"
    message = paper_cpu_warning(31 * 3600)
    assert "projected 31 h" in message and "--profile quick" in message and "GPU" in message


def test_paper_profile_on_cpu_warns_with_the_projection(tmp_path, monkeypatch, caplog):
    import logging

    import genie_hub.pipeline as pipeline

    save_tiny_model(tmp_path / "base", "resnet-basic")
    monkeypatch.setattr(pipeline, "seconds_per_image", lambda model, spec, batch_size=32: 100.0)  # a slow CPU
    monkeypatch.setattr(pipeline, "synthesis_seconds_per_image", lambda model, spec, config: 300.0)
    tiny_paper = ["--profile", "paper", "--num-samples", "8", "--batch-size", "4", "--synthesis-iterations", "2",
                  "--reconstruction-steps", "2", "--eval-dataset", "none"]
    with caplog.at_level(logging.WARNING, logger="genie_hub"):
        assert main(["quantize", str(tmp_path / "base"), "-o", str(tmp_path / "paper"), "-q", *tiny_paper]) == 0
    # 8 images x 2 iterations x 300 s + 2 x 2 steps x 32 images x 100 s = 17600 s
    assert any("projected 4.9 h" in r.getMessage() for r in caplog.records), caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="genie_hub"):
        assert main(["quantize", str(tmp_path / "base"), "-o", str(tmp_path / "quick"), "-q", *TINY]) == 0
    assert not any("projected" in r.getMessage() for r in caplog.records)



def test_synthesis_is_projected_from_real_synthesis_steps(tmp_path):
    """Synthesis is timed on its real steps (generator, model, prior): with a small model the generator and the
    prior cost more than the model's own pass, which alone understated synthesis (projected 3 min, took 23).
    The model, its mode and every random stream are left as they were."""
    import random

    from genie_hub.loading import input_spec, load_model
    from genie_hub import GenieConfig
    from genie_hub.pipeline import synthesis_seconds_per_image

    save_tiny_model(tmp_path / "base", "resnet-basic")
    model, processor = load_model(str(tmp_path / "base"))
    spec = input_spec(model, processor)
    config = GenieConfig.from_profile("paper", synthesis_batch_size=16)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    batches = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: batches.append(len(kwargs.get(
        "pixel_values", args[0] if args else None))), with_kwargs=True)
    torch.manual_seed(5), random.seed(5)
    expected_draws = torch.rand(3), random.random()
    torch.manual_seed(5), random.seed(5)
    assert synthesis_seconds_per_image(model, spec, config, budget_s=float("inf")) > 0  # timing-independent
    assert torch.equal(torch.rand(3), expected_draws[0]) and random.random() == expected_draws[1]
    # 1 and 3 iterations, each between the prior's measurements of the first and the last images; then the run's batch
    assert batches == [4] * 8 + [16] * 8
    batches.clear()
    synthesis_seconds_per_image(model, spec, config, budget_s=0.0)
    assert batches == [4] * 8  # a slow model is not kept waiting for a long timing pass
    hook.remove()
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())

def test_seconds_per_image_leaves_the_model_untouched(tmp_path):
    from genie_hub.loading import input_spec, load_model
    from genie_hub.pipeline import seconds_per_image

    save_tiny_model(tmp_path / "base", "resnet-basic")
    model, processor = load_model(str(tmp_path / "base"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    batches = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: batches.append(len(kwargs.get(
        "pixel_values", args[0] if args else None))), with_kwargs=True)
    assert seconds_per_image(model, input_spec(model, processor), budget_s=float("inf")) > 0
    assert batches == [4, 4, 32, 32]  # a fast model is timed at the runs' batch too: batch 4 alone overstates it
    batches.clear()
    seconds_per_image(model, input_spec(model, processor), budget_s=0.0)
    assert batches == [4, 4]  # a slow one is not kept waiting for a long timing pass
    hook.remove()
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_a_full_disk_is_one_clear_error_that_says_the_work_is_kept(monkeypatch, capsys):
    import errno

    from genie_hub import cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "out/work/synthetic/batch_00001.safetensors")

    monkeypatch.setitem(cli.COMMANDS, "quantize", full)
    assert main(["quantize", "-o", "out"]) == 1
    err = capsys.readouterr().err
    assert "No space left on device: out/work/synthetic/batch_00001.safetensors" in err
    assert "run the same command again to resume" in err and "Traceback" not in err


def test_an_interrupt_speaks_of_kept_work_only_where_a_command_keeps_it(monkeypatch, capsys):
    import importlib

    from genie_hub import cli

    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module (the package exports the class)

    monkeypatch.setattr(hub_tqdm, "HF_HUB_DISABLE_PROGRESS_BARS", False)  # bars drawn, as in a terminal
    monkeypatch.setattr(hub_tqdm, "progress_bar_states", {})

    def interrupted(args):
        from genie_hub.progress import progress_bar

        bar = progress_bar(total=10, desc="synthesize")
        bar.update(3)
        raise KeyboardInterrupt  # Ctrl-C with a bar half drawn

    for command, words in (("quantize", ["quantize"]), ("evaluate", ["evaluate", "m", "--dataset", "d"])):
        monkeypatch.setitem(cli.COMMANDS, command, interrupted)
        assert main(words) == 130
        err = capsys.readouterr().err
        message = err[err.index("genie_hub: interrupted."):]
        assert err[:-len(message)].endswith("\n"), err  # on a line of its own, not after the bar
        assert ("kept in the output folder" in message) == (command == "quantize")


def test_rerunning_a_finished_folder_without_evaluation_keeps_its_results(tmp_path):
    """The same settings rebuild the same model: a rerun that evaluates nothing (another --eval-dataset, missing
    test data) keeps the earlier run's results instead of erasing them from run.json and the card."""
    save_tiny_model(tmp_path / "base", "resnet-basic")
    out = tmp_path / "out"
    command = ["quantize", str(tmp_path / "base"), "-o", str(out), *TINY]
    assert main(command) == 0
    record = json.loads((out / "run.json").read_text())
    record["evaluation"] = {"dataset": "photos", "split": "test", "num_images": 10, "fp32_top1": 0.9,
                            "quantized_top1": 0.8, "top1_agreement": 0.85}
    record["results"] = [{"name": "photos top-1", "fp32": 90.0, "quantized": 80.0}]
    (out / "run.json").write_text(json.dumps(record))
    assert main(command) == 0
    kept = json.loads((out / "run.json").read_text())
    assert kept["evaluation"] == record["evaluation"] and kept["results"] == record["results"]


def test_a_processor_for_another_channel_count_is_refused(tmp_path, capsys):
    """A 1-channel model with ImageNet's 3-element mean/std: its normalization was silently cut to one channel
    (a 4-channel model borrowed red's for its fourth), and the saved processor failed on every image."""
    from transformers import ViTImageProcessor

    from tiny_models import tiny_model

    for channels in (1, 4):
        folder = tmp_path / f"c{channels}"
        tiny_model("resnet-basic", channels=channels).save_pretrained(folder)
        ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.485, 0.456, 0.406],
                          image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
        assert main(["quantize", str(folder), "-o", str(tmp_path / f"out{channels}"), "-q", *TINY]) != 0
        assert "normalizes 3-channel images" in capsys.readouterr().err
        assert not (tmp_path / f"out{channels}").exists()


def test_real_images_for_a_four_channel_model_are_refused_before_compute(tmp_path, capsys):
    from PIL import Image

    save_tiny_model(tmp_path / "fp", "resnet-basic", channels=4)
    (tmp_path / "photos").mkdir()
    for i in range(3):
        Image.new("RGB", (40, 36), (i * 40, 90, 200)).save(tmp_path / "photos" / f"{i}.png")
    for options in (["--few-shot", str(tmp_path / "photos")], ["--eval-dataset", str(tmp_path / "photos"),
                                                               "--eval-unlabelled"]):
        assert main(["quantize", str(tmp_path / "fp"), "-o", str(tmp_path / "out"), "-q", *TINY, *options]) == 2
        assert "takes 4-channel inputs" in capsys.readouterr().err
        assert not (tmp_path / "out").exists()


def test_sigterm_ends_a_run_like_ctrl_c(tmp_path):
    """`kill` (SIGTERM) ended a run silently with 143; it now ends it as Ctrl-C does: finished work kept, the same
    message, exit status 143, and a rerun resumes."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    command = [sys.executable, "-m", "genie_hub", "quantize", "-o", str(out), "-q", "--eval-dataset", "none",
               "--profile", "quick", "--num-samples", "16", "--batch-size", "8", "--synthesis-iterations", "400",
               "--reconstruction-steps", "3", "--synthesis-workers", "1"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not any((out / "work").rglob("batch_00000.safetensors")) and time.time() < deadline:
        time.sleep(0.2)  # the first synthesis batch is on disk
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "genie_hub: terminated. Any finished work is kept in the output folder" in err
    assert not (out / "run.json").exists()
    first_batch = next((out / "work").rglob("batch_00000.safetensors"))
    made = first_batch.stat().st_mtime_ns
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert (out / "run.json").exists() and first_batch.stat().st_mtime_ns == made  # resumed, not made again


def test_a_reader_that_stops_reading_is_no_error(tmp_path):
    """`genie_hub zoo list | head -2`: the closed pipe was reported as "genie_hub: error: Broken pipe ... make room or
    fix the permissions, then run the same command again to resume". It now ends quietly, as `ls | head` does."""
    import os

    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    try:
        ended = subprocess.run([sys.executable, "-m", "genie_hub", "zoo", "list", "-o", str(tmp_path)], stdout=write,
                               stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert ended.returncode == 141 and ended.stderr == "", ended.stderr
