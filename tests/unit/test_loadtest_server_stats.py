"""Triton statistics and /metrics: parsed, summed over endpoints, diffed per window, reconciled."""

from __future__ import annotations

from sft_engine.loadtest.server_stats import (
    StatsSnapshot, diff_metrics, diff_stats, parse_metrics, parse_statistics, reconcile, sum_snapshots,
)

HTTP_STATS = {
    "model_stats": [{
        "name": "m", "version": "1", "inference_count": 130, "execution_count": 100,
        "inference_stats": {
            "success": {"count": 120, "ns": 1_200_000_000}, "fail": {"count": 2, "ns": 0},
            "queue": {"count": 120, "ns": 120_000_000}, "compute_input": {"count": 120, "ns": 12_000_000},
            "compute_infer": {"count": 120, "ns": 600_000_000}, "compute_output": {"count": 120, "ns": 24_000_000},
        },
        "batch_stats": [
            {"batch_size": 1, "compute_infer": {"count": 80, "ns": 1}},
            {"batch_size": 2, "compute_infer": {"count": 20, "ns": 1}},
        ],
    }, {"name": "other", "inference_count": 999}]
}

# gRPC as_json: int64 as strings, zero fields omitted
GRPC_STATS = {
    "model_stats": [{
        "name": "m", "version": "1", "inference_count": "230", "execution_count": "150",
        "inference_stats": {
            "success": {"count": "220", "ns": "2200000000"}, "fail": {},
            "queue": {"count": "220", "ns": "440000000"}, "compute_infer": {"count": "220", "ns": "1100000000"},
        },
        "batch_stats": [{"batch_size": "1", "compute_infer": {"count": "100"}}, {"batch_size": "4", "compute_infer": {"count": "30"}}],
    }]
}


def test_parse_http_and_grpc_forms() -> None:
    a = parse_statistics(HTTP_STATS, "m", t=10.0)
    assert a.inference_count == 130 and a.execution_count == 100
    assert a.stages["success"] == (120, 1_200_000_000) and a.stages["fail"] == (2, 0)
    assert a.batches == {1: 80, 2: 20}
    b = parse_statistics(GRPC_STATS, "m", t=12.0)
    assert b.stages["success"] == (220, 2_200_000_000) and b.stages["fail"] == (0, 0)
    assert b.batches == {1: 100, 4: 30}


def test_diff_gives_what_happened_in_the_window() -> None:
    a = parse_statistics(HTTP_STATS, "m", t=10.0)
    b = parse_statistics(GRPC_STATS, "m", t=12.0)
    w = diff_stats(a, b)
    assert w is not None
    assert w.requests_success == 100 and w.requests_failure == 0
    assert w.throughput_rps == 50.0
    assert w.avg_queue_us == 3200.0  # (440 - 120) ms over 100 requests
    assert w.avg_compute_infer_us == 5000.0
    assert w.avg_batch_size == 2.0  # 100 inferences in 50 executions
    assert w.batch_sizes == {"1": 20, "4": 30}
    assert diff_stats(a, StatsSnapshot(t=13.0, ok=False)) is None


def test_sum_over_endpoints() -> None:
    a = parse_statistics(HTTP_STATS, "m", t=1.0)
    total = sum_snapshots([a, a], t=1.0)
    assert total.stages["success"] == (240, 2_400_000_000) and total.batches == {1: 160, 2: 40}


METRICS = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="m",version="1"} 120
nv_inference_request_success{model="other",version="1"} 5
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="m",reason="REJECTED",version="1"} 2
nv_inference_request_failure{model="m",reason="BACKEND",version="1"} 1
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="m",version="1"} 5000
# HELP nv_inference_pending_request_count Instantaneous number of pending requests
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="m",version="1"} 3
# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.75
# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-a"} 0.5
nv_gpu_utilization{gpu_uuid="GPU-b"} 0.7
"""


def test_parse_metrics_with_prometheus_parser() -> None:
    snap = parse_metrics(METRICS, "m", t=1.0)
    assert snap.counters["request_success"] == 120
    assert snap.counters["request_failure"] == 3  # summed over reasons
    assert snap.counters["queue_duration_us"] == 5000
    assert snap.gauges["pending_requests"] == 3
    assert snap.gauges["cpu_utilization"] == 0.75
    assert abs(snap.gauges["gpu_utilization"] - 0.6) < 1e-9
    later = parse_metrics(METRICS.replace("} 120", "} 170"), "m", t=2.0)
    delta = diff_metrics(snap, later)
    assert delta is not None and delta["request_success"] == 50 and delta["pending_requests"] == 3
    assert parse_metrics(METRICS, "m", version="2").counters == {}


def test_reconcile_counts() -> None:
    before = parse_statistics(HTTP_STATS, "m", 0.0)
    after = parse_statistics(GRPC_STATS, "m", 1.0)  # server saw 98 more requests (100 ok, -2 fail)
    ok = reconcile({"ok": 95, "timeout": 3}, before, after)
    assert ok.server_received == 98 and ok.client_sent == 98 and ok.ok
    more = reconcile({"ok": 50}, before, after)
    assert more.ok is False and "another client" in more.note
    refused = reconcile({"ok": 98, "unavailable": 40}, before, after)
    assert refused.client_reached_server == 98 and refused.ok
    unknown = reconcile({"ok": 1}, before, StatsSnapshot(t=2.0, ok=False))
    assert unknown.ok is None
