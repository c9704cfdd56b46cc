"""Reports: paths, the JSON schema, CSV, Markdown, PNG; the live progress line and exporter."""

from __future__ import annotations

import csv
import io
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from sft_engine.loadtest.analysis import StepObservations, build_step
from sft_engine.loadtest.config import LoadTestConfig, parse_endpoint
from sft_engine.loadtest.spec import LoadSpec, SloSpec
from sft_engine.loadtest.histogram import LatencyHistogram
from sft_engine.loadtest.progress import LiveExporter, Progress, TerminalProgress
from sft_engine.loadtest.report import render_markdown, report_paths, write_reports
from sft_engine.loadtest.results import SCHEMA_VERSION, CapacityResult, LoadTestResult
from sft_engine.loadtest.schedule import StepPlan
from sft_engine.loadtest.slo import judge_step, overall_verdict
from sft_engine.loadtest.worker import WindowData, WorkerStepResult


def _enc(ms: list[float]) -> str:
    h = LatencyHistogram()
    h.record_us(np.asarray(ms) * 1000.0)
    return h.encode()


def _result(rates: tuple[float, ...] = (50.0, 100.0, 200.0), with_capacity: bool = True) -> LoadTestResult:
    config = LoadTestConfig(endpoints=(parse_endpoint("127.0.0.1:8001"),), model="m",
                            load=LoadSpec(mode="open", rates=rates, duration_s=2.0), slo=SloSpec(latency_ms={90.0: 10.0}))
    steps = []
    for i, rate in enumerate(rates):
        n = int(rate)
        lat = [1.0 + i * 4.0] * n
        windows = [WindowData(n, n, n, {}, _enc(lat), _enc(lat), _enc([0.1] * n)) for _ in range(2)]
        worker = WorkerStepResult(0, windows, {"ok": 2 * n}, [2 * n], {}, 0.5, 2.0)
        plan = StepPlan(i, "open", None, rate, "constant", 0.0, 1.0, 3.0, 1.0, 0, 1.0)
        obs = StepObservations(plan, [worker], [], None, [], None, 3.0, None, None, None, None, 1)
        steps.append(judge_step(build_step(obs, config), config))
    capacity = CapacityResult(100.0, 100.0, [100.0, 200.0], True, None, ["every SLO target"], None, [0, 1, 2], []) if with_capacity else None
    verdict, code, reasons = overall_verdict(steps, capacity)
    return LoadTestResult(SCHEMA_VERSION, {"name": "t", "version": "0"}, "start", "end", verdict, code, reasons,
                          config.to_dict(), {"name": "m"}, {"batch_size": 1, "protocol": "grpc"}, steps, capacity)


def test_report_paths() -> None:
    assert report_paths("out")["json"] == Path("out/loadtest.json")
    assert report_paths("out/run1.json")["steps_csv"] == Path("out/run1-steps.csv")
    assert report_paths("out/run1.md")["plot"] == Path("out/run1.png")


