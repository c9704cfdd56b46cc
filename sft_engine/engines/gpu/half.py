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

__all__ = ["HalfPrecisionClassifier", "half_module", "cuda_device", "DeviceRunner", "FP16"]

#: the candidate precision of both FP16 GPU targets (its gate: ``verify.FP16_TOLERANCE``)
FP16 = "fp16"


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
