"""Genie compare: an FP32 image classifier next to its Genie zero-shot quantized version.

Upload a photo (or pick an example), and the Space runs both models on it and shows each one's top-5
classes, whether their top-1 predictions agree, the KL divergence KL(p_fp32 || p_quant) between their
output distributions, and each model's measured latency.

The quantized checkpoint is *fake-quantized*: its weights and activations are rounded to the low-bit grid,
but the arithmetic still runs on FP32 kernels. Its latency is therefore not a speed-up, and the app says so.

Model ids (Hub id or local folder), in order of precedence:
  1. the arguments of `build_demo(fp32, quantized)`;
  2. the environment variables GENIE_FP32_MODEL / GENIE_QUANTIZED_MODEL;
  3. `space_config.json` next to this file (written by `genie_hub.space.prepare_space_folder`);
  4. the default models embedded in the genie_hub package (so the app runs offline), shown by their Hub ids
     (`genie-hub/<name>`, loaded from the embedded copy): the boxes never show a folder of the server.

Example images match the model: Fashion-MNIST test images (shipped in examples/) for a Fashion-MNIST model,
real photos for any other (ImageNet) model.

Run as a Space (`python app.py`; GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are honoured by gradio itself),
or from genie_hub (`genie_hub.space.launch_space`).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

import genie_hub  # noqa: E402,F401  (registers the "genie" quantization method with transformers)
from genie_hub.adapters import adapter_for, model_logits  # noqa: E402
from genie_hub.adapters.base import in_model_mode  # noqa: E402
from genie_hub.errors import GenieError  # noqa: E402
from genie_hub.evaluation import input_differences  # noqa: E402
from genie_hub.fileio import atomic_path  # noqa: E402
from genie_hub.data.fashion_mnist import FASHION_MNIST_LABELS  # noqa: E402
from genie_hub.loading import (  # noqa: E402
    DEFAULT_MODEL_DIR,
    DEFAULT_QUANTIZED_DIR,
    embedded_folder,
    embedded_hub_id,
    input_spec,
    load_model,
    require_processor,
    to_pixel_values,
)

APP_DIR = Path(__file__).resolve().parent
CONFIG_PATH = APP_DIR / "space_config.json"
FP32_ENV = "GENIE_FP32_MODEL"
QUANTIZED_ENV = "GENIE_QUANTIZED_MODEL"
EXAMPLES_ENV = "GENIE_SPACE_EXAMPLES_DIR"
FASHION_MNIST_EXAMPLES = APP_DIR / "examples" / "fashion-mnist"
"""One Fashion-MNIST test image per class (benchmarks/make_space_examples.py), for Fashion-MNIST models."""

MIN_SIDE = 8
"""Smallest accepted image side, in pixels."""
MAX_PIXELS = 4096 * 4096
"""Largest accepted image, in pixels (checked from the file header, before decoding): a small PNG can claim a
huge size, and decoding 10000x10000 px costs gigabytes."""
MAX_FILE_SIZE = "20mb"
"""Largest upload the server accepts."""
MAX_INLINE_BYTES = 20 * 1024 * 1024
"""The same limit for an image sent inline by the API (a `data:` URL), which gradio's limit does not cover."""
INLINE_UPLOADS = Path(tempfile.gettempdir()) / "genie_hub_space_uploads"
"""Where inline images wait for `compare`, which deletes each once it has opened it."""
HUB_ONLY_ENV = "GENIE_SPACE_HUB_ONLY"
ALLOWED_MODELS_ENV = "GENIE_SPACE_ALLOWED_MODELS"
"""Comma-separated Hub ids: with it, a public Space loads only these (and its two defaults)."""
TOP_K = 5
LATENCY_RUNS = 5
"""Timed forward passes per model (after one warm-up run); the median is reported."""
LATENCY_NOTE = "Fake quantization runs FP32 kernels: this latency is not a speed-up."

_SUPPORTED_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
                    "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


# --------------------------------------------------------------------------------------------- defaults

