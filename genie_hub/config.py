"""GenieConfig: every setting of a run, with the two profiles (`paper`, `quick`).

The `paper` profile is the reference implementation's effective defaults (see
`shared/reference/genie-method.md`); `quick` is for CPU demos and tests. Fields that the command line
exposes carry their flag and help text in their metadata (`option(...)`); `genie_hub.cli` builds its flags
from them, so a setting, its default and its help are written once, here.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import numbers
import logging
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

logger = logging.getLogger("genie_hub.config")

MIN_BITS, MAX_BITS = 2, 8
MAX_SAMPLES = 10_000_000
"""More calibration images than anyone calibrates with (the paper: 1024): a typo, refused before planning batches."""
SYNTHESIS_METHODS = ("genie", "pixels")
MIXED_PRECISIONS = ("no", "bf16")
SYNTHESIS_PRECISIONS = ("auto", "fp32", "bf16")
SPEED_ONLY_FIELDS = ("compile", "synthesis_batches_per_step", "synthesis_workers")
"""GenieConfig fields that change how fast a run goes, not its results (beyond float rounding)."""
SYNTHESIS_ONLY_FIELDS = ("synthesis_batch_size", "synthesis_iterations", "synthesis_batches_per_step",
                         "synthesis_workers", "latent_dim", "synthesis_method", "synthesis_prior", "lr_latent",
                         "lr_generator", "synthesis_precision", "dataset_storage")
"""GenieConfig fields that act on the synthetic images only (how they are made and stored): a few-shot run,
which makes none, is the same run whatever they are."""


def without_synthesis_settings(values: dict[str, Any]) -> dict[str, Any]:
    """A config dict without `SYNTHESIS_ONLY_FIELDS`: what a few-shot run's settings, and a reconstruction state
    (whose calibration images are fingerprinted themselves), are compared by."""
    return {k: v for k, v in values.items() if k not in SYNTHESIS_ONLY_FIELDS}


DATASET_STORAGES = ("exact", "fp16")
"""How OUT/dataset stores the synthetic tensors: exact float32, or float16 (half the size, lossy)."""

PROFILES: dict[str, dict[str, Any]] = {
    # Reference defaults: 1024 images = 8 batches of 128, 4000 iterations each; 20k steps per unit.
    "paper": dict(num_samples=1024, synthesis_batch_size=128, synthesis_iterations=4000,
                  reconstruction_steps=20000, reconstruction_batch_size=32),
    # Small enough for a laptop CPU: a few minutes on the embedded 28x28 model.
    "quick": dict(num_samples=128, synthesis_batch_size=64, synthesis_iterations=400,
                  reconstruction_steps=500, reconstruction_batch_size=32),
}


def option(flag: str, help: str, *, short: str | None = None, choices: tuple | None = None,
           metavar: str | None = None, parse: Any = None, repeat: bool = False) -> dict[str, Any]:
    """Field metadata that makes a `GenieConfig` field a command-line option of `genie_hub quantize`.

    `parse` turns one command-line value into the field's value (default: the field's type); with `repeat`
    the option may be given several times and the parsed (key, value) pairs form a dict."""
    return {"cli": {"flag": flag, "short": short, "help": help, "choices": choices, "metavar": metavar,
                    "parse": parse, "repeat": repeat}}


def parse_override(text: str) -> tuple[str, dict[str, int | None]]:
    """'PATTERN=W/A' -> (pattern, {"weight": W, "act": A}); W or A may be empty (keep), A may be 'fp'."""
    pattern, sep, bits = text.partition("=")
    weight, slash, act = bits.partition("/")
    if not sep or not slash or not pattern:
        raise ValueError(f"override '{text}' must look like PATTERN=W/A, e.g. 'classifier*=8/8'")
    parsed: dict[str, int | None] = {}
    try:
        if weight:
            parsed["weight"] = int(weight)
        if act:
            parsed["act"] = None if act.lower() in ("fp", "none", "fp32") else int(act)
    except ValueError:
        raise ValueError(f"override '{text}': bits must be integers (or 'fp' for an FP input)") from None
    return pattern, parsed


def format_override(pattern: str, bits: dict) -> str:
    """(pattern, {"weight": W, "act": A}) -> 'PATTERN=W/A', as --override takes it (the inverse of
    `parse_override`; an FP input is 'fp'), for cards and messages that show overrides to users."""
    act = bits.get("act", "")
    return f"{pattern}={bits.get('weight', '')}/{'fp' if act is None else act}"


@dataclass(frozen=True)
class LayerBits:
    """Bit-widths of one quantized op: `weight` bits and `act` bits of its input (None = keep FP)."""

    weight: int | None
    act: int | None

    def to_dict(self) -> dict:
        return {"weight": self.weight, "act": self.act}


def _refuse_unknown_settings(values: dict, known: set[str]) -> None:
    """A key that is not a setting is an error, not ignored: a typo such as "weight_bit" would change nothing."""
    unknown = sorted(str(k) for k in set(values) - known)
    if unknown:
        close = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
        raise ConfigError(f"Unknown GenieConfig setting(s) {', '.join(repr(k) for k in unknown)}"
                          + "".join(f" (did you mean {close[k][0]!r}?)" for k in unknown if close[k])
                          + f". The settings are: {', '.join(sorted(known))}.")


@dataclass
class GenieConfig:
    """Settings of a Genie run. Build with `GenieConfig.from_profile("quick", weight_bits=2)`.

    `overrides` maps fnmatch patterns over module names (e.g. `"classifier*"`, `"*.shortcut"`) to
    `{"weight": bits|None, "act": bits|None}`; they apply after the standard exceptions (first layer W8
    with FP input, second layer's input A8, last layer W8A8), which are themselves fields here.
    """

    weight_bits: int = field(default=4, metadata=option("--weight-bits", "weight bit-width of most layers",
                                                         short="-w"))
    act_bits: int = field(default=4, metadata=option("--act-bits", "activation (layer input) bit-width of most "
                                                     "layers", short="-a"))
    profile: str = field(default="paper", metadata=option(
        "--profile", "paper: the reference settings (a GPU job); quick: few samples and steps (CPU demos)",
        choices=tuple(PROFILES)))
    num_samples: int = field(default=1024, metadata=option("--num-samples", "number of calibration images"))
    synthesis_batch_size: int = field(default=128, metadata=option("--batch-size", "synthesis batch size"))
    synthesis_iterations: int = field(default=4000, metadata=option("--synthesis-iterations",
                                                                    "optimization steps per synthesis batch"))
    synthesis_batches_per_step: int = field(default=1, metadata=option(
        "--synthesis-batches-per-step", "synthesize this many batches together, in one forward and backward of "
        "the model per step: for GPUs that one batch leaves underused (memory grows with it). Each batch keeps "
        "its own generator, latents, optimizers, swing offsets and BatchNorm statistics, so the images are "
        "those of one batch at a time, up to float rounding"))
    synthesis_workers: int = field(default=0, metadata=option(
        "--synthesis-workers", "synthesize batches in this many one-thread worker processes at once, on a CPU "
        "(0: as many as torch has threads when there is a batch and the memory for each, else 1; a GPU, or an "
        "accelerate launch of several processes, always synthesizes in its own process). The images are those "
        "of one process up to float rounding"))
    latent_dim: int = 256
    synthesis_method: str = field(default="genie", metadata=option(
        "--synthesis-method", "genie: generator + latents + swing convolution; pixels: optimize the pixels "
        "directly (the ZeroQ-style baseline)", choices=SYNTHESIS_METHODS))
    synthesis_prior: str = field(default="auto", metadata=option(
        "--synthesis-prior", "what synthetic images must satisfy; auto picks the first prior that applies to the "
        "model (bn-statistics for BatchNorm models, patch-similarity for models without BatchNorm: ViT, DeiT, "
        "Swin, ConvNeXt)"))
    reconstruction_steps: int = field(default=20000, metadata=option("--reconstruction-steps",
                                                                     "Genie-M optimization steps per unit"))
    reconstruction_batch_size: int = 32
    seed: int = field(default=0, metadata=option("--seed", "seed of synthesis and reconstruction"))
    first_layer: LayerBits = field(default_factory=lambda: LayerBits(weight=8, act=None))
    second_layer_act_bits: int | None = 8
    last_layer: LayerBits = field(default_factory=lambda: LayerBits(weight=8, act=8))
    overrides: dict[str, dict[str, int | None]] = field(default_factory=dict, metadata=option(
        "--override", "per-module bits by fnmatch pattern over module names, e.g. 'classifier*=8/8' or "
        "'*.shortcut=/8' ('fp' keeps an input in floating point); repeatable", metavar="PATTERN=W/A",
        parse=parse_override, repeat=True))
    # Genie-D optimizer settings (effective values of the reference code).
    lr_latent: float = 0.1
    lr_generator: float = 0.01
    # Genie-M settings.
    # Steps are learned in log space (quantizers.LogStep), so these lrs are relative: one update moves a step by
    # about lr. 1e-2 is what the reference's absolute 1e-4 does to a typical 4-bit conv step (~1e-2), without
    # moving an 8-bit depthwise step (~1e-3) by 5-100 % per update. Measured in benchmarks/results (issue #10).
    lr_weight_step: float = 1e-2
    lr_act_step: float = 1e-3
    lr_rounding: float = 1e-3
    rounding_weight: float = 1.0
    warmup: float = 0.2
    beta_start: float = 20.0
    beta_end: float = 2.0
    qdrop_prob: float = 0.5  # chance that an element keeps its FP value (QDrop), at unit inputs and quantizers
    mixed_precision: str | None = field(default=None, metadata=option(
        "--mixed-precision", "bf16 autocast for synthesis and reconstruction (GPU)", choices=MIXED_PRECISIONS))
    """None: as accelerate is configured (`accelerate config`, `accelerate launch --mixed_precision`,
    ACCELERATE_MIXED_PRECISION), "no" when it is not; `make_accelerator` resolves it before any compute."""
    synthesis_precision: str = field(default="auto", metadata=option(
        "--synthesis-precision", "precision of Genie-D synthesis: bf16 autocast or fp32; auto follows "
        "--mixed-precision when it is given (and accelerate's bf16), else bf16 where the device computes it "
        "natively (CPUs with AVX512-BF16 or AMX, CUDA GPUs from Ampere on), fp32 elsewhere. Reconstruction "
        "follows --mixed-precision alone", choices=SYNTHESIS_PRECISIONS))
    """A synthesis step is mostly convolutions, which native bf16 ran 1.8x faster on the CPU machine (a whole
    one-thread step 1.4-1.45x); the images' BN statistics and the accuracy they calibrate to stayed within seed
    noise (docs/results.md). Reconstruction is elementwise work on small tensors, where bf16 gained nothing, so
    it keeps fp32 unless asked.
    `resolve_precision` turns "auto" into the precision used, before any compute; run.json records it."""
    compile: bool = field(default=False, metadata=option(
        "--compile", "compile the synthesis step and each reconstruction unit's training step with torch.compile: "
        "for GPUs, where the launch overhead of many small kernels dominates a step; on CPU the eager "
        "reconstruction kernels were faster in benchmarks/speed.py, and compiling takes about half a minute per "
        "graph. The same functions, up to float rounding and QDrop's random masks (drawn by the compiler's RNG); "
        "run.json records whether synthesis and which units ran compiled"))
    dataset_storage: str = field(default="exact", metadata=option(
        "--dataset-storage", "how the published calibration set stores pixel_values: exact (float32, what the "
        "model was calibrated on) or fp16 (half the size, lossy); PNG previews are kept either way",
        choices=DATASET_STORAGES))

    @classmethod
    def _named(cls, name: str) -> str:
        """A setting as an error names it: the field, and the `genie_hub quantize` flag that sets it, if any."""
        flag = next(f for f in dataclasses.fields(cls) if f.name == name).metadata.get("cli", {}).get("flag")
        return f"{name} ({flag})" if flag else name

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):  # numpy numbers (np.int64(4)) as Python's: run.json is JSON
            value = getattr(self, item.name)
            if isinstance(value, numbers.Integral) and not isinstance(value, (int, bool)):
                setattr(self, item.name, int(value))
            elif isinstance(value, numbers.Real) and not isinstance(value, (int, float)):
                setattr(self, item.name, float(value))
        for name in ("first_layer", "last_layer"):
            value = getattr(self, name)
            if isinstance(value, dict) and set(value) == {"weight", "act"}:
                setattr(self, name, LayerBits(**value))
            elif not isinstance(value, LayerBits):
                raise ConfigError(f"{name} must be {{'weight': bits, 'act': bits or None}}, got {value!r}.")
        self.validate()
        # A batch larger than the whole set is the set: record what runs, so that the same run given either
        # batch size is recognised as the same (resumed, not refused as other settings).
        self.synthesis_batch_size = min(self.synthesis_batch_size, self.num_samples)

    @classmethod
    def from_profile(cls, profile: str = "paper", **overrides: Any) -> "GenieConfig":
        if profile not in PROFILES:
            raise ConfigError(f"Unknown profile '{profile}'. Choose one of: {', '.join(PROFILES)}.")
        _refuse_unknown_settings(overrides, {f.name for f in dataclasses.fields(cls)} - {"profile"})
        return cls(profile=profile, **{**PROFILES[profile], **overrides})  # None too: e.g. an FP second layer

    def validate(self) -> None:
        def check_bits(name: str, bits: int | None, allow_none: bool = False) -> None:
            if bits is None and allow_none:
                return
            if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
                raise ConfigError(
                    f"Invalid bit-width {bits!r} for {name}: genie_hub supports integer bit-widths from "
                    f"{MIN_BITS} to {MAX_BITS} (e.g. --weight-bits 4 --act-bits 4)."
                    + (" Use None (`fp` on the command line, null in JSON) to keep it in floating point."
                       if allow_none else ""))

        if self.profile not in PROFILES:
            raise ConfigError(f"Unknown profile {self.profile!r}. Choose one of: {', '.join(PROFILES)}.")
        if self.profile != "paper" and all(getattr(self, k) == v for k, v in PROFILES["paper"].items()):
            raise ConfigError(  # GenieConfig(profile="quick") would be an hours-long run labelled quick
                f"GenieConfig(profile={self.profile!r}) holds the paper profile's settings: the constructor records "
                f"the name but does not apply a profile. Use GenieConfig.from_profile({self.profile!r}, ...), which "
                "applies its settings (and takes any field as an override).")
        check_bits("weight_bits", self.weight_bits)
        check_bits("act_bits", self.act_bits)
        check_bits("first_layer.weight", self.first_layer.weight)
        check_bits("first_layer.act", self.first_layer.act, allow_none=True)
        check_bits("second_layer_act_bits", self.second_layer_act_bits, allow_none=True)
        check_bits("last_layer.weight", self.last_layer.weight)
        check_bits("last_layer.act", self.last_layer.act, allow_none=True)
        if not isinstance(self.overrides, dict) or not all(
                isinstance(pattern, str) and pattern.strip() and isinstance(bits, dict)
                for pattern, bits in self.overrides.items()):
            raise ConfigError(f"overrides (--override) must map module-name patterns to {{'weight': bits, 'act': "
                              f"bits}}, e.g. {{'classifier*': {{'weight': 8, 'act': 8}}}}; got {self.overrides!r}.")
        for pattern, bits in self.overrides.items():
            unknown = set(bits) - {"weight", "act"}
            if unknown:
                raise ConfigError(f"Override '{pattern}' has unknown keys {sorted(unknown)}; use 'weight'/'act'.")
            if "weight" in bits:
                check_bits(f"override '{pattern}' weight", bits["weight"])
            if "act" in bits:
                check_bits(f"override '{pattern}' act", bits["act"], allow_none=True)
        def integer(name: str) -> bool:  # a real integer: not a bool, a float, a string or NaN
            value = getattr(self, name)
            return isinstance(value, numbers.Integral) and not isinstance(value, bool)

        for name in ("num_samples", "synthesis_batch_size", "synthesis_iterations", "reconstruction_batch_size",
                     "latent_dim", "synthesis_batches_per_step"):
            if not integer(name) or getattr(self, name) < 1:
                raise ConfigError(f"{self._named(name)} must be a positive integer, got {getattr(self, name)!r}.")
        if self.num_samples > MAX_SAMPLES:
            raise ConfigError(f"{self._named('num_samples')} is {self.num_samples}, more than {MAX_SAMPLES:,} "
                              "images (the paper calibrates with 1024).")
        if not integer("synthesis_workers") or self.synthesis_workers < 0:
            raise ConfigError(f"{self._named('synthesis_workers')} must be 0 (automatic) or a positive number of "
                              f"processes, got {self.synthesis_workers!r}.")
        if not integer("reconstruction_steps") or self.reconstruction_steps < 0:
            raise ConfigError(f"{self._named('reconstruction_steps')} must be an integer >= 0, got "
                              f"{self.reconstruction_steps!r}.")
        if not integer("seed") or not 0 <= self.seed < 2**63:
            raise ConfigError(f"{self._named('seed')} must be an integer from 0 to 2^63 - 1, got {self.seed!r}.")
        # Checked here, not where they are used: a bad value would surface only after synthesis, minutes in.
        for name, low, high in (("lr_latent", 0, math.inf), ("lr_generator", 0, math.inf),
                                ("lr_weight_step", 0, math.inf), ("lr_act_step", 0, math.inf),
                                ("lr_rounding", 0, math.inf), ("rounding_weight", 0, math.inf), ("warmup", 0, 1),
                                ("qdrop_prob", 0, 1), ("beta_start", 1, math.inf), ("beta_end", 1, math.inf)):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value)
                                               and low <= value <= high):
                bound = f"between {low} and {high}" if high != math.inf else f"a finite number >= {low}"
                raise ConfigError(f"{self._named(name)} must be {bound}, got {value!r}.")
        if self.synthesis_method not in SYNTHESIS_METHODS:
            raise ConfigError(f"synthesis_method must be 'genie' or 'pixels', got {self.synthesis_method!r}.")
        if not isinstance(self.synthesis_prior, str) or not self.synthesis_prior:
            raise ConfigError(f"synthesis_prior must be a prior name or 'auto', got {self.synthesis_prior!r}.")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISIONS:
            # fp16 would need gradient scaling: not supported
            raise ConfigError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r} (fp16 "
                              "needs gradient scaling, which genie_hub does not do; use bf16).")
        if self.synthesis_precision not in SYNTHESIS_PRECISIONS:
            raise ConfigError(f"synthesis_precision must be one of {', '.join(SYNTHESIS_PRECISIONS)}, got "
                              f"{self.synthesis_precision!r}.")
        if not isinstance(self.compile, bool):
            raise ConfigError(f"compile must be true or false, got {self.compile!r}.")
        if self.dataset_storage not in DATASET_STORAGES:
            raise ConfigError(f"dataset_storage must be one of {', '.join(DATASET_STORAGES)}, got "
                              f"{self.dataset_storage!r}.")

    def synthesis_batch_sizes(self) -> list[int]:
        """Sizes of the synthesis batches; the last one holds the remainder. A remainder of a single image joins
        the last full batch: the statistics of one image are no batch statistics to match."""
        full, rest = divmod(self.num_samples, self.synthesis_batch_size)
        if rest == 1 and full:
            return [self.synthesis_batch_size] * (full - 1) + [self.synthesis_batch_size + 1]
        return [self.synthesis_batch_size] * full + ([rest] if rest else [])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def results_dict(self) -> dict[str, Any]:
        """`to_dict()` without the settings that change only how fast a run goes (not its results beyond float
        rounding): a run may resume with them changed."""
        return {k: v for k, v in self.to_dict().items() if k not in SPEED_ONLY_FIELDS}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "GenieConfig":
        """A config from a dict (run.json's, a zoo registry's): its profile's values, then the dict's. A key
        that is not a setting is an error, not ignored (a typo such as "weight_bit" would change the bits)."""
        if not isinstance(values, dict):
            raise ConfigError(f"A GenieConfig is read from a dict of settings, got {type(values).__name__}.")
        values = dict(values)  # its other keys are checked by from_profile
        return cls.from_profile(values.pop("profile", "paper"), **values)

    def synthesis_fingerprint(self) -> dict[str, Any]:
        """The settings that determine the synthetic images: a resumed run must match them."""
        return {k: getattr(self, k) for k in ("seed", "synthesis_batch_size", "synthesis_iterations",
                                              "synthesis_method", "latent_dim", "lr_latent", "lr_generator",
                                              "synthesis_precision")}

    @classmethod
    def cli_fields(cls) -> list[dataclasses.Field]:
        """The fields exposed as `genie_hub quantize` options, in declaration order."""
        return [f for f in dataclasses.fields(cls) if "cli" in f.metadata]

    @classmethod
    def default_text(cls, name: str) -> str:
        """The default of field `name` as help text: per profile where the profiles differ."""
        if any(name in values for values in PROFILES.values()):
            return ", ".join(f"{profile} {values.get(name, '-')}" for profile, values in PROFILES.items())
        if name in DEFAULT_TEXTS:
            return DEFAULT_TEXTS[name]
        value = next(f for f in dataclasses.fields(cls) if f.name == name)
        default = value.default if value.default is not dataclasses.MISSING else value.default_factory()
        return "none" if default in ({}, None) else str(default)


DEFAULT_TEXTS = {"mixed_precision": "as `accelerate config` / `accelerate launch --mixed_precision` set it, else no"}
"""Help text of defaults that are not a plain value."""


def warn_paper_default(call: str, config: GenieConfig, device: Any) -> None:
    """A library call given no config runs the paper profile, like the command line's default. That is a GPU
    job (hours or days elsewhere); the command line warns with a measured projection before it starts, so a
    library call off a CUDA device says so too, instead of only in its progress bar's ETA."""
    if getattr(device, "type", str(device).split(":")[0]) != "cuda":
        logger.warning(
            "%s() got no config, so it runs the paper profile (%d images x %d synthesis iterations, %d "
            "reconstruction steps per unit): a GPU job, which takes hours or days on %s. For a quick run pass "
            "config=GenieConfig.from_profile('quick') (or set num_samples, synthesis_iterations and "
            "reconstruction_steps yourself).", call, config.num_samples, config.synthesis_iterations,
            config.reconstruction_steps, device)


def make_accelerator(config: GenieConfig, **kwargs: Any) -> tuple[Any, GenieConfig]:
    """An `accelerate.Accelerator` for a run, and `config` with `mixed_precision` resolved from it.

    `mixed_precision` is passed only when the config sets it (the user gave --mixed-precision); otherwise the
    Accelerator takes it from `accelerate config` / `accelerate launch --mixed_precision` (the
    ACCELERATE_MIXED_PRECISION variable), like any accelerate program. fp16 is refused here, before compute."""
    from accelerate import Accelerator

    if config.mixed_precision is not None:
        kwargs["mixed_precision"] = config.mixed_precision
    try:
        accelerator = Accelerator(**kwargs)
    except ValueError as exc:  # accelerate keeps one state per process and refuses to change it
        if "already been initialized" not in str(exc):
            raise
        raise ConfigError(
            f"This Python process already set up accelerate with another mixed precision, and accelerate allows "
            f"one per process, so a run with mixed_precision={config.mixed_precision!r} cannot start here. Run it "
            "in a new process (each `genie_hub` command is one), or keep the first run's setting; "
            "`genie_hub.quantize` without an accelerator is not affected.") from None
    if str(accelerator.mixed_precision) not in MIXED_PRECISIONS:
        raise ConfigError(f"accelerate is configured for {accelerator.mixed_precision} mixed precision (by `accelerate "
                          "config`, `accelerate launch --mixed_precision` or ACCELERATE_MIXED_PRECISION), which "
                          "genie_hub does not support (fp16 needs gradient scaling). Pass --mixed-precision bf16 or "
                          "--mixed-precision no, or change the accelerate setting.")
    return accelerator, resolve_precision(config, accelerator)


def native_bf16(device: Any) -> bool:
    """Whether `device` computes bf16 in hardware, where bf16 convolutions run about twice as fast as fp32: CUDA
    GPUs from Ampere on, CPUs with AVX512-BF16 or AMX (elsewhere bf16 is emulated, and slower)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(check() for check in checks if check is not None)
    return False


def resolve_precision(config: GenieConfig, accelerator: Any) -> GenieConfig:
    """`config` with `mixed_precision` taken from `accelerator` where unset, and `synthesis_precision` "auto"
    made concrete: bf16 when the run's mixed precision is bf16 (from --mixed-precision or accelerate), fp32 when
    --mixed-precision no was given, else bf16 where the device computes it natively. accelerate's own "no" is not
    read as a choice: `accelerate launch` always sets one, so a launched run makes the images a plain one makes."""
    mixed = config.mixed_precision or str(accelerator.mixed_precision)
    synthesis = config.synthesis_precision
    if synthesis == "auto":
        if mixed == "bf16":
            synthesis = "bf16"
        elif config.mixed_precision == "no":
            synthesis = "fp32"
        else:
            synthesis = "bf16" if native_bf16(accelerator.device) else "fp32"
    elif synthesis == "bf16" and not native_bf16(accelerator.device):
        logger.warning("Synthesis in bf16 was asked for, but %s computes bf16 without hardware support, where it is "
                       "usually slower than fp32 (--synthesis-precision fp32).", accelerator.device)
    return dataclasses.replace(config, mixed_precision=mixed, synthesis_precision=synthesis)
