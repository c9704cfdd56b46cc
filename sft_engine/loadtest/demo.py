"""A short, self-sizing open-loop load test for ``sft-engine demo``.

The demo does not know its model's capacity, so it first measures it briefly (closed
loop, concurrency 2), then sweeps Poisson traffic over 30 %-70 % of it (the generator
shares the cores with the server; the sweep makes the plot show latency climbing with
load), gates the run on an example SLO (p99 within 100 ms, under 0.1 % errors; a lower
percentile when the steps cannot collect p99's 1,000 samples in time, said so) and
writes the full reports. Returns a few lines to print.
"""

from __future__ import annotations

from pathlib import Path

from sft_engine.loadtest.config import LoadTestConfig, parse_endpoint
from sft_engine.loadtest.spec import LoadSpec, SloSpec, ValiditySpec
from sft_engine.loadtest.runner import run_loadtest

__all__ = ["demo_run", "gate_for"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


#: gated percentiles, most telling first; each needs ValiditySpec().min_samples(q) samples in its lowest-rate step
_PERCENTILES = (99.0, 95.0, 90.0)
#: Poisson arrivals: ask for 30 % more expected samples than the minimum, so a step rarely falls short
_MARGIN = 1.3


def gate_for(lowest_rate: float, step_s: float, max_step_s: float) -> tuple[float, float]:
    """The highest percentile whose samples the lowest rate can collect within ``max_step_s``, and the step length.

    A percentile q needs ``min_samples(q)`` samples in every step (p99: 1,000): the
    steps are lengthened to collect them at the lowest rate when the time allows, and
    otherwise the gate moves to the highest percentile the run can support, so the
    verdict is PASS or FAIL on evidence rather than INVALID for lack of it.
    """
    validity = ValiditySpec()
    for q in _PERCENTILES:
        need_s = _MARGIN * validity.min_samples(q) / max(lowest_rate, 1e-9)
        if need_s <= max_step_s:
            return q, round(max(step_s, need_s, 1.5), 1)
    return _PERCENTILES[-1], round(max(step_s, 1.5, max_step_s), 1)


def demo_run(url: str, model: str, duration_s: float = 5.0, report_dir: Path | None = None, protocol: str = "grpc") -> str:
    """Probe, then sweep open-loop rates up to 90 % of the probed throughput; a summary of a few lines."""
    endpoint = parse_endpoint(url, protocol)  # type: ignore[arg-type]
    probe_load = LoadSpec(mode="closed", concurrency=(2,), duration_s=1.0, warmup_s=0.5, timeout_ms=5000)
    probe = run_loadtest(LoadTestConfig(endpoints=(endpoint,), model=model, load=probe_load, workers=1)).steps[0]
    rates = tuple(sorted({max(1.0, float(round(f * probe.throughput_rps))) for f in (0.3, 0.5, 0.7)}))
    percentile, step_s = gate_for(rates[0], duration_s / len(rates), max(1.5, duration_s))
    load = LoadSpec(mode="open", rates=rates, arrival="poisson", duration_s=step_s, warmup_s=0.5,
                    window_s=min(1.0, step_s), timeout_ms=5000)
    # steps of a few seconds are too short to judge window-to-window stability honestly
    slo = SloSpec(latency_ms={percentile: 100.0}, max_error_rate=0.001, require_stable=False)
    result = run_loadtest(LoadTestConfig(endpoints=(endpoint,), model=model, load=load, slo=slo, workers=1, report=report_dir))
    lines = [f"closed-loop probe, 2 concurrent callers: {probe.throughput_rps:,.0f} req/s",
             f"open loop, Poisson arrivals, {step_s:g} s per rate; latency from the intended send (ms):"]
    for step in result.steps:
        lat = step.latency_ms
        lines.append(f"  {step.rate_rps or step.offered_rps:>7,.0f} req/s offered, "
                     f"{step.throughput_rps:,.0f} delivered, {step.requests.failed} errors: p50 {_ms(lat.get(50.0))}  "
                     f"p90 {_ms(lat.get(90.0))}  p99 {_ms(lat.get(99.0))}  (send lag p99 {_ms(step.send_lag_ms.get(99.0))})")
    support = "" if percentile == 99.0 else (f"; p{percentile:g}, not p99: p99 needs {ValiditySpec().min_samples(99.0):,} samples "
                                               f"per step, more than {step_s:g} s at {rates[0]:g} req/s collect")
    lines.append(f"SLO p{percentile:g} <= 100 ms, errors < 0.1 % (stability not judged on steps this short{support}): "
                 + result.verdict + (f" ({'; '.join(result.reasons)})" if result.reasons else ""))
    if result.report_files:
        lines.append(f"report: {result.report_files.get('markdown')}  plot: {result.report_files.get('plot')}")
    return "\n".join(lines)
