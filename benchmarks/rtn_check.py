"""Quick round-to-nearest (RTN) baseline: how much plain min/max fake quantization hurts a model.

    python benchmarks/rtn_check.py [MODEL_DIR] [--calib 256] [--bits 4/4 8/8 ...] [--no-fold]

Weights: BatchNorm folded into the preceding conv (as on deployment; --no-fold keeps BN in float), then
per-output-channel asymmetric min/max RTN. Activations: per-tensor asymmetric min/max RTN of the input of every
Conv2d/Linear except the first conv (the image itself), ranges calibrated on `--calib` random training images.
Evaluates top-1 on the full Fashion-MNIST test split. Defaults to the embedded default model.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genie_hub.data import fashion_mnist_pixel_values, load_fashion_mnist  # noqa: E402
from genie_hub.evaluation import agreement, evaluate_top1, predict_logits  # noqa: E402
from genie_hub.loading import load_model  # noqa: E402


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d inside the same parent (HF ResNet: `convolution`
    then `normalization`) into that conv; the BN becomes Identity. Returns how many were folded."""
    folded = 0
    for parent in model.modules():
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                new_conv = copy.deepcopy(conv)
                new_conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1))
                new_conv.bias = nn.Parameter(bn.bias + (bias - bn.running_mean) * scale)
                setattr(parent, conv_name, new_conv)
                setattr(parent, bn_name, nn.Identity())
                folded += 1
    return folded


def fake_quant(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    levels = 2 ** bits - 1
    lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
    scale = ((hi - lo) / levels).clamp_min(1e-12)
    zero = torch.round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zero, 0, levels) - zero) * scale


def quantize_weights(model: nn.Module, bits: int) -> None:
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            w = module.weight.data
            flat = w.flatten(1)
            shape = (-1,) + (1,) * (w.ndim - 1)
            module.weight.data = fake_quant(w, flat.min(1).values.view(shape), flat.max(1).values.view(shape), bits)


class ActQuant:
    """Forward pre-hooks recording per-tensor input ranges (calibration), then fake-quantizing the inputs."""

    def __init__(self, model: nn.Module, bits: int):
        layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        self.bits, self.ranges, self.calibrating = bits, {}, True
        self.handles = [m.register_forward_pre_hook(self._hook) for m in layers[1:]]  # not the image input

    def _hook(self, module, args):
        x = args[0]
        if self.calibrating:
            lo, hi = self.ranges.get(module, (x.min(), x.max()))
            self.ranges[module] = (torch.minimum(lo, x.min()), torch.maximum(hi, x.max()))
            return None
        lo, hi = self.ranges[module]
        return (fake_quant(x, lo, hi, self.bits),) + tuple(args[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--bits", nargs="+", default=["8/8", "4/8", "8/4", "4/4"], help="W/A pairs")
    parser.add_argument("--no-fold", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    model, processor = load_model(args.model)
    test_x, test_y = load_fashion_mnist("test")
    train_x, _ = load_fashion_mnist("train")
    test_pixels = fashion_mnist_pixel_values(test_x, processor)
    idx = torch.randperm(train_x.shape[0], generator=torch.Generator().manual_seed(args.seed))[:args.calib]
    calib = fashion_mnist_pixel_values(train_x[idx], processor)

    fp_logits = predict_logits(model, test_pixels)
    results = {"model": args.model or "default", "fold_bn": not args.no_fold, "calib_images": args.calib,
               "test_images": int(test_y.numel()),
               "fp32_top1": (fp_logits.argmax(-1) == test_y).float().mean().item()}
    for pair in args.bits:
        w_bits, a_bits = (int(v) for v in pair.split("/"))
        q = copy.deepcopy(model).eval()
        if not args.no_fold:
            results["bn_folded"] = fold_batchnorm(q)
        quantize_weights(q, w_bits)
        hooks = ActQuant(q, a_bits)
        with torch.no_grad():
            q(pixel_values=calib)
        hooks.calibrating = False
        q_logits = predict_logits(q, test_pixels)
        results[f"W{w_bits}A{a_bits}"] = {"top1": evaluate_top1(q, test_pixels, test_y),
                                          **{k: v for k, v in agreement(fp_logits, q_logits).items()
                                             if k != "num_samples"}}
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
