"""Open-loop schedules: fixed in advance, split exactly across worker processes."""

from __future__ import annotations

import math

import pytest

from sft_engine.loadtest.schedule import StepPlan, intended_times, split_evenly, worker_plans


def _plan(mode: str = "open", rate: float | None = 100.0, concurrency: int | None = None, arrival: str = "constant",
          duration: float = 10.0, warmup: float = 1.0, seed: int = 0) -> StepPlan:
    return StepPlan(index=0, mode=mode, concurrency=concurrency, rate=rate, arrival=arrival,  # type: ignore[arg-type]
                    start=1000.0, measure_start=1000.0 + warmup, measure_end=1000.0 + warmup + duration,
                    window_s=1.0, seed=seed, drain_s=1.0)


def test_split_evenly() -> None:
    assert split_evenly(10, 3) == [4, 3, 3]
    assert split_evenly(2, 4) == [1, 1, 0, 0]
    assert sum(split_evenly(1001, 7)) == 1001


def test_constant_rate_interleaves_exactly_across_workers() -> None:
    step = _plan(rate=200.0, duration=2.0, warmup=0.5)
    single = list(intended_times(worker_plans(step, 1)[0]))
    split = sorted(t for wp in worker_plans(step, 3) for t in intended_times(wp))
    assert len(single) == len(split) == 500
    assert all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(single, split))
    assert single[0] == step.start and single[-1] < step.measure_end
    gaps = {round(b - a, 9) for a, b in zip(single, single[1:])}
    assert gaps == {0.005}


def test_poisson_rate_is_right_and_reproducible() -> None:
    step = _plan(rate=500.0, arrival="poisson", duration=20.0, warmup=0.0, seed=7)
    plans = worker_plans(step, 4)
    times = sorted(t for wp in plans for t in intended_times(wp))
    expected = 500.0 * 20.0
    assert abs(len(times) - expected) < 5 * math.sqrt(expected)  # 5 sigma: cannot flake for a fixed seed
    again = sorted(t for wp in worker_plans(step, 4) for t in intended_times(wp))
    assert times == again
    other_seed = sorted(t for wp in worker_plans(_plan(rate=500.0, arrival="poisson", duration=20.0, warmup=0.0, seed=8), 4)
                        for t in intended_times(wp))
    assert times != other_seed
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 500.0, rel=0.05)


def test_closed_loop_plans_split_concurrency() -> None:
    step = _plan(mode="closed", rate=None, concurrency=5)
    plans = worker_plans(step, 2)
    assert [p.concurrency for p in plans] == [3, 2]
    assert [p.first_request for p in plans] == [0, 3]
    assert list(intended_times(plans[0])) == []


def test_windows_cover_the_measured_interval() -> None:
    step = StepPlan(0, "open", None, 10.0, "constant", 0.0, 1.0, 3.5, 1.0, 0, 1.0)
    assert step.windows == [(1.0, 2.0), (2.0, 3.0), (3.0, 3.5)]
