"""The small shared pieces every stage relies on: atomic writes, temporary hooks, the optimisation loop, CLI
options generated from GenieConfig, adapters, the prior registry, the frozen format and the run record."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch
from torch import nn

from genie_hub.adapters import InputSpec, ModelAdapter, adapter_for, model_logits
from genie_hub.cli import add_config_options, build_parser, config_from_args
from genie_hub.config import PROFILES, GenieConfig
from genie_hub.errors import ConfigError, NoBatchNormError
from genie_hub.fileio import atomic_path, write_json
from genie_hub.hooks import TemporaryHooks
from genie_hub.optimization import optimize
from genie_hub.outputs import OutputLayout, RunRecord
from genie_hub.quantization.format import LayerSpec, stored_tensors
from genie_hub.synthesis import prior_names, select_prior
from tiny_models import tiny_model


# ---- atomic writes ------------------------------------------------------------------------------------------
def test_atomic_write_replaces_only_when_complete(tmp_path):
    target = tmp_path / "run.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"a": ')  # a write that dies half-way
        raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"a": 1}  # the old complete file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # and no temporary file is left behind
    write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}


# ---- hooks --------------------------------------------------------------------------------------------------
def test_temporary_hooks_are_removed_even_on_error():
    layer = nn.Linear(3, 3)
    x = torch.randn(2, 3)
    before = layer(x)
    with pytest.raises(ValueError), TemporaryHooks() as hooks:
        hooks.pre(layer, lambda module, args: (args[0] * 0,))
        hooks.post(layer, lambda module, args, output: output + 1)
        assert torch.equal(layer(x), layer.bias.detach().expand(2, 3) + 1)
        raise ValueError("boom")
    assert torch.equal(layer(x), before)


# ---- the optimisation loop ----------------------------------------------------------------------------------
def test_optimize_steps_and_reports_divergence_within_check_every():
    weight = nn.Parameter(torch.tensor(4.0))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    seen = []
    optimize(30, lambda step: weight.pow(2), [optimizer], on_diverged=lambda s, v: AssertionError(s),
             after_step=lambda step, loss: seen.append(step), check_every=10, progress=False)
    assert seen == list(range(30)) and abs(float(weight.detach())) < 0.01

    class Diverged(Exception):
        pass

    def loss(step: int) -> torch.Tensor:
        return weight.pow(2) * (float("nan") if step == 13 else 1.0)

    with pytest.raises(Diverged) as info:
        optimize(100, loss, [optimizer], on_diverged=lambda step, value: Diverged(step), check_every=10,
                 progress=False)
    assert info.value.args[0] == 20  # caught at the first check after step 13, never later


# ---- CLI options from GenieConfig ---------------------------------------------------------------------------
def test_every_cli_option_maps_to_a_config_field_with_its_default_in_the_help():
    parser = argparse.ArgumentParser()
    add_config_options(parser)
    help_text = " ".join(parser.format_help().split())
    for field in GenieConfig.cli_fields():
        assert field.metadata["cli"]["flag"] in help_text
    assert "(default: paper 1024, quick 128)" in help_text  # --num-samples: the profiles differ
    assert "(default: 4)" in help_text and "(default: auto)" in help_text
    args = build_parser().parse_args(["quantize", "-w", "3", "--profile", "quick", "--num-samples", "7",
                                      "--override", "classifier*=8/fp", "--override", "*.shortcut=/8",
                                      "--synthesis-method", "pixels"])
    config = config_from_args(args)
    assert (config.weight_bits, config.act_bits, config.profile, config.num_samples) == (3, 4, "quick", 7)
    assert config.synthesis_iterations == PROFILES["quick"]["synthesis_iterations"]
    assert config.overrides == {"classifier*": {"weight": 8, "act": None}, "*.shortcut": {"act": 8}}
    assert config.synthesis_method == "pixels"
    assert config_from_args(build_parser().parse_args(["quantize"])) == GenieConfig.from_profile("paper")


def test_every_argument_of_every_subcommand_has_help():
    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction):
                yield path, action

    missing = [f"{path}: {action.dest}" for path, action in walk(build_parser(), "genie_hub") if not action.help]
    assert not missing, missing


def test_bad_override_syntax_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["quantize", "--override", "classifier"])
    assert "PATTERN=W/A" in capsys.readouterr().err


# ---- adapters -----------------------------------------------------------------------------------------------
def test_plain_modules_use_the_base_adapter_and_transformers_models_theirs():
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(2, 1, 8, 8)
    assert type(adapter_for(plain)) is ModelAdapter
    assert torch.equal(model_logits(plain, x), plain(x))
    assert adapter_for(plain).input_spec(plain) == InputSpec(channels=1, height=224, width=224)
    model = tiny_model("resnet-basic")
    assert adapter_for(model).name == "transformers"
    y = torch.randn(2, 3, 32, 32)
    assert torch.equal(model_logits(model, y), model(pixel_values=y).logits)
    assert adapter_for(model).num_labels(model) == model.config.num_labels


# ---- priors -------------------------------------------------------------------------------------------------
def test_prior_selection():
    model = tiny_model("resnet-basic")
    assert "bn-statistics" in prior_names()
    assert select_prior(model).name == "bn-statistics" and select_prior(model, "bn-statistics").name == "bn-statistics"
    with pytest.raises(ConfigError, match="Unknown synthesis prior"):
        select_prior(model, "no-such-prior")
    with pytest.raises(NoBatchNormError, match="few-shot"):
        select_prior(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="does not apply"):
        select_prior(nn.Sequential(nn.Linear(2, 2)), "bn-statistics")


# ---- the frozen format --------------------------------------------------------------------------------------
def test_stored_tensors_are_declared_once_per_layer_type():
    conv = stored_tensors(LayerSpec("QuantConv2d", 4, 8, False), (16, 3, 3, 3))
    assert list(conv) == ["weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "input_scale"]
    assert conv["weight_packed"].shape == (16, 4) and conv["weight_packed"].dtype == torch.int32  # 27 x 4 bits
    assert conv["weight_zero_point"].safetensors_dtype == "I32"  # one-sign rows need zero points off the grid
    older = stored_tensors(LayerSpec("QuantConv2d", 4, 8, False), (16, 3, 3, 3), format_version=2)
    assert older["weight_zero_point"].safetensors_dtype == "U8"  # formats 1-2 still load
    assert list(stored_tensors(LayerSpec("QuantConv2d", 8, None), (4, 2))) == [
        "weight_packed", "weight_scale", "weight_zero_point", "weight_shape"]  # FP input: no input_scale
    assert list(stored_tensors(LayerSpec("QuantShortcut", None, 4, True), None)) == ["input_scale"]
    for bad in ({"type": "QuantShortcut", "weight_bits": 4, "act_bits": 4, "act_signed": True},
                {"type": "QuantLinear", "weight_bits": 4, "act_bits": 4, "act_signed": None},
                {"type": "QuantConv3d", "weight_bits": 4, "act_bits": None, "act_signed": None}):
        with pytest.raises(ValueError):
            LayerSpec.from_dict("x", bad)
    spec = LayerSpec("QuantLinear", 3, 8, True)
    assert LayerSpec.from_dict("fc", spec.to_dict()) == spec


# ---- the run record -----------------------------------------------------------------------------------------
def test_run_record_round_trips_and_keeps_unknown_keys(tmp_path):
    layout = OutputLayout(tmp_path / "out")
    assert layout.model_dir == tmp_path / "out" / "model" and layout.run_file == tmp_path / "out" / "run.json"
    layout.root.mkdir()
    record = RunRecord(base_model="owner/model", weight_bits=4, act_bits=4, config={"seed": 0},
                       layers={"fc": LayerSpec("QuantLinear", 4, 4, False).to_dict()}, extra={"future_key": 1})
    record.save(layout.run_file)
    data = json.loads(layout.run_file.read_text())
    assert data["future_key"] == 1 and "synthetic" not in data and "push" not in data
    loaded = RunRecord.load(layout.run_file)
    assert loaded == record and loaded.complete and not RunRecord().complete
    assert RunRecord.load(tmp_path / "missing.json") is None
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError):
        RunRecord.load(tmp_path / "list.json")
    assert dataclasses.replace(record, push={"model": None}).to_dict()["push"] == {"model": None}


def test_version_flag(capsys):
    from genie_hub import __version__
    from genie_hub.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"genie_hub {__version__}"


def test_first_line_quotes_the_first_line_that_says_something_and_no_more_than_a_paragraph():
    from genie_hub.errors import first_line

    assert first_line(ImportError("\nAutoImageProcessor requires torchvision\nmore")) == \
        "AutoImageProcessor requires torchvision"  # transformers' missing-backend message starts with a newline
    assert first_line(ValueError("")) == "" and first_line(ValueError("  \n \n")) == ""
    listed = first_line(ValueError("Unrecognized image processor; one of: " + ", ".join(["model-type"] * 400)))
    assert len(listed) <= 404 and listed.endswith(" ...")
