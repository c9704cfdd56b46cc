"""The bridge from ``tune`` to the load tester: one candidate loaded, measured, scored.

A candidate is loaded on the server as a config override of the tuned version (nothing
is written), then ``run_loadtest`` searches its capacity: the highest open-loop rate
whose percentiles meet the SLO. The load-test configuration is the scenario file merged
by ``LoadTestConfig.from_scenario``, exactly as ``sft-engine loadtest --slo FILE``
merges it; per candidate only the version and the number of capacity steps (what the
budget still allows) change.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from tritonclient.grpc import model_config_pb2 as mc

from sft_engine.errors import ConfigError, LoadTestError
from sft_engine.ops.model_control import LoadFailed, ModelControl
from sft_engine.ops.modelconfig import apply_knobs, override
from sft_engine.ops.tune.config import TuneConfig
from sft_engine.ops.tune.search import Candidate

if TYPE_CHECKING:
    from sft_engine.loadtest.config import Endpoint

__all__ = ["CandidateBench"]

_DEFAULT_CAPACITY_STEPS = 5
#: per load-test step, beyond warmup + duration: worker start, drain, snapshots
_STEP_OVERHEAD_S = 1.5


class CandidateBench:
    """Measures candidates on one server within the budget: each is loaded as a config
    override, then load-tested for its capacity at the SLO of the scenario file."""

    def __init__(self, config: TuneConfig, control: ModelControl, endpoint: Endpoint) -> None:
        from sft_engine.loadtest.config import LoadTestConfig
        from sft_engine.loadtest.scenario import load_scenario
        from sft_engine.loadtest.spec import CapacitySpec

        self.config = config
        self.control = control
        scenario = load_scenario(config.slo_file)
        if scenario.slo is None or scenario.slo.is_empty:
            raise ConfigError(f"SLO file {config.slo_file} has no [slo] targets", hint="add e.g. [slo] p99_ms = 50: tune maximizes the load that meets it")
        # merged as the CLI merges a scenario; each candidate changes only the version and the capacity steps
        self.base = LoadTestConfig.from_scenario(
            scenario, endpoints=(endpoint,), model=config.model, find_capacity=True,
            capacity=scenario.capacity or CapacitySpec(max_steps=_DEFAULT_CAPACITY_STEPS, tolerance=0.1),
            workers=config.workers, allow_remote=config.allow_remote, admin_key=config.admin_key,
        )
        self.slo = scenario.slo
        self.load = self.base.load
        self.capacity = self.base.capacity
        self.percentile = self.slo.gated_percentile or 99.0
        self.started = time.monotonic()
        self.costs: list[float] = []

    # -- budget ----------------------------------------------------------------------
    def remaining(self) -> float:
        return self.config.budget_s - (time.monotonic() - self.started)

    def step_cost(self) -> float:
        return self.load.warmup_s + self.load.duration_s + _STEP_OVERHEAD_S

    def estimate(self) -> float:
        """Seconds the next candidate will take: the measured mean, or a guess before any."""
        if self.costs:
            return sum(self.costs) / len(self.costs)
        return 5.0 + self.step_cost() * (self.capacity.max_steps + 1)

    # -- one candidate ---------------------------------------------------------------
    def evaluate(self, candidate: Candidate, cfg: mc.ModelConfig, version: int, first: bool) -> Candidate:
        from sft_engine.loadtest.runner import run_loadtest

        started = time.monotonic()
        model = self.config.model
        try:
            candidate_cfg = apply_knobs(cfg, candidate.knobs)
            self.control.load(model, override(candidate_cfg, [version]))
        except (LoadFailed, ConfigError) as exc:
            candidate.verdict, candidate.note = "not loaded", getattr(exc, "message", str(exc))[:200]
            candidate.seconds = round(time.monotonic() - started, 1)
            return candidate
        if not self.control.wait_ready(model, version, 120.0):
            candidate.verdict, candidate.note = "not ready", "did not become ready within 120 s"
            candidate.seconds = round(time.monotonic() - started, 1)
            return candidate
        # the capacity search of this candidate: as many steps as the budget still allows
        steps = min(self.capacity.max_steps, int(self.remaining() // self.step_cost()) - (0 if self.capacity.max_rate else 1))
        steps = max(2, steps) if first else steps
        if steps < 2:
            candidate.verdict, candidate.note = "skipped", "out of budget"
            candidate.seconds = round(time.monotonic() - started, 1)
            return candidate
        capacity = replace(self.capacity, max_steps=steps)
        lt_config = replace(self.base, model_version=str(version), capacity=capacity)
        try:
            result = run_loadtest(lt_config)
        except LoadTestError as exc:  # this candidate could not be measured (e.g. the server stopped answering)
            candidate.verdict, candidate.note = "error", exc.message[:200]
            candidate.seconds = round(time.monotonic() - started, 1)
            return candidate
        cap = result.capacity
        open_steps = [s for s in result.steps if s.mode == "open"]
        candidate.steps = len(result.steps)
        candidate.verdict = result.verdict
        reason = "; ".join(result.reasons)
        if result.verdict == "INVALID":
            # the measurement is not a result: its figures are shown, its reason says why they do not count
            candidate.note = reason or "the load test was invalid"
            step = max((s for s in open_steps if s.verdict in ("PASS", "FAIL")), key=lambda s: s.rate_rps or 0.0, default=None)
        elif cap is not None and cap.capacity_rps:
            candidate.capacity_rps = cap.capacity_rps
            at = [s for s in open_steps if s.rate_rps is not None and abs(s.rate_rps - cap.capacity_rps) < 1e-6 * max(1.0, cap.capacity_rps)]
            step = at[-1] if at else None
            if cap.limited_by == "max_rate":
                candidate.note = "every tried rate met the SLO: capacity is at least this"
            elif cap.limited_by == "generator":
                candidate.note = "the load generator could not send faster: capacity is at least this"
            else:
                candidate.note = reason or f"capacity {cap.capacity_rps:g} req/s meets the SLO"
        else:
            step = min(open_steps, key=lambda s: s.rate_rps or math.inf) if open_steps else None
            candidate.note = ("capacity search stopped: " + cap.limited_by) if cap and cap.limited_by else "no tested rate met the SLO"
        if step is not None:
            candidate.at_rate_rps = step.rate_rps
            candidate.latency_ms = step.latency_ms.get(self.percentile)
            metrics = (step.server.metrics if step.server else None) or {}
            candidate.cpu_utilization = metrics.get("cpu_utilization", step.generator.host_cpu_busy)
            candidate.gpu_utilization = metrics.get("gpu_utilization")
        candidate.seconds = round(time.monotonic() - started, 1)
        self.costs.append(candidate.seconds)
        return candidate
