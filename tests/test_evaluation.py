"""Evaluation on any image-classification dataset (issue 12): local imagefolder, parquet files, a Hub dataset on
the loopback server; labels mapped by name; bad sources refused in seconds, before any compute."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genie_hub.cli import main
from genie_hub.data.eval_datasets import EvalSource, map_labels, open_eval_set
from genie_hub.errors import ConfigError, DataError
from genie_hub.evaluation import evaluate_on_dataset, model_labels
from genie_hub.loading import input_spec, load_model
from tiny_models import IMAGE_SIZE, save_tiny_model

LABELS = ["cat", "dog", "bird", "fish", "frog"]  # the tiny model's classes, in its own order
TINY = ["--profile", "quick", "--num-samples", "8", "--batch-size", "8", "--synthesis-iterations", "3",
        "--reconstruction-steps", "3", "-q"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny"
    model = save_tiny_model(path, "resnet-basic")
    config = json.loads((path / "config.json").read_text())
    config["id2label"] = {str(i): name for i, name in enumerate(LABELS)}
    config["label2id"] = {name: i for i, name in enumerate(LABELS)}
    (path / "config.json").write_text(json.dumps(config))
    del model
    return path


def _images(count: int, seed: int) -> list[Image.Image]:
    rng = np.random.RandomState(seed)
    return [Image.fromarray(rng.randint(0, 256, (36, 40, 3), dtype=np.uint8)) for _ in range(count)]


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory) -> Path:
    """Class folders named unlike the model (case, order): Bird, CAT, Dog, fish, frog -> sorted differently."""
    root = tmp_path_factory.mktemp("folder") / "photos"
    for i, name in enumerate(["Bird", "CAT", "Dog", "fish", "frog"]):
        (root / name).mkdir(parents=True)
        for j, image in enumerate(_images(3, seed=i)):
            image.save(root / name / f"{j}.png")
    return root


def _expected_top1(model_dir: Path, images: list, model_indices: list[int]) -> float:
    model, processor = load_model(model_dir)
    x = processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        predictions = model(pixel_values=x).logits.argmax(-1)
    return float((predictions == torch.tensor(model_indices)).float().mean())


def test_label_mapping_by_name():
    model = dict(enumerate(["T-shirt/top", "Ankle boot", "Bag"]))
    assert map_labels(["t-shirt/top", "ankle_boot", "BAG"], model, "x") is None  # same order: identity
    assert map_labels(["Bag", "T-shirt/top"], model, "x") == {0: 2, 1: 0}
    assert map_labels(["Bag", "T-shirt_top", "Ankle boot"], model, "x") == {0: 2, 1: 0, 2: 1}  # folder names
    with pytest.raises(DataError, match="'Sandal'"):
        map_labels(["Bag", "Sandal"], model, "x")
    imagenet = dict(enumerate(["tench, Tinca tinca", "crane", "English springer, English springer spaniel", "crane"]))
    assert map_labels(["English springer", "tench"], imagenet, "x") == {0: 2, 1: 0}
    with pytest.raises(DataError, match="'crane'"):  # two model classes share it: ambiguous
        map_labels(["crane"], dict(enumerate(["crane, bird", "crane, machine"])), "x")
    with pytest.raises(DataError, match="'crane'"):  # ImageNet's id2label names classes 134 and 517 "crane"
        map_labels(["dog", "crane"], dict(enumerate(["cat", "crane", "dog", "crane"])), "x")
    assert map_labels(["cat", "crane", "dog", "crane"], dict(enumerate(["cat", "crane", "dog", "crane"])), "x") is None
    # Loosely equal names apart: the exact name decides, before any positional shortcut.
    assert map_labels(["a b", "a/b"], {0: "a/b", 1: "a b"}, "x") == {0: 1, 1: 0}
    assert map_labels(["a/b", "a b"], {0: "a/b", 1: "a b"}, "x") is None
    with pytest.raises(DataError, match="match several of the model's classes"):
        map_labels(["A_B"], {0: "a/b", 1: "a b"}, "x")
    # Two dataset classes onto one model class (folders differing only in case): never merged silently.
    with pytest.raises(DataError, match="'LABEL_0', 'label_0' all match the model's class 'LABEL_0'"):
        map_labels(["LABEL_0", "label_0"], {0: "LABEL_0", 1: "LABEL_1"}, "x")
    with pytest.raises(DataError, match="all match the model's class 'tench, Tinca tinca'"):
        map_labels(["tench", "Tinca tinca"], imagenet, "x")
    # One name, two Unicode spellings: a macOS folder "Café" keeps the accent apart (NFD), config.json composes it.
    import unicodedata

    accented = {0: "Café", 1: "café", 2: "naïve"}
    assert map_labels([unicodedata.normalize("NFD", n) for n in ("naïve", "Café", "café")], accented, "x") == \
        {0: 2, 1: 0, 2: 1}


def test_sources_parse():
    assert EvalSource.parse("owner/name:validation") == EvalSource("hub", "owner/name", None, "validation")
    assert EvalSource.parse("owner/name:cfg:test") == EvalSource("hub", "owner/name", "cfg", "test")
    assert EvalSource.parse("owner/name:test[:5%]") == EvalSource("hub", "owner/name", None, "test[:5%]")  # a slice
    assert EvalSource.parse("fashion-mnist").kind == "fashion-mnist"
    for bad in ("owner/name:a:b:c", "not a dataset", "owner/name:"):
        with pytest.raises(DataError):
            EvalSource.parse(bad)
    with pytest.raises(DataError, match="Fashion-MNIST has a train and a test split, no 'validation'"):
        EvalSource.parse("fashion-mnist:validation")
    for options in ({"unlabelled": True}, {"label_column": "x"}, {"image_column": "y"}):  # not silently ignored
        with pytest.raises(DataError, match="do not apply to it"):
            open_eval_set("fashion-mnist", dict(enumerate(LABELS)), **options)


def test_imagefolder_with_other_label_names_and_order(model_dir, imagefolder):
    model, processor = load_model(model_dir)
    evalset = open_eval_set(str(imagefolder), model_labels(model))
    assert evalset.num_images == 15 and evalset.label_map == {0: 2, 1: 0, 2: 1, 3: 3, 4: 4}
    result = evaluate_on_dataset(model, model, processor, input_spec(model, processor), evalset, progress=False)
    images, truth = [], []
    for folder, model_index in (("Bird", 2), ("CAT", 0), ("Dog", 1), ("fish", 3), ("frog", 4)):
        for j in range(3):
            images.append(Image.open(imagefolder / folder / f"{j}.png"))
            truth.append(model_index)
    assert result.num_images == 15 and result.top1_agreement == 1.0 and result.kl_fp_q == 0.0
    assert result.fp32_top1 == pytest.approx(_expected_top1(model_dir, images, truth))
    assert result.fp32_top5 is None and result.quantized_top5 is None  # 5 classes: top-5 would be 100 % by definition
    assert evaluate_on_dataset(model, model, processor, input_spec(model, processor), evalset, limit=4,
                               progress=False).num_images == 4


def test_parquet_files_with_a_shuffled_class_label(model_dir, tmp_path):
    from datasets import ClassLabel, Dataset, Features, Image as ImageFeature

    names = ["FROG", "fish", "Bird", "dog", "Cat"]
    images = _images(10, seed=7)
    labels = [i % 5 for i in range(10)]
    features = Features({"photo": ImageFeature(), "kind": ClassLabel(names=names)})
    Dataset.from_dict({"photo": images, "kind": labels}, features=features).to_parquet(str(tmp_path / "eval.parquet"))
    model, processor = load_model(model_dir)
    result = evaluate_on_dataset(model, model, processor, input_spec(model, processor), str(tmp_path / "eval.parquet"),
                                 progress=False)
    truth = [LABELS.index(names[label].lower()) for label in labels]
    assert result.num_images == 10
    assert result.fp32_top1 == pytest.approx(_expected_top1(model_dir, images, truth))


def test_hub_dataset_streamed_from_the_loopback_hub(hub_server, model_dir):
    from datasets import ClassLabel, Dataset, Features, Image as ImageFeature

    images = _images(6, seed=3)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=LABELS)})
    Dataset.from_dict({"image": images, "label": [0, 1, 2, 3, 4, 0]}, features=features).push_to_hub(
        "tester/tiny-eval", split="validation")
    model, processor = load_model(model_dir)
    evalset = open_eval_set("tester/tiny-eval:validation", model_labels(model))
    assert evalset.num_images is None and evalset.split == "validation"  # streamed
    result = evaluate_on_dataset(model, model, processor, input_spec(model, processor), evalset, progress=False)
    assert result.num_images == 6 and result.hub_id == "tester/tiny-eval" and result.dataset == "tester/tiny-eval:validation"
    assert result.fp32_top1 == pytest.approx(_expected_top1(model_dir, images, [0, 1, 2, 3, 4, 0]))
    with pytest.raises(DataError, match="Could not open"):
        open_eval_set("tester/tiny-eval:no-such-split", model_labels(model))
    with pytest.raises(DataError, match="Could not open"):
        open_eval_set("tester/does-not-exist:test", model_labels(model))


def test_a_streamed_set_whose_first_rows_have_no_label_is_evaluated_on_the_labelled_rest(hub_server, model_dir):
    """Only the first rows of a streamed set are read before compute: rows without a label there prove nothing
    about the rest, so they are skipped as they come, not a reason to refuse the set."""
    from datasets import ClassLabel, Dataset, Features, Image as ImageFeature

    images = _images(11, seed=4)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=LABELS)})
    Dataset.from_dict({"image": images, "label": [-1] * 9 + [0, 1]}, features=features).push_to_hub(
        "tester/late-labels", split="validation")
    model, processor = load_model(model_dir)
    evalset = open_eval_set("tester/late-labels", model_labels(model))
    result = evaluate_on_dataset(model, model, processor, input_spec(model, processor), evalset, progress=False)
    assert result.num_images == 2
    assert result.fp32_top1 == pytest.approx(_expected_top1(model_dir, images[9:], [0, 1]))


@pytest.mark.parametrize("make_source,needle", [
    (lambda tmp: str(tmp / "nowhere-folder-and-not-an-id"), "Unknown evaluation dataset"),
    (lambda tmp: "tester/absent-dataset:test", "Could not open"),
    (lambda tmp: _unmappable(tmp), "cannot be mapped"),
    (lambda tmp: _no_label(tmp), "no label column"),
])
def test_bad_evaluation_data_is_refused_before_compute(hub_server, model_dir, tmp_path, capsys, make_source, needle):
    out = tmp_path / "out"
    assert main(["quantize", str(model_dir), "-o", str(out), "--eval-dataset", make_source(tmp_path), *TINY]) == 1
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not out.exists()


def test_images_beside_the_class_folders_are_named_as_why_there_are_no_labels(model_dir, imagefolder, tmp_path):
    import shutil

    photos = Path(shutil.copytree(imagefolder, tmp_path / "photos"))
    shutil.move(photos / "CAT" / "0.png", photos / "stray.png")
    with pytest.raises(DataError, match=r"1 image\(s\) sit directly in .*photos beside its class folders \(e.g. stray"):
        open_eval_set(str(photos), dict(enumerate(LABELS)))


def test_a_folder_holding_one_class_folder_is_labelled_by_it(model_dir, imagefolder, tmp_path):
    """`datasets` infers imagefolder labels only from two or more class folders: one class alone (`photos/CAT/`,
    also under a split folder) is still labelled by its folder, where it read as unlabelled (helper-29)."""
    import shutil

    model, processor = load_model(model_dir)
    images = [Image.open(imagefolder / "CAT" / f"{j}.png") for j in range(3)]
    expected = _expected_top1(model_dir, images, [LABELS.index("cat")] * 3)
    assert expected > 0  # else a wrong label would pass too
    for where, top in (("photos/CAT", "photos"), ("split/test/CAT", "split")):
        shutil.copytree(imagefolder / "CAT", tmp_path / where)
        evalset = open_eval_set(str(tmp_path / top), model_labels(model))
        assert evalset.num_images == 3 and evalset.split == ("test" if top == "split" else "train")
        result = evaluate_on_dataset(model, model, processor, input_spec(model, processor), evalset, progress=False)
        assert result.fp32_top1 == pytest.approx(expected)
    with pytest.raises(DataError, match="no label column"):  # images with no class folder stay unlabelled
        open_eval_set(str(tmp_path / "split" / "test" / "CAT"), model_labels(model))


def test_a_folder_of_photos_without_labels_gets_the_evaluate_flags_in_its_error(model_dir, tmp_path, capsys):
    """`genie_hub evaluate` on unlabelled photos: the error names evaluate's own flags (--label-column,
    --unlabelled), not only quantize's --eval-* spellings."""
    (tmp_path / "photos").mkdir()
    for i, image in enumerate(_images(3, 0)):
        image.save(tmp_path / "photos" / f"{i}.png")
    assert main(["evaluate", str(model_dir), "--dataset", str(tmp_path / "photos")]) == 1
    err = capsys.readouterr().err
    assert "no label column" in err and "--label-column" in err and "--unlabelled" in err and "Traceback" not in err


