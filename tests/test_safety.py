"""Nothing lost, nothing silently wrong (issue 14): atomic outputs, refusals before compute, strict loading,
safe publishing. Each test is one case a hostile or unlucky user hit."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import genie_hub
from genie_hub import GenieConfig, quantize, save_quantized
from genie_hub.checkpoint import from_pretrained
from genie_hub.cli import main
from genie_hub.errors import CheckpointError, ConfigError, PushError
from genie_hub.hub import push_output
from helpers_output import build_output, edit_weights, tree_hashes
from tiny_models import IMAGE_SIZE, save_tiny_model, structured_images, tiny_model

ROOT = Path(__file__).resolve().parents[1]
OLD_TRANSFORMERS = ROOT / ".ci" / "old-transformers"
TINY = ["--profile", "quick", "--num-samples", "8", "--batch-size", "8", "--synthesis-iterations", "3",
        "--reconstruction-steps", "3", "-q"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("base") / "tiny-resnet"
    save_tiny_model(path, "resnet-basic")
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A W4A4 Genie checkpoint of a tiny ResNet (round-to-nearest: these tests are about files, not accuracy)."""
    model = tiny_model("resnet-basic")
    result = quantize(model, structured_images(8, 3, torch.Generator().manual_seed(0)),
                      GenieConfig.from_profile("quick", reconstruction_steps=0), range_init="minmax", progress=False)
    return save_quantized(result, tmp_path_factory.mktemp("ckpt") / "w4a4")


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


# ---- data loss and random weights ------------------------------------------------------------------------
@pytest.mark.parametrize("existing", [False, True])
def test_a_save_killed_midway_leaves_nothing_or_the_old_checkpoint(checkpoint, tmp_path, monkeypatch, existing):
    from genie_hub.checkpoint import save as save_module

    target = tmp_path / "model"
    if existing:
        shutil.copytree(checkpoint, target)
    before = tree_hashes(target) if existing else None
    model = from_pretrained(checkpoint)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies after transformers wrote config.json and model.safetensors

    monkeypatch.setattr(save_module, "_finish", killed)
    with pytest.raises(KeyboardInterrupt):
        save_quantized(model, target)
    assert (tree_hashes(target) == before) if existing else not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["model"] if existing else [])  # no staging left


