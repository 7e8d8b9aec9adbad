"""Genie-D: zero-shot calibration data distilled from a model's BatchNorm statistics."""

from .bn_stats import batchnorm_layers, bn_statistics_loss, measure_bn_loss, require_batchnorm
from .generator import Generator
from .loop import ShardStore, synthesize, synthesize_batch
from .swing import swing_convolutions

__all__ = ["Generator", "ShardStore", "batchnorm_layers", "bn_statistics_loss", "measure_bn_loss",
           "require_batchnorm", "swing_convolutions", "synthesize", "synthesize_batch"]
