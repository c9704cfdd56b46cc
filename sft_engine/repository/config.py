"""Triton model configuration through the real protobuf schema.

A typed ``ModelConfigSpec`` (what sft-engine decides) becomes a
``model_config_pb2.ModelConfig`` (what Triton reads), rendered with
``google.protobuf.text_format`` and parsed back before anything is written, as
PyTriton's generator/parser pair does. No string templates: a field Triton does not
know cannot be written, and a typo fails at build time, not at server start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from sft_engine.errors import RepositoryError

__all__ = [
    "TensorSpec",
    "InstanceGroupSpec",
    "DynamicBatchingSpec",
    "EnsembleStepSpec",
    "ModelConfigSpec",
    "to_proto",
    "to_pbtxt",
    "parse_pbtxt",
    "read_config",
    "validate",
    "parameters_of",
]

_DTYPES = {
    "FP32": mc.TYPE_FP32,
    "FP16": mc.TYPE_FP16,
    "BF16": mc.TYPE_BF16,
    "INT64": mc.TYPE_INT64,
    "INT32": mc.TYPE_INT32,
    "UINT8": mc.TYPE_UINT8,
    "BYTES": mc.TYPE_STRING,
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output; ``dims`` exclude the batch dimension."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    label_filename: str | None = None


@dataclass(frozen=True)
class InstanceGroupSpec:
    kind: Literal["KIND_CPU", "KIND_GPU"] = "KIND_CPU"
    count: int = 1
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class DynamicBatchingSpec:
    """``max_queue_delay_us``: how long the scheduler may hold a request to form a larger batch."""

    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class EnsembleStepSpec:
    """One step of an ensemble: ``input_map``/``output_map`` pair the step model's tensor names
    (keys) with the ensemble's tensor names (values); version -1 = the latest the server serves."""

    model_name: str
    input_map: tuple[tuple[str, str], ...]
    output_map: tuple[tuple[str, str], ...]
    model_version: int = -1


@dataclass(frozen=True)
class ModelConfigSpec:
    """Everything sft-engine puts into one ``config.pbtxt``.

    Exactly one of ``backend`` (e.g. ``python``) and ``platform`` (``tensorrt_plan``,
    ``pytorch_libtorch``, ``onnxruntime_onnx``, ``ensemble``) is set. An ensemble has
    ``ensemble_steps`` and neither instance groups, a dynamic batcher nor warmup (its
    steps' models have those).
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    backend: str | None = None
    platform: str | None = None
    instance_groups: tuple[InstanceGroupSpec, ...] = (InstanceGroupSpec(),)
    dynamic_batching: DynamicBatchingSpec | None = field(default_factory=DynamicBatchingSpec)
    parameters: tuple[tuple[str, str], ...] = ()
    warmup_batch_sizes: tuple[int, ...] = (1,)
    default_model_filename: str | None = None
    cc_model_filenames: tuple[tuple[str, str], ...] = ()
    cuda_graphs: bool = False
    onnx_tensorrt_accelerator: bool = False
    num_versions: int = 1
    ensemble_steps: tuple[EnsembleStepSpec, ...] = ()


def to_proto(spec: ModelConfigSpec) -> mc.ModelConfig:
    """The protobuf message for ``spec``."""
    if spec.ensemble_steps and spec.dynamic_batching is not None:  # one oneof in the proto: it would vanish silently
        raise RepositoryError(f"ensemble {spec.name!r} cannot have instance groups, a dynamic batcher or warmup", hint="set them on its steps' models")
    cfg = mc.ModelConfig(name=spec.name, max_batch_size=spec.max_batch_size)
    if spec.backend:
        cfg.backend = spec.backend
    if spec.platform:
        cfg.platform = spec.platform
    cfg.version_policy.latest.num_versions = spec.num_versions
    for tensor in spec.inputs:
        cfg.input.add(name=tensor.name, data_type=_DTYPES[tensor.dtype], dims=list(tensor.dims))
    for tensor in spec.outputs:
        out = cfg.output.add(name=tensor.name, data_type=_DTYPES[tensor.dtype], dims=list(tensor.dims))
        if tensor.label_filename:
            out.label_filename = tensor.label_filename
    for group in spec.instance_groups:
        cfg.instance_group.add(kind=mc.ModelInstanceGroup.Kind.Value(group.kind), count=group.count, gpus=list(group.gpus))
    if spec.dynamic_batching is not None:
        cfg.dynamic_batching.SetInParent()
        cfg.dynamic_batching.max_queue_delay_microseconds = spec.dynamic_batching.max_queue_delay_us
        cfg.dynamic_batching.preferred_batch_size.extend(spec.dynamic_batching.preferred_batch_sizes)
    for key, value in spec.parameters:
        cfg.parameters[key].string_value = value
    for batch in spec.warmup_batch_sizes:
        warm = cfg.model_warmup.add(name=f"random_batch_{batch}", batch_size=batch, count=1)
        for tensor in spec.inputs:
            warm.inputs[tensor.name].data_type = _DTYPES[tensor.dtype]
            warm.inputs[tensor.name].dims.extend(tensor.dims)
            warm.inputs[tensor.name].random_data = True
    if spec.default_model_filename:
        cfg.default_model_filename = spec.default_model_filename
    for cc, filename in spec.cc_model_filenames:
        cfg.cc_model_filenames[cc] = filename
    if spec.cuda_graphs:
        cfg.optimization.cuda.graphs = True
    for step in spec.ensemble_steps:
        added = cfg.ensemble_scheduling.step.add(model_name=step.model_name, model_version=step.model_version)
        for key, value in step.input_map:
            added.input_map[key] = value
        for key, value in step.output_map:
            added.output_map[key] = value
    if spec.onnx_tensorrt_accelerator:
        acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        acc.parameters["precision_mode"] = "FP16"
    validate(cfg)
    return cfg


def to_pbtxt(spec: ModelConfigSpec | mc.ModelConfig) -> str:
    """Render as Triton's text format, and check that it parses back to the same message."""
    cfg = to_proto(spec) if isinstance(spec, ModelConfigSpec) else spec
    text = text_format.MessageToString(cfg)
    if parse_pbtxt(text) != cfg:
        raise RepositoryError("config.pbtxt does not round-trip through the protobuf schema", hint="report this as a bug")
    return text