def _without_processor(model_dir: Path, tmp_path: Path, broken: bool) -> Path:
    folder = tmp_path / ("broken" if broken else "bare")
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((model_dir / name).read_bytes())
    if broken:
        (folder / "preprocessor_config.json").write_text("{not json")
    return folder


@pytest.mark.parametrize("broken", [False, True], ids=["no-processor", "unreadable-processor"])
def test_real_images_are_never_prepared_for_a_model_without_its_processor(model_dir, imagefolder, tmp_path, capsys,
                                                                          broken):
    """Without preprocessor_config.json the input size and normalization would be guessed (224 px, none), and
    evaluate printed a near-chance accuracy as if it were the model's; a zero-shot quantize synthesized images for
    the guess and wrote a model nothing could evaluate. Every command refuses before any compute, naming the file."""
    folder = _without_processor(model_dir, tmp_path, broken)
    assert main(["evaluate", str(folder), "--dataset", str(imagefolder)]) == 1
    err = capsys.readouterr().err
    assert "preprocessor_config.json" in err and "Traceback" not in err
    out = tmp_path / "out"
    for flags in (["--eval-dataset", str(imagefolder)], ["--few-shot", str(imagefolder)], ["--eval-dataset", "none"]):
        assert main(["quantize", str(folder), "-o", str(out), *flags, *TINY]) == 1
        err = capsys.readouterr().err
        assert "preprocessor_config.json" in err and "Traceback" not in err
        if not broken:  # (a broken file fails earlier, at loading)
            assert "nothing could evaluate" in err and "wrong numbers" not in err  # quantize reports no numbers
        assert not out.exists()
    if broken:
        with pytest.raises(Exception, match="cannot be loaded by transformers"):
            load_model(folder)
    else:
        assert load_model(folder)[1] is None


