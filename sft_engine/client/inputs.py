"""From what a caller hands over to what a request carries, checked before anything is sent.

``classify`` accepts images in several forms and ``infer`` ready tensors; both end up
as numpy arrays of the model's input dtype and shape, split into chunks no larger
than the model's ``max_batch_size``. Every mismatch is a ``BadInput`` that says what
was expected and what was given, raised on the client: the server would reject the
same request, but later, less clearly, and after the bytes crossed the network.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from sft_engine.client.errors import BadInput
from sft_engine.client.model_info import ModelInfo
from sft_engine.errors import ConfigError

__all__ = ["Plan", "plan_classify", "check_batch", "check_top_k", "to_numpy", "chunks", "image_chunks", "preprocess_chunk", "window_for", "WINDOW_BYTES"]

#: input bytes ``classify`` prepares before sending them (about 5,000 32×32 or 100 224×224 images)
WINDOW_BYTES = 64 << 20


def to_numpy(value: Any) -> Any:
    """A torch tensor as numpy (no copy on CPU); anything else unchanged.

    torch is looked up only when it is already imported: a caller holding a tensor
    has imported it, and the client itself stays free of a torch import.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value


def check_top_k(k: Any) -> int:
    """``classify``'s ``top_k``: an integer >= 1 (not a bool, which is an int to Python)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise BadInput(f"top_k must be an integer >= 1, given {k!r}", hint="e.g. --top-k 5 (top_k=5 in Python)", expected=">= 1", given=k)
    return int(k)


def check_batch(array: Any, info: ModelInfo, *, split: bool = True) -> np.ndarray:
    """A ready batch checked against the model: rank, dims, dtype, and (``split=False``) size."""
    if (type(array) is np.ndarray and array.shape[1:] == info.input_dims and array.dtype == info.input_dtype
            and 0 < len(array) and (split or len(array) <= info.chunk_size) and array.flags.c_contiguous):
        return array  # the common case, checked without building any message
    array = to_numpy(array)
    if not isinstance(array, np.ndarray):
        raise BadInput(f"infer() takes a numpy array or torch tensor, got {type(array).__name__}", hint="stack the items: np.stack(items)",
                       expected="numpy.ndarray", given=type(array).__name__)
    expected_shape = info.batch_shape()
    if array.ndim != len(expected_shape):
        hint = "add the batch dimension: x[None]" if array.ndim == len(info.input_dims) else f"pass shape {expected_shape}"
        raise BadInput(f"input for model {info.name!r} must have shape {expected_shape}, given {list(array.shape)}", hint=hint,
                       expected=expected_shape, given=list(array.shape))
    for want, got in zip(info.input_dims, array.shape[1:]):
        if want >= 0 and want != got:
            raise BadInput(f"input for model {info.name!r} must have shape {expected_shape}, given {list(array.shape)}",
                           hint="resize the items, or pass images to classify() which resizes them", expected=expected_shape, given=list(array.shape))
    if array.shape[0] < 1:
        raise BadInput(f"input for model {info.name!r} is an empty batch", hint="pass at least one item", expected=expected_shape, given=list(array.shape))
    dtype = info.input_dtype
    if array.dtype != dtype:
        raise BadInput(f"input for model {info.name!r} must be {info.input_datatype} ({dtype}), given {array.dtype}",
                       hint=f"convert it: x.astype(np.{dtype})", expected=str(dtype), given=str(array.dtype))
    if not split and array.shape[0] > info.chunk_size:
        raise BadInput(f"batch of {array.shape[0]} exceeds model {info.name!r}'s max_batch_size {info.max_batch_size}",
                       hint="pass split=True to send it in chunks", expected=f"<= {info.chunk_size}", given=array.shape[0])
    return np.ascontiguousarray(array)


def chunks(array: np.ndarray, size: int) -> list[np.ndarray]:
    """Views of at most ``size`` items each, in order (contiguous: slices of axis 0)."""
    return [array[i:i + size] for i in range(0, len(array), size)]


@dataclass(frozen=True)
class Plan:
    """What ``classify`` will send: a ready batch, or images to preprocess chunk by chunk."""

    ready: np.ndarray | None
    images: Sequence[Any]

    def __len__(self) -> int:
        return len(self.ready) if self.ready is not None else len(self.images)


def _is_image(item: Any) -> bool:
    if isinstance(item, (str, Path)):
        return True
    if isinstance(item, np.ndarray):
        return item.dtype == np.uint8 and item.ndim in (2, 3)
    return type(item).__module__.startswith("PIL.") and hasattr(item, "convert")


def plan_classify(images: Any, info: ModelInfo) -> Plan:
    """Sort ``images`` into a ready float batch or a list of images (one or many)."""
    images = to_numpy(images)
    if isinstance(images, np.ndarray):
        if images.dtype == np.uint8:
            if images.ndim in (2, 3):
                return Plan(None, [images])
            if images.ndim == 4:
                return Plan(None, list(images))
            raise BadInput(f"uint8 images must be HW, HWC or NHWC, given shape {list(images.shape)}", hint="pass pixels as height × width × 3",
                           expected="HWC or NHWC uint8", given=list(images.shape))
        if np.issubdtype(images.dtype, np.floating):
            return Plan(check_batch(images, info), ())
        raise BadInput(f"cannot classify a {images.dtype} array", hint="pass uint8 pixels (HWC) or a ready NCHW float32 batch",
                       expected="uint8 HWC or float32 NCHW", given=str(images.dtype))
    if _is_image(images):
        return Plan(None, [images])
    if isinstance(images, (list, tuple)) or (hasattr(images, "__iter__") and not isinstance(images, (bytes, dict))):
        items = [to_numpy(item) for item in images]
        if not items:
            raise BadInput("no images given", hint="pass at least one image", expected=">= 1 image", given=0)
        for i, item in enumerate(items):
            if not _is_image(item):
                given = f"{item.dtype} {list(item.shape)}" if isinstance(item, np.ndarray) else type(item).__name__
                raise BadInput(f"item {i} is not an image: {given}", hint="pass file paths, PIL images or HWC uint8 arrays; or one NCHW float32 batch",
                               expected="path, PIL image or HWC uint8 array", given=given)
        return Plan(None, items)
    raise BadInput(f"cannot classify a {type(images).__name__}", hint="pass file paths, PIL images, HWC uint8 arrays or an NCHW float32 batch",
                   expected="images or an NCHW batch", given=type(images).__name__)


def preprocess_chunk(images: Sequence[Any], info: ModelInfo) -> np.ndarray:
    """Images → the model's input batch, with exactly the preprocessing recorded at build time."""
    prep = info.preprocessing
    if prep is None:
        raise BadInput(f"model {info.name!r} records no preprocessing, so the client cannot turn images into its input",
                       hint="pass a ready NCHW float32 batch, or rebuild the model with sft-engine build", expected="an NCHW batch", given="images")
    if tuple(info.input_dims) != prep.shape:
        raise BadInput(f"model {info.name!r} takes {list(info.input_dims)} but its preprocessing makes {list(prep.shape)}",
                       hint="rebuild the model with sft-engine build", expected=list(info.input_dims), given=list(prep.shape))
    try:
        batch = prep.batch(images)
    except ConfigError as exc:  # unreadable file, wrong pixel type: the caller's input
        raise BadInput(exc.message, exc.hint, expected="a readable image", given=None) from exc
    return batch.astype(info.input_dtype, copy=False)


def image_chunks(images: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(images), size):
        yield images[i:i + size]


def window_for(info: ModelInfo, chunk_count: int, minimum: int) -> int:
    """Chunks per preparation window: about ``WINDOW_BYTES`` of prepared input, at least ``minimum``."""
    chunk_bytes = (info.static_input_bytes() or 3 * 224 * 224 * 4) * info.chunk_size
    return max(minimum, min(chunk_count, WINDOW_BYTES // max(chunk_bytes, 1)))
