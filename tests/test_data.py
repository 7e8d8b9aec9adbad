"""Real-image data access (IDX parsing, Fashion-MNIST, calibration sources) and the evaluation helpers."""

from __future__ import annotations

import gzip
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from genie_hub import data as data_mod
from genie_hub.data import (
    FASHION_MNIST_LABELS,
    DataError,
    fashion_mnist_pixel_values,
    load_calibration_images,
    load_fashion_mnist,
    read_idx,
    uint8_to_pixel_values,
)
from genie_hub.errors import ConfigError, GenieError
from genie_hub.evaluation import agreement, evaluate_top1, predict_logits
from genie_hub.loading import DEFAULT_MODEL_DIR, InputSpec, input_spec, load_model, to_pixel_values

REAL_DIR = Path("/usr/share/datasets/fashion-mnist")
HAS_REAL = (REAL_DIR / "t10k-images-idx3-ubyte.gz").is_file()
requires_real = pytest.mark.skipif(not HAS_REAL, reason="dataset-fashion-mnist is not installed")


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
             np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}
    big = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
    header = bytes([0, 0, codes[big.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + big.tobytes()
    if compress:
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def vit_processor(size: int = 28, mean: float = 0.286, std: float = 0.353):
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": size, "width": size}, image_mean=[mean], image_std=[std])


@pytest.fixture()
def fake_fmnist(tmp_path):
    """A tiny Fashion-MNIST in the original file layout: 40 train, 20 test images."""
    rng = np.random.default_rng(0)
    root = tmp_path / "fmnist"
    root.mkdir()
    arrays = {}
    for split, stem, n in (("train", "train", 40), ("test", "t10k", 20)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / f"{stem}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{stem}-labels-idx1-ubyte.gz", labels)
        arrays[split] = (images, labels)
    return root, arrays


# --------------------------------------------------------------------------------------------------------------
# IDX and Fashion-MNIST
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_roundtrip(tmp_path, compress):
    images = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    out = read_idx(write_idx(tmp_path / ("a.gz" if compress else "a"), images, compress))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 5) and np.array_equal(out, images)
    ints = np.array([1, -2, 300000, 7], dtype=np.int32)
    out = read_idx(write_idx(tmp_path / "b.gz", ints))
    assert out.shape == (4,) and out.dtype.byteorder in ("=", "|", "<") and np.array_equal(out, ints)
    floats = np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)
    assert np.array_equal(read_idx(write_idx(tmp_path / "c.gz", floats)), floats)


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="magic"):
        read_idx(bad)
    truncated = tmp_path / "trunc.gz"
    truncated.write_bytes(gzip.compress(bytes([0, 0, 8, 2]) + struct.pack(">2I", 4, 4) + b"\x00" * 10))
    with pytest.raises(DataError, match="truncated"):
        read_idx(truncated)


def test_load_fashion_mnist_from_root_and_env(fake_fmnist, monkeypatch):
    root, arrays = fake_fmnist
    images, labels = load_fashion_mnist("train", root=root)
    assert images.dtype == torch.uint8 and images.shape == (40, 28, 28)
    assert labels.dtype == torch.int64 and labels.tolist() == (np.arange(40) % 10).tolist()
    assert np.array_equal(images.numpy(), arrays["train"][0])
    monkeypatch.setenv("GENIE_HUB_FASHION_MNIST_DIR", str(root))
    images, labels = load_fashion_mnist()  # default split: test
    assert images.shape == (20, 28, 28) and np.array_equal(images.numpy(), arrays["test"][0])
    with pytest.raises(ConfigError):
        load_fashion_mnist("validation", root=root)


