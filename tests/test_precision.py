"""The precision of synthesis (`GenieConfig.synthesis_precision`): how "auto" is resolved, what bf16 changes,
and where the choice is recorded."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard

from genie_hub import config as config_module
from genie_hub.cli import main
from genie_hub.config import GenieConfig, native_bf16, resolve_precision
from genie_hub.errors import ConfigError
from genie_hub.loading import input_spec
from genie_hub.synthesis import synthesize
from tiny_models import IMAGE_SIZE, save_tiny_model, tiny_model


def _accelerator(mixed_precision: str = "no", device: str = "cpu") -> SimpleNamespace:
    return SimpleNamespace(mixed_precision=mixed_precision, device=torch.device(device))


def _resolved(monkeypatch, native: bool, accelerator=None, **fields) -> tuple[str, str]:
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(config_module, "native_bf16", lambda device: native)
    config = resolve_precision(GenieConfig.from_profile("quick", **fields), accelerator or _accelerator())
    return config.synthesis_precision, config.mixed_precision


def test_auto_synthesizes_in_bf16_only_where_the_hardware_computes_it(monkeypatch):
    assert _resolved(monkeypatch, native=True) == ("bf16", "no")  # reconstruction stays fp32
    assert _resolved(monkeypatch, native=False) == ("fp32", "no")


def test_a_chosen_mixed_precision_decides_synthesis_too(monkeypatch):
    assert _resolved(monkeypatch, native=True, mixed_precision="no") == ("fp32", "no")
    assert _resolved(monkeypatch, native=False, mixed_precision="bf16") == ("bf16", "bf16")
    assert _resolved(monkeypatch, native=False, accelerator=_accelerator("bf16")) == ("bf16", "bf16")


def test_accelerates_own_no_is_not_a_choice(monkeypatch):
    """`accelerate launch` always sets a mixed precision ("no" by default): a launched run must make the images a
    plain run makes (tests/test_synthesis.py compares one process with two)."""
    monkeypatch.setattr(config_module, "native_bf16", lambda device: True)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    config = resolve_precision(GenieConfig.from_profile("quick"), _accelerator("no"))
    assert (config.synthesis_precision, config.mixed_precision) == ("bf16", "no")


def test_an_explicit_synthesis_precision_is_kept(monkeypatch, caplog):
    with caplog.at_level("WARNING", logger="genie_hub.config"):
        assert _resolved(monkeypatch, native=False, synthesis_precision="bf16") == ("bf16", "no")
    assert "without hardware support" in caplog.text  # emulated bf16: slower, said so
    assert _resolved(monkeypatch, native=True, synthesis_precision="fp32", mixed_precision="bf16") == ("fp32", "bf16")


def test_native_bf16_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert native_bf16("cpu") is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert native_bf16("cpu") is True
    assert native_bf16("meta") is False


def test_an_unknown_synthesis_precision_is_refused():
    with pytest.raises(ConfigError, match="synthesis_precision must be one of auto, fp32, bf16"):
        GenieConfig(synthesis_precision="fp16")


def _conv_dtypes(model: torch.nn.Module, precision: str) -> tuple[set, torch.Tensor]:
    seen = set()
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    handle = conv.register_forward_hook(lambda module, args, output: seen.add(output.dtype))
    config = GenieConfig.from_profile("quick", num_samples=4, synthesis_batch_size=4, synthesis_iterations=3,
                                      synthesis_precision=precision)
    try:
        images = synthesize(model, config, spec=input_spec(model), progress=False).pixel_values
    finally:
        handle.remove()
    return seen, images


def test_bf16_synthesis_runs_the_convolutions_in_bf16_and_returns_float32_images():
    model = tiny_model("resnet-basic")
    seen_bf16, images_bf16 = _conv_dtypes(model, "bf16")
    seen_fp32, images_fp32 = _conv_dtypes(model, "fp32")
    # bf16 in the steps (the loss before the first step is measured in fp32)
    assert torch.bfloat16 in seen_bf16 and seen_fp32 == {torch.float32}
    assert images_bf16.dtype == images_fp32.dtype == torch.float32
    assert not torch.equal(images_bf16, images_fp32)  # other images: the shards must not be mixed


def test_shards_of_another_synthesis_precision_are_refused(tmp_path):
    model = tiny_model("resnet-basic")
    config = GenieConfig.from_profile("quick", num_samples=4, synthesis_batch_size=4, synthesis_iterations=2,
                                      synthesis_precision="bf16")
    synthesize(model, config, spec=input_spec(model), output_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="synthesis_precision: bf16 vs now fp32"):
        synthesize(model, dataclasses.replace(config, synthesis_precision="fp32"), spec=input_spec(model),
                   output_dir=tmp_path, progress=False)


def test_the_synthesis_precision_is_recorded_in_run_json_and_the_card(tmp_path):
    save_tiny_model(tmp_path / "base", "resnet-basic")
    out = tmp_path / "out"
    assert main(["quantize", str(tmp_path / "base"), "-o", str(out), "-q", "--profile", "quick", "--num-samples",
                 "4", "--batch-size", "4", "--synthesis-iterations", "2", "--reconstruction-steps", "2",
                 "--eval-dataset", "none", "--synthesis-precision", "bf16"]) == 0
    config = json.loads((out / "run.json").read_text())["config"]
    assert (config["synthesis_precision"], config["mixed_precision"]) == ("bf16", "no")
    card = ModelCard.load(out / "model" / "README.md").text
    assert "Synthesis computed in bf16 (autocast), reconstruction in\nfp32." in card
    assert "pass `--synthesis-precision bf16` to make the same images elsewhere" in card


@pytest.mark.parametrize("mixed_precision", ["bf16", "no"])
def test_quantize_without_an_accelerator_honours_the_configs_mixed_precision(mixed_precision):
    """The library call `quantize(model, images, config)` reconstructs under bf16 autocast exactly when the config
    (and so its result and run.json) says bf16."""
    from genie_hub import quantize
    from genie_hub.quantization import QuantConv2d

    model = tiny_model("resnet-basic")
    config = GenieConfig.from_profile("quick", num_samples=4, reconstruction_steps=2, mixed_precision=mixed_precision)
    seen = []

    def record(module, args, output):
        if isinstance(module, QuantConv2d) and torch.is_grad_enabled():  # a reconstruction training step
            seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        images = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
        result = quantize(model, images, config, progress=False)
    finally:
        handle.remove()
    assert seen and set(seen) == {mixed_precision == "bf16"}
    assert result.config.mixed_precision == mixed_precision