def test_save_never_replaces_a_folder_it_did_not_write(checkpoint, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not empty"):
        save_quantized(from_pretrained(checkpoint), target)
    assert (target / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        save_quantized(from_pretrained(checkpoint), tmp_path / "file")


PLAIN_LOAD = """
import json, sys
from transformers import AutoModelForImageClassification, pipeline
results = {}
for folder in sys.argv[1:]:
    for api, load in (("auto", lambda: AutoModelForImageClassification.from_pretrained(folder)),
                      ("pipeline", lambda: pipeline("image-classification", model=folder))):
        try:
            load()
            results[folder + ":" + api] = "LOADED"
        except Exception as exc:
            results[folder + ":" + api] = type(exc).__name__ + ": " + str(exc)[:3000]
import transformers
results["version"] = transformers.__version__
print("RESULTS" + json.dumps(results))
"""


def _plain_load(folders: list[Path], pythonpath: str = "") -> dict:
    env = dict(os.environ, PYTHONPATH=pythonpath, TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", PLAIN_LOAD, *map(str, folders)], capture_output=True, text=True,
                          env=env, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("RESULTS", 1)[1])


def _guardless_copy(checkpoint: Path, tmp_path: Path) -> Path:
    """The checkpoint after a plain `config.save_pretrained`, which drops the top-level guard key."""
    from transformers import AutoConfig

    folder = _copy(checkpoint, tmp_path)
    AutoConfig.from_pretrained(folder).save_pretrained(folder)
    assert "transformers_weights" not in json.loads((folder / "config.json").read_text())
    return folder


def test_plain_transformers_never_loads_random_weights(checkpoint, tmp_path):
    guardless = _guardless_copy(checkpoint, tmp_path)
    results = _plain_load([checkpoint, guardless])
    assert results.pop("version") == __import__("transformers").__version__
    assert len(results) == 4 and all(outcome != "LOADED" for outcome in results.values()), results
    assert all("pip install genie_hub" in results[f"{checkpoint}:{api}"] for api in ("auto", "pipeline"))
    assert torch.equal(from_pretrained(guardless).classifier[1].weight_packed,
                       from_pretrained(checkpoint).classifier[1].weight_packed)  # genie_hub still loads it


def test_an_old_transformers_release_refuses_too(checkpoint, tmp_path):
    if not (OLD_TRANSFORMERS / "transformers").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{OLD_TRANSFORMERS} is missing: .ci/setup installs transformers 4.51 there")
        pytest.skip("run .ci/setup to install transformers 4.51 into .ci/old-transformers")
    # The format 1 layout (weights in model.safetensors, protected only by the config guard) is what this old
    # release loads with random conv/linear weights: the test would see it.
    v1 = _copy(checkpoint, tmp_path / "v1")
    (v1 / "genie_model.safetensors").rename(v1 / "model.safetensors")
    results = _plain_load([checkpoint, _guardless_copy(checkpoint, tmp_path), v1], pythonpath=str(OLD_TRANSFORMERS))
    assert results.pop("version") == "4.51.3"
    assert results.pop(f"{v1}:auto") == "LOADED"
    assert all(outcome != "LOADED" for key, outcome in results.items() if not key.startswith(str(v1))), results


def _auto_load(folder: Path):
    from transformers import AutoModelForImageClassification

    return AutoModelForImageClassification.from_pretrained(folder)


LOADERS = {"genie_hub": from_pretrained, "transformers": _auto_load}
"""Both ways a user loads a checkpoint (genie_hub's `from_pretrained` checks the folder first; transformers' goes
through the quantizer's hooks alone): each refusal below must hold for both."""


@pytest.mark.parametrize("loader", LOADERS)
def test_stray_plain_weights_next_to_a_checkpoint_are_refused(checkpoint, tmp_path, loader):
    folder = _copy(checkpoint, tmp_path)
    shutil.copy(folder / "genie_model.safetensors", folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors next to its Genie weights"):
        LOADERS[loader](folder)


def test_a_load_onto_the_meta_device_is_refused_with_its_reason(checkpoint):
    """Weights on the meta device are no weights. genie_hub refuses it itself (CheckpointError); transformers 5.25
    refuses the device before genie_hub's hook runs (a ModelLoadError quoting it). Either way: refused, naming meta."""
    from genie_hub.errors import GenieError

    with pytest.raises(GenieError, match="device_map='meta'|device type 'meta'"):
        from_pretrained(checkpoint, device_map="meta")


@pytest.mark.parametrize("loader", LOADERS)
def test_a_scale_stored_in_another_float_type_is_refused(checkpoint, tmp_path, loader):
    """The format stores scales as float32; a float16 one is an edit (and loses the values' low bits)."""
    folder = _copy(checkpoint, tmp_path)
    edit_weights(folder, lambda t: t.__setitem__(f"{CONV}.weight_scale", t[f"{CONV}.weight_scale"].half()))
    with pytest.raises(CheckpointError, match=f"'{CONV}.weight_scale' has dtype F16, expected F32"):
        LOADERS[loader](folder)


@pytest.mark.parametrize("loader", LOADERS)
def test_a_shard_index_pointing_outside_the_folder_is_refused(checkpoint, tmp_path, loader):
    folder = _copy(checkpoint, tmp_path)
    (tmp_path / "outside.safetensors").write_bytes((folder / "genie_model.safetensors").read_bytes())
    (folder / "genie_model.safetensors").unlink()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "outside.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    index = {"metadata": {}, "weight_map": {key: "../outside.safetensors" for key in keys}}
    (folder / "genie_model.safetensors.index.json").write_text(json.dumps(index))
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["weights_file"] = "genie_model.safetensors.index.json"
    (folder / "config.json").write_text(json.dumps(config))
    # genie_hub refuses it; transformers 5.25's own index check may refuse it first (a ValueError naming it)
    with pytest.raises((CheckpointError, ValueError), match="outside its folder|outside the model directory"):
        LOADERS[loader](folder)



@pytest.mark.parametrize("loader", LOADERS)
def test_a_weights_file_linked_out_of_its_folder_is_refused_but_a_hub_cache_snapshot_loads(checkpoint, tmp_path,
                                                                                           loader):
    """A link to another checkpoint's weights loaded them under this folder's config (logits moved by 5,
    helper-31). The Hub cache's own links (snapshots/<rev>/file -> ../../blobs/<hash>) must keep working."""
    folder = _copy(checkpoint, tmp_path)
    elsewhere = tmp_path / "elsewhere.safetensors"
    shutil.move(folder / "genie_model.safetensors", elsewhere)
    (folder / "genie_model.safetensors").symlink_to(elsewhere)
    with pytest.raises(CheckpointError, match="is a symbolic link to .*outside its folder"):
        LOADERS[loader](folder)
    cache = tmp_path / "models--owner--name"
    snapshot = cache / "snapshots" / "0123abcd"
    (cache / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for item in checkpoint.iterdir():
        blob = cache / "blobs" / hashlib.sha256(item.name.encode()).hexdigest()
        shutil.copy(item, blob)
        (snapshot / item.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    x = structured_images(2, 3, torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(LOADERS[loader](snapshot)(pixel_values=x).logits,
                           from_pretrained(checkpoint)(pixel_values=x).logits)

def test_a_model_cast_to_float16_is_refused_before_anything_is_written(checkpoint, tmp_path):
    model = from_pretrained(checkpoint).to(torch.float16)
    with pytest.raises(CheckpointError, match=r"float16 .*model.to\(torch.float32\).save_pretrained"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    model.to(torch.float32).save_pretrained(tmp_path / "out")  # what the message says works, exactly
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.equal(from_pretrained(tmp_path / "out")(x).logits, model(x).logits)


def test_model_fingerprint_sees_every_weight(tmp_path):
    model = tiny_model("resnet-basic")
    config = GenieConfig.from_profile("quick", num_samples=4, synthesis_batch_size=4, synthesis_iterations=2)
    genie_hub.synthesize(model, config, output_dir=tmp_path, progress=False)
    with torch.no_grad():
        model.resnet.encoder.stages[0].layers[0].layer[0].convolution.weight[3, 1, 0, 0] += 1e-6
    with pytest.raises(ConfigError, match="different settings or another model"):
        genie_hub.synthesize(model, config, output_dir=tmp_path, progress=False)


# ---- silently wrong results ----------------------------------------------------------------------------------
CONV = "resnet.encoder.stages.0.layers.0.layer.1.convolution"


@pytest.mark.parametrize("key,value", [("weight_scale", 0.0), ("weight_scale", -0.01), ("input_scale", 0.0),
                                       ("input_scale", -1.0), ("input_scale", 1e30),
                                       ("weight_zero_point", 2**24 + 1), ("weight_zero_point", -(2**30))])
def test_scales_freeze_never_produces_are_refused(checkpoint, tmp_path, key, value):
    folder = _copy(checkpoint, tmp_path)
    edit_weights(folder, lambda t: t[f"{CONV}.{key}"].fill_(value))
    with pytest.raises(CheckpointError, match=f"{CONV}.{key}"):
        from_pretrained(folder)


@pytest.mark.parametrize("value", [float("nan"), -1.0])
def test_broken_batchnorm_statistics_are_refused(checkpoint, tmp_path, value):
    folder = _copy(checkpoint, tmp_path)
    key = "resnet.embedder.embedder.normalization.running_var"
    edit_weights(folder, lambda t: t[key].__setitem__(0, value))
    with pytest.raises(CheckpointError, match="running_var"):
        from_pretrained(folder)


@pytest.mark.parametrize("field,value", [("act_bits", 8), ("act_signed", True)])
def test_config_json_edits_are_cross_checked_with_the_weights(checkpoint, tmp_path, field, value):
    folder = _copy(checkpoint, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["layers"][CONV][field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="disagree"):
        from_pretrained(folder)
    with pytest.raises(CheckpointError, match="disagree"):
        from transformers import AutoModelForImageClassification

        AutoModelForImageClassification.from_pretrained(folder)


@pytest.mark.parametrize("edit", ["removed", "renamed"])
def test_an_edited_quantization_config_is_named_as_the_cause_with_genie_hub_imported(checkpoint, tmp_path, edit):
    """Without a usable quantization_config transformers falls back to the load guard, whose first sentence says
    to import genie_hub: with genie_hub imported, it also names the edited config as the cause."""
    folder = _copy(checkpoint, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    if edit == "removed":
        del config["quantization_config"]
    else:
        config["quantization_config"]["quant_method"] = "GENIE"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="quantization_config was removed or edited"):
        _auto_load(folder)


@pytest.mark.parametrize("case,needle", [
    ("a file", "it is a file. Pass the model's folder"),
    ("empty", "No model given"),
    ("missing path", "there is no such folder"),
    ("folder without config", "it has no config.json"),
    ("tampered checkpoint", "has non-finite values"),
    ("labels removed from config.json", "another number of classes than config.json's id2label"),
])
def test_evaluate_says_what_is_wrong_with_the_model_it_was_given(checkpoint, base, tmp_path, capsys, case,
                                                                  needle):
    """Each slip gets its own cause; a Genie checkpoint's own refusal is shown as it is, without a generic
    "the folder exists but..." in front of it."""
    if case == "tampered checkpoint":
        name = str(_copy(checkpoint, tmp_path))
        edit_weights(Path(name), lambda t: t[f"{CONV}.weight_scale"].fill_(float("nan")))
    elif case.startswith("labels"):  # transformers then builds its default 2-class head for 5-class weights
        name = str(_copy(base, tmp_path))
        config = json.loads((Path(name) / "config.json").read_text())
        for key in ("id2label", "label2id"):
            config.pop(key, None)
        (Path(name) / "config.json").write_text(json.dumps(config))
    else:
        (tmp_path / "empty-folder").mkdir()
        name = {"a file": str(checkpoint / "config.json"), "empty": " ", "missing path": str(tmp_path / "nope"),
                "folder without config": str(tmp_path / "empty-folder")}[case]
    assert main(["evaluate", name, "--limit", "2"]) == 1
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert "The folder exists" not in err or case == "folder without config"
    assert "Repo id must use" not in err  # huggingface_hub's check of a Hub id says nothing about a missing path


def test_a_processor_of_another_size_is_named_as_the_cause_not_reported_as_a_bug(tmp_path, capsys):
    """A ViT whose preprocessor_config.json gives 2x its config's image_size: its forward fails as it is, so the
    error is about the inputs, before any compute, not "genie_hub cannot quantize ... please report it"."""
    from transformers import ViTImageProcessor

    folder = tmp_path / "vit"
    save_tiny_model(folder, "vit")
    ViTImageProcessor(size={"height": 2 * IMAGE_SIZE, "width": 2 * IMAGE_SIZE}).save_pretrained(folder)
    out = tmp_path / "out"
    assert main(["quantize", str(folder), "-o", str(out), *TINY]) == 2  # a settings/input error, as ConfigError
    err = capsys.readouterr().err
    assert "does not run on inputs of shape [3, 64, 64] even before quantization" in err
    assert "preprocessor_config.json" in err and "report" not in err and not out.exists()


def test_library_calls_give_the_callers_model_back_as_it_came():
    """quantize left the model in eval mode with every parameter frozen, and synthesize turned a submodule the
    caller had put in eval mode back to training: each module's mode and each requires_grad are restored."""
    from transformers import ViTImageProcessor

    model = tiny_model("resnet-basic").train()
    model.classifier.eval()
    model.resnet.embedder.requires_grad_(False)
    before = ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])
    config = GenieConfig.from_profile("quick", num_samples=4, synthesis_batch_size=4, synthesis_iterations=2,
                                      reconstruction_steps=2)
    processor = ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    calibration = genie_hub.synthesize(model, config, processor=processor, progress=False)
    assert ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]) == before
    quantize(model, calibration, config, progress=False)
    assert ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]) == before


def _quantized_tiny():
    model = tiny_model("resnet-basic")
    config = GenieConfig.from_profile("quick", reconstruction_steps=0)
    return quantize(model, structured_images(4, 3, torch.Generator().manual_seed(0)), config, progress=False).model


@pytest.mark.parametrize("case,error,needle", [
    ("range_init 'mse'", ConfigError, "range_init must be one of 'lp', 'minmax'"),
    ("a NaN pixel", genie_hub.errors.DataError, "1 of the 4 calibration images hold NaN"),
    ("no images", ConfigError, "shaped [N, C, H, W] with N >= 1"),
    ("uint8 images", ConfigError, "as floats"),
    ("a list of images", TypeError, "as a torch.Tensor"),
    ("a float64 model", ConfigError, "needs a float32 model"),
    ("a model on the meta device", ConfigError, "weights on the meta device"),
    ("a config changed after it was made", ConfigError, "Invalid bit-width 99"),
    ("a config as a dict", TypeError, "takes a GenieConfig"),
    ("an already quantized model", ConfigError, "already quantized"),
    ("nothing to quantize", genie_hub.errors.UnsupportedModelError, "no nn.Conv2d or nn.Linear"),
    ("a compiled model", ConfigError, "Pass the model itself (model._orig_mod"),  # quantized, then unsavable
    ("a DataParallel model", ConfigError, "Pass the model itself (model.module)"),  # quantized, then unsavable
    # were a raw TypeError, an AttributeError, and RuntimeError 'Tensor.item() cannot be called on meta tensors'
    ("a state_path that is a number", ConfigError, "takes state_path as a file path (str or pathlib.Path)"),
    ("a state_path that is a folder", ConfigError, "an existing folder: the reconstruction state is one file"),
    ("a device name as the accelerator", ConfigError, "takes accelerator as an accelerate.Accelerator"),
    ("images on the meta device", ConfigError, "calibration images on the meta device"),
])
def test_quantize_refuses_what_it_cannot_use_before_any_compute(case, error, needle, tmp_path):
    from torch import nn

    model = tiny_model("resnet-basic")
    images = structured_images(4, 3, torch.Generator().manual_seed(0))
    config = GenieConfig.from_profile("quick", reconstruction_steps=2)
    kwargs = {}
    if case.startswith("range_init"):
        kwargs["range_init"] = "mse"
    elif case == "a state_path that is a number":
        kwargs["state_path"] = 5
    elif case == "a state_path that is a folder":
        kwargs["state_path"] = tmp_path
    elif case == "a device name as the accelerator":
        kwargs["accelerator"] = "cpu"
    elif case == "images on the meta device":
        images = images.to("meta")
    elif case == "a NaN pixel":
        images[2, 0, 1, 1] = float("nan")
    elif case == "no images":
        images = images[:0]
    elif case == "uint8 images":
        images = (images * 50).clamp(0, 255).to(torch.uint8)
    elif case == "a list of images":
        images = list(images)
    elif case == "a float64 model":
        model = model.double()
    elif case == "a model on the meta device":
        model = model.to("meta")
    elif case.startswith("a config changed"):
        config.weight_bits = 99
    elif case == "a config as a dict":
        config = config.to_dict()
    elif case == "an already quantized model":
        model = _quantized_tiny()
    elif case == "a compiled model":
        model = torch.compile(model, backend="eager")
    elif case == "a DataParallel model":
        model = nn.DataParallel(model)
    else:
        model = nn.Sequential(nn.BatchNorm2d(3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(error, match=re.escape(needle)):
        quantize(model, images, config, progress=False, **kwargs)


@pytest.mark.parametrize("wrap", ["compile", "DataParallel"])
def test_synthesize_refuses_a_wrapped_model_before_any_compute(wrap, monkeypatch):
    """A wrapper hides the model's config: synthesis made 224 px images for a 32 px model (with a warning that no
    adapter handles the wrapper's type)."""
    from torch import nn

    from genie_hub.synthesis import loop

    monkeypatch.setattr(loop, "synthesize_batches", lambda *a, **k: pytest.fail("computed before refusing"))
    model = tiny_model("resnet-basic")
    model = torch.compile(model, backend="eager") if wrap == "compile" else nn.DataParallel(model)
    config = GenieConfig.from_profile("quick", num_samples=4, synthesis_batch_size=4, synthesis_iterations=2)
    with pytest.raises(ConfigError, match="wrapper, which hides its config"):
        genie_hub.synthesize(model, config, progress=False)


def test_synthesize_refuses_a_device_name_as_its_accelerator_before_any_compute(monkeypatch):
    """accelerator='cuda' failed as AttributeError: 'str' object has no attribute 'num_processes'."""
    from genie_hub.synthesis import loop

    monkeypatch.setattr(loop, "synthesize_batches", lambda *a, **k: pytest.fail("computed before refusing"))
    config = GenieConfig.from_profile("quick", num_samples=4, synthesis_batch_size=4, synthesis_iterations=2)
    with pytest.raises(ConfigError, match="synthesize\\(\\) takes accelerator as an accelerate.Accelerator"):
        genie_hub.synthesize(tiny_model("resnet-basic"), config, accelerator="cuda", progress=False)


@pytest.mark.parametrize("output_dir", ["", "a file"])
def test_synthesize_refuses_an_output_dir_it_cannot_use_before_any_compute(tmp_path, output_dir, monkeypatch):
    from genie_hub.synthesis import loop

    monkeypatch.chdir(tmp_path)
    if output_dir:
        (tmp_path / output_dir).write_text("x")
    monkeypatch.setattr(loop, "synthesize_batches", lambda *a, **k: pytest.fail("computed before refusing"))
    config = GenieConfig.from_profile("quick", num_samples=4, synthesis_batch_size=4, synthesis_iterations=2)
    with pytest.raises(ConfigError, match="output_dir"):
        genie_hub.synthesize(tiny_model("resnet-basic"), config, spec=genie_hub.input_spec(tiny_model("resnet-basic")),
                             output_dir=output_dir, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ([output_dir] if output_dir else [])


@pytest.mark.parametrize("field,value", [("num_samples", "8"), ("num_samples", 8.5), ("synthesis_batch_size", True),
                                         ("reconstruction_steps", float("nan")), ("synthesis_iterations", None),
                                         ("num_samples", 10**30), ("seed", "abc"), ("seed", -1), ("profile", "bogus"),
                                         ("overrides", {5: {"weight": 8}}), ("overrides", ["x"]),
                                         ("first_layer", "w8"), ("lr_rounding", True)])
def test_config_values_of_the_wrong_type_are_refused_with_the_field_named(field, value):
    values = {**dataclasses.asdict(GenieConfig.from_profile("quick")), field: value}
    with pytest.raises(ConfigError, match=field if field != "overrides" else "overrides"):
        GenieConfig(**values)


def test_a_config_from_a_dict_gets_its_profile_and_refuses_unknown_keys():
    quick = GenieConfig.from_dict({"profile": "quick", "weight_bits": 2})
    assert quick == GenieConfig.from_profile("quick", weight_bits=2)  # not the paper profile's values labelled quick
    assert GenieConfig.from_dict(dataclasses.asdict(quick)) == quick  # a run.json's config round-trips
    with pytest.raises(ConfigError, match="'weight_bit'.*did you mean 'weight_bits'"):
        GenieConfig.from_dict({"weight_bit": 2, "act_bits": 2})
    with pytest.raises(ConfigError, match="'weight_bit'.*did you mean 'weight_bits'"):  # was a bare TypeError
        GenieConfig.from_profile("quick", weight_bit=2)
    with pytest.raises(ConfigError, match="from a dict of settings, got list"):  # was a TypeError inside difflib
        GenieConfig.from_dict([1, 2])
    # The constructor does not apply a profile: a "quick" config with the paper's hours-long settings is refused.
    with pytest.raises(ConfigError, match=r"Use GenieConfig.from_profile\('quick', ...\)"):
        GenieConfig(profile="quick")


def test_numpy_numbers_are_settings_like_python_ones():
    """np.int64(4) as num_samples was accepted and then broke the first JSON write (a shard's fingerprint, after the
    first synthesis batch); as weight_bits it was refused. Both are now Python numbers."""
    import json

    import numpy as np

    config = GenieConfig.from_profile("quick", num_samples=np.int64(4), weight_bits=np.int32(3),
                                      lr_latent=np.float32(0.25))
    assert (config.num_samples, config.weight_bits, config.lr_latent) == (4, 3, 0.25)
    assert json.loads(config.to_json_string())["num_samples"] == 4
    assert config == GenieConfig.from_profile("quick", num_samples=4, weight_bits=3, lr_latent=0.25)
    with pytest.raises(ConfigError, match="Invalid bit-width"):
        GenieConfig.from_profile("quick", weight_bits=np.bool_(True))


def test_an_explicit_none_in_from_profile_is_applied():
    """None is a value of some settings (an input kept in floating point), not 'unset'."""
    assert GenieConfig.from_profile("quick", second_layer_act_bits=None).second_layer_act_bits is None
    assert GenieConfig.from_profile("quick").second_layer_act_bits == 8


def test_override_matching_nothing_is_refused_before_compute(base, tmp_path, capsys):
    assert main(["quantize", str(base), "-o", str(tmp_path / "out"), "--override", "classifier=8/8", *TINY]) == 2
    err = capsys.readouterr().err
    assert "'classifier'" in err and "classifier.1" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_degenerate_calibration_is_reported_and_never_worse_than_round_to_nearest(caplog):
    model = tiny_model("resnet-basic")
    config = GenieConfig.from_profile("quick", reconstruction_steps=20)
    with caplog.at_level("WARNING", logger="genie_hub"):
        result = quantize(model, torch.zeros(8, 3, IMAGE_SIZE, IMAGE_SIZE), config, progress=False)
    assert "no variance" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="genie_hub"):
        quantize(model, torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE), dataclasses.replace(config, reconstruction_steps=1), progress=False)
    assert "Only 1 calibration image(s)" in caplog.text and "no variance" not in caplog.text  # one image is not constant
    for unit in result.report:
        assert unit.error_reconstructed <= unit.error_round_to_nearest, unit
        assert unit.kept in ("reconstructed", "round-to-nearest")


def test_a_unit_that_reconstruction_made_worse_keeps_round_to_nearest():
    model = tiny_model("resnet-basic")  # at 5 steps the W8 stem ends worse than its near-perfect rounding
    result = quantize(model, structured_images(16, 3, torch.Generator().manual_seed(0)),
                      GenieConfig.from_profile("quick", reconstruction_steps=5), progress=False)
    kept = [unit for unit in result.report if unit.kept == "round-to-nearest"]
    assert kept, [(u.name, u.error_round_to_nearest, u.error_reconstructed) for u in result.report]
    assert all(unit.error_reconstructed == unit.error_round_to_nearest for unit in kept)


@pytest.mark.parametrize("limit", ["0", "-5", "x"])
def test_evaluate_limit_must_be_positive(limit, capsys):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "some/model", "--limit", limit])
    assert info.value.code == 2 and "positive integer" in capsys.readouterr().err


# ---- output folders: refused before any compute -----------------------------------------------------------
def test_output_folder_problems_are_refused_before_compute(base, tmp_path, capsys, monkeypatch):
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "thesis.tex").write_text("mine")
    cases = {
        "": "empty string",
        str(tmp_path / "afile"): "is a file",
        str(tmp_path / "afile" / "sub"): "afile is a file, not a folder",  # was "afile is not writable"
        str(unrelated): "not a genie_hub output folder",
        str(tmp_path / "work-file"): "needs a folder",
        str(tmp_path / "model-file"): "needs a folder",
    }
    (tmp_path / "afile").write_text("x")
    (tmp_path / "work-file").mkdir()
    (tmp_path / "work-file" / "work").write_text("x")
    (tmp_path / "model-file").mkdir()
    (tmp_path / "model-file" / "model").write_text("x")
    for output, needle in cases.items():
        assert main(["quantize", str(base), "-o", output, *TINY]) == 2, output
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, (output, err)
    assert sorted(p.name for p in unrelated.iterdir()) == ["thesis.tex"]
    from genie_hub import outputs

    monkeypatch.setattr(outputs.os, "access", lambda path, mode: False)  # root can write anywhere; pretend not
    assert main(["quantize", str(base), "-o", str(tmp_path / "ro"), *TINY]) == 2
    assert "not writable" in capsys.readouterr().err


