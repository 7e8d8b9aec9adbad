"""Smoke tests of benchmarks/accuracy.py's bookkeeping (table rendering, JSON writing, merging): no model runs."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy.py"


def _script(file_name: str):
    """A benchmarks/ script imported as a module (registered while loading: a dataclass looks itself up there)."""
    name = "benchmark_" + file_name.removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, SCRIPT.with_name(file_name))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


@pytest.fixture(scope="module")
def accuracy():
    return _script("accuracy.py")


def _results():
    rows = [{"part": "embedded", "method": "fp32", "bits": None, "seed": None, "top1": 0.9224, "wall_s": 1.0}]
    for seed, (rtn, genie) in enumerate([(0.9212, 0.9208), (0.9190, 0.9220)]):
        rows.append({"part": "embedded", "method": "rtn", "bits": [4, 4], "seed": seed, "top1": rtn, "wall_s": 1.0})
        rows.append({"part": "embedded", "method": "genie", "bits": [4, 4], "seed": seed, "top1": genie, "wall_s": 30.0})
    rows.append({"part": "efficientnet", "method": "genie", "bits": [4, 4], "seed": 0, "wall_s": 100.0,
                 "agreement": {"top1_agreement": 0.5, "top5_overlap": 0.6, "kl_fp_q": 1.25, "num_samples": 4}})
    return {"command": "python benchmarks/accuracy.py --seeds 0 1", "started": "now", "status": "finished",
            "machine": "CPU", "library_versions": {"torch": "x"}, "parts": ["embedded", "efficientnet"],
            "settings": {"embedded": {"profile": "quick", "num_samples": 8, "seeds": [0, 1]},
                         "efficientnet": {"label": "reduced CPU setting", "photos": ["a", "b"], "num_eval": 4}},
            "rows": rows, "synthesis": [{"part": "embedded", "seed": 0, "method": "genie", "num_images": 8,
                                         "wall_s": 3.0, "final_bn_loss": [0.1]}],
            "notes": ["a note"]}


def test_parse_bits(accuracy):
    assert accuracy.parse_bits("4/4") == (4, 4)
    assert accuracy.parse_bits("W2A4") == (2, 4)


def test_summary_mean_std_and_delta(accuracy):
    summary = accuracy.embedded_summary(_results()["rows"])
    genie = next(e for e in summary if e["method"] == "genie")
    assert genie["seeds"] == [0, 1]
    assert genie["delta_vs_fp32"] == pytest.approx((0.9208 + 0.9220) / 2 - 0.9224)
    assert accuracy.fmt_pm(genie["top1"]) == "92.14 ± 0.08 (n=2)"


def test_markdown_and_json_written(accuracy, tmp_path):
    md_path, json_path = accuracy.write_results(_results(), tmp_path / "sub" / "acc")
    text = md_path.read_text()
    assert "| W4A4 | Genie (Genie-D + Genie-M), zero-shot | 92.14 ± 0.08 (n=2) | -0.10 |" in text
    assert "Round-to-nearest W4A4 loss vs FP32: **0.23 points**" in text
    assert "| W4A4 | Genie (Genie-D + Genie-M), zero-shot | 50.0 (n=1) | 60.0 (n=1) | 1.2500 (n=1) | 0 | 100 |" in text
    assert "- a note" in text
    assert json.loads(json_path.read_text())["rows"][0]["method"] == "fp32"
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_efficientnet_rows_aggregate_over_seeds(accuracy):
    """Seeds of one (bits, method) row, from one run or merged runs, become one mean ± std row."""
    a, b = _results(), _results()
    b["rows"] = [{**r, "seed": 1, "agreement": {**r["agreement"], "top1_agreement": 0.75}}
                 for r in b["rows"] if r["part"] == "efficientnet"]
    text = accuracy.render_markdown(accuracy.merge_results([a, b]))
    assert "| W4A4 | Genie (Genie-D + Genie-M), zero-shot | 62.5 ± 17.7 (n=2) | 60.0 ± 0.0 (n=2) | " \
           "1.2500 ± 0.0000 (n=2) | 0, 1 | 100, 100 |" in text
    assert "seeds 0, 1;" in text


def test_efficientnet_rows_of_another_variant_stay_apart(accuracy):
    """Runs labelled with a variant (an ablation, --synthesis-precision) get their own row, not pooled seeds."""
    a, b = _results(), _results()
    b["rows"] = [{**r, "variant": "synthesis bf16", "agreement": {**r["agreement"], "top1_agreement": 0.75}}
                 for r in b["rows"] if r["part"] == "efficientnet"]
    text = accuracy.render_markdown(accuracy.merge_results([a, b]))
    assert "| W4A4 | Genie (Genie-D + Genie-M), zero-shot | 50.0 (n=1) |" in text
    assert "| W4A4 | Genie (Genie-D + Genie-M), zero-shot [synthesis bf16] | 75.0 (n=1) |" in text


def test_merge(accuracy):
    a, b = _results(), _results()
    b["rows"] = [r for r in b["rows"] if r["part"] == "efficientnet"]
    b["command"] = "python benchmarks/accuracy.py --part efficientnet"
    merged = accuracy.merge_results([a, b])
    assert len(merged["commands"]) == 2 and merged["status"] == "finished"
    assert len(merged["rows"]) == len(a["rows"]) + 1
    assert merged["notes"] == ["a note"]
    assert "Commands:" in accuracy.render_markdown(merged)


@pytest.fixture(scope="module")
def speed():
    return _script("speed.py")


@pytest.fixture
def baseline(tmp_path) -> Path:
    """A --baseline-dir that speed.py accepts (a genie_hub package); the timing children are faked."""
    (tmp_path / "baseline" / "genie_hub").mkdir(parents=True)
    (tmp_path / "baseline" / "genie_hub" / "__init__.py").write_text("")
    return tmp_path / "baseline"


def test_speed_projection_and_table(speed):
    step = {"synthesis_step_s": 0.1, "reconstruction_step_s": 0.02}
    # paper: 8 batches x 4000 iterations x 0.1 s + 20000 steps x 0.02 s
    assert speed.projected(step, speed.PROFILES["paper"]) == pytest.approx(8 * 4000 * 0.1 + 20000 * 0.02)
    results = {"command": "c", "machine": "m", "threads": 2, "started": "s", "baseline": "abc", "current": "def",
               "repeats": 3, "rows": [{"model": "embedded", "version": "baseline", **step, "quick_min": 1.0,
                                       "paper_h": 1.0}],
               "speedups": {"embedded": {"synthesis": 2.5, "reconstruction": 1.25}}}
    text = speed.render(results)
    assert "| embedded | 2.50x | 1.25x |" in text and "Baseline `abc`" in text
    assert "main job" not in text and "keep freed memory" not in text and "batches in each timed call" not in text
    results["synthesis_batches"] = 2
    assert "Both versions synthesize 2 batches in each timed call" in speed.render(results)
    results["rows"].append({"model": "embedded", "version": "this checkout", **step, "quick_min": 1.0,
                            "paper_h": 1.0, "runs": [{"malloc_reuse": True}]})
    assert "The timed processes of this checkout keep freed memory for reuse (`genie_hub.runtime`" in speed.render(results)
    results["rows"].pop()
    results["main_job"] = {"runs": {"baseline": [{"wall_s": 80.0, "w4a4_top1": 92.1}],
                                    "this checkout": [{"wall_s": 30.0, "w4a4_top1": 92.2}]}, "speedup": 80 / 30}
    text = speed.render(results)
    assert "| this checkout | 30.0 | 30.0 | 92.20 |" in text and "Main job speed-up (baseline / this): 2.67x" in text
    assert "--compile" not in text and "device cpu" in text
    results.update(this_checkout_compile=True, device="cuda", mixed_precision="bf16", notes=["a note"])
    text = speed.render(results)
    assert "This checkout runs with `--compile`" in text and "device cuda; mixed precision bf16" in text
    assert text.rstrip().endswith("- a note")


def test_speed_refuses_a_step_time_that_measured_noise(speed):
    assert speed.checked_times({"synthesis_step_s": 0.1, "reconstruction_step_s": None})["synthesis_step_s"] == 0.1
    with pytest.raises(RuntimeError, match="reconstruction_step_s came out -0.002 s.*more --steps"):
        speed.checked_times({"synthesis_step_s": 0.1, "reconstruction_step_s": -0.002})


def test_speed_writes_every_finished_run_before_a_cut(speed, baseline, tmp_path, monkeypatch):
    """gpu_check.sh stops a stage at its time limit: the runs finished by then are on disk."""

    def child(code_dir, model, setting, threads, device):
        if Path(code_dir) != baseline:
            raise KeyboardInterrupt  # the stage's time limit, while this checkout's first run compiles
        return {"synthesis_step_s": 0.5, "reconstruction_step_s": 0.25}

    monkeypatch.setattr(speed, "run_child", child)
    monkeypatch.setattr(speed, "build_model", lambda name, cache: "embedded")
    output = tmp_path / "speed"
    with pytest.raises(KeyboardInterrupt):
        speed.main(["--baseline", "abc", "--baseline-dir", str(baseline), "--current", "mine", "--models",
                    "embedded", "--repeats", "2", "--device", "cpu", "--output", str(output)])
    results = json.loads(output.with_name("speed.json").read_text())
    assert [(row["version"], row["synthesis_step_s"]) for row in results["rows"]] == [("baseline", 0.5)]
    assert "| embedded | baseline | 0.5000 | 0.2500 |" in output.with_name("speed.md").read_text()


def test_speed_synthesis_only_times_no_reconstruction(speed, baseline, tmp_path, monkeypatch):
    """--synthesis-only (a compiled synthesis step on a short GPU lease): the children are told to skip
    reconstruction, and the table says what was not timed instead of projecting a profile without it."""
    settings = []

    def child(code_dir, model, setting, threads, device):
        settings.append(setting)
        return {"synthesis_step_s": 0.5 if Path(code_dir) == baseline else 0.25, "reconstruction_step_s": None}

    monkeypatch.setattr(speed, "run_child", child)
    monkeypatch.setattr(speed, "build_model", lambda name, cache: "embedded")
    output = tmp_path / "speed"
    assert speed.main(["--baseline", "abc", "--baseline-dir", str(baseline), "--current", "mine", "--models",
                       "embedded", "--repeats", "1", "--device", "cpu", "--compile", "--synthesis-only",
                       "--output", str(output)]) == 0
    assert all(setting["synthesis_only"] for setting in settings)
    assert [setting["base"].get("compile", False) for setting in settings] == [False, True]
    text = output.with_name("speed.md").read_text()
    assert "| embedded | 2.00x | not timed |" in text and "Synthesis steps only" in text
    assert "| embedded | this checkout | 0.2500 | not timed | not timed | not timed |" in text


def test_speed_keeps_going_past_a_failed_run_and_says_which(speed, baseline, tmp_path, monkeypatch):
    """A GPU lease is short: one version failing (or the main job) must not lose the others' numbers, the results
    say what failed, and the exit status too. Both versions' children are faked; the rest of main() runs as it
    does."""

    def child(code_dir, model, setting, threads, device):
        if Path(code_dir) == baseline:
            raise RuntimeError("timing run failed:\nTraceback ...\nValueError: baseline broke")
        return {"synthesis_step_s": 0.5, "reconstruction_step_s": 0.25}

    def main_job(code_dir, threads, output, device="cpu"):
        if Path(code_dir) == baseline:
            raise RuntimeError("the main job failed:\nno data")
        return {"wall_s": 30.0, "w4a4_top1": 92.2}

    monkeypatch.setattr(speed, "run_child", child)
    monkeypatch.setattr(speed, "run_main_job", main_job)
    monkeypatch.setattr(speed, "build_model", lambda name, cache: "embedded")
    output = tmp_path / "out" / "speed"
    assert speed.main(["--baseline", "abc", "--baseline-dir", str(baseline), "--current", "mine", "--models",
                       "embedded", "--repeats", "2", "--main-job", "--device", "cpu", "--output", str(output)]) == 1
    results = json.loads(output.with_name("speed.json").read_text())
    assert [row["version"] for row in results["rows"]] == ["this checkout"] and results["speedups"] == {}
    assert [f["what"] for f in results["failures"]] == ["embedded baseline", "main job baseline"]  # once each
    assert results["current"].startswith("mine") and results["main_job"]["speedup"] is None
    text = output.with_name("speed.md").read_text()
    assert "- embedded baseline: ValueError: baseline broke" in text and "- main job baseline: no data" in text
    assert "| this checkout | 30.0 | 30.0, 30.0 | 92.20, 92.20 |" in text and "Main job speed-up" not in text
    with pytest.raises(SystemExit, match="holds no genie_hub package"):
        speed.main(["--baseline", "abc", "--baseline-dir", str(tmp_path), "--output", str(output)])
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):  # it would time the CPU and call it cuda
        speed.main(["--baseline", "abc", "--baseline-dir", str(baseline), "--device", "cuda", "--output", str(output)])


def test_markdown_names_the_prior_of_a_model_without_batchnorm(accuracy):
    def results(prior=None):
        results = _results()
        results["rows"].append({"part": "embedded", "method": "zeroq", "bits": [4, 4], "seed": 0, "top1": 0.9,
                                "wall_s": 1.0})
        if prior:
            results["settings"]["embedded"]["prior"] = prior
        return results

    text = accuracy.render_markdown(results("patch-similarity"))
    assert "PSAQ-ViT-style" in text and "BN-distilled" not in text and "Final patch-similarity loss" in text
    assert "patch-similarity prior + Genie-M, zero-shot" in text
    assert "BN-distilled" in accuracy.render_markdown(results())  # BN models keep the ZeroQ-style label


def test_vit_base_check_runs_on_a_tiny_vit(tmp_path):
    import subprocess

    script = SCRIPT.parent / "vit_base_check.py"
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(script), "--tiny", "--steps", "1", "--unit-steps", "2", "--threads", "1",
                           "--output", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.with_suffix(".json").read_text())
    assert rows["synthesis_prior"] == "patch-similarity" and rows["unit"] == "vit.layers.0"
    assert "vit.layers.0.attention.quantized_matmul" in rows["unit_ops"]
    # step times are differences of two timed runs: finite, but on a loaded machine not even surely positive
    assert all(math.isfinite(rows[key]) for key in ("synthesis_step_s", "reconstruction_step_s"))
    assert rows["peak_rss_gib"] > 0
    assert "| synthesis (patch-similarity prior" in out.with_suffix(".md").read_text()


def test_probability_grid_compares_the_grids_on_a_small_vit(tmp_path):
    import subprocess

    bench = SCRIPT.parent
    sys.path.insert(0, str(bench))
    from train_default_model import build_model, build_processor

    model = build_model(8, [16], [1], family="vit")  # untrained: the script's bookkeeping, not its numbers
    model.save_pretrained(tmp_path / "vit")
    build_processor(0.286, 0.353).save_pretrained(tmp_path / "vit")
    out = tmp_path / "grid"
    proc = subprocess.run([sys.executable, str(bench / "probability_grid.py"), "--model", str(tmp_path / "vit"),
                           "--bits", "4", "--output", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.with_suffix(".json").read_text())["results"]
    assert [r["grid"] for r in rows] == ["attention in FP", "uniform on [0, 1]", "power of two",
                                         "genie_hub (log, r per halving)"]
    assert all(0 <= r["top1"] <= 1 for r in rows) and "| W4A4 | power of two |" in out.with_suffix(".md").read_text()


def test_the_fp_skip_ablation_restores_the_fp_skip(accuracy, monkeypatch):
    # The row that measures issue #10's fix 5 must really run without the block-entry quantizer.
    import torch

    from genie_hub import GenieConfig
    from genie_hub.quantization import prepare, prepare_model, quantized_ops
    from tiny_models import tiny_model

    monkeypatch.setattr(prepare, "_quantize_skip", prepare._quantize_skip)  # restored after the test
    model, x = tiny_model("mobilenet-v2"), torch.rand(2, 3, 32, 32)

    def hooked_blocks():
        q_model, _, _ = prepare_model(model, GenieConfig(weight_bits=4, act_bits=4), x)
        return [op.quantizes_input_of for op in quantized_ops(q_model).values() if op.quantizes_input_of]

    assert hooked_blocks()
    accuracy.apply_ablations(["fp-skip"])
    assert not hooked_blocks()


def test_merge_refuses_lite0_rows_scored_on_other_photos(accuracy):
    a, b = _results(), _results()
    b["settings"]["efficientnet"]["photos"] = ["a", "b", "c"]
    with pytest.raises(SystemExit, match="different photo sets"):
        accuracy.merge_results([a, b])


@pytest.mark.parametrize("key,value", [("model", "benchmarks/models/fashion-mnist-efficientnet"),
                                       ("synthesis_iterations", 800)])
def test_merge_refuses_fashion_mnist_rows_of_another_model_or_budget(accuracy, key, value):
    """The rows name no model: merged runs of two models (or budgets) would be pooled under the last one's name."""
    a, b = _results(), _results()
    b["settings"]["embedded"][key] = value
    with pytest.raises(SystemExit, match="different models or settings"):
        accuracy.merge_results([a, b])
    b["settings"]["embedded"] = {**a["settings"]["embedded"], "seeds": [2]}  # other seeds of one setup: merged
    assert len(accuracy.merge_results([a, b])["rows"]) == 2 * len(a["rows"])


