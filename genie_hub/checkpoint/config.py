"""`GenieQuantizationConfig`: the `quantization_config` block a Genie checkpoint carries in its config.json.

Layout (format "genie-packed", format_version 4; version 3 had no `quantizes_input_of`, version 2 also stored
weight_zero_point as uint8, version 1 also had no `weights_file` and used model.safetensors; all still load)::

    "quantization_config": {
      "quant_method": "genie",
      "format": "genie-packed",
      "format_version": 4,
      "weights_file": "genie_model.safetensors",   # or genie_model.safetensors.index.json when sharded
      "weight_bits": 4,                       # headline bits of the run (most layers)
      "act_bits": 4,
      "layers": {                             # every quantized op, by module name (as in the FP model)
        "resnet.embedder.embedder.convolution": {"type": "QuantConv2d", "weight_bits": 8, "act_bits": null,
                                                 "act_signed": null},
        "resnet.encoder.stages.0.layers.0.shortcut": {"type": "QuantShortcut", "weight_bits": null,
                                                      "act_bits": 8, "act_signed": false},
        "mobilenet_v2.layer.1.expand_1x1.convolution": {..., "quantizes_input_of": "mobilenet_v2.layer.1"},
                                              # also quantizes the input of its residual block, at the block's entry
        ...
      },
      "overrides": {...},                     # the user's fnmatch overrides, as given
      "genie_config": {...},                  # the full GenieConfig of the run (provenance only)
      "packing": {...}, "weight_scheme": {...}, "act_scheme": {...}   # human-readable format description
    }

Everything needed to rebuild the modules is `layers`: the module's geometry (channels, kernel, stride...) comes
from the model's own config, which builds the FP module at that name; the type and bits say which quantized
module replaces it and how wide its packed rows are.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers.utils.quantization_config import QuantizationConfigMixin

from ..errors import CheckpointError
from ..quantization.format import FORMAT_VERSION as FROZEN_FORMAT_VERSION
from ..quantization.format import LayerSpec, check_bits

QUANT_METHOD = "genie"
FORMAT = "genie-packed"
FORMAT_VERSION = FROZEN_FORMAT_VERSION
WEIGHTS_NAME = "genie_model.safetensors"
"""Where format >= 2 stores the weights: a name plain transformers never reads (format 1 used model.safetensors),
so a Genie checkpoint can never load as plain FP weights, whatever the transformers version."""
LAYERS_METADATA_KEY = "genie_layers"
"""The safetensors `__metadata__` entry that repeats `layers` (JSON), checked against config.json on load."""

PACKING = {
    "dtype": "int32",
    "layout": "weight flattened to [out_channels, in_channels/groups * kh * kw], one packed row per output channel",
    "order": "b-bit unsigned codes as a little-endian bit stream per row: code i occupies bits [i*b, (i+1)*b), "
             "word w holds bits [32*w, 32*w + 32) (codes may straddle two words); row width ceil(n*b/32)",
}
WEIGHT_SCHEME = {
    "granularity": "per-output-channel", "symmetric": False,
    "dequantize": "weight = weight_scale * (code - weight_zero_point), reshaped to weight_shape",
    "tensors": {"weight_packed": "int32 [out, ceil(n*b/32)]", "weight_scale": "float32 [out, 1]",
                "weight_zero_point": "int32 [out, 1] (uint8 before format_version 3)", "weight_shape": "int64 [ndim]"},
}
ACT_SCHEME = {
    "granularity": "per-tensor", "symmetric": True,
    "quantize": "x_q = input_scale * round(clamp(x / input_scale, q_min, q_max)); [q_min, q_max] = "
                "[-2^(a-1), 2^(a-1)-1] if act_signed else [0, 2^a-1]",
    "tensors": {"input_scale": "float32 []"},
    "attention": "a QuantAttention module (the two matmuls of an attention layer) stores query_scale, key_scale, "
                 "value_scale (float32 [], signed grids, quantized as above) and quantizes the softmax "
                 "probabilities p to 2^(-k/r), k = round(-r * log2 p) in 0 .. 2^a-2 with r = max(1, (2^a-2) // 16), "
                 "and to 0 below that (no stored tensor)",
}


def _bad(message: str) -> CheckpointError:
    return CheckpointError(f"Invalid Genie quantization_config in config.json: {message}")


def _check_bits(where: str, value: Any, allow_none: bool) -> None:
    try:
        check_bits(where, value, allow_none)
    except ValueError as exc:
        raise _bad(f"{exc} The file was edited or written by an incompatible tool.") from None


def validate_layers(layers: Any) -> dict[str, LayerSpec]:
    """Parse the `layers` mapping into LayerSpecs (CheckpointError on anything malformed)."""
    if not isinstance(layers, dict) or not layers:
        raise _bad("`layers` must be a non-empty mapping from module name to {type, weight_bits, act_bits, "
                   f"act_signed}}, got {type(layers).__name__}.")
    out: dict[str, LayerSpec] = {}
    for name, spec in layers.items():
        if not isinstance(name, str) or not name:
            raise _bad(f"layer name {name!r} is not a module name.")
        try:
            out[name] = spec if isinstance(spec, LayerSpec) else LayerSpec.from_dict(name, spec)
        except ValueError as exc:
            raise _bad(str(exc)) from None
    return out


class GenieQuantizationConfig(QuantizationConfigMixin):
    """The `quantization_config` of a Genie checkpoint (registered with transformers as quant_method "genie").

    Build one from a quantized model with `GenieQuantizationConfig.from_model(q_model)`; transformers builds it
    from config.json with `from_dict`. Malformed blocks raise `CheckpointError`.
    """

    def __init__(self, layers: dict[str, dict] | None = None, weight_bits: int | None = None,
                 act_bits: int | None = None, overrides: dict | None = None, genie_config: dict | None = None,
                 format: str = FORMAT, format_version: int = FORMAT_VERSION, quant_method: str = QUANT_METHOD,
                 packing: dict | None = None, weight_scheme: dict | None = None, act_scheme: dict | None = None,
                 weights_file: str | None = None, **kwargs: Any):
        if quant_method != QUANT_METHOD:
            raise _bad(f"quant_method is {quant_method!r}, expected {QUANT_METHOD!r}.")
        if format != FORMAT:
            raise _bad(f"format is {format!r}; this version of genie_hub reads {FORMAT!r} only.")
        if not isinstance(format_version, int) or isinstance(format_version, bool) or format_version < 1:
            raise _bad(f"format_version is {format_version!r}; expected a positive integer.")
        if format_version > FORMAT_VERSION:
            raise CheckpointError(
                f"This checkpoint uses Genie format_version {format_version}, newer than the version this "
                f"genie_hub understands ({FORMAT_VERSION}). Upgrade genie_hub (pip install -U genie_hub).")
        self.quant_method = QUANT_METHOD
        self.format = FORMAT
        self.format_version = format_version
        self.layers = validate_layers(layers if layers is not None else {})
        blocks = [spec.quantizes_input_of for spec in self.layers.values() if spec.quantizes_input_of is not None]
        if blocks and format_version < 4:
            raise _bad(f"format_version {format_version} has no `quantizes_input_of` (it came with version 4).")
        if len(blocks) != len(set(blocks)):
            raise _bad("two layers quantize the input of the same block (`quantizes_input_of`); a block's input is "
                       "quantized once, by its first layer.")
        _check_bits("weight_bits", weight_bits, allow_none=True)
        _check_bits("act_bits", act_bits, allow_none=True)
        self.weight_bits = weight_bits
        self.act_bits = act_bits
        if overrides is not None and not isinstance(overrides, dict):
            raise _bad(f"`overrides` must be a mapping, got {type(overrides).__name__}.")
        self.overrides = copy.deepcopy(overrides) if overrides else {}
        if genie_config is not None and not isinstance(genie_config, dict):
            raise _bad(f"`genie_config` must be a mapping, got {type(genie_config).__name__}.")
        self.genie_config = copy.deepcopy(genie_config) if genie_config else None
        for key, headline in (("weight_bits", weight_bits), ("act_bits", act_bits)):
            recorded = (self.genie_config or {}).get(key)
            if headline is not None and recorded is not None and recorded != headline:  # the card, the Space show it
                raise _bad(f"{key} is {headline}, but the genie_config it was made with records {recorded}. The "
                           "file was edited by hand or written by an incompatible tool; quantize the model again.")
        overridden = self.overrides or (self.genie_config or {}).get("overrides")
        for key, headline, what in (("weight_bits", weight_bits, "weights"), ("act_bits", act_bits, "inputs")):
            layer_bits = [getattr(spec, key) for spec in self.layers.values() if getattr(spec, key) is not None]
            if headline is not None and len(layer_bits) >= 4 and headline not in layer_bits and not overridden:
                # without overrides only the first and last layers differ from the headline bits
                raise _bad(f"{key} is {headline}, but no layer has {headline}-bit {what} (they have "
                           f"{', '.join(map(str, sorted(set(layer_bits))))}), and no override explains it. The file "
                           "was edited by hand or written by an incompatible tool; quantize the model again.")
        self.packing = copy.deepcopy(packing) if packing else copy.deepcopy(PACKING)
        self.weight_scheme = copy.deepcopy(weight_scheme) if weight_scheme else copy.deepcopy(WEIGHT_SCHEME)
        self.act_scheme = copy.deepcopy(act_scheme) if act_scheme else copy.deepcopy(ACT_SCHEME)
        if format_version >= 2 and weights_file is None:
            weights_file = WEIGHTS_NAME
        if weights_file is not None and (not isinstance(weights_file, str) or weights_file not in (
                WEIGHTS_NAME, WEIGHTS_NAME + ".index.json")):
            raise _bad(f"weights_file is {weights_file!r}; expected {WEIGHTS_NAME!r} or its .index.json.")
        self.weights_file = weights_file  # None: format 1, weights in model.safetensors
        # Keys written by a later minor revision of the same format version are kept and written back as-is.
        self.extra = {k: copy.deepcopy(v) for k, v in kwargs.items() if not k.startswith("_")}

    # ---- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_result(cls, result) -> "GenieQuantizationConfig":
        """The config of a `genie_hub.quantization.QuantizationResult`."""
        config = result.config
        _frozen_layers(result.model)  # every op frozen
        return cls(layers=dict(result.layers), weight_bits=config.weight_bits, act_bits=config.act_bits,
                   overrides=config.overrides, genie_config=config.to_dict())

    @classmethod
    def from_model(cls, model) -> "GenieQuantizationConfig":
        """The config of a quantized model whose `config.quantization_config` is already a Genie one (a loaded
        checkpoint, or a quantize() result prepared by `genie_hub.checkpoint.bind`): layers re-read from the
        model, provenance kept."""
        layers = _frozen_layers(model)
        existing = getattr(getattr(model, "config", None), "quantization_config", None)
        if isinstance(existing, cls):
            return cls(layers=layers, weight_bits=existing.weight_bits, act_bits=existing.act_bits,
                       overrides=existing.overrides, genie_config=existing.genie_config)
        weights = [s.weight_bits for s in layers.values() if s.weight_bits is not None]
        acts = [s.act_bits for s in layers.values() if s.act_bits is not None]
        return cls(layers=layers, weight_bits=max(set(weights), key=weights.count) if weights else None,
                   act_bits=max(set(acts), key=acts.count) if acts else None)

    # ---- (de)serialization ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = {
            "quant_method": self.quant_method,
            "format": self.format,
            "format_version": self.format_version,
            "weight_bits": self.weight_bits,
            "act_bits": self.act_bits,
            "layers": {name: spec.to_dict() for name, spec in self.layers.items()},
            "overrides": copy.deepcopy(self.overrides),
            "genie_config": copy.deepcopy(self.genie_config),
            "packing": copy.deepcopy(self.packing),
            "weight_scheme": copy.deepcopy(self.weight_scheme),
            "act_scheme": copy.deepcopy(self.act_scheme),
        }
        if self.weights_file is not None:
            out["weights_file"] = self.weights_file
        for key, value in self.extra.items():
            out.setdefault(key, copy.deepcopy(value))
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def __iter__(self):
        yield from self.to_dict().items()

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], return_unused_kwargs: bool = False, **kwargs: Any):
        if not isinstance(config_dict, dict):
            raise _bad(f"expected a mapping, got {type(config_dict).__name__}.")
        config = cls(**config_dict)
        unused = {}
        for key, value in kwargs.items():
            if key in ("layers", "weight_bits", "act_bits", "format", "format_version", "quant_method",
                       "weights_file"):
                unused[key] = value  # loading-time arguments never change what the checkpoint holds
            elif hasattr(config, key):
                setattr(config, key, value)
            else:
                unused[key] = value
        return (config, unused) if return_unused_kwargs else config

    def get_loading_attributes(self) -> dict[str, Any]:
        return {}


def _frozen_layers(model) -> dict[str, LayerSpec]:
    from ..quantization import quantized_ops

    ops = quantized_ops(model)
    if not ops:
        raise CheckpointError("The model has no Genie-quantized layers: quantize it first with "
                              "genie_hub.quantize(model, calibration, config).")
    not_frozen = [name for name, op in ops.items() if not op.frozen]
    if not_frozen:
        raise CheckpointError(f"{len(not_frozen)} quantized layer(s) are not frozen (e.g. '{not_frozen[0]}'): "
                              "only a finished quantize() result can be saved.")
    return {name: op.spec() for name, op in ops.items()}


# ---- the guard that makes plain transformers (genie_hub not imported) refuse to load a Genie checkpoint -------
GUARD_KEY = "transformers_weights"
"""A top-level config.json key. transformers >= 5 reads it as the explicit weights file name and raises a
ValueError quoting it when it is not a `*.safetensors` name; a loaded genie quantizer removes it first."""
GUARD_MESSAGE = (
    "GENIE-QUANTIZED CHECKPOINT (quant_method 'genie', packed integer weights): this folder must be loaded with "
    "genie_hub. Run `pip install genie_hub` and `import genie_hub` before from_pretrained() or pipeline(). "
    "Without it transformers would build plain layers with RANDOM weights, so this guard refuses to load. (If "
    "genie_hub is imported and you still see this, config.json's quantization_config was removed or edited: it "
    "must be the one saved with the weights, quant_method 'genie'. Save or download the checkpoint again.)"
)


def is_guard(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("GENIE-QUANTIZED CHECKPOINT")
