"""Quantized checkpoints: packed safetensors layout, exact round trips through transformers, the load guard
without genie_hub, corrupted files, dequantize."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (AutoModelForImageClassification, EfficientNetConfig, EfficientNetForImageClassification,
                          MobileNetV2Config, MobileNetV2ForImageClassification, RegNetConfig,
                          RegNetForImageClassification, ResNetConfig, ResNetForImageClassification, ViTImageProcessor,
                          pipeline)
from transformers.pipelines.image_classification import softmax

from genie_hub.checkpoint import (GenieQuantizationConfig, from_pretrained, is_registered, register, save_quantized,
                                  verify_checkpoint)
from genie_hub.checkpoint.config import FORMAT_VERSION, GUARD_KEY, is_guard
from genie_hub.config import GenieConfig
from genie_hub.errors import CheckpointError, ModelLoadError
from genie_hub import quantize
from genie_hub.adapters import model_logits
from genie_hub.quantization import QuantizedOp, quantized_ops
from helpers_output import edit_weights

PACKED = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape")


def tiny_resnet(seed: int = 0) -> ResNetForImageClassification:
    torch.manual_seed(seed)
    return ResNetForImageClassification(ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=5,
        image_size=32)).eval()


def quantized(model, weight_bits: int, act_bits: int, steps: int = 5, range_init: str = "lp", n: int = 32,
              size: int = 32):
    torch.manual_seed(1)
    calibration = torch.randn(n, model.config.num_channels, size, size)
    config = GenieConfig.from_profile("quick", weight_bits=weight_bits, act_bits=act_bits,
                                      reconstruction_steps=steps, reconstruction_batch_size=8)
    return quantize(model, calibration, config, range_init=range_init, progress=False)


def logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=x).logits


def layer_dicts(result) -> dict[str, dict]:
    return {name: spec.to_dict() for name, spec in result.layers.items()}


def loaded_layers(model) -> dict[str, dict]:
    return model.config.quantization_config.to_dict()["layers"]


def processor() -> ViTImageProcessor:
    return ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5, 0.5, 0.5], image_std=[0.25] * 3)


def sample_image() -> Image.Image:
    return Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 48, 3), dtype=np.uint8))


@pytest.fixture(scope="module", autouse=True)
def registered():
    register()
    register()  # idempotent
    assert is_registered()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's spin-waiting
    made this module 6x slower (85 s instead of 12 s); restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def fp_model():
    return tiny_resnet()


@pytest.fixture(scope="module")
def w4(fp_model, tmp_path_factory):
    """(in-memory W4A4 model, its saved folder)."""
    q = quantized(fp_model, 4, 4)
    folder = save_quantized(q, tmp_path_factory.mktemp("w4") / "ckpt", processor=processor())
    return q, folder


def copy_checkpoint(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


# ---- format -----------------------------------------------------------------------------------------------
def test_saved_layout(w4):
    q, folder = w4
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "genie_model.safetensors", "preprocessor_config.json"]
    tensors = load_file(folder / "genie_model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    block = config["quantization_config"]
    assert block["quant_method"] == "genie" and block["format"] == "genie-packed" and block["format_version"] == FORMAT_VERSION
    assert block["weights_file"] == "genie_model.safetensors"
    assert (block["weight_bits"], block["act_bits"]) == (4, 4)
    assert block["layers"] == layer_dicts(q) and block["genie_config"]["weight_bits"] == 4
    assert is_guard(config[GUARD_KEY])
    for name, spec in block["layers"].items():
        assert f"{name}.weight" not in tensors  # never an FP copy or codes under `weight`
        if spec["type"] == "QuantShortcut":
            assert f"{name}.input_scale" in tensors and f"{name}.weight_packed" not in tensors
            continue
        op = q.model.get_submodule(name)
        assert tensors[f"{name}.weight_packed"].dtype == torch.int32
        assert tensors[f"{name}.weight_zero_point"].dtype == torch.int32
        assert tensors[f"{name}.weight_shape"].tolist() == list(op.weight_shape_tuple)
        assert torch.equal(tensors[f"{name}.weight_packed"], op.weight_packed)
        assert (f"{name}.input_scale" in tensors) == (spec["act_bits"] is not None)
    assert not any(k.endswith(".weight") and k.rsplit(".", 1)[0] in block["layers"] for k in tensors)
    assert "resnet.embedder.embedder.normalization.running_var" in tensors  # BN kept as is
    # The config block round-trips, and transformers maps quant_method "genie" to our class.
    from transformers.quantizers.auto import AutoQuantizationConfig

    parsed = AutoQuantizationConfig.from_dict(block)
    assert isinstance(parsed, GenieQuantizationConfig) and parsed.to_dict() == block
    assert verify_checkpoint(folder).to_dict() == block


def test_quantization_config_validation():
    good = {"layers": {"fc": {"type": "QuantLinear", "weight_bits": 4, "act_bits": 8, "act_signed": False}}}
    assert GenieQuantizationConfig.from_dict(good).layers["fc"].weight_bits == 4
    bad_layers = [
        {"fc": {"type": "QuantLinear", "weight_bits": 9, "act_bits": 8, "act_signed": False}},
        {"fc": {"type": "Conv3d", "weight_bits": 4, "act_bits": 8, "act_signed": False}},
        {"fc": {"type": "QuantLinear", "weight_bits": 4, "act_bits": 8, "act_signed": None}},
        {"fc": {"type": "QuantShortcut", "weight_bits": 4, "act_bits": 8, "act_signed": False}},
        {},
    ]
    for layers in bad_layers:
        with pytest.raises(CheckpointError):
            GenieQuantizationConfig.from_dict({"layers": layers})
    with pytest.raises(CheckpointError, match="Upgrade genie_hub"):
        GenieQuantizationConfig.from_dict({**good, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(CheckpointError):
        GenieQuantizationConfig.from_dict({**good, "format": "compressed-tensors"})
    # The headline bits (shown by the Space and `evaluate`) must be the ones the run was made with.
    made = {**good, "weight_bits": 4, "act_bits": 8, "genie_config": {"weight_bits": 4, "act_bits": 8}}
    assert GenieQuantizationConfig.from_dict(made).weight_bits == 4
    with pytest.raises(CheckpointError, match="weight_bits is 2, but the genie_config it was made with records 4"):
        GenieQuantizationConfig.from_dict({**made, "weight_bits": 2})
    # ... and bits some layer has: both fields edited to 2 over W4 layers loaded, labelled W2 (helper-31). First
    # and last layers alone may differ (W8 by default), and overrides may move every other layer.
    layer = {"type": "QuantLinear", "weight_bits": 4, "act_bits": 8, "act_signed": False}
    four = {"first": {**layer, "weight_bits": 8}, **{f"mid{i}": layer for i in range(3)},
            "last": {**layer, "weight_bits": 8}}
    edited = {"layers": four, "weight_bits": 2, "act_bits": 8, "genie_config": {"weight_bits": 2, "act_bits": 8}}
    with pytest.raises(CheckpointError, match="weight_bits is 2, but no layer has 2-bit weights \\(they have 4, 8\\)"):
        GenieQuantizationConfig.from_dict(edited)
    assert GenieQuantizationConfig.from_dict({**edited, "weight_bits": 4, "genie_config": {"weight_bits": 4}})
    assert GenieQuantizationConfig.from_dict({**edited, "overrides": {"mid*": {"weight": 4}}}).weight_bits == 2
    # The same for the activation bits: A8 layers relabelled A4.
    relabelled = {"layers": four, "weight_bits": 4, "act_bits": 4, "genie_config": {"weight_bits": 4, "act_bits": 4}}
    with pytest.raises(CheckpointError, match="act_bits is 4, but no layer has 4-bit inputs \\(they have 8\\)"):
        GenieQuantizationConfig.from_dict(relabelled)
    assert GenieQuantizationConfig.from_dict({**relabelled, "overrides": {"mid*": {"act": 8}}}).act_bits == 4


def test_a_format_2_checkpoint_loads_and_resaves_in_the_current_format(tmp_path):
    # A checkpoint genie_hub wrote in format 2 (uint8 zero points) still loads, exactly, and saving the loaded
    # model writes the current format (int32 zero points) with the same values.
    old = Path(__file__).parent / "fixtures" / "format2-resnet-w4a4"
    assert json.loads((old / "config.json").read_text())["quantization_config"]["format_version"] == 2
    stored = load_file(old / "genie_model.safetensors")
    assert stored["resnet.encoder.stages.0.layers.0.layer.0.convolution.weight_zero_point"].dtype == torch.uint8
    model = from_pretrained(old)
    ops = quantized_ops(model)
    assert ops and all(op.weight_zero_point.dtype == torch.int32 for op in ops.values() if op.has_weight)
    name = next(n for n, op in ops.items() if op.has_weight)
    assert torch.equal(ops[name].weight_zero_point, stored[f"{name}.weight_zero_point"].to(torch.int32))
    x = torch.randn(2, 1, 28, 28)
    save_quantized(model, tmp_path / "v3")
    assert json.loads((tmp_path / "v3" / "config.json").read_text())["quantization_config"]["format_version"] == FORMAT_VERSION
    resaved = from_pretrained(tmp_path / "v3")
    assert torch.equal(model_logits(model, x), model_logits(resaved, x))


# ---- exact round trips --------------------------------------------------------------------------------------
@pytest.mark.parametrize("weight_bits,act_bits", [(2, 4), (3, 4), (4, 4), (8, 8)])
def test_round_trip_exact(fp_model, w4, weight_bits, act_bits, tmp_path):
    q, folder = w4 if (weight_bits, act_bits) == (4, 4) else (None, None)
    if q is None:
        q = quantized(fp_model, weight_bits, act_bits)
        folder = save_quantized(q, tmp_path / "ckpt", processor=processor())
    assert {s.weight_bits for s in q.layers.values()} >= {weight_bits}
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    reference = logits(q.model, x)

    loaded = AutoModelForImageClassification.from_pretrained(folder)
    assert type(loaded).__name__ == "ResNetForImageClassification" and not loaded.training
    assert type(loaded.hf_quantizer).__name__ == "GenieHfQuantizer"
    out = logits(loaded, x)
    assert torch.equal(out, reference), f"max abs diff {(out - reference).abs().max()}"
    assert loaded_layers(loaded) == layer_dicts(q)

    pipe = pipeline("image-classification", model=str(folder))
    image = sample_image()
    pixel_values = pipe.image_processor(images=image, return_tensors="pt")["pixel_values"]
    expected = softmax(logits(q.model, pixel_values)[0].numpy())
    results = pipe(image)
    assert len(results) == 5
    for result in results:
        assert result["score"] == float(expected[q.model.config.label2id[result["label"]]])


def _kaiming(model):
    # transformers' default init (std 0.02) makes a random EfficientNet's activations vanish (~1e-40) within a few
    # blocks; a fan-in init keeps them in a normal range.
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model.eval()


@pytest.mark.parametrize("arch", ["regnet", "mobilenet_v2", "efficientnet"])
def test_round_trip_other_architectures(arch, tmp_path):
    torch.manual_seed(0)
    if arch == "regnet":
        model = RegNetForImageClassification(RegNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16],
                                                          depths=[1, 1], groups_width=8, num_labels=5)).eval()
    elif arch == "mobilenet_v2":
        model = MobileNetV2ForImageClassification(MobileNetV2Config(num_channels=3, image_size=32,
                                                                    depth_multiplier=0.25, num_labels=5)).eval()
    else:
        model = _kaiming(EfficientNetForImageClassification(EfficientNetConfig(
            num_channels=3, image_size=32, width_coefficient=0.25, depth_coefficient=0.5, hidden_dim=320,
            num_labels=5)))
    size = 32 if arch == "efficientnet" else 16  # EfficientNet's 5x5 kernels need >= 32 px
    q = quantized(model, 4, 4, steps=0, range_init="minmax", n=4, size=size)
    folder = save_quantized(q, tmp_path / arch)
    loaded = from_pretrained(folder)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    assert torch.equal(logits(loaded, x), logits(q.model, x))
    assert loaded_layers(loaded) == layer_dicts(q)


# ---- size ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("embedding,hidden,max_ratio", [
    (64, [128, 256, 512], 1 / 6),  # rows of 64..1152 weights, like ResNet-50's 64..4608: packed weights dominate
    (32, [64, 128, 256], 1 / 4.5),  # rows of 64..576 weights: BN, scales and the header weigh relatively more
])
def test_file_size(embedding, hidden, max_ratio, tmp_path):
    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig(num_channels=3, embedding_size=embedding, hidden_sizes=hidden,
                                                      depths=[1] * len(hidden), num_labels=10, image_size=32)).eval()
    model.save_pretrained(tmp_path / "fp32")
    sizes = {"fp32": (tmp_path / "fp32" / "model.safetensors").stat().st_size}
    for bits in (4, 2):
        q = quantized(model, bits, 4, steps=0, range_init="minmax", n=4)
        sizes[f"w{bits}"] = (save_quantized(q, tmp_path / f"w{bits}") / "genie_model.safetensors").stat().st_size
    print(f"\nResNet embedding={embedding} hidden={hidden}: model.safetensors bytes {sizes}; fp32/w4 = "
          f"{sizes['fp32'] / sizes['w4']:.2f}, fp32/w2 = {sizes['fp32'] / sizes['w2']:.2f}")
    assert sizes["w4"] <= sizes["fp32"] * max_ratio
    assert sizes["w2"] < sizes["w4"] * 0.8


# ---- dequantize -----------------------------------------------------------------------------------------------
def test_dequantize(fp_model, w4):
    q, folder = w4
    loaded = AutoModelForImageClassification.from_pretrained(folder)
    plain = loaded.dequantize()
    assert plain is loaded  # in place (transformers' dequantize), as the README and the card say
    assert not any(isinstance(m, QuantizedOp) for m in plain.modules())
    assert getattr(plain, "hf_quantizer", None) is None and getattr(plain.config, "quantization_config", None) is None
    assert "save_pretrained" not in plain.__dict__  # the save guard is gone with the quantization
    reference = copy.deepcopy(fp_model)
    for name, spec in q.layers.items():
        if not spec.has_weight:
            assert isinstance(plain.get_submodule(name), torch.nn.Identity)
            continue
        op, fp = q.model.get_submodule(name), plain.get_submodule(name)
        assert type(fp) in (torch.nn.Conv2d, torch.nn.Linear) and fp.weight.dtype == torch.float32
        assert torch.equal(fp.weight, op.quantized_weight())
        with torch.no_grad():
            reference.get_submodule(name).weight.copy_(op.quantized_weight())
    # Dequantized = the FP network with the dequantized weights and no activation quantization.
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    assert torch.equal(logits(plain, x), logits(reference, x))


def test_resave_keeps_guard_and_format(w4, tmp_path):
    q, folder = w4
    loaded = from_pretrained(folder)
    loaded.save_pretrained(tmp_path / "resaved")
    config = json.loads((tmp_path / "resaved" / "config.json").read_text())
    assert is_guard(config[GUARD_KEY]) and config["quantization_config"]["layers"] == layer_dicts(q)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(logits(from_pretrained(tmp_path / "resaved"), x), logits(q.model, x))
    # A deep copy's save goes through the copy, and the in-memory model saves the same format too.
    copy.deepcopy(q.model).save_pretrained(tmp_path / "copy")
    assert is_guard(json.loads((tmp_path / "copy" / "config.json").read_text())[GUARD_KEY])


def test_refuses_fp_checkpoint_and_quantize_on_load(fp_model, tmp_path):
    fp_model.save_pretrained(tmp_path / "fp")
    with pytest.raises(CheckpointError, match="not a Genie checkpoint"):
        from_pretrained(tmp_path / "fp")
    layers = {"classifier.1": {"type": "QuantLinear", "weight_bits": 4, "act_bits": 8, "act_signed": False}}
    with pytest.raises(ValueError, match="pre-quantized"):  # requires_calibration: no quantize-on-load
        AutoModelForImageClassification.from_pretrained(
            tmp_path / "fp", quantization_config=GenieQuantizationConfig(layers=layers))


def test_hub_round_trip(hub_server, w4):
    """Upload to the loopback Hub (tests/hub_server.py), load by repo id; push_to_hub keeps the guard."""
    from huggingface_hub import HfApi

    q, folder = w4
    api = HfApi()
    api.create_repo("tester/genie-w4a4")
    api.upload_folder(folder_path=str(folder), repo_id="tester/genie-w4a4")
    loaded = from_pretrained("tester/genie-w4a4")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(logits(loaded, x), logits(q.model, x))
    loaded.push_to_hub("tester/genie-w4a4-again")
    remote = hub_server.files("tester/genie-w4a4-again")
    assert is_guard(json.loads(remote["config.json"])[GUARD_KEY])
    assert remote["genie_model.safetensors"] == (folder / "genie_model.safetensors").read_bytes()
    assert "model.safetensors" not in remote


def test_refuses_to_save_nan_scales(w4, tmp_path):
    broken = copy.deepcopy(w4[0].model)
    broken.get_submodule(CONV).input_scale.fill_(float("nan"))
    with pytest.raises(CheckpointError, match="NaN"):
        save_quantized(broken, tmp_path / "nan")
    with pytest.raises(CheckpointError, match="no Genie-quantized layers"):
        save_quantized(tiny_resnet(), tmp_path / "fp")


# ---- without genie_hub ----------------------------------------------------------------------------------------
PLAIN_SCRIPT = textwrap.dedent("""
    import json, sys
    from transformers import AutoModelForImageClassification, ResNetForImageClassification, pipeline
    results = {}
    for folder in sys.argv[1:]:
        for api, load in (("auto", lambda: AutoModelForImageClassification.from_pretrained(folder)),
                          ("class", lambda: ResNetForImageClassification.from_pretrained(folder)),
                          ("pipeline", lambda: pipeline("image-classification", model=folder))):
            try:
                load()
                results[f"{folder}:{api}"] = "LOADED"
            except Exception as exc:
                results[f"{folder}:{api}"] = f"{type(exc).__name__}: {exc}"
    results["genie_hub_imported"] = any(m.split(".")[0] == "genie_hub" for m in sys.modules)
    print("RESULTS" + json.dumps(results))
