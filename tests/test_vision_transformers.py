"""Hub classifiers without BatchNorm (ViT, DeiT, Swin, ConvNeXt): quantized ops stand in for the modules they
replace, reconstruction units are the transformer layers, and the CLI quantizes, saves and reloads them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from genie_hub import GenieConfig, quantize, save_quantized
from genie_hub.adapters import model_logits
from genie_hub.checkpoint import from_pretrained
from genie_hub.cli import main
from genie_hub.errors import CheckpointError, ConfigError, GenieError
from genie_hub.quantization import QuantAttention, QuantConv2d, QuantLinear, discover_units, quantized_ops
from genie_hub.quantization.attention import attention, quantize_probabilities
from genie_hub.quantization.format import FORBIDDEN_SUFFIX
from tiny_models import IMAGE_SIZE, TRANSFORMER_FAMILIES, save_tiny_model, structured_images, tiny_model

TINY = ["--profile", "quick", "--reconstruction-steps", "3", "-q", "--eval-dataset", "none"]


def calibration(count: int, seed: int = 0) -> torch.Tensor:
    return structured_images(count, 3, torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.RandomState(0)
    for i in range(8):
        Image.fromarray(rng.randint(0, 256, (40, 36, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _reload_matches(model_dir: Path) -> None:
    """from_pretrained and pipeline load the same model: identical logits on the same input."""
    from transformers import AutoModelForImageClassification, pipeline

    x = calibration(3, seed=5)
    loaded = AutoModelForImageClassification.from_pretrained(model_dir)
    classifier = pipeline("image-classification", model=str(model_dir))
    assert isinstance(classifier.model.get_submodule(_first_quantized(loaded)), (QuantConv2d, QuantLinear))
    attention = {n for n, m in loaded.named_modules() if isinstance(m, QuantAttention)}
    assert attention == {n for n, m in classifier.model.named_modules() if isinstance(m, QuantAttention)}
    if attention:  # transformers calls genie_hub's attention function, which runs the quantized matmuls
        assert loaded.config._attn_implementation == classifier.model.config._attn_implementation == "genie_hub"
    with torch.no_grad():
        a, b = loaded(pixel_values=x).logits, classifier.model(pixel_values=x).logits
    assert torch.isfinite(a).all() and torch.equal(a, b)


def _first_quantized(model: nn.Module) -> str:
    return next(iter(quantized_ops(model)))


# ---- quantized ops stand in for nn.Conv2d / nn.Linear ----------------------------------------------------
def test_quantized_ops_expose_the_attributes_model_code_reads():
    conv, linear = nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Linear(6, 5)
    config = GenieConfig.from_profile("quick", reconstruction_steps=0)
    seq = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), linear)
    result = quantize(seq, torch.randn(4, 3, 8, 8), config, progress=False)
    q_conv, q_linear = result.model[0], result.model[6]
    assert isinstance(q_conv, QuantConv2d) and isinstance(q_linear, QuantLinear)
    for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
        assert getattr(q_conv, name) == getattr(conv, name), name
    assert (q_linear.in_features, q_linear.out_features) == (6, 5)
    for op in (q_conv, q_linear):
        # .weight: the dequantized weight, a plain tensor (not a Parameter, not saved), read-only.
        assert type(op.weight) is torch.Tensor and op.weight.dtype == torch.float32
        assert torch.equal(op.weight, op.quantized_weight())
        assert "weight" not in op.state_dict() and not any(k.endswith("." + FORBIDDEN_SUFFIX)
                                                           for k in result.model.state_dict())
        with pytest.raises(AttributeError):
            op.weight = torch.zeros(1)


class _ReadsLinearInternals(nn.Module):
    """Model code that reads an attribute quantized ops do not have (`weight_g`, as weight-norm models do)."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)) * self.fc.weight_g)


def test_a_model_that_reads_more_than_quantized_ops_provide_gets_one_clear_message():
    from genie_hub.quantization import UnsupportedModelError

    model = _ReadsLinearInternals()
    model.fc.weight_g = nn.Parameter(torch.ones(()))
    with pytest.raises(UnsupportedModelError, match=r"reads `weight_g` from a quantized layer.*QuantLinear"):
        quantize(model, torch.randn(4, 3, 8, 8), GenieConfig.from_profile("quick", reconstruction_steps=0),
                 progress=False)


