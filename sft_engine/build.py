"""``sft-engine build``: weights → eager model → engine → parity gate → published version.

The data flow is one direction and each step hands on a typed value:
``BuildConfig`` → ``nn.Module`` → ``EngineArtifact`` (already parity-checked by its
exporter) → ``PublishedVersion``. Nothing reaches the repository unless every step
succeeded.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from sft_engine.config import BuildConfig
from sft_engine.engines import ExportContext, exporter_for, resolve_target
from sft_engine.models import build_model, load_weights, sha256_file
from sft_engine.repository.config import ModelConfigSpec, to_pbtxt
from sft_engine.repository.image_models import ImageServing, ensemble_spec, preprocess_model_file, preprocess_spec
from sft_engine.repository.manifest import BuildManifest, write_manifest
from sft_engine.repository.writer import PublishedVersion, publish
from sft_engine.verify import Tolerance, eager_logits, parity_inputs

__all__ = ["BuildResult", "build"]

LOGGER = logging.getLogger(__name__)


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


def _noop(_: str) -> None:
    pass


def build(cfg: BuildConfig, progress: Callable[[str], None] = _noop) -> BuildResult:
    """Run the whole build; raises an SftEngineError subclass on any failure (repository untouched)."""
    started = time.monotonic()
    cfg = cfg.validated()
    target = resolve_target(cfg.target)
    export = exporter_for(target, cfg)
    torch.manual_seed(cfg.seed)
    progress(f"[1/4] building {cfg.arch} for {cfg.num_classes} classes")
    model = build_model(cfg.arch, cfg.num_classes, pretrained=cfg.pretrained)  # type: ignore[arg-type]
    if cfg.weights is not None:
        load_weights(model, cfg.weights)
    model.eval()
    prep = cfg.preprocessing
    data = parity_inputs(prep, cfg.parity_samples, cfg.calibration_dir, seed=cfg.seed, labels=cfg.label_list)
    reference = eager_logits(model, data.inputs, batch_size=min(cfg.max_batch_size, 16))
    tolerance = Tolerance(cfg.parity_atol, cfg.parity_rtol, cfg.parity_min_top1_agreement, cfg.accuracy_max_drop)
    with tempfile.TemporaryDirectory(prefix="sft-build-", dir=cfg.workdir) as tmp:
        progress(f"[2/4] exporting for target {target} (engine {cfg.engine}) and checking parity")
        ctx = ExportContext(model=model, build=cfg, workdir=Path(tmp), data=data, reference=reference, tolerance=tolerance, parameters=prep.to_parameters())
        artifact = export(ctx)
        precision = artifact.details.get("precision")
        progress(f"[3/4] engine {artifact.engine}{' ' + precision if precision else ''} passed parity: {artifact.details.get('parity', {}).get('max_abs_diff', float('nan')):.3g} max|diff|")
        config_text = to_pbtxt(artifact.config)
        inputs = {
            "weights": {"file": cfg.weights.name, "sha256": sha256_file(cfg.weights)} if cfg.weights else None,
            "pretrained": cfg.pretrained,
            "labels_sha256": _sha_text("".join(f"{x}\n" for x in cfg.label_list)),
        }

        def manifest(version_dir: Path, version: int) -> None:
            write_manifest(version_dir, BuildManifest(
                model=cfg.name, version=version, target=target, engine=artifact.engine,
                arch=cfg.arch, num_classes=cfg.num_classes, preprocessing=prep.to_parameters(),
                inputs=inputs, settings=cfg.describe(), parity=artifact.details.get("parity"),
                engine_details={k: v for k, v in artifact.details.items() if k not in ("parity", "compatibility")},
                compatibility=artifact.details.get("compatibility"),
                candidates=artifact.candidates, config_pbtxt_sha256=_sha_text(config_text),
            ))

        progress(f"[4/4] publishing into {cfg.repository}")
        published = publish(cfg.repository, cfg.name, config_text, cfg.label_list, artifact.files, manifest)  # type: ignore[arg-type]
        publish_image_models(cfg.repository, artifact.config, cfg.label_list, cfg.image_serving, published.version)
    return BuildResult(published, target, artifact.engine, artifact.details.get("parity", {}), artifact.candidates, time.monotonic() - started, precision)


#: what the manifests of the two image-serving models record as their ``engine``
IMAGE_ROLES = {"python": "preprocess", "ensemble": "ensemble"}


def publish_image_models(repository: Path, engine: ModelConfigSpec, labels: list[str], settings: ImageServing, engine_version: int) -> None:
    """Add a version of ``<name>_preprocess`` and ``<name>_image`` beside the engine's new version.

    Every build publishes them, so a repository always answers image files with the
    preprocessing of its latest engine; versions stay additive for all three models.
    """
    for spec, files in ((preprocess_spec(engine, settings), {"model.py": preprocess_model_file()}), (ensemble_spec(engine), {})):
        text = to_pbtxt(spec)

        def manifest(version_dir: Path, version: int, spec: ModelConfigSpec = spec, text: str = text) -> None:
            write_manifest(version_dir, BuildManifest(
                model=spec.name, version=version, engine=IMAGE_ROLES[spec.platform or spec.backend or ""],
                preprocessing=dict(spec.parameters), config_pbtxt_sha256=_sha_text(text),
                engine_details={"serves": {"model": engine.name, "version": engine_version}},
            ))

        publish(repository, spec.name, text, labels, files, manifest)


def _sha_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