def test_missing_fashion_mnist_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("GENIE_HUB_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as info:
        load_fashion_mnist("test")
    assert isinstance(info.value, GenieError)
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "GENIE_HUB_FASHION_MNIST_DIR" in message and str(tmp_path / "nowhere") in message


def test_labels():
    assert len(FASHION_MNIST_LABELS) == 10 and FASHION_MNIST_LABELS[0] == "T-shirt/top"
    assert FASHION_MNIST_LABELS[9] == "Ankle boot"


@requires_real
def test_real_test_split():
    images, labels = load_fashion_mnist("test", root=REAL_DIR)
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (10000,) and torch.bincount(labels).tolist() == [1000] * 10
    assert 0.25 < images.float().mean().item() / 255 < 0.32


# --------------------------------------------------------------------------------------------------------------
# uint8 -> pixel_values
# --------------------------------------------------------------------------------------------------------------

def test_fashion_mnist_pixel_values_equal_processor_on_pil(fake_fmnist):
    images, _ = load_fashion_mnist("train", root=fake_fmnist[0])
    processor = vit_processor()
    fast = fashion_mnist_pixel_values(images, processor)
    pil = processor(images=[Image.fromarray(im.numpy()) for im in images], return_tensors="pt")["pixel_values"]
    assert fast.shape == (40, 1, 28, 28) and fast.dtype == torch.float32
    torch.testing.assert_close(fast, pil, atol=1e-6, rtol=0)


def test_uint8_to_pixel_values_resizing_and_rgb_fall_back_to_processor(fake_fmnist):
    images, _ = load_fashion_mnist("test", root=fake_fmnist[0])
    pil = [Image.fromarray(im.numpy()) for im in images[:5]]
    resizing = vit_processor(size=32)
    spec = InputSpec(1, 32, 32)
    torch.testing.assert_close(uint8_to_pixel_values(images[:5], resizing, spec),
                               to_pixel_values(pil, resizing, spec))
    from transformers import ViTImageProcessor

    rgb = ViTImageProcessor(size={"height": 28, "width": 28})
    rgb_spec = InputSpec(3, 28, 28)
    out = uint8_to_pixel_values(images[:5], rgb, rgb_spec)
    assert out.shape == (5, 3, 28, 28)
    torch.testing.assert_close(out, to_pixel_values(pil, rgb, rgb_spec))
    with pytest.raises(ConfigError):
        uint8_to_pixel_values(images.float(), rgb, rgb_spec)


# --------------------------------------------------------------------------------------------------------------
# Calibration sources
# --------------------------------------------------------------------------------------------------------------

def _image_folder(root: Path, count: int) -> Path:
    rng = np.random.default_rng(1)
    (root / "sub" / "deeper").mkdir(parents=True)
    for i in range(count):
        folder = root if i % 3 == 0 else (root / "sub" if i % 3 == 1 else root / "sub" / "deeper")
        if i % 2:
            Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        else:
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"img{i}.JPG")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"garbage")
    return root


def test_calibration_from_folder(tmp_path, caplog):
    folder = _image_folder(tmp_path / "calib", 9)
    processor, spec = vit_processor(), InputSpec(1, 28, 28, (0.286,), (0.353,))
    a = load_calibration_images(str(folder), processor, spec, num_samples=4, seed=0)
    b = load_calibration_images(folder, processor, spec, num_samples=4, seed=0)
    c = load_calibration_images(str(folder), processor, spec, num_samples=4, seed=1)
    assert a.shape == (4, 1, 28, 28) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    with caplog.at_level("WARNING", logger="genie_hub.data"):
        everything = load_calibration_images(str(folder), processor, spec, num_samples=50, seed=0)
    assert any("has only 9 readable image(s)" in r.getMessage() for r in caplog.records)
    assert everything.shape == (9, 1, 28, 28)
    from transformers import ViTImageProcessor

    rgb_processor = ViTImageProcessor(size={"height": 16, "width": 16})
    rgb = load_calibration_images(str(folder), rgb_processor, InputSpec(3, 16, 16), num_samples=3, seed=0)
    assert rgb.shape == (3, 3, 16, 16)


