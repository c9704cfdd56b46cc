"""The results of a load test: typed, JSON-able, with a versioned schema.

``LoadTestResult.to_dict()`` *is* the JSON report; its schema is documented in
docs/loadtest.md and versioned by ``SCHEMA_VERSION``: fields are only ever added
within a version; renaming or removing one bumps it. Other code (a tuner, a rollout
gate) reads these objects directly instead of parsing text.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from sft_engine.loadtest.histogram import LatencyHistogram, LatencySummary
from sft_engine.loadtest.server_stats import Reconciliation, ServerWindow

__all__ = [
    "SCHEMA_VERSION", "PASS", "FAIL", "INVALID", "MEASURED", "EXIT_CODES",
    "RequestCounts", "WindowResult", "Stability", "GeneratorCheck", "Validity", "TargetOutcome", "SloOutcome",
    "ErrorWindow", "error_window_of", "StepResult", "CapacityResult", "LoadTestResult", "clean_json",
]

SCHEMA_VERSION = 1

PASS, FAIL, INVALID, MEASURED = "PASS", "FAIL", "INVALID", "MEASURED"
#: verdict -> process exit code (MEASURED: a valid run without an SLO)
EXIT_CODES = {PASS: 0, MEASURED: 0, FAIL: 1, INVALID: 2}


@dataclass
class RequestCounts:
    """Requests whose intended send time fell in the measured interval, by outcome."""

    scheduled: int = 0
    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    #: successful answers *received* in the measured interval (the throughput numerator)
    succeeded_in_interval: int = 0


@dataclass
class WindowResult:
    index: int
    start_s: float  # from the start of the measured interval
    end_s: float
    scheduled: int
    sent: int
    succeeded_in_window: int
    failed: int
    errors: dict[str, int]
    throughput_rps: float
    latency_ms: LatencySummary
    server: ServerWindow | None = None


@dataclass
class ErrorWindow:
    """When a step's requests failed: from the start of the first window with a failure to the end of the last."""

    start_s: float  # from the start of the measured interval
    end_s: float
    failed: int


def error_window_of(windows: list[WindowResult]) -> ErrorWindow | None:
    """The span of the windows that saw failures (None when none did): a fault's outage, seen by the client."""
    hit = [w for w in windows if w.failed]
    if not hit:
        return None
    return ErrorWindow(start_s=hit[0].start_s, end_s=hit[-1].end_s, failed=sum(w.failed for w in hit))


@dataclass
class Stability:
    """Is the gated percentile still climbing? Judged on thirds of the measured interval."""

    percentile: float
    judged: bool
    stable: bool | None
    values_ms: list[float | None] = field(default_factory=list)
    reason: str = ""


@dataclass
class GeneratorCheck:
    """Self-check of the load generator: was it ever the bottleneck?"""

    workers: int
    #: per worker: CPU seconds / wall seconds over the measured interval (1.0 = one core busy)
    worker_cpu: list[float]
    coordinator_cpu: float | None
    host_cpu_busy: float | None
    host_cpus: int
    load_average: list[float] | None
    send_lag_ms: LatencySummary
    send_lag_tolerance_ms: float
    saturated: bool
    in_flight_cap_waits: int = 0
    max_in_flight: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class Validity:
    valid: bool = True
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class TargetOutcome:
    name: str
    limit: float
    measured: float | None
    comparison: str  # "<=" or ">="
    passed: bool


@dataclass
class SloOutcome:
    verdict: str
    targets: list[TargetOutcome] = field(default_factory=list)


@dataclass
class StepResult:
    index: int
    mode: str
    concurrency: int | None
    rate_rps: float | None
    arrival: str | None
    batch_size: int
    duration_s: float
    warmup_s: float
    window_s: float
    #: "intended" (open loop) or "sent" (closed loop): where latency is measured from
    latency_basis: str
    requests: RequestCounts
    offered_rps: float
    sent_rps: float
    throughput_rps: float
    inferences_per_s: float
    error_rate: float | None
    latency_ms: LatencySummary
    service_time_ms: LatencySummary
    send_lag_ms: LatencySummary
    windows: list[WindowResult]
    stability: Stability
    server: ServerWindow | None
    reconciliation: Reconciliation | None
    generator: GeneratorCheck
    endpoints: list[dict[str, Any]]
    error_examples: dict[str, str]
    validity: Validity
    slo: SloOutcome | None
    verdict: str
    aborted: str | None = None
    #: compressed HdrHistogram V2 (base64), values in microseconds
    histograms: dict[str, str] = field(default_factory=dict)
    #: when the failures happened (None: no request failed)
    error_window: ErrorWindow | None = None

    @property
    def top_error(self) -> tuple[str, int, str] | None:
        """The most frequent failure: (kind, count, an example of its message), or None."""
        if not self.requests.errors:
            return None
        kind, count = max(self.requests.errors.items(), key=lambda kv: (kv[1], kv[0]))
        return kind, count, " ".join(self.error_examples.get(kind, "").split())

    @property
    def label(self) -> str:
        if self.mode == "closed":
            return f"closed c={self.concurrency}"
        return f"open {self.rate_rps:g}/s {self.arrival}"

    def histogram(self, which: str = "latency") -> LatencyHistogram:
        """The merged HDR histogram (``latency``, ``service_time`` or ``send_lag``), in microseconds."""
        return LatencyHistogram.decode(self.histograms[which])

    def latency_percentile_ms(self, q: float) -> float | None:
        value = self.latency_ms.get(q)
        if value is None and self.histograms.get("latency"):
            hist = self.histogram("latency")
            return hist.percentile_us(q) / 1000.0 if hist.count else None
        return value


@dataclass
class CapacityResult:
    """``--find-capacity``: the highest open-loop rate meeting the SLO, and the knee."""

    capacity_rps: float | None
    knee_rps: float | None
    bracket_rps: list[float | None]
    converged: bool
    limited_by: str | None
    criteria: list[str]
    probe_throughput_rps: float | None = None
    steps: list[int] = field(default_factory=list)
    #: (offered rate, passed) of every search step, in the order run
    trail: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class LoadTestResult:
    schema_version: int
    tool: dict[str, str]
    started_at: str
    finished_at: str
    verdict: str
    exit_code: int
    reasons: list[str]
    config: dict[str, Any]
    model: dict[str, Any]
    request: dict[str, Any]
    steps: list[StepResult]
    capacity: CapacityResult | None = None
    report_files: dict[str, str] = field(default_factory=dict)
    #: ``--soak``: sft_engine.loadtest.soak.SoakReport (the fitted series and the rule)
    soak: Any = None

    @property
    def passed(self) -> bool:
        return self.verdict in (PASS, MEASURED)

    def to_dict(self) -> dict[str, Any]:
        return clean_json(asdict(self))


def clean_json(value: Any) -> Any:
    """NaN/inf -> None and float keys -> strings: strict JSON that every parser reads."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value
