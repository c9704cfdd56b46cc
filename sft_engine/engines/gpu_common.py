"""What the FP16 GPU targets share: the half-precision serving module and its interface.

The served network takes FP16 images and returns FP32 logits:

* FP16 in: the weights are FP16, the first convolution reads FP16, and the request
  carries half the bytes of FP32 (a batch of 256 images at 224² is 38 MB instead of 77);
* FP32 out: Triton's classification extension (``class_count``, ``label_filename``)
  ranks only integer, FP32 and FP64 outputs (server ``src/classification.cc``), so the
  logits are cast back inside the network, where the cast is one tiny kernel.

Clients read the input datatype from the model metadata (``FP16`` here, ``FP32`` for
the CPU and ONNX targets) and cast their preprocessed batch to it.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
from torch import nn

from sft_engine.engines.base import ExportContext, Runner
from sft_engine.engines.precision import fp16_tolerance
from sft_engine.errors import ParityError
from sft_engine.repository.config import DynamicBatchingSpec, InstanceGroupSpec
from sft_engine.verify import ParityReport, check_parity

__all__ = ["HalfPrecisionClassifier", "half_module", "cuda_device", "gpu_instance_group", "dynamic_batching", "warmup_batches",
           "DeviceRunner", "fp16_gate"]


class HalfPrecisionClassifier(nn.Module):
    """``model`` with FP16 weights; FP16 images in, FP32 logits out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).float()


def half_module(model: nn.Module, device: torch.device) -> HalfPrecisionClassifier:
    """A half-precision copy of ``model`` on ``device``, in eval mode (the original is untouched)."""
    return HalfPrecisionClassifier(copy.deepcopy(model).half()).to(device).eval()


def cuda_device(index: int) -> torch.device:
    return torch.device("cuda", index)


def gpu_instance_group(instance_count: int, gpus: tuple[int, ...]) -> InstanceGroupSpec:
    """``count`` instances on each GPU in ``gpus`` (every GPU of the serving host when empty)."""
    return InstanceGroupSpec("KIND_GPU", instance_count, tuple(gpus))


def dynamic_batching(max_queue_delay_us: int) -> DynamicBatchingSpec:
    return DynamicBatchingSpec(max_queue_delay_us=max_queue_delay_us)


def warmup_batches(max_batch_size: int) -> tuple[int, ...]:
    """Warm the smallest and the largest batch: the model is READY only when both ran."""
    return tuple(sorted({1, max_batch_size}))


class DeviceRunner:
    """In-process runner for a CUDA module: NCHW float32 numpy → float32 numpy logits."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], device: torch.device, input_dtype: torch.dtype) -> None:
        self._fn = fn
        self.device = device
        self.input_dtype = input_dtype

    def run(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, dtype=self.input_dtype, non_blocking=False)
            return self._fn(x).float().cpu().numpy()


def fp16_gate(ctx: ExportContext, engine: str, runner: Runner, what: str, gpu_name: str) -> ParityReport:
    """Judge an FP16 engine against eager FP32 by the FP16 tolerance (keeping what the user set).

    Raises ParityError, so nothing is published, when it fails; the report records the
    tolerance it was judged by.
    """
    b = ctx.build
    tolerance = fp16_tolerance(ctx.tolerance, getattr(b, "source", {}))
    report = check_parity(engine, ctx.reference, runner, ctx.data, tolerance, batch_size=min(b.max_batch_size, 16))
    if not report.passed:
        raise ParityError(f"the FP16 {what} disagrees with eager FP32 on {gpu_name}: {', '.join(report.reasons)}",
                          hint="nothing was published; check the model, or pass --parity-atol / --parity-min-top1-agreement to loosen the gate",
                          report=report.to_dict())
    return report