def test_few_shot_from_a_folder_with_splits_calibrates_on_train_only(tmp_path):
    """Calibrating on the images the model is then evaluated on would flatter its results."""
    import shutil

    root = tmp_path / "dataset"
    shutil.copytree(_image_folder(tmp_path / "a", 3), root / "train")
    shutil.copytree(_image_folder(tmp_path / "b", 5), root / "val")
    processor, spec = vit_processor(), InputSpec(1, 28, 28, (0.286,), (0.353,))
    assert load_calibration_images(str(root), processor, spec, num_samples=50, seed=0).shape[0] == 3
    # PATH:split, as --eval-dataset reads it: the named split only; an unknown split names the ones there are.
    assert load_calibration_images(f"{root}:validation", processor, spec, num_samples=50, seed=0).shape[0] == 5
    assert load_calibration_images(f"{root}:val", processor, spec, num_samples=50, seed=0).shape[0] == 5  # as val/
    with pytest.raises(DataError, match="no split 'test'; its splits are train, validation"):
        load_calibration_images(f"{root}:test", processor, spec, num_samples=50, seed=0)
    with pytest.raises(DataError, match="Fashion-MNIST's train split only"):  # its test split is the eval set
        load_calibration_images("fashion-mnist:test", processor, spec, num_samples=50, seed=0)
    shutil.rmtree(root / "train")
    shutil.copytree(root / "val", root / "test")
    with pytest.raises(DataError, match="no train split"):
        load_calibration_images(str(root), processor, spec, num_samples=50, seed=0)


def test_few_shot_images_that_are_among_the_evaluation_images_are_refused(tmp_path):
    """The same split named two ways, one folder inside the other, Fashion-MNIST's train split, a Hub split: a
    score measured on the calibration images would flatter the model."""
    import shutil

    from genie_hub.data import check_apart_from_evaluation
    from genie_hub.data.eval_datasets import EvalSet, EvalSource, open_eval_set

    root = tmp_path / "dataset"
    shutil.copytree(_image_folder(tmp_path / "a", 3), root / "train")
    shutil.copytree(_image_folder(tmp_path / "b", 5), root / "val")
    evalset = open_eval_set(str(root), {0: "x"}, unlabelled=True)  # evaluates validation
    for apart in (str(root), f"{root}:train", str(root / "train")):
        check_apart_from_evaluation(apart, evalset)
    for shared in (f"{root}:val", f"{root}:validation", str(root / "val")):
        with pytest.raises(DataError, match="among the evaluation images.*split validation"):
            check_apart_from_evaluation(shared, evalset)
    with pytest.raises(DataError, match="among the evaluation images"):  # a folder with no splits, twice
        check_apart_from_evaluation(str(root / "val"), open_eval_set(str(root / "val"), {0: "x"}, unlabelled=True))
    linked = tmp_path / "linked"  # hard links to the evaluation images, and a linked folder of them
    linked.mkdir()
    first = next(p for p in sorted((root / "val").rglob("*.png")) if not p.name.startswith("."))
    os.link(first, linked / "copy.png")
    with pytest.raises(DataError, match="among the evaluation images"):
        check_apart_from_evaluation(str(linked), evalset)
    (linked / "copy.png").unlink()
    (linked / "photo.png").write_bytes(first.read_bytes())  # an image of its own, then a linked folder beside it
    (linked / "more").symlink_to(root / "val" / "sub")
    with pytest.raises(DataError, match="among the evaluation images"):
        check_apart_from_evaluation(str(linked), evalset)

    fashion = EvalSource("fashion-mnist", "fashion-mnist", split="train")
    with pytest.raises(DataError, match="among the evaluation images") as refused:
        check_apart_from_evaluation("fashion-mnist", EvalSet(fashion, "train", 0, None))
    # Both read the train split: calibrating on "its train split, for example" (what it said) is what was done.
    assert "its train split" not in str(refused.value) and "its validation or test split" in str(refused.value)
    with pytest.raises(DataError, match="Calibrate on another split \\(its train split"):  # validation, as above
        check_apart_from_evaluation(f"{root}:val", evalset)
    check_apart_from_evaluation("fashion-mnist", EvalSet(EvalSource("fashion-mnist", "fashion-mnist", split="test"),
                                                         "test", 0, None))
    hub = EvalSet(EvalSource("hub", "Owner/Set"), "validation", None, None)  # no split named: validation chosen
    for shared in ("owner/set:validation", "Owner/Set:default:validation"):
        with pytest.raises(DataError, match="among the evaluation images"):
            check_apart_from_evaluation(shared, hub)
    for shared in ("owner/set:train+validation", "owner/set:validation[:10%]"):  # split expressions read it too
        with pytest.raises(DataError, match="among the evaluation images"):
            check_apart_from_evaluation(shared, hub)
    for apart in ("owner/set", "owner/set:test", "owner/other:validation", "owner/set:train+test"):
        check_apart_from_evaluation(apart, hub)


