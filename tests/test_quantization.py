"""Genie-M: quantizers, bit rules, block discovery, reconstruction against round-to-nearest, resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from genie_hub.config import GenieConfig, LayerBits
from genie_hub.errors import ConfigError, ReconstructionDivergedError
from genie_hub.quantization import (ActQuantizer, LayerSpec, QuantConv2d, QuantShortcut, WeightQuantizer,
                                    discover_units, prepare_model, quantize, quantized_ops)
from genie_hub.adapters import model_logits
from genie_hub.quantization.quantizers import init_weight_range, qdrop_mix
from tiny_models import FAMILIES, structured_images, tiny_model


def calibration(count: int = 48, seed: int = 0) -> torch.Tensor:
    return structured_images(count, 3, torch.Generator().manual_seed(seed))


# ---- quantizers -----------------------------------------------------------------------------------------
def test_weight_quantizer_init_and_hard_rounding_grid():
    torch.manual_seed(0)
    weight = torch.randn(6, 4, 3, 3)
    wq = WeightQuantizer(weight, bits=3)
    # Soft bits start at the fractional part: the soft weight is the unrounded (clipped) weight.
    rows = weight.flatten(1)
    step = wq.positive_step()
    inside = ((rows / step).floor() + wq.zero_point >= 0) & ((rows / step).floor() + wq.zero_point < 7)
    assert torch.allclose(wq().flatten(1)[inside], rows[inside], atol=1e-4)
    wq.hard = True
    codes = (wq().flatten(1) / step + wq.zero_point)
    assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.min() >= 0 and codes.max() <= 7
    assert torch.equal(wq.codes(), torch.clamp(wq.floor + (wq.rounding >= 0).float() + wq.zero_point, 0, 7))


def test_zero_weights_do_not_produce_nan():
    wq = WeightQuantizer(torch.zeros(4, 8, 1, 1), bits=4)  # EfficientNet-Lite's identity squeeze-excite
    assert torch.isfinite(wq()).all() and torch.equal(wq(), torch.zeros(4, 8, 1, 1))
    aq = ActQuantizer(4)
    assert torch.isfinite(aq(torch.zeros(2, 3))).all()


def test_activation_quantizer_signedness_and_grid():
    relu_out = torch.rand(1000) * 3
    aq = ActQuantizer(4)
    out = aq(relu_out)
    assert aq.signed is False and aq.bounds == (0, 15)
    step = aq.positive_step()
    assert torch.allclose(out / step, (out / step).round(), atol=1e-5)
    signed = ActQuantizer(4)
    signed(torch.randn(1000))
    assert signed.signed is True and signed.bounds == (-8, 7)


def test_shared_quantizer_gives_every_reader_the_same_tensor():
    aq = ActQuantizer(4)
    aq.shared = True
    aq.qdrop_prob = 0.5
    x = torch.randn(64, 8)
    assert aq(x) is aq(x)  # the conv and its shortcut see the same quantized tensor, QDrop mask included
    assert aq(x.clone()) is not aq(x)


def test_one_sign_row_gets_its_own_range_not_one_through_zero():
    # A depthwise row whose weights are all positive: a range forced through 0 would waste part of the grid.
    row = torch.linspace(0.5, 1.0, 64).view(1, 64)
    step, zero = init_weight_range(row, bits=4, method="minmax")
    assert torch.allclose(step, torch.tensor([[0.5 / 15]]), rtol=1e-4)  # through 0 it would be 1.0 / 15
    assert zero.item() < 0  # the zero point lies below the grid: stored as int32
    wq = WeightQuantizer(row.view(1, 64, 1, 1), bits=4)
    wq.hard = True
    assert (wq().flatten() - row.flatten()).abs().max() <= 0.5 / 15 / 2 + 1e-6
    # An (almost) constant row far from 0 would need an enormous zero point: it gets a range through 0.
    step, zero = init_weight_range(torch.full((1, 8), 3.0), bits=4)
    assert zero.abs().item() <= 15 and torch.isfinite(step).all()


def test_weight_step_is_learned_in_log_space_and_a_tiny_step_survives():
    # The reference's absolute Adam lr of 1e-4 moves a 1e-5 step by 10x per update and pins it at a floor with
    # no gradient; in log space one update changes the step by ~lr relative, and it stays positive.
    weight = torch.randn(2, 16, 1, 1) * torch.tensor([1.0, 1e-4]).view(2, 1, 1, 1)
    wq = WeightQuantizer(weight, bits=8)
    initial = wq.positive_step().detach().clone()
    optimizer = torch.optim.Adam([wq.step.log_step], lr=1e-2)
    for _ in range(50):  # a gradient that always asks for a smaller step
        optimizer.zero_grad()
        wq.positive_step().sum().backward()
        optimizer.step()
    final = wq.positive_step().detach()
    assert (final > 0).all() and torch.allclose(final / initial, (final / initial)[0], rtol=0.02)
    assert 0.5 < float(final[1] / initial[1]) < 0.7  # exp(-50 * 1e-2) = 0.61, for both rows alike
    wq.positive_step().sum().backward()
    assert wq.step.log_step.grad.abs().min() > 0  # never a dead floor


def test_qdrop_prob_is_the_chance_of_the_fp_value_everywhere():
    quantized, fp = torch.zeros(10000), torch.ones(10000)
    assert torch.equal(qdrop_mix(quantized, fp, 1.0), fp) and torch.equal(qdrop_mix(quantized, fp, 0.0), quantized)
    assert 0.2 < float(qdrop_mix(quantized, fp, 0.25).mean()) < 0.3
    aq = ActQuantizer(2)
    x = torch.randn(10000) * 3
    aq(x)
    aq.qdrop_prob = 1.0
    assert torch.equal(aq(x), x)  # inside a quantizer too: prob 1 keeps every FP value


# ---- bits and block structure -----------------------------------------------------------------------------
def test_bit_exceptions_and_overrides():
    model = tiny_model("resnet-basic")
    config = GenieConfig(weight_bits=2, act_bits=4, overrides={"*.stages.1.*": {"weight": 3}})
    q_model, _, names = prepare_model(model, config, calibration(2))
    bits = {name: q_model.get_submodule(name).spec() for name in names}
    assert bits[names[0]] == LayerSpec("QuantConv2d", weight_bits=8, act_bits=None)  # stem: W8, FP input
    assert (bits[names[1]].weight_bits, bits[names[1]].act_bits) == (2, 8)
    assert bits["classifier.1"] == LayerSpec("QuantLinear", weight_bits=8, act_bits=8)
    assert all(b.weight_bits == 3 for n, b in bits.items() if ".stages.1." in n and b.has_weight)
    shortcut = "resnet.encoder.stages.0.layers.1.shortcut"
    assert bits[shortcut].type == "QuantShortcut"



def test_overrides_reach_only_identities_that_are_quantized_as_shortcuts():
    """An Identity is quantized only next to a conv or linear reading the same tensor: ConvNeXt's drop_path and
    ResNet's placeholder activations never are, so an override naming them would change nothing (helper-30)."""
    x = calibration(2)
    q_model, _, names = prepare_model(tiny_model("resnet-basic"), GenieConfig(overrides={"*.shortcut": {"act": 8}}), x)
    assert all(q_model.get_submodule(n).act_bits == 8 for n in names if n.endswith(".shortcut"))
    for family, pattern in (("convnext", "*.drop_path"), ("resnet-basic", "*.layer.1.activation")):
        with pytest.raises(ConfigError, match=f"'\\{pattern}' match no quantized op"):
            prepare_model(tiny_model(family), GenieConfig(overrides={pattern: {"act": 8}}), x)

