"""The FP16 verdict on a plan's inspector output (``engines/tensorrt/verdict``).

What needs CUDA or TensorRT lives in ``tests/gpu`` (run by ``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import pytest

from sft_engine.engines.tensorrt.verdict import assess_fp16, layer_precision_counts, normalize_precision


def _layer(kind, fmt):
    return {"Name": kind, "LayerType": kind, "Inputs": [{"Name": "x", "Format/Datatype": fmt}], "Outputs": []}


IO_FP16 = {"images": {"mode": "INPUT", "dtype": "FP16"}, "output0": {"mode": "OUTPUT", "dtype": "FP32"}}


def test_precision_names_from_the_inspector():
    assert normalize_precision("Channel major FP16 format where channel % 8 == 0") == "FP16"
    assert normalize_precision("Row major linear FP32") == "FP32"
    assert normalize_precision("Float") == "FP32"
    assert normalize_precision("Half") == "FP16"
    assert normalize_precision("Thirty-two wide channel vectorized row major Int8 format.") == "INT8"
    assert normalize_precision("N/A due to dynamic shapes") == "unknown"
    counts = layer_precision_counts([_layer("CaskConvolution", "Half"), _layer("Reformat", "Float"), "names-only layer"])
    assert counts == {"compute": {"FP16": 1}, "all": {"FP16": 1, "FP32": 1}}


def test_fp16_engine_passes_on_layer_precisions():
    layers = [_layer("CaskConvolution", "Channel major FP16 format")] * 9 + [_layer("CaskGemmConvolution", "Row major linear FP32")]
    verdict = assess_fp16(IO_FP16, layers, plan_bytes=24_000_000, parameters=11_000_000)
    assert verdict.passed, verdict.reasons
    assert verdict.half_share == pytest.approx(0.9) and "inspector" in verdict.evidence


def test_silently_fp32_engine_fails_on_layer_precisions():
    layers = [_layer("CaskConvolution", "Row major linear FP32")] * 10
    verdict = assess_fp16(IO_FP16, layers, plan_bytes=24_000_000, parameters=11_000_000)
    assert not verdict.passed and "0%" in verdict.reasons[0]


def test_fp32_input_means_the_half_model_never_reached_tensorrt():
    io = {"images": {"mode": "INPUT", "dtype": "FP32"}, "output0": {"mode": "OUTPUT", "dtype": "FP32"}}
    verdict = assess_fp16(io, None, plan_bytes=23_000_000, parameters=11_000_000)
    assert not verdict.passed and "expected FP16" in verdict.reasons[0]


def test_without_layer_precisions_the_plan_size_decides():
    fp16 = assess_fp16(IO_FP16, ["conv1", "conv2"], plan_bytes=23_500_000, parameters=11_700_000)
    assert fp16.passed and "size" in fp16.evidence
    fp32 = assess_fp16(IO_FP16, None, plan_bytes=47_000_000, parameters=11_700_000)
    assert not fp32.passed and "look FP32" in fp32.reasons[0]
    tiny = assess_fp16(IO_FP16, None, plan_bytes=4_000_000, parameters=50_000)
    assert tiny.passed and "input dtype only" in tiny.evidence
