"""`GenieConfig.compile`: the synthesis step and a unit's training loss under torch.compile compute what the
eager path computes.

The quantizers trace their plain definitions under torch.compile (no custom autograd Functions, no tensor-version
caches); these tests hold the traced loss and its gradients to the eager ones on units with a shared input
quantizer (ResNet's shortcut), a block-input quantizer (MobileNetV2) and attention quantizers (ViT). Most use
the "aot_eager" backend: the same dynamo trace and autograd graph as inductor, without compiling C++; one
end-to-end test compiles with inductor, as users run it.
"""

from __future__ import annotations

import logging

import pytest
import torch

from genie_hub import GenieConfig, optimization, quantize
from genie_hub.quantization import reconstruction
from genie_hub.quantization.prepare import prepare_model, quantized_ops
from genie_hub.quantization.quantizers import ActQuantizer
from genie_hub.quantization.reconstruction import (CompiledUnitLoss, _act_quantizers, _learned, capture,
                                                   unit_training_loss)
from tiny_models import IMAGE_SIZE, tiny_model


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setattr(optimization, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def broken_compile(monkeypatch):
    """torch.compile whose compiled function raises on its first call, as a machine without a C++ compiler does."""
    def compile_(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler here\nsecond line")
        return run

    monkeypatch.setattr(torch, "compile", compile_)


def _unit_setup(family: str, pick):
    """A prepared tiny model's unit chosen by `pick(unit, ops)`, its calibrated quantizers in training mode."""
    torch.manual_seed(0)
    model = tiny_model(family).eval()
    pixels = torch.randn(16, 3, IMAGE_SIZE, IMAGE_SIZE)
    config = GenieConfig.from_profile("quick", weight_bits=4, act_bits=4)
    q_model, units, _ = prepare_model(model, config, pixels[:2], "lp")
    q_model.requires_grad_(False)
    ops_by_name = quantized_ops(q_model)
    unit = next(u for u in units if pick(u, [ops_by_name[n] for n in u.ops]))
    ops = [ops_by_name[n] for n in unit.ops]
    x, _, args, kwargs = capture(q_model, unit.name, pixels, 16, "cpu", False)
    module = q_model.get_submodule(unit.name)
    with torch.no_grad():
        module(x, *args, **kwargs)  # calibrates the activation steps
    weight_quantizers = [op.weight_quantizer for op in ops if op.weight_quantizer is not None]
    act_quantizers = _act_quantizers(ops)
    params = _learned(weight_quantizers, act_quantizers)
    for p in params:
        p.requires_grad_(True)
    with torch.no_grad():
        out = module(x, *args, **kwargs)
    out = (out[0] if isinstance(out, tuple) else out).float()
    target = out + 0.1 * out.std() * torch.randn_like(out)  # a teacher the unit does not already match
    return module, x, target, args, kwargs, weight_quantizers, act_quantizers, params


def _shares_a_quantizer(unit, ops) -> bool:
    quantizers = [q for op in ops for q in op.act_quantizers().values()]
    return len({id(q) for q in quantizers}) < len(quantizers)


def _has_block_input(unit, ops) -> bool:
    return any(op.quantizes_input_of for op in ops)


@pytest.mark.parametrize("family,pick", [
    ("resnet-basic", _shares_a_quantizer),  # a conv and its shortcut read one quantized tensor
    ("mobilenet-v2", _has_block_input),  # the block's skip adds the quantized input
    ("vit", lambda unit, ops: unit.kind != "op"),  # attention: quantized Q, K, V and softmax inputs
])
@pytest.mark.parametrize("rounding_weight", [None, 1.0])  # warm-up (no regularizer), then with it
def test_compiled_unit_loss_matches_eager_values_and_gradients(aot_eager, family, pick, rounding_weight):
    module, x, target, args, kwargs, wqs, aqs, params = _unit_setup(family, pick)

    def eager(x, target, beta, weight):
        return unit_training_loss(module, x, target, args, kwargs, wqs, beta, weight)

    compiled = CompiledUnitLoss(eager, aqs, "unit")
    results = []
    for loss_function in (eager, compiled):
        for p in params:
            p.grad = None
        loss = loss_function(x, target, 7.5, rounding_weight)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in params]))
    assert compiled.compiled  # it really ran the traced graph, not the eager fallback
    (loss_ref, grads_ref), (loss, grads) = results
    assert torch.allclose(loss, loss_ref, rtol=1e-5)
    for grad, ref in zip(grads, grads_ref):  # relative to the whole tensor: a step's gradient is a sum that cancels
        assert ref.abs().max() > 0 and (grad - ref).norm() <= 1e-3 * ref.norm()
    assert all(aq._traced is None for aq in aqs)  # nothing traced stays cached