@pytest.mark.parametrize("bits", [1, 9, 0, "4"])
def test_invalid_bit_widths_are_refused(bits):
    with pytest.raises(ConfigError, match="2 to 8"):
        GenieConfig(weight_bits=bits)
    with pytest.raises(ConfigError, match="2 to 8"):
        GenieConfig(act_bits=bits)
    with pytest.raises(ConfigError):
        GenieConfig(overrides={"classifier": {"weight": bits}})
    with pytest.raises(ConfigError):
        GenieConfig(last_layer=LayerBits(weight=bits, act=8))


@pytest.mark.parametrize("name,value,message", [
    ("qdrop_prob", float("nan"), "between 0 and 1"), ("qdrop_prob", 1.5, "between 0 and 1"),
    ("warmup", -0.1, "between 0 and 1"), ("lr_rounding", float("inf"), "a finite number >= 0"),
    ("lr_weight_step", -1e-3, "a finite number >= 0"), ("beta_end", 0.5, "a finite number >= 1"),
    ("rounding_weight", "1", "a finite number >= 0")])
def test_out_of_range_optimizer_settings_are_refused_before_compute(name, value, message):
    """They would otherwise fail (or silently misbehave) only in reconstruction, after synthesis."""
    with pytest.raises(ConfigError, match=f"{name} must be {message}"):
        GenieConfig.from_profile("quick", **{name: value})
    GenieConfig.from_profile("quick", qdrop_prob=0.0, warmup=1.0, lr_weight_step=0.0, beta_end=1.0)  # the bounds


