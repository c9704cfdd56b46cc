"""``sft-engine build``: weights → eager model → candidates → gates → timing → published version.

The data flow is one direction and each step hands on a typed value:
``BuildConfig`` → ``nn.Module`` → one ``EngineArtifact`` per candidate the target plans
(export only: ``sft_engine.engines``) → a ``ParityReport`` per candidate, judged by the
gate of its precision (``sft_engine.verify``) → the fastest survivor, timed here, where
the target selects among several → ``PublishedVersion`` with its ``BuildManifest``.
Correctness and performance are judged in this one place for every target, as Model
Navigator keeps export, correctness and performance steps apart. Nothing reaches the
repository unless every step succeeded.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sft_engine.build_config import BuildConfig
from sft_engine.engines.base import EngineArtifact, EngineCandidate, ExportContext, ExportSettings, Target, serving_config
from sft_engine.engines.registry import check_choice, get_target, resolve_target
from sft_engine.errors import ExportError, ParityError, SftEngineError
from sft_engine.models import build_model, load_weights, sha256_file
from sft_engine.repository.config import ModelConfigSpec, to_pbtxt
from sft_engine.repository.image_models import ImageServing, ensemble_spec, preprocess_model_file, preprocess_spec
from sft_engine.repository.manifest import BuildManifest, write_manifest
from sft_engine.repository.writer import ModelRelease, PublishedVersion, publish_models
from sft_engine.timing import time_interleaved
from sft_engine.verify import CHECK_BATCH, ParityData, ParityReport, Tolerance, eager_logits, gate_for, parity_inputs, run_checks

__all__ = ["BuildResult", "build", "export_settings", "published_config", "select", "TIMING_BATCH"]

LOGGER = logging.getLogger(__name__)

#: the batch candidates are timed at when a target selects among several
TIMING_BATCH = 8


@dataclass
class BuildResult:
    published: PublishedVersion
    target: str
    engine: str
    parity: dict[str, Any]
    candidates: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    precision: str | None = None

    @property
    def engine_label(self) -> str:
        """``openvino bf16``, ``onnxruntime fp32``; the engine alone where no precision is recorded."""
        return f"{self.engine} {self.precision}" if self.precision else self.engine

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (``sft-engine build --json``)."""
        pub = self.published
        return {"model": pub.name, "version": pub.version, "path": str(pub.path), "target": self.target, "engine": self.engine,
                "precision": self.precision, "parity": self.parity, "seconds": round(self.seconds, 2)}

    def summary_lines(self) -> list[str]:
        """What the build published, each candidate's outcome, the parity figures, and how to serve it."""
        pub = self.published
        lines = [f"published {pub.name} version {pub.version} ({self.target}/{self.engine_label}) at {pub.path}"]
        for cand in self.candidates:
            lat = cand.get("latency")
            parity = cand.get("parity") or {}
            chosen = (cand.get("engine"), cand.get("precision")) == (self.engine, self.precision)
            if parity.get("passed"):
                status = "passed" if chosen or not lat else "passed, but slower"
            elif cand.get("exported"):
                status = f"failed its gate ({'; '.join(parity.get('reasons') or [])})"
            else:
                status = f"not exported ({cand.get('error', 'unknown error')})"
            figure = f", {lat['p50_ms']:.2f} ms p50 at batch {lat['batch_size']}" if lat else ""
            lines.append(f"  candidate {cand.get('candidate', cand['engine'])}: {status}{figure}")
        par = self.parity
        if par:
            lines.append(f"  parity: max|diff| {par['max_abs_diff']:.3g} (allowed {par['allowed_abs_diff']:.3g}), "
                         f"top-1 agreement {par['top1_agreement']:.2%} on {par['samples']} inputs" + _gate_note(self.precision))
        lines.append(f"  serve it: sft-engine serve --repository {pub.repository}")
        return lines