""")


def test_without_genie_hub_fails_loudly(w4, tmp_path):
    """In a process that never imports genie_hub, transformers must refuse the checkpoint (never random weights)."""
    q, folder = w4
    resaved = tmp_path / "resaved"
    from_pretrained(folder).save_pretrained(resaved)
    env = dict(os.environ, PYTHONPATH="", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", PLAIN_SCRIPT, str(folder), str(resaved)], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.split("RESULTS", 1)[1])
    assert results.pop("genie_hub_imported") is False
    assert len(results) == 6
    for key, outcome in results.items():
        assert outcome != "LOADED", key
        assert outcome.startswith("ValueError") and "pip install genie_hub" in outcome \
            and "import genie_hub" in outcome, (key, outcome[:500])


# ---- corrupted / inconsistent checkpoints ----------------------------------------------------------------------
def _edit_config(folder: Path, edit) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def _assert_refused(folder: Path, *needles: str) -> None:
    """Both entry points refuse: genie_hub's from_pretrained and plain transformers with genie registered."""
    for load in (from_pretrained, AutoModelForImageClassification.from_pretrained):
        with pytest.raises(CheckpointError) as info:
            load(folder)
        message = str(info.value)
        assert "\n" not in message.strip()
        for needle in needles:
            assert needle in message, (load.__name__, message)


