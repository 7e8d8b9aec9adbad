"""Genie-M: post-training quantization with jointly learned step sizes and rounding, block by block."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch import nn

from ..checkpoint.save import install_save_guard
from ..config import GenieConfig
from ..utils import model_fingerprint
from .blocks import Unit, discover_units
from .layers import QUANTIZED_TYPES, QuantConv2d, QuantizedOp, QuantLinear, QuantShortcut
from .prepare import prepare_model, quantized_ops, resolve_bits
from .quantizers import ActQuantizer, WeightQuantizer
from .reconstruction import ReconstructionState, UnitReport, reconstruct


def quantize(model: nn.Module, calibration: torch.Tensor, config: GenieConfig | None = None, *,
             accelerator=None, state_path: str | Path | None = None, range_init: str = "lp",
             progress: bool = True) -> nn.Module:
    """Return a fake-quantized copy of `model`, calibrated on `calibration` (synthetic or real pixel values).

    `range_init="minmax"` with `reconstruction_steps=0` gives the plain round-to-nearest baseline.
    With `state_path`, finished units are saved there and an interrupted call resumes after them.
    The copy carries `genie_layers` (bits per op), `genie_units` and `genie_report` (errors per unit).
    """
    config = config or GenieConfig()
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    autocast = accelerator.autocast if accelerator is not None else contextlib.nullcontext
    model = model.to(device).eval()
    calibration = calibration.to(device)
    q_model, units, layer_bits = prepare_model(model, config, calibration[:2], range_init)
    fingerprint = {"config": {k: v for k, v in config.to_dict().items() if k != "mixed_precision"},
                   "range_init": range_init, "model": model_fingerprint(model),
                   "calibration": [list(calibration.shape), float(calibration.double().sum()),
                                   float(calibration.double().abs().sum())]}
    state = ReconstructionState(state_path, json.loads(json.dumps(fingerprint)))
    reports = reconstruct(model, q_model, units, calibration, config, device=device, autocast=autocast,
                          state=state, progress=progress)
    for name, op in quantized_ops(q_model).items():
        op.freeze()  # ops outside every unit (none expected) still end frozen
        layer_bits[name]["act_signed"] = op.act_signed
    q_model.genie_layers = layer_bits
    q_model.genie_units = [u.to_dict() for u in units]
    q_model.genie_report = reports
    q_model.genie_config = config
    install_save_guard(q_model)  # a plain save_pretrained() then writes the same guarded format as save_quantized
    return q_model


__all__ = ["ActQuantizer", "QUANTIZED_TYPES", "QuantConv2d", "QuantLinear", "QuantShortcut", "QuantizedOp",
           "ReconstructionState", "Unit", "UnitReport", "WeightQuantizer", "discover_units", "prepare_model",
           "quantize", "quantized_ops", "reconstruct", "resolve_bits"]