@pytest.mark.parametrize("family, expected", [
    ("vit", ["vit.embeddings.patch_embeddings.projection", "vit.layers.0", "vit.layers.1", "classifier"]),
    ("deit", ["deit.embeddings.patch_embeddings.projection", "deit.layers.0", "deit.layers.1", "classifier"]),
    ("swin", ["swin.embeddings.patch_embeddings.projection", "swin.encoder.layers.0.blocks.0",
              "swin.encoder.layers.0.downsample.reduction", "swin.encoder.layers.1.blocks.0", "classifier"]),
    ("convnext", ["convnext.embeddings.patch_embeddings", "convnext.encoder.stages.0.layers.0",
                  "convnext.encoder.stages.1.downsampling_layer.1", "convnext.encoder.stages.1.layers.0",
                  "classifier"]),
])
def test_units_are_the_transformer_layers(family, expected):
    model = tiny_model(family)
    units = discover_units(model, calibration(2))
    assert [u.name for u in units] == expected
    ops = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    covered = [op for unit in units for op in unit.ops]
    assert sorted(covered) == sorted(ops) and len(covered) == len(set(covered))


@pytest.mark.parametrize("family", TRANSFORMER_FAMILIES)
def test_api_quantize_save_reload_is_exact(family, tmp_path):
    model = tiny_model(family)
    config = GenieConfig.from_profile("quick", weight_bits=4, act_bits=8, reconstruction_steps=4)
    implementation = getattr(model.config, "_attn_implementation", None)
    result = quantize(model, calibration(8), config, progress=False)
    assert getattr(model.config, "_attn_implementation", None) == implementation  # the FP model is left as it was
    weighted = [name for name, spec in result.layers.items() if spec.type in ("QuantConv2d", "QuantLinear")]
    attention = [name for name, spec in result.layers.items() if spec.type == "QuantAttention"]
    assert len(weighted) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    attention_modules = [n for n, m in model.named_modules() if type(m).__name__.endswith("Attention")
                         and hasattr(m, "q_proj")]
    assert attention == [f"{n}.quantized_matmul" for n in attention_modules]  # every attention, none for ConvNeXt
    assert len(attention) == (0 if family == "convnext" else 2)
    assert all(result.layers[n].act_bits == 8 and result.layers[n].act_signed is True for n in attention)
    save_quantized(result, tmp_path / "q")
    x = calibration(3, seed=7)
    with torch.no_grad():
        expected = model_logits(result.model, x)
        reloaded = from_pretrained(tmp_path / "q")
        assert torch.equal(model_logits(reloaded, x), expected)
    loaded_attention = {n for n, m in reloaded.named_modules() if type(m).__name__ == "QuantAttention"}
    assert loaded_attention == set(attention)


# ---- quantized attention --------------------------------------------------------------------------------
def test_probabilities_are_quantized_to_powers_of_two():
    probs = torch.tensor([1.0, 0.7, 0.3, 0.01, 2.0**-14, 2.0**-15, 1e-9, 0.0], requires_grad=True)
    quantized = quantize_probabilities(probs, bits=4)  # codes 0..14 are 2^-code, code 15 is 0
    assert quantized.tolist() == [1.0, 0.5, 0.25, 2.0**-7, 2.0**-14, 0.0, 0.0, 0.0]
    quantized.sum().backward()
    assert probs.grad.tolist() == [1.0] * 8  # straight through
    fine = quantize_probabilities(torch.tensor([0.7, 0.3, 2.0**-16, 2.0**-17.5]), bits=8)  # 15 codes per halving
    assert torch.allclose(fine[:2], torch.tensor([0.7, 0.3]), rtol=0.024) and fine[2] == 2.0**-16
    assert fine[3] == 0  # 254 codes / 15 per halving: the grid ends at 2^-16.93


