"""The rollout gate: does the new version answer like the previous one, on the live server?

Inputs and tolerance are the build's parity gate's (``sft_engine.verify``): the
random normalized tensors of ``parity_inputs`` (plus the calibration images when the
build had them and they are still there) and the ``Tolerance`` recorded in the
versions' ``build_manifest.json``: the looser of the two versions' gates, because the
reference is itself an engine with its own error (a bf16 or FP16 version against an
FP32 one differs by what the reduced-precision gate allowed, not by FP32 parity). The previous version's answers are the reference,
the new version's the candidate, both asked by version number on the live endpoint -
so what is compared is what clients will get, through the real server.

A rebuild of the same weights (new engine, new settings) must pass ``parity``. A
version with retrained weights differs on purpose: ``top1`` asks only that the top-1
classes mostly agree, ``sanity`` only that answers have the right shape and are
finite. The report says which weights each version was built from, so a failed
``parity`` check of retrained weights names the mode to use instead.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from sft_engine.errors import ConfigError
from sft_engine.ops.model_control import ModelControl
from sft_engine.preprocess import Preprocessing
from sft_engine.repository.config import parameters_of
from sft_engine.repository.manifest import BuildManifest

__all__ = ["CHECK_MODES", "CheckSpec", "CheckReport", "recorded_tolerance", "loosest", "gate_inputs", "compare_versions"]

LOGGER = logging.getLogger(__name__)

CheckMode = Literal["parity", "top1", "sanity"]
CHECK_MODES: tuple[str, ...] = ("parity", "top1", "sanity")
_MAX_CHECK_BATCH = 8


@dataclass(frozen=True)
class CheckSpec:
    """How strict the gate is. ``None`` fields come from the new version's build manifest."""

    mode: CheckMode = "parity"
    #: top-1 agreement needed in ``top1`` mode (default: the build's parity agreement)
    min_agreement: float | None = None
    samples: int | None = None
    seed: int | None = None

    def validate(self) -> None:
        if self.mode not in CHECK_MODES:
            raise ConfigError(f"check mode {self.mode!r} is unknown", hint=f"use one of: {', '.join(CHECK_MODES)}")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise ConfigError(f"--min-agreement must be in [0, 1], got {self.min_agreement}", hint="e.g. 0.9")
        if self.samples is not None and not 1 <= self.samples <= 10_000:
            raise ConfigError(f"--check-samples must be in 1..10000, got {self.samples}", hint="e.g. 16")


