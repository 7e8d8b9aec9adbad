"""The genie-compare Space: handler, Space files, genie_hub.space helpers, live server, gradio_client, Chromium.

All tests use tiny random ResNets built here (the "quantized" side is a perturbed copy, or the same model),
so they do not depend on the embedded default assets; the one test that uses those skips when missing.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import zipfile  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

gr = pytest.importorskip("gradio")

from genie_hub.errors import GenieError  # noqa: E402
from genie_hub.loading import DEFAULT_MODEL_DIR, DEFAULT_QUANTIZED_DIR  # noqa: E402
from genie_hub.space import (  # noqa: E402
    DEFAULT_FP32_HUB_ID,
    DEFAULT_QUANTIZED_HUB_ID,
    SPACE_DIR,
    launch_space,
    load_space_app,
    prepare_space_folder,
)

pytestmark = pytest.mark.filterwarnings("ignore:The 'quantized' model has no quantization_config")

REPO_ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT_COPY = REPO_ROOT / "benchmarks" / "results" / "space_screenshot.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
LABELS = ["espresso", "tabby cat", "astronaut", "rocket", "teapot"]
DEFAULT_ASSETS = (DEFAULT_MODEL_DIR / "config.json").is_file() and (DEFAULT_QUANTIZED_DIR / "config.json").is_file()


# ------------------------------------------------------------------------------------------- fixtures

def _tiny_model(path: Path, channels: int = 3, num_labels: int = 5, seed: int = 0, noise: float = 0.0,
                labels: list[str] | None = None) -> str:
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    labels = labels or [f"class {i}" for i in range(num_labels)]
    torch.manual_seed(seed)
    config = ResNetConfig(num_channels=channels, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                          image_size=32, num_labels=num_labels,
                          id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})
    model = ResNetForImageClassification(config).eval()
    if noise:
        with torch.no_grad():
            for param in model.parameters():
                param.add_(noise * param.abs().mean() * torch.randn_like(param))
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * channels,
                      image_std=[0.5] * channels).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("space_models")
    return {
        "fp32": _tiny_model(root / "rgb", labels=LABELS),
        "quant": _tiny_model(root / "rgb-perturbed", labels=LABELS, noise=0.05),  # same seed + small noise
        "gray": _tiny_model(root / "gray", channels=1, labels=LABELS),
        "seven": _tiny_model(root / "seven", num_labels=7),
    }


@pytest.fixture(scope="module")
def app():
    return load_space_app()


@pytest.fixture()
def fast_app(app, monkeypatch):
    monkeypatch.setattr(app, "LATENCY_RUNS", 1)
    return app


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.coffee())


@pytest.fixture(scope="module")
def coffee_png(tmp_path_factory, coffee) -> str:
    path = tmp_path_factory.mktemp("photos") / "coffee.png"
    coffee.save(path)
    return str(path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _kl(summary: str) -> float:
    match = re.search(r"KL\(p_fp32 ‖ p_quant\) = ([0-9.eE+-]+|inf)", summary)
    assert match, summary
    return float(match.group(1))


@pytest.fixture(scope="module")
def server(models):
    """The Space served on 127.0.0.1 through genie_hub.space.launch_space (as the CLI does)."""
    demo = launch_space(models["fp32"], models["quant"], server_name="127.0.0.1", server_port=_free_port(),
                        prevent_thread_lock=True, quiet=True)
    try:
        yield demo.local_url.rstrip("/")
    finally:
        demo.close()


# ------------------------------------------------------------------------------------- handler direct

def test_compare_on_real_photo(fast_app, models, coffee):
    fp32_top, quant_top, summary = fast_app.compare(coffee, models["fp32"], models["quant"])
    for top in (fp32_top, quant_top):
        assert isinstance(top, dict) and len(top) == 5
        assert set(top) == set(LABELS)
        assert all(0.0 <= v <= 1.0 for v in top.values())
        assert list(top.values()) == sorted(top.values(), reverse=True)
    assert "agree" in summary
    assert _kl(summary) >= 0.0
    assert "not a speed-up" in summary and " ms" in summary
    assert "RGB 32×32" in summary


def test_inline_image_is_size_checked_before_decoding_and_deleted_once_opened(fast_app, models, coffee, tmp_path,
                                                                             monkeypatch):
    """An API call may send its image as a `data:` URL, which gradio's 20 MB upload limit does not cover: the
    same limit applies to it before decoding, and its temporary file is deleted by `compare` (also on error)."""
    import base64
    import io

    monkeypatch.setattr(fast_app, "INLINE_UPLOADS", tmp_path / "uploads")
    png = io.BytesIO()
    coffee.resize((32, 32)).save(png, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    path = fast_app._data_url_file(url)
    assert Path(path).parent == tmp_path / "uploads" and Path(path).read_bytes() == png.getvalue()
    fp32_top, _, summary = fast_app.compare(path, models["fp32"], models["quant"])
    assert len(fp32_top) == 5 and "agree" in summary
    assert not Path(path).exists()

    broken = fast_app._data_url_file("data:image/png;base64,aGVsbG8=")
    with pytest.raises(gr.Error, match="Cannot open this file as an image"):
        fast_app.compare(broken, models["fp32"], models["quant"])
    assert list((tmp_path / "uploads").iterdir()) == []

    monkeypatch.setattr(fast_app, "MAX_INLINE_BYTES", len(png.getvalue()) - 1)
    with pytest.raises(gr.Error, match="larger than"):
        fast_app._data_url_file(url)
    with pytest.raises(gr.Error, match="larger than"):
        fast_app._data_url_file("data:image/png," + "%00" * len(png.getvalue()))
    assert list((tmp_path / "uploads").iterdir()) == []


def test_same_model_agrees_with_zero_kl(fast_app, models, coffee):
    fp32_top, quant_top, summary = fast_app.compare(coffee, models["fp32"], models["fp32"])
    assert fp32_top == quant_top
    assert "Top-1 agrees" in summary
    assert _kl(summary) == 0.0


def test_one_channel_model_gets_grayscale_and_rgba_is_flattened(fast_app, models, coffee):
    rgba = coffee.convert("RGBA")
    fp32_top, quant_top, summary = fast_app.compare(rgba, models["gray"], models["gray"])
    assert len(fp32_top) == 5 and fp32_top == quant_top
    assert "grayscale 32×32" in summary
    # A 1-channel model also accepts an RGB photo, and an RGB model a grayscale one.
    assert len(fast_app.compare(coffee, models["gray"], models["gray"])[0]) == 5
    assert len(fast_app.compare(coffee.convert("L"), models["fp32"], models["quant"])[0]) == 5
    assert fast_app.prepare_image(rgba, 3).mode == "RGB"
    assert fast_app.prepare_image(coffee, 1).mode == "L"
    sixteen_bit = Image.fromarray((torch.linspace(0, 65535, 64 * 64).reshape(64, 64).numpy()).astype("uint16"))
    assert fast_app.prepare_image(sixteen_bit, 1).getextrema() == (0, 255)
    dark = Image.fromarray((torch.arange(40 * 40).reshape(40, 40) % 200).numpy().astype("uint16"))  # 0-199 of 65535
    assert dark.mode == "I;16" and fast_app.prepare_image(dark, 1).getextrema() == (0, 1)  # as dark as it is


def test_no_image_is_an_error(fast_app, models):
    with pytest.raises(gr.Error, match="No image"):
        fast_app.compare(None, models["fp32"], models["quant"])


def test_tiny_image_is_an_error(fast_app, models):
    with pytest.raises(gr.Error, match=r"too small \(4x4 px\)"):
        fast_app.compare(Image.new("RGB", (4, 4)), models["fp32"], models["quant"])
    with pytest.raises(gr.Error, match="too small"):
        fast_app.compare(Image.new("RGB", (300, 5)), models["fp32"], models["quant"])


def test_unconvertible_mode_is_an_error(fast_app, models):
    with pytest.raises(gr.Error, match="Cannot convert an image in mode 'La'"):
        fast_app.compare(Image.new("La", (32, 32)), models["fp32"], models["quant"])


def test_unloadable_model_shows_the_load_error(fast_app, models, coffee, tmp_path):
    from genie_hub.loading import load_model
    from genie_hub.errors import ModelLoadError

    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(ModelLoadError) as expected:
        load_model(str(empty))
    with pytest.raises(gr.Error) as shown:
        fast_app.compare(coffee, models["fp32"], str(empty))
    message = shown.value.message  # str(gr.Error) is the repr of its message
    assert message.startswith("Quantized model: ")
    assert str(expected.value) in message
    assert "Could not load model" in message

    with pytest.raises(gr.Error, match="FP32 model: The local folder .* does not exist"):
        fast_app.compare(coffee, str(tmp_path / "missing" / "model"), models["quant"])
    with pytest.raises(gr.Error, match="No model given"):
        fast_app.compare(coffee, "  ", models["quant"])


def test_different_class_counts_is_an_error(fast_app, models, coffee):
    with pytest.raises(gr.Error, match="same classes.*5 classes.*7"):
        fast_app.compare(coffee, models["fp32"], models["seven"])


def test_a_model_without_its_processor_is_refused_not_guessed(fast_app, models, coffee, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((Path(models["fp32"]) / name).read_bytes())
    with pytest.raises(gr.Error, match="has no image processor"):
        fast_app.compare(coffee, str(bare), models["quant"])


def test_a_phone_photo_is_fed_upright_as_its_exif_orientation_says(fast_app, tmp_path):
    """A browser shows a photo by its EXIF orientation; the models must see the same upright picture."""
    landscape = Image.new("RGB", (80, 40), (200, 30, 30))
    landscape.paste((30, 30, 200), (0, 0, 40, 40))  # the left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "phone.jpg"
    landscape.save(path, exif=exif.tobytes(), quality=95)
    upright = fast_app.prepare_image(str(path), 3)
    assert upright.size == (40, 80)
    assert upright.getpixel((20, 5))[2] > 150  # the blue half, rotated clockwise, is on top
    assert fast_app.prepare_image(str(path), 1).size == (40, 80)
    landscape.save(tmp_path / "plain.jpg")  # no orientation: as stored
    assert fast_app.prepare_image(str(tmp_path / "plain.jpg"), 3).size == (80, 40)
    landscape.save(tmp_path / "phone.tif", exif=exif.tobytes())  # PIL turns a TIFF itself when it loads it
    assert fast_app.prepare_image(str(tmp_path / "phone.tif"), 3).size == (40, 80)


def test_transparent_pixels_become_white_in_every_mode(fast_app, tmp_path):
    """RGBA flattened on white; so must be grayscale, RGB and palette images with a transparent colour (tRNS).
    `evaluate` and few-shot folders read them the same way: they kept the hidden colour, so one file got another
    prediction there than in the Space (helper-31)."""
    from transformers import ViTImageProcessor

    from genie_hub.data.pixels import decode_image
    from genie_hub.loading import InputSpec, to_pixel_values

    processors = {c: ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * c, image_std=[0.5] * c)
                  for c in (1, 3)}
    for mode, transparent in (("L", 0), ("RGB", (0, 0, 0)), ("P", 0), ("RGBA", None), ("LA", None)):
        image = Image.new(mode, (32, 32), 0 if mode not in ("RGBA", "LA") else (0,) * len(mode))
        image.paste(128 if mode in ("L", "P") else (128, 128, 128, 255)[-len(mode):], (8, 8, 24, 24))
        path = tmp_path / f"{mode}.png"
        image.save(path, **({"transparency": transparent} if transparent is not None else {}))
        for channels in (3, 1):
            prepared = fast_app.prepare_image(str(path), channels)
            assert prepared.getpixel((0, 0)) == ((255, 255, 255) if channels == 3 else 255), mode
            assert (prepared.getpixel((16, 16)) if channels == 1 else prepared.getpixel((16, 16))[0]) < 255, mode
            spec = InputSpec(channels, 32, 32)
            read = to_pixel_values([decode_image({"path": str(path)})], processors[channels], spec)
            assert torch.equal(read, to_pixel_values([prepared], processors[channels], spec)), (mode, channels)



def test_a_camera_photo_over_the_pixel_limit_is_read_at_a_reduced_scale(fast_app, tmp_path, monkeypatch):
    """A 24 MP phone or DSLR JPEG was refused as "too large" (helper-31): JPEG decodes at 1/2 to 1/8 scale for
    the cost of that size. A PNG over the limit is still refused before decoding."""
    monkeypatch.setattr(fast_app, "MAX_PIXELS", 100 * 100)  # the same rule at a size a test can write quickly
    Image.new("RGB", (300, 250), (30, 120, 200)).save(tmp_path / "photo.jpg", quality=90)
    prepared = fast_app.prepare_image(str(tmp_path / "photo.jpg"), 3)
    assert prepared.size == (75, 63) and abs(prepared.getpixel((30, 30))[2] - 200) < 8  # 1/4 scale, its colours
    Image.new("RGB", (300, 250)).save(tmp_path / "large.png")
    with pytest.raises(gr.Error, match="too large"):
        fast_app.prepare_image(str(tmp_path / "large.png"), 3)

def test_unreadable_and_damaged_files_get_the_apps_message_without_server_paths(fast_app, models, tmp_path, coffee):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for path in (text, empty):
        with pytest.raises(gr.Error) as error:
            fast_app.compare(str(path), models["fp32"], models["quant"])
        assert "Cannot open this file as an image" in error.value.message
        assert str(tmp_path) not in error.value.message
    whole = tmp_path / "whole.png"
    coffee.save(whole)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(gr.Error, match="damaged or truncated"):
        fast_app.compare(str(truncated), models["fp32"], models["quant"])


def test_class_names_are_unique_alike_in_both_panels_and_never_blank(fast_app, coffee, tmp_path):
    labels = ["cat", "dog", "cat", "cat (#2)", " "]
    path = _tiny_model(tmp_path / "odd-labels", labels=labels)
    names = fast_app.display_labels(fast_app.load_cached(path))
    assert len(set(names)) == 5 and names[1] == "dog" and names[4] == "class 4"
    assert names[0] != names[2] and all("cat" in name for name in (names[0], names[2], names[3]))
    fp32_top, quant_top, summary = fast_app.compare(coffee, path, path)
    assert set(fp32_top) == set(quant_top) == set(names)
    assert "over 5 classes" in summary


def test_a_pair_that_is_not_a_model_and_its_quantized_version_is_flagged(fast_app, models, coffee):
    """An RGB model against a grayscale one (same class count) is another model, not its quantized version:
    a warning in the app, an error when `genie_hub space` is launched with that pair."""
    summary = fast_app.compare(coffee, models["fp32"], models["gray"])[2]
    assert "look unrelated" in summary and "different inputs (RGB 32×32 vs grayscale 32×32)" in summary
    assert "look unrelated" not in fast_app.compare(coffee, models["fp32"], models["quant"])[2]
    with pytest.raises(GenieError, match="does not look like a quantized version"):
        launch_space(models["fp32"], models["gray"], prevent_thread_lock=True)



def test_launching_with_a_plain_fp_model_as_the_quantized_one_warns_once(models, tmp_path, caplog, monkeypatch):
    """An FP model as its own "quantized" version (or a quantized one as the FP32 reference) is said at launch,
    not only inside each Compare; it still launches (a check of the UI), unlike `push-space`, which refuses it."""
    import genie_hub.space as space

    launched = []
    monkeypatch.setattr(space, "load_space_app", lambda: _StubLaunch(load_space_app(), launched))
    with caplog.at_level("WARNING", logger="genie_hub"):
        launch_space(models["fp32"], models["fp32"], prevent_thread_lock=True)
    assert f"--quantized {models['fp32']} has no quantization_config" in caplog.text and launched
    embedded = str(Path(__file__).resolve().parents[1] / "genie_hub/assets/fashion-mnist-resnet-genie-w4a4")
    caplog.clear()
    with caplog.at_level("WARNING", logger="genie_hub"):
        launch_space(embedded, embedded, prevent_thread_lock=True)
    assert f"--fp32 {embedded} is itself quantized" in caplog.text and "has no quantization_config" not in caplog.text


class _StubLaunch:
    """The Space app module with a `build_demo` whose `launch` only records that it was called."""

    def __init__(self, app, launched: list):
        self._app, self._launched = app, launched

    def __getattr__(self, name):
        return getattr(self._app, name)

    def build_demo(self, *args, **kwargs):
        launched = self._launched

        class Demo:
            def launch(self, **_):
                launched.append(True)

        return Demo()


def test_one_model_alone_is_never_paired_with_the_embedded_default(app, models, tmp_path, monkeypatch):
    from genie_hub.outputs import RunRecord
    from genie_hub.space import _model_pair

    monkeypatch.delenv(app.FP32_ENV, raising=False)
    monkeypatch.delenv(app.QUANTIZED_ENV, raising=False)
    out = tmp_path / "out"
    shutil.copytree(models["quant"], out / "model")
    with pytest.raises(GenieError, match="needs --fp32 too"):
        _model_pair(app, None, str(out / "model"))
    with pytest.raises(GenieError, match="the local folder '.*missing' does not exist"):  # not "needs --fp32"
        _model_pair(app, None, str(tmp_path / "missing"))
    with pytest.raises(GenieError, match=r"is a genie_hub output folder: pass '.*out/model'"):
        _model_pair(app, None, str(out))
    RunRecord(base_model=models["fp32"]).save(out / "run.json")
    assert _model_pair(app, None, str(out / "model")) == (models["fp32"], str(out / "model"))
    with pytest.raises(GenieError, match="needs --quantized too"):
        _model_pair(app, models["fp32"], None)
    monkeypatch.setenv(app.QUANTIZED_ENV, models["quant"])
    assert _model_pair(app, models["fp32"], None) == (models["fp32"], models["quant"])
    assert _model_pair(app, models["gray"], models["seven"]) == (models["gray"], models["seven"])
    with pytest.raises(GenieError, match="needs --fp32 too"):  # an environment variable alone counts as one model
        _model_pair(app, None, None)
    monkeypatch.delenv(app.QUANTIZED_ENV)
    RunRecord(base_model="tiny_resnet").save(out / "run.json")  # an older genie_hub's relative local base
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GenieError, match="needs --fp32 too"):
        _model_pair(app, None, str(out / "model"))
    moved = str(tmp_path / "moved-away")  # a base folder moved after the run: the message says so (helper-31)
    RunRecord(base_model=moved).save(out / "run.json")
    with pytest.raises(GenieError, match=f"needs --fp32 too.*records the base model {moved}, which is no folder here"):
        _model_pair(app, None, str(out / "model"))


def test_a_folder_rewritten_while_the_app_runs_is_loaded_again(app, tmp_path):
    path = _tiny_model(tmp_path / "model", labels=LABELS)
    first = app.load_cached(path)
    assert app.load_cached(path) is first
    time.sleep(0.01)
    _tiny_model(tmp_path / "model", labels=["a", "b", "c", "d", "e"])  # e.g. `genie_hub quantize --overwrite`
    assert app.display_labels(app.load_cached(path)) == ["a", "b", "c", "d", "e"]


def test_the_output_folder_instead_of_its_model_folder_gets_a_hint(models, tmp_path):
    from genie_hub.errors import ModelLoadError
    from genie_hub.loading import load_model

    shutil.copytree(models["quant"], tmp_path / "out" / "model")
    with pytest.raises(ModelLoadError, match=r"its model/ subfolder has one: pass '.*out/model'"):
        load_model(str(tmp_path / "out"))


def test_models_are_cached_by_id(app, models):
    assert app.load_cached(models["fp32"]) is app.load_cached(models["fp32"] + " ")


def test_example_photos_are_written(app, tmp_path, monkeypatch):
    monkeypatch.setenv(app.EXAMPLES_ENV, str(tmp_path / "examples"))
    paths = app.example_files()
    names = {Path(p).stem for p in paths}
    assert {"coffee", "chelsea", "astronaut", "rocket"} <= names
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) >= 100
    assert app.example_files() == paths  # second start reuses the cache


@pytest.mark.skipif(not DEFAULT_ASSETS, reason="embedded default models (genie_hub/assets/) not generated yet")
def test_default_models_compare(fast_app, coffee, monkeypatch):
    monkeypatch.delenv(fast_app.FP32_ENV, raising=False)
    monkeypatch.delenv(fast_app.QUANTIZED_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the ids name the embedded copies: nothing is downloaded
    fp32_id, quant_id = fast_app.default_models()
    assert (fp32_id, quant_id) == (DEFAULT_FP32_HUB_ID, DEFAULT_QUANTIZED_HUB_ID)  # ids, not server paths
    quant = fast_app.load_cached(quant_id)
    assert quant.quantization is not None and quant.quantization.get("quant_method") == "genie"
    assert quant.spec.channels == 1
    fp32_top, quant_top, summary = fast_app.compare(coffee, fp32_id, quant_id)
    assert len(fp32_top) == 5 and len(quant_top) == 5
    assert "grayscale" in summary and "Quantization: genie" in summary and "plain FP checkpoint" not in summary


@pytest.mark.skipif(not DEFAULT_ASSETS, reason="embedded default models (genie_hub/assets/) not generated yet")
def test_default_examples_are_fashion_mnist_images_the_models_classify(fast_app, monkeypatch, tmp_path):
    monkeypatch.delenv(fast_app.FP32_ENV, raising=False)
    monkeypatch.delenv(fast_app.QUANTIZED_ENV, raising=False)
    monkeypatch.setenv(fast_app.EXAMPLES_ENV, str(tmp_path / "photos"))
    fp32_id, quant_id = fast_app.default_models()
    (label, paths), = fast_app.example_sets(fp32_id)  # only the set that fits the model
    assert "Fashion-MNIST" in label and len(paths) == 10
    fp32 = fast_app.load_cached(fp32_id)
    classes = {fast_app._label_key(fp32.label(i)): fp32.label(i) for i in range(fp32.num_labels)}
    for path in paths:
        fp32_top, quant_top, _ = fast_app.compare(path, fp32_id, quant_id)
        expected = classes[fast_app._label_key(Path(path).stem)]
        assert next(iter(fp32_top)) == expected, path
    # A photo model gets the photos, and a zoo (models of both kinds) both sets.
    monkeypatch.setattr(fast_app, "model_kind", lambda model_id: "photos")
    assert [label for label, _ in fast_app.example_sets("x/y")] == [
        "Photos (for ImageNet models; shipped inside installed packages)"]
    assert len(fast_app.example_sets("x/y", zoo=[{"name": "a", "fp32": "a/b", "quantized": "a/c"}])) == 2


def test_demo_keeps_the_api_footer_and_labels_the_summary(app, models):
    assert "footer" not in app.CSS
    config = app.build_demo(models["fp32"], models["quant"]).get_config_file()
    summary = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "genie-summary")
    assert summary["props"]["label"] == "Comparison summary" and summary["props"]["show_label"] is True
    assert any(d.get("api_name") == "compare" for d in config["dependencies"])


# ------------------------------------------------------------------------------ Space files & helpers

def _readme_header(path: Path) -> dict:
    from huggingface_hub import RepoCard

    return RepoCard.load(path).data.to_dict()


def test_space_files_follow_spaces_conventions():
    assert SPACE_DIR == REPO_ROOT / "spaces" / "genie-compare"
    header = _readme_header(SPACE_DIR / "README.md")
    assert header["sdk"] == "gradio"
    assert header["sdk_version"] == gr.__version__
    assert header["app_file"] == "app.py"
    assert str(header["python_version"]) == "3.11"
    assert header["models"] == [DEFAULT_FP32_HUB_ID, DEFAULT_QUANTIZED_HUB_ID]
    assert header["license"] == "apache-2.0"
    assert header["title"] and header["emoji"]
    assert 0 < len(header["short_description"]) <= 60  # the Hub's limit
    body = (SPACE_DIR / "README.md").read_text()
    assert "not a speed-up" in body and "KL" in body
    requirements = [line.split("#")[0].strip() for line in (SPACE_DIR / "requirements.txt").read_text().splitlines()]
    names = {re.split(r"[<>=@ \[]", line)[0].lower() for line in requirements if line}
    assert names == {"scikit-image"}  # push-space adds CPU torch and the genie_hub wheel (tests/test_packaging.py)


def test_prepare_space_folder_points_at_the_users_models(tmp_path, monkeypatch):
    dest = prepare_space_folder(tmp_path / "space", "alice/resnet-fp32", "alice/resnet-genie-w4a4")
    assert sorted(p.name for p in dest.iterdir()) == ["README.md", "app.py", "examples", "requirements.txt",
                                                       "space_config.json", "wheels"]
    (wheel,) = (dest / "wheels").iterdir()  # built from this source tree; requirements.txt installs it
    assert wheel.name.startswith("genie_hub-") and f"./wheels/{wheel.name}" in (dest / "requirements.txt").read_text()
    assert _readme_header(dest / "README.md")["models"] == ["alice/resnet-fp32", "alice/resnet-genie-w4a4"]
    assert _readme_header(dest / "README.md")["sdk_version"] == gr.__version__
    assert "not a speed-up" in (dest / "README.md").read_text()
    assert json.loads((dest / "space_config.json").read_text()) == {
        "fp32_model": "alice/resnet-fp32", "quantized_model": "alice/resnet-genie-w4a4"}

    monkeypatch.delenv("GENIE_FP32_MODEL", raising=False)
    monkeypatch.delenv("GENIE_QUANTIZED_MODEL", raising=False)
    pushed_app = load_space_app(dest)
    try:
        assert Path(pushed_app.__file__) == (dest / "app.py").resolve()
        assert pushed_app.default_models() == ("alice/resnet-fp32", "alice/resnet-genie-w4a4")
        monkeypatch.setenv("GENIE_QUANTIZED_MODEL", "bob/other")  # env still wins over space_config.json
        assert pushed_app.default_models() == ("alice/resnet-fp32", "bob/other")
    finally:
        load_space_app()  # put the source-tree app back as the cached module

    # Re-preparing with no ids: embedded defaults in the app, published default ids in the README.
    prepare_space_folder(dest, wheel=wheel.rename(tmp_path / wheel.name))
    assert not (dest / "space_config.json").exists()
    assert _readme_header(dest / "README.md")["models"] == [DEFAULT_FP32_HUB_ID, DEFAULT_QUANTIZED_HUB_ID]


def test_prepare_space_folder_refuses_local_folders(tmp_path, models):
    with pytest.raises(GenieError, match="must be a Hub id"):
        prepare_space_folder(tmp_path / "space", models["fp32"], "alice/q")
    with pytest.raises(GenieError, match="must be a Hub id"):
        prepare_space_folder(tmp_path / "space", "alice/fp32", "not-an-owner-slash-name")


def test_a_symlink_in_the_space_sources_is_never_followed_into_a_published_space(monkeypatch, tmp_path):
    import shutil

    import genie_hub.space as space

    sources = Path(shutil.copytree(space.SPACE_DIR, tmp_path / "sources"))
    (tmp_path / "secret.txt").write_text("not for the Space")
    examples = next(p for p in sources.rglob("*") if p.is_dir())
    (examples / "link.png").symlink_to(tmp_path / "secret.txt")
    monkeypatch.setattr(space, "SPACE_DIR", sources)
    wheel = tmp_path / "genie_hub-0.1.0-py3-none-any.whl"  # never reached: the links are refused first
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("genie_hub/__init__.py", "")
    with pytest.raises(GenieError, match="symbolic links"):
        space.prepare_space_folder(tmp_path / "out", wheel=wheel)
    assert not (tmp_path / "out").exists()


def test_missing_space_sources_raise_a_clear_error(monkeypatch, tmp_path):
    import genie_hub.space as space

    monkeypatch.setattr(space, "SPACE_DIR", tmp_path / "nowhere")
    with pytest.raises(GenieError, match="not available.*GENIE_SPACE_DIR"):
        space.load_space_app()
    with pytest.raises(GenieError, match="not available"):
        space.prepare_space_folder(tmp_path / "out")


def test_launch_space_fails_fast_on_a_bad_model(models, tmp_path):
    with pytest.raises(GenieError, match="Could not load model"):
        launch_space(models["fp32"], str(tmp_path), prevent_thread_lock=True)
    with pytest.raises(GenieError, match="same classes"):
        launch_space(models["fp32"], models["seven"], prevent_thread_lock=True)


def test_build_demo_defaults_come_from_env(app, monkeypatch, models):
    monkeypatch.setenv("GENIE_FP32_MODEL", models["gray"])
    monkeypatch.setenv("GENIE_QUANTIZED_MODEL", models["quant"])
    assert app.default_models() == (models["gray"], models["quant"])
    demo = app.build_demo()
    values = [getattr(block, "value", None) for block in demo.blocks.values()
              if isinstance(block, gr.Textbox)]
    assert values == [models["gray"], models["quant"]]
    assert app.build_demo("x/y", "z/w") is not None


# --------------------------------------------------------------------------- live server & clients

def test_gradio_client_calls_compare(server, models, coffee_png):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    fp32_out, quant_out, summary = client.predict(handle_file(coffee_png), models["fp32"], models["quant"],
                                                  api_name="/compare")
    for out in (fp32_out, quant_out):
        assert out["label"] in LABELS
        assert len(out["confidences"]) == 5
    assert "agree" in summary and _kl(summary) >= 0 and "not a speed-up" in summary

    with pytest.raises(Exception, match="does not exist"):
        client.predict(handle_file(coffee_png), "/no/such/model", models["quant"], api_name="/compare")
    not_an_image = Path(coffee_png).with_name("notes.png")
    not_an_image.write_text("not an image")  # gradio's own preprocessing would fail on it with a generic error
    with pytest.raises(Exception, match="Cannot open this file as an image"):
        client.predict(handle_file(str(not_an_image)), models["fp32"], models["quant"], api_name="/compare")
    inline = {"url": "data:image/png;base64,aGVsbG8=", "path": None, "meta": {"_type": "gradio.FileData"}}
    with pytest.raises(Exception, match="Cannot open this file as an image"):  # an image sent inline, by the API
        client.predict(inline, models["fp32"], models["quant"], api_name="/compare")


def test_python_app_py_honours_gradio_env(models, tmp_path):
    """`python app.py` as a Space runs it: GRADIO_SERVER_NAME/PORT and GENIE_*_MODEL come from the env."""
    port = _free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               GENIE_FP32_MODEL=models["gray"], GENIE_QUANTIZED_MODEL=models["quant"],
               GRADIO_ANALYTICS_ENABLED="False", GENIE_SPACE_EXAMPLES_DIR=str(tmp_path / "examples"))
    log = open(tmp_path / "app.log", "wb")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=SPACE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        config = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2) as response:
                    config = response.read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert config is not None, (tmp_path / "app.log").read_text(errors="replace")[-3000:]
        assert models["gray"] in config and models["quant"] in config
        assert '"compare"' in config or "/compare" in config
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium")
def test_browser_upload_and_compare(models, coffee_png, coffee, tmp_path, app):
    """A real headless Chromium uploads a photo, clicks Compare, and reads both top-5 panels and the summary."""
    sync_api = pytest.importorskip("playwright.sync_api")

    fp32_id, quant_id = models["fp32"], models["quant"]
    if DEFAULT_ASSETS:  # a nicer screenshot with the real Fashion-MNIST models when they exist
        fp32_id, quant_id = str(DEFAULT_MODEL_DIR), str(DEFAULT_QUANTIZED_DIR)
    expected_fp32, expected_quant, _ = app.compare(coffee, fp32_id, quant_id)

    demo = launch_space(fp32_id, quant_id, server_name="127.0.0.1", server_port=_free_port(),
                        prevent_thread_lock=True, quiet=True)
    url = demo.local_url
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            try:
                context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
                page = context.new_page()
                page.set_default_timeout(30_000)
                # No internet here: refuse everything that is not the local server (web fonts, CDNs) at once.
                page.route(re.compile(r"^(?!https?://(127\.0\.0\.1|localhost)[:/]).*"), lambda route: route.abort())
                page.goto(url, wait_until="domcontentloaded")
                page.locator("#genie-compare").wait_for(state="visible")
                assert page.locator("#genie-fp32-id textarea, #genie-fp32-id input").first.input_value() == fp32_id

                page.locator("#genie-image input[type=file]").set_input_files(coffee_png)
                page.locator("#genie-image img").first.wait_for(state="visible")
                page.locator("#genie-compare").click()

                summary = page.locator("#genie-summary")
                summary.get_by_text("Top-1", exact=False).wait_for(state="visible")
                fp32_panel, quant_panel = page.locator("#genie-fp32-top5"), page.locator("#genie-quantized-top5")
                for panel, expected in ((fp32_panel, expected_fp32), (quant_panel, expected_quant)):
                    panel.get_by_text(next(iter(expected)), exact=True).first.wait_for(state="visible")
                    text = panel.inner_text()
                    for name in expected:  # all five classes are listed
                        assert name in text, (name, text)
                summary_text = summary.inner_text()
                assert "agree" in summary_text
                assert "KL(p_fp32 ‖ p_quant)" in summary_text
                assert "not a speed-up" in summary_text and "ms" in summary_text
                toasts = page.locator(".toast-body")
                assert not any("Error" in toasts.nth(i).inner_text() for i in range(toasts.count()))
                # Dismiss the transient warning toasts (the same notes are in the summary) before the screenshot.
                for _ in range(5):
                    close = page.locator(".toast-body .toast-close")
                    if close.count() == 0:
                        break
                    close.first.click()
                    page.wait_for_timeout(300)

                shot = tmp_path / "space_screenshot.png"
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()
    finally:
        demo.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("GENIE_HUB_UPDATE_SCREENSHOT"):  # refresh the committed copy only on request
        SCREENSHOT_COPY.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT_COPY)


def _zoo_record(zoo: Path, name: str, base: str, *, base_model_id: str | None = None, pushed: bool = True) -> None:
    """A finished, published zoo entry's run.json, as `zoo build` + `zoo publish` leave it."""
    from genie_hub.cards import public_names
    from genie_hub.outputs import RunRecord

    record = RunRecord(base_model=base, base_model_id=base_model_id, weight_bits=4, act_bits=4,
                       config={"weight_bits": 4}, layers={"fc": {"type": "QuantLinear"}})
    record.public = public_names(record)._asdict()
    if pushed:
        record.push = {"model": {"repo_id": f"alice/{name}"}}
    (zoo / name).mkdir(parents=True)
    record.save(zoo / name / "run.json")