def test_cli_reports_invalid_bits_in_one_line(capsys):
    from genie_hub.cli import main

    assert main(["quantize", "--weight-bits", "1", "--profile", "quick"]) == 2
    err = capsys.readouterr().err
    assert "Invalid bit-width 1" in err and "Traceback" not in err
    assert main(["quantize", "--batch-size", "0", "--profile", "quick"]) == 2
    err = capsys.readouterr().err  # the flag the user typed, not only the field behind it
    assert "synthesis_batch_size (--batch-size) must be a positive integer, got 0" in err and "Traceback" not in err


EXPECTED_UNITS = {
    "resnet-basic": ["resnet.embedder.embedder.convolution", "resnet.encoder.stages.0.layers.0",
                     "resnet.encoder.stages.0.layers.1", "resnet.encoder.stages.1.layers.0", "classifier.1"],
    "resnet-bottleneck": ["resnet.embedder.embedder.convolution", "resnet.encoder.stages.0.layers.0",
                          "resnet.encoder.stages.1.layers.0", "resnet.encoder.stages.1.layers.1", "classifier.1"],
    "regnet": ["regnet.embedder.embedder.convolution", "regnet.encoder.stages.0.layers.0",
               "regnet.encoder.stages.1.layers.0", "regnet.encoder.stages.1.layers.1", "classifier.1"],
}


@pytest.mark.parametrize("family", FAMILIES)
def test_units_cover_every_op_once_in_model_order(family):
    model = tiny_model(family)
    units = discover_units(model, calibration(2))
    ops = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    covered = [op for unit in units for op in unit.ops]
    assert sorted(covered) == sorted(ops) and len(covered) == len(set(covered))
    if family in EXPECTED_UNITS:
        assert [u.name for u in units] == EXPECTED_UNITS[family]
    if family == "mobilenet-v1":  # no residual structure: layer-wise fallback
        assert all(u.kind == "layer" for u in units)
    if family in ("mobilenet-v2", "efficientnet"):  # every inverted-residual block is a unit, skip or not
        prefix = "mobilenet_v2.layer." if family == "mobilenet-v2" else "efficientnet.encoder.blocks."
        blocks = [u for u in units if u.name.startswith(prefix)]
        assert blocks and all(u.kind == "block" and u.name.count(".") == prefix.count(".") for u in blocks)


