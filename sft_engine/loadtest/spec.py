"""The typed specs of a load test: the load to apply, the SLO, validity rules, the capacity search.

Each spec validates itself (``validate()``) so a bad value fails with a one-line
message naming the flag or key before any server is contacted. The scenario files
that fill them are read in ``scenario``; ``config.LoadTestConfig`` puts them together
with the endpoints and the model.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from sft_engine.errors import ConfigError

__all__ = [
    "LoadSpec",
    "SloSpec",
    "ValiditySpec",
    "CapacitySpec",
    "SoakSpec",
    "parse_duration",
    "parse_number",
    "parse_number_list",
    "parse_percentile_key",
    "percentile_label",
    "DEFAULT_PERCENTILES",
]

Mode = Literal["closed", "open"]
Arrival = Literal["constant", "poisson"]

#: percentiles every report shows, whatever the SLO gates on
DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0, 99.9)


# -- small parsers --------------------------------------------------------------------
def parse_number_list(
    text: str | int | float | list[Any], what: str, integer: bool = False, allow_zero: bool = False
) -> tuple[float, ...]:
    """``"100"``, ``"1,2,4,8"``, ``"100:500:100"`` (start:stop:step, inclusive) or a TOML list.

    Values are > 0 (rates, concurrencies, batch sizes), or >= 0 with ``allow_zero``
    (a queue delay of 0 is a setting, not a mistake).
    """
    items: list[float] = []
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        items = [float(text)]
    elif isinstance(text, list):
        for item in text:
            items.extend(parse_number_list(item, what, integer, allow_zero))
    elif isinstance(text, str):
        for part in (p.strip() for p in text.split(",")):
            if not part:
                raise ConfigError(f"{what} {text!r} has an empty entry", hint="e.g. 1,2,4,8 or 100:500:100")
            if ":" in part:
                pieces = part.split(":")
                if len(pieces) != 3:
                    raise ConfigError(f"{what} range {part!r} is not start:stop:step", hint="e.g. 100:500:100")
                start, stop, step = (parse_number(p, what) for p in pieces)
                if step <= 0 or stop < start:
                    raise ConfigError(f"{what} range {part!r} is empty or has a step <= 0", hint="e.g. 100:500:100")
                count = int(math.floor((stop - start) / step + 1e-9)) + 1
                if count > 1000:
                    raise ConfigError(f"{what} range {part!r} has {count} steps", hint="use at most 1000 steps")
                items.extend(start + i * step for i in range(count))
            else:
                items.append(parse_number(part, what))
    else:
        raise ConfigError(f"{what} must be a number, a list or a string, not {type(text).__name__}", hint="e.g. 100 or [100, 200]")
    for value in items:
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            bound, hint = (">= 0", f"give {what} values >= 0") if allow_zero else ("> 0", f"give a positive {what}")
            raise ConfigError(f"{what} must be {bound}, got {value:g}", hint=hint)
        if integer and value != int(value):
            raise ConfigError(f"{what} must be a whole number, got {value:g}", hint="e.g. 1,2,4,8")
    if not items:
        raise ConfigError(f"{what} is empty", hint="give at least one value")
    return tuple(float(v) for v in items)


def parse_number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a number", hint="e.g. 100 or 1,2,4") from None


_PCT_KEY = re.compile(r"^p(\d+)(?:[._](\d+))?_ms$")


def parse_percentile_key(key: str) -> float | None:
    """``p99_ms`` -> 99, ``p99_9_ms``/``p99.9_ms``/``p999_ms`` -> 99.9; None if not a percentile key."""
    match = _PCT_KEY.match(key)
    if not match:
        return None
    whole, frac = match.group(1), match.group(2)
    if frac is not None:
        value = float(f"{whole}.{frac}")
    elif int(whole) <= 100:
        value = float(whole)
    else:  # p999 = 99.9, p9999 = 99.99: the usual shorthand
        value = float(f"{whole[:2]}.{whole[2:]}")
    if not 0 < value < 100:
        raise ConfigError(f"{key}: percentile {value:g} is not between 0 and 100", hint="e.g. p50_ms, p99_ms, p99_9_ms")
    return value


def percentile_label(q: float) -> str:
    """99.0 -> ``p99``, 99.9 -> ``p99.9`` (the keys of every report)."""
    return f"p{q:g}"


# -- specs ----------------------------------------------------------------------------
@dataclass
class LoadSpec:
    """The load to apply: closed loop at fixed concurrency or open loop at a rate.

    A tuple of several concurrencies or rates is a sweep: one step each, in order.
    """

    mode: Mode = "closed"
    concurrency: tuple[int, ...] = (1,)
    rates: tuple[float, ...] = ()
    arrival: Arrival = "constant"
    duration_s: float = 10.0
    warmup_s: float = 2.0
    window_s: float = 1.0
    batch_size: int = 1
    timeout_ms: float | None = None
    #: per worker; beyond it an open-loop send waits (and the wait counts in latency)
    max_in_flight: int = 4096
    seed: int = 0

    def validate(self) -> None:
        if self.mode not in ("closed", "open"):
            raise ConfigError(f"load mode {self.mode!r} is unknown", hint="use 'closed' (concurrency) or 'open' (rate)")
        if self.arrival not in ("constant", "poisson"):
            raise ConfigError(f"--arrival {self.arrival!r} is unknown", hint="use constant or poisson")
        if self.mode == "closed":
            if not self.concurrency:
                raise ConfigError("closed loop needs a concurrency", hint="pass --concurrency N")
            for c in self.concurrency:
                if int(c) != c or c < 1 or c > 100_000:
                    raise ConfigError(f"--concurrency {c} is not a whole number in 1..100000", hint="e.g. --concurrency 4 or 1,2,4,8")
        else:
            if not self.rates:
                raise ConfigError("open loop needs a rate", hint="pass --rate R (requests/s)")
            for r in self.rates:
                if not math.isfinite(r) or r <= 0:
                    raise ConfigError(f"--rate must be > 0, got {r:g}", hint="give requests per second, e.g. --rate 200")
        _positive(self.duration_s, "--duration")
        if not math.isfinite(self.warmup_s) or self.warmup_s < 0:
            raise ConfigError(f"--warmup must be >= 0, got {self.warmup_s:g}", hint="e.g. --warmup 2")
        _positive(self.window_s, "--window")
        if self.window_s > self.duration_s:
            raise ConfigError(f"--window {self.window_s:g} s is longer than --duration {self.duration_s:g} s", hint="use a window of at most the duration")
        if self.duration_s / self.window_s > 3600:
            raise ConfigError("more than 3600 measurement windows", hint="raise --window")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise ConfigError(f"--batch-size must be a whole number >= 1, got {self.batch_size}", hint="e.g. --batch-size 8")
        if self.timeout_ms is not None:
            _positive(self.timeout_ms, "--timeout-ms")
        if self.max_in_flight < 1:
            raise ConfigError(f"--max-in-flight must be >= 1, got {self.max_in_flight}", hint="e.g. 4096")

    def window_fitted(self) -> "LoadSpec":
        """This spec with a window no longer than the run: for runs that set no window, a
        0.5 s run is one 0.5 s window rather than an error about the 1 s default."""
        if 0 < self.duration_s < self.window_s:
            return replace(self, window_s=self.duration_s)
        return self

    @property
    def levels(self) -> tuple[float, ...]:
        """The swept values: concurrencies (closed) or rates (open)."""
        return tuple(float(c) for c in self.concurrency) if self.mode == "closed" else self.rates


def _positive(value: float, name: str) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}", hint=f"give a positive {name}")


@dataclass
class SloSpec:
    """Service-level targets. Latency limits are per percentile, in milliseconds."""

    latency_ms: dict[float, float] = field(default_factory=dict)
    min_throughput: float | None = None
    max_error_rate: float | None = None
    #: fail a step whose gated percentile still climbs across the run (open loop over capacity)
    require_stable: bool = True
    #: "climbing" = last third above (1 + tolerance) x first third, and rising throughout
    stability_tolerance: float = 1.0

    def validate(self) -> None:
        for q, limit in self.latency_ms.items():
            if not 0 < q < 100:
                raise ConfigError(f"SLO percentile {q:g} is not between 0 and 100", hint="e.g. p99_ms = 50")
            _positive(limit, f"{percentile_label(q)}_ms")
        if self.min_throughput is not None:
            _positive(self.min_throughput, "min_throughput")
        if self.max_error_rate is not None and not 0 <= self.max_error_rate <= 1:
            raise ConfigError(f"max_error_rate must be in [0, 1], got {self.max_error_rate}", hint="e.g. 0.001 for 0.1%")
        if self.stability_tolerance <= 0:
            raise ConfigError("stability_tolerance must be > 0", hint="e.g. 1.0 (a doubling)")
        if self.is_empty:
            raise ConfigError("the SLO has no targets", hint="set at least one of p<N>_ms, min_throughput, max_error_rate")

    @property
    def is_empty(self) -> bool:
        return not self.latency_ms and self.min_throughput is None and self.max_error_rate is None

    @property
    def gated_percentile(self) -> float | None:
        """The highest percentile with a limit: it needs the most samples, so it gates validity."""
        return max(self.latency_ms) if self.latency_ms else None


@dataclass
class ValiditySpec:
    """When a run's numbers are not to be trusted, whatever they say."""

    #: send lag p99 above this = the generator could not keep its schedule
    max_send_lag_p99_ms: float = 10.0
    #: a percentile q needs ceil(min_tail_samples / (1 - q/100)) samples
    min_tail_samples: int = 10
    #: an endpoint refusing connections this long, with no success, aborts the run
    unreachable_after_s: float = 1.0

    def validate(self) -> None:
        _positive(self.max_send_lag_p99_ms, "max_send_lag_p99_ms")
        if int(self.min_tail_samples) != self.min_tail_samples or self.min_tail_samples < 1:
            raise ConfigError(f"min_tail_samples must be a whole number >= 1, got {self.min_tail_samples}", hint="e.g. 10")
        _positive(self.unreachable_after_s, "unreachable_after_s")

    def min_samples(self, percentile: float) -> int:
        return int(math.ceil(round(self.min_tail_samples / (1.0 - percentile / 100.0), 6)))