def test_a_relative_local_base_is_recorded_by_a_path_that_holds_from_anywhere(models, tmp_path, monkeypatch):
    """run.json's base_model is read later from other directories (the Space's zoo picker, `space --quantized
    OUT/model`): a relative folder there would be another folder, or taken for a Hub id."""
    from genie_hub.loading import resolve_model_path

    shutil.copytree(models["fp32"], tmp_path / "rgb")
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("rgb") == str(tmp_path / "rgb")
    assert resolve_model_path("./rgb/") == str(tmp_path / "rgb")
    assert resolve_model_path("alice/resnet") == "alice/resnet"  # no such folder: a Hub id, as given


def test_a_local_zoo_picker_leaves_out_damaged_and_half_built_entries(tmp_path, caplog, models):
    from genie_hub.space import zoo_space_entries

    zoo = tmp_path / "zoo"
    _zoo_record(zoo, "built", models["fp32"])
    shutil.copytree(models["quant"], zoo / "built" / "model")
    _zoo_record(zoo, "no-model", models["fp32"])  # run.json written, model/ never finished
    (zoo / "corrupt").mkdir()
    (zoo / "corrupt" / "run.json").write_text('{"base_model": "x", "lay')  # a half-written run.json
    (zoo / "not-an-object").mkdir()
    (zoo / "not-an-object" / "run.json").write_text("[1, 2]")
    with caplog.at_level("WARNING", logger="genie_hub"):
        entries = zoo_space_entries(zoo, published=False)
    assert entries == [{"name": "built", "fp32": models["fp32"], "quantized": str(zoo / "built" / "model")}]
    for name in ("no-model", "corrupt", "not-an-object"):
        assert f"leaves out {name}" in caplog.text