def test_projection_shortcut_shares_the_a8_quantizer_of_the_first_block():
    # ResNet-50-style: the first block's projection shortcut conv reads the same tensor as the block's first
    # conv (the second executed op, A8). Both read it through one A8 quantizer, as in the reference.
    model = tiny_model("resnet-bottleneck")
    q_model, _, names = prepare_model(model, GenieConfig(weight_bits=4, act_bits=4), calibration(2))
    block = q_model.get_submodule("resnet.encoder.stages.0.layers.0")
    first, shortcut = block.layer[0].convolution, block.shortcut.convolution
    assert names[1] == "resnet.encoder.stages.0.layers.0.layer.0.convolution"
    assert shortcut.input_quantizer is first.input_quantizer and shortcut.act_bits == 8
    # A user's override of one reader's act bits still wins, with a quantizer of its own.
    config = GenieConfig(weight_bits=4, act_bits=4, overrides={"*.stages.0.layers.0.shortcut.*": {"act": 4}})
    q_model, _, _ = prepare_model(model, config, calibration(2))
    block = q_model.get_submodule("resnet.encoder.stages.0.layers.0")
    assert block.shortcut.convolution.act_bits == 4 and block.layer[0].convolution.act_bits == 8


def test_conv_and_identity_shortcut_share_one_input_quantizer():
    model = tiny_model("resnet-basic")
    q_model, _, _ = prepare_model(model, GenieConfig(), calibration(2))
    block = q_model.get_submodule("resnet.encoder.stages.0.layers.1")
    assert isinstance(block.shortcut, QuantShortcut)
    assert block.shortcut.input_quantizer is block.layer[0].convolution.input_quantizer
    assert block.shortcut.input_quantizer.shared


# ---- reconstruction ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("weight_bits", [4, 2])
@pytest.mark.parametrize("family", ["resnet-basic", "resnet-bottleneck"])
def test_reconstruction_beats_round_to_nearest_on_every_unit(family, weight_bits):
    model = tiny_model(family)
    config = GenieConfig.from_profile("quick", weight_bits=weight_bits, act_bits=4, reconstruction_steps=1000)
    result = quantize(model, calibration(64), config, progress=False)
    largest = max(r.error_round_to_nearest for r in result.report)
    for report in result.report:
        if report.error_round_to_nearest > 0.01 * largest:
            assert report.error_reconstructed < report.error_round_to_nearest, report
        else:  # units whose error is already negligible (e.g. an 8-bit stem) may move within noise
            assert report.error_reconstructed <= 1.05 * report.error_round_to_nearest + 1e-9, report
    # Everything ends hard-rounded and frozen on the integer grid of the learned step.
    for name, op in quantized_ops(result.model).items():
        assert op.frozen and op.weight_quantizer is None
        if op.weight_bits is not None:
            codes = op.integer_codes()
            assert codes.min() >= 0 and codes.max() <= 2**op.weight_bits - 1
            expected = op.weight_scale * (codes.float() - op.weight_zero_point.float())
            assert torch.equal(op.quantized_weight().flatten(1), expected)


@pytest.mark.parametrize("family", ["regnet", "mobilenet-v1", "mobilenet-v2", "efficientnet"])
def test_reconstruction_lowers_the_total_unit_error(family):
    model = tiny_model(family)
    config = GenieConfig.from_profile("quick", weight_bits=4, act_bits=4, reconstruction_steps=150)
    result = quantize(model, calibration(48), config, progress=False)
    rtn = sum(r.error_round_to_nearest for r in result.report)
    final = sum(r.error_reconstructed for r in result.report)
    assert final < rtn
    x = calibration(4, seed=1)
    assert torch.isfinite(model_logits(result.model, x)).all()


def test_same_seed_gives_identical_weights():
    model = tiny_model("resnet-basic")
    config = GenieConfig.from_profile("quick", reconstruction_steps=20)
    data = calibration(40)
    first, second = (quantize(model, data, config, progress=False) for _ in range(2))
    a, b = first.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_batches_of_the_requested_size_for_any_sample_count(monkeypatch):
    seen = []
    original = QuantConv2d.forward

    def spy(self, x):
        seen.append(x.shape[0])
        return original(self, x)

    monkeypatch.setattr(QuantConv2d, "forward", spy)
    config = GenieConfig.from_profile("quick", reconstruction_steps=3, reconstruction_batch_size=7)
    quantize(tiny_model("resnet-basic"), calibration(23), config, progress=False)
    assert 7 in seen


