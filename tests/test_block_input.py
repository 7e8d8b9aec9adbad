"""Issue #10 fix 5: a block that adds its input back (no module on the skip) adds the quantized input."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from genie_hub import GenieConfig, quantize, save_quantized
from genie_hub.adapters import model_logits
from genie_hub.checkpoint import GenieQuantizationConfig, from_pretrained
from genie_hub.errors import CheckpointError
from genie_hub.quantization import ActQuantizer, QuantizedOp, quantized_ops
from genie_hub.quantization.block_input import BlockInputQuantization, release_block_input
from genie_hub.quantization.reconstruction import capture
from tiny_models import structured_images, tiny_model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def calibration(count: int, seed: int = 0) -> torch.Tensor:
    return structured_images(count, 3, torch.Generator().manual_seed(seed))


def quantized(family: str, steps: int = 5):
    config = GenieConfig.from_profile("quick", weight_bits=4, act_bits=4, reconstruction_steps=steps,
                                      reconstruction_batch_size=8)
    return quantize(tiny_model(family), calibration(24), config, progress=False)


def block_inputs(model) -> dict[str, QuantizedOp]:
    """{block name: the op whose grid quantizes that block's input}."""
    return {op.quantizes_input_of: op for op in quantized_ops(model).values() if op.quantizes_input_of}


def hooks_of(model) -> list[BlockInputQuantization]:
    return [h for m in model.modules() for h in m._forward_pre_hooks.values() if isinstance(h, BlockInputQuantization)]


@pytest.fixture(scope="module")
def mobilenet():
    return quantized("mobilenet-v2")


def test_the_blocks_with_a_bare_skip_get_it_and_no_others(mobilenet):
    blocks = block_inputs(mobilenet.model)
    residual = {name for name, m in mobilenet.model.named_modules() if getattr(m, "use_residual", False)}
    assert residual and set(blocks) == residual
    for name, op in blocks.items():  # the grid of the block's first op, recorded in its layer spec
        assert name.startswith("mobilenet_v2.layer.") and op is mobilenet.model.get_submodule(
            f"{name}.expand_1x1.convolution")
        assert mobilenet.layers[f"{name}.expand_1x1.convolution"].quantizes_input_of == name


@pytest.mark.parametrize("family", ["mobilenet-v2", "efficientnet", "convnext"])
def test_the_skip_adds_the_quantized_input(family, mobilenet):
    model = copy.deepcopy(mobilenet.model) if family == "mobilenet-v2" else quantized(family).model
    blocks = block_inputs(model)
    assert blocks
    for name, op in blocks.items():
        block = model.get_submodule(name)
        x = capture(model, name, calibration(3, seed=2), 3, "cpu", with_output=False)[0]
        assert not torch.equal(op.quantize_input(x), x)  # captured before the hook: the raw input
        with torch.no_grad():
            hooked = block(x)
            release_block_input(op, block)
            fp_skip, quantized_skip = block(x), block(op.quantize_input(x))
        assert torch.equal(hooked, quantized_skip)
        assert (hooked - fp_skip).abs().max() > 1e-3 * fp_skip.abs().max()  # (the tiny EfficientNet's scale is 1e-30)
    assert not hooks_of(model)


@pytest.mark.parametrize("family", ["resnet-basic", "regnet", "vit"])
def test_no_hook_where_a_module_is_on_the_skip_or_the_first_op_reads_something_else(family):
    # ResNet/RegNet: the identity shortcut is a QuantShortcut sharing the first conv's quantizer already.
    # ViT: the first op of a layer reads a LayerNorm of the residual stream, which stays in FP.
    result = quantized(family, steps=0)
    assert not block_inputs(result.model) and not hooks_of(result.model)


def test_a_quantizer_given_its_own_output_returns_it():
    aq = ActQuantizer(4)
    aq.shared, aq.qdrop_prob = True, 0.5
    x = torch.randn(64, 8)
    y = aq(x)
    assert aq(y) is y  # the block's first op gets the hook's very tensor, QDrop mask included
    aq.qdrop_prob = 0.0
    y = aq(x)
    copied = y.clone()  # what TF-style zero padding hands the first conv: it quantizes to the same values
    assert aq(copied) is not y and torch.equal(aq(copied), y)


def test_saved_reloaded_copied_and_dequantized(mobilenet, tmp_path):
    folder = save_quantized(mobilenet, tmp_path / "ckpt")
    layers = json.loads((folder / "config.json").read_text())["quantization_config"]["layers"]
    recorded = {spec["quantizes_input_of"] for spec in layers.values() if "quantizes_input_of" in spec}
    assert recorded == set(block_inputs(mobilenet.model))
    loaded = from_pretrained(folder)
    x = calibration(4, seed=5)
    assert torch.equal(model_logits(mobilenet.model, x), model_logits(loaded, x))
    assert set(block_inputs(loaded)) == recorded and len(hooks_of(loaded)) == len(recorded)
    copied = copy.deepcopy(loaded)  # the copy's hooks quantize with the copy's ops
    assert {id(h.op) for h in hooks_of(copied)} == {id(op) for op in block_inputs(copied).values()}
    assert torch.equal(model_logits(copied, x), model_logits(loaded, x))
    loaded.dequantize()
    assert not hooks_of(loaded) and not quantized_ops(loaded)


def test_a_block_input_outside_the_op_or_in_an_old_format_is_refused():
    layer = {"type": "QuantConv2d", "weight_bits": 4, "act_bits": 4, "act_signed": False}
    good = {"layers": {"net.block.conv": {**layer, "quantizes_input_of": "net.block"}}}
    assert GenieQuantizationConfig.from_dict(good).layers["net.block.conv"].quantizes_input_of == "net.block"
    for block in ("net.other", "net.block.conv", "net.bl", "", 3):
        with pytest.raises(CheckpointError, match="quantizes_input_of"):
            GenieQuantizationConfig.from_dict({"layers": {"net.block.conv": {**layer, "quantizes_input_of": block}}})
    with pytest.raises(CheckpointError, match="quantizes_input_of"):  # an FP input has no grid to lend
        GenieQuantizationConfig.from_dict({"layers": {"net.block.conv": {
            **layer, "act_bits": None, "act_signed": None, "quantizes_input_of": "net.block"}}})
    with pytest.raises(CheckpointError, match="quantizes_input_of"):  # one block, quantized twice
        GenieQuantizationConfig.from_dict({"layers": {**good["layers"], "net.block.other": {
            **layer, "quantizes_input_of": "net.block"}}})
    with pytest.raises(CheckpointError, match="version 4"):
        GenieQuantizationConfig.from_dict({**good, "format_version": 3})


def test_a_state_file_reconstructed_with_fp_skips_does_not_resume(tmp_path, monkeypatch):
    # A run killed under a genie_hub that left these skips in FP: its finished units were learned for FP skips,
    # so rerunning with quantized skips starts over instead of mixing the two.
    from genie_hub.errors import ConfigError
    from genie_hub.quantization import prepare

    config = GenieConfig.from_profile("quick", weight_bits=4, act_bits=4, reconstruction_steps=2)
    state = tmp_path / "reconstruction.safetensors"
    with monkeypatch.context() as patch:
        patch.setattr(prepare, "_quantize_skip", lambda *args, **kwargs: None)
        quantize(tiny_model("mobilenet-v2"), calibration(16), config, state_path=state, progress=False)
    with pytest.raises(ConfigError, match="different settings"):
        quantize(tiny_model("mobilenet-v2"), calibration(16), config, state_path=state, progress=False)
