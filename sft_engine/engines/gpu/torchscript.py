"""Target ``torchscript-gpu``: FP16 TorchScript on CUDA, for Triton's PyTorch (libtorch) backend.

The half-precision module (FP16 in, FP32 logits out; see ``gpu.half``) is traced on
the GPU with a half example batch and frozen, so weights become FP16 constants of the
graph and the batch dimension stays dynamic. It needs no TensorRT anywhere: the
fallback GPU path when torch_tensorrt is missing or cannot convert the model.

Config notes (server docs, model_configuration.md and model_config.proto):

* tensors are named ``INPUT__0`` / ``OUTPUT__0``, the PyTorch backend's ``NAME__index``
  convention, because a TorchScript file carries no usable tensor names;
* ``optimization { cuda { graphs } }`` is read only by the TensorRT backend and
  ``execution_accelerators`` only by ONNX Runtime and TensorFlow: neither does anything
  for this backend, so neither is written;
* the container's libtorch loads TorchScript saved by the same or an older torch: the
  compatibility manifest records the NGC Triton release whose libtorch loads it
  (``triton.releases``' torch column), and a torch newer than every tabulated one is
  refused before anything is published.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sft_engine.engines.base import EngineArtifact, EngineCandidate, EngineConfig, ExportContext, ExportSettings, Target, serving_config
from sft_engine.engines.gpu.compatibility import check_torchscript_servable, compatibility_manifest, torchscript_container
from sft_engine.engines.gpu.devices import GpuInfo, list_gpus, select_gpus
from sft_engine.engines.gpu.half import FP16, DeviceRunner, cuda_device, half_module
from sft_engine.engines.gpu.probes import require_cuda
from sft_engine.errors import ExportError
from sft_engine.repository.config import ModelConfigSpec, TensorSpec
from sft_engine.verify import Check

__all__ = ["TARGET", "export", "check_available", "torchscript_gpu_config", "torchscript_gpu_engine_config", "export_fp16_torchscript",
           "weight_dtypes", "traced_batches", "batch_mismatches", "INPUT_NAME", "OUTPUT_NAME", "MODEL_FILE"]

LOGGER = logging.getLogger(__name__)

INPUT_NAME = "INPUT__0"
OUTPUT_NAME = "OUTPUT__0"
MODEL_FILE = "model.pt"


#: the one candidate: FP16 TorchScript on the first selected GPU
CANDIDATE = EngineCandidate("torchscript", FP16)


def check_available(settings: ExportSettings | None = None) -> None:
    require_cuda("torchscript-gpu")


def torchscript_gpu_engine_config(num_classes: int, shape: tuple[int, ...]) -> EngineConfig:
    """The engine half: ``pytorch_libtorch`` on KIND_GPU (no CUDA graphs, no accelerators: unused by this backend)."""
    return EngineConfig(
        platform="pytorch_libtorch",
        inputs=(TensorSpec(INPUT_NAME, "FP16", tuple(shape)),),
        outputs=(TensorSpec(OUTPUT_NAME, "FP32", (num_classes,), label_filename="labels.txt"),),
        instance_kind="KIND_GPU",
        default_model_filename=MODEL_FILE,
    )


def torchscript_gpu_config(name: str, num_classes: int, shape: tuple[int, ...], max_batch_size: int, instance_count: int,
                           max_queue_delay_us: int, gpus: tuple[int, ...], parameters: dict[str, str]) -> ModelConfigSpec:
    """Model-level Triton config of an FP16 TorchScript model."""
    return serving_config(torchscript_gpu_engine_config(num_classes, shape), name, max_batch_size, instance_count,
                          max_queue_delay_us, parameters, tuple(gpus))


def traced_batches(traced_at: int, max_batch_size: int) -> tuple[int, ...]:
    """The batch sizes a traced module is run at besides the one it was traced with: 1 and the maximum."""
    return tuple(sorted({1, max_batch_size} - {traced_at}))


def batch_mismatches(run: Any, reference: Any, batches: tuple[int, ...], make: Any, atol: float = 5e-2) -> list[str]:
    """Batches at which ``run`` (the traced module) fails or departs from ``reference`` (the module it traced).

    Tracing records Python ints computed from shapes as constants: Swin's
    ``window_reverse`` (``int(windows.shape[0] / ...)``) and any ``x.view(B, ...)`` with
    ``B = int(x.shape[0])`` give a module that runs only at the traced batch, or
    silently mixes images at another (Torch-TensorRT #1271, Swin-Transformer #257).
    """
    problems = []
    for batch in batches:
        x = make(batch)
        try:
            got, want = run(x).float(), reference(x).float()
        except Exception as exc:
            problems.append(f"batch {batch}: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:120]}")
            continue
        if tuple(got.shape) != tuple(want.shape) or not torch.allclose(got, want, atol=atol, rtol=atol):
            problems.append(f"batch {batch}: the traced module departs from the model")
    return problems


def export_fp16_torchscript(model: nn.Module, example: np.ndarray, device: torch.device, path: Path, max_batch_size: int | None = None) -> None:
    """Trace the half module on ``device`` with a half example batch, freeze, check it at batch 1 and the maximum, save."""
    module = half_module(model, device)
    x = torch.from_numpy(np.ascontiguousarray(example)).to(device, dtype=torch.float16)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, x, check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
        if max_batch_size is not None:
            make = lambda n: torch.randn((n, *x.shape[1:]), device=device).to(torch.float16)  # noqa: E731
            problems = batch_mismatches(frozen, module, traced_batches(len(x), max_batch_size), make)
            if problems:
                raise ExportError(f"the traced TorchScript keeps the batch it was traced with ({'; '.join(problems)})",
                                  hint="the model computes sizes from the batch in Python (Swin's window ops): use --target tensorrt "
                                       "(torch.export, symbolic batch) or --max-batch-size 1")
    frozen.save(str(path))


def weight_dtypes(module: torch.jit.ScriptModule) -> dict[str, int]:
    """Bytes of floating-point tensor constants in a frozen graph, by dtype (the weights after freezing)."""
    out: dict[str, int] = {}
    for node in module.graph.findAllNodes("prim::Constant"):
        value = node.output().toIValue() if node.output().type().kind() == "TensorType" else None
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            key = str(value.dtype).replace("torch.", "")
            out[key] = out.get(key, 0) + value.numel() * value.element_size()
    for tensor in list(module.parameters()) + list(module.buffers()):  # unfrozen leftovers, if any
        if tensor.is_floating_point():
            key = str(tensor.dtype).replace("torch.", "")
            out[key] = out.get(key, 0) + tensor.numel() * tensor.element_size()
    return out


def _check_fp16(weights: dict[str, int]) -> list[str]:
    total = sum(weights.values())
    half = weights.get("float16", 0)
    if total == 0:
        return ["the frozen module holds no floating-point weights"]
    if half / total < 0.9:
        return [f"only {half / total:.0%} of the weight bytes are FP16 ({weights})"]
    return []


def export(ctx: ExportContext, candidate: EngineCandidate = CANDIDATE) -> EngineArtifact:
    """Trace, freeze and check the FP16 weights; the runner is the very file Triton will load."""
    s = ctx.settings
    check_available(s)
    container = torchscript_container(torch.__version__)  # refused before tracing when no tabulated libtorch loads it
    check_torchscript_servable({**container, "torch": torch.__version__}, s.allow_unmatched_tensorrt)
    gpus = select_gpus(tuple(s.build_gpus), list_gpus())
    gpu: GpuInfo = gpus[0]
    device = cuda_device(gpu.index)
    path = ctx.workdir / MODEL_FILE
    try:
        export_fp16_torchscript(ctx.model, ctx.example, device, path, s.max_batch_size)
    except ExportError:
        raise
    except Exception as exc:  # an untraceable model is an expected outcome
        raise ExportError(f"{s.arch} could not be traced to FP16 TorchScript: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}",
                          hint="try --target onnx") from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export; libtorch still serves it
        loaded = torch.jit.load(str(path), map_location=device).eval()
    weights = weight_dtypes(loaded)
    problems = _check_fp16(weights)
    if problems:
        raise ExportError(f"the TorchScript module is not FP16: {'; '.join(problems)}", hint="report this as a bug; nothing was published")
    runner = DeviceRunner(loaded, device, torch.float16)
    compat = compatibility_manifest("torchscript-gpu", [gpu])
    compat.update(container)
    return EngineArtifact(
        candidate=candidate, engine="torchscript-fp16", files={MODEL_FILE: path},
        config=torchscript_gpu_engine_config(s.num_classes, tuple(s.input_shape)),
        checks=(Check(f"torchscript-fp16@{gpu.sm}", runner.run, subject="the FP16 TorchScript module", against=f"eager FP32 on {gpu.name}"),),
        details={"fp16_check": {"weight_bytes_by_dtype": weights, "passed": True}, "compatibility": compat},
    )


def plan(settings: ExportSettings) -> list[EngineCandidate]:
    return [CANDIDATE]


TARGET = Target(name="torchscript-gpu", plan=plan, export=export, check_available=check_available, ngc_container=True)