def test_a_run_with_other_settings_never_replaces_a_finished_one(base, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["quantize", str(base), "-o", str(out), "-w", "4", *TINY]) == 0
    shutil.rmtree(out / "work")  # even without the work folder, run.json says what the folder holds
    before = tree_hashes(out)
    assert main(["quantize", str(base), "-o", str(out), "-w", "2", *TINY]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "weight_bits: 4 -> 2" in err and "--overwrite" in err
    assert tree_hashes(out) == before
    # A few-shot run is other settings too; with --overwrite it starts over and leaves no synthetic dataset.
    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (40, 40), (i * 60, 20, 200 - i * 40)).save(photos / f"{i}.png")
    assert main(["quantize", str(base), "-o", str(out), "--few-shot", str(photos), *TINY]) == 2
    assert main(["quantize", str(base), "-o", str(out), "--few-shot", str(photos), "--overwrite", *TINY]) == 0
    assert not (out / "dataset").exists() and json.loads((out / "run.json").read_text())["zero_shot"] is False
    # The same settings again: allowed (resumes), also when a folder is written another way (tab completion's /).
    assert main(["quantize", str(base), "-o", str(out), "--few-shot", str(photos), *TINY]) == 0
    assert main(["quantize", f"{base}/", "-o", str(out), "--few-shot", f"{photos}/", *TINY]) == 0


