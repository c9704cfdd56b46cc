"""sft_engine/loadtest/soak.py: the growth rule on made-up series, the sampler on real processes, the flags."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from sft_engine.errors import ConfigError
from sft_engine.loadtest.config import LoadTestConfig, parse_endpoint
from sft_engine.loadtest.soak import ProcessSample, Sampler, fit_line, judge, read_process
from sft_engine.loadtest.spec import SoakSpec, parse_duration

SPEC = SoakSpec(duration_s=600.0, sample_s=5.0)


def _series(values) -> list[tuple[float, ProcessSample]]:
    ts = np.linspace(0, SPEC.duration_s, len(values))
    return [(float(t), ProcessSample(float(rss), int(fds), int(th))) for t, (rss, fds, th) in zip(ts, values)]


def _flat_p99(n: int = 60, level: float = 5.0, seed: int = 0) -> list[tuple[float, float | None]]:
    rng = np.random.default_rng(seed)
    return [(float(t), float(level + rng.normal(0, 0.5))) for t in np.linspace(0, SPEC.duration_s, n)]


def test_fit_line_recovers_slope_and_error() -> None:
    slope, intercept, se = fit_line([(x, 3.0 + 2.0 * x) for x in range(10)])
    assert slope == pytest.approx(2.0) and intercept == pytest.approx(3.0) and se == pytest.approx(0.0, abs=1e-9)


def test_noise_around_a_level_passes() -> None:
    rng = np.random.default_rng(1)
    values = [(500 + rng.normal(0, 20), 40 + rng.integers(-2, 3), 30 + rng.integers(-1, 2)) for _ in range(120)]
    report = judge(SPEC, {"tritonserver": _series(values)}, _flat_p99(), 123)
    assert report.passed, report.lines()
    assert {s.name for s in report.series} == {"tritonserver rss_mb", "tritonserver fds", "tritonserver threads", "p99_ms"}
    assert all(s.judged for s in report.series)


@pytest.mark.parametrize("metric, values", [
    ("rss_mb", [(500 + i * 1.0, 40, 30) for i in range(120)]),  # +120 MB over the soak: a leak
    ("fds", [(500, 40 + i // 10, 30) for i in range(120)]),  # one descriptor more every 50 s
    ("threads", [(500, 40, 30 + i // 30) for i in range(120)]),
])
def test_steady_growth_fails_naming_the_series(metric: str, values) -> None:
    report = judge(SPEC, {"stub demo/1": _series(values)}, _flat_p99(), 123)
    assert not report.passed
    assert report.reasons[0].startswith(f"stub demo/1 {metric} grows")
    assert [s.name for s in report.series if not s.passed] == [f"stub demo/1 {metric}"]


def test_growth_within_the_allowance_passes_even_when_significant() -> None:
    values = [(500 + i * 0.1, 40, 30) for i in range(120)]  # +12 MB: real, but less than the 64 MB allowance
    report = judge(SPEC, {"tritonserver": _series(values)}, _flat_p99(), 1)
    rss = next(s for s in report.series if s.name == "tritonserver rss_mb")
    assert rss.t_value is None or rss.t_value > SPEC.min_t  # a perfect line: infinitely significant
    assert rss.passed and report.passed


def test_a_climbing_p99_fails_and_the_settling_part_is_not_fitted() -> None:
    climbing = [(float(t), 5.0 + t / 60.0) for t in np.linspace(0, SPEC.duration_s, 60)]  # 5 -> 15 ms
    assert not judge(SPEC, {}, climbing, None).passed
    warm = [(float(t), 50.0 if t < 0.15 * SPEC.duration_s else 5.0) for t in np.linspace(0, SPEC.duration_s, 60)]
    report = judge(SPEC, {}, warm, None)
    assert report.passed, report.lines()
    assert "only the latency was judged" in report.reasons[0]


def test_too_few_points_are_not_judged() -> None:
    report = judge(SPEC, {"tritonserver": _series([(1, 1, 1)] * 3)}, [], 1)
    assert report.passed and not any(s.judged for s in report.series)


def test_sampler_reads_a_process_and_its_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); time.sleep(30)"])
    try:
        sampler = Sampler([], 0.05)
        sampler.server_pid = child.pid  # as find_server_pids would give it
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            sampler.sample_once()
            if len(sampler.series) == 2:
                break
            time.sleep(0.05)
        assert len(sampler.series) == 2, sampler.series.keys()  # the process and its child
        sample = read_process(child.pid)
        assert sample is not None and sample.rss_mb > 1 and sample.fds >= 3 and sample.threads >= 1
    finally:
        child.kill()
        child.wait()


def test_duration_and_config_checks() -> None:
    assert parse_duration("2m") == 120 and parse_duration("1.5h") == 5400 and parse_duration(90) == 90
    with pytest.raises(ConfigError):
        parse_duration("soon")
    ep = parse_endpoint("127.0.0.1:8001")
    cfg = LoadTestConfig.from_scenario(None, endpoints=[ep], model="m", load={"rates": (10.0,)}, soak=SoakSpec(duration_s=120))
    cfg.validate()
    assert cfg.load.duration_s == 120 and cfg.load.window_s == 1.0
    long = LoadTestConfig.from_scenario(None, endpoints=[ep], model="m", load={"rates": (10.0,)}, soak=SoakSpec(duration_s=7200))
    long.validate()  # two hours: windows widen so that there are at most 360
    assert long.load.window_s == 20.0
    with pytest.raises(ConfigError, match="one steady open-loop rate"):
        LoadTestConfig.from_scenario(None, endpoints=[ep], model="m", load={"rates": (10.0, 20.0)}, soak=SoakSpec(duration_s=120)).validate()
    with pytest.raises(ConfigError, match="too few samples"):
        SoakSpec(duration_s=20, sample_s=5).validate()
