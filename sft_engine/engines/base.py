"""The contract between the build and each target: what an exporter receives and hands back.

A target (one module of this package, listed in ``registry``) plans its candidates
(engine × precision) and exports each one into files, a runner and the
target-specific half of its Triton config. It does not judge them: the build runs the
parity and precision gates and the timing once, for every target alike
(``sft_engine.build``), as Model Navigator keeps export, correctness and performance
apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from torch import nn

from sft_engine.errors import ConfigError
from sft_engine.repository.config import DynamicBatchingSpec, InstanceGroupSpec, ModelConfigSpec, TensorSpec
from sft_engine.verify import Check, ParityData

__all__ = ["ExportSettings", "EngineCandidate", "ExportContext", "EngineConfig", "EngineArtifact", "Target", "serving_config",
           "warmup_batches", "no_engine_choice"]


@dataclass(frozen=True)
class ExportSettings:
    """What an exporter needs of the build settings (a typed view of ``BuildConfig``).

    ``parameters``: the config ``parameters`` (preprocessing) every target's config.pbtxt
    carries; ``engine`` / ``precision``: the CPU choices (``auto`` lets the build measure).
    """

    name: str
    arch: str
    num_classes: int
    input_shape: tuple[int, ...]
    max_batch_size: int
    instance_count: int = 1
    max_queue_delay_us: int = 0
    #: GPUs to build on (every visible one when empty); never the serving placement
    build_gpus: tuple[int, ...] = ()
    #: ``instance_group.gpus``: None = the target's default, () = every GPU of the serving host
    serve_gpus: tuple[int, ...] | None = None
    engine: str = "auto"
    precision: str = "auto"
    intra_op_threads: int = 0
    parameters: dict[str, str] = field(default_factory=dict)
    #: publish a TensorRT plan that no known NGC container's TensorRT matches (with a warning)
    allow_unmatched_tensorrt: bool = False
    #: plan INT8 CPU candidates even where this CPU lacks INT8 dot-product instructions
    allow_int8_without_isa: bool = False
    #: labelled images were given (INT8 candidates are planned in ``auto`` only then)
    calibration_dir: Path | None = None
    #: labelled images that calibrate INT8, and the seed of the calibration/gate split
    int8_calibration_images: int = 300
    seed: int = 0


@dataclass(frozen=True)
class EngineCandidate:
    """One engine a target may publish: a runtime and the arithmetic it runs in."""

    engine: str
    precision: str = "fp32"

    @property
    def name(self) -> str:
        """``onnxruntime``, ``openvino-bf16``, ``tensorrt-fp16``: FP32 goes unnamed."""
        return self.engine if self.precision == "fp32" else f"{self.engine}-{self.precision}"


@dataclass
class ExportContext:
    """What every exporter receives.

    ``model`` is the eager FP32 model on CPU in eval mode; ``data`` the build's parity
    inputs (an example batch for tracing, or calibration images for a quantizer);
    ``exported`` maps an engine kind to the directory already holding its files, so
    candidates that share an export (one OpenVINO IR for FP32 and bf16) make it once.
    """

    model: nn.Module
    settings: ExportSettings
    workdir: Path
    data: ParityData
    exported: dict[str, Path] = field(default_factory=dict)

    @property
    def example(self) -> np.ndarray:
        """A small batch for tracing: at most two inputs, never more than the max batch size."""
        return np.ascontiguousarray(self.data.inputs[: min(2, self.settings.max_batch_size)])


@dataclass(frozen=True)
class EngineConfig:
    """The target-specific half of config.pbtxt: how Triton loads this engine.

    Exactly one of ``backend`` (``python``) and ``platform`` (``tensorrt_plan``, ...);
    tensor names and dtypes as the engine has them; ``instance_kind`` where it runs.
    The serving half (batching, instances, warmup, parameters) is ``serving_config``'s.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    backend: str | None = None
    platform: str | None = None
    instance_kind: Literal["KIND_CPU", "KIND_GPU"] = "KIND_CPU"
    default_model_filename: str | None = None
    cc_model_filenames: tuple[tuple[str, str], ...] = ()
    cuda_graphs: bool = False
    onnx_tensorrt_accelerator: bool = False


