"""Build a small, realistic `genie_hub quantize --output-dir OUT` folder for tests of the publishing step.

Layout (as produced by the real pipeline, minus the quantization itself):
  OUT/model/    a tiny random ResNetForImageClassification quantized to a Genie W4A4 checkpoint (round-to-nearest),
                ViTImageProcessor, README.md model card
  OUT/dataset/  README.md dataset card + data/train-00000-of-00001.parquet (image PNG, pixel_values float32
                Array3D, batch_index int32)
  OUT/run.json  {"base_model", "weight_bits", "act_bits", "method", ...}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

IMAGE_SIZE = 32
NUM_IMAGES = 6
BASE_MODEL = "microsoft/resnet-50"


def tiny_model(seed: int = 0):
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                          num_labels=3, id2label={0: "cat", 1: "dog", 2: "bird"},
                          label2id={"cat": 0, "dog": 1, "bird": 2})
    model = ResNetForImageClassification(config).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a lost buffer would change the logits
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    return model


def build_output(out: Path, seed: int = 0, with_dataset: bool = True) -> Path:
    """Write OUT/model, OUT/dataset (optional) and OUT/run.json under `out`; return `out`."""
    from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData
    from transformers import ViTImageProcessor

    import torch

    from genie_hub import GenieConfig, quantize, save_quantized

    out = Path(out)
    model_dir = out / "model"
    model = tiny_model(seed)
    calibration = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))
    result = quantize(model, calibration, GenieConfig.from_profile("quick", reconstruction_steps=0),
                      range_init="minmax", progress=False)
    card_data = ModelCardData(
        base_model=BASE_MODEL, base_model_relation="quantized", library_name="transformers",
        pipeline_tag="image-classification", license="apache-2.0",
        tags=["quantized", "4-bit", "genie", "zero-shot-quantization"],
    )
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n# Tiny ResNet, Genie W4A4\n\nTest fixture card.\n")
    save_quantized(result, model_dir, processor=ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
                   extra_files={"README.md": str(card).encode("utf-8"),
                                "genie_extra.py": b"# a custom module shipped with the model\nVALUE = 1\n"})

    if with_dataset:
        from datasets import Array3D, Dataset, Features, Image, Value

        rng = np.random.default_rng(seed)
        pixels = rng.standard_normal((NUM_IMAGES, 3, IMAGE_SIZE, IMAGE_SIZE)).astype("float32")
        images = [(rng.random((IMAGE_SIZE, IMAGE_SIZE, 3)) * 255).astype("uint8") for _ in range(NUM_IMAGES)]
        features = Features({"image": Image(), "pixel_values": Array3D(shape=(3, IMAGE_SIZE, IMAGE_SIZE),
                                                                        dtype="float32"),
                             "batch_index": Value("int32")})
        dataset = Dataset.from_dict({"image": images, "pixel_values": pixels,
                                     "batch_index": [i // 2 for i in range(NUM_IMAGES)]}, features=features)
        data_dir = out / "dataset" / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        dataset.to_parquet(str(data_dir / "train-00000-of-00001.parquet"))
        ds_card = DatasetCard(
            "---\n" + DatasetCardData(task_categories=["image-classification"], tags=["synthetic"],
                                      annotations_creators=["machine-generated"], license="apache-2.0").to_yaml()
            + "\n---\n\n# Genie synthetic calibration set\n\nFor calibration only.\n")
        ds_card.save(out / "dataset" / "README.md")

    run = {"base_model": BASE_MODEL, "weight_bits": 4, "act_bits": 4, "method": "genie", "seed": seed}
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    return out


def tree_hashes(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root (to prove a folder was left byte-identical)."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def fixed_input(seed: int = 123):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)


def edit_weights(folder: Path, edit) -> None:
    """Edit the tensors of a saved Genie checkpoint in place, keeping its metadata (so only the edit is wrong)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = Path(folder) / "genie_model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata=metadata)


def make_genie_run(out: Path, synthetic: bool = True) -> Path:
    """Turn a `build_output` folder into what `genie_hub quantize` leaves: a complete run.json (read from the
    checkpoint it describes) and both cards rendered from it, their sha256 recorded as the pipeline does."""
    from genie_hub import GenieConfig
    from genie_hub.cards import public_names, render_dataset_card, render_model_card
    from genie_hub.outputs import RunRecord, card_sha256

    out = Path(out)
    quant = json.loads((out / "model" / "config.json").read_text())["quantization_config"]
    layers = quant["layers"]
    run = RunRecord(base_model=BASE_MODEL, weight_bits=quant["weight_bits"], act_bits=quant["act_bits"],
                    config=GenieConfig.from_profile("quick", reconstruction_steps=0).to_dict(),
                    input_spec={"channels": 3, "height": IMAGE_SIZE, "width": IMAGE_SIZE, "mean": [0.5] * 3,
                                "std": [0.5] * 3},
                    layers=layers, units=[{"kind": "layer", "name": name, "ops": [name]} for name in layers],
                    calibration_source="synthetic (Genie-D)", num_calibration_images=NUM_IMAGES,
                    has_image_processor=True, license="apache-2.0", command="genie_hub quantize microsoft/resnet-50",
                    machine="CPU", versions={"genie_hub": "test"})
    if synthetic:
        parquet = out / "dataset" / "data" / "train-00000-of-00001.parquet"
        run.synthetic = {"num_samples": NUM_IMAGES, "shape": [3, IMAGE_SIZE, IMAGE_SIZE], "prior": "bn-statistics",
                         "loss_summary": "1.0 -> 0.5", "dataset": {
                             "data_files": "data/train-*", "download_size": parquet.stat().st_size,
                             "num_bytes": parquet.stat().st_size, "num_examples": NUM_IMAGES, "storage": "exact",
                             "features": {"image": {"_type": "Image"}, "pixel_values": {
                                 "_type": "Array3D", "dtype": "float32", "shape": [3, IMAGE_SIZE, IMAGE_SIZE]},
                                 "batch_index": {"_type": "Value", "dtype": "int32"}}}}
    else:
        run.zero_shot, run.calibration_source = False, "my-photos"
    run.public = public_names(run)._asdict()
    local_id = out.resolve().name
    (out / "model" / "README.md").write_text(str(render_model_card(run, local_id)))
    if synthetic:
        (out / "dataset" / "README.md").write_text(str(render_dataset_card(run, f"{local_id}-calibration", None)))
    run.cards = {kind: digest for kind, digest in (("model", card_sha256(out / "model" / "README.md")),
                                                   ("dataset", card_sha256(out / "dataset" / "README.md"))) if digest}
    run.save(out / "run.json")
    return out
