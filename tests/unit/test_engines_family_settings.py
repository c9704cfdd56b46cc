"""What the engines do differently for transformer families, checked without a GPU.

INT8: the quantizers' transformer settings are chosen from the graph (LayerNorm,
softmax, GELU present) and leave attention's activation × activation matmuls in float.
GPU: the Torch-TensorRT ``Input`` of a dynamic batch, the refusal of a plan whose batch
was specialised, and the traced TorchScript checked at batches it was not traced with.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import pytest
import torch

from sft_engine.engines.cpu.quantize import ORT_TRANSFORMER_OP_TYPES, onnx_transformer_settings, transformer_ops
from sft_engine.engines.export.onnx import export_onnx
from sft_engine.engines.gpu.torchscript import batch_mismatches, traced_batches
from sft_engine.engines.tensorrt.target import batch_problems, input_arguments

timm = pytest.importorskip("timm")


def _onnx(model: torch.nn.Module, size: int, path: Path) -> onnx.ModelProto:
    export_onnx(model.eval(), torch.randn(2, 3, size, size), path)
    return onnx.load(str(path))


def test_a_vit_graph_gets_the_transformer_settings_and_a_cnn_keeps_its_own(tmp_path: Path) -> None:
    vit = _onnx(timm.create_model("test_vit", num_classes=3), 160, tmp_path / "vit.onnx")
    settings = onnx_transformer_settings(vit)
    assert settings is not None
    assert settings["op_types_to_quantize"] == list(ORT_TRANSFORMER_OP_TYPES)
    weights = {i.name for i in vit.graph.initializer}
    matmuls = {n.name: n for n in vit.graph.node if n.op_type == "MatMul"}
    excluded = settings["nodes_to_exclude"]
    assert excluded and all(name in matmuls for name in excluded)
    assert all(not any(i in weights for i in matmuls[name].input) for name in excluded)  # activation x activation only
    assert len(excluded) < len(matmuls)  # the projections (weights) are still quantized
    record = settings["record"]
    assert record["graph_has"] == ["GELU", "LayerNorm", "Softmax"] and "Softmax" in record["left_in_float"]
    cnn = _onnx(timm.create_model("test_efficientnet", num_classes=3), 64, tmp_path / "cnn.onnx")
    assert onnx_transformer_settings(cnn) is None


def test_openvino_op_names_tell_the_family_too() -> None:
    assert transformer_ops(["Convolution", "MVN", "Gelu", "SoftMax"]) == ["GELU", "LayerNorm", "Softmax"]
    assert transformer_ops(["Convolution", "Relu", "Add"]) == []


def test_tensorrt_inputs_of_a_dynamic_batch() -> None:
    assert input_arguments((3, 224, 224), 32, "fp16") == {
        "min_shape": (1, 3, 224, 224), "opt_shape": (32, 3, 224, 224), "max_shape": (32, 3, 224, 224), "dtype": "fp16"}
    assert input_arguments((3, 224, 224), 1, "fp16") == {"shape": (1, 3, 224, 224), "dtype": "fp16"}  # opt == min only when static


def test_a_plan_whose_batch_was_specialised_is_refused() -> None:
    dynamic = {"images": {"shape": [-1, 3, 224, 224], "profile": [[1, 3, 224, 224], [32, 3, 224, 224], [32, 3, 224, 224]]}}
    assert batch_problems(dynamic, "images", 32) == []
    fixed = {"images": {"shape": [2, 3, 224, 224]}}
    assert "fixed batch dimension" in batch_problems(fixed, "images", 32)[0]
    assert batch_problems(fixed, "images", 1) == []
    narrow = {"images": {"shape": [-1, 3, 224, 224], "profile": [[1, 3, 224, 224], [8, 3, 224, 224], [8, 3, 224, 224]]}}
    assert batch_problems(narrow, "images", 32) == ["the plan's batch profile is 1..8, not 1..32"]


class _Windows(torch.nn.Module):
    """Swin's ``window_reverse`` pattern: the batch computed as a Python int from a shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        windows = x.reshape(-1, 3, 4, 4)  # (B * 4 windows, C, 4, 4) of an 8x8 image
        batch = int(windows.shape[0] / 4)
        return windows.reshape(batch, -1).sum(1, keepdim=True)


class _Dynamic(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1).sum(1, keepdim=True)


@pytest.mark.parametrize("module,baked", [(_Windows(), True), (_Dynamic(), False)])
def test_a_traced_module_is_run_at_batches_it_was_not_traced_with(module: torch.nn.Module, baked: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, torch.randn(2, 3, 8, 8))
    batches = traced_batches(2, 16)
    assert batches == (1, 16)
    problems = batch_mismatches(traced, module, batches, lambda n: torch.randn(n, 3, 8, 8))
    assert bool(problems) is baked, problems
