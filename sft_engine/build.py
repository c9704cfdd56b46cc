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
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping, NoReturn

import numpy as np
import torch

from sft_engine.build_config import BuildConfig
from sft_engine.engines.base import EngineArtifact, EngineCandidate, ExportContext, ExportSettings, Target, serving_config
from sft_engine.engines.cpu import image_model as _image_model
from sft_engine.engines.fast_decode import RECORD_KEY as FAST_DECODE_KEY, gate_fast_decode
from sft_engine.engines.precision import PRECISIONS, gate_for
from sft_engine.engines.registry import get_target
from sft_engine.errors import ExportError, ParityError, SftEngineError
from sft_engine.models import build_model, load_weights, sha256_file
from sft_engine.repository.config import ModelConfigSpec, to_pbtxt
from sft_engine.repository.image_models import ImageServing, ensemble_spec, fused_spec, preprocess_model_file, preprocess_spec, served_as_ensemble
from sft_engine.repository.manifest import BuildManifest, write_manifest
from sft_engine.repository.writer import ModelRelease, PublishedVersion, publish_models
from sft_engine.timing import LatencyStats, time_interleaved
from sft_engine.verify import CHECK_BATCH, ParityData, ParityReport, Tolerance, eager_logits, parity_inputs, run_checks

__all__ = ["BuildResult", "CandidateRecord", "Selection", "build", "export_settings", "published_config", "select", "TIMING_BATCH"]

LOGGER = logging.getLogger(__name__)

#: the batch candidates are timed at when a target selects among several
TIMING_BATCH = 8
#: ``<name>_image``'s ``model.py`` for a CPU engine (decode, preprocess and engine in one stub)
IMAGE_MODEL = Path(_image_model.__file__)


@dataclass(frozen=True)
class CandidateRecord:
    """What became of one planned candidate: not exported (``error``), or exported and judged (``parity``).

    ``latency``: its interleaved timing, when several survived; ``figures``: what its
    exporter recorded (``EngineArtifact.record``). Typed to the end; ``to_dict`` is the
    manifest's row.
    """

    candidate: EngineCandidate
    parity: ParityReport | None = None
    error: str | None = None
    latency: LatencyStats | None = None
    figures: Mapping[str, Any] = field(default_factory=dict)

    @property
    def exported(self) -> bool:
        return self.parity is not None

    @property
    def passed(self) -> bool:
        return self.parity is not None and self.parity.passed

    def to_dict(self) -> dict[str, Any]:
        c = self.candidate
        row: dict[str, Any] = {"engine": c.engine, "precision": c.precision, "candidate": c.name, "exported": self.exported}
        if self.parity is None:
            return {**row, "error": self.error}
        row = {**row, "parity": self.parity.to_dict(), **self.figures}
        return {**row, "latency": self.latency.to_dict()} if self.latency is not None else row


@dataclass
class BuildResult:
    published: PublishedVersion
    target: str
    engine: str
    #: the published engine's parity report (the first check's, for one per architecture)
    report: ParityReport
    records: list[CandidateRecord] = field(default_factory=list)
    seconds: float = 0.0
    precision: str | None = None

    @property
    def parity(self) -> dict[str, Any]:
        """The published engine's parity figures, as its manifest records them."""
        return self.report.to_dict()

    @property
    def candidates(self) -> list[dict[str, Any]]:
        """Every candidate's row, as the manifest records them."""
        return [r.to_dict() for r in self.records]

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
        for rec in self.records:
            lat = rec.latency
            chosen = (rec.candidate.engine, rec.candidate.precision) == (self.engine, self.precision)
            if rec.passed:
                status = "passed" if chosen or lat is None else "passed, but slower"
            elif rec.parity is not None:
                status = f"failed its gate ({'; '.join(rec.parity.reasons)})"
            else:
                status = f"not exported ({rec.error or 'unknown error'})"
            figure = f", {lat.p50_ms:.2f} ms p50 at batch {lat.batch_size}" if lat is not None else ""
            lines.append(f"  candidate {rec.candidate.name}: {status}{figure}")
        par = self.report
        lines.append(f"  parity: max|diff| {par.max_abs_diff:.3g} (allowed {par.allowed_abs_diff:.3g}), "
                     f"top-1 agreement {par.top1_agreement:.2%} on {par.samples} inputs" + _gate_note(self.precision))
        lines.append(f"  serve it: sft-engine serve --repository {pub.repository}")
        return lines


