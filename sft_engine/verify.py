"""Parity and accuracy gates: does the engine compute what the eager model computes?

Run before anything is published. The eager FP32 PyTorch model is the reference; the
engine runs on the same inputs (random tensors, plus the calibration images when
given). Recorded: max and mean absolute logit difference, top-1 agreement, and, with
labelled calibration data, both accuracies and the drop.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sft_engine.engines.base import Runner
from sft_engine.errors import ConfigError, ParityError
from sft_engine.preprocess import Preprocessing

__all__ = ["ParityReport", "Tolerance", "check_parity", "parity_inputs", "eager_logits"]

LOGGER = logging.getLogger(__name__)
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm"}


@dataclass(frozen=True)
class Tolerance:
    """Pass when ``max|engine - eager| <= atol + rtol * max|eager|`` and top-1 agreement is high enough.

    ``max_accuracy_drop`` (points) applies only when labelled calibration data exists.
    """

    atol: float = 1e-3
    rtol: float = 1e-3
    min_top1_agreement: float = 0.99
    max_accuracy_drop: float = 0.3


@dataclass
class ParityReport:
    engine: str
    samples: int
    max_abs_diff: float
    mean_abs_diff: float
    allowed_abs_diff: float
    top1_agreement: float
    eager_accuracy: float | None
    engine_accuracy: float | None
    passed: bool
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        text = (
            f"{self.engine}: max|diff| {self.max_abs_diff:.3g} (allowed {self.allowed_abs_diff:.3g}), "
            f"top-1 agreement {self.top1_agreement:.2%} on {self.samples} inputs"
        )
        if self.eager_accuracy is not None:
            text += f", accuracy {self.engine_accuracy:.2%} vs eager {self.eager_accuracy:.2%}"
        return text


@dataclass
class ParityData:
    """Inputs for the gate; ``labels`` only for labelled calibration images."""

    inputs: np.ndarray
    labels: np.ndarray | None = None


def parity_inputs(prep: Preprocessing, samples: int, calibration_dir: Path | None, seed: int = 0) -> ParityData:
    """Random normalized tensors plus the calibration images; labelled images (class folders) replace the random ones."""
    rng = np.random.default_rng(seed)
    random = rng.standard_normal((samples, *prep.shape)).astype(np.float32)
    if calibration_dir is None:
        return ParityData(random)
    calibration_dir = Path(calibration_dir)
    if not calibration_dir.is_dir():
        raise ConfigError(f"calibration directory {calibration_dir} does not exist", hint="pass --calibration DIR with images")
    files = sorted(p for p in calibration_dir.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"calibration directory {calibration_dir} holds no images", hint="put PNG or JPEG files in it")
    images = prep.batch(files)
    classes = sorted({p.parent.name for p in files if p.parent != calibration_dir})
    labels = None
    if classes and all(p.parent != calibration_dir for p in files):
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[p.parent.name] for p in files])
        return ParityData(images, labels)
    return ParityData(np.concatenate([random, images]))


def eager_logits(model: nn.Module, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Reference FP32 logits from the eager model."""
    outs = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            outs.append(model(torch.from_numpy(inputs[start:start + batch_size])).float().numpy())
    return np.concatenate(outs)


def check_parity(
    engine: str,
    reference: np.ndarray,
    runner: Runner,
    data: ParityData,
    tolerance: Tolerance,
    batch_size: int,
) -> ParityReport:
    """Compare ``runner`` against the eager ``reference`` logits for ``data``."""
    outs = [np.asarray(runner(np.ascontiguousarray(data.inputs[i:i + batch_size])), dtype=np.float32) for i in range(0, len(data.inputs), batch_size)]
    got = np.concatenate(outs)
    if got.shape != reference.shape:
        raise ParityError(f"{engine} returns shape {got.shape}, eager model {reference.shape}", hint="report this as a bug")
    diff = np.abs(got - reference)
    allowed = tolerance.atol + tolerance.rtol * float(np.abs(reference).max())
    agreement = float((got.argmax(1) == reference.argmax(1)).mean())
    reasons = []
    if not np.isfinite(got).all():
        reasons.append("engine produced non-finite values")
    if float(diff.max()) > allowed:
        reasons.append(f"max|diff| {float(diff.max()):.3g} > {allowed:.3g}")
    if agreement < tolerance.min_top1_agreement:
        reasons.append(f"top-1 agreement {agreement:.2%} < {tolerance.min_top1_agreement:.2%}")
    eager_acc = engine_acc = None
    if data.labels is not None:
        eager_acc = float((reference.argmax(1) == data.labels).mean())
        engine_acc = float((got.argmax(1) == data.labels).mean())
        if (eager_acc - engine_acc) * 100 > tolerance.max_accuracy_drop:
            reasons.append(f"accuracy drop {(eager_acc - engine_acc) * 100:.2f} points > {tolerance.max_accuracy_drop}")
    report = ParityReport(
        engine=engine, samples=len(got), max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()),
        allowed_abs_diff=allowed, top1_agreement=agreement, eager_accuracy=eager_acc, engine_accuracy=engine_acc,
        passed=not reasons, reasons=reasons,
    )
    LOGGER.info("parity %s", report.summary())
    return report