def test_traced_shared_quantizer_hands_every_reader_one_qdrop_mask(aot_eager):
    quantizer = ActQuantizer(4, signed=True)
    quantizer.calibrate(torch.randn(64))
    quantizer.qdrop_prob = 0.5
    x = torch.randn(4, 256, requires_grad=True)

    def two_readers_and_a_block_input(x):
        once = quantizer(x)
        return quantizer(x) - once, quantizer(once) - once  # a second reader; its own output back

    for shared in (True, False):
        quantizer.shared = shared
        quantizer.clear_cache()
        torch._dynamo.reset()
        again, own = torch.compile(two_readers_and_a_block_input, backend="aot_eager")(x)
        assert (again.abs().sum() == 0) == shared and (own.abs().sum() == 0) == shared


def test_quantize_with_compile_runs_inductor_and_records_it():
    torch.manual_seed(0)
    model = tiny_model("resnet-basic").eval()
    pixels = torch.randn(8, 3, IMAGE_SIZE, IMAGE_SIZE)
    config = GenieConfig.from_profile("quick", weight_bits=4, act_bits=4, reconstruction_steps=3,
                                      reconstruction_batch_size=4)
    torch._dynamo.reset()
    result = quantize(model, pixels, GenieConfig(**{**config.to_dict(), "compile": True}), progress=False)
    plain = quantize(model, pixels, config, progress=False)
    assert len(result.report) == len(plain.report) > 1
    assert all(report.compiled for report in result.report)
    assert not any(report.compiled for report in plain.report)
    for compiled, eager in zip(result.report, plain.report):  # 3 steps: the same function, nearly the same units
        assert compiled.error_reconstructed == pytest.approx(eager.error_reconstructed, rel=0.05, abs=1e-6)


def test_a_unit_whose_compilation_fails_runs_eager_with_a_warning(broken_compile, caplog):
    torch.manual_seed(0)
    model = tiny_model("resnet-basic").eval()
    pixels = torch.randn(8, 3, IMAGE_SIZE, IMAGE_SIZE)
    config = GenieConfig.from_profile("quick", weight_bits=4, act_bits=4, reconstruction_steps=4,
                                      reconstruction_batch_size=4)
    with caplog.at_level(logging.WARNING, logger="genie_hub.reconstruction"):
        fallback = quantize(model, pixels, GenieConfig(**{**config.to_dict(), "compile": True}), progress=False)
    assert not any(report.compiled for report in fallback.report)
    assert "torch.compile failed (RuntimeError: no C++ compiler here); this unit runs eager" in caplog.text
    plain = quantize(model, pixels, config, progress=False)
    for a, b in zip(fallback.report, plain.report):  # the eager fallback is the plain run, bit for bit
        assert a.error_reconstructed == b.error_reconstructed


def test_compile_is_a_speed_setting_not_a_result_setting():
    config = GenieConfig.from_profile("quick", compile=True)
    assert config.to_dict()["compile"] is True
    assert "compile" not in config.results_dict()
    assert GenieConfig.from_profile("quick").results_dict() == config.results_dict()
    with pytest.raises(Exception, match="compile must be true or false"):
        GenieConfig.from_profile("quick", compile="yes")


def test_compile_is_a_command_line_switch():
    from genie_hub.cli import build_parser, config_from_args

    parser = build_parser()
    assert config_from_args(parser.parse_args(["quantize", "--compile"])).compile is True
    assert config_from_args(parser.parse_args(["quantize"])).compile is False
    assert "--compile" in parser._subparsers._group_actions[0].choices["quantize"].format_help()


def _synthesis_config(**values) -> GenieConfig:
    return GenieConfig.from_profile("quick", **{"num_samples": 8, "synthesis_batch_size": 4, "synthesis_iterations": 3,
                                                "synthesis_workers": 1, "synthesis_precision": "fp32", **values})


