"""The gate: is a step's measurement trustworthy, and does it meet the SLO?

Validity comes first. A run is INVALID - exit code 2, never PASS - when:

* the generator could not keep its schedule (send lag p99 above the tolerance):
  the server did not receive the load the report claims;
* the gated percentile rests on too few samples: p99 of 200 requests is the 2nd
  largest value, an anecdote; a percentile q needs ``min_tail_samples / (1 - q)``;
* the step was aborted (server unreachable, a worker died) or nothing completed.

Only a valid step is judged PASS/FAIL against its targets. Timeouts are failures
*and* sit in the latency histogram at their elapsed time, so a server that answers
nothing cannot pass a latency target by default.
"""

from __future__ import annotations

from typing import Sequence

from sft_engine.loadtest.config import LoadTestConfig
from sft_engine.loadtest.spec import SloSpec, percentile_label
from sft_engine.loadtest.results import (
    EXIT_CODES, FAIL, INVALID, MEASURED, PASS, CapacityResult, SloOutcome, StepResult, TargetOutcome, Validity,
)

__all__ = ["judge_validity", "evaluate_slo", "judge_step", "overall_verdict"]


def judge_validity(step: StepResult, config: LoadTestConfig, worker_errors: Sequence[str] = ()) -> Validity:
    validity = Validity()
    if step.aborted:
        validity.reasons.append(f"aborted: {step.aborted}")
    for error in worker_errors:
        validity.reasons.append(f"load generator failed: {error}")
    if step.requests.scheduled == 0:
        validity.reasons.append("no request was sent in the measured interval")
    lag_p99 = step.send_lag_ms.get(99.0)
    if step.generator.saturated and lag_p99 is not None:
        validity.reasons.append(
            f"load generator saturated: send lag p99 {lag_p99:.2f} ms > {config.validity.max_send_lag_p99_ms:g} ms "
            f"({_lag_cause(step)})"
        )
    q = config.slo.gated_percentile if config.slo else None
    count = step.latency_ms.count
    if q is not None:
        need = config.validity.min_samples(q)
        if count < need:
            validity.reasons.append(
                f"too few samples for {percentile_label(q)}: {count} < {need} "
                f"(run longer or at a higher rate; min_tail_samples = {config.validity.min_tail_samples})"
            )
    elif count and count < config.validity.min_samples(99.0):
        validity.warnings.append(f"p99 rests on {count} samples; {config.validity.min_samples(99.0)} are needed to trust it")
    if step.reconciliation is not None and step.reconciliation.ok is False:
        validity.warnings.append(
            f"client and server counts differ by {step.reconciliation.difference} requests: {step.reconciliation.note}"
        )
    if step.stability.judged is False and config.slo and config.slo.require_stable and not step.aborted:
        validity.warnings.append(f"stability not judged: {step.stability.reason}")
    validity.warnings.extend(step.generator.notes)
    validity.valid = not validity.reasons
    return validity


def _lag_cause(step: StepResult) -> str:
    """Busy workers need more workers; idle workers on a busy host were starved by others."""
    g = step.generator
    busiest = max(g.worker_cpu or [0.0])
    if busiest >= 0.8:
        return f"a worker used {busiest:.0%} of a core: add --workers or lower the load"
    if g.host_cpu_busy is not None and g.host_cpu_busy >= 0.9:
        return (f"workers used at most {busiest:.0%} of a core while the host was {g.host_cpu_busy:.0%} busy: "
                f"other processes starved the generator; free CPU or run it elsewhere")
    return "add --workers, lower the load, or free CPU"