def test_quantized_attention_follows_its_definition_and_freezes_to_the_same_numbers():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 4, generator=generator) for _ in range(3))
    mask = torch.zeros(1, 3, 10, 10)
    mask[..., 7:] = float("-inf")  # masked keys get probability 0
    op = QuantAttention.for_bits(4)
    out, probs = op(q, k, v, mask, None, 0.0)  # the first call sets each operand's step
    quantizers = op.act_quantizers()
    assert list(quantizers) == ["query_scale", "key_scale", "value_scale"]
    assert all(qz.signed and qz.bits == 4 for qz in quantizers.values())
    definition = attention(*(qz.quantize(t) for qz, t in zip(quantizers.values(), (q, k, v))), mask, None, 0.0,
                           False, lambda p: quantize_probabilities(p, 4))
    assert torch.allclose(out, definition[0]) and torch.equal(probs, definition[1])
    assert torch.all(probs[..., 7:] == 0)
    assert not torch.allclose(out, attention(q, k, v, mask, None, 0.0, False)[0], atol=1e-2)  # it does quantize
    op.freeze()
    assert op.act_quantizers() == {} and sorted(op.to_frozen()) == ["key_scale", "query_scale", "value_scale"]
    frozen_out, _ = op(q, k, v, mask, None, 0.0)
    assert torch.allclose(frozen_out, out, atol=1e-6)


def test_attention_act_bits_follow_overrides():
    model, x = tiny_model("vit"), calibration(2)
    from genie_hub.quantization import prepare_model

    config = GenieConfig.from_profile("quick", weight_bits=4, act_bits=4,
                                      overrides={"vit.layers.0.attention.quantized_matmul": {"act": 8},
                                                 "vit.layers.1.*.quantized_matmul": {"act": None}})
    q_model, units, names = prepare_model(model, config, x)
    ops = quantized_ops(q_model)
    assert ops["vit.layers.0.attention.quantized_matmul"].act_bits == 8
    assert "vit.layers.1.attention.quantized_matmul" not in names
    assert "vit.layers.0.attention.quantized_matmul" in units[1].ops  # reconstructed with its transformer layer
    with pytest.raises(ConfigError, match="match no quantized op"):  # ConvNeXt has no attention
        prepare_model(tiny_model("convnext"), GenieConfig.from_profile(
            "quick", overrides={"*.quantized_matmul": {"act": 8}}), x)
    # Attention matmuls have no weights: weight bits for them would change nothing (helper-30).
    with pytest.raises(ConfigError, match="set weight bits, but match only ops without weights"):
        prepare_model(model, GenieConfig.from_profile("quick", overrides={"*.quantized_matmul": {"weight": 8}}), x)


def test_checkpoint_with_attention_on_a_module_without_attention_is_refused(tmp_path):
    model = tiny_model("vit")
    config = GenieConfig.from_profile("quick", weight_bits=4, act_bits=8, reconstruction_steps=2)
    save_quantized(quantize(model, calibration(4), config, progress=False), tmp_path / "q")
    from safetensors import safe_open
    from safetensors.torch import save_file

    old, new = "vit.layers.0.attention.quantized_matmul", "vit.layers.0.mlp.quantized_matmul"
    config_path, weights = tmp_path / "q" / "config.json", tmp_path / "q" / "genie_model.safetensors"
    config_path.write_text(config_path.read_text().replace(old, new))  # a consistent edit of all three places
    with safe_open(str(weights), framework="pt") as handle:
        metadata = {k: v.replace(old, new) for k, v in handle.metadata().items()}
        tensors = {key.replace(old, new): handle.get_tensor(key) for key in handle.keys()}
    save_file(tensors, str(weights), metadata)
    with pytest.raises(CheckpointError, match="ViTMLP, which computes no attention"):
        from_pretrained(tmp_path / "q")


def test_checkpoint_with_an_invalid_attention_scale_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    config = GenieConfig.from_profile("quick", weight_bits=4, act_bits=8, reconstruction_steps=2)
    save_quantized(quantize(tiny_model("vit"), calibration(4), config, progress=False), tmp_path / "q")
    weights = tmp_path / "q" / "genie_model.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        metadata, tensors = handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()}
    tensors["vit.layers.1.attention.quantized_matmul.key_scale"] = torch.tensor(-1.0)
    save_file(tensors, str(weights), metadata)
    with pytest.raises(CheckpointError, match=r"quantized_matmul.key_scale has values <= 0"):
        from_pretrained(tmp_path / "q")