def test_a_processor_transformers_needs_another_package_for_names_that_package(model_dir, monkeypatch):
    """transformers 5.17 without torchvision reads no image processor and raises an ImportError whose message
    starts with a newline: the error quoted its empty first line, "(ImportError: )", and said to restore a file
    that was fine."""
    from transformers import AutoImageProcessor

    def needs_torchvision(*args, **kwargs):
        raise ImportError("\nAutoImageProcessor requires the Torchvision library but it was not found in your "
                          "environment.\nPlease note that you may need to restart your runtime.")

    monkeypatch.setattr(AutoImageProcessor, "from_pretrained", needs_torchvision)
    with pytest.raises(Exception, match=r"\(ImportError: AutoImageProcessor requires the Torchvision library .*"
                                        r"Install the package it names") as raised:
        load_model(str(model_dir))
    assert "Restore the file" not in str(raised.value)


def test_the_card_of_an_older_run_without_a_processor_loads_without_one(model_dir, tmp_path, capsys):
    """Runs before quantize required a processor recorded `has_image_processor: false`; `push` renders their card
    from run.json with a snippet that works without a processor (pipeline() cannot), and it runs as written."""
    import re

    from genie_hub.cards import render_model_card
    from genie_hub.outputs import RunRecord

    out = tmp_path / "out"
    assert main(["quantize", str(model_dir), "-o", str(out), "--eval-dataset", "none", *TINY]) == 0
    run = RunRecord.load(out / "run.json")
    run.has_image_processor = False
    card = str(render_model_card(run, repo_id=str(out / "model")))
    snippet = re.search(r"## How to load\n\n```python\n(.*?)```", card, re.S).group(1)
    assert "pipeline(" not in snippet and "torch.rand(1, 3, 32, 32)" in snippet
    capsys.readouterr()
    exec(compile(snippet, "card snippet", "exec"), {})
    assert capsys.readouterr().out.strip() in LABELS