def evaluate_slo(step: StepResult, slo: SloSpec, sustain_ratio: float | None = None) -> SloOutcome:
    """PASS/FAIL per target. ``sustain_ratio`` (capacity search): achieved >= ratio x offered."""
    targets: list[TargetOutcome] = []
    for q, limit in sorted(slo.latency_ms.items()):
        measured = step.latency_ms.get(q)
        targets.append(TargetOutcome(f"{percentile_label(q)}_ms", limit, measured, "<=", measured is not None and measured <= limit))
    if slo.min_throughput is not None:
        targets.append(TargetOutcome("min_throughput", slo.min_throughput, step.throughput_rps, ">=", step.throughput_rps >= slo.min_throughput))
    if slo.max_error_rate is not None:
        rate = step.error_rate
        targets.append(TargetOutcome("max_error_rate", slo.max_error_rate, rate, "<=", rate is not None and rate <= slo.max_error_rate))
    if slo.require_stable and step.stability.judged:
        stable = bool(step.stability.stable)
        targets.append(TargetOutcome("stable", 1.0, 1.0 if stable else 0.0, ">=", stable))
    if sustain_ratio is not None and step.offered_rps > 0:
        ratio = step.throughput_rps / step.offered_rps
        targets.append(TargetOutcome("sustained_ratio", sustain_ratio, round(ratio, 4), ">=", ratio >= sustain_ratio))
    verdict = PASS if all(t.passed for t in targets) else FAIL
    return SloOutcome(verdict=verdict, targets=targets)


def judge_step(step: StepResult, config: LoadTestConfig, worker_errors: Sequence[str] = (), sustain_ratio: float | None = None) -> StepResult:
    """Fill in validity, SLO outcome and verdict (in place; returns the step)."""
    step.validity = judge_validity(step, config, worker_errors)
    step.slo = evaluate_slo(step, config.slo, sustain_ratio) if config.slo else None
    if not step.validity.valid:
        step.verdict = INVALID
    elif step.slo is None:
        step.verdict = MEASURED
    else:
        step.verdict = step.slo.verdict
    return step


def overall_verdict(steps: Sequence[StepResult], capacity: CapacityResult | None = None) -> tuple[str, int, list[str]]:
    """Verdict of the whole run, its exit code and the reasons, one line each.

    Sweeps: every step must pass. Capacity search: PASS when a rate meeting the SLO
    was found, FAIL when none was, INVALID when the search could not be completed
    (generator saturated, server unreachable).
    """
    reasons: list[str] = []
    if not steps:
        return INVALID, EXIT_CODES[INVALID], ["no step ran"]
    if capacity is not None:
        invalid = [s for s in steps if s.verdict == INVALID]
        if capacity.limited_by == "generator" and capacity.capacity_rps is not None:
            # a rate the server carried within the SLO, measured validly: a lower bound of its capacity
            return PASS, EXIT_CODES[PASS], [
                f"capacity at least {capacity.capacity_rps:g} req/s meets the SLO; the load generator could not send faster",
                _generator_hint(invalid),
            ]
        if capacity.limited_by in ("generator", "server unreachable", "invalid step"):
            reasons.append(f"capacity search stopped: {capacity.limited_by}")
            reasons.extend(f"step {s.index + 1}: {r}" for s in invalid for r in s.validity.reasons)
            if capacity.limited_by == "generator":
                reasons.append(_generator_hint(invalid))
            return INVALID, EXIT_CODES[INVALID], reasons
        if capacity.capacity_rps is None:
            reasons.append("no tested rate met the SLO")
            return FAIL, EXIT_CODES[FAIL], reasons
        return PASS, EXIT_CODES[PASS], [f"capacity {capacity.capacity_rps:g} req/s meets the SLO"]
    verdict = MEASURED
    for step in steps:
        if step.verdict == INVALID:
            reasons.extend(f"step {step.index + 1} ({step.label}): {r}" for r in step.validity.reasons)
        elif step.verdict == FAIL and step.slo:
            reasons.extend(
                f"step {step.index + 1} ({step.label}): {t.name} = {_fmt(t.measured)} (limit {t.comparison} {t.limit:g})"
                for t in step.slo.targets if not t.passed
            )
    verdicts = {s.verdict for s in steps}
    if INVALID in verdicts:
        verdict = INVALID
    elif FAIL in verdicts:
        verdict = FAIL
    elif PASS in verdicts:
        verdict = PASS
    return verdict, EXIT_CODES[verdict], reasons


def _generator_hint(invalid: Sequence[StepResult]) -> str:
    """What to do when the generator was the limit: search below what it could send."""
    sent = [s.sent_rps for s in invalid if s.generator.saturated and s.sent_rps > 0]
    below = f"{0.8 * min(sent):.0f}" if sent else "R"
    return (f"hint: search below the generator's reach with --max-rate {below} (or [capacity] max_rate in the SLO file), "
            "add --workers, or free CPU for the generator")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}"
