"""The two models that let any client send image files: ``<name>_preprocess`` and ``<name>_image``.

Next to every engine model ``<name>`` the build publishes:

* ``<name>_preprocess`` - Python backend, CPU instances (also on GPU hosts, so the
  engine's GPU is left to the engine): ``IMAGE`` (``TYPE_STRING`` [1], the file's
  bytes) → ``PIXELS`` (the engine's input dtype and dims). Its ``model.py`` is
  ``sft_engine/pixels.py`` copied byte for byte, and its ``parameters`` are the
  engine's ``preprocess_*`` entries plus the decoder's limits, so it reproduces the
  build's preprocessing exactly.
* ``<name>_image`` - ``IMAGE`` → the engine's logits, with ``label_filename``, so
  Triton's classification extension answers labels for raw bytes (curl, perf_analyzer,
  any language's client). For a CPU engine (itself a Python-backend model) it is one
  Python model (``fused_spec``: ``engines/cpu/image_model.py`` with ``pixels.py``, the
  engine's ``model.py`` and engine files in its version directory) that decodes,
  preprocesses and runs the engine in one stub: no ensemble, no second hop, no tensor
  through shared memory. For an engine that must stay native (TensorRT, ONNX Runtime
  backend, TorchScript on GPU) it is an ensemble: preprocess → engine
  (``ensemble_spec``). A repository whose ``<name>_image`` is already an ensemble keeps
  it (a model's backend cannot change between versions).

Batching (ensemble): each request carries one image (or a few); the preprocessing model's
dynamic batcher hands whatever is queued to one ``execute`` call, and the engine's
batcher batches the decoded tensors again. The ensemble itself has no batcher and no
instances (Triton forbids them), only ``max_batch_size`` = the engine's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sft_engine.errors import ConfigError
from sft_engine.pixels import DEFAULT_MAX_IMAGE_PIXELS, PARAMETER_PREFIX
from sft_engine.repository.config import DynamicBatchingSpec, EnsembleStepSpec, InstanceGroupSpec, ModelConfigSpec, TensorSpec, read_config

__all__ = [
    "IMAGE_INPUT",
    "PIXELS",
    "ImageServing",
    "preprocess_name",
    "image_name",
    "preprocess_spec",
    "ensemble_spec",
    "fused_spec",
    "served_as_ensemble",
    "FAST_DECODE",
    "preprocess_model_file",
]

IMAGE_INPUT = "IMAGE"
PIXELS = "PIXELS"
#: the config parameter that turns on DCT-scaled JPEG decoding (not a ``preprocess_`` entry: clients stay exact)
FAST_DECODE = "fast_decode"
PREPROCESS_SUFFIX = "_preprocess"
IMAGE_SUFFIX = "_image"


@dataclass(frozen=True)
class ImageServing:
    """Settings of the preprocessing model.

    ``max_image_pixels``: larger images are refused from their header, before decoding
    (a decompression bomb is a few KB that decode to gigabytes). ``instances``: CPU
    instances (processes) decoding in parallel. ``decode_threads``: threads per
    instance for the images of one batch (measured: no gain on 2 shared cores).
    """

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    instances: int = 2
    decode_threads: int = 1
    #: JPEGs at least twice the target decode at a reduced DCT scale (``--fast-decode``, gated by the build)
    fast_decode: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_image_pixels, bool) or not isinstance(self.max_image_pixels, int) or self.max_image_pixels < 64 * 64:
            raise ConfigError(f"--max-image-pixels must be an integer >= 4096, got {self.max_image_pixels!r}", hint="e.g. --max-image-pixels 40000000")
        if not 1 <= int(self.instances) <= 64:
            raise ConfigError(f"preprocessing instances must be 1..64, got {self.instances!r}", hint="e.g. 2")
        if not 1 <= int(self.decode_threads) <= 64:
            raise ConfigError(f"decode threads must be 1..64, got {self.decode_threads!r}", hint="e.g. 1")


def preprocess_name(name: str) -> str:
    return name + PREPROCESS_SUFFIX


def image_name(name: str) -> str:
    return name + IMAGE_SUFFIX


def preprocess_model_file() -> Path:
    """The file served as ``<name>_preprocess/<N>/model.py`` (copied unchanged)."""
    return Path(__file__).resolve().parents[1] / "pixels.py"


def _engine_io(engine: ModelConfigSpec) -> tuple[TensorSpec, TensorSpec]:
    if len(engine.inputs) != 1:
        raise ConfigError(f"model {engine.name!r} has {len(engine.inputs)} inputs; image serving needs one", hint="report this as a bug")
    output = next((t for t in engine.outputs if t.label_filename), engine.outputs[0])
    return engine.inputs[0], output


def _decode_parameters(engine: ModelConfigSpec, settings: ImageServing) -> tuple[tuple[str, str], ...]:
    """The engine's ``preprocess_*`` entries plus the decoder's limits (and ``fast_decode`` where enabled)."""
    params = {k: v for k, v in engine.parameters if k.startswith(PARAMETER_PREFIX)}
    if PARAMETER_PREFIX + "input_size" not in params:
        raise ConfigError(f"model {engine.name!r} records no preprocessing", hint="report this as a bug")
    params[PARAMETER_PREFIX + "max_image_pixels"] = str(settings.max_image_pixels)
    params["decode_threads"] = str(settings.decode_threads)
    if settings.fast_decode:
        params[FAST_DECODE] = "true"
    return tuple(sorted(params.items()))


def preprocess_spec(engine: ModelConfigSpec, settings: ImageServing = ImageServing()) -> ModelConfigSpec:
    """The preprocessing model's config, from the engine's (its preprocessing parameters and input)."""
    pixels, _ = _engine_io(engine)
    params = _decode_parameters(engine, settings)
    return ModelConfigSpec(
        name=preprocess_name(engine.name),
        backend="python",
        max_batch_size=engine.max_batch_size,
        inputs=(TensorSpec(IMAGE_INPUT, "BYTES", (1,)),),
        outputs=(TensorSpec(PIXELS, pixels.dtype, pixels.dims),),
        instance_groups=(InstanceGroupSpec("KIND_CPU", settings.instances),),
        dynamic_batching=DynamicBatchingSpec(max_queue_delay_us=0),
        parameters=params,
        warmup_batch_sizes=(),  # random bytes are not an image: warmup would fail the load
    )


def fused_spec(engine: ModelConfigSpec, settings: ImageServing = ImageServing()) -> ModelConfigSpec:
    """``<name>_image`` of a CPU engine: one Python model, IMAGE → the engine's labelled logits (same tensors as the ensemble)."""
    _, output = _engine_io(engine)
    if engine.backend != "python":
        raise ConfigError(f"model {engine.name!r} is not a Python-backend engine; its image model is an ensemble", hint="report this as a bug")
    return ModelConfigSpec(
        name=image_name(engine.name),
        backend="python",
        max_batch_size=engine.max_batch_size,
        inputs=(TensorSpec(IMAGE_INPUT, "BYTES", (1,)),),
        outputs=(TensorSpec(output.name, output.dtype, output.dims, label_filename=output.label_filename),),
        instance_groups=(InstanceGroupSpec("KIND_CPU", settings.instances),),
        dynamic_batching=DynamicBatchingSpec(max_queue_delay_us=0),
        parameters=_decode_parameters(engine, settings),
        warmup_batch_sizes=(),  # random bytes are not an image
    )