def _read_space_config() -> dict:
    if not CONFIG_PATH.is_file():
        return {}
    try:
        data = json.loads(CONFIG_PATH.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        warnings.warn(f"Ignoring unreadable {CONFIG_PATH.name}: {exc}")
        return {}
    return data if isinstance(data, dict) else {}


def default_models() -> tuple[str, str]:
    """The (fp32, quantized) model ids used when `build_demo` is given none: env, space_config.json, embedded."""
    config = _read_space_config()
    fp32 = os.environ.get(FP32_ENV) or config.get("fp32_model") or embedded_hub_id(DEFAULT_MODEL_DIR) \
        or str(DEFAULT_MODEL_DIR)
    quantized = os.environ.get(QUANTIZED_ENV) or config.get("quantized_model") \
        or embedded_hub_id(DEFAULT_QUANTIZED_DIR) or str(DEFAULT_QUANTIZED_DIR)
    return str(fp32), str(quantized)


# ------------------------------------------------------------------------------------------- examples

def _example_dir() -> Path:
    env = os.environ.get(EXAMPLES_ENV)
    return Path(env) if env else Path(tempfile.gettempdir()) / "genie_hub_space_examples"


def _example_images() -> dict[str, Callable[[], Image.Image]]:
    """Real photos that ship inside installed wheels (no download): name -> loader returning a PIL image."""
    loaders: dict = {}
    try:
        from skimage import data as skdata

        for name in ("coffee", "chelsea", "astronaut", "rocket"):
            fn = getattr(skdata, name, None)
            if fn is not None:
                loaders[name] = (lambda fn=fn: Image.fromarray(fn()))
    except Exception:  # scikit-image not installed
        pass
    try:
        from sklearn.datasets import load_sample_images

        def _sklearn(index):
            return Image.fromarray(load_sample_images().images[index])

        loaders["china"] = lambda: _sklearn(0)
        loaders["flower"] = lambda: _sklearn(1)
    except Exception:
        pass
    try:
        from matplotlib import cbook

        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        if Path(path).is_file():
            loaders["grace_hopper"] = lambda path=path: Image.open(path)
    except Exception:
        pass
    return loaders


def fashion_mnist_examples() -> list[str]:
    """The Fashion-MNIST example images shipped next to this app (one per class)."""
    return [str(p) for p in sorted(FASHION_MNIST_EXAMPLES.glob("*.png"))]


def _label_key(name: str) -> str:
    return "".join(c for c in str(name).lower() if c.isalnum())


def model_kind(model_id: str) -> str | None:
    """"fashion-mnist" for a model that classifies the Fashion-MNIST classes, "photos" for any other, None when
    the model cannot be loaded (then every example set is offered)."""
    try:
        loaded = load_cached(model_id)
    except Exception:
        return None
    labels = {_label_key(loaded.label(i)) for i in range(loaded.num_labels)}
    return "fashion-mnist" if labels == {_label_key(name) for name in FASHION_MNIST_LABELS} else "photos"


def example_sets(model_id: str, zoo: list[dict] | None = None) -> list[tuple[str, list[str]]]:
    """(label, image paths) of the example sets that fit `model_id` (both sets with a zoo: its entries differ)."""
    kind = None if zoo else model_kind(model_id)
    sets = []
    if kind in (None, "fashion-mnist") and fashion_mnist_examples():
        sets.append(("Fashion-MNIST test images (for the Fashion-MNIST models)", fashion_mnist_examples()))
    if kind in (None, "photos") and example_files():
        sets.append(("Photos (for ImageNet models; shipped inside installed packages)", example_files()))
    return sets


def example_files() -> list[str]:
    """Write the shipped photos once as PNG files into a cache folder and return their paths."""
    folder = _example_dir()
    paths = []
    for name, loader in _example_images().items():
        path = folder / f"{name}.png"
        if not path.is_file():
            try:
                folder.mkdir(parents=True, exist_ok=True)
                image = loader().convert("RGB")
                with atomic_path(path) as tmp:  # concurrent app processes never see a half-written file
                    image.save(tmp, format="PNG")
            except Exception as exc:
                warnings.warn(f"Could not write example image {name}: {exc}")
                continue
        paths.append(str(path))
    return paths


# --------------------------------------------------------------------------------------------- models

@dataclass(frozen=True)
class LoadedModel:
    model_id: str
    model: torch.nn.Module
    processor: object
    spec: object

    @property
    def num_labels(self) -> int:
        return int(adapter_for(self.model).num_labels(self.model))

    def label(self, index: int) -> str:
        return adapter_for(self.model).label(self.model, index)

    @property
    def quantization(self):
        """The config's quantization_config as a dict (None for a plain FP checkpoint)."""
        qc = getattr(getattr(self.model, "config", None), "quantization_config", None)
        if qc is None:
            return None
        if hasattr(qc, "to_dict"):
            qc = qc.to_dict()
        return dict(qc) if isinstance(qc, dict) else {"quant_method": str(qc)}


def _looks_like_path(model_id: str) -> bool:
    return (os.path.isabs(model_id) or model_id.startswith(("./", "../", "~", ".\\")) or "\\" in model_id
            or model_id.count("/") > 1)


def _folder_stamp(model_id: str) -> tuple:
    """What a local model folder holds now (name, size, mtime of its config and weights): part of the cache key,
    so that a folder rewritten while the app runs (`genie_hub quantize --overwrite`, a zoo rebuild) is loaded
    again instead of served from the cache. Empty for a Hub id."""
    folder = Path(model_id)
    if not folder.is_dir():
        return ()
    files = sorted(p for pattern in ("*.json", "*.safetensors") for p in folder.glob(pattern))
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.is_file())


