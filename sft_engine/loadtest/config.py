"""Typed configuration of a load test, and the TOML scenario (SLO) files users edit.

A scenario file says *what load* to apply (``[load]``), *what must hold* (``[slo]``),
when a run is *not trustworthy* (``[validity]``) and how to *search for capacity*
(``[capacity]``). Command-line flags override the file, so
``sft-engine loadtest --slo loadtest/default.toml --url ... --model ...`` is a
complete run and ``--rate 400`` on top of it is a variation.

Every value is validated here, before any server is contacted: a typo in a key, a
rate of zero or an unreadable file must fail at once with a one-line message, not
after a minute of load.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Mapping

from sft_engine.errors import ConfigError
from sft_engine.settings import check_keys, load_toml, table, typed

__all__ = [
    "Endpoint",
    "LoadSpec",
    "SloSpec",
    "ValiditySpec",
    "CapacitySpec",
    "Scenario",
    "LoadTestConfig",
    "parse_endpoint",
    "parse_number_list",
    "parse_percentile_key",
    "percentile_label",
    "parse_target",
    "load_scenario",
    "default_workers",
    "DEFAULT_PERCENTILES",
]

Protocol = Literal["grpc", "http"]
Mode = Literal["closed", "open"]
Arrival = Literal["constant", "poisson"]

#: percentiles every report shows, whatever the SLO gates on
DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0, 99.9)
#: Triton's default ports, used when no ``--url`` is given
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def default_workers() -> int:
    """Half the cores (at least 1, at most 8): the other half serves or runs the OS."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


