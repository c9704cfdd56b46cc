"""ONNX export with a dynamic batch axis: what the ONNX Runtime engines, OpenVINO's converter and ModelOpt read."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

__all__ = ["export_onnx", "INPUT_NAME", "OUTPUT_NAME", "OPSET"]

#: the tensor names of every ONNX export (and of the CPU engines' configs)
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: the opset written (ONNX Runtime ≥ 1.12 reads it)
OPSET = 17


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """ONNX with a dynamic batch axis (TorchScript-based exporter: fast and stable for CNNs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=OPSET,
            do_constant_folding=True, dynamo=False,
        )
