"""Tiny random transformers classifiers of each family genie_hub supports, with realistic BN statistics.

A freshly initialized model has running mean 0 / var 1 everywhere, which any normalized input already
matches; running a few batches of structured images through it in train mode gives each BatchNorm
statistics that synthesis actually has to work for (and that real-looking inputs can reach).
"""

from __future__ import annotations

import torch
from transformers import (ConvNextConfig, ConvNextForImageClassification, DeiTConfig, DeiTForImageClassification,
                          EfficientNetConfig, EfficientNetForImageClassification, MobileNetV1Config,
                          MobileNetV1ForImageClassification, MobileNetV2Config, MobileNetV2ForImageClassification,
                          RegNetConfig, RegNetForImageClassification, ResNetConfig, ResNetForImageClassification,
                          SwinConfig, SwinForImageClassification, ViTConfig, ViTForImageClassification)

IMAGE_SIZE = 32
NUM_LABELS = 5


def _config(family: str, channels: int):
    common = dict(num_channels=channels, num_labels=NUM_LABELS, image_size=IMAGE_SIZE)
    if family == "resnet-basic":
        return ResNetForImageClassification, ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[2, 1],
                                                          layer_type="basic", **common)
    if family == "resnet-bottleneck":
        return ResNetForImageClassification, ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 2],
                                                          layer_type="bottleneck", **common)
    if family == "regnet":
        return RegNetForImageClassification, RegNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2],
                                                          groups_width=8, layer_type="y", **common)
    if family == "mobilenet-v1":
        return MobileNetV1ForImageClassification, MobileNetV1Config(depth_multiplier=0.25, **common)
    if family == "mobilenet-v2":
        return MobileNetV2ForImageClassification, MobileNetV2Config(depth_multiplier=0.25, **common)
    if family == "efficientnet":
        return EfficientNetForImageClassification, EfficientNetConfig(
            width_coefficient=0.25, depth_coefficient=0.5, hidden_dim=320, **common)
    vit_like = dict(patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    if family == "vit":
        return ViTForImageClassification, ViTConfig(**vit_like, **common)
    if family == "deit":
        return DeiTForImageClassification, DeiTConfig(**vit_like, **common)
    if family == "swin":
        return SwinForImageClassification, SwinConfig(patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[2, 2],
                                                      window_size=4, **common)
    if family == "convnext":
        return ConvNextForImageClassification, ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1],
                                                              **common)
    raise ValueError(family)


FAMILIES = ["resnet-basic", "resnet-bottleneck", "regnet", "mobilenet-v1", "mobilenet-v2", "efficientnet"]
"""CNNs with BatchNorm."""
TRANSFORMER_FAMILIES = ["vit", "deit", "swin", "convnext"]
"""Hub classifiers without BatchNorm (LayerNorm): ViT, DeiT, Swin (attention) and ConvNeXt (a LayerNorm CNN)."""


def structured_images(count: int, channels: int, generator: torch.Generator) -> torch.Tensor:
    """Sparse 'object' images: a few bright rectangles on a dark background, standardized per image and
    channel. Their feature statistics differ clearly from noise, as real photos' do."""
    images = torch.zeros(count, channels, IMAGE_SIZE, IMAGE_SIZE)
    for i in range(count):
        for _ in range(3):
            y, x = torch.randint(0, IMAGE_SIZE - 8, (2,), generator=generator).tolist()
            h, w = torch.randint(3, 9, (2,), generator=generator).tolist()
            images[i, :, y:y + h, x:x + w] += torch.rand(channels, 1, 1, generator=generator) + 0.5
    flat = images.flatten(2)
    return ((flat - flat.mean(2, keepdim=True)) / (flat.std(2, keepdim=True) + 1e-6)).view_as(images)


def tiny_model(family: str = "resnet-basic", channels: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cls, config = _config(family, channels)
    model = cls(config)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batches below
            module.reset_running_stats()
    generator = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(pixel_values=structured_images(16, channels, generator))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.1
    return model.eval()


def save_tiny_model(path, family: str = "resnet-basic", channels: int = 3):
    """Save a tiny model plus a matching image processor, as a local 'Hub' folder."""
    from transformers import ViTImageProcessor

    model = tiny_model(family, channels)
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * channels,
                      image_std=[0.5] * channels).save_pretrained(path)
    return model
