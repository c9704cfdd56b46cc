"""``run_loadtest(config) -> LoadTestResult``: the one entry point, for the CLI and for code.

Order of a run: validate the configuration; ask the server for the model's config;
build the request; send it once (a wrong shape fails here, with the server's own
message); start the worker processes; run each step - snapshot the server at every
window edge, publish live progress, abort at once if the server goes away; judge
validity and the SLO; write the reports.

Never a hang: every wait has a deadline (worker start, each step's drain, result
collection), a server that stops answering aborts the step within about a second,
and the reports written after an abort carry whatever was measured.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from dataclasses import replace
from typing import Callable

from sft_engine.errors import ConfigError, LoadTestError
from sft_engine.loadtest.analysis import StepObservations, build_step, host_cpu_busy, read_host_cpu
from sft_engine.loadtest.capacity import CapacitySearch
from sft_engine.loadtest.config import LoadTestConfig
from sft_engine.loadtest.payload import Payload, build_image_payload, build_payload, image_files
from sft_engine.loadtest.probe import ServerProbe, make_probe
from sft_engine.loadtest.progress import LiveExporter, Progress
from sft_engine.loadtest.results import EXIT_CODES, FAIL, INVALID, MEASURED, PASS, SCHEMA_VERSION, LoadTestResult, StepResult
from sft_engine.loadtest.schedule import StepPlan, worker_plans
from sft_engine.loadtest.server_stats import EdgeSnapshot, take_snapshot
from sft_engine.loadtest.slo import judge_step, overall_verdict
from sft_engine.loadtest.soak import Sampler, SoakReport, judge
from sft_engine.loadtest.spec import SoakSpec
from sft_engine.loadtest.pool import WorkerPool
from sft_engine.triton.control import ControlError
from sft_engine.triton.failures import FailureKind
from sft_engine.triton.model import ServedModel

__all__ = ["run_loadtest", "inspect_model", "StepExecutor"]

LOGGER = logging.getLogger(__name__)

#: between handing out a plan and its first intended send: workers are waiting, 0.2 s is ample
START_DELAY_S = 0.2
#: without a client timeout, requests unanswered this long after the end count as "unfinished"
DEFAULT_DRAIN_S = 10.0
PROGRESS_INTERVAL_S = 0.25
#: longest wait for the server to finish a previous step's backlog
SETTLE_MAX_S = 10.0

ProgressCallback = Callable[[Progress], None]
StepCallback = Callable[[StepResult], None]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("sft-engine")
    except Exception:  # noqa: BLE001 - a missing dist-info must not break a load test
        return "unknown"


def inspect_model(probes: list[ServerProbe], model: str, version: str = "") -> ServedModel:
    """The model's config from the first endpoint; every endpoint must serve the model."""
    spec: ServedModel | None = None
    for probe in probes:
        url = probe.endpoint.url
        try:
            if not probe.live():
                raise LoadTestError(f"no Triton server answers at {url} ({probe.endpoint.protocol})", hint="start the server, or fix --url/--protocol")
            config = probe.model_config(model, version)
            ready = probe.model_ready(model, version)
        except ControlError as exc:
            if exc.kind is FailureKind.MODEL_NOT_FOUND:
                raise LoadTestError(f"model '{model}'{' version ' + version if version else ''} is unknown at {url}: {exc.message}",
                                    hint="check --model/--model-version against the server's repository index") from None
            raise LoadTestError(f"cannot read model '{model}' at {url}: {exc.message}", hint="check --url and that the server is up") from None
        if not ready:
            raise LoadTestError(f"model '{model}' is not ready at {url}", hint="wait until it has loaded, or check the server log")
        if spec is None:
            spec = ServedModel.from_config(config, version)
    assert spec is not None
    return spec


