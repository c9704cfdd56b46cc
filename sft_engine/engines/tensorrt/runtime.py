"""Run and inspect a serialized TensorRT plan in-process, with the TensorRT Python API.

The parity gate must run the very bytes Triton will load, not the Torch-TensorRT
module they came from, so the plan is deserialized here and executed with the
name-based I/O API (``set_input_shape`` / ``set_tensor_address`` /
``execute_async_v3``, TensorRT ≥ 8.5) on torch-allocated CUDA buffers.

The same engine answers the FP16 question: binding dtypes, the optimization profile,
and the inspector's per-layer formats. With dynamic shapes the inspector reports
``N/A due to dynamic shapes`` unless it is given an execution context whose input
shapes are set, so one is attached at the opt batch.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import torch

from sft_engine.errors import ExportError

__all__ = ["PlanRunner", "TRT_DTYPE_NAMES"]

LOGGER = logging.getLogger(__name__)

#: TensorRT DataType name → Triton-style dtype name
TRT_DTYPE_NAMES = {"FLOAT": "FP32", "HALF": "FP16", "BF16": "BF16", "INT8": "INT8", "INT32": "INT32", "INT64": "INT64", "BOOL": "BOOL", "UINT8": "UINT8", "FP8": "FP8"}
_TORCH_DTYPES = {"FP32": torch.float32, "FP16": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8, "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8}


class PlanRunner:
    """A deserialized plan on one GPU, with one input and one output."""

    def __init__(self, plan: bytes, device_index: int) -> None:
        import tensorrt as trt

        self._trt = trt
        self.device = torch.device("cuda", device_index)
        self._logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(plan)
            if self.engine is None:
                raise ExportError("TensorRT cannot deserialize the plan it just built", hint="see the TensorRT log above; report this as a bug")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise ExportError(f"the plan has inputs {self.inputs} and outputs {self.outputs}, expected one of each", hint="report this as a bug")
        self.input_name, self.output_name = self.inputs[0], self.outputs[0]
        self.dtypes = {n: TRT_DTYPE_NAMES.get(self.engine.get_tensor_dtype(n).name, self.engine.get_tensor_dtype(n).name) for n in names}

    # -- execution -------------------------------------------------------------------
    def run_device(self, x: torch.Tensor) -> torch.Tensor:
        """Run on a CUDA tensor already of the input dtype; returns the output tensor (on device)."""
        ctx = self.context
        ctx.set_input_shape(self.input_name, tuple(x.shape))
        out = torch.empty(tuple(ctx.get_tensor_shape(self.output_name)), dtype=_TORCH_DTYPES[self.dtypes[self.output_name]], device=self.device)
        ctx.set_tensor_address(self.input_name, x.data_ptr())
        ctx.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise ExportError("TensorRT failed to execute the plan", hint="see the TensorRT log above")
        return out

    def run(self, batch: np.ndarray) -> np.ndarray:
        """NCHW float32 numpy → float32 numpy logits (the parity gate's runner)."""
        with torch.cuda.device(self.device), torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, dtype=_TORCH_DTYPES[self.dtypes[self.input_name]]).contiguous()
            out = self.run_device(x)
            torch.cuda.current_stream(self.device).synchronize()
            return out.float().cpu().numpy()

    # -- inspection ------------------------------------------------------------------
    def io(self) -> dict[str, dict[str, Any]]:
        """Name → mode, dtype, shape and (inputs) the optimization profile min/opt/max."""
        out: dict[str, dict[str, Any]] = {}
        for name in self.inputs + self.outputs:
            entry: dict[str, Any] = {
                "mode": "INPUT" if name in self.inputs else "OUTPUT",
                "dtype": self.dtypes[name],
                "shape": list(self.engine.get_tensor_shape(name)),
            }
            if name in self.inputs:
                entry["profile"] = [list(s) for s in self.engine.get_tensor_profile_shape(name, 0)]
            out[name] = entry
        return out

    def layers(self, batch: int) -> list[Any] | None:
        """The inspector's layer list with formats resolved at ``batch``, or None if unavailable."""
        trt = self._trt
        try:
            shape = list(self.engine.get_tensor_profile_shape(self.input_name, 0)[1])
            shape[0] = batch
            with torch.cuda.device(self.device):
                self.context.set_input_shape(self.input_name, tuple(shape))
                inspector = self.engine.create_engine_inspector()
                inspector.execution_context = self.context
                info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        except Exception as exc:  # the inspector is diagnostics: its absence must not fail the build
            LOGGER.warning("TensorRT engine inspector unavailable: %s", exc)
            return None
        layers = info.get("Layers") if isinstance(info, dict) else None
        return layers if isinstance(layers, list) else None
