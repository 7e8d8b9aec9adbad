"""Which grid for attention probabilities? Top-1 of a Fashion-MNIST ViT with each candidate (issue #11).

    python benchmarks/probability_grid.py [--model benchmarks/models/fashion-mnist-vit] [--bits 8 4]

For each activation bit-width: W{bits}A{bits} with Lp-initialized ranges and no reconstruction (so only the grids
differ), calibrated on 256 real training images, top-1 on the first 5000 test images, for
- attention left in FP (`--override '*.quantized_matmul=/fp'`),
- a uniform grid on [0, 1] (step 1 / (2^a - 1)),
- a power-of-two grid (2^-k, FQ-ViT's Log2 quantizer),
- genie_hub's grid (`attention.quantize_probabilities`: r = max(1, (2^a-2)//16) codes per halving).
The model comes from `benchmarks/train_default_model.py --family vit` (README, Results). One thread; writes
<output>.md and <output>.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402


def uniform(probs: torch.Tensor, bits: int) -> torch.Tensor:
    step = 1 / (2**bits - 1)
    return probs + (torch.round(probs / step) * step - probs).detach()


def power_of_two(probs: torch.Tensor, bits: int) -> torch.Tensor:
    code = torch.clamp(torch.round(-torch.log2(probs)), 0, 2**bits - 1)
    quantized = torch.where(code >= 2**bits - 1, torch.zeros_like(probs), torch.exp2(-code))
    return probs + (quantized - probs).detach()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="benchmarks/models/fashion-mnist-vit")
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4])
    parser.add_argument("--output", default="benchmarks/results/probability_grid")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from genie_hub import GenieConfig, load_model, quantize
    from genie_hub.data import fashion_mnist_pixel_values, load_calibration_images, load_fashion_mnist
    from genie_hub.evaluation import evaluate_top1
    from genie_hub.loading import input_spec
    from genie_hub.quantization import attention

    model, processor = load_model(args.model)
    spec = input_spec(model, processor)
    images, labels = load_fashion_mnist("test")
    test_x, test_y = fashion_mnist_pixel_values(images[:5000], processor, spec), labels[:5000]
    real = load_calibration_images("fashion-mnist", processor, spec, 256, 0)
    rows = {"command": "python " + " ".join(shlex.quote(a) for a in ["benchmarks/probability_grid.py",
                                                                     *(argv if argv is not None else sys.argv[1:])]),
            "fp32": evaluate_top1(model, test_x, test_y), "results": []}
    genie_grid = attention.quantize_probabilities
    grids = {"attention in FP": None, "uniform on [0, 1]": uniform, "power of two": power_of_two,
             "genie_hub (log, r per halving)": genie_grid}
    try:
        for bits in args.bits:
            for name, grid in grids.items():
                overrides = {"*.quantized_matmul": {"act": None}} if grid is None else {}
                attention.quantize_probabilities = grid or genie_grid
                config = GenieConfig.from_profile("quick", weight_bits=bits, act_bits=bits, reconstruction_steps=0,
                                                  overrides=overrides)
                q = quantize(model, real, config, progress=False).model
                top1 = evaluate_top1(q, test_x, test_y)
                rows["results"].append({"bits": bits, "grid": name, "top1": top1})
                print(f"W{bits}A{bits} {name}: {top1 * 100:.2f} %", flush=True)
    finally:
        attention.quantize_probabilities = genie_grid
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    table = "\n".join(f"| W{r['bits']}A{r['bits']} | {r['grid']} | {r['top1'] * 100:.2f} |" for r in rows["results"])
    output.with_suffix(".md").write_text(
        f"# Attention-probability grids on the Fashion-MNIST ViT\n\n`{rows['command']}`\n\n"
        f"Lp ranges, no reconstruction, 256 real calibration images, top-1 on 5000 test images "
        f"(FP32 {rows['fp32'] * 100:.2f} %).\n\n| bits | probability grid | top-1 (%) |\n|---|---|---|\n{table}\n")
    print(f"wrote {output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