@lru_cache(maxsize=4)
def _load_stamped(model_id: str, stamp: tuple) -> LoadedModel:
    model, processor = load_model(model_id)
    require_processor(processor, model_id, "this app")  # a guessed input size would show wrong predictions
    return LoadedModel(model_id, model, processor, input_spec(model, processor))


def _load_cached(model_id: str) -> LoadedModel:
    return _load_stamped(model_id, _folder_stamp(model_id))


def hub_only() -> bool:
    """On a Hugging Face Space (SPACE_ID set) or with GENIE_SPACE_HUB_ONLY=1, the model boxes take Hub ids only:
    a public app must not load, or reveal the existence of, folders on its server."""
    return bool(os.environ.get("SPACE_ID")) or os.environ.get(HUB_ONLY_ENV, "") in ("1", "true", "yes")


def check_model_allowed(model_id: str) -> None:
    """GenieError unless this app may load `model_id` (see `hub_only`; the two default models always may)."""
    if not hub_only() or model_id in default_models():
        return
    parts = model_id.split("/")
    if _looks_like_path(model_id) or len(parts) != 2 or not all(
            part and part not in (".", "..") and all(c.isalnum() or c in "-_." for c in part) for part in parts):
        raise GenieError(f"This app accepts Hub model ids only (owner/name), not '{model_id}'.")
    allowed = [m.strip() for m in os.environ.get(ALLOWED_MODELS_ENV, "").split(",") if m.strip()]
    if allowed and model_id not in allowed:
        raise GenieError(f"This app compares only these models: {', '.join(allowed)}.")


def load_cached(model_id: str) -> LoadedModel:
    """Load a model once per id (lru-cached). Raises GenieError (ModelLoadError) with a clear message."""
    model_id = (model_id or "").strip()
    if not model_id:
        raise GenieError("No model given: enter a Hub id (owner/name)" + ("." if hub_only() else " or a local folder."))
    check_model_allowed(model_id)
    embedded = embedded_folder(model_id)  # genie-hub/<asset>: the embedded copy of a published model
    if embedded is not None:
        return _load_cached(str(embedded))
    if hub_only() and model_id not in default_models():
        return _load_from_hub_only(model_id)
    path = Path(model_id).expanduser()
    if path.resolve() in (DEFAULT_MODEL_DIR.resolve(), DEFAULT_QUANTIZED_DIR.resolve()) \
            and not (path / "config.json").is_file():
        raise GenieError(f"The embedded default model is missing from {path}. Reinstall genie_hub (or "
                         "regenerate the assets), or enter a Hub id instead.")
    if _looks_like_path(model_id) and not path.exists():
        raise GenieError(f"The local folder '{model_id}' does not exist. Enter an existing folder or a Hub id "
                         "(owner/name).")
    return _load_cached(str(path) if path.exists() else model_id)


def _load_from_hub_only(model_id: str) -> LoadedModel:
    """A typed id on a public app: from the Hub, never from this server's disk, even where `owner/name` also
    names a folder relative to the app; every failure reads the same, so messages reveal nothing about which
    paths exist here."""
    unavailable = GenieError(f"Could not load '{model_id}' from the Hub: check the id (owner/name), that the model "
                             "is public, and that it is an image classifier.")
    if Path(model_id).expanduser().exists():
        raise unavailable
    try:
        return _load_cached(model_id)
    except GenieError:
        raise unavailable from None