@pytest.fixture(scope="module")
def variants():
    return _script("calibration_variants.py")


def test_calibration_variant_patches_change_synthesis_and_are_undone(variants):
    # Each synthesis variant must really change what is synthesized, and leave the library as it was.
    import torch

    from genie_hub import GenieConfig, synthesize
    from tiny_models import tiny_model

    config = GenieConfig.from_profile("quick", num_samples=4, synthesis_batch_size=4, synthesis_iterations=3)
    model = tiny_model("resnet-basic")

    def images():
        return synthesize(model, config, progress=False).pixel_values

    plain = images()
    for name in ("no-image-prior", "class-loss-0.1", "entropy-0.1", "jitter-2", "slack-0.3", "free-brightness",
                 "tails-0.1"):
        with variants.VARIANTS[name].synthesis_patch(-0.5, 0.5):
            assert not torch.allclose(images(), plain, atol=1e-4), name
    with variants.VARIANTS["clamp-during"].synthesis_patch(-0.5, 0.5):
        clamped = images()
    assert clamped.min() >= -0.5 and clamped.max() <= 0.5 and plain.abs().max() > 0.5
    assert torch.equal(images(), plain)


def test_slack_alignment_without_margin_is_the_library_loss(variants):
    import torch

    import genie_hub.synthesis.bn_stats as bn_stats

    bn = torch.nn.BatchNorm2d(5).eval()
    bn.running_mean.normal_(generator=torch.Generator().manual_seed(0))
    bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(8, 5, 4, 4, generator=torch.Generator().manual_seed(1))
    plain = bn_stats.bn_statistics_loss(x, bn, 2)
    with variants.with_slack(0.0):
        assert torch.allclose(bn_stats.bn_statistics_loss(x, bn, 2), plain)
    with variants.with_slack(0.1):
        assert (bn_stats.bn_statistics_loss(x, bn, 2) < plain).all()
    assert torch.equal(bn_stats.bn_statistics_loss(x, bn, 2), plain)


