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


def test_step_numbers_match_the_live_line() -> None:
    """The live line says [step 1/3]; the summary, the reasons and the Markdown count from 1 as well."""
    from sft_engine.loadtest.summary import step_lines

    result = _result((5.0, 100.0, 200.0), with_capacity=False)
    assert [step_lines(s)[0].split(":")[0] for s in result.steps] == ["step 1 open 5/s constant", "step 2 open 100/s constant",
                                                                       "step 3 open 200/s constant"]
    assert result.reasons[0].startswith("step 1 (open 5/s constant): too few samples")
    md = render_markdown(result)
    assert "| 1 | open 5/s constant |" in md and "| 0 | open" not in md
