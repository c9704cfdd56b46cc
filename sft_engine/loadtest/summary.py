"""The lines ``sft-engine loadtest`` prints: one per step as it ends, then the verdict.

Kept beside the reports (``report`` writes the files) so that every caller that shows
a load test as text - the CLI, a notebook, a CI log - shows the same lines.
"""

from __future__ import annotations

from sft_engine.loadtest.results import LoadTestResult, StepResult

__all__ = ["step_lines", "result_lines"]


def step_lines(step: StepResult) -> list[str]:
    """The step's figures on one line, then the most frequent error and the window the errors fell in,
    one indented line per invalidity reason and failed target."""
    lat = step.latency_ms
    parts = [
        f"step {step.index + 1} {step.label}: {step.verdict}",  # numbered from 1, as the live line numbers them
        f"{step.throughput_rps:,.1f} req/s (offered {step.offered_rps:,.1f})",
        f"p50 {_ms(lat.get(50.0))} p90 {_ms(lat.get(90.0))} p99 {_ms(lat.get(99.0))} p99.9 {_ms(lat.get(99.9))} max {_ms(lat.max_ms)}",
        f"errors {step.requests.failed}",
        f"send lag p99 {_ms(step.send_lag_ms.get(99.0))}",
    ]
    lines = [" | ".join(parts)]
    if step.top_error is not None:
        kind, count, example = step.top_error
        lines.append(f"  most frequent error: {kind} x{count}: {example[:160]}")
    if step.error_window is not None:
        w = step.error_window
        lines.append(f"  errors between {w.start_s:.1f} s and {w.end_s:.1f} s of the measured interval ({w.failed} failed)")
    lines += [f"  invalid: {reason}" for reason in step.validity.reasons]
    if step.slo:
        lines += [f"  FAIL {t.name}: {t.measured} (limit {t.comparison} {t.limit:g})" for t in step.slo.targets if not t.passed]
    return lines


def result_lines(result: LoadTestResult) -> list[str]:
    """The capacity (when searched), the verdict with its exit code and reasons, the report files."""
    lines = []
    if result.capacity is not None:
        c = result.capacity
        cap = "none" if c.capacity_rps is None else f"{c.capacity_rps:,.1f} req/s"
        knee = "-" if c.knee_rps is None else f"{c.knee_rps:,.1f} req/s"
        lines.append(f"capacity: {cap} (knee {knee}, bracket {c.bracket_rps}{', limited by ' + c.limited_by if c.limited_by else ''})")
    req = result.request
    images = f", mean of {req['images']} image files" if req.get("images") else ""
    lines.append(f"request: batch {req.get('batch_size')}, {req.get('request_bytes')} bytes on the wire{images}")
    lines.append(f"verdict: {result.verdict} (exit {result.exit_code})")
    lines += [f"  {reason}" for reason in result.reasons]
    lines += [f"report {kind}: {path}" for kind, path in result.report_files.items()]
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"