# -- endpoints ------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    """One Triton server to send to. ``metrics_url`` is its Prometheus ``/metrics``, if known."""

    host: str
    port: int
    protocol: Protocol
    metrics_url: str | None = None

    @property
    def url(self) -> str:
        """``host:port`` as tritonclient expects it (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return _is_loopback(self.host)


def _is_loopback(host: str) -> bool:
    """Literal loopback addresses and ``localhost`` only; names are never resolved.

    Resolving would make the check depend on DNS, and a name that resolves to
    loopback today may not tomorrow.
    """
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_endpoint(text: str, protocol: Protocol | None = None, allow_remote: bool = False) -> Endpoint:
    """``host:port``, ``grpc://host:port`` or ``http://host:port`` -> Endpoint.

    A scheme fixes the protocol; without one, ``protocol`` (default gRPC) applies.
    Non-loopback hosts are refused unless ``allow_remote``: a load generator pointed
    at a random address by a typo is an attack, not a test.
    """
    raw = text.strip()
    if not raw:
        raise ConfigError("empty --url", hint="give host:port, e.g. 127.0.0.1:8001")
    scheme = None
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$", raw)
    if match:
        scheme, raw = match.group(1).lower(), match.group(2)
        if scheme in ("https", "grpcs"):
            raise ConfigError(f"--url {text!r}: TLS endpoints are not supported", hint="use a plain http:// or grpc:// endpoint")
        if scheme not in ("http", "grpc"):
            raise ConfigError(f"--url {text!r}: unknown scheme {scheme!r}", hint="use http://host:port or grpc://host:port")
        if protocol is not None and protocol != scheme:
            raise ConfigError(f"--url {text!r} says {scheme} but --protocol is {protocol}", hint="drop the scheme or make them agree")
    proto: Protocol = scheme or protocol or "grpc"  # type: ignore[assignment]
    raw = raw.rstrip("/")
    if "/" in raw:
        raise ConfigError(f"--url {text!r} has a path", hint="give only host:port; the model is chosen with --model")
    host_port = re.match(r"^\[([0-9a-fA-F:.]+)\](?::(\d+))?$", raw) or re.match(r"^([^:]+)(?::(\d+))?$", raw)
    if not host_port:
        raise ConfigError(f"--url {text!r} is not host:port", hint="e.g. 127.0.0.1:8001 or [::1]:8001")
    host = host_port.group(1)
    port = int(host_port.group(2)) if host_port.group(2) else DEFAULT_PORTS[proto]
    if not 1 <= port <= 65535:
        raise ConfigError(f"--url {text!r}: port {port} is not a TCP port", hint="use 1..65535")
    if not allow_remote and not _is_loopback(host):
        raise ConfigError(
            f"--url {text!r} is not a loopback address",
            hint="load tests target 127.0.0.1/::1/localhost by default; pass --allow-remote to load a remote server on purpose",
        )
    return Endpoint(host=host, port=port, protocol=proto)


# -- small parsers --------------------------------------------------------------------
def parse_number_list(text: str | int | float | list[Any], what: str, integer: bool = False) -> tuple[float, ...]:
    """``"100"``, ``"1,2,4,8"``, ``"100:500:100"`` (start:stop:step, inclusive) or a TOML list."""
    items: list[float] = []
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        items = [float(text)]
    elif isinstance(text, list):
        for item in text:
            items.extend(parse_number_list(item, what, integer))
    elif isinstance(text, str):
        for part in (p.strip() for p in text.split(",")):
            if not part:
                raise ConfigError(f"{what} {text!r} has an empty entry", hint="e.g. 1,2,4,8 or 100:500:100")
            if ":" in part:
                pieces = part.split(":")
                if len(pieces) != 3:
                    raise ConfigError(f"{what} range {part!r} is not start:stop:step", hint="e.g. 100:500:100")
                start, stop, step = (_number(p, what) for p in pieces)
                if step <= 0 or stop < start:
                    raise ConfigError(f"{what} range {part!r} is empty or has a step <= 0", hint="e.g. 100:500:100")
                count = int(math.floor((stop - start) / step + 1e-9)) + 1
                if count > 1000:
                    raise ConfigError(f"{what} range {part!r} has {count} steps", hint="use at most 1000 steps")
                items.extend(start + i * step for i in range(count))
            else:
                items.append(_number(part, what))
    else:
        raise ConfigError(f"{what} must be a number, a list or a string, not {type(text).__name__}", hint="e.g. 100 or [100, 200]")
    for value in items:
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{what} must be > 0, got {value:g}", hint=f"give a positive {what}")
        if integer and value != int(value):
            raise ConfigError(f"{what} must be a whole number, got {value:g}", hint="e.g. 1,2,4,8")
    if not items:
        raise ConfigError(f"{what} is empty", hint="give at least one value")
    return tuple(float(v) for v in items)


def _number(text: str, what: str) -> float:
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
class Scenario:
    """A parsed scenario file: load overrides (only the keys it sets) and specs."""

    path: Path | None = None
    load: dict[str, Any] = field(default_factory=dict)
    slo: SloSpec | None = None
    validity: ValiditySpec = field(default_factory=ValiditySpec)
    capacity: CapacitySpec | None = None
    model: str | None = None
    description: str = ""


@dataclass
class LoadTestConfig:
    """Everything ``run_loadtest`` needs. Build it in code, or from flags + a scenario file."""

    endpoints: tuple[Endpoint, ...]
    model: str
    model_version: str = ""
    load: LoadSpec = field(default_factory=LoadSpec)
    slo: SloSpec | None = None
    validity: ValiditySpec = field(default_factory=ValiditySpec)
    capacity: CapacitySpec | None = None
    find_capacity: bool = False
    workers: int = field(default_factory=default_workers)
    #: shapes for inputs with variable dims (-1), without the batch dimension
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: .npz with one array per input name (with or without the batch dimension)
    input_data: Path | None = None
    report: Path | None = None
    prometheus_port: int | None = None
    allow_remote: bool = False
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    scenario_path: Path | None = None
    #: "raw": the prebuilt request on grpc.aio/aiohttp; "tritonclient": tritonclient's aio clients
    transport: str = "raw"

    def validate(self) -> None:
        if not self.endpoints:
            raise ConfigError("no endpoint to load", hint="pass --url host:port")
        if len(self.endpoints) > 64:
            raise ConfigError(f"{len(self.endpoints)} endpoints", hint="load at most 64 endpoints in one run")
        protocols = {ep.protocol for ep in self.endpoints}
        if len(protocols) > 1:
            raise ConfigError("the --url endpoints mix grpc and http", hint="load one protocol per run")
        for ep in self.endpoints:
            if not self.allow_remote and not ep.is_loopback:
                raise ConfigError(f"endpoint {ep.url} is not a loopback address", hint="pass --allow-remote to load a remote server on purpose")
        if not self.model or not re.match(r"^[A-Za-z0-9_.\-]+$", self.model):
            raise ConfigError(f"--model {self.model!r} is not a model name", hint="give the model's name in the repository")
        if self.model_version and not self.model_version.isdigit():
            raise ConfigError(f"--model-version {self.model_version!r} is not a version number", hint="e.g. --model-version 1, or leave it out for the latest")
        self.load.validate()
        if self.slo is not None:
            self.slo.validate()
        self.validity.validate()
        if self.find_capacity:
            if self.slo is None:
                raise ConfigError("--find-capacity needs an SLO", hint="pass --slo FILE or --target p99_ms=50: capacity is the highest rate that meets it")
            (self.capacity or CapacitySpec()).validate()
        if int(self.workers) != self.workers or not 1 <= self.workers <= 64:
            raise ConfigError(f"--workers must be in 1..64, got {self.workers}", hint="e.g. --workers 2")
        if self.prometheus_port is not None and not 0 <= self.prometheus_port <= 65535:
            raise ConfigError(f"--prometheus-port {self.prometheus_port} is not a TCP port", hint="use 1..65535, or 0 for a free one")
        for q in self.percentiles:
            if not 0 < q < 100:
                raise ConfigError(f"percentile {q} is not between 0 and 100", hint="e.g. 50, 99, 99.9")
        if self.transport not in ("raw", "tritonclient"):
            raise ConfigError(f"--transport {self.transport!r} is unknown", hint="use raw or tritonclient")
        if self.input_data is not None and not Path(self.input_data).is_file():
            raise ConfigError(f"--input-data {self.input_data} does not exist", hint="give an .npz file with one array per input")

    @property
    def report_percentiles(self) -> tuple[float, ...]:
        """The default percentiles plus every percentile the SLO gates on, sorted."""
        extra = tuple(self.slo.latency_ms) if self.slo else ()
        return tuple(sorted(set(self.percentiles) | set(extra)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able view (paths as strings, percentile keys as labels)."""
        def conv(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, tuple):
                return [conv(v) for v in value]
            if isinstance(value, dict):
                return {(percentile_label(k) + "_ms" if isinstance(k, float) else str(k)): conv(v) for k, v in value.items()}
            if hasattr(value, "__dataclass_fields__"):
                out = {f.name: conv(getattr(value, f.name)) for f in fields(value)}
                if isinstance(value, Endpoint):
                    out["url"] = value.url
                return out
            return value
        return conv(self)


