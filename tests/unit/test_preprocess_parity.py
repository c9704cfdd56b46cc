"""Our pixel pipeline against timm's and torchvision's own eval transforms, on photographs.

The photographs are made here (gradients, texture noise, shapes; JPEG and PNG; odd
sizes, portrait and landscape) and decoded by Pillow on both sides, so any difference
is the resize / crop / normalize arithmetic: it must be none (bit-identical tensors).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from sft_engine.models.timm_source import preprocessing_of_data_config
from sft_engine.models.torchvision_source import preprocessing_of_weights
from sft_engine.pixels import PixelPipeline
from sft_engine.preprocess import Preprocessing

timm = pytest.importorskip("timm")

SIZES = [(333, 251), (251, 333), (97, 401), (640, 480), (224, 224), (170, 170), (1023, 517)]


def _photo(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], -1)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = (x0, y0, x0 + int(rng.integers(5, width // 2 + 6)), y0 + int(rng.integers(5, height // 2 + 6)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color)
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    noisy = np.asarray(image, np.float32) + rng.normal(0, 12, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _photographs():
    for i, (w, h) in enumerate(SIZES):
        pixels = _photo(w, h, i)
        for fmt in ("JPEG", "PNG"):
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format=fmt, quality=87)
            yield f"{fmt}-{w}x{h}", buf.getvalue()


PHOTOS = list(_photographs())


def _ours(prep: Preprocessing, data: bytes) -> np.ndarray:
    pipe = PixelPipeline.from_parameters(prep.to_parameters())  # through the recorded parameters, as served
    return pipe.bytes_to_array(data)


def _check(prep: Preprocessing, reference) -> None:
    for name, data in PHOTOS:
        expected = reference(Image.open(io.BytesIO(data)).convert("RGB")).numpy()
        got = _ours(prep, data)
        assert got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected, err_msg=f"{name}: {prep.describe()}")


@pytest.mark.parametrize("crop_pct", [0.875, 0.95, 1.0])
@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
def test_matches_timm_create_transform(crop_pct, crop_mode):
    from timm.data import create_transform, resolve_data_config

    with __import__("torch").device("meta"):
        model = timm.create_model("test_vit", pretrained=False)
    config = resolve_data_config({"crop_pct": crop_pct, "crop_mode": crop_mode}, model=model)
    assert config["interpolation"] == "bicubic" and config["mean"] == (0.5, 0.5, 0.5)
    prep = preprocessing_of_data_config(config)
    assert (prep.crop_mode, prep.resize) == (crop_mode, "bicubic")
    _check(prep, create_transform(**config))


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "convnext_atto", "resnet10t", "efficientvit_b0"])
def test_matches_timm_for_the_models_own_config(name):
    from timm.data import create_transform, resolve_data_config

    with __import__("torch").device("meta"):
        model = timm.create_model(name, pretrained=False)
    config = resolve_data_config({}, model=model)
    _check(preprocessing_of_data_config(config), create_transform(**config))


@pytest.mark.parametrize("weights", ["ResNet50_Weights.IMAGENET1K_V2", "EfficientNet_B0_Weights.IMAGENET1K_V1",
                                     "ViT_B_16_Weights.IMAGENET1K_V1", "Swin_T_Weights.IMAGENET1K_V1", "Inception_V3_Weights.IMAGENET1K_V1"])
def test_matches_torchvision_weights_transforms(weights):
    import torchvision

    enum = torchvision.models.get_weight(weights)
    _check(preprocessing_of_weights(enum), enum.transforms())


def test_the_plain_resize_is_unchanged_and_old_parameters_read_as_it():
    old = {"preprocess_input_size": "32", "preprocess_mean": "0.5,0.5,0.5", "preprocess_std": "0.25,0.25,0.25",
           "preprocess_layout": "NCHW", "preprocess_color": "RGB", "preprocess_resize": "bilinear", "preprocess_scale": repr(1 / 255)}
    prep = Preprocessing.from_parameters(old)
    assert (prep.crop_mode, prep.resize_size, prep.resize) == ("squash", None, "bilinear")
    assert prep.to_parameters() == old  # a squash-resize config is written as before
    name, data = PHOTOS[0]
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32), Image.BILINEAR)
    expected = ((np.asarray(image, np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.25)).transpose(2, 0, 1)
    np.testing.assert_array_equal(_ours(prep, data), expected)


def test_crop_settings_round_trip_through_parameters():
    prep = Preprocessing(input_size=224, resize_size=248, crop_mode="border", resize="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)
    assert Preprocessing.from_parameters(prep.to_parameters()) == prep
    assert abs(prep.crop_pct - 224 / 248) < 1e-12
