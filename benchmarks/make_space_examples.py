"""Write the Space's Fashion-MNIST example images: one test image per class, the first one the embedded model
classifies correctly, as a 28x28 grayscale PNG named after its class.

    python benchmarks/make_space_examples.py    # -> spaces/genie-compare/examples/fashion-mnist/*.png

Fashion-MNIST (Zalando, MIT license) comes from the local IDX files (`apt-get install dataset-fashion-mnist`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from genie_hub.adapters import model_logits
from genie_hub.data.fashion_mnist import FASHION_MNIST_LABELS, load_fashion_mnist
from genie_hub.data.pixels import fashion_mnist_pixel_values
from genie_hub.loading import input_spec, load_model

OUTPUT = Path(__file__).resolve().parent.parent / "spaces" / "genie-compare" / "examples" / "fashion-mnist"


def file_name(label: str) -> str:
    return label.lower().replace("/", "-").replace(" ", "-") + ".png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    model, processor = load_model(None)
    images, labels = load_fashion_mnist("test")
    with torch.inference_mode():
        predicted = model_logits(model, fashion_mnist_pixel_values(images[:500], processor,
                                                                   input_spec(model, processor))).argmax(-1)
    args.output.mkdir(parents=True, exist_ok=True)
    for label, name in enumerate(FASHION_MNIST_LABELS):
        index = next(i for i in range(len(predicted)) if labels[i] == label and predicted[i] == label)
        Image.fromarray(images[index].numpy(), mode="L").save(args.output / file_name(name), optimize=True)
        print(f"{name}: test image {index}")


if __name__ == "__main__":
    main()