def _gate_note(precision: str | None) -> str:
    """Why a quantized engine's max|diff| is no alarm: it is gated on labels, not on that figure."""
    if precision in ("int8", "fp8"):
        return (f" ({precision.upper()} is gated on top-1 agreement and accuracy on held-out labelled images, "
                "not on max|diff|: quantized logits differ by design)")
    return ""


@dataclass
class Selection:
    """The candidate a build publishes, its gate's reports, and every candidate's record for the manifest."""

    artifact: EngineArtifact
    reports: list[ParityReport]
    candidates: list[dict[str, Any]]
    details: dict[str, Any]


def _noop(_: str) -> None:
    pass


def export_settings(cfg: BuildConfig) -> ExportSettings:
    """The typed view of validated build settings that exporters receive."""
    assert cfg.name is not None and cfg.num_classes is not None, "validated() sets name and num_classes"
    return ExportSettings(
        name=cfg.name, arch=cfg.arch, num_classes=cfg.num_classes, input_shape=tuple(cfg.preprocessing.shape),
        max_batch_size=cfg.max_batch_size, instance_count=cfg.instance_count, max_queue_delay_us=cfg.max_queue_delay_us,
        build_gpus=tuple(cfg.build_gpus), serve_gpus=None if cfg.serve_gpus is None else tuple(cfg.serve_gpus), engine=cfg.engine, precision=cfg.precision, intra_op_threads=cfg.intra_op_threads,
        parameters=cfg.preprocessing.to_parameters(), allow_unmatched_tensorrt=bool(cfg.allow_unmatched_tensorrt),
        allow_int8_without_isa=bool(cfg.allow_int8_without_isa),
        calibration_dir=cfg.calibration_dir, int8_calibration_images=cfg.int8_calibration_images, seed=cfg.seed,
    )


def published_config(engine: Any, settings: ExportSettings) -> Any:
    """The model config a build publishes: the engine half of its target, placed by ``--serve-gpus``.

    The GPUs the build ran on (``--build-gpu``) never reach ``instance_group``: a plan built
    on GPU 1 must still load on a one-GPU server, so without ``--serve-gpus`` the
    instances go to every GPU of the serving host.
    """
    return serving_config(engine, settings.name, settings.max_batch_size, settings.instance_count,
                          settings.max_queue_delay_us, settings.parameters, settings.serve_gpus or ())


def _initial_model(cfg: BuildConfig) -> torch.nn.Module:
    """The model before ``--weights``: random, torchvision weights (cached or downloaded), or a local torchvision file."""
    if not cfg.pretrained:
        return build_model(cfg.arch, cfg.num_classes)
    from sft_engine.finetune.pretrained import build_student, resolve_pretrained

    model, origin = build_student(cfg.arch, cfg.num_classes, resolve_pretrained(cfg.arch, cfg.pretrained))
    LOGGER.info("initial weights: %s", origin)
    return model


