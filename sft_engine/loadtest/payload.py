"""The request every worker sends, built once from the model's own configuration.

Why prebuilt: tritonclient's ``infer()`` rebuilds the request - protobuf message or
JSON header plus a copy of every tensor - on each call. A load generator that does
that spends its CPU on request construction instead of on sending. Here the
complete wire request is built once: the serialized ``ModelInferRequest`` (with
tritonclient's protobuf definitions) for gRPC, the JSON header plus raw tensor
bytes of Triton's binary-tensor extension for HTTP. Workers send those bytes as is.

The inputs come from ``get_model_config``, read by the shared reader
(``sft_engine.triton.model.ServedModel``): names, data types and dims (without the
batch dimension when ``max_batch_size > 0``). Data is random (seeded) unless an
``.npz`` file gives it. Shapes that cannot fit the model fail here, before any load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sft_engine.errors import ConfigError, LoadTestError
from sft_engine.triton.model import ServedModel, ServedTensor, model_path, numpy_dtype

__all__ = ["Payload", "build_payload", "build_image_payload", "image_files"]


@dataclass(frozen=True)
class Payload:
    """A complete inference request on the wire, for both protocols.

    ``more`` holds further requests that the transports send in turn with this one
    (``--images``: one request per image file, round-robin); ``input_bytes`` is then
    the mean over all of them.
    """

    model: str
    version: str
    batch_size: int
    input_shapes: dict[str, tuple[int, ...]]
    input_bytes: int
    grpc_request: bytes
    http_path: str
    http_body: bytes
    http_headers: dict[str, str] = field(default_factory=dict)
    more: tuple["Payload", ...] = ()

    @property
    def variants(self) -> list["Payload"]:
        return [self, *self.more]

    def request_bytes(self, protocol: str) -> int:
        """Mean size of one request's body on the wire (gRPC message, or HTTP header + tensors)."""
        sizes = [len(p.grpc_request) if protocol == "grpc" else len(p.http_body) for p in self.variants]
        return int(round(sum(sizes) / len(sizes)))


def _resolve_shape(tensor: ServedTensor, spec: ServedModel, batch_size: int, given: tuple[int, ...] | None) -> tuple[int, ...]:
    dims = tensor.dims
    if given is not None:
        if len(given) != len(dims) or any(d != -1 and d != g for d, g in zip(dims, given)):
            raise ConfigError(
                f"input '{tensor.name}' shape {list(given)} does not match the model's dims {list(dims)}",
                hint="give --shape NAME:d1,d2 with the model's rank and fixed dims (without the batch dimension)",
            )
        if any(g < 1 for g in given):
            raise ConfigError(f"input '{tensor.name}' shape {list(given)} has a dimension < 1", hint="use positive dims")
        dims = given
    elif any(d < 0 for d in dims):
        raise ConfigError(
            f"input '{tensor.name}' has variable dims {list(dims)}",
            hint=f"say which shape to send: --shape {tensor.name}:" + ",".join("8" if d < 0 else str(d) for d in dims),
        )
    return ((batch_size,) + tuple(dims)) if spec.max_batch_size > 0 else tuple(dims)


