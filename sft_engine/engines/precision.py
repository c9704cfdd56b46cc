"""Every precision an engine may compute in, by name: the one table a new precision is added to.

A precision is data, as torchvision's weights enums carry their transforms: the gate
an engine computing in it must pass (``verify``'s tolerances; FP32 engines are judged
by the build's tolerance as given), whether it needs labelled images (a quantizer
calibrates on part of them, the gate judges on the rest), the hint when no engine of
it survives, and the key of ``engine_details`` under which a build records its
calibration (what a later rollout check reads back to gate on the same images).
Targets list the precisions they build (``Target.precisions``); nothing else branches
on a precision's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from sft_engine.errors import ConfigError
from sft_engine.verify import BF16_TOLERANCE, FP8_TOLERANCE, FP16_TOLERANCE, INT8_TOLERANCE, Tolerance, keeping_user_values

__all__ = ["Precision", "PRECISIONS", "register_precision", "get_precision", "gate_for", "record_keys", "quantized"]


@dataclass(frozen=True)
class Precision:
    """One precision: its gate, whether it needs labelled images, its failure hint, its manifest record key.

    ``gate`` None: the build's own tolerance (FP32). ``failure_hint``: what to build
    instead when no engine of this precision exports or passes its gate (empty: the
    target's own hint). ``record_key``: the ``engine_details`` entry holding the
    calibration/gate split of a quantized engine (None when it has none).
    """

    name: str
    gate: Tolerance | None = None
    needs_labelled_images: bool = False
    failure_hint: str = ""
    record_key: str | None = None


#: precision name → Precision
PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32"),
    Precision("bf16", BF16_TOLERANCE),
    Precision("fp16", FP16_TOLERANCE),
    Precision("int8", INT8_TOLERANCE, needs_labelled_images=True, failure_hint="build with --precision bf16 or fp32", record_key="int8"),
    Precision("fp8", FP8_TOLERANCE, needs_labelled_images=True, failure_hint="build with --precision int8 or fp16", record_key="fp8"),
)}


def register_precision(precision: Precision) -> Precision:
    """Add ``precision`` to the table (a duplicate name is refused); returns it, for a module-level line."""
    if precision.name in PRECISIONS or precision.name == "auto":
        raise ValueError(f"precision {precision.name!r} is already registered")
    PRECISIONS[precision.name] = precision
    return precision


def get_precision(name: str) -> Precision:
    precision = PRECISIONS.get(name)
    if precision is None:
        raise ConfigError(f"unknown precision {name!r}", hint=f"choose one of: auto, {', '.join(PRECISIONS)}")
    return precision


def gate_for(precision: str, given: Tolerance, source: Mapping[str, Any]) -> Tolerance:
    """The gate of an engine computing in ``precision``: its precision's gate, keeping each value the user set.

    ``given`` is the build's tolerance; ``source`` (``BuildConfig.source``) names the
    settings the user gave, which win over the reduced-precision defaults.
    """
    record = PRECISIONS.get(precision)
    return keeping_user_values(record.gate if record is not None else None, given, source)


def record_keys() -> tuple[str, ...]:
    """The ``engine_details`` keys under which quantized builds record their calibration and gate images."""
    return tuple(p.record_key for p in PRECISIONS.values() if p.record_key)


def quantized(names: tuple[str, ...]) -> tuple[str, ...]:
    """Those of ``names`` that are calibrated on labelled images (INT8, FP8)."""
    return tuple(n for n in names if n in PRECISIONS and PRECISIONS[n].needs_labelled_images)