@dataclass
class CapacitySpec:
    """How ``--find-capacity`` searches: bisection on the open-loop rate."""

    min_rate: float | None = None
    max_rate: float | None = None
    #: stop when the bracket is narrower than this fraction of its upper end
    tolerance: float = 0.05
    max_steps: int = 8
    #: a rate counts as sustained when achieved throughput >= this x offered
    sustain_ratio: float = 0.95
    #: concurrency of the closed-loop probe that finds the upper bracket when max_rate is not given
    probe_concurrency: int = 8

    def validate(self) -> None:
        for name in ("min_rate", "max_rate"):
            value = getattr(self, name)
            if value is not None:
                _positive(value, name)
        if self.min_rate is not None and self.max_rate is not None and self.min_rate >= self.max_rate:
            raise ConfigError(f"capacity min_rate {self.min_rate:g} is not below max_rate {self.max_rate:g}", hint="widen the bracket")
        if not 0 < self.tolerance < 1:
            raise ConfigError(f"capacity tolerance must be in (0, 1), got {self.tolerance}", hint="e.g. 0.05")
        if self.max_steps < 2:
            raise ConfigError("capacity max_steps must be >= 2", hint="e.g. 8")
        if not 0 < self.sustain_ratio <= 1:
            raise ConfigError("capacity sustain_ratio must be in (0, 1]", hint="e.g. 0.95")
        if self.probe_concurrency < 1:
            raise ConfigError("capacity probe_concurrency must be >= 1", hint="e.g. 8")


