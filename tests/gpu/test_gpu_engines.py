"""FP16 engines on a real GPU: the torchscript-gpu and tensorrt targets through ``build()``.

Skipped without CUDA (TensorRT tests also without torch_tensorrt); run them with
``scripts/gpu_check.sh``. Each build goes through the real FP16 gates: top-1
agreement ≥ 99.5% and accuracy drop ≤ 0.3 points on labelled images, max |logit
difference| recorded.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tritonclient.grpc import model_config_pb2 as mc

from sft_engine.build import build
from sft_engine.build_config import BuildConfig
from sft_engine.repository.config import read_config
from sft_engine.repository.manifest import read_manifest
from tests.gpu.conftest import INPUT_SIZE

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

HAS_TORCH_TENSORRT = importlib.util.find_spec("torch_tensorrt") is not None


def needs_trt(test):
    """TensorRT tests: marked ``tensorrt`` and skipped where torch_tensorrt is missing."""
    return pytest.mark.tensorrt(pytest.mark.skipif(not HAS_TORCH_TENSORRT, reason="needs torch_tensorrt")(test))


def _build(classifier, repo: Path, target: str, **kw):
    cfg = BuildConfig(arch="resnet18", num_classes=len(classifier.labels), labels=list(classifier.labels),
                      weights=classifier.weights, input_size=INPUT_SIZE, max_batch_size=16, repository=repo,
                      name=target.replace("-", "_"), target=target, calibration_dir=classifier.calibration, **kw)
    return build(cfg)


def _assert_fp16_gates(manifest: dict) -> None:
    parity = manifest["parity"]
    assert parity["passed"], parity["reasons"]
    assert parity["top1_agreement"] >= 0.995
    assert parity["eager_accuracy"] is not None, "labelled images must drive the accuracy gate"
    assert (parity["eager_accuracy"] - parity["engine_accuracy"]) * 100 <= 0.3
    assert 0 < parity["max_abs_diff"] <= parity["allowed_abs_diff"], "FP16 differs from FP32, a little"
    tolerance = manifest["engine_details"]["tolerance"]
    assert tolerance["min_top1_agreement"] == 0.995 and tolerance["max_accuracy_drop"] == 0.3


def test_torchscript_gpu_build(classifier, tmp_path):
    result = _build(classifier, tmp_path / "repo", "torchscript-gpu")
    version = result.published.path
    manifest = read_manifest(version).to_dict()
    _assert_fp16_gates(manifest)
    cfg = read_config(version.parent / "config.pbtxt")
    assert cfg.platform == "pytorch_libtorch" and cfg.input[0].name == "INPUT__0"
    assert (cfg.input[0].data_type, cfg.output[0].data_type) == (mc.TYPE_FP16, mc.TYPE_FP32)
    assert set(manifest["engine_details"]["fp16_check"]["weight_bytes_by_dtype"]) == {"float16"}
    compat = manifest["compatibility"]
    major, minor = torch.cuda.get_device_capability(0)
    assert compat["compute_capabilities"] == [f"{major}.{minor}"] and compat["cuda"] == torch.version.cuda

    module = torch.jit.load(str(version / "model.pt"), map_location="cuda:0")
    x = torch.randn(3, 3, INPUT_SIZE, INPUT_SIZE, device="cuda:0", dtype=torch.float16)
    with torch.inference_mode():
        out = module(x)
    assert out.dtype == torch.float32 and out.shape == (3, len(classifier.labels))


def test_torch_export_of_the_half_model(classifier):
    """What the tensorrt target hands TensorRT, checked on CUDA without TensorRT: dynamic batch 1..max,
    the config's input name, one FP32 output, ep.module() within FP16 tolerance at batch 1 and max."""
    from sft_engine.engines.tensorrt.export_check import check_half_export
    from sft_engine.engines.tensorrt.target import INPUT_NAME
    from sft_engine.models import build_model, load_weights

    model = load_weights(build_model("resnet18", len(classifier.labels)), classifier.weights).eval()
    check = check_half_export(model, (3, INPUT_SIZE, INPUT_SIZE), 16, torch.device("cuda", 0), expected_input=INPUT_NAME)
    assert check.passed, check.reasons
    assert check.batch_range == [1, 16] and check.device == "cuda:0"
    print(json.dumps(check.to_dict()), file=sys.stderr)


def test_fp16_tolerance_yields_to_user_flags(classifier, tmp_path):
    cfg = BuildConfig(arch="resnet18", num_classes=len(classifier.labels), weights=classifier.weights, input_size=INPUT_SIZE,
                      max_batch_size=8, repository=tmp_path / "repo", target="torchscript-gpu", parity_samples=4)
    cfg = cfg.merged({"parity_min_top1_agreement": 0.5}, "flags")
    result = build(cfg)
    tolerance = read_manifest(result.published.path).to_dict()["engine_details"]["tolerance"]
    assert tolerance["min_top1_agreement"] == 0.5 and tolerance["atol"] == 0.01


