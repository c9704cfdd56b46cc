"""The gate of the opt-in fast decode: DCT-scaled JPEG decoding may serve only if the engine's labels stay.

``--fast-decode`` lets the image models decode a JPEG at least twice the resize target
at 1/2, 1/4 or 1/8 of its size (``Image.draft``: libjpeg scales in the DCT domain, so
most of the decode is skipped), then resize as usual. The pixels differ slightly from
an exact decode, so it is treated like a precision: the build runs the engine it is
about to publish on its gate images (the labelled images an INT8 build judged its
engine on, or all the labelled images otherwise) decoded both ways, and refuses the
build when fewer labels agree than the INT8 gate asks (or when no gate image was large
enough to be decoded at a reduced scale, since then the gate judged nothing). What it
measured goes into the manifests of the engine and of both image models.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sft_engine.engines.calibration import files_sha256
from sft_engine.errors import ParityError, TargetUnavailable
from sft_engine.preprocess import Preprocessing
from sft_engine.verify import CHECK_BATCH, ParityData

__all__ = ["gate_fast_decode", "RECORD_KEY"]

#: the ``engine_details`` entry of the gate's figures
RECORD_KEY = "fast_decode"


def _labels(runner: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([np.asarray(runner(np.ascontiguousarray(inputs[i:i + batch]))).argmax(1) for i in range(0, len(inputs), batch)])


def gate_fast_decode(runner: Callable[[np.ndarray], np.ndarray], data: ParityData, root: Path | None, prep: Preprocessing,
                     min_agreement: float, batch_size: int = CHECK_BATCH) -> dict[str, Any]:
    """The gate's figures (for the manifest); ``ParityError`` below ``min_agreement``, ``TargetUnavailable`` without gate images.

    ``data``: the gate images, exactly preprocessed, with their ``files`` relative to
    ``root`` (the calibration directory).
    """
    if data.files is None or root is None:
        raise TargetUnavailable("--fast-decode needs labelled images to gate it, and none were given",
                                hint="pass --calibration DIR with images in one folder per class, or build without --fast-decode")
    from PIL import Image

    fast = prep.pipeline()
    fast.fast_decode = True
    drafted, arrays = 0, []
    for name in data.files:
        raw = (Path(root) / name).read_bytes()
        with Image.open(io.BytesIO(raw)) as header:
            full = header.size
        image = fast.decode(raw)
        drafted += int(image.size != full)
        arrays.append(fast.image_to_array(image))
    reduced = np.stack(arrays)
    diff = float(np.abs(reduced - data.inputs).mean()) if reduced.shape == data.inputs.shape else float("nan")
    agreement = float(np.mean(_labels(runner, data.inputs, batch_size) == _labels(runner, reduced, batch_size)))
    record = {"enabled": True, "gate_images": len(data.files), "reduced_scale_images": drafted, "top1_agreement": agreement,
              "min_top1_agreement": min_agreement, "mean_abs_input_diff": diff, "gate_files_sha256": files_sha256(data.files)}
    if drafted == 0:
        raise ParityError(f"--fast-decode: none of the {len(data.files)} gate images is a JPEG at least twice the "
                          f"{prep.resize_size or prep.input_size}-pixel target, so the gate cannot judge the reduced-scale decode",
                          hint="gate on images of the size clients send, or build without --fast-decode", report=record)
    if agreement < min_agreement:
        raise ParityError(f"--fast-decode keeps the engine's label on only {agreement:.2%} of {len(data.files)} gate images "
                          f"(at least {min_agreement:.2%} needed)", hint="nothing was published; build without --fast-decode", report=record)
    return record