def _load_for_ui(model_id: str, role: str) -> LoadedModel:
    try:
        return load_cached(model_id)
    except GenieError as exc:
        raise gr.Error(f"{role} model: {exc}", title="Model could not be loaded") from exc


# ---------------------------------------------------------------------------------------------- image

def check_image(image) -> Image.Image:
    """Reject a missing, too small or unconvertible image (gr.Error); return it as a PIL image."""
    if image is None:
        raise gr.Error("No image: upload a photo or pick one of the examples first.", title="No image")
    if isinstance(image, (str, os.PathLike)):
        try:
            image = Image.open(image)
        except Image.DecompressionBombError as exc:
            raise gr.Error(f"The image is too large: at most {MAX_PIXELS // 1_000_000} megapixels are accepted. "
                           "Downscale it first.", title="Image too large") from exc
        except Exception as exc:  # the message names the server's upload path: not shown
            raise gr.Error("Cannot open this file as an image: it is not a PNG, JPEG, WebP, GIF, BMP or TIFF image "
                           f"that PIL can read, or it is damaged ({type(exc).__name__}).",
                           title="Unsupported image") from exc
    elif isinstance(image, np.ndarray):
        try:
            image = Image.fromarray(image)
        except Exception as exc:
            raise gr.Error(f"Cannot read this array as an image ({exc}).", title="Unsupported image") from exc
    if not isinstance(image, Image.Image):
        raise gr.Error(f"Unsupported image type {type(image).__name__}.", title="Unsupported image")
    width, height = image.size  # from the header: nothing is decoded yet for a file
    if width * height > MAX_PIXELS and getattr(image, "format", None) == "JPEG":
        # A camera photo (24-50 MP): JPEG decodes at 1/2, 1/4 or 1/8 scale for the cost of that size, and every
        # model reads far fewer pixels than that.
        scale = next((k for k in (2, 4, 8) if -(-width // k) * -(-height // k) <= MAX_PIXELS), None)
        if scale is not None:
            image.draft(image.mode, (width // scale, height // scale))
            width, height = image.size
    if width * height > MAX_PIXELS:
        raise gr.Error(f"The image is too large ({width}x{height} px): at most {MAX_PIXELS // 1_000_000} megapixels "
                       "are accepted. Downscale it first.", title="Image too large")
    if width < MIN_SIDE or height < MIN_SIDE:
        raise gr.Error(f"The image is too small ({width}x{height} px): each side needs at least {MIN_SIDE} px.",
                       title="Image too small")
    if image.mode not in _SUPPORTED_MODES:
        raise gr.Error(f"Cannot convert an image in mode '{image.mode}'. Use an RGB, RGBA or grayscale "
                       "PNG/JPEG/WebP.", title="Unsupported image mode")
    return image


def prepare_image(image, channels: int) -> Image.Image:
    """Check the image and convert it to what the model takes ("L" for 1 channel, else "RGB"), upright as the
    browser shows it (phone photos store their pixels sideways and say so in EXIF)."""
    image = check_image(image)
    mode = image.mode
    target = "L" if channels == 1 else "RGB"
    try:
        image.load()
    except Exception as exc:
        raise gr.Error(f"The image file is damaged or truncated and could not be decoded ({type(exc).__name__}). "
                       "Re-save it and upload it again.", title="Damaged image") from exc
    try:  # upright, as the browser shows it (as genie_hub.data.pixels.decode_image reads dataset images)
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a malformed EXIF block: the pixels as stored
        pass
    try:  # as evaluate and few-shot read images: rescaled 16-bit/float pixels, transparent areas on white
        return in_model_mode(image, target)
    except Exception as exc:
        raise gr.Error(f"Cannot convert the image from mode '{mode}' to {target} ({exc}).",
                       title="Unsupported image mode") from exc


# ------------------------------------------------------------------------------------------- compare

def _timed(model: torch.nn.Module, x: torch.Tensor) -> float:
    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(x.device)
    start = time.perf_counter()
    model_logits(model, x)
    if cuda:
        torch.cuda.synchronize(x.device)
    return (time.perf_counter() - start) * 1000.0


def _run_both(models: list[LoadedModel], inputs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[float]]:
    """Logits of each model for its input, and each model's median latency in ms.

    One warm-up pass each, then LATENCY_RUNS timed passes, alternating between the models so that a busy
    machine slows both alike.
    """
    xs = [x.to(next(m.model.parameters()).device) for m, x in zip(models, inputs)]
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        logits = [model_logits(m.model, x)[0].float().cpu() for m, x in zip(models, xs)]
        for _ in range(LATENCY_RUNS):
            for i, (m, x) in enumerate(zip(models, xs)):
                times[i].append(_timed(m.model, x))
    return logits, [statistics.median(t) for t in times]


def display_labels(loaded: LoadedModel) -> list[str]:
    """Each class's name as the app shows it: unique (a top-5 is a dict keyed by name, so two classes with one
    name would collapse into one entry), the same for a class in both panels (a repeated name always carries its
    index), and never blank."""
    names = [loaded.label(i).strip() or f"class {i}" for i in range(loaded.num_labels)]
    for _ in range(3):  # a suffixed name can meet a real one ("cat (#2)"): suffix again
        counts = Counter(names)
        if len(counts) == len(names):
            return names
        names = [f"{name} (#{i})" if counts[name] > 1 else name for i, name in enumerate(names)]
    return [f"{i}: {name}" for i, name in enumerate(names)]


def _top_k(names: list[str], probs: torch.Tensor) -> dict[str, float]:
    values, indices = probs.topk(min(TOP_K, probs.numel()))
    return {names[index]: float(value) for value, index in zip(values.tolist(), indices.tolist())}


def pair_problems(fp32: LoadedModel, quant: LoadedModel) -> list[str]:
    """Signs that the quantized model was not made from this FP32 model (`genie_hub.evaluation.input_differences`):
    their agreement would say nothing about quantization."""
    return input_differences(fp32.model, fp32.spec, quant.model, quant.spec)


def _fmt_ms(ms: float) -> str:
    return f"{ms:.2f} ms" if ms < 100 else f"{ms:.0f} ms"


def _fmt_kl(kl: float) -> str:
    return f"{kl:.4f}" if kl >= 1e-3 or kl == 0 else f"{kl:.2e}"


def _describe_quant(quant: dict | None) -> str:
    if quant is None:
        return "no quantization_config (a plain FP checkpoint)"
    parts = [str(quant.get("quant_method", "unknown method"))]
    bits = {k: v for k, v in quant.items() if "bit" in k.lower() and isinstance(v, int)}
    parts += [f"{k}={v}" for k, v in sorted(bits.items())]
    return ", ".join(parts)


def compare(image, fp32_id: str, quantized_id: str) -> tuple[dict[str, float], dict[str, float], str]:
    """Run both models on `image`; return (FP32 top-5, quantized top-5, markdown summary).

    Raises gr.Error (shown in the UI) for a missing/unusable image, a model that cannot be loaded, or two
    models with different numbers of classes.
    """
    upload = image
    try:
        image = check_image(image)  # fail fast, before loading any model
    finally:
        _remove_inline_upload(upload)
    fp32 = _load_for_ui(fp32_id, "FP32")
    quant = _load_for_ui(quantized_id, "Quantized")
    if fp32.num_labels != quant.num_labels:
        raise gr.Error(f"The two models must classify the same classes: the FP32 model has {fp32.num_labels} "
                       f"classes, the quantized model {quant.num_labels}.", title="Models do not match")

    notes = []
    if quant.quantization is None:
        msg = "The 'quantized' model has no quantization_config: it is a plain FP checkpoint."
        gr.Warning(msg)
        notes.append(msg)
    if fp32.quantization is not None:
        msg = "The 'FP32' model is itself a quantized checkpoint."
        gr.Warning(msg)
        notes.append(msg)
    problems = pair_problems(fp32, quant)
    if problems:
        msg = (f"These two models look unrelated: {'; '.join(problems)}. The quantized model was probably not made "
               "from this FP32 model, so how far they agree says nothing about quantization.")
        gr.Warning(msg)
        notes.append(msg)
    fp32_names, quant_names = display_labels(fp32), display_labels(quant)
    if fp32_names != quant_names:
        msg = "The two models name their classes differently; classes are compared by index."
        gr.Warning(msg)
        notes.append(msg)

    models = [fp32, quant]
    pixel_values, inputs = [], []
    for loaded in models:
        converted = prepare_image(image, loaded.spec.channels)
        try:
            x = to_pixel_values([converted], loaded.processor, loaded.spec)
        except Exception as exc:
            raise gr.Error(f"Could not preprocess the image for {loaded.model_id}: {exc}",
                           title="Preprocessing failed") from exc
        pixel_values.append(x)
        color = "grayscale" if loaded.spec.channels == 1 else "RGB"
        inputs.append(f"{color} {x.shape[-1]}×{x.shape[-2]}")
    (logits_fp32, logits_quant), (ms_fp32, ms_quant) = _run_both(models, pixel_values)
    if logits_fp32.numel() != logits_quant.numel():
        raise gr.Error(f"The models output {logits_fp32.numel()} and {logits_quant.numel()} logits: "
                       "they must classify the same classes.", title="Models do not match")

    log_p = torch.log_softmax(logits_fp32.double(), dim=-1)
    log_q = torch.log_softmax(logits_quant.double(), dim=-1)
    kl = float((log_p.exp() * (log_p - log_q)).sum().clamp_min(0.0))
    if not math.isfinite(kl):
        kl = float("inf")
    p, q = log_p.exp().float(), log_q.exp().float()
    top_fp32, top_quant = int(p.argmax()), int(q.argmax())

    if top_fp32 == top_quant:
        name = fp32_names[top_fp32] if fp32_names[top_fp32] == quant_names[top_quant] \
            else f"{fp32_names[top_fp32]} / {quant_names[top_quant]} (class {top_fp32})"
        agreement = (f"✓ **Top-1 agrees**: both models predict **{name}** "
                     f"(FP32 {p[top_fp32]:.1%}, quantized {q[top_quant]:.1%}).")
    else:
        agreement = (f"✗ **Top-1 disagrees**: FP32 predicts **{fp32_names[top_fp32]}** ({p[top_fp32]:.1%}), "
                     f"quantized predicts **{quant_names[top_quant]}** ({q[top_quant]:.1%}).")
    device = next(fp32.model.parameters()).device.type.upper()
    lines = [
        agreement,
        f"**KL(p_fp32 ‖ p_quant) = {_fmt_kl(kl)} nats** over {fp32.num_labels} class{'es' if fp32.num_labels != 1 else ''}.",
        f"**Latency** (median of {LATENCY_RUNS} runs, batch 1, {device}): FP32 {_fmt_ms(ms_fp32)} · "
        f"quantized {_fmt_ms(ms_quant)}. *{LATENCY_NOTE}*",
        f"Input: the photo is fed as {inputs[0]} (FP32) and {inputs[1]} (quantized)."
        + (f" Quantization: {_describe_quant(quant.quantization)}." if quant.quantization else ""),
    ]
    lines += [f"⚠️ {note}" for note in notes]
    return _top_k(fp32_names, p), _top_k(quant_names, q), "\n\n".join(lines)


# ------------------------------------------------------------------------------------------------ UI

INTRO = """# Genie: FP32 vs zero-shot quantized
The quantized model was produced **without any real training data**: Genie synthesizes calibration images
from the FP32 model's BatchNorm statistics, then quantizes weights and activations. Upload a photo or pick
an example, then press **Compare** to see how close the two models' predictions are."""

PLACEHOLDER = "Upload a photo (or pick an example) and press **Compare**."

CSS = """
#genie-summary { min-height: 6em; }
"""
"""Gradio's footer (with its "Use via API" link to the `compare` endpoint) stays visible."""


def unopened_upload(image: gr.Image) -> gr.Image:
    """Make `image` (type "filepath") hand `compare` the uploaded file's path unopened. gradio's own preprocessing
    opens every upload with PIL first, so a file that is not an image, an empty one or a decompression bomb failed
    there with gradio's generic "the app raised an exception" instead of `check_image`'s message. (An instance
    attribute, not a subclass: gradio writes a .pyi file beside the module of every component class.)"""
    default = image.preprocess

    def preprocess(payload):
        if payload is None:
            return default(payload)
        if (payload.url or "").startswith("data:"):  # an API call may send the image inline
            return _data_url_file(payload.url)
        return str(payload.path) if payload.path else default(payload)

    image.preprocess = preprocess
    return image


def _data_url_file(url: str) -> str:
    """The bytes of a `data:` URL in a file of their own, unopened (`check_image` opens it)."""
    import base64
    import binascii
    import urllib.parse

    header, _, data = url.partition(",")
    encoded = ";base64" in header
    too_large = gr.Error(f"The image is larger than {MAX_INLINE_BYTES // 2**20} MB, the most this app accepts.",
                         title="Image too large")
    if (len(data) * 3 // 4 if encoded else len(data) // 3) > MAX_INLINE_BYTES:  # before decoding it (%XX: 3 chars)
        raise too_large
    try:
        raw = base64.b64decode(data, validate=True) if encoded else urllib.parse.unquote_to_bytes(data)
    except (binascii.Error, ValueError) as exc:
        raise gr.Error("Cannot read this upload: its data URL is not valid base64.", title="Unsupported image") from exc
    if len(raw) > MAX_INLINE_BYTES:
        raise too_large
    INLINE_UPLOADS.mkdir(parents=True, exist_ok=True)
    handle, path = tempfile.mkstemp(dir=INLINE_UPLOADS, suffix=".upload")
    with os.fdopen(handle, "wb") as file:
        file.write(raw)
    return path


def _remove_inline_upload(upload) -> None:
    """Delete the file `_data_url_file` made for an inline image, once `check_image` has opened it (the open image
    still reads its bytes), so that API calls do not fill the Space's disk. Other paths are gradio's to manage."""
    if isinstance(upload, (str, os.PathLike)) and Path(upload).parent == INLINE_UPLOADS:
        try:
            Path(upload).unlink(missing_ok=True)
        except OSError:  # a platform that cannot delete an open file: left for the temporary folder's cleanup
            pass


def zoo_entries() -> list[dict]:
    """Zoo entries the app offers ({"name", "fp32", "quantized"}), from space_config.json's "zoo"."""
    entries = _read_space_config().get("zoo") or []
    return [e for e in entries if isinstance(e, dict) and {"name", "fp32", "quantized"} <= set(e)]


def build_demo(fp32: str | None = None, quantized: str | None = None, zoo: list[dict] | None = None) -> gr.Blocks:
    """The Space UI. `fp32` / `quantized` default to env, space_config.json, then the embedded models; `zoo`
    (default: space_config.json's) lists model-zoo entries a visitor can pick instead of typing ids."""
    default_fp32, default_quantized = default_models()
    zoo = zoo_entries() if zoo is None else zoo
    fp32 = fp32 or default_fp32
    quantized = quantized or default_quantized
    examples = example_sets(fp32, zoo)

    with gr.Blocks(title="Genie: FP32 vs quantized") as demo:
        gr.Markdown(INTRO)
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                image = unopened_upload(gr.Image(type="filepath", image_mode=None, sources=["upload"], label="Photo",
                                                 height=300, elem_id="genie-image"))  # checked before decoding
                for label, paths in examples:
                    gr.Examples(examples=[[path] for path in paths], inputs=[image], cache_examples=False,
                                examples_per_page=10, label=label)
                if zoo:
                    picker = gr.Dropdown(choices=[entry["name"] for entry in zoo], value=None, label="Zoo entry",
                                         info="an FP32 model and its quantized version from the genie_hub zoo",
                                         elem_id="genie-zoo")
                accepted = "Hub id" if hub_only() else "Hub id or local folder"
                fp32_box = gr.Textbox(value=fp32, label=f"FP32 model ({accepted})", max_lines=1,
                                      elem_id="genie-fp32-id")
                quantized_box = gr.Textbox(value=quantized, label=f"Quantized model ({accepted})",
                                           max_lines=1, elem_id="genie-quantized-id")
                if zoo:
                    by_name = {entry["name"]: entry for entry in zoo}
                    picker.change(lambda name: (by_name[name]["fp32"], by_name[name]["quantized"]) if name in by_name
                                  else (gr.update(), gr.update()), inputs=[picker],
                                  outputs=[fp32_box, quantized_box], api_name=False)
                button = gr.Button("Compare", variant="primary", elem_id="genie-compare")
            with gr.Column(scale=6):
                with gr.Row():
                    fp32_label = gr.Label(num_top_classes=TOP_K, label="FP32 top-5", elem_id="genie-fp32-top5")
                    quantized_label = gr.Label(num_top_classes=TOP_K, label="Quantized top-5",
                                               elem_id="genie-quantized-top5")
                summary = gr.Markdown(PLACEHOLDER, label="Comparison summary", show_label=True, container=True,
                                      elem_id="genie-summary")
        button.click(compare, inputs=[image, fp32_box, quantized_box],
                     outputs=[fp32_label, quantized_label, summary], api_name="compare")
    return demo


if __name__ == "__main__":
    build_demo().launch(css=CSS, max_file_size=MAX_FILE_SIZE)
