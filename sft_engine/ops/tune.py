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
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from tritonclient.grpc import model_config_pb2 as mc

from sft_engine.errors import ConfigError, LoadTestError
from sft_engine.ops.control import LoadFailed, ModelControl
from sft_engine.ops.modelconfig import ServingKnobs, apply_knobs, disk_config, knobs_of, override, require_version, with_versions
from sft_engine.ops.tune_writer import render_config
from sft_engine.repository.manifest import BuildManifest, find_manifest
from sft_engine.repository.writer import list_versions

__all__ = ["TuneSpace", "TuneConfig", "Candidate", "TuneResult", "default_space", "coordinate_descent", "tune", "candidate_table", "DIMENSIONS"]

LOGGER = logging.getLogger(__name__)

_DELAYS_US = (0, 100, 500, 2000)
_DEFAULT_CAPACITY_STEPS = 5
#: per load-test step, beyond warmup + duration: worker start, drain, snapshots
_STEP_OVERHEAD_S = 1.5


@dataclass(frozen=True)
class TuneSpace:
    """The values tried per knob; the current configuration's value is always among them."""

    max_batch_sizes: tuple[int, ...]
    queue_delays_us: tuple[int, ...]
    instance_counts: tuple[int, ...]
    gpus: tuple[int, ...] = ()

    def validate(self, built_max: int, request_batch: int) -> None:
        for name, values in (("--max-batch-sizes", self.max_batch_sizes), ("--instance-counts", self.instance_counts)):
            if not values or any(int(v) != v or v < 1 for v in values):
                raise ConfigError(f"{name} must list whole numbers >= 1, got {list(values)}", hint=f"e.g. {name} 1,2,4")
        if not self.queue_delays_us or any(int(v) != v or v < 0 for v in self.queue_delays_us):
            raise ConfigError(f"--queue-delays-us must list whole numbers >= 0, got {list(self.queue_delays_us)}", hint="e.g. --queue-delays-us 0,100,1000")
        too_big = [b for b in self.max_batch_sizes if b > built_max]
        if too_big:
            raise ConfigError(f"--max-batch-sizes {too_big} exceed the {built_max} the engine was built and verified for",
                              hint=f"use values <= {built_max}, or rebuild with a larger --max-batch-size")
        if all(b < request_batch for b in self.max_batch_sizes):
            raise ConfigError(f"every --max-batch-sizes value is below the load's batch size {request_batch}",
                              hint="lower batch_size in the SLO file's [load] or raise the batch sizes")


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
class Candidate:
    index: int
    knobs: ServingKnobs
    #: measured: requests/s at the SLO (None: no tested rate met it)
    capacity_rps: float | None = None
    #: gated percentile at the capacity rate (or at the lowest rate tried when none met the SLO)
    latency_ms: float | None = None
    at_rate_rps: float | None = None
    cpu_utilization: float | None = None
    gpu_utilization: float | None = None
    verdict: str = "not run"
    note: str = ""
    seconds: float = 0.0
    steps: int = 0

    @property
    def meets_slo(self) -> bool:
        return self.capacity_rps is not None and self.capacity_rps > 0

    def score(self) -> tuple[Any, ...]:
        """Larger is better: meets the SLO, more capacity, lower latency, fewer instances, less delay."""
        latency = self.latency_ms if self.latency_ms is not None else math.inf
        return (self.meets_slo, self.capacity_rps or 0.0, -latency, -self.knobs.total_instances, -self.knobs.queue_delay_us)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["knobs"] = self.knobs.to_dict()
        out["meets_slo"] = self.meets_slo
        return out


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


def _powers_of_two_upto(limit: int) -> list[int]:
    out, b = [], 1
    while b <= limit:
        out.append(b)
        b *= 2
    return out


def default_space(current: ServingKnobs, built_max: int, request_batch: int, slo_limit_ms: float | None, gpus: tuple[int, ...]) -> TuneSpace:
    """A small grid around the current configuration (about ten candidates in all)."""
    batches = sorted({b for b in [1, *_powers_of_two_upto(built_max)[-3:], built_max, current.max_batch_size] if request_batch <= b <= built_max})
    delay_cap = int(slo_limit_ms * 1000 / 2) if slo_limit_ms else max(_DELAYS_US)
    delays = sorted({d for d in _DELAYS_US if d <= delay_cap} | {current.queue_delay_us})
    if gpus:
        counts = sorted({1, 2, current.instances})
    else:
        cores = os.cpu_count() or 1
        counts = sorted({c for c in (1, 2, 4) if c <= max(1, cores)} | {current.instances})
    return TuneSpace(tuple(batches), tuple(delays), tuple(counts), gpus)


def _neighbours(best: ServingKnobs, space: TuneSpace, dimension: str) -> Iterator[ServingKnobs]:
    values = {"instances": space.instance_counts, "max_batch_size": space.max_batch_sizes, "queue_delay_us": space.queue_delays_us}[dimension]
    for value in values:
        if getattr(best, dimension) != value:
            yield replace(best, **{dimension: int(value)})  # type: ignore[arg-type]


