"""``--find-capacity``: the highest open-loop rate that still meets the SLO, and the knee.

Capacity is searched with open-loop steps only: a closed loop cannot overload a
server (it slows down with it), so it cannot find where the SLO breaks. The search:

1. upper end: ``max_rate`` (``--max-rate``), or the throughput of a short closed-loop
   probe at ``probe_concurrency`` - the rate the server and the generator together
   showed they can carry; it should fail; if it passes, double it (twice at most);
2. lower end: ``min_rate`` if given (it must pass), else 0;
3. bisect until the bracket is narrower than ``tolerance`` x its upper end or
   ``max_steps`` steps have run.

A step passes when it meets every SLO target, is stable, and delivers at least
``sustain_ratio`` of the offered rate. An INVALID step is no measurement of the server.
When it is the generator that could not keep up (send lag) at a rate the probe chose,
that rate is out of the generator's reach: the upper end is capped by what the
generator did send and the search goes on below it (a few times at most). A capacity
found under such a cap is a lower bound (``limited_by = "generator"``). Any other
INVALID step - and a saturated generator at a ``max_rate`` the user chose - ends the
search: beyond it the numbers would describe the generator, not the server.

The knee is computed over every valid search step (rate, log of the gated latency):
the point farthest below the chord from the lowest to the highest rate, after
scaling both axes to [0, 1] (the "Kneedle" construction). It is where latency starts to grow
faster than load - the rate to plan for, with the capacity as the hard limit.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

from sft_engine.loadtest.config import LoadTestConfig
from sft_engine.loadtest.spec import CapacitySpec
from sft_engine.loadtest.results import FAIL, INVALID, PASS, CapacityResult, StepResult

__all__ = ["knee_point", "CapacitySearch"]

LOGGER = logging.getLogger(__name__)

#: how often the probe's upper end may be lowered to what the generator could send
_MAX_GENERATOR_CAPS = 3
#: the lowered upper end: this fraction of the rate the saturated generator did send
_GENERATOR_MARGIN = 0.8


def knee_point(points: Sequence[tuple[float, float]]) -> float | None:
    """x of the knee of an increasing, convex-ish curve; None with < 3 points or no bend."""
    # log latency: near saturation latency grows geometrically, and on a linear axis the
    # one overloaded step would flatten every other point to zero
    pts = sorted((float(x), math.log(float(y))) for x, y in points if y is not None and y > 0)
    if len(pts) < 3:
        return None
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    x0, x1 = xs[0], xs[-1]
    y0, y1 = min(ys), max(ys)
    if x1 <= x0 or y1 <= y0:
        return None
    best, best_x = 0.0, None
    for x, y in pts:
        distance = (x - x0) / (x1 - x0) - (y - y0) / (y1 - y0)
        if distance > best + 1e-12:
            best, best_x = distance, x
    return best_x


class CapacitySearch:
    """Runs the bisection with callbacks that execute one step each."""

    def __init__(
        self,
        config: LoadTestConfig,
        run_open: Callable[[float], StepResult],
        run_probe: Callable[[int], StepResult],
    ) -> None:
        self.config = config
        self.spec = config.capacity or CapacitySpec()
        self.run_open = run_open
        self.run_probe = run_probe
        self.steps: list[StepResult] = []
        self.trail: list[dict[str, object]] = []
        self.stopped: str | None = None

    def _attempt(self, rate: float) -> str:
        step = self.run_open(rate)
        self.steps.append(step)
        self.trail.append({"rate_rps": round(rate, 3), "verdict": step.verdict, "step": step.index})
        LOGGER.info("capacity search: %.1f req/s -> %s", rate, step.verdict)
        if step.verdict == INVALID:
            if step.aborted:
                self.stopped = "server unreachable" if "unreachable" in step.aborted else "invalid step"
            elif step.generator.saturated:
                self.stopped = "generator"
            else:
                self.stopped = "invalid step"
        return step.verdict

    def _budget_left(self) -> bool:
        return len([s for s in self.steps if s.mode == "open"]) < self.spec.max_steps

    def run(self) -> tuple[list[StepResult], CapacityResult]:
        spec = self.spec
        probe_tp: float | None = None
        hi = spec.max_rate
        if hi is None:
            probe = self.run_probe(spec.probe_concurrency)
            self.steps.append(probe)
            probe_tp = probe.throughput_rps
            if probe.verdict == INVALID and probe.aborted:
                return self.steps, self._result(None, 0.0, probe_tp, "server unreachable")
            if probe_tp <= 0:
                return self.steps, self._result(None, 0.0, probe_tp, "invalid step")
            hi = probe_tp
        capped = spec.max_rate is None  # a probe's rate may be lowered to the generator's reach
        best: float | None = None
        lo = 0.0
        verdict = self._attempt(hi)
        generator_cap: float | None = None
        caps = 0
        while verdict == INVALID and capped and self.stopped == "generator" and caps < _MAX_GENERATOR_CAPS and self._budget_left():
            generator_cap = hi
            hi = self._below_generator(hi)
            caps += 1
            self.stopped = None
            verdict = self._attempt(hi)
        doublings = 0
        while verdict == PASS and generator_cap is None and doublings < 2 and self._budget_left():
            best = lo = hi
            hi *= 2.0
            doublings += 1
            verdict = self._attempt(hi)
        if verdict == INVALID:
            if best is not None and self.stopped == "generator":  # the server carried ``best``; the generator went no further
                return self.steps, self._result(best, lo, probe_tp, "generator", hi=hi)
            return self.steps, self._result(best, lo, probe_tp, self.stopped, hi=hi)
        if verdict == PASS:
            limit = "generator" if generator_cap is not None else "max_rate"
            return self.steps, self._result(hi, hi, probe_tp, limit, hi=generator_cap)
        if spec.min_rate is not None and best is None and self._budget_left():
            verdict = self._attempt(spec.min_rate)
            if verdict == INVALID:
                return self.steps, self._result(None, 0.0, probe_tp, self.stopped, hi=hi)
            if verdict == FAIL:
                return self.steps, self._result(None, 0.0, probe_tp, None, hi=spec.min_rate, converged=True)
            best = lo = spec.min_rate
        hi_out_of_reach = False  # is the upper end a rate the generator could not send (not one the server failed)?
        while self._budget_left() and (hi - lo) > spec.tolerance * hi:
            mid = (lo + hi) / 2.0
            verdict = self._attempt(mid)
            if verdict == INVALID:
                if self.stopped != "generator" or best is None:
                    return self.steps, self._result(best, lo, probe_tp, self.stopped, hi=hi)
                self.stopped = None  # out of the generator's reach: an upper end all the same
            if verdict == PASS:
                best = lo = mid
            else:
                hi, hi_out_of_reach = mid, verdict == INVALID
        converged = (hi - lo) <= spec.tolerance * hi
        limited = "generator" if hi_out_of_reach and best is not None else None
        return self.steps, self._result(best, lo, probe_tp, limited, hi=hi, converged=converged)

    def _below_generator(self, rate: float) -> float:
        """The next upper end after the generator could not send ``rate``: below what it did send."""
        sent = self.steps[-1].sent_rps
        reach = sent if 0 < sent < rate else rate
        lowered = _GENERATOR_MARGIN * reach
        LOGGER.info("capacity search: the generator sent %.1f of %.1f req/s; searching below %.1f req/s", sent, rate, lowered)
        return lowered

    def _result(
        self, capacity: float | None, lo: float, probe_tp: float | None, limited_by: str | None,
        hi: float | None = None, converged: bool = False,
    ) -> CapacityResult:
        gated = (self.config.slo.gated_percentile if self.config.slo else None) or 99.0
        points = [
            (s.offered_rps, s.latency_ms.get(gated))
            for s in self.steps if s.mode == "open" and s.verdict in (PASS, FAIL) and s.latency_ms.get(gated) is not None
        ]
        criteria = ["every SLO target", f"achieved >= {self.spec.sustain_ratio:g} x offered rate"]
        if self.config.slo and self.config.slo.require_stable:
            criteria.append("gated percentile not climbing")
        return CapacityResult(
            capacity_rps=round(capacity, 3) if capacity else None,
            knee_rps=_round(knee_point(points)),  # type: ignore[arg-type]
            bracket_rps=[round(lo, 3), _round(hi)],
            converged=converged,
            limited_by=limited_by,
            criteria=criteria,
            probe_throughput_rps=probe_tp,
            steps=[s.index for s in self.steps],
            trail=list(self.trail),
        )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