CONV = "resnet.encoder.stages.0.layers.0.layer.1.convolution"


def test_truncated_file(w4, tmp_path):
    folder = copy_checkpoint(w4[1], tmp_path)
    data = (folder / "genie_model.safetensors").read_bytes()
    (folder / "genie_model.safetensors").write_bytes(data[:-100])
    _assert_refused(folder, str(folder / "genie_model.safetensors"), "truncated")
    (folder / "genie_model.safetensors").write_bytes(data[:5])
    _assert_refused(folder, "genie_model.safetensors", "not a valid safetensors file")


def test_weights_that_are_a_device_or_a_folder_are_named_as_not_a_file(w4, tmp_path):
    folder = copy_checkpoint(w4[1], tmp_path)
    weights = folder / "genie_model.safetensors"
    weights.unlink()
    weights.symlink_to("/dev/zero")  # no size, endless zero bytes: before, "claims 0 bytes but has 0 bytes"
    _assert_refused(folder, str(weights), "not a regular file")
    weights.unlink()
    weights.mkdir()
    _assert_refused(folder, str(weights), "not a regular file")
    from genie_hub.errors import ModelLoadError
    from genie_hub.loading import load_model
    from tiny_models import save_tiny_model

    plain = tmp_path / "plain"  # a full-precision folder: transformers' "no file named" is explained
    save_tiny_model(plain, "resnet-basic")
    (plain / "model.safetensors").unlink()
    (plain / "model.safetensors").symlink_to("/dev/zero")
    with pytest.raises(ModelLoadError, match="model.safetensors is not a regular file"):
        load_model(plain)