def _random_tensor(datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    dtype = numpy_dtype(datatype)
    if dtype is None:
        raise ConfigError(f"input data type {datatype} is not supported by the load generator", hint="use a model with numeric or BYTES inputs")
    if datatype == "BYTES":
        flat = np.array([b"x" * 8 for _ in range(int(np.prod(shape)) if shape else 1)], dtype=np.object_)
        return flat.reshape(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 100, size=shape).astype(dtype)
    return rng.random(size=shape).astype(dtype)


def _given_tensor(tensor: ServedTensor, spec: ServedModel, batch_size: int, array: np.ndarray) -> np.ndarray:
    dims = tensor.dims
    batched = spec.max_batch_size > 0
    fits_dims = len(array.shape) == len(dims) and all(d < 0 or d == s for d, s in zip(dims, array.shape))
    if batched and fits_dims:
        array = np.repeat(array[np.newaxis, ...], batch_size, axis=0)
    elif batched and (len(array.shape) == len(dims) + 1 and all(d < 0 or d == s for d, s in zip(dims, array.shape[1:]))):
        if array.shape[0] != batch_size:
            array = np.resize(array, (batch_size,) + array.shape[1:])
    elif not (not batched and fits_dims):
        raise ConfigError(
            f"--input-data '{tensor.name}' has shape {list(array.shape)}, which does not match the model's dims {list(dims)}",
            hint="give an array of the input's dims, with or without the batch dimension",
        )
    if tensor.datatype == "BYTES":
        return array.astype(np.object_)
    target = numpy_dtype(tensor.datatype)
    if target is None or not np.can_cast(array.dtype, target, casting="same_kind"):
        raise ConfigError(f"--input-data '{tensor.name}' has dtype {array.dtype}, the model wants {tensor.datatype}",
                          hint="save the array with the model's dtype")
    return array.astype(target)


def _wire_bytes(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        from tritonclient.utils import serialize_byte_tensor

        serialized = serialize_byte_tensor(array)
        return serialized.item() if serialized.size else b""
    return np.ascontiguousarray(array).tobytes()


def build_payload(
    spec: ServedModel,
    batch_size: int = 1,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    input_data: Path | None = None,
    seed: int = 0,
    given_arrays: Mapping[str, np.ndarray] | None = None,
) -> Payload:
    """Check the request against the model and build it for both protocols (``given_arrays``: data by input name)."""
    shapes = dict(shapes or {})
    unknown = sorted(set(shapes) - {t.name for t in spec.inputs})
    if unknown:
        raise ConfigError(f"--shape names unknown input(s) {', '.join(unknown)}", hint=f"the model's inputs are: {', '.join(t.name for t in spec.inputs)}")
    if spec.max_batch_size == 0 and batch_size != 1:
        raise ConfigError(f"model '{spec.name}' does not batch (max_batch_size 0), but --batch-size is {batch_size}", hint="use --batch-size 1")
    if spec.max_batch_size > 0 and batch_size > spec.max_batch_size:
        raise ConfigError(f"--batch-size {batch_size} exceeds model '{spec.name}' max_batch_size {spec.max_batch_size}",
                          hint=f"use --batch-size 1..{spec.max_batch_size}")
    if not spec.inputs:
        raise LoadTestError(f"model '{spec.name}' declares no inputs in its config", hint="the load generator needs the input names, types and dims")
    given: dict[str, np.ndarray] = dict(given_arrays or {})
    if input_data is not None:
        try:
            with np.load(input_data, allow_pickle=False) as npz:
                given = {name: npz[name] for name in npz.files}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--input-data {input_data} cannot be read: {exc}", hint="give an .npz written by numpy.savez") from None
    rng = np.random.default_rng(seed)

    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=spec.name, model_version=spec.version)
    header_inputs = []
    blobs = []
    input_shapes: dict[str, tuple[int, ...]] = {}
    for tensor in spec.inputs:
        if tensor.name in given:
            array = _given_tensor(tensor, spec, batch_size, given[tensor.name])
            shape = tuple(int(s) for s in array.shape)
        elif tensor.optional and tensor.name not in shapes:
            continue
        else:
            shape = _resolve_shape(tensor, spec, batch_size, shapes.get(tensor.name))
            array = _random_tensor(tensor.datatype, shape, rng)
        blob = _wire_bytes(array, tensor.datatype)
        entry = request.inputs.add()
        entry.name, entry.datatype = tensor.name, tensor.datatype
        entry.shape.extend(shape)
        request.raw_input_contents.append(blob)
        header_inputs.append({"name": tensor.name, "shape": list(shape), "datatype": tensor.datatype, "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
        input_shapes[tensor.name] = shape
    missing = sorted(set(given) - {t.name for t in spec.inputs})
    if missing:
        raise ConfigError(f"--input-data has array(s) {', '.join(missing)} the model does not take",
                          hint=f"the model's inputs are: {', '.join(t.name for t in spec.inputs)}")
    header: dict[str, Any] = {"inputs": header_inputs}
    if spec.outputs:
        header["outputs"] = [{"name": t.name, "parameters": {"binary_data": True}} for t in spec.outputs]
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    path = model_path(spec.name, spec.version) + "/infer"
    return Payload(
        model=spec.name,
        version=spec.version,
        batch_size=batch_size,
        input_shapes=input_shapes,
        input_bytes=int(sum(len(b) for b in blobs)),
        grpc_request=request.SerializeToString(),
        http_path=path,
        http_body=header_bytes + b"".join(blobs),
        http_headers={"Inference-Header-Content-Length": str(len(header_bytes)), "Content-Type": "application/octet-stream"},
    )


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def image_files(folder: Path) -> list[Path]:
    """The image files of ``folder`` (PNG, JPEG, WebP; sorted), or a one-line error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"--images {folder} is not a directory", hint="give a directory of PNG, JPEG or WebP files")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"--images {folder} holds no .png, .jpg, .jpeg or .webp file", hint="put the images to send in it")
    return files


def build_image_payload(spec: ServedModel, files: list[Path], batch_size: int = 1) -> Payload:
    """One request per image file (``batch_size`` copies of it per request), for a model whose one input is BYTES.

    The files are sent as they are, round-robin, so the server decodes real images of
    real sizes (``<name>_image`` of an sft-engine build, or any model taking encoded files).
    """
    inputs = [t for t in spec.inputs if not t.optional]
    if len(inputs) != 1 or inputs[0].datatype != "BYTES":
        described = ", ".join(f"{t.name} {t.datatype}" for t in spec.inputs) or "none"
        raise ConfigError(f"--images sends image files, but model '{spec.name}' takes {described}",
                          hint="load the model's <name>_image ensemble (one BYTES input), or drop --images")
    tensor = inputs[0]
    if any(d not in (1, -1) for d in tensor.dims):
        raise ConfigError(f"--images sends one file per item, but input '{tensor.name}' has dims {list(tensor.dims)}", hint="use a model whose input dims are [1]")
    payloads = []
    for path in files:
        data = path.read_bytes()
        array = np.empty((batch_size, 1) if spec.max_batch_size > 0 else (1,), dtype=np.object_)
        array.fill(data)
        payloads.append(build_payload(spec, batch_size, {tensor.name: (1,)} if -1 in tensor.dims else None, given_arrays={tensor.name: array}))
    first = payloads[0]
    mean_input = int(round(sum(p.input_bytes for p in payloads) / len(payloads)))
    return Payload(first.model, first.version, first.batch_size, first.input_shapes, mean_input, first.grpc_request, first.http_path,
                   first.http_body, first.http_headers, more=tuple(payloads[1:]))