#: the order the knobs are searched in: instances change the most, the queue delay fine-tunes
DIMENSIONS = ("instances", "max_batch_size", "queue_delay_us")


def coordinate_descent(
    current: ServingKnobs,
    space: TuneSpace,
    evaluate: Callable[[ServingKnobs, int], Candidate],
    affordable: Callable[[], bool],
) -> tuple[list[Candidate], list[ServingKnobs]]:
    """Evaluate ``current``, then each knob's other values around the best so far, one knob at a time.

    ``evaluate(knobs, index)`` measures one candidate; ``affordable()`` says whether the
    budget still allows one more. Returns every candidate measured (``current`` first)
    and those the budget left out. The current configuration is always measured: it is
    the reference every other candidate is compared with.
    """
    best = evaluate(current, 0)
    candidates, skipped, seen = [best], [], {current}
    for dimension in DIMENSIONS:
        for knobs in list(_neighbours(best.knobs, space, dimension)):
            if knobs in seen:
                continue
            seen.add(knobs)
            if not affordable():
                skipped.append(knobs)
                continue
            cand = evaluate(knobs, len(candidates))
            candidates.append(cand)
            if cand.score() > best.score():
                best = cand
    return candidates, skipped


Progress = Callable[[str], None]


def _noop(_: str) -> None:
    pass