def test_garbage_file(w4, tmp_path):
    folder = copy_checkpoint(w4[1], tmp_path)
    (folder / "genie_model.safetensors").write_bytes(np.random.RandomState(0).bytes(4096))
    _assert_refused(folder, str(folder / "genie_model.safetensors"), "not a valid safetensors file")
    good = (w4[1] / "genie_model.safetensors").read_bytes()  # header intact, garbage after the data
    (folder / "genie_model.safetensors").write_bytes(good + b"\x00" * 16)
    _assert_refused(folder, "trailing bytes")


def test_layer_missing_from_weights(w4, tmp_path):
    folder = copy_checkpoint(w4[1], tmp_path)
    edit_weights(folder, lambda t: [t.pop(f"{CONV}.{s}") for s in PACKED])
    _assert_refused(folder, f"{CONV}.weight_packed")


def test_layer_missing_from_model(w4, tmp_path):
    folder = copy_checkpoint(w4[1], tmp_path)
    ghost = "resnet.encoder.stages.0.layers.0.ghost"
    _edit_config(folder, lambda c: c["quantization_config"]["layers"].__setitem__(
        ghost, {"type": "QuantConv2d", "weight_bits": 4, "act_bits": 4, "act_signed": False}))
    _assert_refused(folder, ghost)