def test_attention_layer_spec_must_be_signed():
    from genie_hub.quantization.format import LayerSpec

    spec = {"type": "QuantAttention", "weight_bits": None, "act_bits": 4, "act_signed": True}
    assert LayerSpec.from_dict("a.quantized_matmul", spec).act_scales == ("query_scale", "key_scale", "value_scale")
    with pytest.raises(ValueError, match="signed grids"):
        LayerSpec.from_dict("a.quantized_matmul", {**spec, "act_signed": False})
    with pytest.raises(ValueError, match="no weight"):
        LayerSpec.from_dict("a.quantized_matmul", {**spec, "weight_bits": 4})


def test_dequantize_removes_the_attention_matmuls(tmp_path):
    model = tiny_model("vit")
    config = GenieConfig.from_profile("quick", weight_bits=8, act_bits=8, reconstruction_steps=2)
    save_quantized(quantize(model, calibration(4), config, progress=False), tmp_path / "q")
    loaded = from_pretrained(tmp_path / "q")
    loaded.dequantize()
    assert not quantized_ops(loaded)
    x = calibration(2, seed=3)
    with torch.no_grad():
        assert torch.allclose(model_logits(loaded, x), model_logits(model, x), atol=0.05)



def test_switching_a_quantized_model_to_another_attention_is_refused_not_silent(tmp_path, caplog):
    """transformers picks the attention function from the config on every call: after set_attn_implementation
    ("sdpa") the quantized matmuls would be skipped and the logits quietly change."""
    from transformers import AutoModelForImageClassification

    model = tiny_model("vit")
    config = GenieConfig.from_profile("quick", weight_bits=8, act_bits=4, reconstruction_steps=2)
    result = quantize(model, calibration(4), config, progress=False)
    save_quantized(result, tmp_path / "q")
    x = calibration(2, seed=3)
    with caplog.at_level("WARNING", logger="genie_hub"):
        loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "q", attn_implementation="sdpa")
    assert "attn_implementation='sdpa' is not used" in caplog.text
    assert loaded.config._attn_implementation == "genie_hub"
    for quantized in (result.model, loaded):
        with torch.no_grad():
            expected = model_logits(quantized, x)
            quantized.set_attn_implementation("sdpa")
            with pytest.raises(GenieError, match="set_attn_implementation\\('genie_hub'\\)"):
                model_logits(quantized, x)
            quantized.set_attn_implementation("genie_hub")
            assert torch.equal(model_logits(quantized, x), expected)
    loaded.set_attn_implementation("sdpa")
    compiled = torch.compile(loaded, backend="aot_eager")
    with torch.no_grad(), pytest.raises(GenieError, match="is now 'sdpa'"):  # compiled too
        model_logits(compiled, x)
    loaded.dequantize()  # a floating-point model may use any attention
    loaded.set_attn_implementation("sdpa")
    with torch.no_grad():
        assert torch.isfinite(model_logits(loaded, x)).all()



def test_a_compiled_quantized_vit_is_one_graph_with_the_eager_logits(tmp_path):
    """ViT's embeddings read `projection.weight`: under torch.compile it is dequantized in the graph, which the
    eager path's inference-mode check broke (three graph breaks per model before)."""
    model = tiny_model("vit")
    config = GenieConfig.from_profile("quick", weight_bits=4, act_bits=4, reconstruction_steps=2)
    save_quantized(quantize(model, calibration(4), config, progress=False), tmp_path / "q")
    loaded, x = from_pretrained(tmp_path / "q"), calibration(2, seed=3)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with torch.no_grad():
        assert torch.equal(model_logits(torch.compile(loaded, backend="aot_eager"), x), model_logits(loaded, x))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.utils.counters["graph_break"]