def _gate_note(precision: str | None) -> str:
    """Why a quantized engine's max|diff| is no alarm: a precision gated on labelled images is judged on labels, not on that figure."""
    if precision in PRECISIONS and PRECISIONS[precision].needs_labelled_images:
        return (f" ({precision.upper()} is gated on top-1 agreement and accuracy on held-out labelled images, "
                "not on max|diff|: quantized logits differ by design)")
    return ""


@dataclass(frozen=True)
class Selection:
    """The candidate a build publishes, its gate's reports, and every candidate's record.

    ``candidates`` is empty for a target that does not select (its one candidate is the
    artifact); ``how`` says how a selecting target chose (None otherwise).
    """

    artifact: EngineArtifact
    reports: list[ParityReport]
    candidates: list[CandidateRecord]
    how: str | None = None

    @property
    def parity(self) -> ParityReport:
        return self.reports[0]

    @property
    def details(self) -> dict[str, Any]:
        """The manifest's view: parity, tolerance, the exporter's details, per-check reports and how it was chosen."""
        out: dict[str, Any] = {"parity": self.parity.to_dict(), "tolerance": self.parity.tolerance, **self.artifact.details}
        if self.artifact.checks_field:
            out[self.artifact.checks_field] = {c.key: r.to_dict() for c, r in zip(self.artifact.checks, self.reports)}
        if self.how is not None:
            out["selection"] = self.how
        return out


def _noop(_: str) -> None:
    pass


#: ExportSettings fields that are not a BuildConfig field of the same name
_DERIVED = frozenset({"input_shape", "parameters"})


def export_settings(cfg: BuildConfig) -> ExportSettings:
    """The typed view of validated build settings that exporters receive: every field of the same name, and the preprocessing's shape and parameters."""
    assert cfg.name is not None and cfg.num_classes is not None, "validated() sets name and num_classes"
    same = {f.name: getattr(cfg, f.name) for f in fields(ExportSettings) if f.name not in _DERIVED}
    return ExportSettings(**same, input_shape=tuple(cfg.preprocessing.shape), parameters=cfg.preprocessing.to_parameters())


def published_config(engine: Any, settings: ExportSettings) -> Any:
    """The model config a build publishes: the engine half of its target, placed by ``--serve-gpus``.

    The GPUs the build ran on (``--build-gpu``) never reach ``instance_group``: a plan built
    on GPU 1 must still load on a one-GPU server, so without ``--serve-gpus`` the
    instances go to every GPU of the serving host.
    """
    return serving_config(engine, settings.name, settings.max_batch_size, settings.instance_count,
                          settings.max_queue_delay_us, settings.parameters, settings.serve_gpus or ())


def _initial_model(cfg: BuildConfig) -> torch.nn.Module:
    """The model before ``--weights``: an exported program, random, the source's weights (cached or downloaded), or a local file."""
    if cfg.exported is not None:
        from sft_engine.models.exported import load_exported

        return load_exported(cfg.exported)
    if not cfg.pretrained:
        return build_model(cfg.arch, cfg.num_classes)
    from sft_engine.finetune.pretrained import build_student, resolve_pretrained

    model, origin = build_student(cfg.arch, cfg.num_classes, resolve_pretrained(cfg.arch, cfg.pretrained))
    LOGGER.info("initial weights: %s", origin)
    return model


