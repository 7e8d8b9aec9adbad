"""Genie-M: post-training quantization with jointly learned step sizes and rounding, block by block.

`quantize(model, calibration, config)` returns a `QuantizationResult`: the fake-quantized copy of the model
(every op frozen), the `LayerSpec` of each quantized op, the reconstruction units and a report per unit.
The frozen format of an op is defined in `format.py`; saving and loading it is `genie_hub.checkpoint`'s job.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..arguments import (check_accelerator, check_calibration, check_config, check_model, check_state_path,
                         preserved_state)
from ..calibration import Calibration
from ..config import GenieConfig, warn_paper_default
from ..errors import ConfigError
from ..reproducibility import model_fingerprint
from .attention import ATTENTION_CHILD, QuantAttention
from .blocks import Unit, attention_modules, discover_units
from .compat import UnsupportedModelError, check_quantizable, refuse_already_quantized
from .format import LayerSpec, StoredTensor, stored_tensors
from .layers import QuantConv2d, QuantizedOp, QuantLinear, QuantShortcut
from .prepare import prepare_model, quantized_ops, resolve_bits
from .quantizers import RANGE_INITS, ActQuantizer, WeightQuantizer
from .reconstruction import ReconstructionState, UnitReport, reconstruct

logger = logging.getLogger("genie_hub.quantization")

QUANTIZED_TYPES: dict[str, type[QuantizedOp]] = {
    cls.__name__: cls for cls in (QuantConv2d, QuantLinear, QuantShortcut, QuantAttention)}
"""Op classes by `LayerSpec.type`; a new quantized layer type is one class here plus its name in format.LAYER_TYPES."""


@dataclass
class QuantizationResult:
    """What Genie-M produced: the quantized model and how it got there."""

    model: nn.Module
    layers: dict[str, LayerSpec]  # every quantized op, in execution order
    units: list[Unit]
    report: list[UnitReport]
    config: GenieConfig
    float_attention: list[str] = field(default_factory=list)  # attention modules whose matmuls stayed in FP
    calibration_size: tuple[int, int] | None = None  # (height, width) of the calibration images


def reconstruction_autocast(config: GenieConfig, device: torch.device | str):
    """The autocast context of reconstruction: bf16 when `config.mixed_precision` says so, fp32 otherwise.

    From the config, not from an accelerator: `quantize` called without one must still honour the setting its
    result and run.json report, and the pipeline resolves the config from its accelerator before this point."""
    if config.mixed_precision == "bf16":
        return lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def quantize(model: nn.Module, calibration: torch.Tensor | Calibration, config: GenieConfig | None = None, *,
             accelerator=None, state_path: str | Path | None = None, range_init: str = "lp",
             progress: bool = True) -> QuantizationResult:
    """Quantize a copy of `model`, calibrated on `calibration` (synthetic or real pixel values).

    `range_init="minmax"` with `reconstruction_steps=0` gives the plain round-to-nearest baseline.
    With `state_path`, finished units are saved there and an interrupted call resumes after them.
    It runs on `accelerator.device` (else the model's device), in `config.mixed_precision`.
    """
    check_model(model, "quantize")
    refuse_already_quantized(model)
    if not any(isinstance(module, (nn.Conv2d, nn.Linear)) for module in model.modules()):
        raise UnsupportedModelError(f"{type(model).__name__} has no nn.Conv2d or nn.Linear layer, so genie_hub has "
                                    "nothing to quantize in it.")
    if config is not None:
        check_config(config, "quantize")
    if range_init not in RANGE_INITS:
        raise ConfigError(f"range_init must be one of {', '.join(map(repr, RANGE_INITS))} (lp: the clipping that "
                          f"minimizes the Lp error, minmax: the full range), got {range_init!r}.")
    pixel_values = check_calibration(calibration.pixel_values if isinstance(calibration, Calibration) else calibration,
                                     "quantize")
    check_accelerator(accelerator, "quantize", "it then runs on the model's device (model.to('cuda'))")
    check_state_path(state_path, "quantize")
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    if config is None:
        config = GenieConfig()
        warn_paper_default("quantize", config, device)
    with preserved_state(model):
        return _quantize(model, pixel_values, config, device, state_path, range_init, progress)


def _quantize(model: nn.Module, pixel_values: torch.Tensor, config: GenieConfig, device, state_path,
              range_init: str, progress: bool) -> QuantizationResult:
    autocast = reconstruction_autocast(config, device)
    model = model.to(device).eval()
    pixel_values = pixel_values.to(device)
    if len(pixel_values) < 2:
        logger.warning("Only %d calibration image(s): activation ranges and reconstruction will fit them, not the "
                       "model's inputs. Calibrate on more images (--num-samples; the paper uses 1024).",
                       len(pixel_values))
    elif not bool((pixel_values.flatten(1).std(dim=1) > 0).any()):
        logger.warning("The calibration images have no variance (every image is one constant value): activation "
                       "ranges and reconstruction learned from them will not fit real inputs. Check the "
                       "calibration source (synthesis losses, the few-shot folder or dataset).")
    # A clear message, not a traceback later. It runs a throwaway copy: a forward of the copy used below would
    # calibrate its activation quantizers on these two probe images.
    check_quantizable(model, config, pixel_values[:2], range_init)
    q_model, units, op_names = prepare_model(model, config, pixel_values[:2], range_init)
    float_attention = _float_attention(model, op_names, config)
    if float_attention:
        logger.warning("%s computes attention in code genie_hub cannot reach (not through transformers' "
                       "AttentionInterface), so the matmuls of its %d attention module(s) stay in floating point "
                       "(e.g. %s); their linear layers are quantized. The card of a `genie_hub quantize` run says so.",
                       type(model).__name__, len(float_attention), float_attention[0])
    fingerprint = {"config": {k: v for k, v in config.results_dict().items() if k != "mixed_precision"},
                   "range_init": range_init, "model": model_fingerprint(model),
                   "calibration": [list(pixel_values.shape), float(pixel_values.double().sum()),
                                   float(pixel_values.double().abs().sum())]}
    block_inputs = sorted(op.quantizes_input_of for op in quantized_ops(q_model).values() if op.quantizes_input_of)
    if block_inputs:  # units reconstructed with FP skips (older genie_hub) must not resume as quantized-skip ones;
        fingerprint["block_inputs"] = block_inputs  # absent when empty, so other models' state files stay valid
    state = ReconstructionState(state_path, json.loads(json.dumps(fingerprint)))
    reports = reconstruct(model, q_model, units, pixel_values, config, device=device, autocast=autocast,
                          state=state, progress=progress)
    ops = quantized_ops(q_model)
    for op in ops.values():
        op.freeze()  # ops outside every unit (none expected) still end frozen
    return QuantizationResult(model=q_model, layers={name: ops[name].spec() for name in op_names}, units=units,
                              report=reports, config=config, float_attention=float_attention,
                              calibration_size=tuple(pixel_values.shape[-2:]))


def _float_attention(model: nn.Module, op_names: list[str], config: GenieConfig) -> list[str]:
    """The attention modules of `model` whose matmuls no `QuantAttention` quantizes: the model's attention does
    not run through the function the adapter installs (`route_attention`), so its linear layers are quantized
    and its matmuls stay in FP. Said in a warning, run.json and the card, so "W4A4" does not overstate it.
    An attention kept in FP by an override (`*.quantized_matmul=/fp`) is the user's choice, not one of these."""
    routed = [name[: -len(ATTENTION_CHILD) - 1] for name in op_names if name.endswith("." + ATTENTION_CHILD)]
    return [name for name in attention_modules(model)
            if not any(r == name or r.startswith(name + ".") for r in routed)
            and not _overridden_to_fp(f"{name}.{ATTENTION_CHILD}", config)]


def _overridden_to_fp(name: str, config: GenieConfig) -> bool:
    """Whether the last override pattern that sets act bits for `name` keeps its input in FP."""
    acts = [o["act"] for p, o in config.overrides.items() if fnmatch.fnmatchcase(name, p) and "act" in o]
    return bool(acts) and acts[-1] is None


__all__ = ["ActQuantizer", "LayerSpec", "QUANTIZED_TYPES", "QuantAttention", "QuantConv2d", "QuantLinear", "QuantShortcut",
           "QuantizationResult", "QuantizedOp", "ReconstructionState", "StoredTensor", "Unit", "UnitReport",
           "UnsupportedModelError", "check_quantizable",
           "WeightQuantizer", "discover_units", "prepare_model", "quantize", "quantized_ops", "reconstruct",
           "resolve_bits", "stored_tensors"]
