"""The server's side of the story: Triton statistics and Prometheus metrics, diffed per window.

Triton's statistics API (``/v2/models/<m>/stats``) holds cumulative counts and
nanoseconds for queue, compute input/infer/output and one entry per executed batch
size; ``/metrics`` holds the same counters plus gauges (pending requests, CPU/GPU
utilisation and memory). Both are cumulative since the server started, so the
coordinator snapshots them at every window edge and reports differences: what the
server did *during* each window. The text format is parsed with prometheus_client's
own parser, never with regular expressions.

Reconciliation compares the client's count of requests with the server's: a load
test that claims N requests while the server saw M != N is measuring something else
(another client, a proxy, retries) and says so.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from sft_engine.loadtest.probe import UNREACHABLE, ServerProbe
from sft_engine.triton.control import ControlError

__all__ = [
    "StatsSnapshot", "ServerWindow", "MetricsSnapshot", "EdgeSnapshot", "Reconciliation",
    "parse_statistics", "diff_stats", "sum_snapshots", "parse_metrics", "scrape_metrics", "sum_metrics", "diff_metrics",
    "take_snapshot", "server_window", "reconcile",
]

LOGGER = logging.getLogger(__name__)

_STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")

#: counters read from /metrics (family name -> report key)
_METRIC_COUNTERS = {
    "nv_inference_request_success": "request_success",
    "nv_inference_request_failure": "request_failure",
    "nv_inference_count": "inference_count",
    "nv_inference_exec_count": "execution_count",
    "nv_inference_request_duration_us": "request_duration_us",
    "nv_inference_queue_duration_us": "queue_duration_us",
    "nv_inference_compute_input_duration_us": "compute_input_duration_us",
    "nv_inference_compute_infer_duration_us": "compute_infer_duration_us",
    "nv_inference_compute_output_duration_us": "compute_output_duration_us",
}
#: per-model gauges, and server-wide gauges (no model label)
_MODEL_GAUGES = {"nv_inference_pending_request_count": "pending_requests"}
_HOST_GAUGES = {
    "nv_cpu_utilization": "cpu_utilization",
    "nv_cpu_memory_used_bytes": "cpu_memory_used_bytes",
    "nv_gpu_utilization": "gpu_utilization",
    "nv_gpu_memory_used_bytes": "gpu_memory_used_bytes",
}


@dataclass
class StatsSnapshot:
    """Cumulative statistics of one model (summed over endpoints), at time ``t``."""

    t: float
    ok: bool = True
    error: str | None = None
    inference_count: int = 0
    execution_count: int = 0
    #: stage -> (count, ns)
    stages: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: batch size -> executions
    batches: dict[int, int] = field(default_factory=dict)


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def parse_statistics(data: Mapping[str, Any], model: str, t: float) -> StatsSnapshot:
    """Parse the statistics JSON (HTTP, or gRPC ``as_json`` where int64s are strings)."""
    snap = StatsSnapshot(t=t, stages={s: (0, 0) for s in _STAGES})
    for entry in data.get("model_stats", []) or []:
        if entry.get("name") != model:
            continue
        snap.inference_count += _int(entry.get("inference_count"))
        snap.execution_count += _int(entry.get("execution_count"))
        stats = entry.get("inference_stats", {}) or {}
        for stage in _STAGES:
            item = stats.get(stage, {}) or {}
            count, ns = snap.stages[stage]
            snap.stages[stage] = (count + _int(item.get("count")), ns + _int(item.get("ns")))
        for batch in entry.get("batch_stats", []) or []:
            size = _int(batch.get("batch_size"))
            executions = _int((batch.get("compute_infer", {}) or {}).get("count"))
            snap.batches[size] = snap.batches.get(size, 0) + executions
    return snap


def sum_snapshots(parts: Iterable[StatsSnapshot], t: float) -> StatsSnapshot:
    """Several endpoints of one scaled-out service are one server, for the report."""
    out = StatsSnapshot(t=t, stages={s: (0, 0) for s in _STAGES})
    for part in parts:
        if not part.ok:
            out.ok = False
            out.error = part.error
        out.inference_count += part.inference_count
        out.execution_count += part.execution_count
        for stage, (count, ns) in part.stages.items():
            c0, n0 = out.stages.get(stage, (0, 0))
            out.stages[stage] = (c0 + count, n0 + ns)
        for size, n in part.batches.items():
            out.batches[size] = out.batches.get(size, 0) + n
    return out


@dataclass
class ServerWindow:
    """What the server did between two snapshots."""

    duration_s: float
    requests_success: int
    requests_failure: int
    inference_count: int
    execution_count: int
    throughput_rps: float
    avg_request_us: float | None
    avg_queue_us: float | None
    avg_compute_input_us: float | None
    avg_compute_infer_us: float | None
    avg_compute_output_us: float | None
    avg_batch_size: float | None
    #: executed batch size -> executions
    batch_sizes: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] | None = None


def diff_stats(a: StatsSnapshot, b: StatsSnapshot) -> ServerWindow | None:
    """Differences ``b - a``; None when either snapshot failed."""
    if not (a.ok and b.ok):
        return None

    def delta(stage: str) -> tuple[int, int]:
        c1, n1 = b.stages.get(stage, (0, 0))
        c0, n0 = a.stages.get(stage, (0, 0))
        return max(0, c1 - c0), max(0, n1 - n0)

    def avg_us(stage: str) -> float | None:
        count, ns = delta(stage)
        return round(ns / count / 1000.0, 3) if count else None

    succ, _ = delta("success")
    fail, _ = delta("fail")
    executions = max(0, b.execution_count - a.execution_count)
    inferences = max(0, b.inference_count - a.inference_count)
    sizes = {str(k): b.batches.get(k, 0) - a.batches.get(k, 0) for k in sorted(set(a.batches) | set(b.batches))}
    duration = max(b.t - a.t, 1e-9)
    return ServerWindow(
        duration_s=round(duration, 6),
        requests_success=succ,
        requests_failure=fail,
        inference_count=inferences,
        execution_count=executions,
        throughput_rps=round(succ / duration, 3),
        avg_request_us=avg_us("success"),
        avg_queue_us=avg_us("queue"),
        avg_compute_input_us=avg_us("compute_input"),
        avg_compute_infer_us=avg_us("compute_infer"),
        avg_compute_output_us=avg_us("compute_output"),
        avg_batch_size=round(inferences / executions, 3) if executions else None,
        batch_sizes={k: v for k, v in sizes.items() if v > 0},
    )


# -- /metrics ---------------------------------------------------------------------------
@dataclass
class MetricsSnapshot:
    t: float
    ok: bool = True
    error: str | None = None
    counters: dict[str, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)


def parse_metrics(text: str, model: str, version: str = "", t: float = 0.0) -> MetricsSnapshot:
    """Triton's Prometheus text -> counters of ``model`` (all versions unless given) and gauges."""
    from prometheus_client.parser import text_string_to_metric_families

    snap = MetricsSnapshot(t=t)
    gpu_util: list[float] = []
    for family in text_string_to_metric_families(text):
        # the parser names counter samples "<family>_total"; match on the family instead
        name = family.name
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels, value = sample.labels, float(sample.value)
            if name in _METRIC_COUNTERS or name in _MODEL_GAUGES:
                if labels.get("model") != model or (version and labels.get("version") != version):
                    continue
                key = _METRIC_COUNTERS.get(name) or _MODEL_GAUGES[name]
                target = snap.counters if name in _METRIC_COUNTERS else snap.gauges
                target[key] = target.get(key, 0.0) + value
            elif name in _HOST_GAUGES:
                key = _HOST_GAUGES[name]
                if key == "gpu_utilization":
                    gpu_util.append(value)
                else:
                    snap.gauges[key] = snap.gauges.get(key, 0.0) + value
    if gpu_util:
        snap.gauges["gpu_utilization"] = sum(gpu_util) / len(gpu_util)
    return snap


