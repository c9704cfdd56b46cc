"""Merging worker results, stability, validity, the SLO gate, the capacity search and the knee.

No server here: worker results are synthesized as the workers would send them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest

from sft_engine.loadtest.analysis import StepObservations, build_step, stability_of
from sft_engine.loadtest.capacity import CapacitySearch, knee_point
from sft_engine.loadtest.config import LoadTestConfig, parse_endpoint
from sft_engine.loadtest.spec import CapacitySpec, LoadSpec, SloSpec, ValiditySpec
from sft_engine.loadtest.histogram import LatencyHistogram
from sft_engine.loadtest.results import FAIL, INVALID, MEASURED, PASS, StepResult
from sft_engine.loadtest.schedule import StepPlan
from sft_engine.loadtest.slo import judge_step, overall_verdict
from sft_engine.loadtest.worker import WindowData, WorkerStepResult


def _config(slo: SloSpec | None = None, **validity: float) -> LoadTestConfig:
    return LoadTestConfig(
        endpoints=(parse_endpoint("127.0.0.1:8001"),), model="m",
        load=LoadSpec(mode="open", rates=(100.0,), duration_s=3.0, window_s=1.0),
        slo=slo, validity=ValiditySpec(**validity), workers=2,  # type: ignore[arg-type]
    )


def _plan(index: int = 0, rate: float = 100.0, windows: int = 3) -> StepPlan:
    return StepPlan(index, "open", None, rate, "constant", 100.0, 101.0, 101.0 + windows, 1.0, 0, 1.0)


def _hist(ms: Sequence[float]) -> str:
    h = LatencyHistogram()
    h.record_us(np.asarray(ms, dtype=np.float64) * 1000.0)
    return h.encode()


def _worker(index: int, lat_ms_per_window: Sequence[Sequence[float]], lag_ms: float = 0.1,
            errors: dict[str, int] | None = None, cpu: float = 0.3) -> WorkerStepResult:
    windows = []
    for lat in lat_ms_per_window:
        windows.append(WindowData(
            scheduled=len(lat) + sum((errors or {}).values()), sent=len(lat), succeeded_done=len(lat),
            errors=dict(errors or {}), latency=_hist(lat), service=_hist(lat), lag=_hist([lag_ms] * max(1, len(lat))),
        ))
    n = sum(len(x) for x in lat_ms_per_window)
    return WorkerStepResult(index, windows, {"ok": n}, [n], {}, cpu_s=cpu * 3.0, wall_s=3.0)


def _step(config: LoadTestConfig, workers: Sequence[WorkerStepResult], plan: StepPlan | None = None,
          aborted: str | None = None, sustain: float | None = None) -> StepResult:
    plan = plan or _plan()
    obs = StepObservations(plan=plan, results=list(workers), worker_errors=[], before=None, edges=[], after=None,
                           measured_until=plan.measure_end, coordinator_cpu=0.01, host_cpu=0.5, load_average=None,
                           aborted=aborted, n_workers=len(workers))
    return judge_step(build_step(obs, config), config, [], sustain)


def _flat(n: int, value: float = 2.0) -> list[float]:
    return [value] * n


def test_build_step_merges_workers_exactly() -> None:
    config = _config()
    a = _worker(0, [_flat(50, 1.0), _flat(50, 2.0), _flat(50, 3.0)])
    b = _worker(1, [_flat(50, 1.0), _flat(50, 2.0), [3.0] * 49 + [900.0]])
    step = _step(config, [a, b])
    assert step.requests.scheduled == 300 and step.requests.succeeded == 300
    assert step.throughput_rps == pytest.approx(100.0)
    assert step.offered_rps == pytest.approx(100.0)
    assert step.latency_ms.count == 300
    assert step.latency_ms.max_ms == pytest.approx(900.0, rel=1e-3)
    assert step.latency_ms.get(50) == pytest.approx(2.0, rel=1e-3)
    assert [w.scheduled for w in step.windows] == [100, 100, 100]
    assert step.histogram("latency").count == 300
    assert step.generator.worker_cpu == [0.3, 0.3]
    assert step.verdict == MEASURED  # no SLO: measured, exit code 0


def test_stability_flags_a_climbing_tail_only() -> None:
    def hists(values: Sequence[float]) -> list[LatencyHistogram]:
        out = []
        for v in values:
            h = LatencyHistogram()
            h.record_us(np.full(600, v * 1000.0))
            out.append(h)
        return out

    climbing = stability_of(hists([5, 10, 20, 40, 80, 160]), 99.0, 1.0)
    assert climbing.judged and climbing.stable is False and "climbed" in climbing.reason
    flat = stability_of(hists([5, 5.2, 4.9, 5.1, 5.0, 5.3]), 99.0, 1.0)
    assert flat.judged and flat.stable is True
    sub_ms_jitter = stability_of(hists([0.2, 0.3, 0.5, 0.7, 0.9, 1.0]), 99.0, 1.0)
    assert sub_ms_jitter.stable is True  # rises 5x, but by less than the absolute floor
    too_few = stability_of(hists([1, 2]), 99.0, 1.0)
    assert too_few.judged is False and too_few.stable is None


def test_slo_pass_and_fail_per_target() -> None:
    slo = SloSpec(latency_ms={50.0: 5.0, 99.0: 50.0}, min_throughput=90.0, max_error_rate=0.01)
    config = _config(slo, min_tail_samples=2)
    step = _step(config, [_worker(0, [_flat(100), _flat(100), _flat(100)])])
    assert step.verdict == PASS and step.slo is not None and all(t.passed for t in step.slo.targets)
    slow = _step(config, [_worker(0, [_flat(100, 60.0), _flat(100, 60.0), _flat(100, 60.0)])])
    assert slow.verdict == FAIL
    failed = {t.name for t in slow.slo.targets if not t.passed}  # type: ignore[union-attr]
    assert failed == {"p50_ms", "p99_ms"}
    verdict, code, reasons = overall_verdict([step, slow])
    assert (verdict, code) == (FAIL, 1) and any("p99_ms" in r for r in reasons)


def test_errors_count_against_the_error_rate() -> None:
    config = _config(SloSpec(max_error_rate=0.01))
    step = _step(config, [_worker(0, [_flat(90), _flat(90), _flat(90)], errors={"timeout": 10})])
    assert step.requests.errors == {"timeout": 30}
    assert step.error_rate == pytest.approx(0.1)
    assert step.verdict == FAIL


def test_too_few_samples_for_the_gated_percentile_is_invalid() -> None:
    config = _config(SloSpec(latency_ms={99.0: 1000.0}))  # needs 1000 samples
    step = _step(config, [_worker(0, [_flat(100), _flat(100), _flat(100)])])
    assert step.verdict == INVALID
    assert any("too few samples for p99: 300 < 1000" in r for r in step.validity.reasons)
    assert overall_verdict([step])[:2] == (INVALID, 2)


def test_saturated_generator_is_invalid_never_pass() -> None:
    config = _config(SloSpec(latency_ms={50.0: 1000.0}), max_send_lag_p99_ms=5.0)
    step = _step(config, [_worker(0, [_flat(100), _flat(100), _flat(100)], lag_ms=20.0)])
    assert step.generator.saturated
    assert step.verdict == INVALID and any("load generator saturated" in r for r in step.validity.reasons)


def test_aborted_step_is_invalid() -> None:
    config = _config(SloSpec(max_error_rate=1.0))
    step = _step(config, [_worker(0, [_flat(10), _flat(10), _flat(10)])], aborted="server unreachable: x")
    assert step.verdict == INVALID and step.aborted == "server unreachable: x"


def test_sustained_ratio_fails_an_overloaded_rate() -> None:
    config = _config(SloSpec(max_error_rate=0.0))
    step = _step(config, [_worker(0, [_flat(60), _flat(60), _flat(60)])], plan=_plan(rate=100.0), sustain=0.95)
    # 180 requests scheduled in 3 s = 60/s offered, 60/s delivered: sustained
    assert step.verdict == PASS
    config2 = _config(SloSpec(max_error_rate=0.0))
    w = _worker(0, [_flat(100), _flat(100), _flat(100)])
    for wd in w.windows:
        wd.succeeded_done = 50  # the server delivers half of what was scheduled
    assert _step(config2, [w], sustain=0.95).verdict == FAIL


def test_knee_point() -> None:
    rates = [10, 20, 30, 40, 50, 60]
    latency = [5, 5.2, 5.5, 6, 20, 200]
    assert knee_point(list(zip(rates, latency))) in (40, 50)
    assert knee_point([(1, 1), (2, 2)]) is None
    assert knee_point([(1, 1), (2, 2), (3, 3)]) is None  # a straight line has no knee


def test_capacity_bisection_converges_on_a_known_limit() -> None:
    true_capacity = 437.0
    config = _config(SloSpec(latency_ms={50.0: 50.0}, max_error_rate=0.0), min_tail_samples=2)
    config.capacity = CapacitySpec(max_rate=1000.0, tolerance=0.02, max_steps=12)

    def run_open(rate: float) -> StepResult:
        index = len(calls)
        calls.append(rate)
        n = int(rate)
        lat = 2.0 if rate <= true_capacity else 200.0
        w = _worker(0, [_flat(n, lat), _flat(n, lat), _flat(n, lat)])
        if rate > true_capacity:
            for wd in w.windows:
                wd.succeeded_done = int(true_capacity)
        return _step(config, [w], plan=_plan(index, rate), sustain=0.95)

    calls: list[float] = []
    steps, result = CapacitySearch(config, run_open, run_probe=lambda c: pytest.fail("no probe with max_rate")).run()
    assert result.capacity_rps is not None
    assert (1 - 0.02) * true_capacity <= result.capacity_rps <= true_capacity
    assert result.converged and result.limited_by is None
    assert calls[0] == 1000.0 and len(steps) <= 12
    assert overall_verdict(steps, result)[:2] == (PASS, 0)


def test_capacity_search_stops_on_an_invalid_step() -> None:
    config = _config(SloSpec(max_error_rate=0.0), max_send_lag_p99_ms=1.0)
    config.capacity = CapacitySpec(max_rate=500.0)

    def run_open(rate: float) -> StepResult:
        return _step(config, [_worker(0, [_flat(int(rate))] * 3, lag_ms=5.0)], plan=_plan(0, rate), sustain=0.95)

    steps, result = CapacitySearch(config, run_open, run_probe=lambda c: pytest.fail("unused")).run()
    assert len(steps) == 1 and result.limited_by == "generator"
    assert overall_verdict(steps, result)[:2] == (INVALID, 2)


def test_capacity_without_any_passing_rate_fails() -> None:
    config = _config(SloSpec(max_error_rate=0.0))
    config.capacity = CapacitySpec(max_rate=100.0, min_rate=10.0)

    def run_open(rate: float) -> StepResult:
        return _step(config, [_worker(0, [_flat(int(rate))] * 3, errors={"server_error": 1})], plan=_plan(0, rate), sustain=0.95)

    steps, result = CapacitySearch(config, run_open, run_probe=lambda c: pytest.fail("unused")).run()
    assert result.capacity_rps is None and [s.rate_rps for s in steps] == [100.0, 10.0]
    assert overall_verdict(steps, result)[:2] == (FAIL, 1)


def _generator_limited(config: LoadTestConfig, reach: float, capacity: float, calls: list[float]):
    """A generator that sends at most ``reach`` req/s (beyond it: send lag) before a server of ``capacity``."""

    def run_open(rate: float) -> StepResult:
        index = len(calls)
        calls.append(rate)
        sent = int(min(rate, reach))
        lat = 2.0 if rate <= capacity else 200.0
        w = _worker(0, [_flat(sent, lat)] * 3, lag_ms=500.0 if rate > reach else 0.1)
        for wd in w.windows:
            wd.scheduled = int(rate)
            if rate > capacity:
                wd.succeeded_done = int(capacity)
        return _step(config, [w], plan=_plan(index, rate), sustain=0.95)

    return run_open


def test_capacity_search_starts_at_the_probe_rate_and_stays_within_the_generators_reach() -> None:
    """Two cores: the closed-loop probe carries 1000 req/s, the open-loop generator sends 600 at most."""
    config = _config(SloSpec(latency_ms={50.0: 50.0}, max_error_rate=0.0), min_tail_samples=2)
    config.capacity = CapacitySpec(tolerance=0.05, max_steps=10)
    calls: list[float] = []
    probe = _step(config, [_worker(0, [_flat(1000)] * 3)])
    steps, result = CapacitySearch(config, _generator_limited(config, reach=600.0, capacity=400.0, calls=calls),
                                   run_probe=lambda c: probe).run()
    assert calls[0] == pytest.approx(probe.throughput_rps)  # the probe's rate, not beyond it
    assert calls[1] == pytest.approx(0.8 * 600.0, rel=0.01)  # capped by what the generator did send
    assert all(r <= 600.0 for r in calls[1:])
    assert result.capacity_rps is not None and 0.95 * 400.0 <= result.capacity_rps <= 400.0
    assert result.limited_by is None  # the server's limit was found, below the generator's
    assert overall_verdict(steps, result)[:2] == (PASS, 0)


def test_a_capacity_beyond_the_generators_reach_is_a_lower_bound_and_the_hint_names_max_rate() -> None:
    config = _config(SloSpec(latency_ms={50.0: 50.0}, max_error_rate=0.0), min_tail_samples=2)
    config.capacity = CapacitySpec(tolerance=0.05, max_steps=10)
    calls: list[float] = []
    probe = _step(config, [_worker(0, [_flat(1000)] * 3)])
    steps, result = CapacitySearch(config, _generator_limited(config, reach=600.0, capacity=5000.0, calls=calls),
                                   run_probe=lambda c: probe).run()
    assert result.limited_by == "generator" and result.capacity_rps is not None and result.capacity_rps <= 600.0
    verdict, code, reasons = overall_verdict(steps, result)
    assert (verdict, code) == (PASS, 0) and "at least" in reasons[0]
    # a max_rate the user chose beyond the generator's reach: INVALID, and the hint says how to search below it
    config.capacity = CapacitySpec(max_rate=3000.0)
    steps, result = CapacitySearch(config, _generator_limited(config, reach=600.0, capacity=5000.0, calls=[]),
                                   run_probe=lambda c: pytest.fail("no probe with max_rate")).run()
    verdict, code, reasons = overall_verdict(steps, result)
    assert (verdict, code) == (INVALID, 2) and any("--max-rate 480" in r for r in reasons), reasons