@pytest.mark.parametrize("family", ["resnet-basic", "swin", "mobilenet-v2"])  # attention matmuls and
# block-entry quantizers (block_input.py) resume too
def test_reconstruction_resumes_after_the_last_finished_unit(family, tmp_path):
    model = tiny_model(family)
    config = GenieConfig.from_profile("quick", reconstruction_steps=10)
    data = calibration(32)
    state = tmp_path / "reconstruction.safetensors"
    first = quantize(model, data, config, state_path=state, progress=False)
    again = quantize(model, data, config, state_path=state, progress=False)
    assert all(r.resumed for r in again.report) and not any(r.resumed for r in first.report)
    assert again.layers == first.layers  # signedness of every input restored too
    x = calibration(4, seed=3)
    assert torch.equal(model_logits(first.model, x), model_logits(again.model, x))
    with pytest.raises(ConfigError, match="different settings") as refused:
        quantize(model, data, GenieConfig.from_profile("quick", reconstruction_steps=11), state_path=state,
                 progress=False)
    assert "(config.reconstruction_steps: 10 vs now 11)" in str(refused.value)  # the setting that changed



def test_a_damaged_reconstruction_state_is_redone_not_a_traceback(tmp_path, caplog):
    """A truncated state file (a full disk, a copy cut short) raised safetensors' traceback on every rerun, and one
    with NaN scales failed at saving, blamed on the calibration data (helper-31): its units are made again."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model, data = tiny_model("resnet-basic"), calibration(16)
    config = GenieConfig.from_profile("quick", reconstruction_steps=3)
    truncated, non_finite = tmp_path / "truncated.safetensors", tmp_path / "non_finite.safetensors"
    first = quantize(model, data, config, state_path=truncated, progress=False)
    with safe_open(str(truncated), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(truncated)
    tensors[next(k for k, t in tensors.items() if k.endswith("input_scale") and t.numel())].fill_(float("nan"))
    save_file(tensors, non_finite, metadata=metadata)
    truncated.write_bytes(truncated.read_bytes()[:-300])
    x = calibration(4, seed=3)
    for state in (truncated, non_finite):
        with caplog.at_level("WARNING", logger="genie_hub"):
            again = quantize(model, data, config, state_path=state, progress=False)
        assert f"Ignoring the unreadable reconstruction state {state}" in caplog.text
        assert not any(r.resumed for r in again.report)
        assert torch.equal(model_logits(again.model, x), model_logits(first.model, x))


def test_divergence_names_the_unit_and_keeps_finished_units(tmp_path):
    model = tiny_model("resnet-basic")
    with torch.no_grad():  # finite weights (a NaN/inf one is refused up front) whose activations overflow to inf
        model.resnet.encoder.stages[1].layers[0].layer[1].normalization.bias.fill_(3e38)
    state = tmp_path / "reconstruction.safetensors"
    config = GenieConfig.from_profile("quick", reconstruction_steps=5)
    with pytest.raises(ReconstructionDivergedError, match="Reconstruction of unit 'classifier.1' diverged"):
        quantize(model, calibration(16), config, state_path=state, progress=False)
    from safetensors import safe_open
    import json

    with safe_open(str(state), framework="pt") as handle:
        finished = [u["name"] for u in json.loads(handle.metadata()["finished"])]
    assert finished == ["resnet.embedder.embedder.convolution", "resnet.encoder.stages.0.layers.0",
                        "resnet.encoder.stages.0.layers.1", "resnet.encoder.stages.1.layers.0"]  # every unit before it


def test_round_to_nearest_baseline_has_no_training():
    model = tiny_model("resnet-basic")
    config = GenieConfig.from_profile("quick", reconstruction_steps=0)
    result = quantize(model, calibration(16), config, range_init="minmax", progress=False)
    assert all(r.error_reconstructed == r.error_round_to_nearest for r in result.report)


def test_activation_step_init_on_tensors_larger_than_float32_indexing():
    from genie_hub.quantization.quantizers import init_weight_range, qdrop_mix, init_act_step

    x = torch.rand(2**24 + 1000)  # float32 linspace indices would run past the end here
    step = init_act_step(x, 4, signed=False)
    assert 0 < step <= x.max() / 15 * 1.0001
