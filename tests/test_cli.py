"""`genie_hub quantize / evaluate` end to end, as a user runs them (tiny settings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    assert "synthetic" in dataset_card and "machine-generated" in dataset_card and "calibration only" in dataset_card


def test_quantized_folder_loads_with_transformers(tiny_run):
    from transformers import AutoModelForImageClassification

    _, out = tiny_run
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


def test_unknown_model_is_one_clear_line(tmp_path, capsys):
    assert main(["quantize", "nobody/no-such-model", "-o", str(tmp_path / "o"), *TINY]) == 1
    err = capsys.readouterr().err
    assert "Could not load model 'nobody/no-such-model'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_prior_that_does_not_apply_is_refused_before_any_work(tmp_path, capsys):
    from transformers import ConvNextConfig, ConvNextForImageClassification

    ConvNextForImageClassification(ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1],
                                                  num_labels=3)).save_pretrained(tmp_path / "convnext")
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
    assert "on 500 images of fashion-mnist (test)" in printed and "top-1 agreement" in printed


@pytest.mark.skipif(not HAVE_FASHION_MNIST, reason="apt-get install dataset-fashion-mnist")
def test_few_shot_calibrates_on_real_images(tmp_path):
    out = tmp_path / "fewshot"
    assert main(["quantize", "-o", str(out), "--few-shot", "fashion-mnist", "--eval-dataset", "none",
                 "--profile", "quick", "--num-samples", "16", "--reconstruction-steps", "2"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["zero_shot"] is False and run["calibration_source"] == "fashion-mnist"
    assert not (out / "dataset").exists() and not (out / "work" / "synthetic").exists()
    assert "Few-shot calibration" in (out / "model" / "README.md").read_text()


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
    assert f'load_dataset("{dataset_repo}"' in DatasetCard.load(dataset_repo, repo_type="dataset").text
    assert json.loads((out / "run.json").read_text())["push"]["model"]["repo_id"] == repo


def test_push_space_publishes_the_app_pointing_at_the_given_models(hub_server, capsys):
    from huggingface_hub import HfApi

    assert main(["push-space", "tester/genie-compare", "--fp32", "tester/base",
                 "--quantized", "tester/base-genie-w3a4"]) == 0
    assert "spaces/tester/genie-compare" in capsys.readouterr().out
    files = set(HfApi().list_repo_files("tester/genie-compare", repo_type="space"))
    assert {"app.py", "README.md", "requirements.txt"} <= files
    readme = HfApi().hf_hub_download("tester/genie-compare", "README.md", repo_type="space")
    text = Path(readme).read_text()
    assert "tester/base-genie-w3a4" in text and "sdk: gradio" in text


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
