"""``sft-engine tune``: the serving configuration that carries the most load within the SLO.

What is searched: ``max_batch_size`` (up to what the engine was built and verified
for), the dynamic batcher's ``max_queue_delay_microseconds`` and the instance count
(per GPU with ``--gpus``) - the knobs Triton's Model Analyzer searches. How each
candidate is judged differs from Model Analyzer: not by closed-loop throughput and
client-side latency, but by this project's open-loop load test, whose latencies count
from each request's *intended* send time, so queueing under load is in the figures.
A candidate's score is its **capacity**: the highest offered rate whose percentiles
meet the SLO (``run_loadtest`` with ``find_capacity``).

How: each candidate is loaded on a server in explicit model-control mode through the
repository API (a load request with the candidate as config override), so nothing is
written until a winner is known. The search is a coordinate descent from the current
configuration (instances, then batch size, then queue delay, keeping the best value of
each before moving to the next), stopped by the time budget: a candidate whose
measured cost no longer fits is not started, and the capacity search of the last one
is shortened to what is left.

The winner is published as a new version (``tune_writer``) or printed (dry run). When
no candidate meets the SLO, the best one is reported and nothing is written.

This module runs a tune; the grid and the search order are in ``tune_search``, the
measurement of one candidate in ``tune_bench``, the printout in ``tune_table``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from sft_engine.errors import ConfigError
from sft_engine.ops import Notify, quiet
from sft_engine.ops.model_control import LoadFailed, ModelControl
from sft_engine.ops.modelconfig import ServingKnobs, apply_knobs, disk_config, knobs_of, require_version
from sft_engine.ops.snapshot import ServingSnapshot
from sft_engine.ops.tune_bench import CandidateBench
from sft_engine.ops.tune_search import Candidate, best_of, coordinate_descent, default_space
from sft_engine.ops.tune_table import candidate_line
from sft_engine.ops.tune_writer import publish_tuned, render_config
from sft_engine.repository.writer import PublishedVersion
from sft_engine.repository.manifest import BuildManifest, find_manifest
from sft_engine.repository.writer import list_versions

__all__ = ["TuneConfig", "TuneResult", "tune", "publish_best"]

LOGGER = logging.getLogger(__name__)


@dataclass
class TuneConfig:
    repository: Path
    model: str
    #: scenario (SLO) TOML, the load-test harness's format: [load], [slo], [validity], [capacity]
    slo_file: Path
    budget_s: float = 600.0
    #: version whose engine is tuned (default: the latest)
    version: int | None = None
    #: values to try per knob; None: a small grid around the current configuration
    max_batch_sizes: tuple[int, ...] | None = None
    queue_delays_us: tuple[int, ...] | None = None
    instance_counts: tuple[int, ...] | None = None
    #: GPU ids for KIND_GPU instance groups (instances are per GPU)
    gpus: tuple[int, ...] = ()
    #: HTTP endpoint of a server in explicit mode; None starts an embedded one
    url: str | None = None
    metrics_url: str | None = None
    allow_remote: bool = False
    workers: int | None = None

    def validate(self) -> None:
        if not math.isfinite(self.budget_s) or self.budget_s <= 0:
            raise ConfigError(f"--budget must be > 0 seconds, got {self.budget_s}", hint="e.g. --budget 600")


@dataclass
class TuneResult:
    model: str
    version: int
    percentile: float
    slo: dict[str, Any]
    baseline: Candidate
    best: Candidate | None
    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    budget_s: float = 0.0
    seconds: float = 0.0
    config_text: str | None = None
    published_version: int | None = None

    @property
    def met(self) -> bool:
        return self.best is not None and self.best.meets_slo

    @property
    def improves(self) -> bool:
        return self.met and self.best is not None and self.best.knobs != self.baseline.knobs

    @property
    def exit_code(self) -> int:
        return 0 if self.met else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "version": self.version, "slo": self.slo, "gated_percentile": self.percentile,
            "met": self.met, "best": self.best.to_dict() if self.best else None, "baseline": self.baseline.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates], "skipped": self.skipped,
            "budget_s": self.budget_s, "seconds": round(self.seconds, 1), "published_version": self.published_version,
            "config_pbtxt": self.config_text, "exit_code": self.exit_code,
        }


def _built_max(cfg: mc.ModelConfig, manifest: BuildManifest | None) -> int:
    built = manifest.setting("max_batch_size") if manifest else None
    return int(built) if isinstance(built, int) and built >= 1 else cfg.max_batch_size


def _open_server(config: TuneConfig) -> Any:
    from sft_engine.server import ServerConfig, TritonServer

    return TritonServer(ServerConfig(repository=config.repository, http_port=0, grpc_port=0, metrics_port=0, model_control_mode="explicit"))


def tune(config: TuneConfig, progress: Notify = quiet) -> TuneResult:
    """Search, within ``config.budget_s``; the caller publishes or prints ``result.best``."""
    from sft_engine.loadtest.config import parse_endpoint
    from sft_engine.loadtest.scenario import load_scenario

    config.validate()
    load_scenario(config.slo_file)  # a bad SLO file fails before a server starts
    cfg = disk_config(config.repository, config.model)
    versions = list_versions(config.repository / config.model)
    version = config.version or (versions[-1] if versions else 0)
    version_dir = require_version(config.repository, config.model, version)
    manifest = find_manifest(version_dir)
    with contextlib.ExitStack() as stack:
        if config.url is None:
            server = stack.enter_context(_open_server(config))
            url, endpoint = server.http_url, replace(parse_endpoint(server.grpc_url), metrics_url=server.metrics_url)
        else:
            endpoint = replace(parse_endpoint(config.url, "http", config.allow_remote), metrics_url=config.metrics_url)
            url = endpoint.url
        control = stack.enter_context(ModelControl(url))
        control.check_live()
        if config.url is not None:
            stack.callback(_restore, control, ServingSnapshot.take(control, config.model))
        result = _run(config, control, endpoint, cfg, version, manifest, progress)
    return result


def _restore(control: ModelControl, snapshot: ServingSnapshot) -> None:
    """Put a shared server back as it was: tuning must not leave a candidate serving."""
    try:
        snapshot.restore(control)
    except LoadFailed as exc:
        LOGGER.error("could not restore %s on the server after tuning: %s", snapshot.model, exc.message)


def _run(config: TuneConfig, control: ModelControl, endpoint: Any, cfg: mc.ModelConfig, version: int,
         manifest: BuildManifest | None, progress: Notify) -> TuneResult:
    search = CandidateBench(config, control, endpoint)
    current = knobs_of(cfg)
    if config.gpus:
        current = replace(current, gpus=tuple(config.gpus))
    built_max = _built_max(cfg, manifest)
    limit = search.slo.latency_ms.get(search.percentile)
    space = default_space(current, built_max, search.load.batch_size, limit, tuple(config.gpus))
    given = {"max_batch_sizes": config.max_batch_sizes, "queue_delays_us": config.queue_delays_us, "instance_counts": config.instance_counts}
    space = replace(space, gpus=tuple(config.gpus), **{k: tuple(int(x) for x in v) for k, v in given.items() if v})
    space.validate(built_max, search.load.batch_size)
    baseline = Candidate(0, current)
    result = TuneResult(model=config.model, version=version, percentile=search.percentile,
                        slo={f"p{q:g}_ms": v for q, v in search.slo.latency_ms.items()}, baseline=baseline, best=None,
                        budget_s=config.budget_s)
    progress(f"tuning {config.model} version {version} against {config.slo_file} within {config.budget_s:g} s")
    progress(f"  space: max_batch_size {list(space.max_batch_sizes)}, queue delay us {list(space.queue_delays_us)}, "
             f"instances {list(space.instance_counts)}" + (f" per GPU {list(space.gpus)}" if space.gpus else ""))

    def evaluate(knobs: ServingKnobs, index: int) -> Candidate:
        cand = Candidate(index, knobs)
        progress(f"  [{index}] {knobs.label()} ...")
        search.evaluate(cand, cfg, version, first=index == 0)
        progress(f"  [{index}] {candidate_line(cand, search.percentile)}")
        return cand

    result.candidates, skipped = coordinate_descent(current, space, evaluate, lambda: search.remaining() >= search.estimate())
    result.baseline = result.candidates[0]
    result.skipped = [k.label() for k in skipped]
    result.best = best_of(result.candidates)
    if result.best is not None:
        result.config_text = render_config(apply_knobs(cfg, result.best.knobs), cfg)
    result.seconds = time.monotonic() - search.started
    if result.skipped:
        progress(f"budget spent: {len(result.skipped)} candidate(s) not tried")
    return result


def publish_best(config: TuneConfig, result: TuneResult) -> PublishedVersion | None:
    """Publish the winner as a new version when it meets the SLO and differs from the current
    configuration (None otherwise: nothing is written); the tune's figures go in its manifest."""
    if not result.improves or result.best is None or result.config_text is None:
        return None
    best = result.best
    published = publish_tuned(config.repository, config.model, result.version, result.config_text,
                              {"best": best.to_dict(), "slo": result.slo, "candidates": [c.to_dict() for c in result.candidates]})
    result.published_version = published.version
    return published
