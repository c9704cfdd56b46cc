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
    assert "the table does not know the TensorRT of 25.07, 26.04, 26.05, 26.06, 26.07" in line
    assert "--print-docker" in line and "--allow-unmatched-tensorrt" in line and "\n" not in line
    with pytest.raises(compatibility.ExportError, match="unknown"):
        compatibility.check_plan_servable({"tensorrt": None, "triton_container_tag": None}, allow_unmatched=False)


def test_the_tensorrt_of_pip_torch_tensorrt_2_12_and_2_13_is_refused_naming_its_nearest_rows():
    """No source confirms a container of 10.16.1 (Torch-TensorRT 2.12) or 11.0.0 (2.13): refused, naming the neighbours and
    marking the unverified ones."""
    for version, near in (("10.16.1", "26.03 ships TensorRT 10.16.0.72"), ("11.0.0", "26.03 ships TensorRT 10.16.0.72"),
                          ("10.12.0", "25.06 ships TensorRT 10.11.0.33 (unverified), 25.08 ships TensorRT 10.13.2.6 (unverified)")):
        line = compatibility.unmatched_tensorrt_error(version).one_line()
        assert f"is known to ship TensorRT {version}" in line and near in line and "no source confirms it" in line, line


def test_a_plan_matched_by_an_unverified_row_is_published_with_a_warning(caplog):
    compatibility.check_plan_servable({"tensorrt": "10.5.0.18", "triton_container_tag": "24.10"}, allow_unmatched=False)
    assert "unverified row" in caplog.text and "24.10" in caplog.text
    caplog.clear()
    compatibility.check_plan_servable({"tensorrt": "10.16.0.72", "triton_container_tag": "26.03"}, allow_unmatched=False)
    assert "unverified" not in caplog.text


def test_torchscript_newer_than_every_tabulated_libtorch_is_refused_at_build_time(monkeypatch, caplog):
    from types import SimpleNamespace

    from sft_engine.engines.gpu import torchscript

    monkeypatch.setattr(torchscript, "check_available", lambda settings: None)
    monkeypatch.setattr(torch, "__version__", "2.15.0")
    ctx = SimpleNamespace(settings=SimpleNamespace(allow_unmatched_tensorrt=False, build_gpus=()))
    with pytest.raises(compatibility.ExportError) as info:
        torchscript.export(ctx)
    line = info.value.one_line()
    assert "torch 2.15.0 saved this TorchScript, newer than the libtorch" in line and "26.07 with torch 2.14" in line
    monkeypatch.setattr(torchscript, "list_gpus", lambda: (_ for _ in ()).throw(RuntimeError("past the check")))
    ctx.settings.allow_unmatched_tensorrt = True
    with pytest.raises(RuntimeError, match="past the check"):
        torchscript.export(ctx)
    assert "publishing anyway" in caplog.text
    monkeypatch.setattr(torch, "__version__", "2.12.0")
    assert torchscript.torchscript_container(torch.__version__)["triton_container_tag"] == "26.06"


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