class _Search:
    """Evaluates candidates on one server within the budget."""

    def __init__(self, config: TuneConfig, control: ModelControl, endpoint: Any, progress: Progress) -> None:
        from sft_engine.loadtest.config import CapacitySpec, LoadSpec, load_scenario

        self.config = config
        self.control = control
        self.endpoint = endpoint
        self.progress = progress
        scenario = load_scenario(config.slo_file)
        if scenario.slo is None or scenario.slo.is_empty:
            raise ConfigError(f"SLO file {config.slo_file} has no [slo] targets", hint="add e.g. [slo] p99_ms = 50: tune maximizes the load that meets it")
        self.scenario = scenario
        self.slo = scenario.slo
        self.load = replace(LoadSpec(), **scenario.load)
        self.capacity = scenario.capacity or CapacitySpec(max_steps=_DEFAULT_CAPACITY_STEPS, tolerance=0.1)
        self.percentile = self.slo.gated_percentile or 99.0
        self.started = time.monotonic()
        self.costs: list[float] = []

    # -- budget ----------------------------------------------------------------------
    def remaining(self) -> float:
        return self.config.budget_s - (time.monotonic() - self.started)

    def step_cost(self) -> float:
        return self.load.warmup_s + self.load.duration_s + _STEP_OVERHEAD_S

    def estimate(self) -> float:
        """Seconds the next candidate will take: the measured mean, or a guess before any."""
        if self.costs:
            return sum(self.costs) / len(self.costs)
        return 5.0 + self.step_cost() * (self.capacity.max_steps + 1)

    # -- one candidate ---------------------------------------------------------------
    def evaluate(self, candidate: Candidate, cfg: mc.ModelConfig, version: int, first: bool) -> Candidate:
        from sft_engine.loadtest.config import LoadTestConfig, default_workers
        from sft_engine.loadtest.runner import run_loadtest

        started = time.monotonic()
        model = self.config.model
        try:
            candidate_cfg = apply_knobs(cfg, candidate.knobs)
            self.control.load(model, override(candidate_cfg, [version]))
        except (LoadFailed, ConfigError) as exc:
            candidate.verdict, candidate.note = "not loaded", getattr(exc, "message", str(exc))[:200]
            candidate.seconds = round(time.monotonic() - started, 1)
            return candidate
        if not self.control.wait_ready(model, version, 120.0):
            candidate.verdict, candidate.note = "not ready", "did not become ready within 120 s"
            candidate.seconds = round(time.monotonic() - started, 1)
            return candidate
        # the capacity search of this candidate: as many steps as the budget still allows
        steps = min(self.capacity.max_steps, int(self.remaining() // self.step_cost()) - (0 if self.capacity.max_rate else 1))
        steps = max(2, steps) if first else steps
        if steps < 2:
            candidate.verdict, candidate.note = "skipped", "out of budget"
            candidate.seconds = round(time.monotonic() - started, 1)
            return candidate
        capacity = replace(self.capacity, max_steps=steps)
        lt_config = LoadTestConfig(
            endpoints=(self.endpoint,), model=model, model_version=str(version), load=self.load, slo=self.slo,
            validity=self.scenario.validity, capacity=capacity, find_capacity=True,
            workers=self.config.workers or default_workers(), allow_remote=self.config.allow_remote,
        )
        try:
            result = run_loadtest(lt_config)
        except LoadTestError as exc:  # this candidate could not be measured (e.g. the server stopped answering)
            candidate.verdict, candidate.note = "error", exc.message[:200]
            candidate.seconds = round(time.monotonic() - started, 1)
            return candidate
        cap = result.capacity
        open_steps = [s for s in result.steps if s.mode == "open"]
        candidate.steps = len(result.steps)
        candidate.verdict = result.verdict
        if cap is not None and cap.capacity_rps:
            candidate.capacity_rps = cap.capacity_rps
            at = [s for s in open_steps if s.rate_rps is not None and abs(s.rate_rps - cap.capacity_rps) < 1e-6 * max(1.0, cap.capacity_rps)]
            step = at[-1] if at else None
            if cap.limited_by == "max_rate":
                candidate.note = "every tried rate met the SLO: capacity is at least this"
        else:
            step = min(open_steps, key=lambda s: s.rate_rps or math.inf) if open_steps else None
            candidate.note = ("capacity search stopped: " + cap.limited_by) if cap and cap.limited_by else "no tested rate met the SLO"
        if step is not None:
            candidate.at_rate_rps = step.rate_rps
            candidate.latency_ms = step.latency_ms.get(self.percentile)
            metrics = (step.server.metrics if step.server else None) or {}
            candidate.cpu_utilization = metrics.get("cpu_utilization", step.generator.host_cpu_busy)
            candidate.gpu_utilization = metrics.get("gpu_utilization")
        candidate.seconds = round(time.monotonic() - started, 1)
        self.costs.append(candidate.seconds)
        return candidate


def _built_max(cfg: mc.ModelConfig, manifest: BuildManifest | None) -> int:
    built = manifest.setting("max_batch_size") if manifest else None
    return int(built) if isinstance(built, int) and built >= 1 else cfg.max_batch_size


def _open_server(config: TuneConfig) -> Any:
    from sft_engine.server import ServerConfig, TritonServer

    return TritonServer(ServerConfig(repository=config.repository, http_port=0, grpc_port=0, metrics_port=0, model_control_mode="explicit"))


def tune(config: TuneConfig, progress: Progress = _noop) -> TuneResult:
    """Search, within ``config.budget_s``; the caller publishes or prints ``result.best``."""
    from sft_engine.loadtest.config import load_scenario, parse_endpoint

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
            previous = control.ready_versions(config.model)
            live = control.live_config(config.model) if previous else None
            stack.callback(_restore, control, config.model, previous, live)
        result = _run(config, control, endpoint, cfg, version, manifest, progress)
    return result


def _restore(control: ModelControl, model: str, previous: list[int], live: dict[str, Any] | None) -> None:
    """Put a shared server back as it was: tuning must not leave a candidate serving."""
    try:
        if live is not None:
            control.load(model, with_versions(live, previous))
        else:
            control.unload(model)
    except LoadFailed as exc:
        LOGGER.error("could not restore %s on the server after tuning: %s", model, exc.message)


def _run(config: TuneConfig, control: ModelControl, endpoint: Any, cfg: mc.ModelConfig, version: int,
         manifest: BuildManifest | None, progress: Progress) -> TuneResult:
    search = _Search(config, control, endpoint, progress)
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
        progress(f"  [{index}] {_row(cand, search.percentile)[-1]}")
        return cand

    result.candidates, skipped = coordinate_descent(current, space, evaluate, lambda: search.remaining() >= search.estimate())
    result.baseline = result.candidates[0]
    result.skipped = [k.label() for k in skipped]
    measured = [c for c in result.candidates if c.verdict not in ("not loaded", "not ready", "skipped")]
    result.best = max(measured, key=Candidate.score) if measured else None
    if result.best is not None:
        result.config_text = render_config(apply_knobs(cfg, result.best.knobs), cfg)
    result.seconds = time.monotonic() - search.started
    if result.skipped:
        progress(f"budget spent: {len(result.skipped)} candidate(s) not tried")
    return result


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _row(c: Candidate, percentile: float) -> list[str]:
    cap = _fmt(c.capacity_rps, ",.1f")
    lat = _fmt(c.latency_ms, ".2f")
    summary = f"{c.verdict}: capacity {cap} req/s, p{percentile:g} {lat} ms" + (f" ({c.note})" if c.note else "")
    return [
        str(c.index), str(c.knobs.instances) + (f"x{len(c.knobs.gpus)}gpu" if c.knobs.gpus else ""), str(c.knobs.max_batch_size),
        str(c.knobs.queue_delay_us), cap, lat, _fmt(c.at_rate_rps, ",.1f"), _fmt(None if c.cpu_utilization is None else 100 * c.cpu_utilization, ".0f", "%"),
        _fmt(None if c.gpu_utilization is None else 100 * c.gpu_utilization, ".0f", "%"), f"{c.seconds:.0f}", summary,
    ]


def candidate_table(result: TuneResult) -> str:
    """The candidates as a fixed-width table, best marked with ``*``."""
    head = ["#", "instances", "max_batch", "delay_us", "capacity_rps", f"p{result.percentile:g}_ms", "at_rps", "cpu", "gpu", "seconds", "verdict"]
    rows = []
    for c in result.candidates:
        row = _row(c, result.percentile)
        row[0] = ("*" if c is result.best else " ") + row[0]
        row[-1] = c.verdict + (f" ({c.note})" if c.note else "")
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) if i < len(head) - 1 else h for i, (h, w) in enumerate(zip(head, widths)))]
    for r in rows:
        lines.append("  ".join(v.rjust(w) if i < len(head) - 1 else v for i, (v, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)
