"""The calibration set's datasets repo: its card's metadata (parsed back field by field), the files `configs`
declares, and both storages (exact float32, lossy fp16), written through the pipeline's own functions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genie_hub.adapters import InputSpec
from genie_hub.cards import render_dataset_card, size_category
from genie_hub.config import GenieConfig
from genie_hub.errors import ConfigError
from genie_hub.outputs import RunRecord
from genie_hub.synthetic_dataset import export_synthetic_dataset, load_synthetic_dataset

SPEC = InputSpec(3, 12, 10, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
NUM = 6


def _export(tmp_path: Path, storage: str, license_: str | None = "mit") -> tuple[Path, RunRecord, torch.Tensor]:
    torch.manual_seed(0)
    pixels = torch.randn(NUM, *SPEC.shape) * 1.7
    config = GenieConfig.from_profile("quick", num_samples=NUM, dataset_storage=storage)
    run = RunRecord(base_model="/some/where/base-model", base_model_id="owner/base-model", config=config.to_dict(),
                    license=license_, command="genie_hub quantize /some/where/base-model",
                    synthetic={"num_samples": NUM, "shape": list(SPEC.shape), "prior": "bn-statistics",
                               "loss_summary": "1.0 -> 0.1"})

    def card(summary):  # as the pipeline does it
        run.synthetic["dataset"] = summary
        return render_dataset_card(run, "owner/base-model-genie-w4a4-calibration", "owner/base-model-genie-w4a4")

    out = tmp_path / f"dataset-{storage}"
    export_synthetic_dataset(pixels, SPEC, [0, 0, 0, 1, 1, 1], out, card, storage=storage)
    return out, run, pixels


@pytest.mark.parametrize("storage", ["exact", "fp16"])
def test_dataset_card_metadata_describes_the_uploaded_files(tmp_path, monkeypatch, storage):
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    out, run, pixels = _export(tmp_path, storage)
    card = DatasetCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "mit"
    assert data["task_categories"] == ["other"] and "image-classification" not in str(data["task_categories"])
    assert data["annotations_creators"] == ["no-annotation"]
    assert data["size_categories"] == ["n<1K"]
    assert data["pretty_name"] == "Genie synthetic calibration images for base-model"  # no local path
    assert "/some/where" not in card.content
    info = data["dataset_info"]
    features = {f["name"]: f["dtype"] for f in info["features"]}
    dtype = "float32" if storage == "exact" else "float16"
    assert features == {"image": "image", "pixel_values": {"array3_d": {"shape": list(SPEC.shape), "dtype": dtype}},
                        "batch_index": "int32"}
    (split,) = info["splits"]
    parquet = out / "data" / "train-00000-of-00001.parquet"
    assert split["name"] == "train" and split["num_examples"] == NUM and split["num_bytes"] > 0
    assert info["download_size"] == parquet.stat().st_size and info["dataset_size"] == split["num_bytes"]
    assert data["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "README.md", "data/train-00000-of-00001.parquet"]

    # datasets reads the folder through the card's `configs`, offline, with the declared features.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    loaded = load_dataset(str(out), split="train")
    assert len(loaded) == NUM and loaded.features["pixel_values"].dtype == dtype
    assert loaded.info.splits["train"].num_bytes == split["num_bytes"]  # the size datasets reports, not near it
    assert loaded[0]["image"].size == (SPEC.width, SPEC.height)  # previews kept in both storages

    # The card's own snippet runs as written (its repo id pointed at the folder) and gives the tensors.
    import re

    snippet = re.search(r"```python\n(.*?)```", card.text, re.S).group(1)
    snippet = re.sub(r'load_dataset\("[^"]+"', f"load_dataset({str(out)!r}", snippet)
    scope: dict = {}
    exec(compile(snippet, "dataset card snippet", "exec"), scope)
    assert torch.equal(scope["calibration"], pixels if storage == "exact" else pixels.half().float())

    back = load_synthetic_dataset(out)
    assert back.dtype == torch.float32
    if storage == "exact":
        assert torch.equal(back, pixels)
        assert "exact float32 tensor" in card.text and "lossy, about 3 significant digits" not in card.text
    else:
        assert torch.equal(back, pixels.half().float()) and not torch.equal(back, pixels)
        assert "fp16 (lossy)" in card.text and "lossy, about 3 significant digits" in card.text


def test_fp16_storage_is_half_the_size(tmp_path):
    exact, fp16 = (_export(tmp_path, storage)[0] / "data" / "train-00000-of-00001.parquet"
                   for storage in ("exact", "fp16"))
    assert fp16.stat().st_size < 0.75 * exact.stat().st_size


def test_no_license_when_the_base_model_has_none(tmp_path):
    from huggingface_hub import DatasetCard

    out, _, _ = _export(tmp_path, "exact", license_=None)
    assert "license" not in DatasetCard.load(out / "README.md").data.to_dict()


@pytest.mark.parametrize("n, expected", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (9999, "1K<n<10K"),
                                         (10_000, "10K<n<100K"), (250_000, "100K<n<1M"), (1_000_000, "1M<n<10M")])
def test_size_categories(n, expected):
    assert size_category(n) == expected


def test_dataset_storage_is_a_checked_cli_setting():
    from genie_hub.cli import build_parser, config_from_args

    args = build_parser().parse_args(["quantize", "--dataset-storage", "fp16"])
    assert config_from_args(args).dataset_storage == "fp16"
    assert config_from_args(build_parser().parse_args(["quantize"])).dataset_storage == "exact"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["quantize", "--dataset-storage", "jpeg"])
    with pytest.raises(ConfigError, match="dataset_storage"):
        GenieConfig(dataset_storage="int8")


def test_public_names_are_decided_where_the_run_is_recorded(tmp_path, monkeypatch):
    """A card never shows a local path, `--flag=PATH` included, and a relative local folder (`models/x`) stays
    local when `push` runs from another folder, where it would read as the Hub id `models/x`."""
    from genie_hub.cards import public_names

    (tmp_path / "work" / "models" / "tinyres").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    secret = str(tmp_path / "home" / "alice")
    run = RunRecord(base_model="models/tinyres", calibration_source=f"{secret}/photos",
                    command=f"genie_hub quantize models/tinyres --output-dir={secret}/out --few-shot={secret}/photos "
                            f"-o{secret}/out2 -w3")
    run.public = public_names(run)._asdict()
    assert public_names(run) == ("tinyres", None, "photos",
                                 "genie_hub quantize tinyres --output-dir=out --few-shot=photos -oout2 -w3")

    monkeypatch.chdir(tmp_path / "elsewhere")  # as `genie_hub push` from another folder reads run.json
    reread = RunRecord.from_dict(run.to_dict())
    assert public_names(reread).base_model_hub_id is None and public_names(reread).base_model == "tinyres"
    assert public_names(RunRecord(base_model="models/tinyres")).base_model_hub_id == "models/tinyres"  # undecided
    assert public_names(RunRecord(base_model="owner/name", base_model_id=None)).base_model_hub_id == "owner/name"


def test_a_relative_local_source_with_its_split_appears_by_its_folder_name(tmp_path, monkeypatch):
    """`--few-shot clients/acme/photos:train` (a relative folder with a split): before, the ':train' made the path
    read as a Hub id, and the card published the folder's whole relative path."""
    from genie_hub.cards import public_command, public_name

    (tmp_path / "clients" / "acme-secret" / "photos").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert public_name("clients/acme-secret/photos:train") == "photos:train"
    assert public_name("nowhere/acme-secret/photos:test") == "photos:test"  # three parts: never a Hub id
    assert public_name("owner/name:train") == "owner/name:train" and public_name("owner/name") == "owner/name"
    assert public_command("genie_hub quantize tiny --few-shot clients/acme-secret/photos:train "
                          "--eval-dataset=clients/acme-secret/photos:test") == \
        "genie_hub quantize tiny --few-shot photos:train --eval-dataset=photos:test"


