"""Target ``onnx``: ``model.onnx`` for Triton's ONNX Runtime backend in the NGC container.

The CPU target wraps ONNX Runtime in a Python-backend ``model.py``, which the embedded
server needs; the stock NGC container has a native ONNX Runtime backend, so this
target writes ``platform: "onnxruntime_onnx"`` with no Python at all:

* without ``--gpus``: KIND_CPU instances;
* with ``--gpus``: KIND_GPU instances with the TensorRT execution accelerator in FP16
  (``optimization.execution_accelerators.gpu_execution_accelerator``, read only by the
  ONNX Runtime and TensorFlow backends). ONNX Runtime then builds its TensorRT engines
  when the model loads, on the serving GPU, so the plan always matches the container's
  TensorRT (slow first load; no build-time version coupling).

The exported graph is FP32 and is verified here, on CPU, with ONNX Runtime against
eager FP32. What the FP16 accelerator computes on the serving GPU is not verified by
this build (the manifest says so). The embedded tritonserver has only the Python
backend, so this target is served by the NGC container, not by ``sft-engine serve``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from typing import Any

import numpy as np
import torch

from sft_engine.engines.base import EngineArtifact, ExportContext
from sft_engine.engines.cpu import INPUT_NAME, OUTPUT_NAME, Candidate, default_threads, export_onnx
from sft_engine.engines.serving_model import EngineRunner
from sft_engine.errors import ExportError, ParityError, TargetUnavailable
from sft_engine.repository.config import DynamicBatchingSpec, InstanceGroupSpec, ModelConfigSpec, TensorSpec
from sft_engine.verify import check_parity

__all__ = ["export", "check_available", "onnx_config", "MODEL_FILE", "OPSET"]

LOGGER = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
#: the opset ``cpu.export_onnx`` writes (ONNX Runtime ≥ 1.12 reads it)
OPSET = 17


def check_available(build: Any = None) -> None:
    """Export and verification run on CPU; they need the ``onnx`` and ``onnxruntime`` packages."""
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise TargetUnavailable(f"target onnx needs {' and '.join(missing)}, not installed here",
                                hint="pip install 'sft-engine[onnx]', or use --target cpu --engine torchscript")


def onnx_config(name: str, num_classes: int, shape: tuple[int, ...], max_batch_size: int, instance_count: int,
                max_queue_delay_us: int, gpus: tuple[int, ...], parameters: dict[str, str]) -> ModelConfigSpec:
    """Model-level config: KIND_CPU, or KIND_GPU + TensorRT FP16 accelerator when ``gpus`` is given."""
    on_gpu = bool(gpus)
    return ModelConfigSpec(
        name=name,
        platform="onnxruntime_onnx",
        max_batch_size=max_batch_size,
        inputs=(TensorSpec(INPUT_NAME, "FP32", tuple(shape)),),
        outputs=(TensorSpec(OUTPUT_NAME, "FP32", (num_classes,), label_filename="labels.txt"),),
        instance_groups=(InstanceGroupSpec("KIND_GPU" if on_gpu else "KIND_CPU", instance_count, tuple(gpus)),),
        dynamic_batching=DynamicBatchingSpec(max_queue_delay_us=max_queue_delay_us),
        parameters=tuple(sorted(parameters.items())),
        warmup_batch_sizes=tuple(sorted({1, max_batch_size})),
        default_model_filename=MODEL_FILE,
        onnx_tensorrt_accelerator=on_gpu,
    )


def export(ctx: ExportContext) -> EngineArtifact:
    """Target ``onnx``: the uniform exporter entry point."""
    check_available(ctx.build)
    b = ctx.build
    path = ctx.workdir / MODEL_FILE
    example = torch.from_numpy(np.ascontiguousarray(ctx.data.inputs[: min(2, b.max_batch_size)]))
    try:
        export_onnx(ctx.model, example, path)
    except Exception as exc:  # an unexportable layer is an expected outcome
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{b.arch} could not be exported to ONNX: {type(exc).__name__}: {first}", hint="try --target cpu --engine torchscript") from exc
    threads = default_threads(b.instance_count)
    runner = EngineRunner(str(ctx.workdir), Candidate("onnxruntime").settings(threads))
    report = check_parity("onnxruntime", ctx.reference, runner.run, ctx.data, ctx.tolerance, batch_size=min(b.max_batch_size, 16))
    if not report.passed:
        raise ParityError(f"the ONNX model disagrees with the eager model: {', '.join(report.reasons)}",
                          hint="nothing was published; check the model or loosen --parity-atol", report=report.to_dict())
    gpus = tuple(b.gpus)
    config = onnx_config(b.name, b.num_classes, tuple(b.preprocessing.shape), b.max_batch_size, b.instance_count,
                         b.max_queue_delay_us, gpus, ctx.parameters)
    import onnxruntime

    compat = {
        "engine": "onnx",
        "onnx_opset": OPSET,
        "onnxruntime_verified": onnxruntime.__version__,
        "torch": torch.__version__,
        "served_precision": "FP16 through the TensorRT execution accelerator (built at load time, not verified here)" if gpus else "FP32 on CPU (as verified)",
        "triton_container_note": "any NGC Triton container whose ONNX Runtime reads opset 17 (ONNX Runtime 1.12 or newer)",
    }
    details = {"parity": report.to_dict(), "tolerance": dataclasses.asdict(ctx.tolerance),
               "verified_with": "onnxruntime CPUExecutionProvider", "compatibility": compat}
    LOGGER.info("ONNX model verified with ONNX Runtime %s on CPU", onnxruntime.__version__)
    return EngineArtifact(target="onnx", engine="onnxruntime", files={MODEL_FILE: path}, config=config, runner=runner.run, details=details)
