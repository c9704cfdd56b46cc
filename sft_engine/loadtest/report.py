"""Reports of a run: JSON (the stable schema), CSV per step and per window, Markdown, PNG.

``--report PATH``: a directory receives ``loadtest.json``, ``loadtest-steps.csv``,
``loadtest-windows.csv``, ``loadtest.md`` and ``loadtest.png``; a path ending in
``.json`` (or .md/.csv/.png) names them instead (``run1.json`` -> ``run1.json``,
``run1-steps.csv``, ``run1.md`` ...).
Files are written to a temporary name and renamed, so a reader never sees half a report.

The plot is drawn with matplotlib's object API on an Agg canvas: no pyplot, no
global backend switch, no display needed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

from sft_engine.errors import ConfigError
from sft_engine.loadtest.results import LoadTestResult, StepResult

__all__ = ["report_paths", "write_reports", "render_markdown", "steps_csv", "windows_csv", "render_plot"]

LOGGER = logging.getLogger(__name__)

_PLOT_PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def report_paths(target: Path | str) -> dict[str, Path]:
    """Where each report goes. A path ending in .json/.md/.csv/.png is a prefix; anything else a directory."""
    path = Path(target)
    if path.suffix.lower() in (".json", ".md", ".csv", ".png") and not path.is_dir():
        base = path.with_suffix("")
    else:
        base = path / "loadtest"
    return {
        "json": base.with_name(base.name + ".json"),
        "steps_csv": base.with_name(base.name + "-steps.csv"),
        "windows_csv": base.with_name(base.name + "-windows.csv"),
        "markdown": base.with_name(base.name + ".md"),
        "plot": base.with_name(base.name + ".png"),
    }


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_reports(result: LoadTestResult, target: Path | str) -> dict[str, str]:
    """Write every report file; returns kind -> path. The JSON lists the others."""
    paths = report_paths(target)
    directory = paths["json"].parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--report {target}: cannot create {directory}: {exc.strerror or exc}", hint="choose a writable place") from None
    written: dict[str, str] = {}
    _atomic_write(paths["steps_csv"], steps_csv(result).encode())
    written["steps_csv"] = str(paths["steps_csv"])
    _atomic_write(paths["windows_csv"], windows_csv(result).encode())
    written["windows_csv"] = str(paths["windows_csv"])
    _atomic_write(paths["markdown"], render_markdown(result).encode())
    written["markdown"] = str(paths["markdown"])
    try:
        _atomic_write(paths["plot"], render_plot(result))
        written["plot"] = str(paths["plot"])
    except ImportError:
        LOGGER.warning("matplotlib is not installed: no plot (pip install 'sft-engine[loadtest]')")
    written["json"] = str(paths["json"])
    result.report_files = dict(written)
    _atomic_write(paths["json"], (json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n").encode())
    return written


# -- CSV ----------------------------------------------------------------------------------
_STEP_COLUMNS = [
    "step", "mode", "concurrency", "rate_rps", "arrival", "batch_size", "duration_s", "verdict",
    "scheduled", "sent", "succeeded", "failed", "error_rate", "offered_rps", "throughput_rps", "inferences_per_s",
    "latency_basis", "lat_p50_ms", "lat_p90_ms", "lat_p95_ms", "lat_p99_ms", "lat_p99.9_ms", "lat_max_ms",
    "svc_p50_ms", "svc_p99_ms", "lag_p99_ms", "server_throughput_rps", "server_queue_us", "server_compute_infer_us",
    "server_avg_batch", "stable", "valid", "invalid_reasons",
]


def _step_row(s: StepResult) -> dict[str, Any]:
    server = s.server
    return {
        "step": s.index, "mode": s.mode, "concurrency": s.concurrency, "rate_rps": s.rate_rps, "arrival": s.arrival,
        "batch_size": s.batch_size, "duration_s": s.duration_s, "verdict": s.verdict,
        "scheduled": s.requests.scheduled, "sent": s.requests.sent, "succeeded": s.requests.succeeded,
        "failed": s.requests.failed, "error_rate": s.error_rate, "offered_rps": s.offered_rps,
        "throughput_rps": s.throughput_rps, "inferences_per_s": s.inferences_per_s, "latency_basis": s.latency_basis,
        "lat_p50_ms": s.latency_ms.get(50.0), "lat_p90_ms": s.latency_ms.get(90.0), "lat_p95_ms": s.latency_ms.get(95.0),
        "lat_p99_ms": s.latency_ms.get(99.0), "lat_p99.9_ms": s.latency_ms.get(99.9), "lat_max_ms": s.latency_ms.max_ms,
        "svc_p50_ms": s.service_time_ms.get(50.0), "svc_p99_ms": s.service_time_ms.get(99.0),
        "lag_p99_ms": s.send_lag_ms.get(99.0),
        "server_throughput_rps": server.throughput_rps if server else None,
        "server_queue_us": server.avg_queue_us if server else None,
        "server_compute_infer_us": server.avg_compute_infer_us if server else None,
        "server_avg_batch": server.avg_batch_size if server else None,
        "stable": s.stability.stable, "valid": s.validity.valid, "invalid_reasons": " | ".join(s.validity.reasons),
    }


def _csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def steps_csv(result: LoadTestResult) -> str:
    return _csv(_STEP_COLUMNS, [_step_row(s) for s in result.steps])


_WINDOW_COLUMNS = [
    "step", "window", "start_s", "end_s", "scheduled", "sent", "succeeded_in_window", "failed", "throughput_rps",
    "lat_p50_ms", "lat_p90_ms", "lat_p99_ms", "lat_max_ms", "server_success", "server_throughput_rps",
    "server_queue_us", "server_compute_infer_us", "server_avg_batch", "server_pending",
]


def windows_csv(result: LoadTestResult) -> str:
    rows = []
    for s in result.steps:
        for w in s.windows:
            srv = w.server
            rows.append({
                "step": s.index, "window": w.index, "start_s": w.start_s, "end_s": w.end_s, "scheduled": w.scheduled,
                "sent": w.sent, "succeeded_in_window": w.succeeded_in_window, "failed": w.failed,
                "throughput_rps": w.throughput_rps, "lat_p50_ms": w.latency_ms.get(50.0), "lat_p90_ms": w.latency_ms.get(90.0),
                "lat_p99_ms": w.latency_ms.get(99.0), "lat_max_ms": w.latency_ms.max_ms,
                "server_success": srv.requests_success if srv else None,
                "server_throughput_rps": srv.throughput_rps if srv else None,
                "server_queue_us": srv.avg_queue_us if srv else None,
                "server_compute_infer_us": srv.avg_compute_infer_us if srv else None,
                "server_avg_batch": srv.avg_batch_size if srv else None,
                "server_pending": (srv.metrics or {}).get("pending_requests") if srv else None,
            })
    return _csv(_WINDOW_COLUMNS, rows)


# -- Markdown -----------------------------------------------------------------------------
def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def render_markdown(result: LoadTestResult) -> str:
    cfg = result.config
    lines = [f"# Load test: {result.model.get('name')} - **{result.verdict}** (exit {result.exit_code})", ""]
    endpoints = ", ".join(ep.get("url", "") for ep in cfg.get("endpoints", []))
    lines += [
        f"- endpoints: {endpoints} ({result.request.get('protocol')})",
        f"- request: batch {result.request.get('batch_size')}, inputs {result.request.get('input_shapes')}, "
        f"{result.request.get('request_bytes')} bytes on the wire"
        + (f" (mean over {result.request['images']} image files sent round-robin)" if result.request.get("images") else ""),
        f"- started {result.started_at}, finished {result.finished_at}; {result.tool.get('name')} {result.tool.get('version')}",
        "",
    ]
    if result.reasons:
        lines += ["## Why", ""] + [f"- {r}" for r in result.reasons] + [""]
    lines += [
        "## Steps",
        "",
        "Latency is measured from the *intended* send time in open loop (coordinated omission corrected) "
        "and from the actual send in closed loop.",
        "",
        "| step | load | verdict | offered/s | throughput/s | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | lag p99 ms | stable |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in result.steps:
        lat = s.latency_ms
        lines.append(
            f"| {s.index + 1} | {s.label} | {s.verdict} | {_f(s.offered_rps, 1)} | {_f(s.throughput_rps, 1)} | "
            f"{s.requests.failed} | {_f(lat.get(50.0))} | {_f(lat.get(90.0))} | {_f(lat.get(99.0))} | {_f(lat.get(99.9))} | "
            f"{_f(lat.max_ms)} | {_f(s.send_lag_ms.get(99.0))} | {'-' if s.stability.stable is None else s.stability.stable} |"
        )
    lines.append("")
    for s in result.steps:
        if s.slo:
            lines += [f"### Step {s.index + 1} SLO: {s.slo.verdict}", "", "| target | limit | measured | result |", "|---|---:|---:|---|"]
            for t in s.slo.targets:
                lines.append(f"| {t.name} | {t.comparison} {t.limit:g} | {_f(t.measured, 4)} | {'pass' if t.passed else '**FAIL**'} |")
            lines.append("")
        if s.validity.reasons or s.validity.warnings:
            lines += [f"### Step {s.index + 1} validity: {'valid' if s.validity.valid else '**INVALID**'}", ""]
            lines += [f"- invalid: {r}" for r in s.validity.reasons] + [f"- warning: {w}" for w in s.validity.warnings] + [""]
        if s.requests.errors:
            lines += [f"Step {s.index + 1} errors: " + ", ".join(f"{k} {v}" for k, v in sorted(s.requests.errors.items()))]
            lines += [f"- {k}: `{v}`" for k, v in sorted(s.error_examples.items())]
            if s.error_window is not None:
                w = s.error_window
                lines += [f"- errors fell between {w.start_s:.1f} s and {w.end_s:.1f} s of the measured interval ({w.failed} failed)"]
            lines += [""]
    if result.capacity:
        c = result.capacity
        lines += [
            "## Capacity",
            "",
            f"- capacity: **{_f(c.capacity_rps, 1)} req/s** (bracket {c.bracket_rps}, converged: {c.converged})",
            f"- knee: {_f(c.knee_rps, 1)} req/s",
            f"- criteria: {'; '.join(c.criteria)}",
        ]
        if c.limited_by:
            lines.append(f"- limited by: {c.limited_by}")
        if c.probe_throughput_rps is not None:
            lines.append(f"- closed-loop probe throughput: {_f(c.probe_throughput_rps, 1)} req/s")
        lines += ["- search: " + ", ".join(f"{t['rate_rps']}/s {t['verdict']}" for t in c.trail), ""]
    if result.soak is not None:
        lines += _soak_markdown(result.soak)
    lines += ["## Server side (measured interval)", "",
              "| step | server req/s | avg queue us | avg infer us | avg batch | batch sizes | client vs server |",
              "|---:|---:|---:|---:|---:|---|---|"]
    for s in result.steps:
        srv, rec = s.server, s.reconciliation
        if rec is None or rec.ok is None:
            recon = "-"
        else:
            recon = f"ok ({rec.client_reached_server} vs {rec.server_received})" if rec.ok else f"**differ by {rec.difference}**"
        if srv:
            lines.append(f"| {s.index + 1} | {_f(srv.throughput_rps, 1)} | {_f(srv.avg_queue_us, 1)} | {_f(srv.avg_compute_infer_us, 1)} | "
                         f"{_f(srv.avg_batch_size)} | {srv.batch_sizes} | {recon} |")
        else:
            lines.append(f"| {s.index + 1} | - | - | - | - | - | {recon} |")
    lines += ["", "## Load generator self-check", "",
              "| step | workers | worker CPU | host CPU busy | send lag p50 / p99 / max ms | tolerance ms | saturated |",
              "|---:|---:|---|---:|---|---:|---|"]
    for s in result.steps:
        g = s.generator
        cpu = ", ".join(f"{c:.0%}" for c in g.worker_cpu)
        host = "-" if g.host_cpu_busy is None else f"{g.host_cpu_busy:.0%} of {g.host_cpus}"
        lag = g.send_lag_ms
        lines.append(f"| {s.index + 1} | {g.workers} | {cpu} | {host} | {_f(lag.get(50.0))} / {_f(lag.get(99.0))} / {_f(lag.max_ms)} | "
                     f"{g.send_lag_tolerance_ms:g} | {g.saturated} |")
    lines.append("")
    return "\n".join(lines)


def _soak_markdown(soak: Any) -> list[str]:
    """The soak's verdict, its rule and one row per fitted series (``soak.SoakReport``)."""
    lines = [f"## Soak: {'PASS' if soak.passed else '**FAIL**'}", "",
             f"- {soak.duration_s:g} s, the server's processes sampled every {soak.sample_s:g} s"
             + (f" (tritonserver pid {soak.server_pid})" if soak.server_pid is not None else " (no local tritonserver found)"),
             f"- rule: {soak.rule}", ""]
    lines += ["| series | points | first | last | slope /h | t | rise over the soak | allowed | result |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in soak.series:
        if not s.judged:
            lines.append(f"| {s.name} | {s.points} | - | - | - | - | - | - | not judged: {s.note} |")
            continue
        lines.append(f"| {s.name} | {s.points} | {_f(s.first)} | {_f(s.last)} | {s.slope_per_h:+.3g} | {_f(s.t_value, 1)} | "
                     f"{s.growth:+.3g} | {s.allowed:.3g} | {'ok' if s.passed else '**GROWS**'} |")
    return lines + [""]


# -- plot ----------------------------------------------------------------------------------
def _plot_soak(p99_axis: Any, growth_axis: Any, result: LoadTestResult) -> None:
    """The soak: p99 per window over time with the fitted line, and each series' rise against its allowance."""
    from sft_engine.loadtest.soak import fit_line

    soak, step = result.soak, result.steps[0]
    settle_s = float((result.config.get("soak") or {}).get("settle_fraction", 0.2)) * soak.duration_s
    points = [((w.start_s + w.end_s) / 2, w.latency_ms.get(99.0)) for w in step.windows]
    points = [(t, v) for t, v in points if v is not None]
    p99 = next((s for s in soak.series if s.name == "p99_ms"), None)
    if points:
        p99_axis.plot(*zip(*points), color="tab:purple", linewidth=0.8, label="p99 per window")
    fitted = [(t, v) for t, v in points if t >= settle_s]
    if len(fitted) >= 2:
        slope, intercept, _ = fit_line(fitted)
        ends = [fitted[0][0], fitted[-1][0]]
        verdict = "-" if p99 is None or not p99.judged else ("ok" if p99.passed else "GROWS")
        p99_axis.plot(ends, [intercept + slope * t for t in ends], color="black", linestyle="--",
                      label=f"fit {slope * 3600:+.3g} ms/h ({verdict})")
    p99_axis.axvspan(0, settle_s, color="gray", alpha=0.15, label="settling, not fitted")
    p99_axis.set_xlabel("time in the soak (s)")
    p99_axis.set_ylabel("p99 (ms)")
    p99_axis.legend(fontsize=8)
    p99_axis.grid(True, alpha=0.3)
    judged = [s for s in soak.series if s.judged and s.allowed]
    ratios = [s.growth / s.allowed for s in judged]
    growth_axis.barh(range(len(judged)), ratios, color=["tab:green" if s.passed else "red" for s in judged])
    growth_axis.set_yticks(range(len(judged)), [s.name for s in judged], fontsize=7)
    growth_axis.axvline(1.0, color="red", linestyle=":", label="allowance")
    growth_axis.set_xlabel("rise over the soak / allowed (fails above 1 when the slope is real)")
    growth_axis.set_title(f"soak {soak.duration_s:g} s: {'PASS' if soak.passed else 'FAIL'}", fontsize=9)
    growth_axis.legend(fontsize=8)
    growth_axis.grid(True, axis="x", alpha=0.3)


def _plot_error_window(axis: Any, step: StepResult) -> None:
    """Answered and failed requests per window over the step's time, the error window shaded."""
    xs = [(w.start_s + w.end_s) / 2 for w in step.windows]
    width = max(1e-3, step.windows[0].end_s - step.windows[0].start_s) * 0.9
    axis.bar(xs, [w.succeeded_in_window for w in step.windows], width=width, color="tab:blue", label="answered")
    axis.bar(xs, [w.failed for w in step.windows], width=width, color="red", label="failed",
             bottom=[w.succeeded_in_window for w in step.windows])
    w = step.error_window
    assert w is not None
    top = step.top_error
    axis.axvspan(w.start_s, w.end_s, color="red", alpha=0.15,
                 label=f"errors {w.start_s:.1f}-{w.end_s:.1f} s" + (f" ({top[0]})" if top else ""))
    axis.set_xlabel(f"step {step.index}: time in the measured interval (s)")
    axis.set_ylabel("requests per window")
    axis.legend(fontsize=8)
    axis.grid(True, alpha=0.3)


def render_plot(result: LoadTestResult) -> bytes:
    """PNG of latency percentiles against load.

    Open loop: latency (from the intended send) against the *offered* rate - the
    x-axis capacity and knee are expressed in - with a second panel of achieved
    against offered throughput, so a rate the server did not sustain is visible as
    such instead of piling up at the server's maximum. Closed loop: latency against
    achieved throughput, one point per concurrency.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [s for s in result.steps if s.latency_ms.count]
    open_steps = sorted((s for s in steps if s.mode == "open"), key=lambda s: s.offered_rps)
    closed_steps = sorted((s for s in steps if s.mode == "closed"), key=lambda s: s.concurrency or 0)
    use_open = bool(open_steps)
    shown = open_steps if use_open else closed_steps
    faulty = [s for s in result.steps if s.error_window is not None and s.windows]
    soaked = result.soak is not None and bool(result.steps)
    rows = (2 if use_open else 1) + (1 if faulty else 0) + (2 if soaked else 0)
    fig = Figure(figsize=(8, 3 + 2.5 * rows), dpi=110)
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, 1, gridspec_kw={"height_ratios": [2] + [1] * (rows - 1)})) if rows > 1 else [fig.add_subplot(1, 1, 1)]
    ax, ax2 = axes[0], (axes[1] if use_open else None)
    if use_open:
        ax2.sharex(ax)
    if faulty:
        _plot_error_window(axes[(2 if use_open else 1)], faulty[0])
    if soaked:
        _plot_soak(axes[-2], axes[-1], result)

    def x_of(step: StepResult) -> float:
        return step.offered_rps if use_open else step.throughput_rps

    for q in _PLOT_PERCENTILES:
        pts = [(x_of(s), s.latency_ms.get(q)) for s in shown if s.latency_ms.get(q)]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", label=f"p{q:g}")
    failed = [s for s in shown if s.verdict in ("FAIL", "INVALID") and s.latency_ms.get(99.0)]
    if failed:
        ax.scatter([x_of(s) for s in failed], [s.latency_ms.get(99.0) for s in failed], marker="x", s=70, color="red",
                   label="FAIL / INVALID step", zorder=5)
    if not use_open:
        for s in shown:
            ax.annotate(f"c={s.concurrency}", (s.throughput_rps, s.latency_ms.get(50.0) or 0), fontsize=7,
                        textcoords="offset points", xytext=(3, -10))
    slo = (result.config.get("slo") or {}).get("latency_ms") or {}
    for key, limit in slo.items():
        ax.axhline(float(limit), linestyle="--", color="gray", linewidth=1)
        ax.annotate(f"SLO {key.replace('_ms', '')} {float(limit):g} ms", (0.01, float(limit)), xycoords=("axes fraction", "data"),
                    fontsize=8, color="gray", va="bottom")
    for axis in [a for a in (ax, ax2) if a is not None]:
        if result.capacity and result.capacity.capacity_rps and use_open:
            axis.axvline(result.capacity.capacity_rps, color="green", linestyle=":",
                         label=f"capacity {result.capacity.capacity_rps:,.1f}/s" if axis is ax else None)
        if result.capacity and result.capacity.knee_rps and use_open:
            axis.axvline(result.capacity.knee_rps, color="orange", linestyle=":",
                         label=f"knee {result.capacity.knee_rps:,.1f}/s" if axis is ax else None)
        axis.grid(True, which="both", alpha=0.3)
    ax.set_yscale("log")
    ax.set_ylabel("latency from intended send (ms)" if use_open else "latency from send (ms)")
    ax.set_title(f"{result.model.get('name')}: latency percentiles vs {'offered load' if use_open else 'throughput'} ({result.verdict})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    if ax2 is not None:
        xs = [s.offered_rps for s in shown]
        ax2.plot(xs, [s.throughput_rps for s in shown], marker="o", color="black", label="achieved")
        ax2.plot(xs, xs, linestyle="--", color="gray", linewidth=1, label="offered")
        ax2.set_xlabel("offered load (requests/s)")
        ax2.set_ylabel("throughput (req/s)")
        ax2.legend(fontsize=8)
    else:
        ax.set_xlabel("achieved throughput (requests/s)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