def test_unknown_eval_dataset_is_refused_before_compute(base, tmp_path, capsys):
    assert main(["quantize", str(base), "-o", str(tmp_path / "out"), "--eval-dataset", "imagenet", *TINY]) == 1
    assert "Unknown evaluation dataset" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("repo_id,needle", [("bad id!!", "not a valid Hub repo id"),
                                            ("someone-else/x", "can create repos only under")])
def test_push_targets_are_checked_before_compute(hub_server, base, tmp_path, capsys, repo_id, needle):
    assert main(["quantize", str(base), "-o", str(tmp_path / "out"), "--push", "--repo-id", repo_id, *TINY]) == 1
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not hub_server.repos


def test_evaluate_refuses_an_fp32_model_of_other_inputs(tmp_path, capsys):
    save_tiny_model(tmp_path / "rgb", "resnet-basic", channels=3)
    save_tiny_model(tmp_path / "gray", "resnet-basic", channels=1)
    assert main(["evaluate", str(tmp_path / "gray"), "--fp32", str(tmp_path / "rgb"), "--limit", "5"]) == 1
    err = capsys.readouterr().err
    assert "not the same model" in err and "Traceback" not in err


# ---- synthesis on small feature maps ------------------------------------------------------------------------
def test_a_last_batch_of_one_image_joins_the_previous_batch():
    config = GenieConfig.from_profile("quick", num_samples=9, synthesis_batch_size=4)
    assert config.synthesis_batch_sizes() == [4, 5]
    assert GenieConfig.from_profile("quick", num_samples=10, synthesis_batch_size=4).synthesis_batch_sizes() == [4, 4, 2]