# ---- the CLI, end to end ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family", TRANSFORMER_FAMILIES)
def test_cli_few_shot_quantizes_saves_and_reloads(family, photos, tmp_path):
    save_tiny_model(tmp_path / "base", family)
    out = tmp_path / "out"
    assert main(["quantize", str(tmp_path / "base"), "-o", str(out), "-w", "4", "-a", "8", "--few-shot",
                 str(photos), "--num-samples", "8", *TINY]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["zero_shot"] is False and len(run["unit_errors"]) == len(run["units"])
    _reload_matches(out / "model")


def test_cli_takes_the_documented_attention_override(photos, tmp_path, capsys):
    """README: `--override '*.quantized_matmul=/8'`. The command line checked patterns against the model's own
    modules before tracing, where the attention matmuls do not exist yet, and refused it."""
    save_tiny_model(tmp_path / "base", "vit")
    out = tmp_path / "out"
    assert main(["quantize", str(tmp_path / "base"), "-o", str(out), "-w", "4", "-a", "4", "--few-shot", str(photos),
                 "--num-samples", "8", "--override", "*.quantized_matmul=/8", *TINY]) == 0, capsys.readouterr().err
    layers = json.loads((out / "run.json").read_text())["layers"]
    matmuls = {name: layer for name, layer in layers.items() if layer["type"] == "QuantAttention"}
    assert matmuls and all(layer["act_bits"] == 8 for layer in matmuls.values())
    assert 4 in {layer["act_bits"] for name, layer in layers.items() if name.endswith("q_proj")}  # not widened
    assert main(["quantize", str(tmp_path / "base"), "-o", str(tmp_path / "out2"), "--few-shot", str(photos),
                 "--override", "*.no_such_module=/8", *TINY]) == 2  # a pattern that matches nothing is still refused
    assert "match no quantized op" in capsys.readouterr().err


# ---- zero-shot: the patch-similarity prior --------------------------------------------------------------
def test_patch_similarity_entropy_rewards_diverse_patches():
    from genie_hub.synthesis.patch_similarity import similarity_entropy

    generator = torch.Generator().manual_seed(0)
    diverse = torch.randn(4, 16, 8, generator=generator)
    collapsed = torch.ones(4, 16, 8) + 0.01 * torch.randn(4, 16, 8, generator=generator)
    assert similarity_entropy(diverse) > similarity_entropy(collapsed) + 1
    diverse.requires_grad_(True)
    similarity_entropy(diverse).backward()
    assert torch.isfinite(diverse.grad).all() and diverse.grad.abs().sum() > 0


@pytest.mark.parametrize("family, blocks", [
    ("vit", ["vit.layers.0", "vit.layers.1"]),
    ("swin", ["swin.encoder.layers.0.blocks.0", "swin.encoder.layers.1.blocks.0"]),
    ("convnext", ["convnext.encoder.stages.0.layers.0", "convnext.encoder.stages.1.layers.0"]),
])
def test_auto_picks_patch_similarity_for_models_without_batchnorm(family, blocks):
    from genie_hub.synthesis import select_prior

    prior = select_prior(tiny_model(family))
    assert prior.name == "patch-similarity" and prior.blocks == blocks
    assert select_prior(tiny_model("resnet-basic")).name == "bn-statistics"  # BN models keep Genie's prior


def test_patch_similarity_synthesis_lowers_its_loss():
    from genie_hub.synthesis import synthesize

    config = GenieConfig.from_profile("quick", num_samples=4, synthesis_batch_size=4, synthesis_iterations=12)
    calibration = synthesize(tiny_model("vit"), config, progress=False)
    stats = calibration.batch_stats[0]
    assert calibration.prior == "patch-similarity" and calibration.pixel_values.shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert stats.final_prior_loss < stats.initial_prior_loss


@pytest.mark.parametrize("family", TRANSFORMER_FAMILIES)
def test_cli_zero_shot_quantizes_saves_and_reloads(family, tmp_path):
    save_tiny_model(tmp_path / "base", family)
    out = tmp_path / "out"
    assert main(["quantize", str(tmp_path / "base"), "-o", str(out), "-w", "4", "-a", "8", "--num-samples", "4",
                 "--batch-size", "4", "--synthesis-iterations", "3", *TINY]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["zero_shot"] is True and run["synthetic"]["prior"] == "patch-similarity"
    for card in (out / "model" / "README.md", out / "dataset" / "README.md"):
        text = card.read_text()
        assert "`patch-similarity`" in text and "patch-to-patch feature similarities" in text
        assert "BatchNorm input statistics match" not in text
    card = (out / "model" / "README.md").read_text()
    assert ("Attention (2 modules): both matmuls quantized at A8" in card) == (family != "convnext")
    _reload_matches(out / "model")


def _save_with_processor(model, path: Path) -> None:
    from transformers import ViTImageProcessor

    model.save_pretrained(path)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(path)


def _imagegpt():
    from transformers import ImageGPTConfig, ImageGPTForImageClassification

    return ImageGPTForImageClassification(ImageGPTConfig(n_embd=16, n_layer=1, n_head=2, n_positions=64,
                                                         vocab_size=513, num_labels=3)).eval()


def _pp_lcnet():
    from transformers import PPLCNetConfig, PPLCNetForImageClassification

    return PPLCNetForImageClassification(PPLCNetConfig(scale=0.25, num_labels=3)).eval()


@pytest.mark.parametrize("build, reason", [
    (_imagegpt, r"ImageGPTForImageClassification: it reads an image as token ids \(its input is input_ids"),
    (_pp_lcnet, r"The model's output \(BaseModelOutputWithNoAttention\) holds no logits"),
])
def test_a_model_that_takes_no_pixels_or_returns_no_logits_is_refused_for_that_reason(build, reason, tmp_path,
                                                                                     capsys):
    """ImageGPT reads token ids and PP-LCNet returns its scores as last_hidden_state: both were refused before
    compute, but as a model that 'does not run on inputs of shape [3, 32, 32]', blaming the image processor (which
    was the model's own). The refusal names the real reason, from the CLI and from the library call alike."""
    _save_with_processor(build(), tmp_path / "base")
    out = tmp_path / "out"
    assert main(["quantize", str(tmp_path / "base"), "-o", str(out), "--num-samples", "4", "--batch-size", "4",
                 "--synthesis-iterations", "3", *TINY]) != 0
    message = capsys.readouterr().err
    assert re.search(reason, message)
    assert "image processor (preprocessor_config.json)" not in message and not (out / "work").exists()
    with pytest.raises(GenieError, match=reason):
        quantize(build(), calibration(2), GenieConfig.from_profile("quick", reconstruction_steps=0), progress=False)


def test_a_processor_that_makes_patch_sequences_is_refused_for_that_reason(tmp_path, capsys):
    """SigLIP2's NaFlex processor makes pixel_values [N, patches, 768] with a patch mask and grid shapes: the input
    spec fell back to 224 px and the model was refused as one that 'does not run on inputs of shape [3, 224, 224]',
    blaming the processor's size (helper-35). The refusal now says what the processor makes, before compute."""
    from transformers import Siglip2ImageProcessorPil

    tiny_model("vit").save_pretrained(tmp_path / "base")
    Siglip2ImageProcessorPil(max_num_patches=16, patch_size=16).save_pretrained(tmp_path / "base")
    out = tmp_path / "out"
    assert main(["quantize", str(tmp_path / "base"), "-o", str(out), *TINY]) != 0
    message = capsys.readouterr().err
    assert "makes pixel_values of shape [2, 16, 768] for 2 images, not images [N, C, H, W]" in message
    assert "does not run on inputs" not in message and not (out / "work").exists()


def test_every_head_of_a_distilled_deit_gets_the_classifier_bits():
    """A distilled DeiT's logits average a class head and a distillation head: both are the classifier, both W8A8
    (the last executed op alone left the class head at the run's 4 bits)."""
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    torch.manual_seed(0)
    model = DeiTForImageClassificationWithTeacher(DeiTConfig(
        image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=3)).eval()
    config = GenieConfig.from_profile("quick", weight_bits=4, act_bits=4, reconstruction_steps=0)
    result = quantize(model, torch.randn(4, 3, 16, 16), config, progress=False)
    heads = {name: (spec.weight_bits, spec.act_bits) for name, spec in result.layers.items() if "classifier" in name}
    assert heads == {"cls_classifier": (8, 8), "distillation_classifier": (8, 8)}
    assert result.layers["deit.layers.0.attention.q_proj"].weight_bits == 4


def test_a_conv_subclass_with_its_own_forward_is_refused_not_replaced():
    """BiT's weight-standardized convs subclass nn.Conv2d: a QuantConv2d in their place would compute a plain conv
    (agreement with FP32 at W8A8 was 17 %), so such a model is refused; a subclass that keeps the forward is not."""
    from transformers import BitConfig, BitForImageClassification

    from genie_hub.quantization import UnsupportedModelError

    bit = BitForImageClassification(BitConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_groups=4,
                                              num_labels=3)).eval()
    config = GenieConfig.from_profile("quick", reconstruction_steps=0)
    with pytest.raises(UnsupportedModelError, match=r"bit.embedder.convolution \(WeightStandardizedConv2d\)"):
        quantize(bit, torch.randn(2, 3, 32, 32), config, progress=False)

    class NamedConv(nn.Conv2d):  # only a constructor of its own
        def __init__(self):
            super().__init__(3, 4, 3)

    model = nn.Sequential(NamedConv(), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 3))
    assert "0" in quantize(model, torch.randn(4, 3, 32, 32), config, progress=False).layers