def test_few_shot_images_that_a_data_file_names_by_path_are_refused(tmp_path):
    """A parquet or arrow evaluation set can name its images by path (datasets writes an Image column without the
    bytes when it has the files): those files are evaluation images too. Rows that hold their bytes are not."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from genie_hub.data import check_apart_from_evaluation
    from genie_hub.data.eval_datasets import open_eval_set

    shots = _image_folder(tmp_path / "shots", 2)
    files = sorted(str(f) for f in shots.rglob("img*"))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    datasets.Dataset.from_dict({"image": [{"path": f, "bytes": None} for f in files], "label": [0] * len(files)},
                               features=features).to_parquet(str(tmp_path / "by_path.parquet"))
    pq.write_table(pa.table({"image": files, "label": [0] * len(files)}), tmp_path / "strings.parquet")
    # The same names with the bytes beside them (written by pyarrow: datasets drops the bytes of a file it has)
    embedded = pa.array([{"bytes": Path(f).read_bytes(), "path": f} for f in files],
                        pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    table = pa.table({"image": embedded, "label": [0] * len(files)})
    features_metadata = pq.read_schema(tmp_path / "by_path.parquet").metadata  # datasets' Image feature
    pq.write_table(table.replace_schema_metadata(features_metadata), tmp_path / "embedded.parquet")
    for name, column in (("by_path", None), ("strings", "image")):
        evalset = open_eval_set(str(tmp_path / f"{name}.parquet"), {0: "x"}, image_column=column)
        with pytest.raises(DataError, match="among the evaluation images"):
            check_apart_from_evaluation(str(shots), evalset)
        check_apart_from_evaluation(str(_image_folder(tmp_path / f"other_{name}", 2)), evalset)
    check_apart_from_evaluation(str(shots), open_eval_set(str(tmp_path / "embedded.parquet"), {0: "x"}))
    # A row whose path cannot even be asked about (a name too long for the file system) names no image: the
    # evaluation skips it as unreadable, and the check must not fail on it.
    pq.write_table(pa.table({"image": files + ["/" + "y" * 5000 + ".png"], "label": [0] * (len(files) + 1)}),
                   tmp_path / "long.parquet")
    evalset = open_eval_set(str(tmp_path / "long.parquet"), {0: "x"}, image_column="image")
    with pytest.raises(DataError, match="among the evaluation images"):
        check_apart_from_evaluation(str(shots), evalset)


def test_calibration_errors(tmp_path):
    processor, spec = vit_processor(), InputSpec(1, 28, 28)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.md").write_text("x")
    with pytest.raises(DataError, match="No image files"):
        load_calibration_images(str(empty), processor, spec, 4, 0)
    with pytest.raises(DataError, match="Unknown calibration source"):
        load_calibration_images("definitely not a source!", processor, spec, 4, 0)
    with pytest.raises(DataError, match="is a file"):
        load_calibration_images(str(empty / "readme.md"), processor, spec, 4, 0)
    with pytest.raises(ConfigError):
        load_calibration_images(str(empty), processor, spec, 0, 0)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="could be read"):
            load_calibration_images(str(broken), processor, spec, 4, 0)


def test_a_decompression_bomb_in_a_few_shot_folder_is_skipped_like_any_unreadable_file(tmp_path, monkeypatch,
                                                                                        caplog):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (10, 10), (200, 10, 10)).save(folder / "good.png")
    Image.new("RGB", (100, 100)).save(folder / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 100 x 100 is then over twice the limit: a bomb
    with caplog.at_level("WARNING", logger="genie_hub.data"):
        x = load_calibration_images(str(folder), vit_processor(), InputSpec(1, 28, 28), 4, 0)
    assert x.shape[0] == 1
    assert any("bomb.png (DecompressionBombError)" in r.getMessage() for r in caplog.records)




def test_a_very_large_image_is_read_and_named(tmp_path, monkeypatch, caplog, recwarn):
    """Between PIL's limit and twice it, PIL only warns, with no file name (under -q a bare line, helper-31)."""
    from PIL import Image

    from genie_hub.data.pixels import decode_image

    Image.new("RGB", (40, 40), (1, 2, 3)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 px: over the limit, under twice it
    with caplog.at_level("WARNING", logger="genie_hub.data"):
        image = decode_image({"path": str(tmp_path / "huge.png")})
    assert image.size == (40, 40) and image.getpixel((0, 0)) == (1, 2, 3)
    assert "huge.png is a very large image (40x40 px)" in caplog.text
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]