def test_wrong_packed_shape(w4, tmp_path):
    folder = copy_checkpoint(w4[1], tmp_path)
    key = f"{CONV}.weight_packed"
    edit_weights(folder, lambda t: t.__setitem__(key, t[key][:, :-1].contiguous()))
    _assert_refused(folder, f"{CONV}.weight_packed")
    # Same tensors, but the config claims other bits for that layer: the packed width no longer fits.
    folder = copy_checkpoint(w4[1], tmp_path / "bits")
    _edit_config(folder, lambda c: c["quantization_config"]["layers"][CONV].__setitem__("weight_bits", 3))
    _assert_refused(folder, f"{CONV}.weight_packed")


def test_wrong_weight_shape_values(w4, tmp_path):
    folder = copy_checkpoint(w4[1], tmp_path)
    edit_weights(folder, lambda t: t[f"{CONV}.weight_shape"].mul_(torch.tensor([1, 2, 1, 1])))
    _assert_refused(folder, f"{CONV}.weight_")


@pytest.mark.parametrize("edit,key", [
    (lambda t: t[f"{CONV}.weight_scale"].neg_(), f"{CONV}.weight_scale has values <= 0"),
    (lambda t: t[f"{CONV}.weight_zero_point"].fill_(2 ** 25), f"{CONV}.weight_zero_point exceeds"),
    (lambda t: t["resnet.embedder.embedder.normalization.weight"].fill_(float("nan")),
     "resnet.embedder.embedder.normalization.weight has non-finite values"),
    (lambda t: t["resnet.embedder.embedder.normalization.running_var"].fill_(-1.0),
     "resnet.embedder.embedder.normalization.running_var is negative"),
])
def test_values_no_saved_model_holds_are_refused_by_verify_checkpoint_as_by_the_loaders(w4, tmp_path, edit, key):
    folder = copy_checkpoint(w4[1], tmp_path)
    edit_weights(folder, edit)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        verify_checkpoint(folder)
    _assert_refused(folder, key.split(" ")[0])