def test_card_wall_times_are_readable_at_any_length():
    """A 1.5 s run read 'wall time 0.0 min' (helper-32): durations are written as the progress lines write them."""
    from types import SimpleNamespace

    from genie_hub.cards import wall_time

    assert wall_time(SimpleNamespace(wall_seconds=1.5, total_wall_seconds=None, total_commands=None)) == "wall time 2 s"
    assert wall_time(SimpleNamespace(wall_seconds=600, total_wall_seconds=4000, total_commands=2)) == (
        "wall time 67 min over the 2 commands that computed it (resumed or rerun; the last took 10 min)")
    assert wall_time(SimpleNamespace(wall_seconds=None, total_wall_seconds=None, total_commands=None)) == ""


def test_the_model_card_shows_overrides_as_the_command_line_takes_them(tmp_path):
    """The card showed `{'*.quantized_matmul': {'act': None}}`, a Python dict (helper-32): now `PATTERN=W/A`."""
    import dataclasses

    from helpers_output import build_output, make_genie_run

    from genie_hub.cards import render_model_card
    from genie_hub.config import format_override, parse_override
    from genie_hub.outputs import RunRecord

    for text in ("*.quantized_matmul=/fp", "classifier*=8/8", "stem*=6/"):
        assert format_override(*parse_override(text)) == text
    out = make_genie_run(build_output(tmp_path / "out"))
    run = RunRecord.load(out / "run.json")
    run = dataclasses.replace(run, config={**run.config, "overrides": {
        "*.quantized_matmul": {"act": None}, "classifier*": {"weight": 8, "act": 8}}})
    card = str(render_model_card(run, repo_id="user/x"))
    assert "overrides: `*.quantized_matmul=/fp`, `classifier*=8/8`." in card and "{'" not in card
