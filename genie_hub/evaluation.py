"""Measure a (quantized) classifier: top-1 accuracy on labelled data, agreement with the FP32 model otherwise."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import InputSpec, adapter_for, model_logits
from .arguments import check_count
from .data.eval_datasets import EvalSet, ReadTally, open_eval_set
from .errors import ConfigError

__all__ = ["DatasetEvaluation", "agreement", "evaluate_on_dataset", "evaluate_top1", "input_differences",
           "model_labels", "open_evaluation", "predict_logits"]



@torch.no_grad()
def predict_logits(model: nn.Module, pixel_values: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Run `model` over `pixel_values` in batches (eval mode is left to the caller); returns fp32 logits on CPU."""
    batch_size = check_count(batch_size, "batch_size", "predict_logits")
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
    batch_size = check_count(batch_size, "batch_size", "evaluate_top1")
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
    k = check_count(k, "k", "agreement")
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
    """Top-1/top-5 of an FP32 model and its quantized version on a labelled split, and how often they agree."""

    dataset: str  # the source as given: fashion-mnist, owner/name[:config]:split, or a local folder's name
    config: str | None
    split: str
    num_images: int
    fp32_top1: float | None  # None for an unlabelled set: agreement only
    quantized_top1: float | None
    fp32_top5: float | None  # None also for a model with 5 classes or fewer (top-5 would be 100 %)
    quantized_top5: float | None
    top1_agreement: float
    kl_fp_q: float
    hub_id: str | None = None  # the Hub dataset id, for the card's model-index
    complete: bool = True  # False: --eval-limit stopped before the end of the split
    rows_read: int | None = None  # rows of the split gone through, skipped ones included (None: num_images)

    @property
    def evaluated_split(self) -> str:
        """The split as evaluated, in `datasets` slice syntax when only its first rows were: `test[:200]`, so
        that a card's model-index never claims a whole split it did not measure. The slice counts rows, not
        scored images: with unreadable or unlabelled rows skipped, `test[:N]` still names the rows gone through."""
        return self.split if self.complete else f"{self.split}[:{self.rows_read or self.num_images}]"

    @property
    def skipped_rows(self) -> int:
        """Rows read but not scored (unreadable images, examples without a label)."""
        return max(0, (self.rows_read or self.num_images) - self.num_images)

    def to_dict(self) -> dict:
        return asdict(self)


def _describe_input(spec: InputSpec) -> str:
    color = "grayscale" if spec.channels == 1 else "RGB" if spec.channels == 3 else f"{spec.channels}-channel"
    return f"{color} {spec.width}×{spec.height}"


def input_differences(fp32_model: nn.Module, fp32_spec: InputSpec, model: nn.Module, spec: InputSpec) -> list[str]:
    """Why `model` cannot be a quantized version of `fp32_model`: `genie_hub quantize` keeps the base's
    architecture and copies its image processor, so another model type, input size or normalization is another
    model (and feeding both one preprocessing, or comparing their outputs, would mean nothing). Classes are the
    callers' to compare: the Space compares renamed classes by index, `evaluate --fp32` refuses them. One model type
    holds many networks (ResNet-18 and ResNet-50): the config values both set (widths, depths...) must match too."""
    problems = []
    types = [getattr(getattr(m, "config", None), "model_type", None) for m in (fp32_model, model)]
    if types[0] != types[1]:
        problems.append(f"their architectures differ ({types[0]} vs {types[1]})")
    else:
        shape = _shape_differences(fp32_model, model)
        if shape:
            problems.append(f"their configs describe different networks ({shape})")
    if fp32_spec.shape != spec.shape:
        problems.append(f"they take different inputs ({_describe_input(fp32_spec)} vs {_describe_input(spec)})")
    elif fp32_spec != spec:
        problems.append(f"they normalize pixels differently (mean/std {fp32_spec.mean}/{fp32_spec.std} vs "
                        f"{spec.mean}/{spec.std})")
    return problems


NOT_SHAPE_KEYS = frozenset({"quantization_config", "id2label", "label2id", "num_labels", "dtype", "torch_dtype",
                            "transformers_version", "architectures", "problem_type", "output_hidden_states",
                            "output_attentions", "return_dict", "use_cache", "chunk_size_feed_forward",
                            "transformers_weights"})
"""Config keys a quantized copy may change or that say nothing about the network (quantize copies the rest)."""


