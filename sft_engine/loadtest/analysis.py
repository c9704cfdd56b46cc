"""Turn what the workers and the server reported into one ``StepResult``.

Merging is exact: HDR histograms of every worker and window add bucket by bucket,
counts add. Throughput is successful answers *received* inside the measured
interval divided by its length - what the server delivered, honest under overload
(counting by send time would credit requests answered long after the interval).
Latency percentiles cover every request *scheduled* inside the interval, answered
whenever (drain included), so a request held up by a stall is never left out.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from sft_engine.loadtest.config import LoadTestConfig
from sft_engine.loadtest.spec import percentile_label
from sft_engine.loadtest.histogram import LatencyHistogram
from sft_engine.loadtest.results import (
    GeneratorCheck, RequestCounts, error_window_of, Stability, StepResult, Validity, WindowResult,
)
from sft_engine.loadtest.schedule import StepPlan
from sft_engine.loadtest.server_stats import EdgeSnapshot, reconcile, server_window
from sft_engine.loadtest.worker import WorkerStepResult

__all__ = ["StepObservations", "build_step", "stability_of", "read_host_cpu", "host_cpu_busy"]

#: a climb smaller than this is noise whatever its ratio (sub-millisecond services jitter)
STABILITY_MIN_RISE_MS = 5.0
#: each third must hold this many samples beyond the gated percentile to be judged
STABILITY_TAIL_SAMPLES = 5


@dataclass
class StepObservations:
    """Everything the coordinator gathered while a step ran."""

    plan: StepPlan
    results: list[WorkerStepResult]
    worker_errors: list[str]
    before: EdgeSnapshot | None
    edges: list[EdgeSnapshot]  # at measure start and each window end (fewer if aborted)
    after: EdgeSnapshot | None
    measured_until: float
    coordinator_cpu: float | None
    host_cpu: float | None
    load_average: list[float] | None
    aborted: str | None
    n_workers: int


def read_host_cpu() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole host from /proc/stat; None where unavailable."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return total - idle, total


def host_cpu_busy(a: tuple[int, int] | None, b: tuple[int, int] | None) -> float | None:
    """Fraction of all host cores busy between two ``read_host_cpu`` readings."""
    if a is None or b is None or b[1] <= a[1]:
        return None
    return round((b[0] - a[0]) / (b[1] - a[1]), 4)


def stability_of(window_hists: Sequence[LatencyHistogram], percentile: float, tolerance: float) -> Stability:
    """Split the windows into thirds; unstable if the percentile rises third after third.

    perf_analyzer judges stability on the mean (by default) and accepts a run whose
    latency still climbs. Here the gated percentile decides, and a climb must be
    monotonic *and* large (x(1 + tolerance), and at least STABILITY_MIN_RISE_MS) -
    the signature of a queue that grows without bound, not of jitter.
    """
    n = len(window_hists)
    if n < 3:
        return Stability(percentile, judged=False, stable=None, reason=f"{n} window(s): at least 3 are needed")
    groups = np.array_split(np.arange(n), 3)
    thirds = [LatencyHistogram.merge(window_hists[i] for i in group) for group in groups]
    need = int(math.ceil(round(STABILITY_TAIL_SAMPLES / (1.0 - percentile / 100.0), 6)))
    values = [h.percentile_us(percentile) / 1000.0 if h.count else None for h in thirds]
    counts = [h.count for h in thirds]
    if min(counts) < need:
        return Stability(percentile, judged=False, stable=None, values_ms=[_round(v) for v in values],
                         reason=f"a third of the run has {min(counts)} samples; {percentile_label(percentile)} needs {need} to judge")
    v1, v2, v3 = (float(v) for v in values)  # type: ignore[arg-type]
    climbing = v1 < v2 < v3 and v3 >= (1.0 + tolerance) * v1 and (v3 - v1) >= STABILITY_MIN_RISE_MS
    reason = (
        f"{percentile_label(percentile)} climbed {v1:.1f} -> {v2:.1f} -> {v3:.1f} ms across the run: the load is not sustainable"
        if climbing else ""
    )
    return Stability(percentile, judged=True, stable=not climbing, values_ms=[_round(v) for v in values], reason=reason)


def _round(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 4)


def build_step(obs: StepObservations, config: LoadTestConfig) -> StepResult:
    """Merge worker results and server snapshots into a StepResult (no verdict yet)."""
    plan = obs.plan
    qs = config.report_percentiles
    plan_windows = plan.windows
    n_windows = len(plan_windows)
    ms = plan.measure_start
    duration = max(1e-9, min(obs.measured_until, plan.measure_end) - ms)

    win_lat = [LatencyHistogram() for _ in range(n_windows)]
    win_svc = [LatencyHistogram() for _ in range(n_windows)]
    win_lag = [LatencyHistogram() for _ in range(n_windows)]
    sched = np.zeros(n_windows, dtype=np.int64)
    sent = np.zeros(n_windows, dtype=np.int64)
    ok_done = np.zeros(n_windows, dtype=np.int64)
    win_errors: list[dict[str, int]] = [{} for _ in range(n_windows)]
    totals: dict[str, int] = {}
    per_endpoint = np.zeros(len(config.endpoints), dtype=np.int64)
    examples: dict[str, str] = {}
    cap_waits = 0
    max_in_flight = 0
    worker_cpu = []
    for res in obs.results:
        for i, wd in enumerate(res.windows[:n_windows]):
            sched[i] += wd.scheduled
            sent[i] += wd.sent
            ok_done[i] += wd.succeeded_done
            for kind, n in wd.errors.items():
                win_errors[i][kind] = win_errors[i].get(kind, 0) + n
            win_lat[i].add(LatencyHistogram.decode(wd.latency))
            win_svc[i].add(LatencyHistogram.decode(wd.service))
            win_lag[i].add(LatencyHistogram.decode(wd.lag))
        for kind, n in res.totals.items():
            totals[kind] = totals.get(kind, 0) + n
        per_endpoint[: len(res.per_endpoint)] += np.asarray(res.per_endpoint, dtype=np.int64)
        for kind, text in res.examples.items():
            examples.setdefault(kind, text)
        cap_waits += res.cap_waits
        max_in_flight += res.max_in_flight_seen
        worker_cpu.append(round(res.cpu_s / res.wall_s, 4) if res.wall_s > 0 else 0.0)

    lat_all = LatencyHistogram.merge(win_lat)
    svc_all = LatencyHistogram.merge(win_svc)
    lag_all = LatencyHistogram.merge(win_lag)
    errors: dict[str, int] = {}
    for we in win_errors:
        for kind, n in we.items():
            errors[kind] = errors.get(kind, 0) + n
    failed = int(sum(errors.values()))
    scheduled = int(sched.sum())
    succeeded = scheduled - failed
    succeeded_in_interval = int(ok_done.sum())

    windows = []
    for i, (a, b) in enumerate(plan_windows):
        if a >= obs.measured_until:
            break
        w_len = max(1e-9, min(b, obs.measured_until) - a)
        server = server_window(obs.edges[i], obs.edges[i + 1]) if i + 1 < len(obs.edges) else None
        summary = win_lat[i].summary((50.0, 90.0, 99.0))
        windows.append(WindowResult(
            index=i, start_s=round(a - ms, 6), end_s=round(min(b, obs.measured_until) - ms, 6),
            scheduled=int(sched[i]), sent=int(sent[i]), succeeded_in_window=int(ok_done[i]),
            failed=int(sum(win_errors[i].values())), errors=win_errors[i],
            throughput_rps=round(float(ok_done[i]) / w_len, 3), latency_ms=summary, server=server,
        ))

    gated = (config.slo.gated_percentile if config.slo else None) or 99.0
    tolerance = config.slo.stability_tolerance if config.slo else 1.0
    complete_windows = [win_lat[w.index] for w in windows if w.end_s - w.start_s >= 0.999 * plan.window_s or w.index == n_windows - 1]
    stability = stability_of(complete_windows if not obs.aborted else [], gated, tolerance)
    if obs.aborted:
        stability.reason = "not judged: the step was aborted"

    server = server_window(obs.edges[0], obs.edges[-1]) if len(obs.edges) >= 2 else None
    recon = reconcile(totals, obs.before.stats, obs.after.stats) if obs.before and obs.after else None
    lag_summary = lag_all.summary((50.0, 90.0, 99.0, 99.9))
    tolerance_ms = config.validity.max_send_lag_p99_ms
    lag_p99 = lag_summary.get(99.0)
    generator = GeneratorCheck(
        workers=obs.n_workers,
        worker_cpu=worker_cpu,
        coordinator_cpu=obs.coordinator_cpu,
        host_cpu_busy=obs.host_cpu,
        host_cpus=os.cpu_count() or 0,
        load_average=obs.load_average,
        send_lag_ms=lag_summary,
        send_lag_tolerance_ms=tolerance_ms,
        saturated=bool(lag_p99 is not None and lag_p99 > tolerance_ms),
        in_flight_cap_waits=cap_waits,
        max_in_flight=max_in_flight,
    )
    for i, cpu in enumerate(worker_cpu):
        if cpu > 0.9:
            generator.notes.append(f"worker {i} used {cpu:.0%} of a core: near its limit; add --workers")
    if cap_waits:
        generator.notes.append(
            f"{cap_waits} sends waited for the in-flight cap ({config.load.max_in_flight} per worker); "
            "their latency counts from the intended time"
        )

    batch = config.load.batch_size
    return StepResult(
        index=plan.index,
        mode=plan.mode,
        concurrency=plan.concurrency,
        rate_rps=plan.rate,
        arrival=plan.arrival if plan.mode == "open" else None,
        batch_size=batch,
        duration_s=round(duration, 6),
        warmup_s=round(plan.measure_start - plan.start, 6),
        window_s=plan.window_s,
        latency_basis="intended" if plan.mode == "open" else "sent",
        requests=RequestCounts(
            scheduled=scheduled, sent=int(sent.sum()), succeeded=succeeded, failed=failed, errors=errors,
            succeeded_in_interval=succeeded_in_interval,
        ),
        offered_rps=round(scheduled / duration, 3),
        sent_rps=round(float(sent.sum()) / duration, 3),
        throughput_rps=round(succeeded_in_interval / duration, 3),
        inferences_per_s=round(succeeded_in_interval * batch / duration, 3),
        error_rate=round(failed / scheduled, 6) if scheduled else None,
        latency_ms=lat_all.summary(qs),
        service_time_ms=svc_all.summary(qs),
        send_lag_ms=lag_summary,
        windows=windows,
        stability=stability,
        server=server,
        reconciliation=recon,
        generator=generator,
        endpoints=[{"url": ep.url, "requests": int(n)} for ep, n in zip(config.endpoints, per_endpoint)],
        error_examples=examples,
        validity=Validity(),
        slo=None,
        verdict="",
        aborted=obs.aborted,
        histograms={"latency": lat_all.encode(), "service_time": svc_all.encode(), "send_lag": lag_all.encode()},
        error_window=error_window_of(windows),
    )
