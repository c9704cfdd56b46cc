"""Target ``onnx``: ``model.onnx`` for Triton's ONNX Runtime backend in the NGC container.

The CPU target wraps ONNX Runtime in a Python-backend ``model.py``, which the embedded
server needs; the stock NGC container has a native ONNX Runtime backend, so this
target writes ``platform: "onnxruntime_onnx"`` with no Python at all:

* without ``--serve-gpus``: KIND_CPU instances;
* with ``--serve-gpus IDS|all``: KIND_GPU instances with the TensorRT execution accelerator in FP16
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

import importlib.util
import logging

import torch

from sft_engine.engines.base import EngineArtifact, EngineCandidate, EngineConfig, ExportContext, ExportSettings, Target, serving_config
from sft_engine.engines.cpu.serving_model import EngineRunner
from sft_engine.engines.cpu.target import default_threads, engine_json
from sft_engine.engines.export.onnx import INPUT_NAME, OPSET, OUTPUT_NAME, export_onnx
from sft_engine.errors import ExportError, TargetUnavailable
from sft_engine.repository.config import ModelConfigSpec, TensorSpec
from sft_engine.verify import Check

__all__ = ["TARGET", "export", "check_available", "onnx_config", "onnx_engine_config", "MODEL_FILE", "OPSET"]

LOGGER = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
#: the one candidate: the FP32 graph, verified with ONNX Runtime on CPU
CANDIDATE = EngineCandidate("onnxruntime")


def check_available(settings: ExportSettings | None = None) -> None:
    """Export and verification run on CPU; they need the ``onnx`` and ``onnxruntime`` packages."""
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise TargetUnavailable(f"target onnx needs {' and '.join(missing)}, not installed here",
                                hint="pip install 'sft-engine[onnx]', or use --target cpu --engine torchscript")


def onnx_engine_config(num_classes: int, shape: tuple[int, ...], on_gpu: bool) -> EngineConfig:
    """The engine half: ``onnxruntime_onnx``; on GPUs with the TensorRT FP16 execution accelerator."""
    return EngineConfig(
        platform="onnxruntime_onnx",
        inputs=(TensorSpec(INPUT_NAME, "FP32", tuple(shape)),),
        outputs=(TensorSpec(OUTPUT_NAME, "FP32", (num_classes,), label_filename="labels.txt"),),
        instance_kind="KIND_GPU" if on_gpu else "KIND_CPU",
        default_model_filename=MODEL_FILE,
        onnx_tensorrt_accelerator=on_gpu,
    )


def onnx_config(name: str, num_classes: int, shape: tuple[int, ...], max_batch_size: int, instance_count: int,
                max_queue_delay_us: int, gpus: tuple[int, ...], parameters: dict[str, str]) -> ModelConfigSpec:
    """Model-level config: KIND_CPU, or KIND_GPU + TensorRT FP16 accelerator when ``gpus`` is given."""
    return serving_config(onnx_engine_config(num_classes, shape, bool(gpus)), name, max_batch_size, instance_count,
                          max_queue_delay_us, parameters, tuple(gpus))


def export(ctx: ExportContext, candidate: EngineCandidate = CANDIDATE) -> EngineArtifact:
    """``model.onnx``, and an ONNX Runtime session on CPU for the gate."""
    s = ctx.settings
    check_available(s)
    path = ctx.workdir / MODEL_FILE
    try:
        export_onnx(ctx.model, torch.from_numpy(ctx.example), path)
    except Exception as exc:  # an unexportable layer is an expected outcome
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{s.arch} could not be exported to ONNX: {type(exc).__name__}: {first}", hint="try --target cpu --engine torchscript") from exc
    runner = EngineRunner(str(ctx.workdir), engine_json(candidate, default_threads(s.instance_count)))
    gpus = s.serve_gpus is not None
    import onnxruntime

    compat = {
        "engine": "onnx",
        "onnx_opset": OPSET,
        "onnxruntime_verified": onnxruntime.__version__,
        "torch": torch.__version__,
        "served_precision": "FP16 through the TensorRT execution accelerator (built at load time, not verified here)" if gpus else "FP32 on CPU (as verified)",
        "triton_container_note": "any NGC Triton container whose ONNX Runtime reads opset 17 (ONNX Runtime 1.12 or newer)",
    }
    return EngineArtifact(
        candidate=candidate, engine="onnxruntime", files={MODEL_FILE: path},
        config=onnx_engine_config(s.num_classes, s.input_shape, bool(gpus)),
        checks=(Check("onnxruntime", runner.run, subject="the ONNX model"),),
        details={"verified_with": "onnxruntime CPUExecutionProvider", "compatibility": compat},
    )


def plan(settings: ExportSettings) -> list[EngineCandidate]:
    return [CANDIDATE]


TARGET = Target(name="onnx", plan=plan, export=export, check_available=check_available)