def test_a_batch_larger_than_the_set_is_recorded_as_the_set():
    # --num-samples 8 --batch-size 16 runs one batch of 8: recorded so, a rerun with --batch-size 8 is the same run.
    larger = GenieConfig.from_profile("quick", num_samples=8, synthesis_batch_size=16)
    assert larger.synthesis_batch_size == 8 and larger.synthesis_batch_sizes() == [8]
    assert larger.results_dict() == GenieConfig.from_profile("quick", num_samples=8, synthesis_batch_size=8).results_dict()


def test_a_dangling_link_as_the_output_folder_or_its_model_folder_is_named_as_such(tmp_path):
    from genie_hub.outputs import OutputLayout, run_settings

    settings = run_settings("m", None, "synthetic", {})
    (tmp_path / "out").symlink_to(tmp_path / "unmounted")
    with pytest.raises(ConfigError, match="is a link to .*unmounted, which does not exist"):
        OutputLayout(tmp_path / "out").claim(settings)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model").symlink_to(tmp_path / "unmounted" / "model")
    with pytest.raises(ConfigError, match="model is a link to"):
        OutputLayout(tmp_path / "other").claim(settings)
    with pytest.raises(ConfigError, match="out is a link to .*unmounted, which does not exist"):
        OutputLayout(tmp_path / "out" / "sub").claim(settings)  # a parent: before, a bare "File exists"
    assert not (tmp_path / "unmounted").exists()
    (tmp_path / "loop-a").symlink_to(tmp_path / "loop-b")
    (tmp_path / "loop-b").symlink_to(tmp_path / "loop-a")
    layout = OutputLayout(tmp_path / "loop-a")
    with pytest.raises(ConfigError, match="a link loop"):
        layout.claim(settings)
    layout.unlock()  # as the pipeline's `finally` does: before, a RuntimeError hid the message


def test_a_few_shot_run_resumes_whatever_its_synthesis_only_settings(tmp_path):
    """A few-shot run makes no images: its folder and its reconstruction state resume with other synthesis
    settings (library callers can pass them); a zero-shot run with other synthesis settings is another run."""
    from genie_hub.outputs import run_settings, settings_change
    from genie_hub.quantization.reconstruction import ReconstructionState

    first = GenieConfig.from_profile("quick", synthesis_iterations=3, dataset_storage="exact")
    again = GenieConfig.from_profile("quick", synthesis_iterations=9, dataset_storage="fp16")
    photos = str(tmp_path)
    assert settings_change(run_settings("m", None, photos, first.results_dict()),
                           run_settings("m", None, photos, again.results_dict())) is None
    change = settings_change(run_settings("m", None, "synthetic", first.results_dict()),
                             run_settings("m", None, "synthetic", again.results_dict()))
    assert "synthesis_iterations: 3 -> 9" in change
    assert settings_change(run_settings("m", None, photos, first.results_dict()),
                           run_settings("m", None, photos, GenieConfig.from_profile("quick", seed=5).results_dict()))
    from PIL import Image

    for split in ("train", "val"):  # the same images spelled two ways are one source; another split is not
        (tmp_path / "ds" / split).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "ds" / split / "a.png")
    ds = str(tmp_path / "ds")
    assert settings_change(run_settings("m", None, ds, first.results_dict()),
                           run_settings("m", None, f"{ds}/:train", first.results_dict())) is None
    assert settings_change(run_settings("m", None, f"{ds}/val", first.results_dict()),
                           run_settings("m", None, f"{ds}/val:train", first.results_dict())) is None  # no splits
    assert "calibration" in settings_change(run_settings("m", None, ds, first.results_dict()),
                                            run_settings("m", None, f"{ds}:val", first.results_dict()))

    from safetensors.torch import save_file

    state_path = tmp_path / "state.safetensors"  # one finished unit, as `ReconstructionState.record` writes it
    fingerprint = {"config": first.results_dict(), "calibration": [1.0]}
    save_file({"unit.w": torch.zeros(1)}, str(state_path), {"fingerprint": json.dumps(fingerprint, sort_keys=True),
                                                             "finished": '[{"name": "unit"}]', "signed": "{}"})
    assert ReconstructionState(state_path, {"config": again.results_dict(), "calibration": [1.0]}).finished
    with pytest.raises(ConfigError, match="different settings"):
        ReconstructionState(state_path, {"config": first.results_dict(), "calibration": [2.0]})