def test_extra_files_are_written_into_the_checkpoint_folder_only(w4, tmp_path):
    for name in ("../escaped.txt", str(tmp_path / "abs.txt"), "sub/f.txt", ".."):
        with pytest.raises(CheckpointError, match="not a plain file name"):
            save_quantized(w4[0], tmp_path / "ckpt", extra_files={name: b"x"})
    with pytest.raises(CheckpointError, match="pass bytes"):
        save_quantized(w4[0], tmp_path / "ckpt", extra_files={"README.md": "text"})
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, inside or out


def test_a_missing_weights_file_is_named_as_missing(w4, tmp_path):
    folder = copy_checkpoint(w4[1], tmp_path)
    (folder / "genie_model.safetensors").unlink()
    _assert_refused(folder, "has no genie_model.safetensors")


def test_from_pretrained_takes_transformers_subfolder_and_output_loading_info(w4, tmp_path):
    shutil.copytree(w4[1], tmp_path / "repo" / "quantized")
    x = torch.randn(2, 3, 32, 32)
    expected = logits(w4[0].model, x)
    assert torch.equal(logits(from_pretrained(tmp_path / "repo", subfolder="quantized"), x), expected)
    model, info = from_pretrained(w4[1], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and torch.equal(logits(model, x), expected)


def test_an_in_place_edit_of_the_read_only_weight_is_not_kept(w4):
    """`.weight` is computed from the stored codes: an edit of it must not make the model compute something
    other than what it saves."""
    model = from_pretrained(w4[1])
    x = torch.randn(2, 3, 32, 32)
    before = logits(model, x)
    with torch.no_grad():
        model.get_submodule(CONV).weight.clamp_(-0.01, 0.01)
    assert torch.equal(logits(model, x), before)
    with torch.inference_mode():  # an inference tensor has no version to notice the edit by
        model.get_submodule(CONV).weight.mul_(0)
        assert torch.equal(logits(model, x), before)


def test_a_forward_under_inference_mode_does_not_break_a_later_one_autograd_tracks(w4):
    """The dequantized weight is cached; one made under torch.inference_mode cannot enter autograd's graph (a
    pipeline's inference, then a saliency map or fine-tuning of the head)."""
    model = from_pretrained(w4[1])
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        first = model(pixel_values=x).logits
    x.requires_grad_(True)
    tracked = model(pixel_values=x).logits
    tracked.sum().backward()
    assert x.grad is not None and torch.equal(tracked.detach(), first)
    with torch.inference_mode():
        assert torch.equal(model(pixel_values=x.detach()).logits, first)


def test_a_vit_loaded_in_half_precision_runs_in_it(tmp_path):
    """transformers' ViT casts pixel_values to its patch projection's `weight.dtype` before bf16 LayerNorms."""
    from tiny_models import IMAGE_SIZE, tiny_model

    model = tiny_model("vit")
    result = quantize(model, torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE),
                      GenieConfig.from_profile("quick", reconstruction_steps=0), progress=False)
    folder = save_quantized(result, tmp_path / "vit", processor=processor())
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    reference = logits(from_pretrained(folder), x)
    for dtype in (torch.bfloat16, torch.float16):
        half = from_pretrained(folder, dtype=dtype)
        out = logits(half, x.to(dtype))
        assert out.dtype == dtype and torch.allclose(out.float(), reference, atol=0.2, rtol=0.05)


