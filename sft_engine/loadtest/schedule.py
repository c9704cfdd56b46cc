"""When each request should be sent: the plan of one step, split across worker processes.

Open loop (wrk2's fix for coordinated omission): the send times are fixed in advance
- constant spacing or Poisson arrivals - and every latency is measured from the
*intended* send time. A server that stalls cannot slow the schedule down, so every
request that should have been sent during a stall carries the stall in its latency.

Closed loop: N users each send, wait for the answer, send again. The send time is
whenever the previous answer arrived, so a stall pauses the users and hides itself;
latency is measured from the actual send (as perf_analyzer does). It answers "how
fast can N callers go", not "what latency does a given traffic see".

Splitting: a constant rate R over W workers interleaves exactly (worker i sends the
requests i, i+W, i+2W, ... of the global schedule); W independent Poisson streams
of rate R/W superpose to one Poisson stream of rate R.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np

__all__ = ["StepPlan", "WorkerPlan", "split_evenly", "intended_times", "worker_plans"]


@dataclass(frozen=True)
class StepPlan:
    """One step of a run, in the coordinator's terms (absolute ``time.monotonic`` seconds)."""

    index: int
    mode: Literal["closed", "open"]
    concurrency: int | None
    rate: float | None
    arrival: Literal["constant", "poisson"]
    start: float  # warmup begins
    measure_start: float
    measure_end: float
    window_s: float
    seed: int
    #: how long in-flight requests may still finish after measure_end
    drain_s: float

    @property
    def windows(self) -> list[tuple[float, float]]:
        """Fixed measurement windows [a, b); the last one may be shorter."""
        edges = []
        t = self.measure_start
        while t < self.measure_end - 1e-9:
            edges.append((t, min(t + self.window_s, self.measure_end)))
            t += self.window_s
        return edges


@dataclass(frozen=True)
class WorkerPlan:
    """The share of one step a worker runs."""

    step: StepPlan
    worker_index: int
    n_workers: int
    concurrency: int  # closed loop: users in this worker (may be 0)
    rate: float  # open loop: this worker's share of the rate (may be 0)
    first_request: int  # closed loop: global index of this worker's first user


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` users over ``parts`` workers, differing by at most one."""
    base, extra = divmod(int(total), int(parts))
    return [base + (1 if i < extra else 0) for i in range(parts)]


def worker_plans(step: StepPlan, n_workers: int) -> list[WorkerPlan]:
    """The per-worker shares of a step."""
    plans = []
    if step.mode == "closed":
        shares = split_evenly(step.concurrency or 0, n_workers)
        first = 0
        for i, share in enumerate(shares):
            plans.append(WorkerPlan(step, i, n_workers, concurrency=share, rate=0.0, first_request=first))
            first += share
    else:
        rate = float(step.rate or 0.0)
        for i in range(n_workers):
            plans.append(WorkerPlan(step, i, n_workers, concurrency=0, rate=rate / n_workers, first_request=0))
    return plans


def intended_times(plan: WorkerPlan, chunk: int = 4096) -> Iterator[float]:
    """This worker's intended send times from ``step.start`` until ``step.measure_end``.

    Generated lazily in numpy chunks: a long run at a high rate never holds its whole
    schedule in memory, and each time costs one array read.
    """
    step = plan.step
    if plan.rate <= 0:
        return
    if step.arrival == "constant":
        global_rate = plan.rate * plan.n_workers
        k = plan.worker_index
        stride = plan.n_workers
        while True:
            ks = k + stride * np.arange(chunk, dtype=np.float64)
            times = step.start + ks / global_rate
            for t in times.tolist():
                if t >= step.measure_end:
                    return
                yield t
            k += stride * chunk
    else:
        rng = np.random.default_rng([int(step.seed), int(step.index), int(plan.worker_index)])
        t = step.start
        while True:
            gaps = rng.exponential(1.0 / plan.rate, size=chunk)
            times = t + np.cumsum(gaps)
            for value in times.tolist():
                if value >= step.measure_end:
                    return
                yield value
            t = float(times[-1])