def build(cfg: BuildConfig, progress: Callable[[str], None] = _noop) -> BuildResult:
    """Run the whole build; raises an SftEngineError subclass on any failure (repository untouched)."""
    started = time.monotonic()
    cfg = cfg.validated()
    resolved = resolve_target(cfg.target)
    if resolved != cfg.target:  # --target auto: --engine / --precision must suit the target it became
        check_choice(resolved, cfg.engine, cfg.precision)
    target = get_target(resolved)
    settings = export_settings(cfg)
    target.check_available(settings)  # before any model is built: a host that lacks what the target needs learns it at once
    plan = target.plan(settings)
    torch.manual_seed(cfg.seed)
    progress(f"[1/4] building {cfg.arch} for {cfg.num_classes} classes")
    model = _initial_model(cfg)
    if cfg.weights is not None:
        load_weights(model, cfg.weights)
    model.eval()
    prep = cfg.preprocessing
    data = parity_inputs(prep, cfg.parity_samples, cfg.calibration_dir, seed=cfg.seed, labels=cfg.label_list)
    tolerance = Tolerance(cfg.parity_atol, cfg.parity_rtol, cfg.parity_min_top1_agreement, cfg.accuracy_max_drop)
    with tempfile.TemporaryDirectory(prefix="sft-build-", dir=cfg.workdir) as tmp:
        progress(f"[2/4] exporting for target {target.name} (engine {cfg.engine}) and checking parity")
        ctx = ExportContext(model=model, settings=settings, workdir=Path(tmp), data=data)
        chosen = select(target, plan, ctx, tolerance, cfg.source, cfg.selection_budget_s)
        artifact, details = chosen.artifact, chosen.details
        precision = details.get("precision")
        progress(f"[3/4] engine {artifact.engine}{' ' + precision if precision else ''} passed parity: {details['parity']['max_abs_diff']:.3g} max|diff|")
        config = published_config(artifact.config, settings)
        config_text = to_pbtxt(config)
        inputs = {
            "weights": {"file": cfg.weights.name, "sha256": sha256_file(cfg.weights)} if cfg.weights else None,
            "pretrained": cfg.pretrained,
            "labels_sha256": _sha_text("".join(f"{x}\n" for x in cfg.label_list)),
        }

        engine_version: dict[str, int] = {}

        def manifest(version_dir: Path, version: int) -> None:
            engine_version["version"] = version  # staged first: the image models' manifests name it
            write_manifest(version_dir, BuildManifest(
                model=cfg.name, version=version, target=target.name, engine=artifact.engine,
                arch=cfg.arch, num_classes=cfg.num_classes, preprocessing=prep.to_parameters(),
                inputs=inputs, settings=cfg.describe(), parity=details["parity"],
                engine_details={k: v for k, v in details.items() if k not in ("parity", "compatibility")},
                compatibility=details.get("compatibility"),
                candidates=chosen.candidates, config_pbtxt_sha256=_sha_text(config_text),
            ))

        progress(f"[4/4] publishing into {cfg.repository}")
        releases = [ModelRelease(settings.name, config_text, tuple(cfg.label_list), dict(artifact.files), manifest),
                    *image_releases(config, cfg.label_list, cfg.image_serving, lambda: engine_version.get("version"))]
        published = publish_models(cfg.repository, releases)[0]  # the engine and its two image models, as one unit
    return BuildResult(published, target.name, artifact.engine, details["parity"], chosen.candidates, time.monotonic() - started, precision)


def _reference(ctx: ExportContext, data: ParityData) -> np.ndarray:
    return eager_logits(ctx.model, data.inputs, batch_size=min(ctx.settings.max_batch_size, CHECK_BATCH))


def _error_text(exc: Exception) -> str:
    return exc.message if isinstance(exc, SftEngineError) else f"{type(exc).__name__}: {exc}"[:300]