def test_an_unreadable_few_shot_file_gives_its_place_to_the_next_one(tmp_path, caplog):
    """8 images asked of 9 readable files and 2 broken ones: 8 are used (7 before, and "has only 7 image(s)"),
    and the readable ones drawn are those an all-readable folder gives, in the same order (helper-31)."""
    folder = _image_folder(tmp_path / "calib", 9)
    processor, spec = vit_processor(), InputSpec(1, 28, 28, (0.286,), (0.353,))
    clean = load_calibration_images(str(folder), processor, spec, num_samples=9, seed=0)
    for name in ("bad1.jpg", "bad2.png"):
        (folder / name).write_text("not an image")
    with caplog.at_level("WARNING", logger="genie_hub.data"):
        x = load_calibration_images(str(folder), processor, spec, num_samples=8, seed=0)
    assert x.shape[0] == 8 and not any("has only" in r.getMessage() for r in caplog.records)
    assert any("Skipped" in r.getMessage() and "unreadable image file" in r.getMessage()  # seed 0 draws one
               for r in caplog.records)
    assert all(any(torch.equal(image, c) for c in clean) for image in x)
    assert len({tuple(image.flatten()[:50].tolist()) for image in x}) == 8


def test_open_image_reads_a_file_as_evaluate_and_the_space_do(tmp_path):
    """The grayscale card's snippet used Image.open(...).convert("L"): a 16-bit PNG became white and a phone
    photo lay sideways, where evaluate and the Space read them right (helper-31)."""
    from PIL import Image

    from genie_hub import DataError, open_image

    values = np.arange(0, 240, dtype=np.uint8).reshape(12, 20)
    Image.fromarray(values.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    assert np.array_equal(np.asarray(open_image(tmp_path / "deep.png", "L")), values)
    assert (np.asarray(Image.open(tmp_path / "deep.png").convert("L"))[values > 0] == 255).all()  # PIL alone: white
    sideways = Image.new("RGB", (30, 10), (200, 20, 20))
    exif = sideways.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees to view"
    sideways.save(tmp_path / "phone.jpg", exif=exif)
    assert open_image(tmp_path / "phone.jpg").size == (10, 30)
    Image.new("LA", (8, 8), (0, 0)).save(tmp_path / "clear.png")
    assert open_image(tmp_path / "clear.png", "L").getpixel((0, 0)) == 255
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(DataError, match="notes.png"):
        open_image(tmp_path / "notes.png")
    with pytest.raises(ConfigError, match="'L'"):
        open_image(tmp_path / "deep.png", "CMYK")

def test_calibration_from_fashion_mnist(fake_fmnist, monkeypatch):
    root, arrays = fake_fmnist
    monkeypatch.setenv("GENIE_HUB_FASHION_MNIST_DIR", str(root))
    processor, spec = vit_processor(), InputSpec(1, 28, 28)
    x = load_calibration_images("fashion-mnist", processor, spec, num_samples=8, seed=3)
    assert x.shape == (8, 1, 28, 28)
    expected_idx = torch.randperm(40, generator=torch.Generator().manual_seed(3))[:8]
    expected = fashion_mnist_pixel_values(torch.from_numpy(arrays["train"][0])[expected_idx], processor)
    assert torch.equal(x, expected)
    from transformers import ViTImageProcessor

    rgb = load_calibration_images("fashion-mnist", ViTImageProcessor(size={"height": 32, "width": 32}),
                                  InputSpec(3, 32, 32), num_samples=2, seed=3)
    assert rgb.shape == (2, 3, 32, 32)


def test_calibration_from_hub_dataset(monkeypatch):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(2)
    pil = [Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)) for _ in range(6)]
    table = datasets.Dataset.from_dict({"label": list(range(6)), "img": pil},
                                       features=datasets.Features({"label": datasets.Value("int64"),
                                                                   "img": datasets.Image()}))
    calls = []

    def fake_load_dataset(name, config=None, split=None, **kwargs):
        calls.append((name, config, split))
        if name == "owner/missing":
            raise FileNotFoundError("Dataset 'owner/missing' doesn't exist on the Hub")
        if name == "owner/text":
            return datasets.Dataset.from_dict({"text": ["a", "b"]})
        return table

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    processor, spec = vit_processor(), InputSpec(1, 28, 28)
    x = load_calibration_images("owner/images:validation", processor, spec, num_samples=4, seed=0)
    assert x.shape == (4, 1, 28, 28) and calls[-1] == ("owner/images", None, "validation")
    load_calibration_images("owner/images", processor, spec, num_samples=2, seed=0)
    assert calls[-1] == ("owner/images", None, "train")
    load_calibration_images("owner/images:small:test", processor, spec, num_samples=2, seed=0)  # as --eval-dataset
    assert calls[-1] == ("owner/images", "small", "test")
    with pytest.raises(DataError, match="owner/name:config:split"):
        load_calibration_images("owner/images:a:b:c", processor, spec, 2, 0)
    with pytest.raises(DataError, match="owner/missing"):
        load_calibration_images("owner/missing", processor, spec, 2, 0)
    with pytest.raises(DataError, match="no Image column"):
        load_calibration_images("owner/text", processor, spec, 2, 0)