@dataclass
class SoakSpec:
    """A soak (``--soak DURATION`` or ``[soak]``): one open-loop step of ``duration_s``, judged on growth (``soak.py``)."""

    duration_s: float = 1800.0
    #: seconds between samples of the server's and the stubs' RSS, fds and threads
    sample_s: float = 5.0
    #: the first part of the run that is not fitted (caches and arenas fill once)
    settle_fraction: float = 0.2
    #: a slope counts as real at this many standard errors above zero
    min_t: float = 3.0
    max_rss_growth_mb: float = 64.0
    max_rss_growth_ratio: float = 0.05
    max_fd_growth: float = 4.0
    max_thread_growth: float = 2.0
    max_p99_growth_ratio: float = 0.5

    def validate(self) -> None:
        _positive(self.duration_s, "--soak")
        _positive(self.sample_s, "soak sample_s")
        if self.sample_s * 6 > self.duration_s:
            raise ConfigError(f"a soak of {self.duration_s:g} s with samples every {self.sample_s:g} s has too few samples",
                              hint="soak for at least 6 samples (e.g. --soak 2m)")
        if not 0 <= self.settle_fraction < 0.8:
            raise ConfigError(f"soak settle_fraction must be in [0, 0.8), got {self.settle_fraction}", hint="e.g. 0.2")
        for name in ("min_t", "max_rss_growth_mb", "max_rss_growth_ratio", "max_fd_growth", "max_thread_growth", "max_p99_growth_ratio"):
            _positive(getattr(self, name), f"soak {name}")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")


def parse_duration(text: str | float, what: str = "--soak") -> float:
    """``90``, ``90s``, ``2m``, ``1.5h`` -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise ConfigError(f"{what} {text!r} is not a duration", hint="e.g. 120, 90s, 2m or 1.5h")
        seconds = float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
    _positive(seconds, what)
    return seconds