def test_synthesis_is_finite_on_one_pixel_maps_and_vanishing_activations():
    from transformers import EfficientNetConfig, EfficientNetForImageClassification, ResNetConfig, \
        ResNetForImageClassification

    torch.manual_seed(0)
    resnet = ResNetForImageClassification(ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16],
                                                       depths=[1, 1], num_labels=3, image_size=8)).eval()
    efficientnet = EfficientNetForImageClassification(EfficientNetConfig(
        image_size=32, width_coefficient=0.25, depth_coefficient=0.5, hidden_dim=320, num_labels=5)).eval()
    for model, size, count in ((resnet, 8, 1), (efficientnet, 32, 4)):
        config = GenieConfig.from_profile("quick", num_samples=count, synthesis_batch_size=4, synthesis_iterations=15)
        spec = genie_hub.InputSpec(3, size, size)
        calibration = genie_hub.synthesize(model, config, spec=spec, progress=False)  # a batch of 1 on 1x1 maps
        assert torch.isfinite(calibration.pixel_values).all()


# ---- publishing -------------------------------------------------------------------------------------------
def test_push_verifies_the_checkpoint_before_any_upload(hub_server, tmp_path):
    out = build_output(tmp_path / "out")
    weights = out / "model" / "genie_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    with pytest.raises(PushError, match="does not load as a Genie checkpoint"):
        push_output(out)
    assert not hub_server.repos


def test_push_never_follows_a_symlink_out_of_the_folder(hub_server, tmp_path):
    out = build_output(tmp_path / "out")
    secret = tmp_path / "secret.txt"
    secret.write_text("private key")
    (out / "model" / "notes.txt").symlink_to(secret)
    with pytest.raises(PushError, match="symbolic link"):
        push_output(out)
    assert not any(b"private key" in data for repo in hub_server.repos for data in
                   hub_server.files(repo[1], repo_type=repo[0]).values())


def test_cards_publish_no_local_paths(base, tmp_path):
    out = tmp_path / "runs" / "out"
    assert main(["quantize", str(base), "-o", str(out), *TINY]) == 0
    for card in (out / "model" / "README.md", out / "dataset" / "README.md"):
        text = card.read_text()
        assert str(tmp_path) not in text and "tiny-resnet" in text, card


# ---- the Space ----------------------------------------------------------------------------------------------
def test_space_bounds_images_before_decoding_them(tmp_path):
    import gradio as gr
    from PIL import Image

    from genie_hub.space import load_space_app

    app = load_space_app()
    bomb = tmp_path / "bomb.png"
    Image.new("1", (5000, 5000)).save(bomb)  # a few KB on disk, 25 megapixels decoded
    assert bomb.stat().st_size < 100_000
    with pytest.raises(gr.Error, match="too large"):
        app.check_image(str(bomb))
    ok = tmp_path / "ok.png"
    Image.new("RGB", (64, 48)).save(ok)
    assert app.check_image(str(ok)).size == (64, 48)


def test_space_accepts_hub_ids_only_when_public(tmp_path, monkeypatch):
    from genie_hub.errors import GenieError
    from genie_hub.space import load_space_app

    app = load_space_app()
    monkeypatch.setenv("SPACE_ID", "someone/genie-compare")
    for bad in ("/etc", "../models", str(tmp_path), "a/b/c", "x"):
        with pytest.raises(GenieError, match="Hub model ids only"):
            app.load_cached(bad)
    fp32, quantized = app.default_models()  # the app's own defaults stay usable
    assert app.load_cached(fp32).num_labels == app.load_cached(quantized).num_labels
    # An owner/name that is also a folder relative to the app is not read from disk, and every failure reads the
    # same: which paths exist on the server stays unknown. (HF_HUB_OFFLINE: the Hub lookup fails at once.)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    save_tiny_model(tmp_path / "models" / "rgb", "resnet-basic")
    (tmp_path / "models" / "empty").mkdir()
    messages = set()
    for typed in ("models/rgb", "models/empty", "models/nothere"):
        with pytest.raises(GenieError) as refused:
            app.load_cached(typed)
        messages.add(str(refused.value).replace(typed, "ID"))
    assert len(messages) == 1 and "local" not in messages.pop()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("GENIE_SPACE_ALLOWED_MODELS", "owner/allowed")
    with pytest.raises(GenieError, match="only these models"):
        app.load_cached("owner/other")
    monkeypatch.delenv("SPACE_ID")
    monkeypatch.delenv("GENIE_SPACE_ALLOWED_MODELS")
    with pytest.raises(GenieError, match="does not exist"):
        app.load_cached(str(tmp_path / "missing"))  # locally, folders are fine


def test_a_run_that_failed_before_computing_anything_blocks_nothing(base, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["quantize", str(base), "-o", str(out), "--few-shot", str(tmp_path / "typo"), *TINY]) == 1
    assert "Unknown calibration source" in capsys.readouterr().err and not out.exists()
    from genie_hub.outputs import OutputLayout, run_settings

    OutputLayout(out).claim(run_settings("some/model", None, "synthetic", {"seed": 1}))  # then nothing computed
    assert main(["quantize", str(base), "-o", str(out), *TINY]) == 0  # other settings, but no results to lose


def test_push_refuses_the_format_1_layout(hub_server, tmp_path):
    out = build_output(tmp_path / "out")
    model_dir = out / "model"
    old = Path(__file__).parent / "fixtures" / "format2-resnet-w4a4"  # uint8 zero points, as formats 1-2 stored them
    for name in ("config.json", "genie_model.safetensors", "preprocessor_config.json"):
        shutil.copy(old / name, model_dir / name)
    (model_dir / "genie_model.safetensors").rename(model_dir / "model.safetensors")
    config = json.loads((model_dir / "config.json").read_text())
    config["quantization_config"].update(format_version=1)
    config["quantization_config"].pop("weights_file")
    (model_dir / "config.json").write_text(json.dumps(config))
    assert from_pretrained(model_dir) is not None  # format 1 still loads
    with pytest.raises(PushError, match="format 1"):
        push_output(out)
    assert not hub_server.repos


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


HOLD_LOCK = """
import os, sys, fcntl, time
handle = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(handle, str(os.getpid()).encode())
print("held", flush=True)
time.sleep(60)
"""


def _lock_is_free(lock: Path) -> bool:
    probe = "import fcntl, os, sys; fcntl.flock(os.open(sys.argv[1], os.O_RDWR), fcntl.LOCK_EX | fcntl.LOCK_NB)"
    return subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True).returncode == 0


