"""GPU-test fixtures: a small classifier whose decisions are clear, and labelled images for it.

The FP16 gates (top-1 agreement ≥ 99.5%, accuracy drop ≤ 0.3 points) are meant for a
trained model. A randomly initialised one has near-tied logits that FP16 rounding
flips, which would make the tests flaky for the wrong reason, and no weights may be
downloaded. So the head of a seeded resnet18 is fitted (ridge regression on its
features, closed form) to synthetic images of distinct colour patterns, one folder per
class: eager FP32 then classifies them correctly with wide margins, like a fine-tuned
model on its own validation set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

CLASSES = sorted(["red", "green", "blue", "stripes", "checker", "gradient"])  # class index = sorted folder name
IMAGES_PER_CLASS = 12
INPUT_SIZE = 64


@dataclass(frozen=True)
class Classifier:
    weights: Path
    calibration: Path
    labels: list[str]
    min_margin: float


def _image(kind: str, rng: np.random.Generator) -> np.ndarray:
    s = INPUT_SIZE
    yy, xx = np.mgrid[0:s, 0:s] / s
    base = {
        "red": np.stack([np.full((s, s), 0.9), np.full((s, s), 0.1), np.full((s, s), 0.1)], -1),
        "green": np.stack([np.full((s, s), 0.1), np.full((s, s), 0.8), np.full((s, s), 0.2)], -1),
        "blue": np.stack([np.full((s, s), 0.1), np.full((s, s), 0.2), np.full((s, s), 0.9)], -1),
        "stripes": np.repeat(((np.floor(xx * 8) % 2)[..., None]), 3, -1),
        "checker": np.repeat((((np.floor(xx * 6) + np.floor(yy * 6)) % 2)[..., None]), 3, -1),
        "gradient": np.stack([xx, yy, 1 - xx], -1),
    }[kind]
    noisy = base + rng.normal(0, 0.06, base.shape)
    return (np.clip(noisy, 0, 1) * 255).astype(np.uint8)


def fit_head(model: torch.nn.Module, inputs: np.ndarray, labels: np.ndarray, scale: float = 10.0, ridge: float = 1e-1) -> None:
    """Replace ``model.fc`` by the ridge-regression fit of ``scale``·one-hot(labels) on its features."""
    fc = model.fc
    model.fc = torch.nn.Identity()
    with torch.no_grad():
        feats = model(torch.from_numpy(inputs)).double()
    model.fc = fc
    mean = feats.mean(0, keepdim=True)
    centered = feats - mean
    targets = torch.nn.functional.one_hot(torch.from_numpy(labels), len(CLASSES)).double() * scale
    gram = centered.T @ centered
    gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=torch.float64)
    weight = torch.linalg.solve(gram, centered.T @ (targets - targets.mean(0, keepdim=True)))
    bias = targets.mean(0) - (mean @ weight).squeeze(0)
    with torch.no_grad():
        fc.weight.copy_(weight.T.float())
        fc.bias.copy_(bias.float())


def make_classifier(root: Path, images_per_class: int, scale: int = 1, suffix: str = ".png") -> Classifier:
    """Labelled images in class folders under ``root``, and a resnet18 whose fitted head classifies them all.

    ``scale``: the files are that many times the input size (bicubic upscaling), as clients'
    photographs are; ``suffix`` picks the format (``.jpg``: quality 92).
    """
    from PIL import Image

    from sft_engine.models import build_model, save_state_dict
    from sft_engine.preprocess import Preprocessing

    rng = np.random.default_rng(0)
    files, labels = [], []
    for index, kind in enumerate(CLASSES):
        folder = root / "calibration" / kind
        folder.mkdir(parents=True)
        for i in range(images_per_class):
            path = folder / f"{i:03d}{suffix}"
            image = Image.fromarray(_image(kind, rng))
            if scale != 1:
                image = image.resize((INPUT_SIZE * scale,) * 2, Image.Resampling.BICUBIC)
            image.save(path, **({"quality": 92} if suffix == ".jpg" else {}))
            files.append(path)
            labels.append(index)
    prep = Preprocessing(input_size=INPUT_SIZE)
    inputs = prep.batch(files)
    torch.manual_seed(0)
    model = build_model("resnet18", len(CLASSES)).eval()
    fit_head(model, inputs, np.array(labels))
    with torch.no_grad():
        logits = model(torch.from_numpy(inputs)).numpy()
    top2 = np.sort(logits, axis=1)[:, -2:]
    assert (logits.argmax(1) == np.array(labels)).all(), "the fitted head must classify its own images"
    weights = root / "classifier.safetensors"
    save_state_dict(model, weights)
    return Classifier(weights, root / "calibration", list(CLASSES), float((top2[:, 1] - top2[:, 0]).min()))


@pytest.fixture(scope="session")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    return make_classifier(tmp_path_factory.mktemp("gpu-classifier"), IMAGES_PER_CLASS)


#: INT8 / FP8 need a 200-image gate besides the calibration images: 6 classes x 45 = 270 (70 calibrate)
QUANT_IMAGES_PER_CLASS = 45


@pytest.fixture(scope="session")
def quant_classifier(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    """Enough labelled images to calibrate a quantized plan and gate it on 200 others."""
    return make_classifier(tmp_path_factory.mktemp("gpu-quant-classifier"), QUANT_IMAGES_PER_CLASS)
