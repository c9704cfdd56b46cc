"""OpenVINO IR converted from the ONNX export (the CPU target's ``openvino`` engine, FP32 and bf16)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sft_engine.engines.export.onnx import export_onnx

__all__ = ["export_openvino"]


def export_openvino(model: nn.Module, example: torch.Tensor, path: Path, onnx: Path | None = None) -> None:
    """OpenVINO IR (``model.xml`` + ``model.bin``) converted from the ONNX export, dynamic batch kept.

    A ``torch.export`` program (``models.exported``) is converted directly. ``onnx``: an
    ONNX export of the same model already made (the ONNX Runtime
    candidate's), converted instead of exporting again. Weights stay FP32 on disk
    (``compress_to_fp16=False``): the precision is chosen when the model is compiled,
    from ``engine.json``, so one IR serves FP32 and bf16.
    """
    import openvino as ov

    program = getattr(model, "exported_program", None)
    if program is not None:  # a torch.export program: OpenVINO's PyTorch frontend reads it as it is, symbolic batch kept
        ov.save_model(ov.convert_model(program), str(path), compress_to_fp16=False)
        return
    if onnx is not None and onnx.is_file():
        ov.save_model(ov.convert_model(str(onnx)), str(path), compress_to_fp16=False)
        return
    onnx_path = path.with_suffix(".onnx")
    export_onnx(model, example, onnx_path)
    try:
        ov.save_model(ov.convert_model(str(onnx_path)), str(path), compress_to_fp16=False)
    finally:
        onnx_path.unlink(missing_ok=True)
