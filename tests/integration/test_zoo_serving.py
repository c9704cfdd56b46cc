"""Classifiers of other families, trained elsewhere, built with ``sft-engine build`` and served by a real tritonserver.

One small model per family, each handed over the way another trainer leaves it:

* ``timm:test_vit`` (attention; bicubic, crop_pct 0.95, mean/std 0.5): a checkpoint in
  timm ``train.py``'s layout (``state_dict`` of a DDP model: ``module.`` prefixes, beside
  ``optimizer``, ``args``, ``epoch``), ``.pth``;
* ``timm:test_convnext`` (LayerNorm, GELU): Lightning's layout (``state_dict`` with the
  module's ``model.`` prefix beside a loss buffer), every CPU engine tried;
* ``timm:test_efficientnet``: Hugging Face's layout (``timm_model.`` prefix), ``.safetensors``;
* ``timm:test_maxvit`` (window and grid attention) as a ``torch.export`` program with a
  dynamic batch, its preprocessing given as timm's data config in JSON.

Each is built by the CLI, published, served; the labels of photographs (made here: JPEG
and PNG, odd sizes, portrait and landscape) sent as raw bytes to ``<name>_image`` and
classified through the client must agree with timm's own ``create_transform`` and the
eager model on at least 99.5 % of them.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from sft_engine.cli import main as cli
from sft_engine.client import Client
from sft_engine.repository.manifest import read_manifest

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.integration

CLASSES = 5
SIZES = [(333, 251), (251, 333), (97, 401), (640, 480), (170, 170), (1023, 517), (401, 97), (260, 390), (512, 288), (161, 163)]
FAMILIES = {"vit": "timm:test_vit", "convnext": "timm:test_convnext", "efficientnet": "timm:test_efficientnet", "maxvit": "timm:test_maxvit"}


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """A photograph-like image: gradients, shapes, blur, sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 255, y / height * 255, (x * y) / (width * height) * 255], -1)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = (x0, y0, x0 + int(rng.integers(5, width // 2 + 6)), y0 + int(rng.integers(5, height // 2 + 6)))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    image = image.filter(ImageFilter.GaussianBlur(1.0))
    noisy = np.asarray(image, np.float32) + rng.normal(0, 10, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("photos")
    paths = []
    for i, (w, h) in enumerate(SIZES * 2):
        suffix = "jpg" if i % 2 == 0 else "png"
        path = root / f"photo{i}.{suffix}"
        _photo(w, h, i).save(path, **({"quality": 88} if suffix == "jpg" else {}))
        paths.append(path)
    return paths


def _model(name: str, seed: int) -> torch.nn.Module:
    """The model as its trainer left it: timm's init moved off its symmetric start, so labels vary from photo to photo."""
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=CLASSES)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return {key: _model(arch.split(":")[1], seed) for seed, (key, arch) in enumerate(FAMILIES.items())}


def _build(*args: str) -> None:
    assert cli(["build", "--num-classes", str(CLASSES), "--max-batch-size", "4", "--preprocess-instances", "1",
                "--parity-samples", "8", *args]) == 0


@pytest.fixture(scope="module")
def repo(tmp_path_factory, models) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    repo = root / "repo"
    # timm train.py: a DDP model's state dict, with the optimizer, the epoch and its argparse.Namespace
    state = {f"module.{k}": v for k, v in models["vit"].state_dict().items()}
    torch.save({"epoch": 3, "arch": "test_vit", "state_dict": state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
                "version": 2, "args": argparse.Namespace(model="test_vit", lr=0.1), "metric": 71.5}, root / "checkpoint-3.pth.tar.pth")
    _build("--arch", "timm:test_vit", "--weights", str(root / "checkpoint-3.pth.tar.pth"), "--repository", str(repo),
           "--engine", "onnxruntime", "--precision", "fp32")
    # Lightning: the LightningModule's attribute as prefix, a loss buffer beside it
    lightning = {f"model.{k}": v for k, v in models["convnext"].state_dict().items()} | {"criterion.weight": torch.ones(CLASSES)}
    torch.save({"state_dict": lightning, "epoch": 9, "global_step": 900, "pytorch-lightning_version": "2.4.0"}, root / "last.pth")
    _build("--arch", "timm:test_convnext", "--weights", str(root / "last.pth"), "--repository", str(repo), "--precision", "fp32")
    # Hugging Face (transformers' TimmWrapper): timm_model. prefix, safetensors
    from safetensors.torch import save_file

    save_file({f"timm_model.{k}": v.contiguous() for k, v in models["efficientnet"].state_dict().items()}, str(root / "model.safetensors"))
    _build("--arch", "timm:test_efficientnet", "--weights", str(root / "model.safetensors"), "--repository", str(repo),
           "--engine", "onnxruntime", "--precision", "fp32")
    # torch.export, dynamic batch, with timm's own data config as the preprocessing file
    maxvit = models["maxvit"]
    program = torch.export.export(maxvit, (torch.randn(2, 3, 160, 160),), dynamic_shapes={"x": {0: torch.export.Dim("batch", max=64)}})
    torch.export.save(program, root / "maxvit.pt2")
    (root / "maxvit.json").write_text(json.dumps(timm.data.resolve_data_config({}, model=maxvit)))
    _build("--exported", str(root / "maxvit.pt2"), "--preprocess-config", str(root / "maxvit.json"), "--name", "maxvit",
           "--repository", str(repo), "--precision", "fp32")
    return repo


NAMES = {"vit": "timm_test_vit", "convnext": "timm_test_convnext", "efficientnet": "timm_test_efficientnet", "maxvit": "maxvit"}


def _reference(model: torch.nn.Module, photos: list[Path]) -> list[int]:
    """timm's own eval transform and the eager model."""
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    with torch.no_grad():
        batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in photos])
        return model(batch).argmax(1).tolist()


def test_each_family_was_built_with_its_own_preprocessing(repo):
    vit = read_manifest(repo / NAMES["vit"] / "1")
    assert vit.arch == "timm:test_vit"
    prep = vit.preprocessing
    assert (prep["preprocess_input_size"], prep["preprocess_resize_size"], prep["preprocess_crop_mode"], prep["preprocess_resize"],
            prep["preprocess_mean"]) == ("160", "168", "center", "bicubic", "0.5,0.5,0.5")
    convnext = read_manifest(repo / NAMES["convnext"] / "1")
    assert {c["engine"] for c in convnext.candidates} == {"onnxruntime", "torchscript", "openvino"}  # every CPU engine tried
    maxvit = read_manifest(repo / "maxvit" / "1")
    assert maxvit.arch == "exported" and maxvit.inputs["exported"]["file"] == "maxvit.pt2"
    assert maxvit.settings["preprocess_origin"] == "file maxvit.json"
    # MaxViT's window reshapes: the ONNX and TorchScript routes keep the traced batch and fail alone, each in one line;
    # OpenVINO converts the program itself, symbolic batch kept, and is published
    rows = {c["engine"]: c for c in maxvit.candidates}
    assert maxvit.engine == "openvino" and rows["openvino"]["exported"]
    for engine in ("onnxruntime", "torchscript"):
        row = rows[engine]
        assert not row.get("parity", {}).get("passed", False), row
        if not row["exported"]:
            assert "\n" not in row["error"] and row["error"], row


@pytest.mark.parametrize("family", list(FAMILIES))
def test_served_labels_agree_with_timm_transform_and_eager_model(server, models, photos, family):
    expected = _reference(models[family], photos)
    assert len(set(expected)) >= 2, "a model that answers one class for every photo would agree trivially"
    with Client(server.grpc_url, model=NAMES[family]) as client:
        raw = [preds[0].label for preds in client.classify(photos, top_k=1, server_side=True)]
        local = [preds[0].label for preds in client.classify(photos, top_k=1)]
    wanted = [f"class_{i}" for i in expected]
    assert np.mean([a == b for a, b in zip(raw, wanted)]) >= 0.995, (raw, wanted)
    assert np.mean([a == b for a, b in zip(local, wanted)]) >= 0.995, (local, wanted)


def test_raw_bytes_of_one_photo_from_memory(server, models, photos):
    data = io.BytesIO()
    Image.open(photos[1]).save(data, format="PNG")
    with Client(server.grpc_url, model=NAMES["vit"]) as client:
        label = client.classify([data.getvalue()], top_k=1, server_side=True)[0][0].label
    assert label == f"class_{_reference(models['vit'], [photos[1]])[0]}"