def test_an_unreadable_image_is_skipped_and_a_failed_evaluation_loses_no_model(model_dir, imagefolder, tmp_path,
                                                                              caplog, monkeypatch):
    """One broken file in an evaluation folder is skipped with a warning (it crashed the run after all its
    compute); and if the evaluation fails anyway (a stream that drops), the model is still saved."""
    import shutil

    import genie_hub.pipeline as pipeline

    photos = Path(shutil.copytree(imagefolder, tmp_path / "photos"))
    (photos / "CAT" / "zz_broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        assert main(["quantize", str(model_dir), "-o", str(out), "--eval-dataset", str(photos), *TINY]) == 0
    assert any("Skipped 1 unreadable image(s)" in r.getMessage() and "zz_broken.png" in r.getMessage()
               for r in caplog.records)
    assert json.loads((out / "run.json").read_text())["evaluation"]["num_images"] == 15

    def drop(*args, **kwargs):
        raise ConnectionError("the stream dropped")

    monkeypatch.setattr(pipeline, "evaluate_on_dataset", drop)
    caplog.clear()
    out = tmp_path / "out2"
    with caplog.at_level("ERROR"):
        assert main(["quantize", str(model_dir), "-o", str(out), "--eval-dataset", str(photos), *TINY]) == 0
    assert (out / "model" / "genie_model.safetensors").is_file() and (out / "run.json").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["evaluation"] is None and run["evaluation_error"] == "ConnectionError: the stream dropped"
    message = next(r.getMessage() for r in caplog.records if "the stream dropped" in r.getMessage())
    assert f"genie_hub evaluate {out / 'model'} --dataset {photos} --fp32 {model_dir} --image-column image " \
           "--label-column label`" in message


def _evaluated(model_dir: Path, source: str, **kwargs):
    model, processor = load_model(model_dir)
    evalset = open_eval_set(source, model_labels(model), **kwargs)
    return evalset, evaluate_on_dataset(model, model, processor, input_spec(model, processor), evalset, progress=False)


def test_a_local_folder_with_splits_is_read_by_split_never_mixed(model_dir, imagefolder, tmp_path):
    """`train/` + `val/` folders, a DatasetDict saved to disk, a local clone of a Hub repo's data/ files: as for a
    Hub dataset, validation (else test, else train) unless PATH:split names one; never all splits at once."""
    import shutil

    split_folder = tmp_path / "split-folder"
    shutil.copytree(imagefolder, split_folder / "val")
    for name in ("CAT", "Dog"):
        shutil.copytree(imagefolder / name, split_folder / "train" / name)
    evalset, result = _evaluated(model_dir, str(split_folder))
    assert evalset.split == "validation" and result.num_images == 15
    evalset, result = _evaluated(model_dir, f"{split_folder}:train")
    assert evalset.split == "train" and result.num_images == 6
    with pytest.raises(DataError, match="no split 'test'.*validation"):
        open_eval_set(f"{split_folder}:test", dict(enumerate(LABELS)))
    # Not splits: class folders named like one (beside other classes, or under train/), and a data file whose
    # name holds such a word beside another file.
    classes = tmp_path / "classes"
    for name in ("cat", "dog"):
        shutil.copytree(imagefolder / name.upper() if name == "cat" else imagefolder / "Dog", classes / "train" / name)
    (classes / "train" / "test").mkdir()  # a class literally named "test"
    evalset = open_eval_set(str(classes), dict(enumerate([*LABELS, "test"])))
    assert evalset.split == "train" and evalset.num_images == 6
    shutil.copytree(classes / "train", tmp_path / "flat")
    _images(1, 9)[0].save(tmp_path / "flat" / "test" / "0.png")
    assert open_eval_set(str(tmp_path / "flat"), dict(enumerate([*LABELS, "test"]))).num_images == 7

    parts = _two_splits_saved_and_cloned(tmp_path, "test")
    for folder in ("saved", "clone"):
        evalset, result = _evaluated(model_dir, str(tmp_path / folder))
        assert (evalset.split, result.num_images) == ("test", 2), folder
    parts["test"].to_parquet(str(tmp_path / "named" / "my-eval-set.parquet"))
    parts["train"].to_parquet(str(tmp_path / "named" / "more-images.parquet"))
    assert open_eval_set(str(tmp_path / "named"), dict(enumerate(LABELS))).num_images == 6


def _two_splits_saved_and_cloned(tmp_path: Path, second: str):
    """A DatasetDict of `train` (4 images) and `second` (2), written as `save_to_disk` writes it (tmp_path/saved)
    and as a Hub repo's clone holds it (tmp_path/clone/data/NAME-00000-of-00001.parquet); returns it."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image as ImageFeature

    features = Features({"image": ImageFeature(), "label": ClassLabel(names=LABELS)})
    parts = DatasetDict({"train": Dataset.from_dict({"image": _images(4, 1), "label": [0, 1, 2, 3]}, features=features),
                         second: Dataset.from_dict({"image": _images(2, 2), "label": [4, 4]}, features=features)})
    parts.save_to_disk(str(tmp_path / "saved"))
    for name, part in parts.items():
        part.to_parquet(str(tmp_path / "clone" / "data" / f"{name}-00000-of-00001.parquet"))
    return parts


def test_splits_of_other_names_are_read_by_split_never_mixed(model_dir, tmp_path):
    """A DatasetDict saved with a split named neither train, validation nor test (`holdout`), and a Hub repo's
    clone with `data/holdout-00000-of-00001.parquet`: `datasets` reads both as splits. Both splits were read as one
    "train" set (training images scored with the held-out ones), and PATH:holdout was refused."""
    parts = _two_splits_saved_and_cloned(tmp_path, "holdout")
    for folder in ("saved", "clone"):
        evalset, result = _evaluated(model_dir, str(tmp_path / folder))
        assert (evalset.split, result.num_images) == ("train", 4), folder
        evalset, result = _evaluated(model_dir, f"{tmp_path / folder}:holdout")
        assert (evalset.split, result.num_images) == ("holdout", 2), folder
    parts["holdout"].save_to_disk(str(tmp_path / "one"))  # a saved Dataset's data-00000-of-00001.arrow: no split "data"
    assert open_eval_set(str(tmp_path / "one"), dict(enumerate(LABELS))).split == "train"


def test_hidden_folders_and_datasets_metadata_files_leave_an_imagefolder_an_imagefolder(model_dir, imagefolder,
                                                                                          tmp_path):
    """A parquet file in a hidden folder (a cache, a .git) is not data, and `datasets`' own metadata file
    (metadata.csv / metadata.parquet) gives an imagefolder's labels: neither turns it into a parquet folder."""
    import shutil

    from datasets import Dataset

    photos = tmp_path / "photos"
    shutil.copytree(imagefolder, photos)
    (photos / ".cache").mkdir()
    Dataset.from_dict({"x": [1, 2]}).to_parquet(str(photos / ".cache" / "table.parquet"))
    assert open_eval_set(str(photos), dict(enumerate(LABELS))).num_images == 15

    images = _images(4, seed=3)
    for kind in ("csv", "parquet"):
        flat = tmp_path / f"flat-{kind}"
        flat.mkdir()
        for i, image in enumerate(images):
            image.save(flat / f"{i}.png")
        table = Dataset.from_dict({"file_name": [f"{i}.png" for i in range(4)], "label": [3, 1, 4, 0]})
        getattr(table, f"to_{kind}")(str(flat / f"metadata.{kind}"))
        evalset, result = _evaluated(model_dir, str(flat))
        assert (evalset.label_column, result.num_images) == ("label", 4), kind
        assert result.fp32_top1 == pytest.approx(_expected_top1(model_dir, images, [3, 1, 4, 0])), kind


def test_linked_class_folders_are_read_and_a_metadata_file_shared_by_splits_is_refused(model_dir, imagefolder,
                                                                                       tmp_path):
    import shutil

    from datasets import Dataset

    linked = tmp_path / "linked"  # class folders linked from elsewhere: data like any other, read by both readers
    linked.mkdir()
    for name in ("CAT", "Dog"):
        (linked / name).symlink_to(imagefolder / name)
    evalset, result = _evaluated(model_dir, str(linked))
    assert result.num_images == 6
    (imagefolder / "CAT" / "loop").symlink_to(linked)  # a link loop ends
    try:
        assert _evaluated(model_dir, str(linked))[1].num_images == 6
    finally:
        (imagefolder / "CAT" / "loop").unlink()

    shared = tmp_path / "shared"  # one metadata.csv above train/ and val/: each split would read every row
    rows = []
    for split in ("train", "val"):
        (shared / split).mkdir(parents=True)
        for i, image in enumerate(_images(2, seed=7)):
            image.save(shared / split / f"{i}.png")
            rows.append((f"{split}/{i}.png", i))
    Dataset.from_dict({"file_name": [r[0] for r in rows], "label": [r[1] for r in rows]}).to_csv(
        str(shared / "metadata.csv"))
    with pytest.raises(DataError, match="describes the images of several splits"):
        open_eval_set(str(shared), dict(enumerate(LABELS)))
    shutil.move(shared / "metadata.csv", tmp_path / "moved.csv")  # one per split folder: read by split
    for split in ("train", "val"):
        Dataset.from_dict({"file_name": ["0.png", "1.png"], "label": [0, 1]}).to_csv(str(shared / split / "metadata.csv"))
    assert open_eval_set(str(shared), dict(enumerate(LABELS))).num_images == 2


def test_labels_without_a_class_are_skipped_and_outside_the_classes_refused_before_compute(model_dir, tmp_path,
                                                                                          caplog):
    from datasets import ClassLabel, Dataset, Features, Image as ImageFeature, Value

    images = _images(6, seed=5)
    for name, feature, labels in (("classlabel", ClassLabel(names=LABELS), [0, -1, 2, 3, -1, 4]),
                                  ("ints", Value("int64"), [0, None, 2, 3, -1, 4])):
        path = tmp_path / f"{name}.parquet"
        Dataset.from_dict({"image": images, "label": labels},
                          features=Features({"image": ImageFeature(), "label": feature})).to_parquet(str(path))
        with caplog.at_level("WARNING"):
            _, result = _evaluated(model_dir, str(path))
        kept = [i for i, label in enumerate(labels) if label not in (None, -1)]
        assert result.num_images == 4
        assert result.fp32_top1 == pytest.approx(_expected_top1(model_dir, [images[i] for i in kept],
                                                                [labels[i] for i in kept]))
        assert "Skipped 2 example(s)" in caplog.text
        caplog.clear()
    Dataset.from_dict({"image": images, "label": [0, 1, 2, 3, 4, 9]},  # the last row is another model's class
                      features=Features({"image": ImageFeature(), "label": Value("int64")})).to_parquet(
        str(tmp_path / "other.parquet"))
    with pytest.raises(DataError, match="label 9, outside the model's 5 classes"):
        open_eval_set(str(tmp_path / "other.parquet"), dict(enumerate(LABELS)))


def test_image_columns_of_paths_or_bytes_are_read_and_others_refused_before_compute(model_dir, tmp_path):
    import io

    from datasets import Dataset

    images = _images(3, seed=6)
    paths, blobs = [], []
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    Dataset.from_dict({"path": paths, "data": blobs, "label": [0, 1, 2]}).to_parquet(str(tmp_path / "t.parquet"))
    expected = _expected_top1(model_dir, images, [0, 1, 2])
    for column in ("path", "data"):
        assert _evaluated(model_dir, str(tmp_path / "t.parquet"), image_column=column)[1].fp32_top1 == \
            pytest.approx(expected)
    with pytest.raises(DataError, match="holds Value\\('int64'\\), not images"):
        open_eval_set(str(tmp_path / "t.parquet"), dict(enumerate(LABELS)), image_column="label")
    # A {bytes, path} struct without datasets' metadata (pandas, polars, Spark write images so): found and read.
    import pyarrow as pa
    import pyarrow.parquet as pq

    structs = pa.array([{"bytes": blob, "path": f"{i}.png"} for i, blob in enumerate(blobs)])
    pq.write_table(pa.table({"picture": structs, "label": [0, 1, 2]}), tmp_path / "struct.parquet")
    assert _evaluated(model_dir, str(tmp_path / "struct.parquet"))[1].fp32_top1 == pytest.approx(expected)
    # pandas' {"bytes": ..., "path": None} rows: a path column of Arrow's null type (was "has no image column").
    import pandas as pd

    pd.DataFrame({"image": [{"bytes": blob, "path": None} for blob in blobs], "label": [0, 1, 2]}).to_parquet(
        tmp_path / "pandas.parquet")
    assert _evaluated(model_dir, str(tmp_path / "pandas.parquet"))[1].fp32_top1 == pytest.approx(expected)
    other = pa.array([{"bytes": blob, "size": 1} for blob in blobs])  # not the image struct: refused as before
    pq.write_table(pa.table({"picture": other, "label": [0, 1, 2]}), tmp_path / "other.parquet")
    with pytest.raises(DataError, match="has no image column"):
        open_eval_set(str(tmp_path / "other.parquet"), dict(enumerate(LABELS)))
    broken = tmp_path / "broken" / "cat"
    broken.mkdir(parents=True)
    for i in range(3):
        (broken / f"{i}.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="None of the first 3 images"):
        open_eval_set(str(tmp_path / "broken"), dict(enumerate(LABELS)))


def test_an_empty_local_file_or_folder_is_named_as_empty_not_as_a_hub_problem(tmp_path):
    """An empty parquet/arrow file made `datasets` fail ("Instruction 'train' corresponds to no data!", or an
    ArrowInvalid), which was reported with the Hub's hint (dataset id, HF_TOKEN) for a file on this disk."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    empty = pa.table({"image": pa.array([], image), "label": pa.array([], pa.int64())})
    (tmp_path / "folder").mkdir()
    pq.write_table(empty, tmp_path / "folder" / "test.parquet")
    pq.write_table(empty, tmp_path / "empty.parquet")
    with pa.OSFile(str(tmp_path / "empty.arrow"), "wb") as sink:
        pa.ipc.new_stream(sink, empty.schema).close()
    for source, needle in ((tmp_path / "empty.parquet", "empty.parquet holds no rows"),
                           (tmp_path / "empty.arrow", "empty.arrow holds no rows"),
                           (tmp_path / "folder", "folder holds no rows .*test.parquet are empty")):
        with pytest.raises(DataError, match=needle) as caught:
            open_eval_set(str(source), dict(enumerate(LABELS)))
        assert "HF_TOKEN" not in str(caught.value)
    # An empty file beside one with rows: named, since `datasets` cannot read the folder either.
    pq.write_table(pa.table({"image": pa.array([{"bytes": b"x", "path": None}], image), "label": [0]}),
                   tmp_path / "folder" / "more.parquet")
    with pytest.raises(DataError, match=r"1 data file\(s\) of .*folder hold no rows \(test.parquet\)"):
        open_eval_set(str(tmp_path / "folder"), dict(enumerate(LABELS)))


def test_a_label_column_of_floats_bools_or_lists_gets_a_hint_for_what_it_holds(tmp_path):
    """Every label column that was not a ClassLabel or integers got the hint for class names as strings
    (`class_encode_column`), which does not fit pandas' float64 labels (integers with a NaN), bools or lists."""
    import io

    import pandas as pd

    buffer = io.BytesIO()
    _images(1, seed=7)[0].save(buffer, format="PNG")
    image = {"bytes": buffer.getvalue(), "path": None}
    cases = {"floats": ([0, 1, float("nan")], r"float64.*astype\('Int64'\).*drop the rows without a label"),
             "bools": ([True, False, True], r"bool.*True/False is not a class.*astype\(int\)"),
             "lists": ([[0, 1], [2], [1]], r"multi-label\), which is not supported.*one class per image"),
             "names": (["cat", "dog", "cat"], r"class_encode_column\('label'\)")}
    for name, (labels, needle) in cases.items():
        pd.DataFrame({"image": [image] * 3, "label": labels}).to_parquet(tmp_path / f"{name}.parquet")
        with pytest.raises(DataError, match=needle) as caught:
            open_eval_set(str(tmp_path / f"{name}.parquet"), dict(enumerate(LABELS)))
        assert name == "names" or "class_encode_column" not in str(caught.value)


def test_photos_are_read_upright_by_their_exif_orientation(tmp_path):
    from genie_hub.data.pixels import decode_image

    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate to display
    Image.new("RGB", (48, 32)).save(tmp_path / "phone.jpg", exif=exif.tobytes())
    assert decode_image({"path": str(tmp_path / "phone.jpg")}).size == (32, 48)


def test_evaluate_fp32_refuses_another_model(model_dir, tmp_path, capsys):
    """--fp32 is fed the evaluated model's preprocessing and scored against its class names: a reference with
    other names or another normalization would be scored wrongly, so it is refused."""
    import shutil

    renamed = Path(shutil.copytree(model_dir, tmp_path / "renamed"))
    config = json.loads((renamed / "config.json").read_text())
    config["id2label"] = {str(i): name for i, name in enumerate(reversed(LABELS))}
    config["label2id"] = {name: int(i) for i, name in config["id2label"].items()}
    (renamed / "config.json").write_text(json.dumps(config))
    assert main(["evaluate", str(model_dir), "--fp32", str(renamed), "--dataset", "fashion-mnist", "--limit", "4"]) == 1
    assert "name their classes differently" in capsys.readouterr().err
    normalized = Path(shutil.copytree(model_dir, tmp_path / "normalized"))
    processor = json.loads((normalized / "preprocessor_config.json").read_text())
    processor["image_mean"], processor["image_std"] = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    (normalized / "preprocessor_config.json").write_text(json.dumps(processor))
    assert main(["evaluate", str(model_dir), "--fp32", str(normalized), "--dataset", "fashion-mnist", "--limit",
                 "4"]) == 1
    assert "normalize pixels differently" in capsys.readouterr().err


def test_evaluate_fp32_refuses_a_quantized_checkpoint(capsys):
    """A quantized --fp32 (even the evaluated model itself) would be reported as the FP32 reference."""
    from genie_hub.loading import DEFAULT_QUANTIZED_DIR

    quantized = str(DEFAULT_QUANTIZED_DIR)
    assert main(["evaluate", quantized, "--fp32", quantized, "--dataset", "fashion-mnist", "--limit", "4"]) == 2
    assert "is a genie_hub quantized checkpoint, not a full-precision model" in capsys.readouterr().err


def _unmappable(tmp: Path) -> str:
    for name in ("cat", "zebra"):
        (tmp / "unmappable" / name).mkdir(parents=True)
        _images(1, 0)[0].save(tmp / "unmappable" / name / "0.png")
    return str(tmp / "unmappable")


def _no_label(tmp: Path) -> str:
    from datasets import Dataset, Features, Image as ImageFeature

    Dataset.from_dict({"image": _images(2, 0)}, features=Features({"image": ImageFeature()})).to_parquet(
        str(tmp / "nolabel.parquet"))
    return str(tmp / "nolabel.parquet")


def test_quantize_reports_results_in_run_json_and_the_model_index(model_dir, imagefolder, tmp_path):
    from huggingface_hub import ModelCard

    out = tmp_path / "out"
    assert main(["quantize", str(model_dir), "-o", str(out), "--eval-dataset", str(imagefolder), *TINY]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["evaluation"]["num_images"] == 15 and run["evaluation"]["dataset"] == "photos"
    card = ModelCard.load(out / "model" / "README.md")
    results = {(r.metric_type, r.dataset_name, r.dataset_split) for r in card.data.eval_results or []}
    assert results == set()  # a local folder has no Hub id: results in the card text, no model-index entry
    assert "photos train top-1 (15 images)" in card.text


def test_a_hub_evaluation_lands_in_the_model_index(hub_server, model_dir, tmp_path, capsys):
    from datasets import ClassLabel, Dataset, Features, Image as ImageFeature
    from huggingface_hub import ModelCard

    features = Features({"image": ImageFeature(), "label": ClassLabel(names=LABELS)})
    Dataset.from_dict({"image": _images(5, seed=4), "label": [0, 1, 2, 3, 4]}, features=features).push_to_hub(
        "tester/tiny-eval", config_name="small", split="test")
    out = tmp_path / "out"
    assert main(["quantize", str(model_dir), "-o", str(out), "--eval-dataset", "tester/tiny-eval:small:test",
                 *TINY]) == 0
    assert "\ntester/tiny-eval:small:test top-1 on 5 images: FP32" in capsys.readouterr().out  # the split once
    card = ModelCard.load(out / "model" / "README.md")
    results = {(r.metric_type, r.dataset_type, r.dataset_config, r.dataset_split) for r in card.data.eval_results}
    assert results == {("accuracy", "tester/tiny-eval", "small", "test")}  # 5 classes: no top-5 (100 % by definition)
    run = json.loads((out / "run.json").read_text())
    assert run["evaluation"]["num_images"] == 5 and run["evaluation"]["config"] == "small"


def test_an_evaluation_cut_by_the_limit_never_claims_the_whole_split(model_dir, imagefolder):
    """--eval-limit 200 on a 10k split measured 200 images: the model-index says `train[:3]`, not `train`."""
    from genie_hub.pipeline import _results_table

    model, processor = load_model(model_dir)
    spec = input_spec(model, processor)
    for limit, split in ((3, "train[:3]"), (15, "train"), (50, "train"), (None, "train")):
        evalset = open_eval_set(str(imagefolder), model_labels(model))
        result = evaluate_on_dataset(model, model, processor, spec, evalset, limit, progress=False)
        assert result.evaluated_split == split
        rows, protocol = _results_table(result)
        assert {row["split"] for row in rows} == {split}
        assert ("the first 3 images of the train split" in protocol) == (limit == 3)


def test_a_limit_or_batch_size_that_is_not_a_positive_integer_is_refused_by_name(model_dir, imagefolder):
    """The library's evaluation functions took anything: limit="3" or batch_size=1.5 failed as raw TypeErrors,
    limit=2.5 evaluated 3 images, limit=0 or -1 reported that the set "yielded no images"."""
    from genie_hub.evaluation import agreement, evaluate_top1, predict_logits

    model, processor = load_model(model_dir)
    spec = input_spec(model, processor)
    evalset = open_eval_set(str(imagefolder), model_labels(model))
    for settings, name in (({"limit": "3"}, "limit"), ({"limit": 2.5}, "limit"), ({"limit": 0}, "limit"),
                           ({"limit": -1}, "limit"), ({"limit": True}, "limit"), ({"batch_size": 1.5}, "batch_size"),
                           ({"batch_size": 0}, "batch_size"), ({"batch_size": "8"}, "batch_size")):
        with pytest.raises(ConfigError, match=rf"evaluate_on_dataset\(\) takes {name} as a positive integer"):
            evaluate_on_dataset(model, model, processor, spec, evalset, progress=False, **settings)
    assert evaluate_on_dataset(model, model, processor, spec, evalset, limit=np.int64(2), batch_size=np.int64(1),
                               progress=False).num_images == 2
    pixels = torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with pytest.raises(ConfigError, match=r"predict_logits\(\) takes batch_size as a positive integer"):
        predict_logits(model, pixels, 1.5)
    with pytest.raises(ConfigError, match=r"evaluate_top1\(\) takes batch_size as a positive integer"):
        evaluate_top1(model, pixels, torch.tensor([0, 1]), batch_size=True)
    with pytest.raises(ConfigError, match=r"agreement\(\) takes k as a positive integer"):
        agreement(torch.zeros(2, 5), torch.zeros(2, 5), k=0)


def test_a_cut_evaluation_names_the_rows_it_went_through_not_the_images_it_scored(model_dir, tmp_path, capsys):
    """Rows without a label (or unreadable) are skipped: `limit` images scored from the first 4 rows are
    `test[:4]`, and the card says how many were scored among how many rows, never `test[:2]` (other rows)."""
    from datasets import ClassLabel, Dataset, Features, Image as ImageFeature

    from genie_hub.pipeline import _results_table

    features = Features({"image": ImageFeature(), "label": ClassLabel(names=LABELS)})
    images = _images(6, seed=5)
    Dataset.from_dict({"image": images, "label": [-1, 0, -1, 1, 2, 3]}, features=features).save_to_disk(
        str(tmp_path / "saved"))
    model, processor = load_model(model_dir)
    spec = input_spec(model, processor)
    evalset = open_eval_set(str(tmp_path / "saved"), model_labels(model))
    result = evaluate_on_dataset(model, model, processor, spec, evalset, 2, progress=False)
    assert (result.num_images, result.rows_read, result.evaluated_split) == (2, 4, "train[:4]")
    assert result.fp32_top1 == _expected_top1(model_dir, [images[1], images[3]], [0, 1])  # rows 1 and 3 scored
    rows, protocol = _results_table(result)
    assert {row["split"] for row in rows} == {"train[:4]"}
    assert "the 2 readable, labelled images among the first 4 rows of the train split (train[:4])" in protocol
    from genie_hub.outputs import RunRecord
    from genie_hub.pipeline import _print_summary

    _print_summary(RunRecord(wall_seconds=1.0, evaluation=result.to_dict()), tmp_path)
    assert "top-1 on 2 images of the first 4 rows:" in capsys.readouterr().out
    whole = evaluate_on_dataset(model, model, processor, spec, evalset, 4, progress=False)
    assert (whole.num_images, whole.complete, whole.evaluated_split) == (4, True, "train")  # 4 labelled rows: all


def test_unlabelled_photos_give_agreement_only(model_dir, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, image in enumerate(_images(5, seed=9)):
        image.save(photos / f"{i}.png")
    model, processor = load_model(model_dir)
    with pytest.raises(DataError, match="no label column"):
        open_eval_set(str(photos), model_labels(model))
    evalset = open_eval_set(str(photos), model_labels(model), unlabelled=True)
    result = evaluate_on_dataset(model, model, processor, input_spec(model, processor), evalset, progress=False)
    assert result.num_images == 5 and result.fp32_top1 is None and result.top1_agreement == 1.0
    assert main(["evaluate", str(model_dir), "--dataset", str(photos), "--unlabelled", "--fp32", str(model_dir)]) == 0
    assert "top-1 agreement" in capsys.readouterr().out
    assert main(["evaluate", str(model_dir), "--dataset", str(photos), "--unlabelled"]) == 2  # with itself: refused
    assert "--fp32" in capsys.readouterr().err


def test_an_image_column_named_that_is_not_there_is_named_in_the_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": ["a.png"], "label": [0]}), tmp_path / "set.parquet")
    with pytest.raises(DataError, match=r"has no column 'nope' \(columns: image, label\)"):
        open_eval_set(str(tmp_path / "set.parquet"), {0: "x"}, image_column="nope")


def test_a_label_column_named_that_is_not_there_is_named_in_the_error(imagefolder):
    # It read "has no label column (columns: image, label)" while listing the one it would have used (helper-29).
    with pytest.raises(DataError, match=r"has no column 'nope' \(columns: image, label\)\. Name its label column"):
        open_eval_set(str(imagefolder), dict(enumerate(LABELS)), label_column="nope")


def test_a_repositorys_own_code_is_never_run(model_dir, tmp_path, monkeypatch):
    """A model type transformers does not ship, with an `auto_map` to Python files in the repository: transformers
    would ask whether to run them (and run them on "y"). genie_hub loads with trust_remote_code=False: the code
    never runs, no question stops a batch job, and the error says why."""
    import builtins
    import shutil

    from genie_hub.errors import ModelLoadError

    folder = tmp_path / "with-code"
    shutil.copytree(model_dir, folder)
    marker = tmp_path / "code-ran"
    (folder / "custom.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import ResNetConfig, ResNetForImageClassification\n"
        "class Config(ResNetConfig):\n    model_type = 'custom-resnet'\n"
        "class Model(ResNetForImageClassification):\n    config_class = Config\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="custom-resnet",
                  auto_map={"AutoConfig": "custom.Config", "AutoModelForImageClassification": "custom.Model"})
    (folder / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(builtins, "input", lambda *args: "y")  # a user who would say yes to transformers' question
    with pytest.raises(ModelLoadError, match="genie_hub does not run a repository's own code"):
        load_model(str(folder))
    assert not marker.exists()


def test_a_checkpoint_without_all_its_weights_is_refused(model_dir, tmp_path, capsys):
    """A backbone saved without its classifier head: transformers would fill the head with random values (and only
    log it), and quantize / evaluate would report and publish numbers of a random model."""
    import shutil

    from safetensors.torch import load_file, save_file

    from genie_hub.errors import ModelLoadError

    folder = tmp_path / "headless"
    shutil.copytree(model_dir, folder)
    weights = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("classifier.")}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"lacks 2 weight\(s\) .*classifier\.1\.bias, classifier\.1\.weight"):
        load_model(str(folder))
    assert main(["evaluate", str(folder), "-q"]) == 1
    assert "would fill them with random values" in capsys.readouterr().err
    load_model(str(model_dir))  # the complete checkpoint loads


def test_the_input_size_is_what_the_processor_outputs(tmp_path):
    """The crop only where the processor crops, the resize size only where it resizes: an EfficientNet processor
    with do_center_crop=False (google/efficientnet-b0's) outputs its `size`, not its unused `crop_size`, and one
    with do_resize=False leaves the size to the model config's image_size."""
    from PIL import Image
    from transformers import EfficientNetImageProcessor, ViTImageProcessor

    from tiny_models import tiny_model

    model = tiny_model("resnet-basic")
    photo = Image.new("RGB", (500, 400))
    for processor, expected in (
            (EfficientNetImageProcessor(size={"height": 48, "width": 40}, crop_size={"height": 60, "width": 60},
                                        do_center_crop=False), (48, 40)),
            (EfficientNetImageProcessor(size={"height": 48, "width": 40}, crop_size={"height": 36, "width": 36},
                                        do_center_crop=True), (36, 36)),
            (ViTImageProcessor(size={"height": 224, "width": 224}, do_resize=False), (IMAGE_SIZE, IMAGE_SIZE))):
        spec = input_spec(model, processor)
        assert (spec.height, spec.width) == expected
        if getattr(processor, "do_resize", True):  # what it really outputs (a photo keeps its size without resize)
            assert tuple(processor(images=photo, return_tensors="pt")["pixel_values"].shape[-2:]) == expected


def test_a_processor_that_is_not_one_is_a_type_error(tmp_path):
    """`synthesize(model, config, processor="path/to/model")` made 224 px images with no normalization, silently."""
    from genie_hub import GenieConfig, synthesize
    from tiny_models import tiny_model

    model = tiny_model("resnet-basic")
    for wrong in (str(tmp_path), tmp_path, {"image_mean": [0.5]}):
        with pytest.raises(TypeError, match="processor must be the model's image processor object"):
            input_spec(model, wrong)
        with pytest.raises(TypeError, match="processor must be"):
            synthesize(model, GenieConfig.from_profile("quick", num_samples=2), processor=wrong, progress=False)
    with pytest.raises(TypeError, match="takes the model"):
        input_spec(None)


def test_load_errors_say_what_is_missing(model_dir, tmp_path, monkeypatch):
    """A folder with only a pickled pytorch_model.bin, and a model class that needs an uninstalled package, were
    both told that the folder "needs config.json and model.safetensors"."""
    import shutil

    from safetensors.torch import load_file

    from genie_hub.errors import ModelLoadError

    pickled = tmp_path / "pickled"
    shutil.copytree(model_dir, pickled)
    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="only as a pickled pytorch_model.bin, and genie_hub loads safetensors"):
        load_model(str(pickled))

    import transformers

    def needs_natten(*args, **kwargs):
        raise ImportError("DinatForImageClassification requires the natten library but it was not found in your "
                          "environment. You can install it with pip: `pip install natten`.")

    monkeypatch.setattr(transformers.AutoModelForImageClassification, "from_pretrained", needs_natten)
    with pytest.raises(ModelLoadError, match=r"needs a package that is not installed \(.*pip install natten") as info:
        load_model(str(model_dir))
    assert "model.safetensors" not in str(info.value)


def test_a_model_type_transformers_does_not_ship_is_named_as_the_reason(model_dir, tmp_path):
    """A folder whose config.json names a model type this transformers lacks (a newer release's) was told that it
    "needs config.json and model.safetensors", which it has."""
    import shutil

    from genie_hub.errors import ModelLoadError

    folder = tmp_path / "newer"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "resnet_v9"}))
    with pytest.raises(ModelLoadError, match="names a model type that transformers .* does not ship") as info:
        load_model(str(folder))
    assert "needs config.json and model.safetensors" not in str(info.value)


def test_two_networks_of_one_model_type_are_not_a_model_and_its_quantized_version():
    """ResNet-18 and ResNet-50 share model_type "resnet": their configs' widths and depths tell them apart, where
    the Space compared them and reported the disagreement as quantization error (helper-29)."""
    from transformers import ResNetConfig, ResNetForImageClassification

    from genie_hub.evaluation import input_differences
    from genie_hub.loading import InputSpec

    spec = InputSpec(channels=3, height=32, width=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    small, wide, small_again = (ResNetForImageClassification(ResNetConfig(
        embedding_size=8, hidden_sizes=sizes, depths=[1, 1], layer_type="basic", num_labels=3))
        for sizes in ([8, 16], [16, 32], [8, 16]))
    assert input_differences(small, spec, small_again, spec) == []
    small_again.config.transformers_weights = "genie_model.safetensors"  # what a loaded Genie checkpoint carries
    small_again.config.id2label = {0: "x", 1: "y", 2: "z"}  # classes are the callers' to compare
    assert input_differences(small, spec, small_again, spec) == []
    (problem,) = input_differences(small, spec, wide, spec)
    assert "their configs describe different networks (hidden_sizes: [8, 16] vs [16, 32])" in problem