def scrape_metrics(url: str, model: str, version: str = "", timeout_s: float = 2.0) -> MetricsSnapshot:
    t = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            text = resp.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return MetricsSnapshot(t=t, ok=False, error=f"{url}: {getattr(exc, 'reason', exc)}")
    try:
        return parse_metrics(text, model, version, t)
    except ValueError as exc:
        return MetricsSnapshot(t=t, ok=False, error=f"{url}: unparsable metrics: {exc}")


def sum_metrics(parts: Iterable[MetricsSnapshot], t: float) -> MetricsSnapshot:
    out = MetricsSnapshot(t=t)
    for part in parts:
        if not part.ok:
            out.ok, out.error = False, part.error
            continue
        for key, value in part.counters.items():
            out.counters[key] = out.counters.get(key, 0.0) + value
        for key, value in part.gauges.items():
            out.gauges[key] = out.gauges.get(key, 0.0) + value
    return out


def diff_metrics(a: MetricsSnapshot, b: MetricsSnapshot) -> dict[str, float] | None:
    """Counter deltas and the gauges as of ``b``."""
    if not (a.ok and b.ok):
        return None
    out = {key: round(b.counters.get(key, 0.0) - a.counters.get(key, 0.0), 3) for key in sorted(set(a.counters) | set(b.counters))}
    out.update({key: round(value, 3) for key, value in b.gauges.items()})
    return out


