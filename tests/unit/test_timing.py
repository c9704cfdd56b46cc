"""sft_engine/timing.py: the figures that decide which engine a build publishes.

The build keeps the candidate with the lowest p50 of ``time_interleaved`` (ties: the
first in plan order). The clock here is fake: every call advances it by the cost the
test gives, so each figure below is exact and no test depends on the machine's speed.
"""

from __future__ import annotations

import types
from typing import Callable

import numpy as np
import pytest

from sft_engine import timing
from sft_engine.timing import LatencyStats, latency_stats, time_closed_loop, time_interleaved

BATCH = np.zeros((4, 3, 8, 8), dtype=np.float32)
TICK = 2.0 ** -10  # about a millisecond, exact in binary: sums of ticks compare exactly with a budget of ticks


class Clock:
    """A perf_counter that moves only when a fake engine runs; it records who ran, in order."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[str] = []

    def perf_counter(self) -> float:
        return self.now

    def engine(self, name: str, cost_s: Callable[[int], float] | float) -> Callable[[np.ndarray], None]:
        """A runner that takes ``cost_s`` seconds (or ``cost_s(call_index)``) of fake time per call."""

        def run(batch: np.ndarray) -> None:
            assert batch is BATCH  # every candidate runs on the very batch it is timed on
            self.now += cost_s(len(self.calls)) if callable(cost_s) else cost_s
            self.calls.append(name)

        return run


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


def test_candidates_run_in_blocks_that_alternate_and_each_block_rewarms(clock: Clock) -> None:
    fns = {"a": clock.engine("a", 0.001), "b": clock.engine("b", 0.001)}
    stats = time_interleaved(fns, BATCH, min_iters=5, budget_s=0.0, warmup=2, blocks=3)
    per_block = 2 + 2  # warm-up calls, then ceil(5 / 3) timed calls
    assert clock.calls == (["a"] * per_block + ["b"] * per_block) * 3
    assert {name: s.iterations for name, s in stats.items()} == {"a": 6, "b": 6}  # warm-ups are not timed


def test_it_returns_one_figure_per_candidate_in_the_order_given(clock: Clock) -> None:
    fns = {"zeta": clock.engine("zeta", 0.002), "alpha": clock.engine("alpha", 0.001), "mid": clock.engine("mid", 0.003)}
    stats = time_interleaved(fns, BATCH, min_iters=3, budget_s=0.0, blocks=1)
    assert list(stats) == ["zeta", "alpha", "mid"]
    assert all(isinstance(s, LatencyStats) and s.batch_size == len(BATCH) for s in stats.values())
    assert {n: s.p50_ms for n, s in stats.items()} == pytest.approx({"zeta": 2.0, "alpha": 1.0, "mid": 3.0})
    assert min(stats, key=lambda n: stats[n].p50_ms) == "alpha"  # the build's rule: the lowest p50 is published


def test_a_tie_goes_to_the_first_candidate_in_plan_order(clock: Clock) -> None:
    for order in (["x", "y"], ["y", "x"]):
        stats = time_interleaved({n: clock.engine(n, TICK) for n in order}, BATCH, min_iters=4, budget_s=0.0)
        assert stats["x"].p50_ms == stats["y"].p50_ms
        assert min(stats, key=lambda n: stats[n].p50_ms) == order[0]


def test_a_slow_stretch_of_time_slows_every_candidate_alike(clock: Clock) -> None:
    """A noisy neighbour during the second round: interleaved, the faster engine still wins by its true ratio."""
    noisy = range(8, 16)  # the calls of the second round (4 per block: 2 warm-up + 2 timed)

    def cost(base: float) -> Callable[[int], float]:
        return lambda i: base * (5 if i in noisy else 1)

    stats = time_interleaved({"a": clock.engine("a", cost(0.0010)), "b": clock.engine("b", cost(0.0011))},
                             BATCH, min_iters=6, budget_s=0.0, warmup=2, blocks=3)
    assert stats["a"].p50_ms == pytest.approx(1.0) and stats["b"].p50_ms == pytest.approx(1.1)
    assert stats["a"].p99_ms > 4 and stats["b"].p99_ms > 4  # both saw the slow stretch


def test_a_cold_first_call_after_the_other_runtime_is_absorbed_by_the_warmup(clock: Clock) -> None:
    """The first call after another runtime had the cores is slow; each block's warm-up takes it, untimed."""

    def cold_after_other(name: str) -> Callable[[int], float]:
        return lambda i: 0.1 if i > 0 and clock.calls[i - 1] != name else 0.001

    fns = {n: clock.engine(n, cold_after_other(n)) for n in ("a", "b")}
    warm = time_interleaved(fns, BATCH, min_iters=6, budget_s=0.0, warmup=1, blocks=3)
    assert {n: s.p99_ms for n, s in warm.items()} == pytest.approx({"a": 1.0, "b": 1.0})
    cold = time_interleaved(fns, BATCH, min_iters=6, budget_s=0.0, warmup=0, blocks=3)
    assert cold["a"].p99_ms > 50 and cold["b"].p99_ms > 50  # without the warm-up it would be timed


