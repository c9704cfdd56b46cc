"""What ``tune`` tries and in which order: the candidate grid and a coordinate descent over it.

Nothing here talks to a server: ``coordinate_descent`` is handed the function that
measures one candidate (``bench``) and the one that says whether the budget allows
another, so the order and the ranking are tested without a server.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterator

from sft_engine.errors import ConfigError
from sft_engine.ops.modelconfig import ServingKnobs

__all__ = ["TuneSpace", "Candidate", "default_space", "coordinate_descent", "best_of", "DIMENSIONS"]

_DELAYS_US = (0, 100, 500, 2000)


@dataclass(frozen=True)
class TuneSpace:
    """The values tried per knob; the current configuration's value is always among them."""

    max_batch_sizes: tuple[int, ...]
    queue_delays_us: tuple[int, ...]
    instance_counts: tuple[int, ...]
    gpus: tuple[int, ...] = ()

    def validate(self, built_max: int, request_batch: int) -> None:
        for name, values in (("--max-batch-sizes", self.max_batch_sizes), ("--instance-counts", self.instance_counts)):
            if not values or any(int(v) != v or v < 1 for v in values):
                raise ConfigError(f"{name} must list whole numbers >= 1, got {list(values)}", hint=f"e.g. {name} 1,2,4")
        if not self.queue_delays_us or any(int(v) != v or v < 0 for v in self.queue_delays_us):
            raise ConfigError(f"--queue-delays-us must list whole numbers >= 0, got {list(self.queue_delays_us)}", hint="e.g. --queue-delays-us 0,100,1000")
        too_big = [b for b in self.max_batch_sizes if b > built_max]
        if too_big:
            raise ConfigError(f"--max-batch-sizes {too_big} exceed the {built_max} the engine was built and verified for",
                              hint=f"use values <= {built_max}, or rebuild with a larger --max-batch-size")
        if all(b < request_batch for b in self.max_batch_sizes):
            raise ConfigError(f"every --max-batch-sizes value is below the load's batch size {request_batch}",
                              hint="lower batch_size in the SLO file's [load] or raise the batch sizes")


@dataclass
class Candidate:
    index: int
    knobs: ServingKnobs
    #: measured: requests/s at the SLO (None: no tested rate met it)
    capacity_rps: float | None = None
    #: gated percentile at the capacity rate (or at the lowest rate tried when none met the SLO)
    latency_ms: float | None = None
    at_rate_rps: float | None = None
    cpu_utilization: float | None = None
    gpu_utilization: float | None = None
    verdict: str = "not run"
    note: str = ""
    seconds: float = 0.0
    steps: int = 0

    @property
    def meets_slo(self) -> bool:
        """Only a PASS verdict meets the SLO: the lower end of a search an INVALID step cut
        short is a figure about the generator, not a capacity."""
        return self.verdict == "PASS" and self.capacity_rps is not None and self.capacity_rps > 0

    @property
    def valid(self) -> bool:
        """Measured, and the measurement can be trusted (not INVALID, not an error)."""
        return self.verdict in ("PASS", "FAIL")

    def score(self) -> tuple[Any, ...]:
        """Larger is better: meets the SLO, more capacity, lower latency, fewer instances, less delay."""
        latency = self.latency_ms if self.latency_ms is not None else math.inf
        return (self.meets_slo, self.valid, self.capacity_rps if self.meets_slo else 0.0, -latency, -self.knobs.total_instances, -self.knobs.queue_delay_us)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["knobs"] = self.knobs.to_dict()
        out["meets_slo"] = self.meets_slo
        return out


def _powers_of_two_upto(limit: int) -> list[int]:
    out, b = [], 1
    while b <= limit:
        out.append(b)
        b *= 2
    return out


def default_space(current: ServingKnobs, built_max: int, request_batch: int, slo_limit_ms: float | None, gpus: tuple[int, ...]) -> TuneSpace:
    """A small grid around the current configuration (about ten candidates in all)."""
    batches = sorted({b for b in [1, *_powers_of_two_upto(built_max)[-3:], built_max, current.max_batch_size] if request_batch <= b <= built_max})
    delay_cap = int(slo_limit_ms * 1000 / 2) if slo_limit_ms else max(_DELAYS_US)
    delays = sorted({d for d in _DELAYS_US if d <= delay_cap} | {current.queue_delay_us})
    if gpus:
        counts = sorted({1, 2, current.instances})
    else:
        cores = os.cpu_count() or 1
        counts = sorted({c for c in (1, 2, 4) if c <= max(1, cores)} | {current.instances})
    return TuneSpace(tuple(batches), tuple(delays), tuple(counts), gpus)


def _neighbours(best: ServingKnobs, space: TuneSpace, dimension: str) -> Iterator[ServingKnobs]:
    values = {"instances": space.instance_counts, "max_batch_size": space.max_batch_sizes, "queue_delay_us": space.queue_delays_us}[dimension]
    for value in values:
        if getattr(best, dimension) != value:
            yield replace(best, **{dimension: int(value)})  # type: ignore[arg-type]


#: the order the knobs are searched in: instances change the most, the queue delay fine-tunes
DIMENSIONS = ("instances", "max_batch_size", "queue_delay_us")


def coordinate_descent(
    current: ServingKnobs,
    space: TuneSpace,
    evaluate: Callable[[ServingKnobs, int], Candidate],
    affordable: Callable[[], bool],
) -> tuple[list[Candidate], list[ServingKnobs]]:
    """Evaluate ``current``, then each knob's other values around the best so far, one knob at a time.

    ``evaluate(knobs, index)`` measures one candidate; ``affordable()`` says whether the
    budget still allows one more. Returns every candidate measured (``current`` first)
    and those the budget left out. The current configuration is always measured: it is
    the reference every other candidate is compared with.
    """
    best = evaluate(current, 0)
    candidates, skipped, seen = [best], [], {current}
    for dimension in DIMENSIONS:
        for knobs in list(_neighbours(best.knobs, space, dimension)):
            if knobs in seen:
                continue
            seen.add(knobs)
            if not affordable():
                skipped.append(knobs)
                continue
            cand = evaluate(knobs, len(candidates))
            candidates.append(cand)
            if cand.score() > best.score():
                best = cand
    return candidates, skipped


def best_of(candidates: list[Candidate]) -> Candidate | None:
    """The winner among the validly measured candidates; None when none was.

    An INVALID run, an error or a candidate that never loaded is no result, whatever
    figures it carries, so it can never be the best.
    """
    measured = [c for c in candidates if c.valid]
    return max(measured, key=Candidate.score) if measured else None