def test_bad_config_json(w4, tmp_path):
    folder = copy_checkpoint(w4[1], tmp_path)
    (folder / "config.json").write_text('{"model_type": "resnet", ')
    with pytest.raises(CheckpointError, match="config.json"):
        from_pretrained(folder)


class _Payload:
    """Unpickling this runs code: it creates the marker file. A refused .bin never creates it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_weights_are_never_loaded(w4, tmp_path):
    marker = tmp_path / "UNPICKLED"
    only_bin = tmp_path / "only_bin"
    only_bin.mkdir()
    with open(only_bin / "pytorch_model.bin", "wb") as handle:
        pickle.dump(_Payload(marker), handle)
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        from_pretrained(only_bin)
    # With a genuine Genie config.json next to the pickle, neither entry point unpickles it either.
    with_config = tmp_path / "with_config"
    with_config.mkdir()
    shutil.copy(w4[1] / "config.json", with_config / "config.json")
    shutil.copy(only_bin / "pytorch_model.bin", with_config / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        from_pretrained(with_config)
    with pytest.raises(CheckpointError, match="genie_model.safetensors"):
        AutoModelForImageClassification.from_pretrained(with_config)
    with pytest.raises(CheckpointError, match="use_safetensors=False"):
        from_pretrained(w4[1], use_safetensors=False)
    # A pickle or a torch.save zip renamed to the Genie weights' name is named for what it is, and not opened.
    for kind, write in (("pickle", lambda f: pickle.dump(_Payload(marker), f)),
                        ("zip", lambda f: torch.save({"x": _Payload(marker)}, f))):
        renamed = tmp_path / f"renamed_{kind}"
        shutil.copytree(w4[1], renamed)
        with open(renamed / "genie_model.safetensors", "wb") as handle:
            write(handle)
        for load in (from_pretrained, AutoModelForImageClassification.from_pretrained):
            with pytest.raises(CheckpointError, match="starts like a torch.save \\(zip\\) or pickle file"):
                load(renamed)
    assert not marker.exists()


def test_missing_model_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError):
        from_pretrained("genie-org/does-not-exist-anywhere")


def test_sharded_checkpoint_round_trip(w4, tmp_path):
    q, _ = w4
    folder = save_quantized(q, tmp_path / "sharded", max_shard_size="4KB")
    names = sorted(p.name for p in folder.iterdir())
    assert "genie_model.safetensors.index.json" in names and "model.safetensors.index.json" not in names
    assert sum(name.endswith(".safetensors") for name in names) > 1
    assert verify_checkpoint(folder).weights_file == "genie_model.safetensors.index.json"
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert torch.equal(logits(from_pretrained(folder), x), logits(q.model, x))
    assert torch.equal(logits(AutoModelForImageClassification.from_pretrained(folder), x), logits(q.model, x))


def test_resaving_over_a_sharded_save_leaves_no_stale_shards(w4, tmp_path):
    model = from_pretrained(w4[1])
    folder = tmp_path / "resaved"
    model.save_pretrained(folder, max_shard_size="3KB")
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 1
    model.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "genie_model.safetensors"]


# ---- the transformers integration: public hooks, compile, version ----------------------------------------
def test_torch_compile_of_a_loaded_model_gives_identical_logits(w4):
    _, folder = w4
    loaded = AutoModelForImageClassification.from_pretrained(folder)
    assert loaded.hf_quantizer.is_compileable
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    compiled = torch.compile(loaded)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert torch.equal(logits(compiled, x), logits(loaded, x))
    # One graph: the weights are dequantized inside it. The eager path's weight cache, guarded per layer, broke
    # the graph at every layer and hit dynamo's recompile limit (helper-30).
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.utils.counters["graph_break"]


def test_unsupported_transformers_major_version_is_refused(w4, monkeypatch):
    import transformers

    from genie_hub.errors import GenieError

    _, folder = w4
    monkeypatch.setattr(transformers, "__version__", "6.0.0")
    with pytest.raises(GenieError, match=r"transformers>=5,<6"):
        AutoModelForImageClassification.from_pretrained(folder)


TRANSFORMERS_5_17 = Path(__file__).resolve().parents[1] / ".ci" / "transformers-5.17"
_LOAD_WITH_5_17 = textwrap.dedent('''
    import sys, torch, transformers, genie_hub
    from transformers import AutoModelForImageClassification, pipeline
    folder, pixels, out = sys.argv[1:4]
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(pixel_values=torch.load(pixels)).logits
    torch.save({"version": transformers.__version__, "logits": logits,
                "pipeline": type(pipeline("image-classification", model=folder).model).__name__}, out)
''')


@pytest.mark.parametrize("family", ["resnet-basic", "vit"])
def test_a_checkpoint_loads_with_transformers_5_17(family, tmp_path):
    """transformers up to 5.17 hands the quantizer the model config in `update_tp_plan`, not in
    `update_attn_implementation`: a checkpoint must load there too (it failed on the load guard before), quantized
    attention included, with the logits it has with the installed transformers."""
    if not (TRANSFORMERS_5_17 / "transformers").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{TRANSFORMERS_5_17} is missing: .ci/setup installs transformers 5.17 there")
        pytest.skip("run .ci/setup to install transformers 5.17 into .ci/transformers-5.17")
    from tiny_models import structured_images, tiny_model

    model = tiny_model(family).eval()
    pixels = structured_images(8, 3, torch.Generator().manual_seed(0))
    result = quantize(model, pixels, GenieConfig.from_profile("quick", weight_bits=4, act_bits=4,
                                                              reconstruction_steps=2), progress=False)
    folder = save_quantized(result, tmp_path / "ckpt", processor=processor())
    torch.save(pixels, tmp_path / "pixels.pt")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TRANSFORMERS_5_17), str(root)])}
    proc = subprocess.run([sys.executable, "-c", _LOAD_WITH_5_17, str(folder), str(tmp_path / "pixels.pt"),
                           str(tmp_path / "out.pt")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    old = torch.load(tmp_path / "out.pt")
    assert old["version"] == "5.17.0" and old["pipeline"] == type(model).__name__
    torch.testing.assert_close(old["logits"], logits(from_pretrained(folder), pixels))


def test_layers_of_another_transformers_layout_name_both_releases(w4, tmp_path):
    """transformers renames some architectures' modules between releases (ViT's, between 5.0 and 5.17) and a Genie
    checkpoint names its layers by module: a layer the model lacks is refused, naming the release that saved it
    when that is not this one, so the user knows to install it rather than to download the checkpoint again."""
    import transformers

    folder = tmp_path / "renamed"
    shutil.copytree(w4[1], folder)
    config = json.loads((folder / "config.json").read_text())
    layers = config["quantization_config"]["layers"]
    name = next(n for n, spec in layers.items() if spec["type"] == "QuantConv2d")
    layers[name.rpartition(".")[0] + ".conv"] = layers.pop(name)  # a module of another layout
    for version, expected in (("5.0.0", 'saved with transformers 5.0.0, and this is .*"transformers==5.0.0"'),
                              (transformers.__version__, "config.json and the quantization layers do not belong")):
        config["transformers_version"] = version
        (folder / "config.json").write_text(json.dumps(config))
        with pytest.raises(CheckpointError, match=expected):
            AutoModelForImageClassification.from_pretrained(folder)


def test_a_model_loaded_in_half_precision_is_not_saved(w4, tmp_path):
    """`from_pretrained(..., dtype=torch.float16)` keeps the scales float32 but rounds BatchNorm statistics and
    biases; before, save_pretrained wrote them as float16 with a config that asked every later load for float16."""
    folder = w4[1]
    for dtype in (torch.float16, torch.bfloat16):
        model = AutoModelForImageClassification.from_pretrained(folder, dtype=dtype)
        with pytest.raises(CheckpointError, match=f"holds {str(dtype)[6:]} tensors .*Load the checkpoint again"):
            model.save_pretrained(tmp_path / "resaved")
        assert not (tmp_path / "resaved").exists()
    AutoModelForImageClassification.from_pretrained(folder).save_pretrained(tmp_path / "resaved")  # float32: saved


def test_saving_without_an_image_processor_says_what_it_costs(w4, tmp_path, caplog):
    """A folder without preprocessor_config.json is one pipeline() and `genie_hub evaluate` cannot use (helper-30)."""
    with caplog.at_level("WARNING", logger="genie_hub"):
        save_quantized(w4[0], tmp_path / "bare")
    assert "saved without an image processor" in caplog.text and "processor=processor" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="genie_hub"):
        save_quantized(w4[0], tmp_path / "full", processor=processor())
    assert "saved without an image processor" not in caplog.text and "calibrated on" not in caplog.text


def test_saving_with_a_processor_of_another_size_than_the_calibration_warns(w4, tmp_path, caplog):
    """Activation ranges fit the calibration images' size: a library user who calibrates at 64 px and saves
    the 32 px processor gets a model tuned for inputs it never sees, so it says so."""
    assert w4[0].calibration_size == (32, 32)
    large = dataclasses.replace(w4[0], calibration_size=(64, 64))
    with caplog.at_level("WARNING", logger="genie_hub"):
        save_quantized(large, tmp_path / "other", processor=processor())
    assert "calibrated on 64x64 images, but the processor saved with it makes 32x32 ones" in caplog.text
