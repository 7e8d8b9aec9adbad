"""Can this model run with quantized ops in place? Checked before any long compute.

genie_hub swaps `nn.Conv2d`/`nn.Linear` modules for `QuantConv2d`/`QuantLinear`, which expose what model code
usually reads (`weight`, `bias`, `in_features`, `stride`, ...). A model whose forward reads something else, or
calls a kernel that needs a real `nn.Linear`, fails in that forward; this turns the failure into one clear
message naming what is missing, instead of a traceback after synthesis.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..adapters import model_logits
from ..errors import ConfigError, GenieError, UnsupportedModelError, first_line


def quantized_forward_error(model: nn.Module, exc: Exception) -> UnsupportedModelError:
    """The one-paragraph message for an exception raised by the forward of a model with quantized ops."""
    text = first_line(exc) or type(exc).__name__
    missing = re.search(r"'(Quant\w+)' object has no attribute '(\w+)'", text)
    what = (f"its code reads `{missing.group(2)}` from a quantized layer, which genie_hub's {missing.group(1)} "
            "does not provide" if missing else f"its forward fails with quantized layers in place "
            f"({type(exc).__name__}: {text})")
    return UnsupportedModelError(
        f"genie_hub cannot quantize {type(model).__name__} yet: {what}. Quantized layers stand in for "
        "nn.Conv2d/nn.Linear (weight, bias and their geometry attributes); this model needs more. Please report "
        "it with the model id; models of the supported families (ResNet, RegNet, MobileNet, EfficientNet, ViT, "
        "DeiT, Swin, ConvNeXt) work.")


def check_quantized_forward(q_model: nn.Module, example_input: torch.Tensor) -> None:
    """Run one forward of the prepared (quantizable) model; `UnsupportedModelError` if the model's code breaks."""
    try:
        with torch.no_grad():
            model_logits(q_model, example_input)
    except GenieError:
        raise
    except Exception as exc:  # the model's own code: AttributeError, TypeError, RuntimeError, ...
        raise quantized_forward_error(q_model, exc) from exc


def refuse_already_quantized(model: nn.Module) -> None:
    """Quantizing genie_hub's own output again would stack a second set of quantizers on the first: refuse it."""
    from .layers import QuantizedOp

    if any(isinstance(module, QuantizedOp) for module in model.modules()):
        raise ConfigError("The model given to quantize is one genie_hub has already quantized (it holds "
                          "quantized layers). Pass the original FP32 model; to change bits, quantize that again "
                          "with another config.")


def check_quantizable(model: nn.Module, config, example_input: torch.Tensor, range_init: str = "lp") -> None:
    """Prepare a throwaway quantizable copy of `model` and run it once (cheap next to synthesis or
    reconstruction): `UnsupportedModelError` before any long compute if the model cannot be quantized."""
    from .prepare import prepare_model

    refuse_already_quantized(model)
    try:  # the model as it is first: a failure there is about the inputs, not about quantized layers
        with torch.no_grad():
            model_logits(model, example_input)
    except GenieError:  # the adapter names what the model takes or returns that genie_hub cannot work with
        raise
    except Exception as exc:  # noqa: BLE001 - the model's own code raises anything
        text = first_line(exc) or type(exc).__name__
        raise ConfigError(
            f"{type(model).__name__} does not run on inputs of shape {list(example_input.shape[1:])} even before "
            f"quantization ({type(exc).__name__}: {text}). `genie_hub quantize` takes the input size from the "
            "model's image processor (preprocessor_config.json), else from its config's image_size: check that the "
            "processor belongs to this model; library calls take it from the calibration images.") from exc
    try:
        q_model, _, _ = prepare_model(model, config, example_input, range_init)
    except GenieError:
        raise
    except Exception as exc:
        raise quantized_forward_error(model, exc) from exc
    check_quantized_forward(q_model, example_input)