# -- scenario files -------------------------------------------------------------------
_LOAD_KEYS = {
    "mode", "rate", "concurrency", "arrival", "duration_s", "warmup_s", "window_s",
    "batch_size", "timeout_ms", "max_in_flight", "seed",
}
_SLO_KEYS = {"min_throughput", "max_error_rate", "require_stable", "stability_tolerance"}
_VALIDITY_KEYS = {f.name for f in fields(ValiditySpec)}
_CAPACITY_KEYS = {f.name for f in fields(CapacitySpec)}
_TOP_KEYS = {"load", "slo", "validity", "capacity", "model", "description"}


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario (SLO) TOML file. Any problem is a ConfigError."""
    path = Path(path)
    data = load_toml(path, "SLO file", hint="fix the syntax; see loadtest/default.toml")
    return scenario_from_mapping(data, path)


def scenario_from_mapping(data: Mapping[str, Any], path: Path | None = None) -> Scenario:
    """Validate a scenario already parsed from TOML (or built in code)."""
    where = str(path) if path else "scenario"
    _check_keys(data, _TOP_KEYS, where)
    scenario = Scenario(path=path)
    if "model" in data:
        scenario.model = _typed(data["model"], str, f"{where}: model")
    scenario.description = str(data.get("description", ""))
    load = _table(data, "load", where)
    _check_keys(load, _LOAD_KEYS, f"{where} [load]")
    scenario.load = _parse_load_table(load, where)
    slo_table = _table(data, "slo", where)
    if slo_table:
        scenario.slo = _parse_slo_table(slo_table, where)
    validity = _table(data, "validity", where)
    _check_keys(validity, _VALIDITY_KEYS, f"{where} [validity]")
    scenario.validity = _build(ValiditySpec, validity, f"{where} [validity]")
    scenario.validity.validate()
    capacity = _table(data, "capacity", where)
    if capacity:
        _check_keys(capacity, _CAPACITY_KEYS, f"{where} [capacity]")
        scenario.capacity = _build(CapacitySpec, capacity, f"{where} [capacity]")
        scenario.capacity.validate()
    return scenario


def _parse_load_table(load: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "rate" in load:
        out["rates"] = parse_number_list(load["rate"], f"{where} [load] rate")
    if "concurrency" in load:
        out["concurrency"] = tuple(int(c) for c in parse_number_list(load["concurrency"], f"{where} [load] concurrency", integer=True))
    if "mode" in load:
        out["mode"] = _typed(load["mode"], str, f"{where} [load] mode")
        if out["mode"] not in ("open", "closed"):
            raise ConfigError(f"{where} [load] mode {out['mode']!r} is unknown", hint="use 'open' (rate) or 'closed' (concurrency)")
    elif "rates" in out and "concurrency" in out:
        raise ConfigError(f"{where} [load] sets both rate and concurrency", hint="add mode = 'open' or 'closed' to say which applies")
    elif "rates" in out:
        out["mode"] = "open"
    elif "concurrency" in out:
        out["mode"] = "closed"
    for key in ("duration_s", "warmup_s", "window_s", "timeout_ms"):
        if key in load:
            out[key] = float(_typed(load[key], (int, float), f"{where} [load] {key}"))
    for key in ("batch_size", "max_in_flight", "seed"):
        if key in load:
            out[key] = _typed(load[key], int, f"{where} [load] {key}")
    if "arrival" in load:
        out["arrival"] = _typed(load["arrival"], str, f"{where} [load] arrival")
    # validate now, on a LoadSpec built from defaults + this table, so errors name the file
    probe = replace(LoadSpec(), **out)
    if probe.mode == "open" and not probe.rates:
        raise ConfigError(f"{where} [load] mode is 'open' but no rate is set", hint="add rate = 100")
    try:
        probe.validate()
    except ConfigError as exc:
        raise ConfigError(f"{where} [load]: {exc.message}", hint=exc.hint) from None
    return out


def _parse_slo_table(table: Mapping[str, Any], where: str) -> SloSpec:
    slo = SloSpec()
    for key, value in table.items():
        q = parse_percentile_key(key)
        if q is not None:
            slo.latency_ms[q] = float(_typed(value, (int, float), f"{where} [slo] {key}"))
        elif key in ("min_throughput", "max_error_rate", "stability_tolerance"):
            setattr(slo, key, float(_typed(value, (int, float), f"{where} [slo] {key}")))
        elif key == "require_stable":
            slo.require_stable = _typed(value, bool, f"{where} [slo] {key}")
        else:
            raise ConfigError(
                f"{where} [slo] has an unknown key {key!r}",
                hint="use p<N>_ms (p50_ms, p99_ms, p99_9_ms), min_throughput, max_error_rate, require_stable, stability_tolerance",
            )
    try:
        slo.validate()
    except ConfigError as exc:
        raise ConfigError(f"{where} [slo]: {exc.message}", hint=exc.hint) from None
    return slo


def parse_target(text: str, slo: SloSpec | None = None) -> SloSpec:
    """One ``--target KEY=VALUE`` (e.g. ``p99_ms=50``) applied to a copy of ``slo``."""
    if "=" not in text:
        raise ConfigError(f"--target {text!r} is not KEY=VALUE", hint="e.g. --target p99_ms=50 or --target max_error_rate=0.001")
    key, value = (s.strip() for s in text.split("=", 1))
    base = replace(slo, latency_ms=dict(slo.latency_ms)) if slo else SloSpec()
    if key == "require_stable":
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"--target {text!r}: require_stable takes true or false", hint="e.g. --target require_stable=false")
        base.require_stable = value.lower() in ("true", "1", "yes")
        return base
    number = _number(value, f"--target {key}")
    q = parse_percentile_key(key)
    if q is not None:
        base.latency_ms[q] = number
    elif key in ("min_throughput", "max_error_rate", "stability_tolerance"):
        setattr(base, key, number)
    else:
        raise ConfigError(f"--target {key!r} is unknown", hint="use p<N>_ms, min_throughput, max_error_rate, require_stable")
    return base


_table = table
_check_keys = check_keys
_typed = typed


def _build(cls: type, table: Mapping[str, Any], where: str) -> Any:
    kwargs = {}
    defaults = cls()
    for key, value in table.items():
        expected = type(getattr(defaults, key))
        if expected in (float, type(None)):
            kwargs[key] = float(_typed(value, (int, float), f"{where} {key}"))
        elif expected is int:
            kwargs[key] = _typed(value, int, f"{where} {key}")
        else:
            kwargs[key] = _typed(value, expected, f"{where} {key}")
    return cls(**kwargs)