def _preflight(probes: list[ServerProbe], payload: Payload) -> None:
    """Send the request once per endpoint: a request the server refuses fails the run now."""
    for probe in probes:
        try:
            probe.infer_raw(payload)
        except ControlError as exc:
            if exc.kind in (FailureKind.INVALID, FailureKind.REFUSED, FailureKind.MODEL_NOT_FOUND):
                raise ConfigError(f"the server rejects the load-test request for '{payload.model}': {exc.message}",
                                  hint="check --shape/--input-data/--batch-size against the model's config") from None
            raise LoadTestError(f"test request to {probe.endpoint.url} failed: {exc.message}", hint="check the server log") from None


class StepExecutor:
    """Runs one step at a time on a started worker pool."""

    def __init__(
        self,
        config: LoadTestConfig,
        pool: WorkerPool,
        probes: list[ServerProbe],
        progress: ProgressCallback | None,
        exporter: LiveExporter | None,
        steps_planned: int | None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.probes = probes
        self.progress = progress
        self.exporter = exporter
        self.steps_planned = steps_planned
        self.metrics_urls = [ep.metrics_url for ep in config.endpoints]
        self.next_index = 0
        self.interrupted = False
        self.left_backlog = False
        self._last_tick = (0.0, 0)

    # -- plans ----------------------------------------------------------------------
    def _plan(self, mode: str, level: float) -> StepPlan:
        load = self.config.load
        start = time.monotonic() + START_DELAY_S
        measure_start = start + load.warmup_s
        timeout_s = load.timeout_ms / 1000.0 if load.timeout_ms else None
        plan = StepPlan(
            index=self.next_index,
            mode=mode,  # type: ignore[arg-type]
            concurrency=int(level) if mode == "closed" else None,
            rate=float(level) if mode == "open" else None,
            arrival=load.arrival,
            start=start,
            measure_start=measure_start,
            measure_end=measure_start + load.duration_s,
            window_s=load.window_s,
            seed=load.seed,
            drain_s=(timeout_s + 0.5) if timeout_s else DEFAULT_DRAIN_S,
        )
        self.next_index += 1
        return plan

    def _replan(self, plan: StepPlan) -> StepPlan:
        """The same step, starting now (settling took time)."""
        shift = time.monotonic() + START_DELAY_S - plan.start
        if shift <= 0:
            return plan
        return replace(plan, start=plan.start + shift, measure_start=plan.measure_start + shift, measure_end=plan.measure_end + shift)

    def run_closed(self, concurrency: int, sustain_ratio: float | None = None) -> StepResult:
        return self.run(self._plan("closed", concurrency), sustain_ratio)

    def run_open(self, rate: float, sustain_ratio: float | None = None) -> StepResult:
        return self.run(self._plan("open", rate), sustain_ratio)

    # -- one step -------------------------------------------------------------------
    def _snapshot(self) -> EdgeSnapshot:
        return take_snapshot(self.probes, self.metrics_urls, self.config.model, self.config.model_version)

    def _tick(self, plan: StepPlan, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_tick[0] < PROGRESS_INTERVAL_S:
            return
        rows = self.pool.live_rows()
        rows = [r for r in rows if int(r["step"]) == plan.index] or rows
        succeeded = int(sum(r["succeeded"] for r in rows))
        last_t, last_ok = self._last_tick
        rate = (succeeded - last_ok) / (now - last_t) if last_t and now > last_t and succeeded >= last_ok else None
        self._last_tick = (now, succeeded)
        if now < plan.measure_start:
            phase, elapsed, total = ("warmup", now - plan.start, plan.measure_start - plan.start) if now >= plan.start else ("starting", 0.0, 0.0)
        elif now < plan.measure_end:
            phase, elapsed, total = "measure", now - plan.measure_start, plan.measure_end - plan.measure_start
        else:
            phase, elapsed, total = "drain", now - plan.measure_end, plan.drain_s
        p50 = [r["recent_p50_ms"] for r in rows if r["recent_p50_ms"] > 0]
        p99 = [r["recent_p99_ms"] for r in rows if r["recent_p99_ms"] > 0]
        lag = [r["recent_lag_p99_ms"] for r in rows]
        label = f"closed c={plan.concurrency}" if plan.mode == "closed" else f"open {plan.rate:g}/s {plan.arrival}"
        snapshot = Progress(
            step=plan.index, label=label, phase=phase, phase_elapsed_s=max(0.0, elapsed), phase_total_s=total,
            sent=int(sum(r["sent"] for r in rows)), succeeded=succeeded, failed=int(sum(r["failed"] for r in rows)),
            in_flight=int(sum(r["in_flight"] for r in rows)), throughput_rps=rate,
            recent_p50_ms=(sum(p50) / len(p50)) if p50 else None, recent_p99_ms=max(p99) if p99 else None,
            send_lag_p99_ms=max(lag) if lag else None, steps_planned=self.steps_planned,
        )
        self._emit(snapshot)

    def _emit(self, snapshot: Progress) -> None:
        if self.exporter is not None:
            self.exporter.update(snapshot)
        if self.progress is not None:
            try:
                self.progress(snapshot)
            except Exception:  # noqa: BLE001 - a broken progress display must not kill the measurement
                LOGGER.exception("progress callback failed")

    def _sleep_until(self, plan: StepPlan, t: float) -> bool:
        """Sleep until ``t`` while ticking progress; False if the step was aborted meanwhile."""
        while True:
            now = time.monotonic()
            if self.pool.aborted():
                return False
            if now >= t:
                return True
            time.sleep(min(0.05, t - now))
            self._tick(plan)

    def _settle(self) -> None:
        """After a step that left requests behind (timeouts), wait until the server is idle.

        A client that gave up does not stop the server: its backlog would be served
        during the next step and inflate it. Idle = no pending request in /metrics, or
        (without metrics) a success+failure count that stopped moving.
        """
        deadline = time.monotonic() + SETTLE_MAX_S
        last = None
        while time.monotonic() < deadline:
            snap = self._snapshot()
            if snap.unreachable:
                return
            if snap.metrics is not None and snap.metrics.ok and "pending_requests" in snap.metrics.gauges:
                if snap.metrics.gauges["pending_requests"] <= 0:
                    return
            else:
                count = snap.stats.stages.get("success", (0, 0))[0] + snap.stats.stages.get("fail", (0, 0))[0]
                if count == last:
                    return
                last = count
            time.sleep(0.2)
        LOGGER.warning("the server still had pending requests %.0f s after the previous step", SETTLE_MAX_S)

    def run(self, plan: StepPlan, sustain_ratio: float | None = None) -> StepResult:
        config = self.config
        self._last_tick = (0.0, 0)
        if self.left_backlog:
            self._settle()
        before = self._snapshot()
        plan = self._replan(plan)  # the snapshots took time: the first send is START_DELAY_S from now
        aborted: str | None = None
        if before.unreachable:
            aborted = f"server unreachable before the step: {before.unreachable}"
        n_workers = self.pool.n_workers
        self.pool.send_step(worker_plans(plan, n_workers))
        edges: list[EdgeSnapshot] = []
        host0 = cpu0 = None
        wall0 = time.monotonic()
        try:
            for t in [plan.measure_start] + [b for _, b in plan.windows]:
                if aborted or not self._sleep_until(plan, t):
                    break
                snap = self._snapshot()
                edges.append(snap)
                if t == plan.measure_start:
                    host0, cpu0, wall0 = read_host_cpu(), time.process_time(), time.monotonic()
                if snap.unreachable:
                    aborted = f"server unreachable: {snap.unreachable}"
                    break
        except KeyboardInterrupt:
            aborted = "interrupted"
            self.interrupted = True
        if aborted:
            self.pool.abort()
        elif self.pool.aborted():
            aborted = "aborted"  # a worker's reason replaces this below
        measured_until = min(time.monotonic(), plan.measure_end) if aborted else plan.measure_end
        host1, cpu1, wall1 = read_host_cpu(), time.process_time(), time.monotonic()
        deadline = (time.monotonic() + 5.0) if aborted else (plan.measure_end + plan.drain_s + 15.0)
        try:
            results, errors = self.pool.collect(deadline, on_wait=lambda: self._tick(plan))
        except KeyboardInterrupt:
            self.interrupted = True
            self.pool.abort()
            results, errors = self.pool.collect(time.monotonic() + 3.0)
            aborted = aborted or "interrupted"
        worker_reasons = [r.aborted for r in results if r.aborted and r.aborted != "aborted by the coordinator"]
        if worker_reasons and aborted in (None, "aborted"):
            aborted = worker_reasons[0]
        if errors and not aborted and any("did not report" in e for e in errors):
            aborted = "a worker did not report in time"
        after = None if (aborted and "unreachable" in aborted) else self._snapshot()
        obs = StepObservations(
            plan=plan, results=results, worker_errors=errors, before=before, edges=edges, after=after,
            measured_until=measured_until,
            coordinator_cpu=round((cpu1 - cpu0) / (wall1 - wall0), 4) if cpu0 is not None and wall1 > wall0 else None,
            host_cpu=host_cpu_busy(host0, host1), load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            aborted=aborted, n_workers=n_workers,
        )
        step = judge_step(build_step(obs, config), config, errors, sustain_ratio)
        self.left_backlog = any(step.requests.errors.get(k) for k in ("timeout", "unfinished", "aborted"))
        self._tick(plan, force=True)
        done = Progress(
            step=plan.index, label=step.label, phase="done", phase_elapsed_s=step.duration_s, phase_total_s=config.load.duration_s,
            sent=step.requests.sent, succeeded=step.requests.succeeded, failed=step.requests.failed, in_flight=0,
            throughput_rps=step.throughput_rps, recent_p50_ms=step.latency_ms.get(50.0), recent_p99_ms=step.latency_ms.get(99.0),
            send_lag_p99_ms=step.send_lag_ms.get(99.0), steps_planned=self.steps_planned, top_error=_top_error_text(step),
        )
        self._emit(done)
        return step


def _top_error_text(step: StepResult) -> str | None:
    """The step's most frequent failure for the console's closing line: its kind, count and message."""
    top = step.top_error
    if top is None:
        return None
    kind, count, message = top
    return f"{kind} x{count}: {message}" if message else f"{kind} x{count}"


def run_soak(config: LoadTestConfig, executor: StepExecutor, spec: SoakSpec) -> tuple[StepResult, SoakReport]:
    """The soak's one open-loop step, with the server's processes sampled throughout (``soak.py``)."""
    ports = [ep.port for ep in config.endpoints if ep.is_loopback]
    sampler = Sampler(ports, spec.sample_s).start(t0=time.monotonic() + START_DELAY_S + config.load.warmup_s)
    try:
        step = executor.run_open(config.load.rates[0])
    finally:
        sampler.stop()
    windows = [((w.start_s + w.end_s) / 2, w.latency_ms.get(99.0)) for w in step.windows]
    return step, judge(spec, sampler.series, windows, sampler.server_pid)


def soak_verdict(verdict: str, reasons: list[str], soak: SoakReport) -> tuple[str, int, list[str]]:
    """A growing series fails a valid run; a soak that holds passes a run without other targets."""
    if verdict == INVALID:
        return verdict, EXIT_CODES[verdict], reasons
    if not soak.passed:
        return FAIL, EXIT_CODES[FAIL], soak.reasons + reasons
    verdict = PASS if verdict == MEASURED else verdict
    return verdict, EXIT_CODES[verdict], reasons + soak.reasons


def _pool_size(config: LoadTestConfig) -> int:
    """Workers that have something to do: a closed loop of concurrency 2 needs at most 2."""
    load = config.load
    if config.find_capacity:
        return config.workers
    if load.mode == "closed":
        return max(1, min(config.workers, max(load.concurrency)))
    return config.workers


def run_loadtest(
    config: LoadTestConfig,
    progress: ProgressCallback | None = None,
    on_step: StepCallback | None = None,
) -> LoadTestResult:
    """Run the load test ``config`` describes; write reports if ``config.report`` is set.

    Raises ConfigError/LoadTestError for what prevents the test from starting (bad
    spec, unknown model, unreachable server, rejected request). Whatever happens
    after the first step starts ends in a result (an aborted step is INVALID).
    """
    config.validate()
    started = _dt.datetime.now(_dt.timezone.utc)
    probes = [make_probe(ep, admin_key=config.admin_key, tls=config.tls) for ep in config.endpoints]
    exporter: LiveExporter | None = None
    steps: list[StepResult] = []
    capacity = None
    soak: SoakReport | None = None
    interrupted = False
    try:
        spec = inspect_model(probes, config.model, config.model_version)
        if config.images is not None:
            payload = build_image_payload(spec, image_files(config.images), config.load.batch_size)
        else:
            payload = build_payload(spec, config.load.batch_size, config.shapes, config.input_data, config.load.seed)
        for variant in payload.variants:
            _preflight(probes, variant)  # every image file must be one the server accepts
        if config.prometheus_port is not None:
            try:
                exporter = LiveExporter(config.prometheus_port)
            except OSError as exc:
                raise ConfigError(f"--prometheus-port {config.prometheus_port} cannot be bound: {exc.strerror or exc}",
                                  hint="choose a free port, or 0") from None
        timeout_s = config.load.timeout_ms / 1000.0 if config.load.timeout_ms else None
        pool = WorkerPool(_pool_size(config), config.endpoints, payload, timeout_s, config.load.max_in_flight,
                          config.validity.unreachable_after_s, transport=config.transport, tls=config.tls)
        with pool:
            levels = config.load.levels
            executor = StepExecutor(config, pool, probes, progress, exporter, None if config.find_capacity else len(levels))

            def record(step: StepResult) -> StepResult:
                if on_step is not None:
                    on_step(step)
                return step

            if config.find_capacity:
                ratio = (config.capacity.sustain_ratio if config.capacity else None) or 0.95
                search = CapacitySearch(
                    config,
                    run_open=lambda rate: record(executor.run_open(rate, ratio)),
                    run_probe=lambda c: record(executor.run_closed(c)),
                )
                steps, capacity = search.run()
            elif config.soak is not None:
                step, soak = run_soak(config, executor, config.soak)
                steps.append(record(step))
            else:
                for level in levels:
                    step = executor.run_closed(int(level)) if config.load.mode == "closed" else executor.run_open(level)
                    steps.append(record(step))
                    if step.aborted or executor.interrupted:
                        break
            interrupted = executor.interrupted
    finally:
        for probe in probes:
            probe.close()
        if exporter is not None:
            exporter.close()
    verdict, code, reasons = overall_verdict(steps, capacity)
    if soak is not None:
        verdict, code, reasons = soak_verdict(verdict, reasons, soak)
    result = LoadTestResult(
        schema_version=SCHEMA_VERSION,
        tool={"name": "sft-engine loadtest", "version": _version()},
        started_at=started.isoformat(timespec="seconds"),
        finished_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        verdict=verdict,
        exit_code=code,
        reasons=reasons,
        config=config.to_dict(),
        model=spec.to_dict(),
        request={"batch_size": payload.batch_size, "input_shapes": {k: list(v) for k, v in payload.input_shapes.items()},
                 "input_bytes": payload.input_bytes, "request_bytes": payload.request_bytes(config.endpoints[0].protocol),
                 "images": len(payload.variants) if config.images is not None else 0, "protocol": config.endpoints[0].protocol},
        steps=steps,
        capacity=capacity,
        soak=soak,
    )
    if config.report is not None:
        from sft_engine.loadtest.report import write_reports

        result.report_files = write_reports(result, config.report)
    if interrupted:
        raise KeyboardInterrupt
    return result
