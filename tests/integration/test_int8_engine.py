"""INT8 CPU engines: calibrated on real labelled images, gated on others, served by a real tritonserver.

The classifier is a seeded resnet18 whose head is fitted (closed form) to synthetic
labelled images, so its decisions have clear margins like a fine-tuned model's on its
own validation set; 240 images split into 40 that calibrate and 200 that gate.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from sft_engine.build import build
from sft_engine.cli import main
from sft_engine.build_config import BuildConfig
from sft_engine.engines.calibration import files_sha256, image_digest, split_for_int8
from sft_engine.engines.cpu.isa import cpu_int8_isa
from sft_engine.errors import ExportError
from sft_engine.models import build_model, load_weights
from sft_engine.preprocess import Preprocessing
from sft_engine.repository.manifest import read_manifest
from sft_engine.server import ServerConfig, TritonServer
from sft_engine.verify import parity_inputs
from tests.gpu.conftest import CLASSES, INPUT_SIZE, _image, fit_head
from tests.helpers import rollout_second_version, tree_digest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("nncf") is None, reason="nncf is not installed"),
]

#: a CPU without INT8 instructions (AVX2, VNNI, AMX-INT8) builds INT8 only when asked to (for serving hosts that have them); the
#: engines then run emulated, correct and slower, so every test here still runs on such a CPU
EMULATED = cpu_int8_isa() is None

PER_CLASS = 40  # 6 classes: 240 labelled images, 40 calibrate and 200 gate


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(weights, labelled image folder, labels file)."""
    from PIL import Image

    from sft_engine.models import save_state_dict

    root = tmp_path_factory.mktemp("int8")
    rng = np.random.default_rng(0)
    for kind in CLASSES:
        (root / "images" / kind).mkdir(parents=True)
        for i in range(PER_CLASS):
            Image.fromarray(_image(kind, rng)).save(root / "images" / kind / f"{i:03d}.png")
    data = parity_inputs(Preprocessing(input_size=INPUT_SIZE), 1, root / "images", labels=CLASSES)
    torch.manual_seed(0)
    model = build_model("resnet18", len(CLASSES)).eval()
    fit_head(model, data.inputs, data.labels)
    weights = root / "classifier.safetensors"
    save_state_dict(model, weights)
    (root / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    return weights, root / "images", root / "labels.txt"


def _cfg(classifier, repo: Path, **kw) -> BuildConfig:
    weights, images, _ = classifier
    base = dict(arch="resnet18", num_classes=len(CLASSES), labels=list(CLASSES), weights=weights, input_size=INPUT_SIZE,
                max_batch_size=16, repository=repo, name="int8", calibration_dir=images, selection_budget_s=1.0,
                allow_int8_without_isa=EMULATED)
    return BuildConfig().merged({**base, **kw}, "flags")


def _argv(classifier, repo: Path, *extra: str) -> list[str]:
    weights, images, labels = classifier
    return ["build", "--arch", "resnet18", "--weights", str(weights), "--labels", str(labels), "--input-size", str(INPUT_SIZE),
            "--max-batch-size", "16", "--repository", str(repo), "--name", "int8", "--calibration", str(images),
            *(["--allow-emulated-int8"] if EMULATED else []), *extra]


@pytest.fixture(scope="module")
def int8_build(classifier, tmp_path_factory):
    repo = tmp_path_factory.mktemp("int8-repo") / "model_repository"
    return build(_cfg(classifier, repo, precision="int8")), repo


def test_int8_build_passes_its_gate_on_images_the_quantizer_never_saw(int8_build, classifier):
    result, repo = int8_build
    assert result.precision == "int8" and result.engine in ("openvino", "onnxruntime")
    manifest = read_manifest(result.published.path)
    parity = manifest.parity
    assert parity["passed"] and parity["samples"] == 200 and parity["top1_agreement"] >= 0.99
    assert parity["eager_accuracy"] is not None and (parity["eager_accuracy"] - parity["engine_accuracy"]) * 100 <= 0.5
    assert parity["max_abs_diff"] > 1e-3  # really quantized: an FP32 engine matches to ~1e-5
    assert parity["tolerance"]["min_top1_agreement"] == 0.99 and parity["tolerance"]["max_accuracy_drop"] == 0.5
    details = manifest.engine_details
    assert details["precision"] == "int8"
    int8 = details["int8"]
    assert int8["quantizer"] in ("nncf", "onnxruntime.quantization") and int8["version"]
    assert (int8["calibration_images"], int8["gate_images"]) == (40, 200) and int8["isa"] == cpu_int8_isa()
    assert int8.get("built_emulated", False) == EMULATED
    # the recorded hashes are those of disjoint file lists of the calibration directory
    files = sorted(p.relative_to(classifier[1]).as_posix() for p in classifier[1].rglob("*.png"))
    order = np.random.default_rng(0).permutation(len(files))
    assert int8["gate_files_sha256"] == files_sha256(files[i] for i in sorted(order[40:]))
    assert int8["calibration_files_sha256"] == files_sha256(files[i] for i in sorted(order[:40]))
    names = {c["candidate"] for c in manifest.candidates}
    assert names == {"openvino-int8", "onnxruntime-int8"}
    # what each quantizer really pulled from its data reader: the 40 calibration images, not one gate image
    data = parity_inputs(Preprocessing(input_size=INPUT_SIZE), 8, classifier[1], labels=list(CLASSES))
    split = split_for_int8(data, 40, seed=0)
    calibration = {image_digest(x) for x in split.calibration}
    gate = {image_digest(x) for x in split.gate.inputs}
    assert len(calibration) == 40 and len(gate) == 200 and not calibration & gate
    for row in manifest.candidates:
        received = row["int8"]
        assert received["received_images"] == 40, row["candidate"]
        assert set(received["received_image_digests"]) == calibration, row["candidate"]
        assert not set(received["received_image_digests"]) & gate, row["candidate"]
    settings_file = result.published.path / "engine.json"
    assert '"quantized": "int8"' in settings_file.read_text()


def test_int8_served_labels_equal_eager_on_the_gate_images(int8_build, classifier):
    import tritonclient.grpc as grpcclient

    result, repo = int8_build
    weights, images, _ = classifier
    data = parity_inputs(Preprocessing(input_size=INPUT_SIZE), 1, images, labels=CLASSES)
    order = np.random.default_rng(0).permutation(len(data.inputs))
    gate = data.inputs[np.sort(order[40:])]
    model = load_weights(build_model("resnet18", len(CLASSES)), weights).eval()
    with torch.inference_mode():
        eager = model(torch.from_numpy(gate)).numpy().argmax(1)
    with TritonServer(ServerConfig(repository=repo, http_port=0, grpc_port=0, metrics_port=0)) as srv:
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        try:
            served = []
            for start in range(0, len(gate), 16):
                inp = grpcclient.InferInput("input", [len(gate[start:start + 16]), 3, INPUT_SIZE, INPUT_SIZE], "FP32")
                inp.set_data_from_numpy(np.ascontiguousarray(gate[start:start + 16]))
                served.append(client.infer("int8", [inp]).as_numpy("logits"))
        finally:
            client.close()
    agreement = float((np.concatenate(served).argmax(1) == eager).mean())
    assert agreement >= 0.99, agreement


def test_int8_failing_its_gate_falls_back_and_the_cli_says_why(classifier, tmp_path, capsys):
    """A tiny calibration set and a strict logit tolerance: INT8 fails its gate, FP32 is published."""
    repo = tmp_path / "repo"
    code = main(_argv(classifier, repo, "--engine", "openvino", "--int8-calibration-images", "2",
                      "--parity-atol", "1e-3", "--parity-rtol", "0"))
    out = capsys.readouterr().out
    assert code == 0, out
    manifest = read_manifest(repo / "int8" / "1")
    assert manifest.engine_details["precision"] == "fp32"
    by_name = {c["candidate"]: c for c in manifest.candidates}
    int8 = by_name["openvino-int8"]
    assert int8["exported"] and not int8["parity"]["passed"]
    assert int8["int8"]["calibration_images"] == 2 and int8["int8"]["gate_images"] == 238
    assert any(r.startswith("max|diff|") for r in int8["parity"]["reasons"])
    line = next(ln for ln in out.splitlines() if "candidate openvino-int8" in ln)
    assert "failed its gate (max|diff|" in line


def test_too_few_labelled_images_skip_int8_in_auto_and_refuse_it_when_asked(classifier, tmp_path, capsys):
    few = tmp_path / "few"
    for kind in CLASSES[:2]:
        (few / kind).mkdir(parents=True)
        for src in sorted((classifier[1] / kind).iterdir())[:3]:
            (few / kind / src.name).write_bytes(src.read_bytes())
    result = build(_cfg(classifier, tmp_path / "repo", engine="onnxruntime", calibration_dir=few))
    assert result.precision == "fp32"
    skipped = {c["candidate"]: c for c in result.candidates}["onnxruntime-int8"]
    assert not skipped["exported"] and "at least 232 labelled images" in skipped["error"] and "there are 6" in skipped["error"]
    before = tree_digest(tmp_path / "repo")
    code = main(_argv(classifier, tmp_path / "repo", "--precision", "int8", "--calibration", str(few), "--json"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "at least 232 labelled images" in err, err
    assert tree_digest(tmp_path / "repo") == before


def test_unlabelled_images_cannot_gate_int8(classifier, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for src in sorted((classifier[1] / CLASSES[0]).iterdir())[:3]:
        (flat / src.name).write_bytes(src.read_bytes())
    with pytest.raises(ExportError, match="needs labelled images"):
        build(_cfg(classifier, tmp_path / "repo", precision="int8", calibration_dir=flat))
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("case", ["missing", "empty", "no-label", "corrupt", "none"])
def test_bad_calibration_input_is_one_line_exit_2(classifier, tmp_path, capsys, case):
    cal = tmp_path / "cal"
    needle = {"missing": "does not exist", "empty": "holds no images", "no-label": "'fish'", "corrupt": "broken.png",
              "none": "needs labelled images"}[case]
    if case == "empty":
        cal.mkdir()
    elif case == "no-label":
        (cal / "fish").mkdir(parents=True)
        src = next((classifier[1] / CLASSES[0]).iterdir())
        (cal / "fish" / src.name).write_bytes(src.read_bytes())
        (cal / CLASSES[0]).mkdir()
        (cal / CLASSES[0] / src.name).write_bytes(src.read_bytes())
    elif case == "corrupt":
        (cal / CLASSES[0]).mkdir(parents=True)
        (cal / CLASSES[0] / "broken.png").write_bytes(b"\x89PNG not really")
    argv = _argv(classifier, tmp_path / "repo", "--precision", "int8", "--json")
    if case == "none":
        argv = [a for a in argv if a not in ("--calibration", str(classifier[1]))]
    else:
        argv[argv.index("--calibration") + 1] = str(cal)
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert needle in err, err
    assert not (tmp_path / "repo").exists()


def test_a_quantizer_failing_inside_the_library_is_recorded_and_the_build_goes_on(classifier, tmp_path, monkeypatch, capsys):
    """Calibration batches of the wrong shape make NNCF fail for real; auto publishes FP32, int8 stops in one line."""
    from sft_engine.engines.cpu import quantize

    monkeypatch.setattr(quantize, "_batches", lambda images, batch=16: [np.zeros((1, 1, 8, 8), np.float32)])
    result = build(_cfg(classifier, tmp_path / "repo", engine="openvino", precision="auto"))
    assert result.precision in ("fp32", "bf16")
    failed = {c["candidate"]: c for c in result.candidates}["openvino-int8"]
    assert not failed["exported"] and "nncf.quantize failed: " in failed["error"]
    before = tree_digest(tmp_path / "repo")
    with pytest.raises(ExportError, match="nncf.quantize failed: "):
        build(_cfg(classifier, tmp_path / "repo", engine="openvino", precision="int8"))
    code = main(_argv(classifier, tmp_path / "repo", "--engine", "openvino", "--precision", "int8", "--json"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "nncf.quantize failed" in err, err
    assert tree_digest(tmp_path / "repo") == before


def test_rollout_of_an_int8_rebuild_over_fp32_is_checked_on_the_int8_gate_images(classifier, tmp_path):
    """Same weights, INT8 over FP32: the check applies the INT8 version's recorded gate, on its gate images only."""
    from sft_engine.ops.rollout.runner import SWITCHED

    repo = tmp_path / "model_repository"
    build(_cfg(classifier, repo, engine="onnxruntime", precision="fp32", name="roll"))
    build(_cfg(classifier, repo, engine="onnxruntime", precision="int8", name="roll"))
    result = rollout_second_version(repo, "roll")
    assert result.outcome == SWITCHED, result.reason
    check = result.check
    assert check is not None and check.passed and check.mode == "parity"
    assert check.samples == 200  # the gate images, not the 40 the quantizer calibrated on
    assert check.max_abs_diff > 1e-3 and check.min_agreement == 0.99


def test_without_labelled_images_auto_does_not_plan_int8(classifier, tmp_path):
    result = build(_cfg(classifier, tmp_path / "repo", engine="onnxruntime", calibration_dir=None))
    assert [c["candidate"] for c in result.candidates] == ["onnxruntime"]


def test_a_cpu_without_int8_instructions_refuses_int8_unless_told_to_build_it_for_other_hosts(classifier, tmp_path, capsys, monkeypatch):
    from sft_engine.engines.cpu import target as cpu

    monkeypatch.setattr(cpu, "cpu_int8_isa", lambda cpuinfo=None: None)  # as on a CPU without AVX2, VNNI or AMX-INT8
    argv = [a for a in _argv(classifier, tmp_path / "repo", "--engine", "onnxruntime", "--precision", "int8") if a != "--allow-emulated-int8"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no INT8 dot-product instructions" in err and "--allow-emulated-int8" in err, err
    assert not (tmp_path / "repo").exists()
    auto = build(_cfg(classifier, tmp_path / "repo", engine="onnxruntime", allow_int8_without_isa=False))
    assert [c["candidate"] for c in auto.candidates] == ["onnxruntime"], "auto leaves INT8 out on such a CPU"
    assert main([*argv, "--allow-emulated-int8"]) == 0
    manifest = read_manifest(tmp_path / "repo" / "int8" / "2")
    assert manifest.engine_details["precision"] == "int8" and manifest.engine_details["int8"]["built_emulated"] is True