def test_a_second_run_into_a_folder_in_use_is_refused(base, tmp_path, capsys):
    """Two runs into one folder: the second would rewrite the first's settings and calibrate it on its own images.
    The folder is held (a flock on work/.lock) while a run is going; a killed or finished run holds nothing, and
    what the lock file holds does not matter."""
    out = tmp_path / "out"
    (out / "work").mkdir(parents=True)
    lock = out / "work" / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["quantize", str(base), "-o", str(out), *TINY]) == 2
        assert f"Another genie_hub run (process {holder.pid}) is writing to" in capsys.readouterr().err
        assert not (out / "work" / "settings.json").exists()
    finally:
        holder.kill()
        holder.wait()
    lock.write_bytes(b"\xff\xfe garbage")  # left by a killed run: no flock, so no holder
    assert main(["quantize", str(base), "-o", str(out), *TINY]) == 0
    assert _lock_is_free(lock)  # released when the run returned, also in a long-lived process (a notebook)


def test_overwrite_starts_over_even_on_the_same_settings(base, tmp_path):
    out = tmp_path / "out"
    assert main(["quantize", str(base), "-o", str(out), *TINY]) == 0
    dead = _dead_pid()
    half_written = out / "work" / "synthetic" / f".batch_00009.safetensors.{dead}.tmp"  # a kill -9's leftover
    half_written.write_bytes(b"half")
    assert main(["quantize", str(base), "-o", str(out), *TINY]) == 0  # the same settings: resumes, and sweeps
    assert not half_written.exists()
    (out / "work" / "synthetic" / "stale.txt").write_text("from a run with another model under this path")
    (out / "keep.txt").write_text("not genie_hub's")
    assert main(["quantize", str(base), "-o", str(out), "--overwrite", *TINY]) == 0
    assert not (out / "work" / "synthetic" / "stale.txt").exists() and (out / "keep.txt").exists()
    assert (out / "run.json").exists()


def test_rerunning_a_finished_run_keeps_edited_cards_and_added_files(base, tmp_path):
    out = tmp_path / "out"
    assert main(["quantize", str(base), "-o", str(out), *TINY]) == 0
    rendered = (out / "model" / "README.md").read_text()
    (out / "model" / "README.md").write_text(rendered + "\nMy notes on this model.\n")
    (out / "model" / "notes.txt").write_text("mine")
    (out / "dataset" / "extra").mkdir()
    (out / "dataset" / "extra" / "sample.txt").write_text("mine too")
    dataset_card = (out / "dataset" / "README.md").read_bytes()
    (out / "model" / "model.safetensors").write_bytes(b"stray weights: never kept beside the new ones")
    (out / "dataset" / "data" / "train-extra.parquet").write_bytes(b"would join the dataset: not kept")
    assert main(["quantize", str(base), "-o", str(out), *TINY]) == 0  # the same command again
    assert not (out / "model" / "model.safetensors").exists()
    assert not (out / "dataset" / "data" / "train-extra.parquet").exists()
    assert (out / "model" / "README.md").read_text().endswith("My notes on this model.\n")
    assert (out / "model" / "notes.txt").read_text() == "mine"
    assert (out / "dataset" / "extra" / "sample.txt").read_text() == "mine too"
    assert (out / "dataset" / "README.md").read_bytes() == dataset_card and (out / "model" / "config.json").exists()
    cards = json.loads((out / "run.json").read_text())["cards"]
    assert cards["model"] == hashlib.sha256(rendered.encode()).hexdigest()  # push still sees the edit as the user's
    (out / "model" / "README.md").unlink()
    assert main(["quantize", str(base), "-o", str(out), *TINY]) == 0
    regenerated = (out / "model" / "README.md").read_text()  # asked for again: rendered again
    assert regenerated.startswith("---\n") and "My notes" not in regenerated
    assert json.loads((out / "run.json").read_text())["cards"]["model"] == hashlib.sha256(
        regenerated.encode()).hexdigest()


def test_overwrite_never_deletes_the_model_or_images_it_reads(base, tmp_path, capsys):
    # `-o ./proj --overwrite` on ./proj/model: the folder --overwrite deletes holds the input itself.
    project = tmp_path / "proj"
    shutil.copytree(base, project / "model")
    before = sorted(p.name for p in (project / "model").iterdir())
    for extra in ([], ["--overwrite"]):
        assert main(["quantize", str(project / "model"), "-o", str(project), *extra, *TINY]) == 2
        error = capsys.readouterr().err
        assert "lies inside" in error and "--overwrite to" not in error
        assert sorted(p.name for p in (project / "model").iterdir()) == before
    images = tmp_path / "out" / "dataset" / "photos"  # few-shot images kept in the output's dataset/ folder
    images.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 10, 10)).save(images / "a.png")
    assert main(["quantize", str(base), "-o", str(tmp_path / "out"), "--few-shot", str(images), "--overwrite",
                 *TINY]) == 2
    assert "lies inside" in capsys.readouterr().err and (images / "a.png").exists()
    labelled = tmp_path / "out" / "dataset" / "val" / "LABEL_0"  # an evaluation folder given with :split
    labelled.mkdir(parents=True)
    Image.new("RGB", (40, 40), (10, 200, 10)).save(labelled / "b.png")
    assert main(["quantize", str(base), "-o", str(tmp_path / "out"), "--eval-dataset",
                 f"{labelled.parent}:train", "--eval-unlabelled", "--overwrite", *TINY]) == 2
    assert "lies inside" in capsys.readouterr().err and (labelled / "b.png").exists()
    linked = tmp_path / "linked"  # a folder whose weights link into OUT/work, as a Hub cache snapshot links
    linked.mkdir()
    (tmp_path / "out" / "work").mkdir(parents=True)
    for item in base.iterdir():
        target = tmp_path / "out" / "work" / item.name if item.suffix == ".safetensors" else linked / item.name
        shutil.copy(item, target)
        if target.parent != linked:
            (linked / item.name).symlink_to(target)
    assert main(["quantize", str(linked), "-o", str(tmp_path / "out"), "--overwrite", *TINY]) == 2
    assert "which links inside" in capsys.readouterr().err and (linked / "model.safetensors").resolve().exists()


def test_outputs_nested_in_a_run_a_foreign_model_folder_and_few_shot_beside_a_dataset_are_refused_first(
        base, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["quantize", str(base), "-o", str(out), *TINY]) == 0
    assert main(["quantize", str(base), "-o", str(out / "model" / "x"), *TINY]) == 2  # a rerun of out replaces it
    assert "a folder of the genie_hub run in" in capsys.readouterr().err and not (out / "model" / "x").exists()
    assert main(["quantize", str(base), "-o", str(out / "work"), "--overwrite", *TINY]) == 2  # work/ itself
    assert "is " + str(out / "work") in capsys.readouterr().err and not (out / "work" / "model").exists()
    looped = tmp_path / "looped"  # a stray symlink loop in the model folder: never read, so no reason to fail
    shutil.copytree(base, looped)
    (looped / "loop").symlink_to(looped / "loop")
    assert main(["quantize", str(looped), "-o", str(looped / "q"), *TINY]) == 0
    (tmp_path / "disk").mkdir()  # OUT inside the input folder, its model/ linked to another disk: still fine
    shutil.move(looped / "q" / "model", tmp_path / "disk" / "model")
    (looped / "q" / "model").symlink_to(tmp_path / "disk" / "model")
    assert main(["quantize", str(looped), "-o", str(looped / "q"), *TINY]) == 0
    (out / "model" / "config.json").unlink()  # model/ no longer a checkpoint the save may replace: said up front
    settings = (out / "work" / "settings.json").read_bytes()
    assert main(["quantize", str(base), "-o", str(out), *TINY]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "work" / "settings.json").read_bytes() == settings
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 10, 10)).save(images / "a.png")
    few = tmp_path / "few"
    assert main(["quantize", str(base), "-o", str(few), "--few-shot", str(images), *TINY]) == 0
    (few / "dataset").mkdir()
    (few / "dataset" / "notes.txt").write_text("mine")  # push would publish it as the calibration set
    assert main(["quantize", str(base), "-o", str(few), "--few-shot", str(images), *TINY]) == 2
    assert "few-shot run makes no synthetic images" in capsys.readouterr().err
    assert (few / "dataset" / "notes.txt").read_text() == "mine"


