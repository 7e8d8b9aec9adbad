"""The public Python API, one function per pipeline stage (re-exported by `genie_hub`).

    model, processor = load_model("microsoft/resnet-50")          # load
    calibration = synthesize(model, config, processor=processor)  # Genie-D -> Calibration
    result = quantize(model, calibration, config)                 # Genie-M -> QuantizationResult
    save_quantized(result, "resnet-50-genie-w4a4", processor=processor)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .calibration import Calibration
from .checkpoint import bind, from_pretrained, save_quantized, verify_checkpoint
from .config import GenieConfig
from .data.pixels import open_image
from .loading import input_spec, load_model
from .quantization import QuantizationResult
from .quantization import quantize as _quantize
from .synthesis import synthesize


def quantize(model: nn.Module, calibration: torch.Tensor | Calibration, config: GenieConfig | None = None, *,
             accelerator=None, state_path: str | Path | None = None, range_init: str = "lp",
             progress: bool = True) -> QuantizationResult:
    """Genie-M on a copy of `model` (see `genie_hub.quantization.quantize`). The result's model saves as a Genie
    checkpoint with `save_quantized(result, folder)` or its own `save_pretrained(folder)` / `push_to_hub`."""
    result = _quantize(model, calibration, config, accelerator=accelerator, state_path=state_path,
                       range_init=range_init, progress=progress)
    bind(result)
    return result


__all__ = ["Calibration", "GenieConfig", "QuantizationResult", "from_pretrained", "input_spec", "load_model",
           "open_image", "quantize", "save_quantized", "synthesize", "verify_checkpoint"]
