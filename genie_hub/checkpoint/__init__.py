"""Quantized checkpoints: packed safetensors + `quantization_config`, loadable with `from_pretrained`.

What each quantized op stores is defined by the frozen-format core, `genie_hub.quantization.format`; this
package writes it as a transformers checkpoint and reads it back. It imports `quantization`, never the reverse.

- `save_quantized(result, folder, processor=None)` writes config.json (with a Genie `quantization_config`)
  and the packed `genie_model.safetensors` (see `save.py` for the layout and the load guard); `bind(result)` makes
  `result.model.save_pretrained` write the same format.
- `register()` (idempotent; `import genie_hub` calls it) teaches transformers quant_method "genie", after
  which `AutoModelForImageClassification.from_pretrained(folder)` and `pipeline("image-classification",
  model=folder)` load the quantized model exactly.
- `from_pretrained(name_or_path, **kwargs)` does both and maps failures to `CheckpointError` /
  `ModelLoadError`; `verify_checkpoint(folder)` checks a folder without building a model (`validate.py` is the
  one tensor check behind every entry point).
- Without genie_hub, transformers refuses to load the folder with a ValueError telling the user to
  `pip install genie_hub` and `import genie_hub` (never a silent load with random weights).
"""

from __future__ import annotations

_EXPORTS = {
    "GenieQuantizationConfig": ".config",
    "GenieHfQuantizer": ".hf_quantizer",
    "save_quantized": ".save",
    "bind": ".save",
    "install_save_guard": ".save",
    "from_pretrained": ".load",
    "verify_checkpoint": ".load",
    "QUANT_METHOD": ".config",
    "FORMAT": ".config",
    "FORMAT_VERSION": ".config",
}


def register() -> None:
    """Register quant_method "genie" (config + quantizer) with transformers; safe to call any number of times.

    Raises `GenieError` if another package already registered a different "genie" method.
    """
    from transformers.quantizers import auto

    from ..errors import GenieError
    from .config import QUANT_METHOD, GenieQuantizationConfig
    from .hf_quantizer import GenieHfQuantizer

    for mapping, cls, register_fn in (
            (auto.AUTO_QUANTIZATION_CONFIG_MAPPING, GenieQuantizationConfig, auto.register_quantization_config),
            (auto.AUTO_QUANTIZER_MAPPING, GenieHfQuantizer, auto.register_quantizer)):
        current = mapping.get(QUANT_METHOD)
        if current is cls:
            continue
        if current is None:
            register_fn(QUANT_METHOD)(cls)
        elif getattr(current, "__module__", "").startswith("genie_hub.") and current.__name__ == cls.__name__:
            mapping[QUANT_METHOD] = cls  # our own class from a reloaded module
        else:
            raise GenieError(f"transformers already has a quantization method named '{QUANT_METHOD}' "
                             f"({current.__module__}.{current.__name__}) from another package; genie_hub cannot "
                             "register its own. Uninstall the other package or import genie_hub in a fresh process.")


def is_registered() -> bool:
    from transformers.quantizers import auto

    from .config import QUANT_METHOD

    return QUANT_METHOD in auto.AUTO_QUANTIZATION_CONFIG_MAPPING and QUANT_METHOD in auto.AUTO_QUANTIZER_MAPPING


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["register", "is_registered", *_EXPORTS]
