"""INT8 and FP8 TensorRT plans (ModelOpt post-training quantization) on a real GPU, through ``build()``.

Skipped without CUDA, the TensorRT Python API or nvidia-modelopt's ONNX quantizer (probed by importing
``modelopt.onnx.quantization``; the skip names each missing module and its pip name); run
with ``scripts/gpu_check.sh``. Each build goes through the real INT8 gate on images the
quantizer never saw (top-1 agreement ≥ 99 %, accuracy drop ≤ 0.5 points), and the
engine inspector must show the convolutions really running in INT8 / FP8.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sft_engine.build import build
from sft_engine.build_config import BuildConfig
from sft_engine.engines.tensorrt.modelopt import MIN_QUANTIZED_SHARE, fp8_unavailable_reason, quantization_stack_problem
from sft_engine.errors import ParityError
from sft_engine.repository.config import read_config
from sft_engine.repository.manifest import read_manifest
from tests.gpu.conftest import INPUT_SIZE

#: why INT8 / FP8 cannot build here, from the real imports (``modelopt.onnx.quantization`` included: NGC images may
#: ship ModelOpt without its [onnx] pieces), or None; the skip reason names what is missing and how to install it
STACK_PROBLEM = quantization_stack_problem(torch.cuda.is_available())

pytestmark = [
    pytest.mark.gpu, pytest.mark.tensorrt,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(STACK_PROBLEM is not None, reason=f"INT8/FP8 need TensorRT and ModelOpt's ONNX quantizer: {STACK_PROBLEM}"),
]


def _gpu_ccs() -> list[str]:
    return [".".join(map(str, torch.cuda.get_device_capability(i))) for i in range(torch.cuda.device_count())]


def _build(classifier, repo: Path, precision: str, **kw):
    cfg = BuildConfig(arch="resnet18", num_classes=len(classifier.labels), labels=list(classifier.labels),
                      weights=classifier.weights, input_size=INPUT_SIZE, max_batch_size=16, repository=repo,
                      name=f"trt_{precision}", target="tensorrt", precision=precision, calibration_dir=classifier.calibration,
                      allow_unmatched_tensorrt=True, **kw)
    return build(cfg)


def test_tensorrt_int8_build(quant_classifier, tmp_path):
    _check_quantized_build(quant_classifier, tmp_path, "int8")


def test_tensorrt_fp8_build(quant_classifier, tmp_path):
    reason = fp8_unavailable_reason(_gpu_ccs())
    if reason:
        pytest.skip(reason)
    _check_quantized_build(quant_classifier, tmp_path, "fp8")


def _check_quantized_build(quant_classifier, tmp_path: Path, precision: str) -> None:
    """The plan passed its gate on held-out images, really runs quantized, and its record says how it was made."""
    result = _build(quant_classifier, tmp_path / "repo", precision)
    version = result.published.path
    manifest = read_manifest(version).to_dict()
    parity = manifest["parity"]
    assert parity["passed"] and parity["top1_agreement"] >= 0.99, parity
    assert (parity["eager_accuracy"] - parity["engine_accuracy"]) * 100 <= 0.5
    details = manifest["engine_details"]
    record = details[precision]
    assert record["quantizer"] == "nvidia-modelopt" and record["quantize_mode"] == precision
    assert record["calibration_images"] == 70 and record["gate_images"] == 200
    assert parity["samples"] == record["gate_images"], "judged on the gate images only"
    for check in details["quantized_check"].values():
        assert check["passed"] and check["quantized_share"] >= MIN_QUANTIZED_SHARE
    cfg = read_config(version.parent / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.optimization.cuda.graphs
    assert manifest["engine"] == f"tensorrt-{precision}"
    print(json.dumps({"quantized_check": details["quantized_check"], "tensorrt_build": details["tensorrt_build"],
                      "parity": {k: parity[k] for k in ("top1_agreement", "max_abs_diff", "engine_accuracy")}}, indent=1), file=sys.stderr)


def test_a_tiny_calibration_set_under_a_strict_gate_publishes_nothing(quant_classifier, tmp_path):
    repo = tmp_path / "repo"
    with pytest.raises(ParityError):
        _build(quant_classifier, repo, "int8", int8_calibration_images=1, parity_min_top1_agreement=1.0, accuracy_max_drop=0.0,
               parity_atol=1e-6, parity_rtol=0.0)
    assert not list(repo.glob("*/*/*.plan")), "a plan that failed its gate must not be published"


def test_the_plan_answers_like_the_in_process_check(quant_classifier, tmp_path):
    """The published bytes, deserialized again, give the gate's answers (what Triton's TensorRT backend loads)."""
    from sft_engine.engines.tensorrt.runtime import PlanRunner
    from sft_engine.preprocess import Preprocessing

    result = _build(quant_classifier, tmp_path / "repo", "int8")
    plan = next(p for p in result.published.path.iterdir() if p.suffix == ".plan")
    runner = PlanRunner(plan.read_bytes(), 0)
    files = sorted(quant_classifier.calibration.rglob("*.png"))[:16]
    x = Preprocessing(input_size=INPUT_SIZE).batch(files)
    labels = np.array([quant_classifier.labels.index(f.parent.name) for f in files])
    assert (runner.run(x).argmax(1) == labels).mean() >= 0.9