def build(cfg: BuildConfig, progress: Callable[[str], None] = _noop) -> BuildResult:
    """Run the whole build; raises an SftEngineError subclass on any failure (repository untouched)."""
    started = time.monotonic()
    cfg = cfg.validated()  # --target auto resolved for this host, the choice checked against it
    target = get_target(cfg.target)
    settings = export_settings(cfg)
    target.check_available(settings)  # before any model is built: a host that lacks what the target needs learns it at once
    plan = target.plan(settings)
    torch.manual_seed(cfg.seed)
    progress(f"[1/4] building {cfg.exported.name if cfg.exported else cfg.arch} for {cfg.num_classes} classes")
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
        if cfg.fast_decode:  # gated like a precision, on the images that judged the engine
            gate_data = artifact.gate_data or data
            details[FAST_DECODE_KEY] = gate_fast_decode(artifact.runner, gate_data, cfg.calibration_dir, prep,
                                                        gate_for("int8", tolerance, cfg.source).min_top1_agreement)
        progress(f"[3/4] engine {artifact.engine}{' ' + precision if precision else ''} passed parity: {chosen.parity.max_abs_diff:.3g} max|diff|")
        config = published_config(artifact.config, settings)
        config_text = to_pbtxt(config)
        inputs = {
            "weights": {"file": cfg.weights.name, "sha256": sha256_file(cfg.weights)} if cfg.weights else None,
            **({"exported": {"file": cfg.exported.name, "sha256": sha256_file(cfg.exported)}} if cfg.exported else {}),
            "pretrained": cfg.pretrained,
            "labels_sha256": _sha_text("".join(f"{x}\n" for x in cfg.label_list)),
        }

        def manifest(version_dir: Path, version: int, unit: Mapping[str, int]) -> None:
            write_manifest(version_dir, BuildManifest(
                model=cfg.name, version=version, target=target.name, engine=artifact.engine,
                arch=cfg.arch, num_classes=cfg.num_classes, preprocessing=prep.to_parameters(),
                inputs=inputs, settings=cfg.describe(), parity=details["parity"],
                engine_details={k: v for k, v in details.items() if k not in ("parity", "compatibility")},
                compatibility=details.get("compatibility"),
                candidates=[c.to_dict() for c in chosen.candidates], config_pbtxt_sha256=_sha_text(config_text),
            ))

        progress(f"[4/4] publishing into {cfg.repository}")
        fused = "engine.json" in artifact.files and not served_as_ensemble(cfg.repository, settings.name)
        releases = [ModelRelease(settings.name, config_text, tuple(cfg.label_list), dict(artifact.files), manifest),
                    *image_releases(config, cfg.label_list, cfg.image_serving, engine_files=artifact.files if fused else None,
                                    extra_details={k: details[k] for k in (FAST_DECODE_KEY,) if k in details})]
        published = publish_models(cfg.repository, releases)[0]  # the engine and its two image models, as one unit
    return BuildResult(published, target.name, artifact.engine, chosen.parity, chosen.candidates, time.monotonic() - started, precision)


def _reference(ctx: ExportContext, data: ParityData) -> np.ndarray:
    return eager_logits(ctx.model, data.inputs, batch_size=min(ctx.settings.max_batch_size, CHECK_BATCH))


def _error_text(exc: Exception) -> str:
    """One line: an exporter's traceback text or a multi-line library message never reaches the summary whole."""
    text = exc.message if isinstance(exc, SftEngineError) else f"{type(exc).__name__}: {exc}"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return first[:300]


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
    records: dict[str, CandidateRecord] = {}
    passed: dict[str, tuple[EngineArtifact, list[ParityReport]]] = {}
    for cand in plan:
        try:
            artifact = target.export(ctx, cand)
        except Exception as exc:
            if not target.selects:
                raise
            LOGGER.warning("engine %s could not be exported: %s", cand.name, exc)
            records[cand.name] = CandidateRecord(cand, error=_error_text(exc))
            continue
        gate = gate_for(cand.precision, tolerance, source)
        data = artifact.gate_data or ctx.data
        ref = reference if artifact.gate_data is None else _reference(ctx, data)
        try:
            reports = run_checks(artifact.checks, ref, data, gate, batch_size=batch_size, raise_on_failure=not target.selects)
        except Exception as exc:  # an engine that exported but cannot run the gate's batches (a batch baked in by tracing)
            if not target.selects or isinstance(exc, ParityError):
                raise
            LOGGER.warning("engine %s failed to run: %s", cand.name, exc)
            records[cand.name] = CandidateRecord(cand, error=f"exported, but failed to run: {_error_text(exc)}")
            continue
        records[cand.name] = CandidateRecord(cand, parity=reports[0], figures=dict(artifact.record))
        if all(r.passed for r in reports):
            passed[cand.name] = (artifact, reports)
    if not passed:
        _refuse(target, s.precision, list(records.values()))
    if len(passed) > 1:
        timing = np.ascontiguousarray(np.resize(ctx.data.inputs, (min(TIMING_BATCH, s.max_batch_size), *ctx.data.inputs.shape[1:])))
        LOGGER.info("timing %s at batch %d", ", ".join(passed), len(timing))
        stats = time_interleaved({n: a.runner for n, (a, _) in passed.items()}, timing, budget_s=budget_s)
        for name, stat in stats.items():
            records[name] = replace(records[name], latency=stat)
        chosen = min(stats, key=lambda n: stats[n].p50_ms)
    else:
        chosen = next(iter(passed))
    LOGGER.info("chose %s engine %s", target.name, chosen)
    artifact, reports = passed[chosen]
    if not target.selects:
        return Selection(artifact, reports, [])
    return Selection(artifact, reports, list(records.values()), "fastest passing its gate" if len(plan) > 1 else "forced")