def _shape_differences(fp32_model: nn.Module, model: nn.Module) -> str:
    """The config values that differ between two models of one type (widths, depths, kernel sizes...): one model
    type holds many networks (ResNet-18 and ResNet-50), and a quantized one keeps its base's config."""
    configs = [getattr(m, "config", None) for m in (fp32_model, model)]
    if not all(hasattr(c, "to_dict") for c in configs):
        return ""
    first, second = (c.to_dict() for c in configs)
    keys = [k for k in sorted(set(first) & set(second))  # a key one of them lacks is a version's, not a shape
            if not k.startswith("_") and k not in NOT_SHAPE_KEYS and None not in (first[k], second[k])
            and first[k] != second[k]]
    return ", ".join(f"{k}: {first.get(k)!r:.60} vs {second.get(k)!r:.60}" for k in keys[:3]) + (
        f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def model_labels(model: nn.Module) -> dict[int, str]:
    adapter = adapter_for(model)
    count = adapter.num_labels(model)
    if not count:
        raise ConfigError(f"{type(model).__name__} does not say how many classes it has, so it cannot be evaluated "
                          "on a labelled dataset.")
    return {i: adapter.label(model, i) for i in range(count)}


def open_evaluation(dataset: str, model: nn.Module, *, image_column: str | None = None,
                    label_column: str | None = None, unlabelled: bool = False) -> EvalSet:
    """Open and check the evaluation set for `model` (before any compute): see `data.eval_datasets`."""
    return open_eval_set(dataset, model_labels(model), image_column=image_column, label_column=label_column,
                         unlabelled=unlabelled)


@torch.no_grad()
def evaluate_on_dataset(fp_model: nn.Module, q_model: nn.Module, processor, spec: InputSpec, dataset: str | EvalSet,
                        limit: int | None = None, batch_size: int = 64, progress: bool = True) -> DatasetEvaluation:
    """Top-1/top-5 of both models on a labelled dataset, their top-1 agreement and KL(p_fp32 || p_q), with a
    progress bar. Metrics are accumulated batch by batch, so a large streamed split needs no memory for logits."""
    from .data import fashion_mnist_pixel_values
    from .progress import progress_bar

    limit = check_count(limit, "limit", "evaluate_on_dataset", none="the whole split")
    batch_size = check_count(batch_size, "batch_size", "evaluate_on_dataset")
    evalset = dataset if isinstance(dataset, EvalSet) else open_evaluation(dataset, fp_model)
    adapter = adapter_for(fp_model)
    total = min(limit, evalset.num_images) if limit and evalset.num_images else (limit or evalset.num_images)
    counts = {"n": 0, "fp1": 0, "q1": 0, "fp5": 0, "q5": 0, "agree": 0, "kl": 0.0}
    classes = 0
    bar = progress_bar(total=total, desc=f"evaluate on {evalset.source.label}", unit="img", disable=not progress,
                       leave=False)
    tally = ReadTally()
    for images, labels in evalset.batches(batch_size, limit, tally):
        if isinstance(images, torch.Tensor):
            x = fashion_mnist_pixel_values(images, processor, spec)
        else:
            x = adapter.to_pixel_values(images, processor, spec)
        fp_logits, q_logits = predict_logits(fp_model, x, batch_size), predict_logits(q_model, x, batch_size)
        classes = fp_logits.shape[1]
        k, size = min(5, classes), len(fp_logits)
        counts["n"] += size
        if labels is not None:
            counts["fp1"] += int((fp_logits.argmax(-1) == labels).sum())
            counts["q1"] += int((q_logits.argmax(-1) == labels).sum())
            counts["fp5"] += int((fp_logits.topk(k, -1).indices == labels[:, None]).any(-1).sum())
            counts["q5"] += int((q_logits.topk(k, -1).indices == labels[:, None]).any(-1).sum())
        batch = agreement(fp_logits, q_logits)
        counts["agree"] += batch["top1_agreement"] * size
        counts["kl"] += batch["kl_fp_q"] * size
        bar.update(size)
    bar.close()
    n = counts["n"]
    if n == 0:
        raise ConfigError(f"The evaluation set {evalset.source.label} yielded no images.")
    source = evalset.source
    rate = (lambda key: counts[key] / n) if evalset.labelled else (lambda key: None)
    rate5 = rate if classes > 5 else (lambda key: None)  # with 5 classes or fewer, top-5 is 100 % by definition
    return DatasetEvaluation(dataset=source.label, config=source.config, split=evalset.split, num_images=n,
                             fp32_top1=rate("fp1"), quantized_top1=rate("q1"),
                             fp32_top5=rate5("fp5"), quantized_top5=rate5("q5"),
                             top1_agreement=counts["agree"] / n, kl_fp_q=counts["kl"] / n,
                             hub_id=source.name if source.kind == "hub" else None,
                             complete=tally.reached_end, rows_read=tally.rows)
