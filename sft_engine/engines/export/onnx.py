"""ONNX export with a dynamic batch axis: what the ONNX Runtime engines, OpenVINO's converter and ModelOpt read.

Two exporters, one tried after the other. The TorchScript-based one is fast and stable
for CNNs and most transformers; where it has no symbolic for an op (timm's antialiased
bicubic position-embedding resampling, ops of newer families) or cannot take the model
at all (a ``torch.export`` program), ``torch.onnx.export(..., dynamo=True)`` exports the
``torch.export`` graph, with the batch as a symbolic dimension.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["export_onnx", "INPUT_NAME", "OUTPUT_NAME", "OPSET", "DYNAMO_OPSET"]

LOGGER = logging.getLogger(__name__)

#: the tensor names of every ONNX export (and of the CPU engines' configs)
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: the opset written (ONNX Runtime ≥ 1.12 reads it)
OPSET = 17
#: the dynamo exporter's opset (its translation table starts at 18)
DYNAMO_OPSET = 18


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """ONNX with a dynamic batch axis: the TorchScript-based exporter, else the dynamo one."""
    program = getattr(model, "exported_program", None)
    # a torch.export program goes to the exporter made for it first; any other module to the TorchScript-based one
    attempts = [("dynamo", lambda: _dynamo_export(program, example, path)), ("torchscript", lambda: _torchscript_export(model, example, path))]
    if program is None:
        attempts = [attempts[1], ("dynamo", lambda: _dynamo_export(model, example, path))]
    for i, (name, attempt) in enumerate(attempts):
        try:
            attempt()
            return
        except Exception as exc:  # no symbolic or decomposition for an op of this family: the other exporter may have one
            if i == len(attempts) - 1:
                raise
            LOGGER.info("the %s ONNX exporter failed (%s: %s); trying the other", name, type(exc).__name__, _first_line(exc))
            path.unlink(missing_ok=True)


def _first_line(exc: Exception) -> str:
    """The message's first line without terminal colours (torch.onnx colours its own)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:200]


def _torchscript_export(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=OPSET,
            do_constant_folding=True, dynamo=False,
        )


def _dynamo_export(model: Any, example: torch.Tensor, path: Path) -> None:
    """``torch.onnx.export(dynamo=True)`` of a module (batch a ``Dim``) or of an ExportedProgram (its own dims), weights inlined."""
    kwargs: dict[str, Any] = {}
    if isinstance(model, nn.Module):
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # it prints its progress on stdout (build --json)
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(model, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                         opset_version=DYNAMO_OPSET, dynamo=True, optimize=True, **kwargs)
        onnx_program.save(str(path), external_data=False)
