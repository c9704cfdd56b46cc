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

The winner is published as a new version (``writer``) or printed (dry run). When
no candidate meets the SLO, the best one is reported and nothing is written.

This module runs a tune; what it is asked and what it found are in ``config``, the
grid and the search order in ``search``, the measurement of one candidate in
``bench``, the printout in ``table``.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from dataclasses import replace
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from sft_engine.ops import Notify, quiet
from sft_engine.ops.model_control import LoadFailed, ModelControl
from sft_engine.ops.modelconfig import ServingKnobs, apply_knobs, disk_config, knobs_of, require_version
from sft_engine.ops.snapshot import ServingSnapshot
from sft_engine.ops.tune.bench import CandidateBench
from sft_engine.ops.tune.config import TuneConfig, TuneResult
from sft_engine.ops.tune.search import Candidate, best_of, coordinate_descent, default_space
from sft_engine.ops.tune.table import candidate_line
from sft_engine.ops.tune.writer import publish_tuned, render_config
from sft_engine.repository.writer import PublishedVersion
from sft_engine.repository.manifest import BuildManifest, find_manifest
from sft_engine.repository.writer import PublishedVersion, list_versions

__all__ = ["tune", "publish_best"]

LOGGER = logging.getLogger(__name__)


def _built_max(cfg: mc.ModelConfig, manifest: BuildManifest | None) -> int:
    built = manifest.setting("max_batch_size") if manifest else None
    return int(built) if isinstance(built, int) and built >= 1 else cfg.max_batch_size


def _open_server(config: TuneConfig) -> Any:
    from sft_engine.server import ServerConfig, TritonServer

    return TritonServer(ServerConfig(repository=config.repository, http_port=0, grpc_port=0, metrics_port=0, model_control_mode="explicit",
                                     admin_key=config.admin_key))


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
    if config.url is None and config.admin_key is None:  # the embedded server's control plane is as closed as a deployed one
        config = replace(config, admin_key=secrets.token_urlsafe(32))
    with contextlib.ExitStack() as stack:
        if config.url is None:
            server = stack.enter_context(_open_server(config))
            url, endpoint = server.http_url, replace(parse_endpoint(server.grpc_url), metrics_url=server.metrics_url)
        else:
            endpoint = replace(parse_endpoint(config.url, "http", config.allow_remote), metrics_url=config.metrics_url)
            url = endpoint.url
        control = stack.enter_context(ModelControl(url, admin_key=config.admin_key))
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