@pytest.mark.parametrize("family,batches_per_step", [("embedded", 1), ("embedded", 2), ("vit", 1)])
def test_compiled_synthesis_makes_the_eager_images(aot_eager, monkeypatch, family, batches_per_step):
    """One graph for every step and batch (swing offsets, generators and the priors' hook state are its inputs or
    the same at every call), the same images bit for bit under aot_eager: the offsets drawn before a step are the
    draws the eager hooks make one conv at a time. The BatchNorm prior (embedded ResNet) and the patch-similarity
    prior (ViT, whose patch embedding is a strided conv that swings)."""
    from genie_hub import InputSpec, load_model, synthesize
    from genie_hub.synthesis import swing

    if family == "embedded":
        model, processor = load_model(None)
        spec = None
        example = torch.zeros(1, 1, 28, 28)
    else:
        model, processor = tiny_model(family).eval(), None
        spec = InputSpec(height=IMAGE_SIZE, width=IMAGE_SIZE, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)
        example = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert swing.DrawnSwing(model, example, [torch.Generator()]).swings_per_forward >= 1  # swing is exercised

    def images(**values):
        config = _synthesis_config(synthesis_batches_per_step=batches_per_step, num_samples=8 * batches_per_step,
                                   **values)
        return synthesize(model, config, processor=processor, spec=spec, progress=False)

    eager = images()
    torch._dynamo.utils.counters.clear()
    compiled = images(compile=True)  # two step groups of 4-image batches
    assert compiled.synthesis_compiled and not eager.synthesis_compiled
    assert torch.equal(compiled.pixel_values, eager.pixel_values)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.utils.counters["graph_break"]
    monkeypatch.setattr(swing, "SWING_MIN_SIZE", 10**6)  # no conv swings: other images, so the offsets mattered
    assert not torch.equal(images(compile=True).pixel_values, eager.pixel_values)


def test_swing_by_tensor_is_swing(aot_eager):
    from genie_hub.synthesis.swing import swing, swing_by_tensor, swing_reference

    x = torch.randn(2, 3, 6, 5, requires_grad=True)
    weight = torch.randn(2, 3, 6, 5)
    for h in range(3):
        for w in range(3):
            results = []
            for function in (lambda x: swing(x, h, w), lambda x: swing_by_tensor(x, torch.tensor([h, w])),
                             torch.compile(lambda x: swing_by_tensor(x, torch.tensor([h, w])), backend="aot_eager")):
                x.grad = None
                out = function(x)
                (out * weight).sum().backward()
                results.append((out.detach(), x.grad.clone()))
            assert torch.equal(results[0][0], swing_reference(x, h, w))
            for out, grad in results[1:]:
                assert torch.equal(out, results[0][0]) and torch.allclose(grad, results[0][1])
    one_row = torch.randn(1, 1, 1, 4)  # replicate padding: the definition's other case
    assert torch.equal(swing_by_tensor(one_row, torch.tensor([0, 2])), swing_reference(one_row, 0, 2))


def test_a_synthesis_whose_compilation_fails_runs_eager_with_a_warning(broken_compile, caplog):
    from genie_hub import load_model, synthesize

    model, processor = load_model(None)
    with caplog.at_level(logging.WARNING, logger="genie_hub.synthesis"):
        fallback = synthesize(model, _synthesis_config(compile=True), processor=processor, progress=False)
    assert not fallback.synthesis_compiled
    assert "torch.compile failed (RuntimeError: no C++ compiler here); synthesis runs eager" in caplog.text
    plain = synthesize(model, _synthesis_config(), processor=processor, progress=False)
    assert torch.equal(fallback.pixel_values, plain.pixel_values)  # the offsets' eager form swings the same


def test_quantize_compile_records_compiled_synthesis_and_units(aot_eager, tmp_path):
    import json

    from genie_hub.cli import main
    from tiny_models import save_tiny_model

    save_tiny_model(tmp_path / "base", "resnet-basic")
    out = tmp_path / "out"
    assert main(["quantize", str(tmp_path / "base"), "-o", str(out), "-q", "--profile", "quick", "--num-samples", "8",
                 "--batch-size", "4", "--synthesis-iterations", "2", "--reconstruction-steps", "2",
                 "--synthesis-workers", "1", "--synthesis-precision", "fp32", "--compile"]) == 0
    record = json.loads((out / "run.json").read_text())  # (bf16 synthesis on a CPU stays eager: the test below)
    assert record["config"]["compile"] is True and record["synthesis_compiled"] is True
    assert record["unit_errors"] and all(unit["compiled"] for unit in record["unit_errors"])


def test_bf16_synthesis_on_a_cpu_is_not_compiled(caplog, monkeypatch):
    """inductor's bf16 backward of the generator crashed a ViT's synthesis on CPU with heap corruption, which no
    fallback catches (helper-30): --compile leaves bf16 CPU synthesis eager, says so, and records it."""
    import genie_hub.synthesis.loop as loop
    from genie_hub import load_model, synthesize

    monkeypatch.setattr(loop, "_EAGER_BF16_CPU_SAID", False)
    assert loop.compiles_synthesis(_synthesis_config(compile=True, synthesis_precision="fp32"), "cpu")
    assert loop.compiles_synthesis(_synthesis_config(compile=True, synthesis_precision="bf16"), "cuda")
    model, processor = load_model(None)
    with caplog.at_level(logging.WARNING, logger="genie_hub.synthesis"):
        made = synthesize(model, _synthesis_config(compile=True, synthesis_precision="bf16"), processor=processor,
                          progress=False)
    assert not made.synthesis_compiled and "synthesis runs eager in bf16 on a CPU" in caplog.text