def test_an_output_inside_the_images_it_reads_or_calibration_on_the_evaluation_images_is_refused_first(
        base, tmp_path, capsys):
    """A rerun would read OUT's own files as data; few-shot images that are evaluated flatter the score."""
    from PIL import Image

    images = tmp_path / "images"
    for split in ("train", "val"):
        (images / split).mkdir(parents=True)
        Image.new("RGB", (40, 40), (200, 10, 10)).save(images / split / "a.png")
    for data in (["--few-shot", str(images)], ["--eval-dataset", str(images / "val"), "--eval-unlabelled"]):
        assert main(["quantize", str(base), "-o", str(images / "val" / "out"), *data, *TINY]) == 2
        assert "lies inside" in capsys.readouterr().err and not (images / "val" / "out").exists()
    assert main(["quantize", str(base), "-o", str(tmp_path / "out"), "--few-shot", f"{images}:val",
                 "--eval-dataset", str(images), "--eval-unlabelled", *TINY]) == 1  # a data error, as other few-shot ones
    assert "among the evaluation images" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_tilde_outputs_and_linked_output_folders(base, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["quantize", str(base), "-o", "~/out", *TINY]) == 0  # quoted ~: the home folder, not ./~
    out = tmp_path / "home" / "out"
    assert (out / "run.json").exists() and not (tmp_path / "~").exists()
    disk = tmp_path / "bigdisk"  # model/ and dataset/ moved to another disk and linked back
    disk.mkdir()
    for name in ("model", "dataset"):
        shutil.move(out / name, disk / name)
        (out / name).symlink_to(disk / name)
    (disk / "model" / "onnx").mkdir()
    (disk / "model" / "onnx" / "config.json").write_text("{}")  # a subfolder's config: never read by loading
    (disk / "model" / "empty").mkdir()
    assert main(["quantize", str(base), "-o", str(out), *TINY]) == 0
    assert (out / "model").is_symlink() and (out / "dataset").is_symlink()
    assert (disk / "model" / "onnx" / "config.json").read_text() == "{}" and (disk / "model" / "empty").is_dir()
    assert (disk / "model" / "genie_model.safetensors").exists()
    assert not [p for p in (*out.iterdir(), *tmp_path.iterdir(), *disk.iterdir()) if p.name.endswith(".old")]
    (disk / "model" / "user.safetensors").write_text("weights beside the checkpoint: not kept, and said so")
    assert main(["quantize", str(base), "-o", str(out), *TINY]) == 0
    assert not (disk / "model" / "user.safetensors").exists() and "user.safetensors" in caplog.text
    assert main(["quantize", str(base), "-o", str(out), "--overwrite", *TINY]) == 0  # starts over where they point
    assert (out / "model").is_symlink() and (disk / "model" / "genie_model.safetensors").exists()
    assert not (disk / "model" / "onnx").exists()


def test_a_quantized_model_as_input_is_refused_before_synthesis(checkpoint, tmp_path, capsys, monkeypatch):
    import genie_hub.synthesis

    def no_synthesis(*args, **kwargs):
        raise AssertionError("synthesis started on a model that cannot be quantized")

    monkeypatch.setattr(genie_hub.synthesis, "synthesize", no_synthesis)
    assert main(["quantize", str(checkpoint), "-o", str(tmp_path / "again"), *TINY]) == 2
    assert "already quantized" in capsys.readouterr().err and not (tmp_path / "again").exists()


def test_what_killed_runs_leave_is_recovered_or_removed(tmp_path):
    """A run killed between replace_dir's two renames leaves the old folder under a hidden name: put back when
    nothing took its place, removed when something did; a killed process's staging folder is removed too."""
    from genie_hub.fileio import recover_interrupted_swaps, staging_dir

    dead = _dead_pid()
    (tmp_path / f".dataset.{dead}.old").mkdir()
    (tmp_path / f".dataset.{dead}.old" / "README.md").write_text("card")
    (tmp_path / "model").mkdir()
    (tmp_path / f".model.{dead}.old").mkdir()
    (tmp_path / f".notes.{dead}.old").mkdir()  # not genie_hub's: left alone
    (tmp_path / f".model.{10 ** 20}.old").mkdir()  # no process id is that large: a leftover, not an OverflowError
    recover_interrupted_swaps(tmp_path, ("model", "dataset"))
    assert (tmp_path / "dataset" / "README.md").read_text() == "card"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".notes.{dead}.old", "dataset", "model"]

    (tmp_path / f".model.staging.{dead}").mkdir()
    with staging_dir(tmp_path / ".model.staging") as staging:
        assert staging.name == f".model.staging.{os.getpid()}"  # per process: two savers never share one
        assert not (tmp_path / f".model.staging.{dead}").exists()


def test_a_refused_folder_gets_no_lock_and_nothing_else(base, tmp_path, capsys):
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "thesis.txt").write_text("mine")
    assert main(["quantize", str(base), "-o", str(folder), *TINY]) == 2
    assert "is not empty and is not a genie_hub output folder" in capsys.readouterr().err
    assert [p.name for p in folder.iterdir()] == ["thesis.txt"]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_model_with_non_finite_weights_is_refused_where_it_is_loaded(base, tmp_path, capsys, value):
    """Its logits are NaN or inf: `evaluate` scored them as 22 % top-1, the Space reported "both models agree",
    and quantize blamed the settings for a divergence after synthesis (helper-31)."""
    from safetensors.torch import load_file, save_file

    from genie_hub import load_model
    from genie_hub.errors import ModelLoadError

    damaged = tmp_path / "damaged"
    shutil.copytree(base, damaged)
    tensors = load_file(damaged / "model.safetensors")
    tensors["classifier.1.weight"][0, 0] = value
    save_file(tensors, damaged / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="'classifier.1.weight' holds 1 NaN or infinite value"):
        load_model(str(damaged))
    assert main(["quantize", str(damaged), "-o", str(tmp_path / "out"), "--profile", "quick", "-q",
                 "--eval-dataset", "none"]) == 1
    assert "classifier.1.weight" in capsys.readouterr().err and not (tmp_path / "out").exists()
    model = tiny_model("resnet-basic")
    with torch.no_grad():
        model.classifier[1].bias[0] = value
    with pytest.raises(ModelLoadError, match="model given to quantize\\(\\): its weight 'classifier.1.bias'"):
        quantize(model, structured_images(4, 3, torch.Generator().manual_seed(0)), GenieConfig.from_profile("quick"))