# -- snapshots over several endpoints ---------------------------------------------------
@dataclass
class EdgeSnapshot:
    """Statistics and metrics of every endpoint at one window edge."""

    t: float
    stats: StatsSnapshot
    metrics: MetricsSnapshot | None
    unreachable: str | None = None


def take_snapshot(probes: Iterable[ServerProbe], metrics_urls: Iterable[str | None], model: str, version: str = "") -> EdgeSnapshot:
    """Snapshot every endpoint; a refused connection is noted (the caller decides to abort)."""
    t = time.monotonic()
    stats_parts = []
    unreachable = None
    for probe in probes:
        try:
            stats_parts.append(parse_statistics(probe.statistics(model, version), model, time.monotonic()))
        except ControlError as exc:
            stats_parts.append(StatsSnapshot(t=time.monotonic(), ok=False, error=exc.message))
            if exc.kind in UNREACHABLE and not probe.live():
                unreachable = exc.message
    urls = [u for u in metrics_urls if u]
    metrics = sum_metrics([scrape_metrics(u, model, version) for u in urls], t) if urls else None
    return EdgeSnapshot(t=t, stats=sum_snapshots(stats_parts, t), metrics=metrics, unreachable=unreachable)


def server_window(a: EdgeSnapshot, b: EdgeSnapshot) -> ServerWindow | None:
    window = diff_stats(a.stats, b.stats)
    if window is not None and a.metrics is not None and b.metrics is not None:
        window.metrics = diff_metrics(a.metrics, b.metrics)
    return window


# -- reconciliation ---------------------------------------------------------------------
@dataclass
class Reconciliation:
    """Client and server request counts over a whole step (warmup and drain included)."""

    client_sent: int
    #: sent minus requests refused before reaching the server (connection errors)
    client_reached_server: int
    server_received: int | None
    difference: int | None
    #: requests whose server-side fate the client cannot know (timed out, cancelled)
    uncertain: int
    ok: bool | None
    note: str = ""


def reconcile(client_totals: Mapping[str, int], before: StatsSnapshot, after: StatsSnapshot) -> Reconciliation:
    sent = int(sum(client_totals.values()))
    reached = sent - int(client_totals.get("unavailable", 0))
    uncertain = int(client_totals.get("timeout", 0) + client_totals.get("aborted", 0) + client_totals.get("unfinished", 0))
    if not (before.ok and after.ok):
        return Reconciliation(sent, reached, None, None, uncertain, None, note="server statistics unavailable")
    succ = after.stages.get("success", (0, 0))[0] - before.stages.get("success", (0, 0))[0]
    fail = after.stages.get("fail", (0, 0))[0] - before.stages.get("fail", (0, 0))[0]
    server = int(succ + fail)
    diff = server - reached
    tolerance = uncertain + max(2, int(0.001 * reached))
    ok = abs(diff) <= tolerance
    note = ""
    if not ok and diff > 0:
        note = "the server saw more requests than this client sent: another client is loading it"
    elif not ok:
        note = "the server saw fewer requests than this client sent: a proxy, a cache or lost requests in between"
    return Reconciliation(sent, reached, server, diff, uncertain, ok, note)