# --------------------------------------------------------------------------------------------------------------
# Evaluation helpers
# --------------------------------------------------------------------------------------------------------------

class _Output:
    def __init__(self, logits):
        self.logits = logits


class _Toy(nn.Module):
    """Predicts class = round(mean pixel) via fixed logits; returns an HF-like output object."""

    def __init__(self, hf_like: bool = True):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.hf_like = hf_like

    def forward(self, pixel_values):
        value = pixel_values.flatten(1).mean(1, keepdim=True)
        logits = -(value - torch.arange(4.0)).abs() * self.scale
        return _Output(logits) if self.hf_like else logits


def test_evaluate_top1_and_predict_logits():
    pixels = torch.arange(4.0).repeat_interleave(5).view(20, 1, 1, 1).expand(20, 1, 2, 2).contiguous()
    labels = torch.arange(4).repeat_interleave(5)
    assert evaluate_top1(_Toy(), pixels, labels, batch_size=3) == 1.0
    wrong = labels.clone()
    wrong[:5] = 1
    assert evaluate_top1(_Toy(hf_like=False), pixels, wrong, batch_size=7) == pytest.approx(0.75)
    assert predict_logits(_Toy(), pixels, batch_size=6).shape == (20, 4)
    with pytest.raises(ConfigError):
        evaluate_top1(_Toy(), pixels, labels[:3])


def test_agreement_metrics():
    torch.manual_seed(0)
    fp = torch.randn(50, 10)
    same = agreement(fp, fp.clone())
    assert same["top1_agreement"] == 1.0 and same["top5_overlap"] == 1.0 and same["kl_fp_q"] == pytest.approx(0, abs=1e-12)
    assert same["num_samples"] == 50
    shifted = agreement(fp, fp + 3.0)  # softmax is shift invariant
    assert shifted["top1_agreement"] == 1.0 and shifted["kl_fp_q"] == pytest.approx(0, abs=1e-9)
    reversed_ = agreement(fp, -fp)
    assert reversed_["top1_agreement"] == 0.0 and reversed_["top5_overlap"] == 0.0 and reversed_["kl_fp_q"] > 0.5
    # One of two samples flips its top-1; the second is identical.
    a = torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    b = torch.tensor([[1.0, 3.0, 0.0], [0.0, 1.0, 2.0]])
    result = agreement(a, b)
    assert result["top1_agreement"] == 0.5 and result["top5_overlap"] == 1.0  # k = 3 classes
    p = torch.softmax(a[0].double(), 0)
    q = torch.softmax(b[0].double(), 0)
    assert result["kl_fp_q"] == pytest.approx(((p * (p / q).log()).sum() / 2).item())
    with pytest.raises(ConfigError):
        agreement(a, b[:1])