def _container_matches() -> bool:
    import tensorrt

    from sft_engine.triton.releases import triton_tag_for_tensorrt

    return triton_tag_for_tensorrt(tensorrt.__version__) is not None


@needs_trt
def test_tensorrt_build(classifier, tmp_path):
    matched = _container_matches()
    if not matched:  # e.g. a pip torch-tensorrt whose TensorRT no NGC container ships: refused, nothing published
        from sft_engine.errors import ExportError

        with pytest.raises(ExportError, match="no NGC Triton container"):
            _build(classifier, tmp_path / "repo", "tensorrt")
        assert not list((tmp_path / "repo").glob("*/*/model*.plan")), "a refused plan must not be published"
    result = _build(classifier, tmp_path / "repo", "tensorrt", allow_unmatched_tensorrt=not matched)
    version = result.published.path
    manifest = read_manifest(version).to_dict()
    _assert_fp16_gates(manifest)
    cfg = read_config(version.parent / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.optimization.cuda.graphs
    assert cfg.input[0].data_type == mc.TYPE_FP16 and cfg.output[0].data_type == mc.TYPE_FP32
    details = manifest["engine_details"]
    for check in details["fp16_check"].values():
        assert check["passed"] and check["input_dtypes"] == {cfg.input[0].name: "FP16"}
    assert details["batch_profile"] == [1, 16, 16]
    assert details["io"][cfg.input[0].name]["profile"][0][0] == 1 and details["io"][cfg.input[0].name]["profile"][2][0] == 16
    compat = manifest["compatibility"]
    assert compat["tensorrt"] and compat["torch_tensorrt"] and compat["gpus"]
    plans = [p for p in version.iterdir() if p.suffix == ".plan"]
    assert plans and sorted(p.name for p in plans) == sorted(compat["plans"].values())
    print(json.dumps({"fp16_check": details["fp16_check"], "container": compat.get("triton_container")}, indent=1), file=sys.stderr)


@needs_trt
def test_tensorrt_fp32_engine_is_caught(classifier):
    """Compile the FP32 model with no precision arguments: the FP16 check must refuse it."""
    import torch_tensorrt

    from sft_engine.engines.tensorrt.verdict import assess_fp16
    from sft_engine.engines.gpu.half import HalfPrecisionClassifier
    from sft_engine.engines.tensorrt.runtime import PlanRunner
    from sft_engine.models import build_model, load_weights

    model = load_weights(build_model("resnet18", len(classifier.labels)), classifier.weights).eval()
    fp32 = HalfPrecisionClassifier(model).cuda().eval()  # not halved: FP32 weights, FP32 input
    spec = torch_tensorrt.Input(min_shape=(1, 3, INPUT_SIZE, INPUT_SIZE), opt_shape=(4, 3, INPUT_SIZE, INPUT_SIZE),
                                max_shape=(4, 3, INPUT_SIZE, INPUT_SIZE), dtype=torch.float32)
    with torch.no_grad():
        exported = torch_tensorrt.dynamo.trace(fp32, inputs=(spec,))
        plan = torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine(exported, inputs=(spec,), min_block_size=1)
    runner = PlanRunner(bytes(plan), 0)
    verdict = assess_fp16(runner.io(), runner.layers(4), len(plan), sum(p.numel() for p in model.parameters()))
    assert not verdict.passed and verdict.reasons
    logits = runner.run(np.zeros((2, 3, INPUT_SIZE, INPUT_SIZE), np.float32))
    assert logits.shape == (2, len(classifier.labels))


@pytest.mark.skipif(torch.cuda.device_count() < 2 or len({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}) < 2,
                    reason="needs GPUs of two architectures")
@needs_trt
def test_tensorrt_several_architectures(classifier, tmp_path):
    result = _build(classifier, tmp_path / "repo", "tensorrt", allow_unmatched_tensorrt=True)
    cfg = read_config(result.published.path.parent / "config.pbtxt")
    assert len(cfg.cc_model_filenames) >= 2
    for filename in cfg.cc_model_filenames.values():
        assert (result.published.path / filename).is_file()


def test_gpu_benchmark_runs(capsys, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        import bench_gpu
    finally:
        sys.path.pop(0)
    assert bench_gpu.main(["--arch", "resnet18", "--input-size", "64", "--num-classes", "10", "--batches", "1,4",
                           "--seconds", "0.2", "--engine", "torchscript", "--json", str(tmp_path / "b.json")]) == 0
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["batch"] for r in rows] == [1, 4]
    assert all(r["fp16_img_s"] > 0 and r["eager_fp32_img_s"] > 0 and r["eager_tf32_img_s"] > 0 for r in rows)
    assert "| batch |" in capsys.readouterr().out
