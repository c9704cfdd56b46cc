"""Which labelled images calibrate a quantized engine (INT8, FP8) and which gate it.

Why a separate gate set: post-training quantization picks its scales from the
calibration images, so agreement measured on those same images flatters the engine.
The labelled images (the fine-tune's holdout, or ``--calibration DIR`` in class folders)
are split once, deterministically: up to ``calibration_images`` calibrate, the rest
(at least ``MIN_GATE_IMAGES``) gate. Both counts and a hash of each file list go into
the build manifest, so a later check can tell which images judged the engine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from sft_engine.errors import TargetUnavailable
from sft_engine.verify import ParityData

__all__ = [
    "MIN_GATE_IMAGES", "MIN_CALIBRATION_IMAGES", "DEFAULT_CALIBRATION_IMAGES", "Int8Split", "split_for_int8", "files_sha256",
    "recorded_gate", "image_digest", "Received",
]

#: fewer gate images than this cannot resolve a 1 % agreement threshold (one image is 0.5 %)
MIN_GATE_IMAGES = 200
#: below this a quantizer's activation ranges are noise (unless the user asked for fewer)
MIN_CALIBRATION_IMAGES = 32
DEFAULT_CALIBRATION_IMAGES = 300


def files_sha256(files: Iterable[str]) -> str:
    """Hash of a list of relative paths (one per line, in the given order)."""
    return hashlib.sha256("".join(f"{f}\n" for f in files).encode()).hexdigest()


@dataclass(frozen=True)
class Int8Split:
    """The calibration images (inputs only) and the labelled gate set, with their indices into the full set."""

    calibration: np.ndarray
    calibration_files: tuple[str, ...]
    gate: ParityData
    calibration_index: np.ndarray
    gate_index: np.ndarray
    seed: int

    def describe(self) -> dict[str, Any]:
        """JSON-ready, for the manifest's ``engine_details``."""
        assert self.gate.files is not None
        return {
            "calibration_images": int(len(self.calibration)),
            "gate_images": int(len(self.gate.inputs)),
            "calibration_files_sha256": files_sha256(self.calibration_files),
            "gate_files_sha256": files_sha256(self.gate.files),
            "split_seed": self.seed,
        }


def split_for_int8(data: ParityData, calibration_images: int = DEFAULT_CALIBRATION_IMAGES, seed: int = 0,
                   min_gate: int = MIN_GATE_IMAGES) -> Int8Split:
    """Split labelled images into calibration and gate sets, or refuse (``TargetUnavailable``) saying why.

    Calibration gets ``min(calibration_images, total - min_gate)`` images drawn by a
    seeded permutation (so the same directory always splits the same way), the gate the
    rest. Refused: no labelled images, fewer than ``min_gate`` left for the gate, or a
    calibration set under ``MIN_CALIBRATION_IMAGES`` (or under the number asked for,
    when that is smaller).
    """
    if data.labels is None or data.files is None:
        raise TargetUnavailable(
            "INT8 needs labelled images to calibrate and gate it, and none were given",
            hint="pass --calibration DIR with images in one folder per class (at least 250), or --from-finetune DIR",
        )
    total = len(data.files)
    if calibration_images < 1:
        raise TargetUnavailable("INT8 calibration needs at least one image", hint="pass --int8-calibration-images 1 or more")
    n_cal = min(calibration_images, total - min_gate)
    if n_cal < min(calibration_images, MIN_CALIBRATION_IMAGES):
        need = min_gate + min(calibration_images, MIN_CALIBRATION_IMAGES)
        raise TargetUnavailable(
            f"INT8 needs at least {need} labelled images ({min_gate} to gate it, the rest to calibrate it); there are {total}",
            hint="add labelled images to the calibration directory (fine-tune with --holdout-images 512 or more)",
        )
    order = np.random.default_rng(seed).permutation(total)
    cal_index, gate_index = np.sort(order[:n_cal]), np.sort(order[n_cal:])
    gate = ParityData(np.ascontiguousarray(data.inputs[gate_index]), data.labels[gate_index],
                      tuple(data.files[i] for i in gate_index))
    return Int8Split(np.ascontiguousarray(data.inputs[cal_index]), tuple(data.files[i] for i in cal_index),
                     gate, cal_index, gate_index, seed)


def image_digest(image: np.ndarray) -> str:
    """A short content hash of one input tensor: how the images a quantizer received are named."""
    return hashlib.sha256(np.ascontiguousarray(image, dtype=np.float32).tobytes()).hexdigest()[:16]


class Received:
    """What a quantization library really pulled from its data reader, image by image.

    The manifest's split counts say what the build *meant* to hand over; this records
    what the library *took* (``describe()``: the count, the digest of every image), so
    a test - or anyone reading the manifest - can check that no gate image calibrated
    the engine.
    """

    def __init__(self) -> None:
        self.digests: list[str] = []

    def batch(self, batch: np.ndarray) -> np.ndarray:
        self.digests.extend(image_digest(image) for image in batch)
        return batch

    def describe(self) -> dict[str, Any]:
        return {"received_images": len(self.digests), "received_image_digests": list(self.digests),
                "received_sha256": hashlib.sha256("".join(self.digests).encode()).hexdigest()}


def recorded_gate(data: ParityData, record: Mapping[str, Any]) -> ParityData | None:
    """The gate images an INT8 build recorded (``engine_details.int8``), split again from ``data``.

    A later check (``rollout``) must judge an INT8 version on images its quantizer never
    saw, as the build did. None when the record is incomplete or the images changed
    (the gate's file hash no longer matches): then the caller uses all the images.
    """
    try:
        n_cal, seed, digest = int(record["calibration_images"]), int(record["split_seed"]), str(record["gate_files_sha256"])
        split = split_for_int8(data, n_cal, seed=seed, min_gate=0)
    except (KeyError, TypeError, ValueError, TargetUnavailable):
        return None
    if split.gate.files is None or files_sha256(split.gate.files) != digest:
        return None
    return split.gate