# --------------------------------------------------------------------------------------------------------------
# The shipped default model
# --------------------------------------------------------------------------------------------------------------

def test_default_model_assets_are_small_and_stock():
    if not (DEFAULT_MODEL_DIR / "config.json").exists():
        pytest.skip("default model not generated yet (python benchmarks/train_default_model.py)")
    model, processor = load_model(None)
    assert type(model).__name__ == "ResNetForImageClassification"
    assert (DEFAULT_MODEL_DIR / "model.safetensors").stat().st_size < 3_000_000
    assert [model.config.id2label[i] for i in range(10)] == list(FASHION_MNIST_LABELS)
    spec = input_spec(model, processor)
    assert spec.shape == (1, 28, 28) and len(spec.mean) == 1
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    out = processor(images=Image.new("L", (28, 28)), return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 1, 28, 28)
    assert processor(images=Image.new("RGB", (64, 48)).convert("L"), return_tensors="pt")["pixel_values"].shape == (1, 1, 28, 28)


@requires_real
def test_default_model_accuracy_on_real_test_images():
    model, processor = load_model(None)
    images, labels = load_fashion_mnist("test", root=REAL_DIR)
    pixels = fashion_mnist_pixel_values(images[:2000], processor)
    assert evaluate_top1(model, pixels, labels[:2000]) >= 0.88


def test_module_exports():
    for name in data_mod.__all__:
        assert hasattr(data_mod, name)


def test_sixteen_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    """PIL's convert clips 16-bit and float grayscale images to 0-255: a 16-bit PNG came out almost white and a float
    TIFF in [0, 1] black, and calibration or evaluation ran on them without a word."""
    from genie_hub.adapters.base import eight_bit
    from genie_hub.loading import InputSpec, to_pixel_values

    ramp = np.linspace(0, 1, 32 * 32).reshape(32, 32)
    expected = np.round(ramp * 255).astype(np.uint8)
    Image.fromarray((ramp * 65535).round().astype(np.uint16)).save(tmp_path / "g16.png")
    Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "f.tif")
    eight = Image.fromarray(expected)
    spec = InputSpec(channels=3, height=32, width=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    reference = to_pixel_values([eight], None, spec)
    for name in ("g16.png", "f.tif"):
        image = Image.open(tmp_path / name)
        assert image.mode in ("I;16", "I", "F")
        assert np.abs(np.asarray(eight_bit(image)).astype(int) - expected).max() <= 1
        assert (to_pixel_values([image], None, spec) - reference).abs().max() <= 2 / 255 / 0.5 + 1e-6
    assert eight_bit(eight) is eight  # 8-bit images as they are
    dark = (np.arange(32 * 32).reshape(32, 32) % 200).astype(np.uint16)  # 16-bit values 0-199: nearly black
    Image.fromarray(dark).save(tmp_path / "dark16.png")
    assert np.asarray(eight_bit(Image.open(tmp_path / "dark16.png"))).max() == 1  # not read as 8-bit mid-grey


def test_grayscale_images_reach_the_processor_as_height_width_1_arrays():
    """transformers 5.0's image processors refuse 2-D images ("Unsupported number of image dimensions: 2"), so a
    grayscale PIL image failed there in evaluate, few-shot calibration and the Space; H x W x 1 arrays read
    everywhere, and give what the PIL image gives where both read."""
    import numpy as np

    from genie_hub.loading import to_pixel_values

    model, processor = load_model(None)
    spec = input_spec(model, processor)
    seen = []

    def like_transformers_5_0(images, **kwargs):
        seen.extend(np.asarray(image).ndim for image in images)
        if min(seen) < 3:
            raise ValueError("Unsupported number of image dimensions: 2")
        return processor(images=images, **kwargs)

    images = [Image.fromarray(np.random.RandomState(i).randint(0, 256, (40, 30), dtype=np.uint8)) for i in range(3)]
    x = to_pixel_values(images, like_transformers_5_0, spec)
    assert seen == [3, 3, 3]
    assert torch.equal(x, processor(images=images, return_tensors="pt")["pixel_values"])
