"""Measure a (quantized) classifier: top-1 accuracy on labelled data, agreement with the FP32 model otherwise."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import InputSpec, model_logits
from .errors import ConfigError, GenieError

__all__ = ["DatasetEvaluation", "EVAL_DATASETS", "agreement", "evaluate_on_dataset", "evaluate_top1",
           "predict_logits"]

logger = logging.getLogger("genie_hub")
EVAL_DATASETS = ("fashion-mnist",)


@torch.no_grad()
def predict_logits(model: nn.Module, pixel_values: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Run `model` over `pixel_values` in batches (eval mode is left to the caller); returns fp32 logits on CPU."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1 (got {batch_size}).")
    try:
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
    except StopIteration:
        device, dtype = pixel_values.device, pixel_values.dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    outputs = []
    for start in range(0, pixel_values.shape[0], batch_size):
        batch = pixel_values[start:start + batch_size].to(device=device, dtype=dtype)
        outputs.append(model_logits(model, batch).float().cpu())
    if not outputs:
        return torch.empty(0)
    return torch.cat(outputs)


def evaluate_top1(model: nn.Module, pixel_values: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of `model` on `pixel_values` with integer `labels`."""
    labels = torch.as_tensor(labels).long().cpu()
    if labels.numel() != pixel_values.shape[0]:
        raise ConfigError(f"{pixel_values.shape[0]} images but {labels.numel()} labels.")
    if labels.numel() == 0:
        raise ConfigError("evaluate_top1 needs at least one image.")
    logits = predict_logits(model, pixel_values, batch_size)
    return (logits.argmax(dim=-1) == labels).float().mean().item()


def agreement(fp_logits: torch.Tensor, q_logits: torch.Tensor, k: int = 5) -> dict:
    """How closely quantized logits follow the full-precision ones, for data without labels.

    Returns `top1_agreement` (fraction of samples with the same argmax), `top5_overlap` (mean fraction of
    the FP top-k classes also in the quantized top-k; k = min(5, classes)), `kl_fp_q` (mean KL(p_fp || p_q)
    in nats, computed in float64) and `num_samples`.
    """
    fp_logits, q_logits = torch.as_tensor(fp_logits), torch.as_tensor(q_logits)
    if fp_logits.shape != q_logits.shape or fp_logits.ndim != 2:
        raise ConfigError(f"Logit shapes differ or are not [N, classes]: {tuple(fp_logits.shape)} vs "
                          f"{tuple(q_logits.shape)}.")
    n, classes = fp_logits.shape
    if n == 0:
        raise ConfigError("agreement needs at least one sample.")
    fp, q = fp_logits.double(), q_logits.double()
    top1 = (fp.argmax(-1) == q.argmax(-1)).double().mean().item()
    k = min(k, classes)
    fp_top = fp.topk(k, dim=-1).indices
    q_top = q.topk(k, dim=-1).indices
    overlap = (fp_top.unsqueeze(-1) == q_top.unsqueeze(-2)).any(-1).double().sum(-1) / k
    log_p, log_q = F.log_softmax(fp, -1), F.log_softmax(q, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)
    return {"top1_agreement": top1, "top5_overlap": overlap.mean().item(), "kl_fp_q": kl.mean().item(),
            "num_samples": int(n)}


@dataclass
class DatasetEvaluation:
    """Top-1 of an FP32 model and its quantized version on a labelled split, and how often they agree."""

    dataset: str
    split: str
    num_images: int
    fp32_top1: float
    quantized_top1: float
    top1_agreement: float
    kl_fp_q: float

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_on_dataset(fp_model: nn.Module, q_model: nn.Module, processor, spec: InputSpec, dataset: str,
                        limit: int | None = None) -> DatasetEvaluation | None:
    """Top-1 of both models on a labelled test set (currently: fashion-mnist). None if the data is absent."""
    from .data import DataError, fashion_mnist_pixel_values, load_fashion_mnist

    if dataset not in EVAL_DATASETS:
        raise GenieError(f"Unknown evaluation dataset '{dataset}'. Supported: {', '.join(EVAL_DATASETS)}.")
    try:
        images, labels = load_fashion_mnist("test")
    except DataError as exc:
        logger.warning("Skipping the evaluation: %s", exc)
        return None
    if limit:
        images, labels = images[:limit], labels[:limit]
    pixel_values = fashion_mnist_pixel_values(images, processor, spec)
    fp_logits = predict_logits(fp_model, pixel_values)
    q_logits = predict_logits(q_model, pixel_values)
    agree = agreement(fp_logits, q_logits)
    return DatasetEvaluation(dataset="fashion-mnist", split="test", num_images=len(labels),
                             fp32_top1=(fp_logits.argmax(-1) == labels).float().mean().item(),
                             quantized_top1=(q_logits.argmax(-1) == labels).float().mean().item(),
                             top1_agreement=agree["top1_agreement"], kl_fp_q=agree["kl_fp_q"])