def parse_pbtxt(text: str, source: str = "config.pbtxt") -> mc.ModelConfig:
    """Parse Triton's text format into a ModelConfig."""
    cfg = mc.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as exc:
        raise RepositoryError(f"{source} is not a valid Triton model config: {exc}", hint="fix or rebuild it") from None
    return cfg


def read_config(path: str | Path) -> mc.ModelConfig:
    path = Path(path)
    if not path.is_file():
        raise RepositoryError(f"{path} does not exist", hint="build the model first")
    cfg = parse_pbtxt(path.read_text(), source=str(path.name))
    validate(cfg)
    return cfg


def validate(cfg: mc.ModelConfig) -> None:
    """Checks Triton itself would make at load time, made before writing."""
    if bool(cfg.backend) == bool(cfg.platform):
        raise RepositoryError(f"model {cfg.name!r} needs exactly one of backend and platform", hint="report this as a bug")
    if cfg.max_batch_size < 0:
        raise RepositoryError("max_batch_size must be >= 0", hint="pass --max-batch-size 0 or more")
    if cfg.HasField("dynamic_batching") and cfg.max_batch_size == 0:
        raise RepositoryError("dynamic batching needs max_batch_size > 0", hint="pass --max-batch-size 1 or more")
    if not cfg.input or not cfg.output:
        raise RepositoryError(f"model {cfg.name!r} has no inputs or no outputs", hint="report this as a bug")
    names = [t.name for t in cfg.input] + [t.name for t in cfg.output]
    if len(set(names)) != len(names):
        raise RepositoryError(f"model {cfg.name!r} repeats a tensor name: {names}", hint="report this as a bug")
    for tensor in list(cfg.input) + list(cfg.output):
        if not tensor.dims or any(d == 0 or d < -1 for d in tensor.dims):
            raise RepositoryError(f"tensor {tensor.name!r} has invalid dims {list(tensor.dims)}", hint="dims exclude the batch dimension and are > 0 or -1")
    if cfg.platform == "pytorch_libtorch":
        for tensor in list(cfg.input) + list(cfg.output):
            if "__" not in tensor.name:
                raise RepositoryError(f"PyTorch backend tensor {tensor.name!r} must be named NAME__index", hint="use INPUT__0 / OUTPUT__0")
    if (cfg.platform == "ensemble") != bool(cfg.ensemble_scheduling.step):
        raise RepositoryError(f"model {cfg.name!r}: ensemble steps go with platform 'ensemble' and only with it", hint="report this as a bug")
    if cfg.platform == "ensemble" and (cfg.instance_group or cfg.model_warmup):
        raise RepositoryError(f"ensemble {cfg.name!r} cannot have instance groups, a dynamic batcher or warmup", hint="set them on its steps' models")
    for warm in cfg.model_warmup:
        if cfg.max_batch_size and warm.batch_size > cfg.max_batch_size:
            raise RepositoryError(f"warmup batch {warm.batch_size} exceeds max_batch_size {cfg.max_batch_size}", hint="lower the warmup batch")


def parameters_of(cfg: mc.ModelConfig) -> dict[str, str]:
    """The config's ``parameters`` as a plain dict of strings."""
    return {key: value.string_value for key, value in cfg.parameters.items()}
