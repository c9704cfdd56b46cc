"""Which CPU candidates a build tries, and what each one's engine.json says."""

from __future__ import annotations

import pytest

from sft_engine.engines.base import EngineCandidate
from sft_engine.engines.cpu.target import engine_json, plan_candidates
from sft_engine.errors import TargetUnavailable
from sft_engine.engines.precision import gate_for
from sft_engine.verify import BF16_TOLERANCE, Tolerance


def _names(plan):
    return [c.name for c in plan]


def test_auto_tries_bf16_only_where_native():
    assert _names(plan_candidates("auto", "auto", native_bf16=True)) == ["onnxruntime", "torchscript", "openvino", "openvino-bf16"]
    assert _names(plan_candidates("auto", "auto", native_bf16=False)) == ["onnxruntime", "torchscript", "openvino"]


def test_fp32_never_tries_bf16():
    assert _names(plan_candidates("auto", "fp32", native_bf16=True)) == ["onnxruntime", "torchscript", "openvino"]
    assert _names(plan_candidates("openvino", "fp32", native_bf16=True)) == ["openvino"]


def test_forced_engine_and_precision():
    assert _names(plan_candidates("openvino", "bf16", native_bf16=True)) == ["openvino-bf16"]
    assert _names(plan_candidates("auto", "bf16", native_bf16=True)) == ["openvino-bf16"]
    assert _names(plan_candidates("onnxruntime", "auto", native_bf16=True)) == ["onnxruntime"]
    assert _names(plan_candidates("openvino", "auto", native_bf16=True)) == ["openvino", "openvino-bf16"]


def test_forced_bf16_without_native_support_is_refused():
    with pytest.raises(TargetUnavailable, match="no native bf16") as info:
        plan_candidates("openvino", "bf16", native_bf16=False)
    assert "--precision fp32" in info.value.hint


def test_engine_json_settings():
    assert engine_json(EngineCandidate("openvino", "bf16"), 0) == {"engine": "openvino", "file": "model.xml", "intra_op_threads": 0,
                                                          "inter_op_threads": 1, "precision": "bf16"}
    assert engine_json(EngineCandidate("openvino"), 2)["precision"] == "f32"  # explicit: OpenVINO would pick bf16 by itself
    assert engine_json(EngineCandidate("torchscript"), 0)["optimize_for_inference"] is True
    assert "precision" not in engine_json(EngineCandidate("onnxruntime"), 0)


def test_bf16_gate_keeps_what_the_user_set():
    given = Tolerance(atol=1e-6, rtol=0.0, min_top1_agreement=0.9, max_accuracy_drop=1.0)
    assert gate_for("bf16", given, {}) == BF16_TOLERANCE
    mixed = gate_for("bf16", given, {"parity_atol": "flags", "accuracy_max_drop": "flags"})
    assert (mixed.atol, mixed.rtol, mixed.max_accuracy_drop) == (1e-6, BF16_TOLERANCE.rtol, 1.0)
    assert BF16_TOLERANCE.min_top1_agreement >= 0.995


def test_auto_tries_int8_only_where_the_cpu_has_int8_instructions():
    assert _names(plan_candidates("auto", "auto", native_bf16=True, int8_isa="AMX-INT8")) == [
        "onnxruntime", "torchscript", "openvino", "openvino-bf16", "onnxruntime-int8", "openvino-int8"]
    assert "int8" not in " ".join(_names(plan_candidates("auto", "auto", native_bf16=True, int8_isa=None)))
    assert _names(plan_candidates("auto", "int8", native_bf16=True, int8_isa="AVX512-VNNI")) == ["onnxruntime-int8", "openvino-int8"]
    assert _names(plan_candidates("onnxruntime", "int8", native_bf16=False, int8_isa="AVX-VNNI")) == ["onnxruntime-int8"]
    assert _names(plan_candidates("torchscript", "auto", native_bf16=True, int8_isa="AMX-INT8")) == ["torchscript"]
    assert _names(plan_candidates("auto", "fp32", native_bf16=True, int8_isa="AMX-INT8")) == ["onnxruntime", "torchscript", "openvino"]


def test_forced_int8_without_the_instructions_is_refused():
    with pytest.raises(TargetUnavailable, match="no INT8 dot-product instructions .*AMX-INT8, AVX512-VNNI, AVX-VNNI or AVX2"):
        plan_candidates("auto", "int8", native_bf16=True, int8_isa=None)


def test_int8_engine_json_marks_the_quantized_engine():
    ov = engine_json(EngineCandidate("openvino", "int8"), 0)
    assert ov["quantized"] == "int8" and ov["precision"] == "f32" and ov["file"] == "model.xml"
    assert engine_json(EngineCandidate("onnxruntime", "int8"), 0)["quantized"] == "int8"
    assert "quantized" not in engine_json(EngineCandidate("openvino", "bf16"), 0)


def test_auto_plans_int8_only_with_labelled_images():
    assert "onnxruntime-int8" not in _names(plan_candidates("auto", "auto", native_bf16=False, int8_isa="AMX-INT8", labelled=False))
    assert _names(plan_candidates("onnxruntime", "int8", native_bf16=False, int8_isa="AMX-INT8", labelled=False)) == ["onnxruntime-int8"]
