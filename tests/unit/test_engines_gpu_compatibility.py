"""The compatibility manifest and the refusal of a plan no container can load (``engines/gpu/compatibility``).

What needs CUDA or TensorRT lives in ``tests/gpu`` (run by ``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import pytest
import torch

from sft_engine.engines.gpu import compatibility
from sft_engine.engines.gpu.compatibility import compatibility_manifest
from sft_engine.engines.gpu.devices import GpuInfo


def test_compatibility_manifest_for_tensorrt(monkeypatch):
    versions = {"tensorrt": "10.5.0.18", "torch_tensorrt": "2.5.0"}
    monkeypatch.setattr(compatibility, "_version", lambda module: versions.get(module))
    monkeypatch.setattr(compatibility, "driver_version", lambda: "550.54.15")
    gpus = [GpuInfo(0, "NVIDIA H100 80GB HBM3", "9.0", 79.1), GpuInfo(1, "NVIDIA A100-SXM4-80GB", "8.0", 79.2)]
    out = compatibility_manifest("tensorrt", gpus, {"9.0": "model_sm90.plan", "8.0": "model_sm80.plan"})
    assert out["tensorrt"] == "10.5.0.18" and out["torch_tensorrt"] == "2.5.0" and out["driver"] == "550.54.15"
    assert out["torch"] == torch.__version__ and "cuda" in out
    assert out["compute_capabilities"] == ["8.0", "9.0"] and out["gpus"][0]["name"].startswith("NVIDIA H100")
    assert out["triton_container_tag"] == "24.10" and out["triton_container"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert list(out["plans"]) == ["8.0", "9.0"]
    monkeypatch.setattr(compatibility, "_version", lambda module: {"tensorrt": "10.16.1"}.get(module))
    missing = compatibility_manifest("tensorrt", gpus[:1], {"9.0": "model.plan"})
    assert missing["triton_container_tag"] is None and "nvcr.io/nvidia/pytorch" in missing["triton_container_note"]


def test_a_plan_no_container_can_load_is_refused_in_one_line():
    with pytest.raises(compatibility.ExportError) as info:
        compatibility.check_plan_servable({"tensorrt": "11.0.0.114", "triton_container_tag": None}, allow_unmatched=False)
    line = info.value.one_line()
    assert "TensorRT 11.0.0.114" in line and "26.03 ships TensorRT 10.16.0.72" in line
    assert "--print-docker" in line and "--allow-unmatched-tensorrt" in line and "\n" not in line
    with pytest.raises(compatibility.ExportError, match="unknown"):
        compatibility.check_plan_servable({"tensorrt": None, "triton_container_tag": None}, allow_unmatched=False)


def test_allow_unmatched_tensorrt_publishes_with_a_warning(caplog):
    compatibility.check_plan_servable({"tensorrt": "10.12.0", "triton_container_tag": None}, allow_unmatched=True)
    assert "publishing anyway" in caplog.text and "25.06 ships TensorRT 10.11.0.33" in caplog.text
    compatibility.check_plan_servable({"tensorrt": "10.5.0.18", "triton_container_tag": "24.10"}, allow_unmatched=False)


def test_allow_unmatched_tensorrt_flag_reaches_the_build_settings():
    from sft_engine.cli import build_parser
    from sft_engine.commands.build import config_from_args

    args = build_parser().parse_args(["build", "--arch", "resnet18", "--num-classes", "3", "--allow-unmatched-tensorrt"])
    assert config_from_args(args).allow_unmatched_tensorrt is True
    args = build_parser().parse_args(["build", "--arch", "resnet18", "--num-classes", "3"])
    assert config_from_args(args).allow_unmatched_tensorrt is False