def warmup_batches(max_batch_size: int) -> tuple[int, ...]:
    """Warm the smallest and the largest batch: the model is READY only when both ran."""
    return tuple(sorted({1, max_batch_size}))


def serving_config(engine: EngineConfig, name: str, max_batch_size: int, instance_count: int, max_queue_delay_us: int,
                   parameters: dict[str, str], gpus: tuple[int, ...] = ()) -> ModelConfigSpec:
    """The whole model config of ``engine``, for every target alike.

    Dynamic batching with the given queue delay, ``instance_count`` instances of the
    engine's kind (on ``gpus``, every GPU of the serving host when empty), warmup of
    batch 1 and ``max_batch_size``, and the preprocessing ``parameters``.
    """
    return ModelConfigSpec(
        name=name,
        backend=engine.backend,
        platform=engine.platform,
        max_batch_size=max_batch_size,
        inputs=engine.inputs,
        outputs=engine.outputs,
        instance_groups=(InstanceGroupSpec(engine.instance_kind, instance_count, tuple(gpus) if engine.instance_kind == "KIND_GPU" else ()),),
        dynamic_batching=DynamicBatchingSpec(max_queue_delay_us=max_queue_delay_us),
        parameters=tuple(sorted(parameters.items())),
        warmup_batch_sizes=warmup_batches(max_batch_size),
        default_model_filename=engine.default_model_filename,
        cc_model_filenames=engine.cc_model_filenames,
        cuda_graphs=engine.cuda_graphs,
        onnx_tensorrt_accelerator=engine.onnx_tensorrt_accelerator,
    )


@dataclass
class EngineArtifact:
    """An exported candidate, not yet judged.

    ``files`` maps a file name inside the version directory to the file in the build's
    work directory. ``checks``: the runners the gate must pass, the first being the
    engine's own (a TensorRT build has one per GPU architecture); ``checks_field`` names
    the manifest entry of the per-check reports when there may be several.
    ``details`` go into the manifest's ``engine_details`` (and ``compatibility``);
    ``record`` adds figures to the candidate's row of ``candidates``. ``gate_data``
    replaces the build's parity inputs for this engine's gate (an INT8 engine is judged
    on images its quantizer did not calibrate on).
    """

    candidate: EngineCandidate
    engine: str
    files: dict[str, Path]
    config: EngineConfig
    checks: tuple[Check, ...]
    details: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    checks_field: str | None = None
    gate_data: ParityData | None = None

    @property
    def runner(self) -> Callable[[np.ndarray], np.ndarray]:
        return self.checks[0].runner


def _always_available(settings: ExportSettings) -> None:
    return None


def no_engine_choice(engine: str, precision: str) -> None:
    """``check_choice`` of a target with one engine: ``--engine`` chooses among the CPU target's engines only."""
    if engine != "auto":
        raise ConfigError(f"--engine {engine} chooses a CPU engine, not one of this target", hint="drop --engine, or use --target cpu")


@dataclass(frozen=True)
class Target:
    """One build target: the candidates it plans and how it exports one.

    ``check_available`` runs before any model is built, so a host that lacks what the
    target needs learns it at once. A target that ``selects`` exports every planned
    candidate, records each one's figures and keeps the fastest that passes its gate
    (an export that fails is recorded, not raised); otherwise its one candidate must
    export and pass. ``label`` and ``export_hint`` word the error when none survives.

    ``precisions``: the names (of ``precision.PRECISIONS``) ``--precision`` may choose
    with this target, empty when it builds one precision and takes no ``--precision``;
    ``check_choice(engine, precision)`` refuses an ``--engine`` / ``--precision`` pair
    the target cannot build (a precision outside ``precisions`` never reaches it).
    ``ngc_container``: its engine is tied to the NGC container's TensorRT or libtorch,
    so ``--print-docker`` builds it inside one.
    """

    name: str
    plan: Callable[[ExportSettings], list[EngineCandidate]]
    export: Callable[[ExportContext, EngineCandidate], EngineArtifact]
    precisions: tuple[str, ...] = ()
    check_choice: Callable[[str, str], None] = no_engine_choice
    check_available: Callable[[ExportSettings], None] = _always_available
    ngc_container: bool = False
    #: ``instance_group`` on GPUs: ``--serve-gpus`` places it
    serves_on_gpus: bool = True
    selects: bool = False
    label: str = ""
    export_hint: str = ""