def test_write_reports(tmp_path: Path) -> None:
    result = _result()
    files = write_reports(result, tmp_path / "reports")
    assert set(files) == {"json", "steps_csv", "windows_csv", "markdown", "plot"}
    data = json.loads(Path(files["json"]).read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["verdict"] == "PASS" and data["exit_code"] == 0
    assert [s["rate_rps"] for s in data["steps"]] == [50.0, 100.0, 200.0]
    step = data["steps"][1]
    for key in ("requests", "latency_ms", "service_time_ms", "send_lag_ms", "windows", "stability", "generator",
                "validity", "slo", "histograms", "throughput_rps", "offered_rps", "latency_basis"):
        assert key in step
    assert step["latency_ms"]["percentiles"]["p99"] == pytest.approx(5.0, rel=1e-3)
    assert data["report_files"]["plot"].endswith(".png")
    rows = list(csv.DictReader(io.StringIO(Path(files["steps_csv"]).read_text())))
    assert [r["step"] for r in rows] == ["0", "1", "2"] and rows[0]["verdict"] == "PASS"
    assert len(list(csv.DictReader(io.StringIO(Path(files["windows_csv"]).read_text())))) == 6
    assert Path(files["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = Path(files["markdown"]).read_text()
    assert "**PASS**" in md and "## Capacity" in md and "Load generator self-check" in md


def test_markdown_names_invalid_reasons() -> None:
    result = _result((5.0,), with_capacity=False)  # 10 samples, p90 needs 100
    assert result.verdict == "INVALID"
    md = render_markdown(result)
    assert "too few samples for p90" in md


def test_terminal_progress_tty_and_pipe() -> None:
    p = Progress(0, "open 100/s constant", "measure", 1.0, 5.0, 100, 99, 1, 2, 99.5, 1.2, 3.4, 0.2, 2)
    tty = io.StringIO()
    TerminalProgress(tty, tty=True)(p)
    assert tty.getvalue().startswith("\r[step 1/2 open 100/s constant] measure")
    pipe = io.StringIO()
    renderer = TerminalProgress(pipe, tty=False)
    renderer(p)
    renderer(p)
    assert pipe.getvalue().count("\n") == 1  # one line per phase on a pipe
    quiet = io.StringIO()
    TerminalProgress(quiet, quiet=True)(p)
    assert quiet.getvalue() == ""


def test_live_exporter_serves_prometheus_text() -> None:
    exporter = LiveExporter(0)
    try:
        exporter.update(Progress(3, "x", "measure", 1.0, 5.0, 100, 90, 10, 4, 80.0, 1.5, 9.0, 0.3))
        with urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        exporter.close()
    assert 'sft_loadtest_requests_total{outcome="failed"} 10.0' in text
    assert "sft_loadtest_latency_p99_seconds 0.009" in text
    assert 'sft_loadtest_phase{phase="measure"} 1.0' in text


def _faulty_step():
    """Three windows of a 50/s step; the middle one lost 20 requests to a dead engine process."""
    config = LoadTestConfig(endpoints=(parse_endpoint("127.0.0.1:8001"),), model="m",
                            load=LoadSpec(mode="open", rates=(50.0,), duration_s=3.0))
    lat = _enc([2.0] * 50)
    windows = [WindowData(50, 50, 50, {}, lat, lat, _enc([0.1] * 50)),
               WindowData(50, 50, 30, {"server_error": 20}, _enc([2.0] * 30), _enc([2.0] * 30), _enc([0.1] * 50)),
               WindowData(50, 50, 50, {}, lat, lat, _enc([0.1] * 50))]
    message = "[500] Stub process 'm_0_0' is not healthy."
    worker = WorkerStepResult(0, windows, {"ok": 130, "server_error": 20}, [150], {"server_error": message}, 0.5, 3.0)
    plan = StepPlan(0, "open", None, 50.0, "constant", 0.0, 1.0, 4.0, 1.0, 0, 1.0)
    obs = StepObservations(plan, [worker], [], None, [], None, 4.0, None, None, None, None, 1)
    return judge_step(build_step(obs, config), config), config, message


def test_the_error_window_and_the_most_frequent_error_are_in_the_summary_the_report_and_the_plot(monkeypatch) -> None:
    from sft_engine.loadtest.summary import step_lines

    step, config, message = _faulty_step()
    assert step.error_window is not None and step.error_window.failed == 20
    assert (step.error_window.start_s, step.error_window.end_s) == (1.0, 2.0)
    assert step.top_error == ("server_error", 20, message)
    lines = step_lines(step)
    assert any("most frequent error: server_error x20" in ln and "Stub process" in ln for ln in lines), lines
    assert any("errors between 1.0 s and 2.0 s" in ln for ln in lines), lines
    result = LoadTestResult(SCHEMA_VERSION, {"name": "t", "version": "0"}, "start", "end", "MEASURED", 0, [],
                            config.to_dict(), {"name": "m"}, {"batch_size": 1, "protocol": "grpc"}, [step], None)
    assert "errors fell between 1.0 s and 2.0 s" in render_markdown(result)
    assert json.loads(json.dumps(result.to_dict()))["steps"][0]["error_window"] == {"start_s": 1.0, "end_s": 2.0, "failed": 20}
    from sft_engine.loadtest import report

    shaded = []
    draw = report._plot_error_window
    monkeypatch.setattr(report, "_plot_error_window", lambda axis, s: (shaded.append(axis.get_xlabel()), draw(axis, s),
                                                                        shaded.append([p.get_label() for p in axis.patches[-1:]])))
    assert report.render_plot(result)[:8] == b"\x89PNG\r\n\x1a\n"
    assert shaded == ["", ["errors 1.0-2.0 s (server_error)"]]
    report.render_plot(_result((50.0,), with_capacity=False))
    assert len(shaded) == 2  # no error window, no shaded panel


def test_the_live_line_names_the_most_frequent_error() -> None:
    p = Progress(0, "open 50/s constant", "measure", 1.0, 3.0, 100, 80, 20, 1, 40.0, 2.0, 3.0, 0.1,
                 top_error="server_error: [500] Stub process 'm_0_0' is not healthy.")
    assert "top error: server_error: [500] Stub process" in TerminalProgress.format(p)


def test_the_closing_live_line_of_a_failing_step_names_its_most_frequent_error() -> None:
    """The runner hands the step's top error to the console's closing line, not only to the reports."""
    from sft_engine.loadtest.runner import _top_error_text

    step, _config, message = _faulty_step()
    assert _top_error_text(step) == f"server_error x20: {message}"
    p = Progress(0, step.label, "done", 3.0, 3.0, 150, 130, 20, 0, 43.0, 2.0, 2.0, 0.1, top_error=_top_error_text(step))
    assert "top error: server_error x20: [500] Stub process" in TerminalProgress.format(p)


def test_step_numbers_match_the_live_line() -> None:
    """The live line says [step 1/3]; the summary, the reasons and the Markdown count from 1 as well."""
    from sft_engine.loadtest.summary import step_lines

    result = _result((5.0, 100.0, 200.0), with_capacity=False)
    assert [step_lines(s)[0].split(":")[0] for s in result.steps] == ["step 1 open 5/s constant", "step 2 open 100/s constant",
                                                                       "step 3 open 200/s constant"]
    assert result.reasons[0].startswith("step 1 (open 5/s constant): too few samples")
    md = render_markdown(result)
    assert "| 1 | open 5/s constant |" in md and "| 0 | open" not in md


def _soak_result(rss_leak: bool) -> LoadTestResult:
    """A 20 s soak at 50 req/s: 20 windows of flat latency; the stub's RSS flat or leaking 10 MB/s."""
    from dataclasses import replace

    from sft_engine.loadtest.soak import ProcessSample, judge
    from sft_engine.loadtest.spec import SoakSpec

    spec = SoakSpec(duration_s=20.0, sample_s=1.0, max_rss_growth_mb=64.0)
    config = LoadTestConfig(endpoints=(parse_endpoint("127.0.0.1:8001"),), model="m",
                            load=LoadSpec(mode="open", rates=(50.0,), duration_s=20.0), soak=spec)
    rng = np.random.default_rng(0)
    windows = [WindowData(50, 50, 50, {}, _enc(list(3.0 + rng.random(50))), _enc([1.0] * 50), _enc([0.1] * 50)) for _ in range(20)]
    worker = WorkerStepResult(0, windows, {"ok": 1000}, [1000], {}, 0.5, 20.0)
    plan = StepPlan(0, "open", None, 50.0, "constant", 0.0, 1.0, 21.0, 1.0, 0, 1.0)
    step = judge_step(build_step(StepObservations(plan, [worker], [], None, [], None, 21.0, None, None, None, None, 1), config), config)
    samples = {
        "tritonserver": [(float(t), ProcessSample(100.0 + 0.1 * (t % 2), 60, 100)) for t in range(21)],
        "stub m/1": [(float(t), ProcessSample(200.0 + (10.0 * t if rss_leak else 0.0), 7, 7)) for t in range(21)],
    }
    p99 = [((w.start_s + w.end_s) / 2, w.latency_ms.get(99.0)) for w in step.windows]
    soak = judge(spec, samples, p99, 4321)
    result = LoadTestResult(SCHEMA_VERSION, {"name": "t", "version": "0"}, "start", "end", "PASS" if soak.passed else "FAIL",
                            0 if soak.passed else 1, soak.reasons, config.to_dict(), {"name": "m"},
                            {"batch_size": 1, "protocol": "grpc"}, [step], None)
    return replace(result, soak=soak)


def test_the_markdown_report_has_the_soak_verdict_rule_and_one_row_per_series() -> None:
    md = render_markdown(_soak_result(rss_leak=True))
    assert "## Soak: **FAIL**" in md and "tritonserver pid 4321" in md and "- rule: fails on a slope >= 3" in md
    rows = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| stub ") or line.startswith("| tritonserver ")
            or line.startswith("| p99_ms ")}
    assert set(rows) == {f"{p} {m}" for p in ("tritonserver", "stub m/1") for m in ("rss_mb", "fds", "threads")} | {"p99_ms"}
    assert rows["stub m/1 rss_mb"].endswith("| **GROWS** |") and "| +200 |" in rows["stub m/1 rss_mb"]  # 10 MB/s over 20 s
    assert all(line.endswith("| ok |") for name, line in rows.items() if name != "stub m/1 rss_mb")
    passing = render_markdown(_soak_result(rss_leak=False))
    assert "## Soak: PASS" in passing and "**GROWS**" not in passing
    assert "## Soak" not in render_markdown(_result())  # no soak, no section


def test_the_plot_shows_the_soak_p99_with_its_fit_and_each_series_against_its_allowance(monkeypatch) -> None:
    from matplotlib.figure import Figure

    from sft_engine.loadtest import report

    result = _soak_result(rss_leak=True)
    fig = Figure()
    p99_axis, growth_axis = fig.subplots(2, 1)
    report._plot_soak(p99_axis, growth_axis, result)
    labels = [line.get_label() for line in p99_axis.get_lines()]
    assert labels[0] == "p99 per window" and len(p99_axis.get_lines()[0].get_xdata()) == 20
    assert any(label.startswith("fit ") and label.endswith("ms/h (ok)") for label in labels), labels
    names = [tick.get_text() for tick in growth_axis.get_yticklabels()]
    bars = dict(zip(names, growth_axis.patches))
    assert set(names) >= {"stub m/1 rss_mb", "tritonserver rss_mb", "p99_ms"}
    leak = bars["stub m/1 rss_mb"]
    assert leak.get_width() == pytest.approx(200.0 / 64.0, rel=1e-3) and leak.get_facecolor()[:3] == (1.0, 0.0, 0.0)
    assert all(bar.get_width() < 1.0 for name, bar in bars.items() if name != "stub m/1 rss_mb")
    assert growth_axis.get_title() == "soak 20 s: FAIL"
    drawn = []
    monkeypatch.setattr(report, "_plot_soak", lambda *args: drawn.append(args[2].soak.passed))
    assert report.render_plot(result)[:8] == b"\x89PNG\r\n\x1a\n" and drawn == [False]
    report.render_plot(_result())
    assert drawn == [False]  # no soak, no soak panels