def test_attention_that_genie_hub_cannot_reach_is_reported_in_floating_point(caplog):
    """Swinv2 computes attention in its own code (no AttentionInterface): its linear layers are quantized, its
    matmuls are not, and the result says which modules (the card and a warning say it too); Swin's are quantized."""
    from transformers import SwinConfig, SwinForImageClassification, Swinv2Config, Swinv2ForImageClassification

    geometry = dict(image_size=16, patch_size=4, embed_dim=8, depths=[1], num_heads=[2], window_size=4, num_labels=3)
    config = GenieConfig.from_profile("quick", reconstruction_steps=0)
    v2 = quantize(Swinv2ForImageClassification(Swinv2Config(**geometry)).eval(), torch.randn(4, 3, 16, 16), config,
                  progress=False)
    assert v2.float_attention == ["swinv2.encoder.layers.0.blocks.0.attention"]
    assert not any(spec.type == "QuantAttention" for spec in v2.layers.values())
    assert "stay in floating point" in caplog.text
    v1 = quantize(SwinForImageClassification(SwinConfig(**geometry)).eval(), torch.randn(4, 3, 16, 16), config,
                  progress=False)
    assert v1.float_attention == [] and any(spec.type == "QuantAttention" for spec in v1.layers.values())


def test_attention_kept_in_floating_point_by_an_override_is_not_reported_as_unreachable(caplog):
    """`--override '*.quantized_matmul=/fp'` on a Swin (attention through AttentionInterface) was reported as
    attention "in code genie_hub cannot reach", in the warning and in the card ("This model computes attention in
    its own code"): the override, which the card names, is why it stays FP."""
    from transformers import SwinConfig, SwinForImageClassification

    geometry = dict(image_size=16, patch_size=4, embed_dim=8, depths=[1], num_heads=[2], window_size=4, num_labels=3)
    config = GenieConfig.from_profile("quick", reconstruction_steps=0, overrides={"*.quantized_matmul": {"act": None}})
    result = quantize(SwinForImageClassification(SwinConfig(**geometry)).eval(), torch.randn(4, 3, 16, 16), config,
                      progress=False)
    assert not any(spec.type == "QuantAttention" for spec in result.layers.values())  # the override held
    assert result.float_attention == [] and "cannot reach" not in caplog.text


