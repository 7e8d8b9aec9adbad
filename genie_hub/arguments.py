"""What the library calls `synthesize` and `quantize` are given, checked before any compute.

The command line hands these stages well-formed objects; a library user can hand them anything. Each check
turns a mistake into one message that says what to pass, where it would otherwise surface as a traceback deep
in torch, or not at all (a NaN image, a half-precision model). `preserved_state` gives the caller's model back
as it came: both stages switch it to eval mode and freeze its parameters while they work.
"""

from __future__ import annotations

import contextlib
import numbers
import os
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from .config import GenieConfig
from .errors import ConfigError, DataError, ModelLoadError


def check_model(model: nn.Module, call: str) -> None:
    """An `nn.Module` with float32 parameters that hold values (not on the meta device)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{call}() takes the model as a torch nn.Module, got {type(model).__name__}. Load one with "
                        "genie_hub.load_model('owner/name' or a folder), which returns (model, processor).")
    inner = _wrapped(model)
    if inner is not None:
        raise ConfigError(f"{call}() got the model inside a {type(model).__name__} wrapper, which hides its config "
                          "and its layers: genie_hub would read it as an unknown model (224 px inputs, no class names) "
                          f"and quantize a copy that saves as no checkpoint. Pass the model itself ({inner}).")
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise ConfigError(f"{call}() got a model with weights on the meta device (no values: device_map='meta', "
                          "init_empty_weights or low-memory loading that offloaded them). Load it on a real device, "
                          "e.g. genie_hub.load_model(...) or from_pretrained(..., device_map='cpu').")
    other = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.is_floating_point()}
                   - {"float32"})
    if other:
        raise ConfigError(f"{call}() needs a float32 model, got {', '.join(other)} parameters. Call model.float() "
                          "first (mixed precision is a setting: GenieConfig(mixed_precision='bf16')).")
    refuse_non_finite(model, f"The model given to {call}()")


def _wrapped(model: nn.Module) -> str | None:
    """How to reach the model inside a wrapper that only runs it (torch.compile's, DataParallel's), else None."""
    if isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
        return ("model._orig_mod, the module torch.compile was given; GenieConfig(compile=True) compiles genie_hub's "
                "own steps")
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return "model.module"
    return None


def refuse_non_finite(model: nn.Module, name: str) -> None:
    """Refuse a model whose float weights or buffers hold NaN or inf: it computes NaN logits, which evaluation
    would score as wrong predictions, the Space as agreement, and synthesis or reconstruction would report as a
    divergence blamed on the settings, after minutes of compute."""
    for tensor_name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            count = int((~torch.isfinite(tensor)).sum())
            raise ModelLoadError(
                f"{name}: its weight '{tensor_name}' holds {count} NaN or infinite value(s) of {tensor.numel()}, so "
                "the model computes NaN or infinite logits for every image. The weights file is damaged or was "
                "exported from a diverged training run: download or export the model again.")


def check_config(config: GenieConfig, call: str) -> None:
    """A `GenieConfig` whose values are still valid (its fields can be set after it was made)."""
    if not isinstance(config, GenieConfig):
        raise TypeError(f"{call}() takes a GenieConfig, got {type(config).__name__}. Make one with "
                        "GenieConfig.from_profile('quick' or 'paper', **settings) (GenieConfig.from_dict for a dict).")
    config.validate()


def check_calibration(pixel_values: torch.Tensor, call: str) -> torch.Tensor:
    """Calibration images as a float32 [N, C, H, W] tensor with N >= 1 and finite values."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"{call}() takes calibration images as a torch.Tensor [N, C, H, W] of pixel_values (or the "
                        f"Calibration that synthesize returns), got {type(pixel_values).__name__}.")
    if pixel_values.dim() != 4 or pixel_values.shape[0] < 1:
        raise ConfigError(f"{call}() needs calibration images shaped [N, C, H, W] with N >= 1, got "
                          f"{list(pixel_values.shape)}.")
    if not pixel_values.is_floating_point():
        raise ConfigError(f"{call}() needs calibration pixel_values as floats, normalized as the model's processor "
                          f"makes them, got {pixel_values.dtype}: prepare the images with the processor (or "
                          "genie_hub.data.uint8_to_pixel_values).")
    if pixel_values.is_meta:
        raise ConfigError(f"{call}() got calibration images on the meta device (a shape without values). Pass "
                          "images that hold pixel values, e.g. synthesize(...)'s Calibration or a tensor made on the "
                          "CPU.")
    bad = int((~torch.isfinite(pixel_values.flatten(1))).any(dim=1).sum())
    if bad:
        raise DataError(f"{bad} of the {len(pixel_values)} calibration images hold NaN or infinite values. Check "
                        "where they come from (the synthesis losses, the image files).")
    return pixel_values.float()


def check_accelerator(accelerator: Any, call: str, none: str) -> None:
    """None, or an `accelerate.Accelerator` (anything with a torch.device as `.device`): a device name is not one.
    `none`: what the call does without one."""
    if accelerator is not None and not isinstance(getattr(accelerator, "device", None), torch.device):
        raise ConfigError(f"{call}() takes accelerator as an accelerate.Accelerator, which it runs on, got "
                          f"{type(accelerator).__name__} {accelerator!r:.60}. Pass accelerate.Accelerator() "
                          f"(Accelerator(cpu=True) for the CPU), or accelerator=None: {none}.")


def check_state_path(state_path: Any, call: str) -> None:
    """None, or a file path (str or os.PathLike) that is not an existing folder: the reconstruction state is one
    file, written after the first unit, so a bad path would fail minutes into the run."""
    if state_path is None:
        return
    if not isinstance(state_path, (str, os.PathLike)) or not str(os.fspath(state_path)).strip():
        raise ConfigError(f"{call}() takes state_path as a file path (str or pathlib.Path), or None to keep no "
                          f"state, got {type(state_path).__name__} {state_path!r:.60}: e.g. "
                          "state_path='run/reconstruction.safetensors'.")
    if Path(state_path).is_dir():
        raise ConfigError(f"{call}() got state_path {str(state_path)!r}, an existing folder: the reconstruction "
                          "state is one file. Name a file in it, e.g. "
                          f"{str(Path(state_path) / 'reconstruction.safetensors')!r}.")


def check_count(value, name: str, call: str, *, none: str | None = None) -> int | None:
    """A positive integer (Python's or numpy's; not a bool, a float or a string), returned as Python's int. With
    `none`, what None means for it (e.g. "the whole split"), and None is taken."""
    if value is None and none is not None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        allowed = f" or None ({none})" if none is not None else ""
        raise ConfigError(f"{call}() takes {name} as a positive integer{allowed}, got {value!r}: pass a whole "
                          f"number of at least 1{', e.g. 64' if name == 'batch_size' else ''}.")
    return int(value)


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Each module's train/eval mode and each parameter's requires_grad, restored on exit (also on error)."""
    modes = [(module, module.training) for module in model.modules()]
    grads = [(param, param.requires_grad) for param in model.parameters()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for param, flag in grads:
            param.requires_grad_(flag)