def test_tail_penalty_adds_only_excess_kurtosis(variants):
    import torch

    import genie_hub.synthesis.bn_stats as bn_stats

    bn = torch.nn.BatchNorm2d(2).eval()
    flat = torch.tensor([-1.0, 1.0]).repeat(64).view(8, 1, 4, 4)  # kurtosis 1: no penalty
    heavy = torch.zeros(8, 1, 4, 4)
    heavy[0, 0, 0, 0], heavy[1, 0, 0, 0] = 10.0, -10.0  # kurtosis 64
    x = torch.cat([flat, heavy], dim=1)
    plain = bn_stats.bn_statistics_loss(x, bn)
    with variants.with_tail_penalty(0.1):
        penalised = bn_stats.bn_statistics_loss(x, bn)
    assert torch.allclose(penalised - plain, torch.tensor(0.1 * (64 - 3) / 2))


@pytest.fixture(scope="module")
def calibration_gap():
    return _script("calibration_gap.py")


def test_calibration_gap_swaps_exactly_the_chosen_tensors(calibration_gap):
    import torch

    from genie_hub import GenieConfig, quantize
    from tiny_models import tiny_model

    model = tiny_model("resnet-basic")
    config = GenieConfig.from_profile("quick", num_samples=4, reconstruction_steps=2)
    a, b = (quantize(model, torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed)), config,
                     progress=False).model for seed in (0, 1))
    state_a, state_b = a.state_dict(), b.state_dict()
    acts = [k for k in state_a if calibration_gap._is_act_scale(k)]
    assert acts and any(not torch.equal(state_a[k], state_b[k]) for k in acts)

    whole = calibration_gap.swapped(a, b, ("",), "all").state_dict()
    assert all(torch.equal(whole[k], state_b[k]) for k in state_b)
    scales = calibration_gap.swapped(a, b, ("",), "act").state_dict()
    assert all(torch.equal(scales[k], (state_b if k in acts else state_a)[k]) for k in state_a)
    weights = calibration_gap.swapped(a, b, ("",), "weights").state_dict()
    assert all(torch.equal(weights[k], (state_a if k in acts else state_b)[k]) for k in state_a)
    assert all(torch.equal(a.state_dict()[k], state_a[k]) for k in state_a)  # the original is left as it was


def test_calibration_variants_table_pairs_seeds_with_the_genie_row(variants, tmp_path):
    import argparse

    jsonl = tmp_path / "v.jsonl"
    rows = [("genie", 0, 0.85), ("genie", 1, 0.86), ("flip", 0, 0.86), ("flip", 1, 0.86), ("real", 2, 0.9)]
    jsonl.write_text("".join(json.dumps({"variant": v, "seed": s, "top1": t, "command": "cmd"}) + "\n"
                             for v, s, t in rows))
    out = tmp_path / "v.md"
    variants.write_table(jsonl, out, argparse.Namespace(model="m", bits="4/4", num_samples=256, synthesis_batch_size=64,
                                                        synthesis_iterations=800, reconstruction_steps=200))
    table = out.read_text()
    assert "| flip | " in table and "| 86.00 ± 0.00 | +0.50 ± 0.71 |" in table  # paired: +1.00 and 0.00
    assert "| real | " in table and "| 90.00 ± 0.00 |  |" in table  # no seed shared with genie: no delta
    assert "# Calibration variants: m, W4A4" in table
    assert "256 images = batches of 64, 800 synthesis iterations, 200 reconstruction steps" in table