def test_every_candidate_gets_the_same_share_of_the_budget(clock: Clock) -> None:
    stats = time_interleaved({"fast": clock.engine("fast", TICK), "slow": clock.engine("slow", 2 * TICK)},
                             BATCH, min_iters=1, budget_s=60 * TICK, warmup=0, blocks=3)
    # 60 ticks over 3 blocks × 2 candidates: 10 ticks of timed calls per block each
    assert stats["fast"].iterations == 30 and stats["slow"].iterations == 15
    assert stats["fast"].mean_ms == pytest.approx(1000 * TICK) and stats["slow"].mean_ms == pytest.approx(2000 * TICK)


def test_a_block_stops_at_10000_calls_even_if_its_share_never_runs_out(clock: Clock) -> None:
    stats = time_interleaved({"free": clock.engine("free", 0.0)}, BATCH, min_iters=1, budget_s=1.0, warmup=0, blocks=2)
    assert stats["free"].iterations == 20_000


def test_min_iters_holds_even_past_the_budget(clock: Clock) -> None:
    stats = time_interleaved({"slow": clock.engine("slow", 1.0)}, BATCH, min_iters=7, budget_s=0.001, warmup=0, blocks=3)
    assert stats["slow"].iterations == 9  # ceil(7 / 3) per block


def test_closed_loop_times_at_least_min_iters_for_its_budget_without_the_warmup(clock: Clock) -> None:
    costs = iter([0.5, 0.5] + [TICK] * 1000)  # two slow warm-up calls, then one tick each
    fn = clock.engine("a", lambda _i: next(costs))
    stats = time_closed_loop(fn, BATCH, budget_s=10 * TICK, min_iters=3, warmup=2)
    assert stats.iterations == 10 and stats.p50_ms == pytest.approx(1000 * TICK) and stats.p99_ms == pytest.approx(1000 * TICK)
    assert clock.calls.count("a") == 12
    assert time_closed_loop(clock.engine("b", 0.004), BATCH, budget_s=0.001, min_iters=3, warmup=0).iterations == 3


def test_latency_stats_are_milliseconds_and_throughput_follows_the_median() -> None:
    stats = latency_stats([0.001, 0.002, 0.003, 0.004, 0.100], batch=8)
    assert (stats.iterations, stats.batch_size) == (5, 8)
    assert stats.p50_ms == pytest.approx(3.0) and stats.mean_ms == pytest.approx(22.0)
    assert 4.0 < stats.p99_ms <= 100.0
    assert stats.images_per_s == pytest.approx(8 / 0.003)
    assert stats.to_dict() == {"iterations": 5, "batch_size": 8, "p50_ms": 3.0, "p99_ms": round(stats.p99_ms, 4),
                               "mean_ms": 22.0, "images_per_s": round(8 / 0.003, 2)}
    assert LatencyStats(1, 8, 0.0, 0.0, 0.0).images_per_s == 0.0  # a clock too coarse to measure is not infinite speed