def _refuse(target: Target, precision: str, records: list[CandidateRecord]) -> NoReturn:
    """No candidate survived: name each one's failure, with the hint of the precision asked for (or the target's)."""
    wanted = PRECISIONS.get(precision)
    hint = wanted.failure_hint if wanted is not None else ""
    failed = [r for r in records if r.parity is not None]
    if failed:
        worst = "; ".join(f"{r.candidate.name}: {', '.join(r.parity.reasons)}" for r in failed if r.parity is not None)
        more = ", or calibrate on more images (--int8-calibration-images)" if wanted is not None and wanted.needs_labelled_images else ""
        raise ParityError(f"no {target.label} engine matches the eager model ({worst})",
                          hint=f"nothing was published; {hint}{more}" if hint else "nothing was published; check the model or loosen --parity-atol",
                          report={r.candidate.name: r.to_dict() for r in records})
    errors = "; ".join(f"{r.candidate.name}: {r.error}" for r in records)
    raise ExportError(f"no {target.label} engine could be exported ({errors})", hint=hint or target.export_hint or "see the log")


#: what the manifests of the image-serving models record as their ``engine``
PREPROCESS_ROLE, ENSEMBLE_ROLE, FUSED_ROLE = "preprocess", "ensemble", "image"


def image_releases(engine: ModelConfigSpec, labels: list[str], settings: ImageServing, engine_version: int | None = None,
                   engine_files: Mapping[str, Path] | None = None, extra_details: Mapping[str, Any] | None = None) -> list[ModelRelease]:
    """The next versions of ``<name>_preprocess`` and ``<name>_image``, to publish with the engine's.

    Every build publishes them, in the same unit as the engine's version, so a
    repository always answers image files with the preprocessing of its latest engine;
    versions stay additive for all three models. Their manifests name the engine's
    version: the new one of the same unit, or (published beside an existing engine
    version) ``engine_version``. ``engine_files``: the CPU engine's version files
    (``engine.json``, its ``model.py``, the engine), given when ``<name>_image`` is to be
    the one fused Python model that decodes and runs this engine; otherwise (GPU or
    native engines) it is the ensemble. ``extra_details`` go into both manifests
    (the fast decode's gate).
    """
    preprocess = (preprocess_spec(engine, settings), {"model.py": preprocess_model_file()}, PREPROCESS_ROLE)
    if engine_files is not None and "engine.json" in engine_files:
        files = {n: p for n, p in engine_files.items() if n != "model.py"}
        files.update({"model.py": IMAGE_MODEL, "serving_model.py": engine_files["model.py"], "pixels.py": preprocess_model_file()})
        image = (fused_spec(engine, settings), files, FUSED_ROLE)
    else:
        image = (ensemble_spec(engine), {}, ENSEMBLE_ROLE)
    releases = []
    for spec, files, role in (preprocess, image):
        text = to_pbtxt(spec)

        def manifest(version_dir: Path, version: int, unit: Mapping[str, int], spec: ModelConfigSpec = spec, text: str = text,
                     role: str = role) -> None:
            write_manifest(version_dir, BuildManifest(
                model=spec.name, version=version, engine=role,
                preprocessing=dict(spec.parameters), config_pbtxt_sha256=_sha_text(text),
                engine_details={"serves": {"model": engine.name, "version": unit.get(engine.name, engine_version)}, **(extra_details or {})},
            ))

        releases.append(ModelRelease(spec.name, text, tuple(labels), files, manifest))
    return releases


def publish_image_models(repository: Path, engine: ModelConfigSpec, labels: list[str], settings: ImageServing, engine_version: int) -> None:
    """Add a version of both image models beside an engine version already published (one unit of two)."""
    publish_models(repository, image_releases(engine, labels, settings, engine_version))


def _sha_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
