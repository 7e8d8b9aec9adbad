"""Regenerate the cards of the embedded example models (and, on request, the quantized example) through
genie_hub's own code.

    python benchmarks/build_example_assets.py              # the cards only (seconds)
    python benchmarks/build_example_assets.py --requantize # + rerun the W4A4 example (quick profile, 2-20 min)

FP32 assets (genie_hub/assets/fashion-mnist-resnet, -regnet): their README.md is written from the training
record in benchmarks/results/ (`train_default_model.write_model_card`, what training writes). The W4A4 example
(genie_hub/assets/fashion-mnist-resnet-genie-w4a4): its card is rendered by `genie_hub.cards.render_model_card`
for the Hub ids the assets are published under, from the run record of the job that made the shipped weights
(benchmarks/results/default_model_quick_w4a4_run.json), with `--base-model genie-hub/fashion-mnist-resnet`.
`--requantize` instead reruns that job (`genie_hub quantize --profile quick --base-model
genie-hub/fashion-mnist-resnet`), replaces the asset's folder whole and writes the new record there.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

FP32_RECORDS = {"fashion-mnist-resnet": "default_model_training.json",
                "fashion-mnist-regnet": "fashion_mnist_regnet_training.json"}
COMMAND = "genie_hub quantize --profile quick --base-model genie-hub/fashion-mnist-resnet"


def fp32_cards() -> None:
    from train_default_model import write_model_card

    from genie_hub.loading import ASSETS_DIR

    for asset, record in FP32_RECORDS.items():
        path = write_model_card(ASSETS_DIR / asset, json.loads((REPO / "benchmarks" / "results" / record).read_text()))
        print(f"wrote {path.relative_to(REPO)}")


RECORD = REPO / "benchmarks" / "results" / "default_model_quick_w4a4_run.json"


def quantized_card() -> None:
    """The W4A4 example's card, from the record of the run that made its weights (the weights stay)."""
    from genie_hub.cards import base_license, render_model_card
    from genie_hub.fileio import write_bytes
    from genie_hub.loading import DEFAULT_QUANTIZED_DIR
    from genie_hub.outputs import RunRecord
    from genie_hub.space import DEFAULT_FP32_HUB_ID, DEFAULT_QUANTIZED_HUB_ID

    run = RunRecord.load(RECORD)
    run.base_model_id = DEFAULT_FP32_HUB_ID  # the embedded base is published under this id
    run.license = run.license or base_license(DEFAULT_FP32_HUB_ID)
    card = render_model_card(run, DEFAULT_QUANTIZED_HUB_ID, f"{DEFAULT_QUANTIZED_HUB_ID}-calibration")
    write_bytes(DEFAULT_QUANTIZED_DIR / "README.md", str(card).encode("utf-8"))
    print(f"wrote {(DEFAULT_QUANTIZED_DIR / 'README.md').relative_to(REPO)} from {RECORD.relative_to(REPO)}")


def quantized_example() -> None:
    import shutil

    from genie_hub import GenieConfig
    from genie_hub.cards import render_model_card
    from genie_hub.fileio import replace_dir, staging_dir
    from genie_hub.loading import DEFAULT_QUANTIZED_DIR
    from genie_hub.outputs import RunRecord
    from genie_hub.pipeline import run_quantization
    from genie_hub.space import DEFAULT_FP32_HUB_ID, DEFAULT_QUANTIZED_HUB_ID

    with tempfile.TemporaryDirectory() as tmp:
        out = run_quantization(None, GenieConfig.from_profile("quick"), output_dir=Path(tmp) / DEFAULT_QUANTIZED_DIR.name,
                               base_model_id=DEFAULT_FP32_HUB_ID, command=COMMAND, progress=False)
        run = RunRecord.load(out / "run.json")
        card = render_model_card(run, DEFAULT_QUANTIZED_HUB_ID, f"{DEFAULT_QUANTIZED_HUB_ID}-calibration")
        with staging_dir(DEFAULT_QUANTIZED_DIR.with_name(f".{DEFAULT_QUANTIZED_DIR.name}.staging")) as staging:
            for path in (out / "model").iterdir():
                shutil.copy2(path, staging / path.name)
            (staging / "README.md").write_text(str(card), encoding="utf-8")
            for path in staging.iterdir():
                path.chmod(0o644)
            replace_dir(staging, DEFAULT_QUANTIZED_DIR)
        shutil.copy2(out / "run.json", RECORD)
    print(f"wrote {DEFAULT_QUANTIZED_DIR.relative_to(REPO)}: {run.results_protocol}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requantize", action="store_true", help="rerun the W4A4 example job (new weights)")
    args = parser.parse_args()
    fp32_cards()  # first: the quantized card takes its license from the base model's card
    if args.requantize:
        quantized_example()
    else:
        quantized_card()


if __name__ == "__main__":
    main()