def select(target: Target, plan: list[EngineCandidate], ctx: ExportContext, tolerance: Tolerance, source: dict[str, Any],
           budget_s: float) -> Selection:
    """Export each planned candidate, judge it by the gate of its precision, and keep the one to publish.

    A selecting target records every candidate (an export that fails is an expected
    outcome, told apart from bugs in the record) and keeps the fastest survivor, timed
    interleaved; any other target's one candidate must export and pass, or the build
    stops with that candidate's own error.
    """
    s = ctx.settings
    batch_size = min(s.max_batch_size, CHECK_BATCH)
    reference = _reference(ctx, ctx.data)
    records: dict[str, dict[str, Any]] = {}
    passed: dict[str, tuple[EngineArtifact, list[ParityReport]]] = {}
    for cand in plan:
        record: dict[str, Any] = {"engine": cand.engine, "precision": cand.precision, "candidate": cand.name}
        try:
            artifact = target.export(ctx, cand)
        except Exception as exc:
            if not target.selects:
                raise
            LOGGER.warning("engine %s could not be exported: %s", cand.name, exc)
            records[cand.name] = {**record, "exported": False, "error": _error_text(exc)}
            continue
        gate = gate_for(cand.precision, tolerance, source)
        data = artifact.gate_data or ctx.data
        ref = reference if artifact.gate_data is None else _reference(ctx, data)
        reports = run_checks(artifact.checks, ref, data, gate, batch_size=batch_size, raise_on_failure=not target.selects)
        records[cand.name] = {**record, "exported": True, "parity": reports[0].to_dict(), **artifact.record}
        if all(r.passed for r in reports):
            passed[cand.name] = (artifact, reports)
    if not passed:
        failed = [c for c in records.values() if c.get("exported")]
        if failed:
            worst = "; ".join(f"{c['candidate']}: {', '.join(c['parity']['reasons'])}" for c in failed)
            int8 = s.precision == "int8"
            raise ParityError(f"no {target.label} engine matches the eager model ({worst})",
                              hint="nothing was published; build with --precision bf16 or fp32, or calibrate on more images (--int8-calibration-images)"
                              if int8 else "nothing was published; check the model or loosen --parity-atol", report=records)
        errors = "; ".join(f"{c['candidate']}: {c['error']}" for c in records.values())
        raise ExportError(f"no {target.label} engine could be exported ({errors})",
                          hint="build with --precision bf16 or fp32" if s.precision == "int8" else target.export_hint or "see the log")
    if len(passed) > 1:
        timing = np.ascontiguousarray(np.resize(ctx.data.inputs, (min(TIMING_BATCH, s.max_batch_size), *ctx.data.inputs.shape[1:])))
        LOGGER.info("timing %s at batch %d", ", ".join(passed), len(timing))
        stats = time_interleaved({n: a.runner for n, (a, _) in passed.items()}, timing, budget_s=budget_s)
        for name, stat in stats.items():
            records[name]["latency"] = stat.to_dict()
        chosen = min(stats, key=lambda n: stats[n].p50_ms)
    else:
        chosen = next(iter(passed))
    LOGGER.info("chose %s engine %s", target.name, chosen)
    artifact, reports = passed[chosen]
    details: dict[str, Any] = {"parity": reports[0].to_dict(), "tolerance": reports[0].tolerance, **artifact.details}
    if artifact.checks_field:
        details[artifact.checks_field] = {c.key: r.to_dict() for c, r in zip(artifact.checks, reports)}
    if target.selects:
        details["selection"] = "fastest passing its gate" if len(plan) > 1 else "forced"
    return Selection(artifact, reports, list(records.values()) if target.selects else [], details)


#: what the manifests of the two image-serving models record as their ``engine``
IMAGE_ROLES = {"python": "preprocess", "ensemble": "ensemble"}


def image_releases(engine: ModelConfigSpec, labels: list[str], settings: ImageServing,
                   engine_version: Callable[[], int | None] = lambda: None) -> list[ModelRelease]:
    """The next versions of ``<name>_preprocess`` and ``<name>_image``, to publish with the engine's.

    Every build publishes them, in the same unit as the engine's version, so a
    repository always answers image files with the preprocessing of its latest engine;
    versions stay additive for all three models. ``engine_version()`` is the engine's
    new version number once it is staged (it comes first in the unit).
    """
    releases = []
    for spec, files in ((preprocess_spec(engine, settings), {"model.py": preprocess_model_file()}), (ensemble_spec(engine), {})):
        text = to_pbtxt(spec)

        def manifest(version_dir: Path, version: int, spec: ModelConfigSpec = spec, text: str = text) -> None:
            write_manifest(version_dir, BuildManifest(
                model=spec.name, version=version, engine=IMAGE_ROLES[spec.platform or spec.backend or ""],
                preprocessing=dict(spec.parameters), config_pbtxt_sha256=_sha_text(text),
                engine_details={"serves": {"model": engine.name, "version": engine_version()}},
            ))

        releases.append(ModelRelease(spec.name, text, tuple(labels), files, manifest))
    return releases


def publish_image_models(repository: Path, engine: ModelConfigSpec, labels: list[str], settings: ImageServing, engine_version: int) -> None:
    """Add a version of both image models beside an engine version already published (one unit of two)."""
    publish_models(repository, image_releases(engine, labels, settings, lambda: engine_version))


def _sha_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
