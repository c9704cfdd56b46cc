"""Parity and accuracy gates: does the engine compute what the eager model computes?

Run before anything is published. The eager FP32 PyTorch model is the reference; the
engine runs on the same inputs (random tensors, plus the calibration images when
given). Recorded: max and mean absolute logit difference, top-1 agreement, and, with
labelled calibration data, both accuracies and the drop.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from sft_engine.errors import ConfigError, ParityError
from sft_engine.preprocess import Preprocessing

__all__ = [
    "Runner", "Check", "ParityReport", "ParityData", "Tolerance", "check_parity", "run_checks", "parity_inputs", "class_indices",
    "eager_logits", "CALIBRATION_SUFFIXES", "CHECK_BATCH", "FP16_TOLERANCE", "BF16_TOLERANCE", "INT8_TOLERANCE", "FP8_TOLERANCE",
    "keeping_user_values",
]

#: in-process runner: NCHW float32 batch → logits (float32)
Runner = Callable[[np.ndarray], np.ndarray]
#: the largest batch a build's parity check sends to an engine (less when the engine's max batch is smaller)
CHECK_BATCH = 16

LOGGER = logging.getLogger(__name__)
#: image files a calibration directory is read for
CALIBRATION_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm"})
_DECIMAL = re.compile(r"[0-9]+")
#: fractions of a few hundred images are not exact in binary: 2 of 400 is a drop of 0.5000000000000004 points
_EPS = 1e-9


@dataclass(frozen=True)
class Tolerance:
    """Pass when ``max|engine - eager| <= atol + rtol * max|eager|`` and top-1 agreement is high enough.

    ``max_accuracy_drop`` (points) applies only when labelled calibration data exists.
    """

    atol: float = 1e-3
    rtol: float = 1e-3
    min_top1_agreement: float = 0.99
    max_accuracy_drop: float = 0.3


#: half-precision parity: logits may move by ~1e-2 relative; what must hold is the decision
FP16_TOLERANCE = Tolerance(atol=1e-2, rtol=1e-2, min_top1_agreement=0.995, max_accuracy_drop=0.3)

#: bfloat16 keeps 8 mantissa bits to FP16's 11, so logits move several times further
#: (ResNet-50: ~0.5% of the largest logit); the decision gate is as strict as FP16's
BF16_TOLERANCE = Tolerance(atol=5e-2, rtol=3e-2, min_top1_agreement=0.995, max_accuracy_drop=0.3)

#: INT8 moves logits by a few per cent of their range (quantized activations), so logit
#: distance is recorded, not gated (bounded only by the logits' own scale, which catches a
#: broken engine); what must hold is the decision, on held-out images the quantizer never saw
INT8_TOLERANCE = Tolerance(atol=0.0, rtol=1.0, min_top1_agreement=0.99, max_accuracy_drop=0.5)

#: FP8 (E4M3, TensorRT on Ada/Hopper) is quantized like INT8, per tensor: the same decision gate
FP8_TOLERANCE = INT8_TOLERANCE

# BuildConfig field (as recorded in ``cfg.source``) → Tolerance field
_TOLERANCE_FIELDS = {
    "parity_atol": "atol",
    "parity_rtol": "rtol",
    "parity_min_top1_agreement": "min_top1_agreement",
    "accuracy_max_drop": "max_accuracy_drop",
}


def keeping_user_values(gate: Tolerance | None, given: Tolerance, source: Mapping[str, Any]) -> Tolerance:
    """``gate`` (a precision's default gate), keeping each value the user set; ``given`` itself when there is no gate.

    ``given`` is the build's tolerance; ``source`` (``BuildConfig.source``) names the
    settings the user gave, which win over the reduced-precision defaults. Which gate a
    precision has is its record's (``engines.precision.PRECISIONS``).
    """
    if gate is None:
        return given
    return replace(gate, **{name: getattr(given, name) for key, name in _TOLERANCE_FIELDS.items() if key in source})


@dataclass(frozen=True)
class Check:
    """One runner an exporter hands over to be judged against the eager model.

    ``label`` names the engine in its parity report (``tensorrt-fp16@sm90``); ``key``
    files the report in a per-check map of the manifest (compute capability of a plan);
    ``subject`` and ``against`` word the error when it fails ("the FP16 TensorRT plan
    disagrees with eager FP32 on H200").
    """

    label: str
    runner: Runner
    key: str = ""
    subject: str = ""
    against: str = "the eager model"


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
    #: the gate this report was judged by (reduced-precision engines have looser ones)
    tolerance: dict[str, float] | None = None

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
    """Inputs for the gate; ``labels`` only for labelled calibration images.

    ``files``: for labelled images, each input's path relative to the calibration
    directory (what an INT8 build splits into calibration and gate images, and hashes).
    """

    inputs: np.ndarray
    labels: np.ndarray | None = None
    files: tuple[str, ...] | None = None


def parity_inputs(
    prep: Preprocessing,
    samples: int,
    calibration_dir: Path | None,
    seed: int = 0,
    labels: Sequence[str] | None = None,
) -> ParityData:
    """Random normalized tensors plus the calibration images; labelled images (class folders) replace the random ones.

    ``labels`` (the model's, in class-index order) say which class each folder is:
    see ``class_indices``. Without them the folders are taken in sorted order.
    """
    rng = np.random.default_rng(seed)
    random = rng.standard_normal((samples, *prep.shape)).astype(np.float32)
    if calibration_dir is None:
        return ParityData(random)
    calibration_dir = Path(calibration_dir)
    if not calibration_dir.is_dir():
        raise ConfigError(f"calibration directory {calibration_dir} does not exist", hint="pass --calibration DIR with images")
    try:
        next(iter(calibration_dir.iterdir()), None)
    except OSError as exc:
        raise ConfigError(f"calibration directory {calibration_dir} cannot be read: {exc.strerror or exc}", hint="make it readable, or pass another --calibration DIR") from None
    files = sorted(p for p in calibration_dir.rglob("*") if p.suffix.lower() in CALIBRATION_SUFFIXES and p.is_file())
    if not files:
        raise ConfigError(f"calibration directory {calibration_dir} holds no images", hint="put PNG or JPEG files in it")
    folders = [p.relative_to(calibration_dir).parts[0] if p.parent != calibration_dir else None for p in files]
    if all(folder is not None for folder in folders):
        index = class_indices({f for f in folders if f is not None}, labels, calibration_dir)
        return ParityData(prep.batch(files), np.array([index[f] for f in folders if f is not None], dtype=np.int64),
                          tuple(p.relative_to(calibration_dir).as_posix() for p in files))
    return ParityData(np.concatenate([random, prep.batch(files)]))


def class_indices(folders: Iterable[str], labels: Sequence[str] | None, where: Path) -> dict[str, int]:
    """The class index of each class folder of a labelled calibration directory.

    A folder named after a label is that label's class; otherwise a folder named by a
    class index (``0`` .. ``N-1``) is that class. Folder names alone cannot say which
    class an unnamed folder is once a class has no folder, or when the names do not
    sort in label order, so sorted order is used only as the last resort where it is
    unambiguous in count: no labels given, or no folder matching any label while
    there is exactly one folder per class. Anything else is refused rather than
    scored against the wrong labels.
    """
    names = sorted(set(folders))
    if labels is None:
        return {name: i for i, name in enumerate(names)}
    by_label: dict[str, int] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(str(label), i)
    index: dict[str, int] = {}
    unknown: list[str] = []
    for name in names:
        if name in by_label:
            index[name] = by_label[name]
        elif _DECIMAL.fullmatch(name) and int(name) < len(labels):
            index[name] = int(name)
        else:
            unknown.append(name)
    if not unknown:
        return index
    if not index and len(names) == len(labels):
        LOGGER.warning("class folders of %s name no label; taking them as the %d classes in sorted order", where, len(names))
        return {name: i for i, name in enumerate(names)}
    more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
    raise ConfigError(
        f"calibration folder {unknown[0]!r} in {where} names no class: not a label and not a class index 0..{len(labels) - 1}{more}",
        hint="name each class folder after its label, as in the labels file, or after its class index",
    )


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
    if agreement < tolerance.min_top1_agreement - _EPS:
        reasons.append(f"top-1 agreement {agreement:.2%} < {tolerance.min_top1_agreement:.2%}")
    eager_acc = engine_acc = None
    if data.labels is not None:
        eager_acc = float((reference.argmax(1) == data.labels).mean())
        engine_acc = float((got.argmax(1) == data.labels).mean())
        if (eager_acc - engine_acc) * 100 > tolerance.max_accuracy_drop + _EPS:
            reasons.append(f"accuracy drop {(eager_acc - engine_acc) * 100:.2f} points > {tolerance.max_accuracy_drop}")
    report = ParityReport(
        engine=engine, samples=len(got), max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()),
        allowed_abs_diff=allowed, top1_agreement=agreement, eager_accuracy=eager_acc, engine_accuracy=engine_acc,
        passed=not reasons, reasons=reasons, tolerance=asdict(tolerance),
    )
    LOGGER.info("parity %s", report.summary())
    return report


def run_checks(
    checks: Sequence[Check],
    reference: np.ndarray,
    data: ParityData,
    tolerance: Tolerance,
    batch_size: int = CHECK_BATCH,
    raise_on_failure: bool = False,
) -> list[ParityReport]:
    """Judge each check's runner against the eager ``reference``; with ``raise_on_failure`` a failure is a ParityError.

    The error names the check (its ``subject`` against what) and the reasons, and says
    that nothing was published; it carries the report.
    """
    reports = []
    for check in checks:
        report = check_parity(check.label, reference, check.runner, data, tolerance, batch_size=batch_size)
        if raise_on_failure and not report.passed:
            raise ParityError(f"{check.subject or check.label} disagrees with {check.against}: {', '.join(report.reasons)}",
                              hint="nothing was published; check the model, or pass --parity-atol / --parity-min-top1-agreement to loosen the gate",
                              report=report.to_dict())
        reports.append(report)
    return reports