def test_a_published_space_names_zoo_entries_by_hub_ids_only(tmp_path, caplog):
    from genie_hub.space import zoo_space_entries

    base = tmp_path / "secret_user" / "models" / "tinyres"
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")
    zoo = tmp_path / "zoo"
    _zoo_record(zoo, "from-hub", "alice/resnet")
    _zoo_record(zoo, "local-with-id", str(base), base_model_id="alice/tinyres")
    _zoo_record(zoo, "local-no-id", str(base))
    _zoo_record(zoo, "moved-away", str(tmp_path / "gone" / "tinyres"))  # the folder is not on this machine
    _zoo_record(zoo, "not-pushed", "alice/resnet", pushed=False)
    _zoo_record(zoo, "embedded", str(tmp_path / "other-install" / "genie_hub" / "assets" / DEFAULT_MODEL_DIR.name))
    with caplog.at_level("WARNING", logger="genie_hub"):
        entries = zoo_space_entries(zoo, published=True)
    assert entries == [{"name": "embedded", "fp32": DEFAULT_FP32_HUB_ID, "quantized": "alice/embedded"},
                       {"name": "from-hub", "fp32": "alice/resnet", "quantized": "alice/from-hub"},
                       {"name": "local-with-id", "fp32": "alice/tinyres", "quantized": "alice/local-with-id"}]
    assert str(tmp_path) not in json.dumps(entries)
    for name in ("local-no-id", "moved-away", "not-pushed"):
        assert name in caplog.text
    shutil.rmtree(zoo / "embedded")
    shutil.rmtree(zoo / "from-hub")
    shutil.rmtree(zoo / "local-with-id")
    with pytest.raises(GenieError, match="entries a published Space can show"):
        zoo_space_entries(zoo, published=True)