def test_patch_similarity_reads_the_patch_tokens_only():
    """Class, distillation and register tokens are not patches: the prior drops the tokens beyond the patch
    grid of the model's first conv (a non-square ViT's 24 patches + 1 is not one more than a square; Dinov2's
    class + 4 register tokens are more than two)."""
    from transformers import Dinov2Config, Dinov2ForImageClassification

    from genie_hub.synthesis.patch_similarity import PatchSimilarityPrior, _tokens

    tokens = torch.arange(25.0).view(1, 25, 1)
    assert _tokens(tokens, patches=24)[0, :, 0].tolist() == list(range(1, 25))
    assert _tokens(tokens, patches=25).shape[1] == 25 and _tokens(tokens).shape[1] == 25  # no patch count: kept
    assert _tokens(torch.zeros(1, 6, 1), patches=24).shape[1] == 6  # merged patches (Swin's later stages)

    model = Dinov2ForImageClassification(Dinov2Config(
        image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        num_register_tokens=4, num_labels=3)).eval()
    prior = PatchSimilarityPrior(model)
    seen = []
    with prior.attached():
        import genie_hub.synthesis.patch_similarity as patch_similarity

        original = patch_similarity.similarity_entropy
        patch_similarity.similarity_entropy = lambda t: seen.append(t.shape[1]) or original(t)
        try:
            model_logits(model, torch.randn(2, 3, 16, 16))
        finally:
            patch_similarity.similarity_entropy = original
    assert seen == [16]  # the 4 x 4 patches, without the class and register tokens
