"""``classify(..., server_side=True)``: send the image files themselves to ``<model>_image``.

The build publishes ``<model>_image`` (an ensemble: decode and preprocess on the
server, then the engine) beside every engine. Sending the encoded file instead of the
float tensor makes requests 10-100× smaller and the client nearly free of work; the
pixels the engine sees are the same, because the server's preprocessing is the
client's (``sft_engine.pixels``). What is sent: a file path's bytes as they are on
disk, ``bytes`` as given; a PIL image or uint8 array is encoded as PNG (lossless, so
its pixels arrive unchanged). A ready float tensor has nothing to decode and stays a
client-side call.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sft_engine.client.errors import BadInput, ClientError, ModelNotFound
from sft_engine.client.inputs import to_numpy
from sft_engine.client.model_info import ModelInfo
from sft_engine.repository.image_models import IMAGE_INPUT, image_name

__all__ = ["image_model", "encode_images", "byte_batches", "check_image_model", "missing_image_model", "pinned_version", "send_files", "send_files_async"]


def image_model(model: str) -> str:
    """The ensemble that answers image files for ``model``."""
    return image_name(model)


def _encode_one(item: Any, index: int) -> bytes:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, (str, Path)):
        try:
            return Path(item).read_bytes()
        except FileNotFoundError:
            raise BadInput(f"image {item} does not exist", hint="check the path", expected="an image file", given=str(item)) from None
        except OSError as exc:
            raise BadInput(f"image {item} cannot be read: {exc.strerror or exc}", hint="check the path and its permissions",
                           expected="a readable file", given=str(item)) from None
    item = to_numpy(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim in (2, 3):
        from PIL import Image

        item = Image.fromarray(item)
    if type(item).__module__.startswith("PIL.") and hasattr(item, "save"):
        buf = io.BytesIO()
        item.save(buf, format="PNG", compress_level=1)
        return buf.getvalue()
    given = f"{item.dtype} {list(item.shape)}" if isinstance(item, np.ndarray) else type(item).__name__
    raise BadInput(f"item {index} cannot be sent as an image file: {given}",
                   hint="server-side classify takes file paths, bytes, PIL images or HWC uint8 arrays; send tensors with server_side=False",
                   expected="path, bytes, PIL image or HWC uint8 array", given=given)


def encode_images(images: Any) -> list[bytes]:
    """One encoded file per image, in order; one item or a sequence (or an NHWC uint8 array)."""
    images = to_numpy(images)
    if isinstance(images, np.ndarray):
        if images.dtype == np.uint8 and images.ndim == 4:
            return [_encode_one(item, i) for i, item in enumerate(images)]
        return [_encode_one(images, 0)]
    if isinstance(images, (str, Path, bytes, bytearray, memoryview)) or hasattr(images, "save"):
        return [_encode_one(images, 0)]
    if isinstance(images, Sequence) or (hasattr(images, "__iter__") and not isinstance(images, dict)):
        items = [_encode_one(item, i) for i, item in enumerate(images)]
        if not items:
            raise BadInput("no images given", hint="pass at least one image", expected=">= 1 image", given=0)
        return items
    return [_encode_one(images, 0)]


def byte_batches(blobs: Sequence[bytes], size: int) -> list[np.ndarray]:
    """BYTES requests of at most ``size`` images each: object arrays of shape ``[n, 1]``."""
    out = []
    for start in range(0, len(blobs), size):
        part = blobs[start:start + size]
        array = np.empty((len(part), 1), dtype=object)
        for i, data in enumerate(part):
            array[i, 0] = data
        out.append(array)
    return out


def check_image_model(info: ModelInfo) -> ModelInfo:
    """The ensemble has the interface the build gives it (one BYTES input ``IMAGE``)."""
    if info.input_name != IMAGE_INPUT or info.input_datatype != "BYTES":
        raise ClientError(f"model {info.name!r} takes {info.input_name} {info.input_datatype}, not image files ({IMAGE_INPUT} BYTES)",
                          hint="rebuild the model with sft-engine build, or classify client-side (server_side=False)")
    return info


def missing_image_model(exc: ModelNotFound, model: str) -> ClientError:
    """The error for a server without ``<model>_image`` (a repository built before image serving)."""
    err = ModelNotFound(f"the server has no model {image_model(model)!r}, which server-side classify sends image files to",
                        hint="rebuild the model with this sft-engine (every build publishes it), or classify client-side (server_side=False)",
                        status=exc.status)
    return err


def pinned_version(model: str, version: str) -> None:
    """Server-side classify follows the ensemble, which serves the latest engine version."""
    if version:
        raise BadInput(f"server-side classify of {model!r} uses its latest version, but the client is pinned to version {version}",
                       hint="classify client-side (server_side=False) to use a pinned version", expected="no pinned version", given=version)


def send_files(transport: Any, info: ModelInfo, blobs: Sequence[bytes], retrying: Any) -> np.ndarray:
    """Every chunk in flight at once (``transport.submit``), a failed one retried per policy; logits in order."""
    target = info.target()
    arrays = byte_batches(blobs, info.chunk_size)
    futures = [transport.submit(target, array) for array in arrays]
    outputs = []
    for array, future in zip(arrays, futures):
        try:
            outputs.append(future.result())
        except ClientError as exc:
            outputs.append(retrying(transport.infer, target, array, first_error=exc))
    return np.concatenate(outputs)


async def send_files_async(transport: Any, info: ModelInfo, blobs: Sequence[bytes], retrying: Any) -> np.ndarray:
    """``send_files`` for the asyncio transport: all chunks gathered concurrently, each under the retry policy."""
    import asyncio

    target = info.target()
    arrays = byte_batches(blobs, info.chunk_size)
    outputs = await asyncio.gather(*(retrying(lambda array=array: transport.infer(target, array), "infer") for array in arrays))
    return np.concatenate(outputs)
