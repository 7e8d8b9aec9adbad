"""Genie-D: zero-shot calibration data distilled from the model itself.

`synthesize(model, config)` -> `Calibration`. Priors (what the images must satisfy) are registered in
`prior.py`, in the order "auto" tries them: "bn-statistics" (`bn_stats.py`) is Genie's, for CNNs with
BatchNorm; "patch-similarity" (`patch_similarity.py`, PSAQ-ViT's) for models without BatchNorm (ViT, DeiT,
Swin, ConvNeXt). Image parameterizations are in `generator.py`; where their pixels should live (the image
prior, from the model's input normalization) in `image_prior.py`.
"""

from .bn_stats import BatchNormPrior, batchnorm_layers, bn_statistics_loss, measure_bn_loss, require_batchnorm
from .generator import DirectPixels, Generator, image_source
from .image_prior import PixelTarget, input_prior_loss, pixel_target
from .loop import ShardStore, synthesize, synthesize_batch, synthesize_batches
from .patch_similarity import PatchSimilarityPrior
from .prior import SynthesisPrior, describe_prior, prior_names, register_prior, require_known_prior, select_prior
from .swing import swing_convolutions

register_prior(BatchNormPrior)
register_prior(PatchSimilarityPrior)

__all__ = ["BatchNormPrior", "DirectPixels", "Generator", "PatchSimilarityPrior", "PixelTarget", "ShardStore",
           "SynthesisPrior", "batchnorm_layers", "bn_statistics_loss", "describe_prior", "image_source",
           "input_prior_loss", "measure_bn_loss", "pixel_target", "prior_names", "register_prior", "require_known_prior",
           "require_batchnorm", "select_prior", "swing_convolutions", "synthesize", "synthesize_batch",
           "synthesize_batches"]