@dataclass
class CheckReport:
    mode: str
    previous: int
    new: int
    samples: int
    passed: bool
    max_abs_diff: float
    allowed_abs_diff: float | None
    top1_agreement: float
    min_agreement: float
    reasons: list[str] = field(default_factory=list)
    #: the sha256 of the weights each version was built from (None when unknown)
    weights: dict[str, str | None] = field(default_factory=dict)
    hint: str | None = None

    def summary(self) -> str:
        allowed = "" if self.allowed_abs_diff is None or not math.isfinite(self.allowed_abs_diff) else f" (allowed {self.allowed_abs_diff:.3g})"
        return (f"{self.mode} check of version {self.new} against version {self.previous}: max|diff| {self.max_abs_diff:.3g}{allowed}, "
                f"top-1 agreement {self.top1_agreement:.2%} on {self.samples} inputs - {'passed' if self.passed else 'FAILED'}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.allowed_abs_diff is not None and not math.isfinite(self.allowed_abs_diff):
            out["allowed_abs_diff"] = None
        return out


def _build_labels(manifest: BuildManifest | None) -> list[str] | None:
    """The labels the build resolved class folders with (its ``label_list``), so the check scores the same classes."""
    if manifest is None:
        return None
    labels = manifest.setting("labels")
    if isinstance(labels, list) and labels:
        return [str(label) for label in labels]
    classes = manifest.setting("num_classes")
    return [f"class_{i}" for i in range(classes)] if isinstance(classes, int) and classes > 0 else None


def recorded_tolerance(manifest: BuildManifest | None) -> Any:
    """The Tolerance a version's build gate judged it by: recorded with its parity, else its settings."""
    from sft_engine.verify import Tolerance

    if manifest is None:
        return Tolerance()
    recorded = manifest.parity_tolerance
    if recorded is not None:
        try:
            return Tolerance(**{k: float(v) for k, v in recorded.items()})
        except (TypeError, ValueError):
            LOGGER.warning("unreadable parity tolerance in a build manifest (%s); using its settings", recorded)
    return Tolerance(
        atol=float(manifest.setting("parity_atol", Tolerance.atol)),
        rtol=float(manifest.setting("parity_rtol", Tolerance.rtol)),
        min_top1_agreement=float(manifest.setting("parity_min_top1_agreement", Tolerance.min_top1_agreement)),
        max_accuracy_drop=float(manifest.setting("accuracy_max_drop", Tolerance.max_accuracy_drop)),
    )


def loosest(*tolerances: Any) -> Any:
    """One Tolerance that each of ``tolerances`` would pass."""
    from sft_engine.verify import Tolerance

    return Tolerance(
        atol=max(t.atol for t in tolerances), rtol=max(t.rtol for t in tolerances),
        min_top1_agreement=min(t.min_top1_agreement for t in tolerances),
        max_accuracy_drop=max(t.max_accuracy_drop for t in tolerances),
    )


def gate_inputs(cfg: mc.ModelConfig, manifest: BuildManifest | None, spec: CheckSpec,
                previous_manifest: BuildManifest | None = None) -> tuple[Any, Any]:
    """(ParityData, Tolerance) for the gate: the new version's inputs, the looser of both versions' gates."""
    from sft_engine.verify import ParityData, parity_inputs

    recorded = manifest or BuildManifest()
    tolerance = recorded_tolerance(manifest)
    if previous_manifest is not None:
        tolerance = loosest(tolerance, recorded_tolerance(previous_manifest))
    if spec.mode == "top1":
        agreement = spec.min_agreement if spec.min_agreement is not None else tolerance.min_top1_agreement
        tolerance = replace(tolerance, atol=math.inf, rtol=0.0, min_top1_agreement=agreement)
    elif spec.mode == "sanity":
        tolerance = replace(tolerance, atol=math.inf, rtol=0.0, min_top1_agreement=0.0, max_accuracy_drop=math.inf)
    samples = int(spec.samples or recorded.setting("parity_samples") or 16)
    seed = int(spec.seed if spec.seed is not None else recorded.setting("seed", 0))
    calibration = recorded.setting("calibration_dir")
    if calibration and not Path(calibration).is_dir():
        LOGGER.warning("calibration images %s of the build are gone; the check uses random inputs only", calibration)
        calibration = None
    try:
        params = recorded.preprocessing or parameters_of(cfg)
        prep = Preprocessing.from_parameters(params)
    except ConfigError:
        prep = None
    dims = tuple(int(d) for d in cfg.input[0].dims)
    if prep is not None and prep.shape == dims:
        data = parity_inputs(prep, samples, Path(calibration) if calibration else None, seed=seed, labels=_build_labels(manifest))

        def own_images(quantized: BuildManifest) -> Any:
            """The labelled images a quantized version's own build read (None: it recorded none, or they are gone)."""
            where = quantized.setting("calibration_dir")
            if not where or not Path(where).is_dir():
                return None
            return parity_inputs(prep, samples, Path(where), seed=seed, labels=_build_labels(quantized))

        data = _int8_gate(data, manifest, previous_manifest, own_images=own_images)
    else:  # not an sft-engine image model: random inputs of the configured shape
        if any(d < 1 for d in dims):
            raise ConfigError(f"input {cfg.input[0].name!r} has variable dims {list(dims)}", hint="the rollout check needs fixed input dims")
        data = ParityData(np.random.default_rng(seed).standard_normal((samples, *dims)).astype(np.float32))
    return data, tolerance


def _int8_gate(data: Any, *manifests: BuildManifest | None, own_images: Any = None) -> Any:
    """For an INT8 / FP8 version (new or previous), only the images its build gated it on, never its calibration images.

    The gate is split again from the images that version's own build read
    (``own_images(manifest)``) when the check's images are another build's - a previous
    INT8 version beside a new FP32 one built without calibration images is not a change.
    Only when that version's own images differ from what it recorded is there a warning.
    """
    from sft_engine.engines.calibration import recorded_gate
    from sft_engine.engines.precision import record_keys

    for manifest in manifests:
        details = manifest.engine_details if manifest is not None else {}
        for record in (details.get(key) for key in record_keys()):
            if not isinstance(record, dict) or manifest is None:
                continue
            gate = recorded_gate(data, record)
            own = own_images(manifest) if gate is None and own_images is not None else None
            if gate is None and own is not None:
                gate = recorded_gate(own, record)
            if gate is not None:
                return gate
            if own_images is None or own is not None:
                LOGGER.warning("the quantized build's gate images cannot be found again (the calibration images changed); the check uses them all")
            else:
                LOGGER.info("the quantized build's calibration images are not at hand; the check uses the new version's inputs")
    return data


def compare_versions(
    control: ModelControl,
    model: str,
    cfg: mc.ModelConfig,
    previous: int,
    new: int,
    previous_manifest: BuildManifest | None,
    new_manifest: BuildManifest | None,
    spec: CheckSpec,
) -> CheckReport:
    """Ask both versions on the live server and judge the new one against the previous one."""
    from sft_engine.verify import check_parity

    if cfg.max_batch_size < 1:
        raise ConfigError(f"model {model} does not batch (max_batch_size 0)", hint="the rollout check needs a batching model")
    if len(cfg.input) != 1 or cfg.input[0].data_type != mc.TYPE_FP32:
        raise ConfigError(f"model {model} does not have one FP32 input", hint="the rollout check supports image classifiers built by sft-engine")
    input_name, output_name = cfg.input[0].name, cfg.output[0].name
    data, tolerance = gate_inputs(cfg, new_manifest, spec, previous_manifest)
    batch = max(1, min(cfg.max_batch_size, _MAX_CHECK_BATCH))
    chunks = [np.ascontiguousarray(data.inputs[i:i + batch]) for i in range(0, len(data.inputs), batch)]
    reference = np.concatenate([control.infer(model, previous, input_name, output_name, c)[0] for c in chunks]).astype(np.float32)

    def runner(chunk: np.ndarray) -> np.ndarray:
        return control.infer(model, new, input_name, output_name, chunk)[0]

    parity = check_parity(f"version {new}", reference, runner, data, tolerance, batch)
    weights = {str(previous): previous_manifest.weights_sha256 if previous_manifest else None,
               str(new): new_manifest.weights_sha256 if new_manifest else None}
    hint = None
    if not parity.passed and spec.mode == "parity":
        w_old, w_new = weights[str(previous)], weights[str(new)]
        if w_old and w_new and w_old != w_new:
            hint = (f"version {new} was built from other weights than version {previous}; if that is intended, "
                    "gate it with --check top1 --min-agreement 0.9 (or --check sanity)")
        else:
            hint = "rebuild the version, or compare the two builds' parity reports"
    report = CheckReport(
        mode=spec.mode, previous=previous, new=new, samples=parity.samples, passed=parity.passed,
        max_abs_diff=parity.max_abs_diff, allowed_abs_diff=parity.allowed_abs_diff,
        top1_agreement=parity.top1_agreement, min_agreement=tolerance.min_top1_agreement,
        reasons=list(parity.reasons), weights=weights, hint=hint,
    )
    LOGGER.info("%s", report.summary())
    return report