def served_as_ensemble(repository: Path, name: str) -> bool:
    """True when ``<name>_image`` already exists in ``repository`` as an ensemble (its next version must be one too)."""
    config = Path(repository) / image_name(name) / "config.pbtxt"
    return config.is_file() and read_config(config).platform == "ensemble"


def ensemble_spec(engine: ModelConfigSpec) -> ModelConfigSpec:
    """``<name>_image``: IMAGE → ``<name>_preprocess`` → ``<name>`` → the engine's labelled logits."""
    pixels, output = _engine_io(engine)
    return ModelConfigSpec(
        name=image_name(engine.name),
        platform="ensemble",
        max_batch_size=engine.max_batch_size,
        inputs=(TensorSpec(IMAGE_INPUT, "BYTES", (1,)),),
        outputs=(TensorSpec(output.name, output.dtype, output.dims, label_filename=output.label_filename),),
        instance_groups=(),
        dynamic_batching=None,
        warmup_batch_sizes=(),
        ensemble_steps=(
            EnsembleStepSpec(preprocess_name(engine.name), input_map=((IMAGE_INPUT, IMAGE_INPUT),), output_map=((PIXELS, PIXELS),)),
            EnsembleStepSpec(engine.name, input_map=((pixels.name, PIXELS),), output_map=((output.name, output.name),)),
        ),
    )
