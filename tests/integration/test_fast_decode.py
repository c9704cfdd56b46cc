"""``build --fast-decode`` end to end: gated at build time, recorded, and really used by the served image model.

A seeded resnet18@64 with its head fitted to six synthetic classes is built through the CLI
(OpenVINO fp32) with labelled JPEGs four times the input size, so every gate image is
decoded at 1/4 scale. Checked: the manifest records the gate's figures; ``<name>_image``
carries ``fast_decode`` and answers, over raw bytes, the engine's logits on the
fast-decoded pixels (not on the exactly decoded ones) while its labels stay those of the
exact path; and a build whose gate images are too small to be judged is refused in one
line with the repository untouched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sft_engine.cli import main
from sft_engine.pixels import PixelPipeline
from sft_engine.repository.manifest import read_manifest
from sft_engine.repository.config import parameters_of, read_config
from sft_engine.server import ServerConfig, TritonServer
from tests.gpu.conftest import CLASSES, INPUT_SIZE, make_classifier
from tests.helpers import tree_digest

pytestmark = pytest.mark.integration

PER_CLASS = 6
SCALE = 4  # the JPEGs are 4x the input size: decoded at 1/4 by the fast path
NAME = "fastdec"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(weights, labelled JPEG folder, labels file)."""
    root = tmp_path_factory.mktemp("fast-decode")
    made = make_classifier(root, PER_CLASS, scale=SCALE, suffix=".jpg")
    (root / "labels.txt").write_text("\n".join(made.labels) + "\n")
    return made.weights, made.calibration, root / "labels.txt"


def _argv(classifier, repo: Path, calibration: Path) -> list[str]:
    weights, _, labels = classifier
    return ["build", "--arch", "resnet18", "--weights", str(weights), "--labels", str(labels), "--input-size", str(INPUT_SIZE),
            "--max-batch-size", "8", "--repository", str(repo), "--name", NAME, "--engine", "openvino", "--precision", "fp32",
            "--calibration", str(calibration), "--fast-decode"]


@pytest.fixture(scope="module")
def repo(classifier, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("fast-decode-repo") / "model_repository"
    assert main(_argv(classifier, repo, classifier[1])) == 0
    return repo


def test_the_gate_is_recorded_in_the_engine_and_both_image_models(repo):
    gate = read_manifest(repo / NAME / "1").engine_details["fast_decode"]
    assert gate["enabled"] and gate["gate_images"] == len(CLASSES) * PER_CLASS
    assert gate["reduced_scale_images"] == gate["gate_images"]  # every gate JPEG went through the reduced-scale decode
    assert gate["top1_agreement"] >= gate["min_top1_agreement"] == 0.99
    assert 0 < gate["mean_abs_input_diff"] < 0.5
    for image_model in (f"{NAME}_image", f"{NAME}_preprocess"):
        assert parameters_of(read_config(repo / image_model / "config.pbtxt"))["fast_decode"] == "true", image_model
        assert read_manifest(repo / image_model / "1").engine_details["fast_decode"] == gate, image_model
    assert "fast_decode" not in parameters_of(read_config(repo / NAME / "config.pbtxt"))  # clients' preprocessing stays exact


def test_served_bytes_are_decoded_fast_and_keep_the_exact_labels(repo, server, classifier):
    import tritonclient.grpc as grpcclient

    files = sorted(classifier[1].rglob("*.jpg"))
    raw = [p.read_bytes() for p in files]
    exact = PixelPipeline.from_parameters(parameters_of(read_config(repo / NAME / "config.pbtxt")))
    fast = PixelPipeline.from_parameters(parameters_of(read_config(repo / f"{NAME}_image" / "config.pbtxt")))
    assert fast.fast_decode and not exact.fast_decode
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        def tensor_logits(batch: np.ndarray) -> np.ndarray:
            inp = grpcclient.InferInput("input", list(batch.shape), "FP32")
            inp.set_data_from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            return client.infer(NAME, [inp]).as_numpy("logits")

        served = []
        for data in raw:
            inp = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[data]], dtype=np.object_))
            served.append(client.infer(f"{NAME}_image", [inp]).as_numpy("logits")[0])
        served_logits = np.stack(served)
        on_fast = np.concatenate([tensor_logits(fast.bytes_to_array(d)[None]) for d in raw])
        on_exact = np.concatenate([tensor_logits(exact.bytes_to_array(d)[None]) for d in raw])
    finally:
        client.close()
    np.testing.assert_allclose(served_logits, on_fast, rtol=1e-4, atol=1e-4)
    assert np.abs(served_logits - on_exact).max() > 1e-3  # the server did not decode exactly
    assert float((served_logits.argmax(1) == on_exact.argmax(1)).mean()) >= 0.99


def test_gate_images_too_small_to_judge_refuse_the_build(classifier, tmp_path, capsys):
    small = tmp_path / "small"
    for kind in CLASSES:
        (small / kind).mkdir(parents=True)
        for src in sorted((classifier[1] / kind).iterdir()):
            with Image.open(src) as img:
                img.resize((INPUT_SIZE, INPUT_SIZE)).save(small / kind / src.name, quality=92)
    repo = tmp_path / "repo"
    before = tree_digest(repo)
    code = main([*_argv(classifier, repo, small), "--json"])  # --json: no progress lines, the error alone on stderr
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "--fast-decode" in err and "at least twice" in err, err
    assert tree_digest(repo) == before
