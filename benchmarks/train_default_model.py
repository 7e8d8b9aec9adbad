"""Train the embedded default model: a small stock `ResNetForImageClassification` on Fashion-MNIST.

    python benchmarks/train_default_model.py [--epochs N] [--output DIR] [--threads T]
    python benchmarks/train_default_model.py --family regnet --output genie_hub/assets/fashion-mnist-regnet \
        --results benchmarks/results/fashion_mnist_regnet_training.json      # the zoo's other families
    python benchmarks/train_default_model.py --family vit --optimizer adamw --lr 2e-3 --weight-decay 0.05 \
        --hidden-sizes 64 --depths 4 --epochs 10 --output benchmarks/models/fashion-mnist-vit \
        --results benchmarks/results/fashion_mnist_vit_training.json         # BN-free models for accuracy.py
    python benchmarks/train_default_model.py --family efficientnet --epochs 6 --lr 0.02 \
        --output benchmarks/models/fashion-mnist-efficientnet \
        --results benchmarks/results/fashion_mnist_efficientnet_training.json  # depthwise, squeeze-excite (#10)

Writes model.safetensors + config.json + preprocessor_config.json to genie_hub/assets/fashion-mnist-resnet/
(the folder genie_hub.loading.DEFAULT_MODEL_DIR points at) and records the command, time, test top-1 and
parameter count in benchmarks/results/default_model_training.json.

Deterministic: fixed seeds, `torch.use_deterministic_algorithms(True)` and one intra-op thread by default
(CPU reductions may sum in another order with another thread count, so record and reuse `--threads`). One
thread is also the fastest choice on a shared 2-core machine (about 16 s per epoch, ~6 min for 20 epochs).
Needs the local Fashion-MNIST IDX files (`apt-get install dataset-fashion-mnist`); no network.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from genie_hub.data import FASHION_MNIST_LABELS, fashion_mnist_pixel_values, load_fashion_mnist  # noqa: E402
from genie_hub.evaluation import evaluate_top1  # noqa: E402
from genie_hub.loading import DEFAULT_MODEL_DIR, input_spec  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "default_model_training.json"


FAMILIES = ("resnet", "regnet", "mobilenet-v2", "efficientnet", "vit", "convnext")


def build_model(embedding_size: int, hidden_sizes: list[int], depths: list[int], family: str = "resnet"):
    """A stock transformers classifier of `family` for 1-channel 28 px inputs (no custom code)."""
    from transformers import (ConvNextConfig, ConvNextForImageClassification, EfficientNetConfig,
                              EfficientNetForImageClassification, MobileNetV2Config, MobileNetV2ForImageClassification,
                              RegNetConfig, RegNetForImageClassification, ResNetConfig, ResNetForImageClassification,
                              ViTConfig, ViTForImageClassification)

    labels = dict(id2label={i: name for i, name in enumerate(FASHION_MNIST_LABELS)},
                  label2id={name: i for i, name in enumerate(FASHION_MNIST_LABELS)})
    if family == "regnet":
        return RegNetForImageClassification(RegNetConfig(
            num_channels=1, embedding_size=embedding_size, hidden_sizes=list(hidden_sizes), depths=list(depths),
            groups_width=16, layer_type="y", **labels))
    if family == "mobilenet-v2":
        return MobileNetV2ForImageClassification(MobileNetV2Config(
            num_channels=1, image_size=28, depth_multiplier=0.5, **labels))
    if family == "efficientnet":  # B0's first four stages (MBConv, squeeze-excite, swish): 14, 14, 7, 4, 4 px
        model = EfficientNetForImageClassification(EfficientNetConfig(
            num_channels=1, image_size=28, width_coefficient=1.0, depth_coefficient=1.0, kernel_sizes=[3, 3, 5, 3],
            in_channels=[32, 16, 24, 40], out_channels=[16, 24, 40, 80], strides=[1, 2, 2, 1],
            num_block_repeats=[1, 2, 2, 2], expand_ratios=[1, 6, 6, 6], hidden_dim=1280, dropout_rate=0.2,
            drop_connect_rate=0.1, batch_norm_momentum=0.1, **labels))  # torch's momentum: the new batch's weight
        # transformers draws BatchNorm scales from N(0, 0.02) (its classes are made for loading weights): the
        # signal then shrinks ~50x per layer and nothing trains. Train from torchvision's EfficientNet init.
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                torch.nn.init.ones_(module.weight)
            elif isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_out")
        return model
    if family == "vit":  # 7x7 patches of 4 px + [CLS]; LayerNorm, no BatchNorm
        return ViTForImageClassification(ViTConfig(
            num_channels=1, image_size=28, patch_size=4, hidden_size=hidden_sizes[-1], num_hidden_layers=sum(depths),
            num_attention_heads=4, intermediate_size=2 * hidden_sizes[-1], **labels))
    if family == "convnext":  # a 2 px patchify stem, then stages at 14, 7 and 3 px
        return ConvNextForImageClassification(ConvNextConfig(
            num_channels=1, image_size=28, patch_size=2, num_stages=len(hidden_sizes), hidden_sizes=list(hidden_sizes),
            depths=list(depths), **labels))
    config = ResNetConfig(
        num_channels=1,
        embedding_size=embedding_size,
        hidden_sizes=list(hidden_sizes),
        depths=list(depths),
        layer_type="basic",
        hidden_act="relu",
        downsample_in_first_stage=False,
        **labels,
    )
    return ResNetForImageClassification(config)


def build_processor(mean: float, std: float):
    from transformers import ViTImageProcessor

    return ViTImageProcessor(
        do_resize=True, size={"height": 28, "width": 28}, resample=2,  # PIL bilinear; a no-op on 28x28 inputs
        do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=[mean], image_std=[std],
    )


def augment(batch: torch.Tensor, generator: torch.Generator, pad: int) -> torch.Tensor:
    """Random translation by up to `pad` pixels (zero fill, i.e. background) + random horizontal flip, on uint8."""
    n, h, w = batch.shape
    padded = F.pad(batch, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    out = padded[torch.arange(n)[:, None, None], rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--pad", type=int, default=2, help="max random translation in pixels")
    parser.add_argument("--embedding-size", type=int, default=32)
    parser.add_argument("--hidden-sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 1, 1])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", choices=FAMILIES, default="resnet",
                        help="architecture (default resnet: the embedded model); embedding/hidden sizes and depths "
                             "apply to resnet and regnet; hidden sizes and depths to convnext; for vit the last "
                             "hidden size is the width and the depths sum to the number of layers")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                        help="sgd (Nesterov momentum 0.9; the CNNs) or adamw (the transformer families)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    start, cpu_start = time.time(), time.process_time()

    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    pixels = train_x.to(torch.float64) / 255.0
    mean, std = round(pixels.mean().item(), 4), round(pixels.std().item(), 4)
    processor = build_processor(mean, std)
    test_pixels = fashion_mnist_pixel_values(test_x, processor)

    model = build_model(args.embedding_size, args.hidden_sizes, args.depths, args.family)
    num_params = sum(p.numel() for p in model.parameters())
    print(f"params: {num_params}  mean/std: {mean}/{std}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=args.lr)
    else:
        optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, nesterov=True)
    steps_per_epoch = math.ceil(train_x.shape[0] / args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=total_steps,
                                                    pct_start=0.15, div_factor=10.0, final_div_factor=100.0)
    generator = torch.Generator().manual_seed(args.seed)
    history = []
    for epoch in range(args.epochs):
        model.train()
        t0 = time.time()
        order = torch.randperm(train_x.shape[0], generator=generator)
        running, seen = 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * args.batch_size:(step + 1) * args.batch_size]
            batch = augment(train_x[idx], generator, args.pad) if args.pad else train_x[idx]
            logits = model(pixel_values=fashion_mnist_pixel_values(batch, processor)).logits
            loss = F.cross_entropy(logits, train_y[idx], label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item() * idx.numel()
            seen += idx.numel()
        model.eval()
        acc = evaluate_top1(model, test_pixels, test_y)
        history.append({"epoch": epoch + 1, "train_loss": round(running / seen, 4), "test_top1": round(acc, 4),
                        "seconds": round(time.time() - t0, 1)})
        print(json.dumps(history[-1]), flush=True)

    model.eval()
    final_acc = evaluate_top1(model, test_pixels, test_y)
    elapsed, cpu_seconds = time.time() - start, time.process_time() - cpu_start
    args.output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.output, safe_serialization=True)
    processor.save_pretrained(args.output)
    for path in args.output.iterdir():  # safetensors are written 0600; the asset must be readable by any user
        if path.is_file():
            path.chmod(0o644)

    # Sanity: the saved processor maps one grayscale PIL image to [1, 1, 28, 28].
    from PIL import Image
    from transformers import AutoImageProcessor

    reloaded = AutoImageProcessor.from_pretrained(args.output)
    shape = tuple(reloaded(images=Image.fromarray(test_x[0].numpy()), return_tensors="pt")["pixel_values"].shape)
    assert shape == (1, 1, 28, 28), shape
    spec = input_spec(model, reloaded)

    weights = args.output / "model.safetensors"
    record = {
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO), *sys.argv[1:]]),
        "args": {k: (_display_path(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "architecture": type(model).__name__,
        "config": model.config.to_diff_dict(),
        "input_spec": spec.to_dict(),
        "num_parameters": num_params,
        "safetensors_bytes": weights.stat().st_size,
        "train_seconds": round(elapsed, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),  # summed over threads; wall time depends on other load
        "test_top1": round(final_acc, 4),
        "test_images": int(test_y.numel()),
        "history": history,
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(record, indent=2) + "\n")
    write_model_card(args.output, record)
    print(json.dumps({k: record[k] for k in ("num_parameters", "safetensors_bytes", "train_seconds", "test_top1")}))
    return 0


def write_model_card(output: Path, record: dict) -> Path:
    """The asset's model card (README.md), from its training record: published as genie-hub/<folder name>."""
    from huggingface_hub import EvalResult, ModelCardData

    from genie_hub import REPOSITORY_URL
    from genie_hub.fileio import write_bytes
    from genie_hub.loading import EMBEDDED_HUB_NAMESPACE

    output = Path(output)
    repo_id = f"{EMBEDDED_HUB_NAMESPACE}/{output.name}"
    top1 = round(100 * record["test_top1"], 2)
    data = ModelCardData(
        license="apache-2.0", library_name="transformers", pipeline_tag="image-classification",
        datasets=["zalando-datasets/fashion_mnist"], tags=["genie_hub", "fashion-mnist", "image-classification"],
        model_name=output.name, eval_results=[EvalResult(
            task_type="image-classification", dataset_type="zalando-datasets/fashion_mnist",
            dataset_name="Fashion-MNIST", dataset_split="test", metric_type="accuracy", metric_name="top-1 accuracy",
            metric_value=top1, verified=False)])
    args = record["args"]
    text = f"""---
{data.to_yaml()}
---

# {output.name}

A small `{record["architecture"]}` ({record["num_parameters"]:,} parameters, {record["safetensors_bytes"]:,} bytes of
float32 weights) trained from scratch on Fashion-MNIST (28x28 grayscale, 10 classes): **{top1} % top-1** on the
{record["test_images"]:,} test images. It ships inside [genie_hub]({REPOSITORY_URL}) (`genie_hub/assets/{output.name}`)
as an FP32 model to quantize offline; `genie_hub quantize` without a model quantizes the embedded ResNet.

```python
import numpy as np
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

model = AutoModelForImageClassification.from_pretrained("{repo_id}")
processor = AutoImageProcessor.from_pretrained("{repo_id}")
image = np.asarray(Image.open("image.png").convert("L"))[..., None]  # H x W x 1, which every transformers 5 reads
inputs = processor(images=image, return_tensors="pt")
print(model.config.id2label[model(**inputs).logits.argmax(-1).item()])
```

The model reads one-channel (grayscale) images. transformers' `pipeline("image-classification")` converts
every image to RGB, which this model cannot read, so call the processor and the model as above.

## Training

{args["epochs"]} epochs of {"AdamW" if args.get("optimizer") == "adamw" else "SGD"} (batch {args["batch_size"]}, one-cycle learning rate up to {args["lr"]}, weight decay
{args["weight_decay"]}, random {args["pad"]}-pixel shifts), seed {args["seed"]}, {args["threads"]} CPU thread(s):
{record["train_seconds"] / 60:.1f} min on {record["machine"]} with torch {record["torch"]}. Inputs are normalized
with mean {record["input_spec"]["mean"]} and std {record["input_spec"]["std"]}.

```bash
{record["command"]}
```
"""
    write_bytes(output / "README.md", text.encode("utf-8"))
    return output / "README.md"


if __name__ == "__main__":
    raise SystemExit(main())
