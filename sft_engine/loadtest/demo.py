"""A short, self-sizing open-loop load test for ``sft-engine demo``.

The demo does not know its model's capacity, so it first measures it briefly
(closed loop, concurrency 2), then applies Poisson traffic at half of it - a load the
server should sustain - and writes the full reports. Returns a few lines to print.
"""

from __future__ import annotations

from pathlib import Path

from sft_engine.loadtest.config import LoadSpec, LoadTestConfig, parse_endpoint
from sft_engine.loadtest.runner import run_loadtest

__all__ = ["demo_run"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def demo_run(url: str, model: str, duration_s: float = 5.0, report_dir: Path | None = None, protocol: str = "grpc") -> str:
    """Probe, then run open loop at half the probed throughput; a summary of a few lines."""
    endpoint = parse_endpoint(url, protocol)  # type: ignore[arg-type]
    probe_load = LoadSpec(mode="closed", concurrency=(2,), duration_s=1.0, warmup_s=0.5, timeout_ms=5000)
    probe = run_loadtest(LoadTestConfig(endpoints=(endpoint,), model=model, load=probe_load, workers=1)).steps[0]
    rate = max(1.0, float(round(0.5 * probe.throughput_rps)))
    load = LoadSpec(mode="open", rates=(rate,), arrival="poisson", duration_s=duration_s, warmup_s=1.0,
                    window_s=min(1.0, duration_s), timeout_ms=5000)
    result = run_loadtest(LoadTestConfig(endpoints=(endpoint,), model=model, load=load, workers=1, report=report_dir))
    step = result.steps[0]
    lat = step.latency_ms
    lines = [
        f"closed-loop probe, 2 concurrent callers: {probe.throughput_rps:,.0f} req/s",
        f"open loop, Poisson arrivals at {rate:g} req/s for {duration_s:g} s: {step.throughput_rps:,.1f} req/s delivered, "
        f"{step.requests.failed} errors",
        f"latency from the intended send (ms): p50 {_ms(lat.get(50.0))}  p90 {_ms(lat.get(90.0))}  p99 {_ms(lat.get(99.0))}  "
        f"max {_ms(lat.max_ms)}  (send lag p99 {_ms(step.send_lag_ms.get(99.0))})",
        f"verdict: {result.verdict}" + (f" ({'; '.join(result.reasons)})" if result.reasons else ""),
    ]
    if result.report_files:
        lines.append(f"report: {result.report_files.get('markdown')}  plot: {result.report_files.get('plot')}")
    return "\n".join(lines)
