"""The ModelOpt → TensorRT INT8/FP8 pieces without a GPU: ModelOpt arguments per release, TensorRT
build flags per version, the FP8 hardware rule, the inspector verdict, and their refusals."""

from __future__ import annotations

import numpy as np
import pytest

from sft_engine.engines.tensorrt_quant import (
    assess_quantized, fp8_unavailable_reason, modelopt_quantize_kwargs, tensorrt_build_flags,
)
from sft_engine.errors import TargetUnavailable

CAL = np.zeros((3, 3, 8, 8), np.float32)

#: parameter names of modelopt.onnx.quantization.quantize in an early 0.1x release and in a current one
OLD_SIGNATURE = {"onnx_path", "calibration_data", "calibration_method", "op_types_to_quantize", "op_types_to_exclude",
                 "nodes_to_quantize", "nodes_to_exclude", "use_external_data_format", "keep_intermediate_files",
                 "output_path", "verbose", "quantize_mode"}
NEW_SIGNATURE = OLD_SIGNATURE - {"verbose"} | {"calibration_cache_path", "calibration_data_reader", "calibration_shapes",
                                               "calibration_eps", "high_precision_dtype", "dq_only", "log_level", "simplify"}


def test_current_modelopt_gets_real_calibration_and_explicit_settings():
    kw = modelopt_quantize_kwargs("int8", NEW_SIGNATURE, CAL, "/tmp/q.onnx")
    assert kw["quantize_mode"] == "int8" and kw["calibration_method"] == "entropy"
    assert set(kw["calibration_data"]) == {"input"} and kw["calibration_data"]["input"].shape == CAL.shape
    assert kw["calibration_eps"] == ["cpu"] and kw["high_precision_dtype"] == "fp16"
    assert kw["dq_only"] is False and kw["output_path"] == "/tmp/q.onnx"
    fp8 = modelopt_quantize_kwargs("fp8", NEW_SIGNATURE, CAL, "/tmp/q.onnx")
    assert fp8["quantize_mode"] == "fp8" and fp8["calibration_method"] == "max"


def test_older_modelopt_gets_only_what_it_accepts():
    kw = modelopt_quantize_kwargs("int8", OLD_SIGNATURE, CAL, "/tmp/q.onnx")
    assert set(kw) == {"quantize_mode", "calibration_data", "output_path", "calibration_method"}
    assert set(kw) <= OLD_SIGNATURE


def test_a_modelopt_that_would_calibrate_on_random_data_is_refused():
    with pytest.raises(TargetUnavailable, match="no calibration_data argument"):
        modelopt_quantize_kwargs("int8", OLD_SIGNATURE - {"calibration_data"}, CAL, "/tmp/q.onnx")
    with pytest.raises(ValueError):
        modelopt_quantize_kwargs("int4", NEW_SIGNATURE, CAL, "/tmp/q.onnx")


@pytest.mark.parametrize("version", ["10.0.1", "10.16.1", "11.4.0"])
def test_tensorrt_10_and_later_build_strongly_typed(version):
    flags = tensorrt_build_flags(version, "int8")
    assert flags.network_flags == ("STRONGLY_TYPED",) and flags.builder_flags == ()  # TensorRT 11 has no FP16/INT8 flags
    assert tensorrt_build_flags(version, "fp8").network_flags == ("STRONGLY_TYPED",)
    assert flags.describe()["version"] == ".".join(version.split(".")[:2])


@pytest.mark.parametrize("version", ["8.6.1", "9.3.0"])
def test_tensorrt_8_6_and_9_build_weakly_typed_with_int8_flags(version):
    flags = tensorrt_build_flags(version, "int8")
    assert flags.network_flags == ("EXPLICIT_BATCH",) and flags.builder_flags == ("INT8", "FP16")


def test_tensorrt_refusals():
    with pytest.raises(TargetUnavailable, match="cannot build explicitly quantized"):
        tensorrt_build_flags("8.5.3", "int8")
    with pytest.raises(TargetUnavailable, match="no FP8 convolutions"):
        tensorrt_build_flags("9.3.0", "fp8")


def test_fp8_needs_ada_or_hopper():
    assert fp8_unavailable_reason(["9.0"]) is None and fp8_unavailable_reason(["8.9", "9.0"]) is None
    assert "8.0" in fp8_unavailable_reason(["8.0", "9.0"])
    assert "compute capability 8.9" in fp8_unavailable_reason(["7.5"])


def _layer(kind: str, fmt: str) -> dict:
    return {"LayerType": kind, "Inputs": [{"Format/Datatype": fmt}]}


def test_inspector_verdict_requires_quantized_convolutions():
    int8 = [_layer("CaskConvolution", "Channel major INT8 format")] * 9 + [_layer("CaskConvolution", "Row major linear FP16 format")]
    verdict = assess_quantized(int8, "int8")
    assert verdict.passed and verdict.quantized_share == 0.9
    fp16 = [_layer("CaskConvolution", "Row major linear FP16 format")] * 10
    verdict = assess_quantized(fp16, "int8")
    assert not verdict.passed and "only 0% of the plan's compute layers run in INT8" in verdict.reasons[0]
    assert assess_quantized([_layer("CaskConvolution", "FP8 format")] * 3, "fp8").passed
    assert not assess_quantized(int8, "fp8").passed
    assert not assess_quantized(None, "int8").passed  # unverified is not published
