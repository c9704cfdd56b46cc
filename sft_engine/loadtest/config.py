"""The configuration of one load test: endpoints, model, specs, output; and how it is assembled.

``LoadTestConfig`` is the only form ``run_loadtest`` accepts. Build it in code, or with
``LoadTestConfig.from_scenario(scenario, **overrides)``: the scenario file first, the
overrides (command-line flags, a tuner's values) on top, with the defaults that only
make sense for a merged run (a window no longer than the run, the metrics URL next to
Triton's default ports) applied in that one place.

Endpoints are checked here too: non-loopback hosts are refused unless asked for.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

from sft_engine.errors import ConfigError
from sft_engine.loadtest.scenario import Scenario, parse_target
from sft_engine.loadtest.spec import DEFAULT_PERCENTILES, CapacitySpec, LoadSpec, SloSpec, SoakSpec, ValiditySpec, percentile_label
from sft_engine.settings import strict_updates
from sft_engine.triton.address import DEFAULT_METRICS_PORT, DEFAULT_PORTS, Address, Protocol, parse_address
from sft_engine.triton.security import GrpcTls

__all__ = [
    "Endpoint",
    "LoadTestConfig",
    "parse_endpoint",
    "default_workers",
    "default_metrics_url",
    "resolve_endpoints",
    "parse_shape",
]



def default_workers() -> int:
    """Half the cores (at least 1, at most 8): the other half serves or runs the OS."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


# -- endpoints ------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint(Address):
    """One Triton server to send to. ``metrics_url`` is its Prometheus ``/metrics``, if known."""

    metrics_url: str | None = None


def parse_endpoint(text: str, protocol: Protocol | None = None, allow_remote: bool = False) -> Endpoint:
    """``host:port``, ``grpc://host:port`` or ``http://host:port`` -> Endpoint (see ``parse_address``).

    Non-loopback hosts are refused unless ``allow_remote``: a load generator pointed
    at a random address by a typo is an attack, not a test.
    """
    address = parse_address(text, protocol, what="--url")
    if not allow_remote and not address.is_loopback:
        raise ConfigError(
            f"--url {text!r} is not a loopback address",
            hint="load tests target 127.0.0.1/::1/localhost by default; pass --allow-remote to load a remote server on purpose",
        )
    return Endpoint(host=address.host, port=address.port, protocol=address.protocol)


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
    #: a directory of image files sent round-robin to a model with one BYTES input (``<name>_image``)
    images: Path | None = None
    report: Path | None = None
    prometheus_port: int | None = None
    allow_remote: bool = False
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    scenario_path: Path | None = None
    #: "raw": the prebuilt request on grpc.aio/aiohttp; "tritonclient": tritonclient's aio clients
    transport: str = "raw"
    #: sent with the coordinator's control-plane calls (server statistics are restricted where the server has a key)
    admin_key: str | None = field(default=None, repr=False)
    #: gRPC over TLS (the hot path, the probes and the statistics alike)
    tls: GrpcTls | None = None
    #: a soak: one open-loop step of the soak's duration, judged on the growth of the server's processes and p99
    soak: SoakSpec | None = None

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
        if self.soak is not None:
            self.soak.validate()
            if self.load.mode != "open" or len(self.load.rates) != 1 or self.find_capacity:
                raise ConfigError("a soak runs one steady open-loop rate", hint="pass one --rate R with --soak (no sweep, no --find-capacity)")
            if self.load.duration_s != self.soak.duration_s:
                raise ConfigError(f"the soak lasts {self.soak.duration_s:g} s but the step {self.load.duration_s:g} s",
                                  hint="leave --duration out with --soak")
        if int(self.workers) != self.workers or not 1 <= self.workers <= 64:
            raise ConfigError(f"--workers must be in 1..64, got {self.workers}", hint="e.g. --workers 2")
        if self.prometheus_port is not None and not 0 <= self.prometheus_port <= 65535:
            raise ConfigError(f"--prometheus-port {self.prometheus_port} is not a TCP port", hint="use 1..65535, or 0 for a free one")
        for q in self.percentiles:
            if not 0 < q < 100:
                raise ConfigError(f"percentile {q} is not between 0 and 100", hint="e.g. 50, 99, 99.9")
        if self.tls is not None:
            if any(ep.protocol != "grpc" for ep in self.endpoints):
                raise ConfigError("TLS is for gRPC endpoints only (Triton serves HTTP without TLS)",
                                  hint="use grpc:// endpoints with --tls, or put a TLS gateway in front of HTTP")
            self.tls.validate()
        if self.transport not in ("raw", "tritonclient"):
            raise ConfigError(f"--transport {self.transport!r} is unknown", hint="use raw or tritonclient")
        if self.images is not None:
            if self.input_data is not None:
                raise ConfigError("--images and --input-data are both given", hint="send image files (--images) or arrays (--input-data), not both")
            if self.transport != "raw":
                raise ConfigError("--images sends prebuilt requests", hint="use --transport raw with --images")
            if not Path(self.images).is_dir():
                raise ConfigError(f"--images {self.images} is not a directory", hint="give a directory of PNG, JPEG or WebP files")
        if self.input_data is not None and not Path(self.input_data).is_file():
            raise ConfigError(f"--input-data {self.input_data} does not exist", hint="give an .npz file with one array per input")

    @classmethod
    def from_scenario(
        cls,
        scenario: Scenario | None,
        *,
        endpoints: Iterable[Endpoint],
        model: str | None = None,
        load: Mapping[str, Any] | None = None,
        targets: Iterable[str] = (),
        validity: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> "LoadTestConfig":
        """The scenario's settings with the overrides on top: how the CLI and ``tune`` both build a run.

        An override of None means "not given" (the scenario's value, or the default, stays).
        ``load`` overrides LoadSpec fields (``concurrency`` makes the run closed-loop,
        ``rates`` open-loop; not both); ``targets`` are ``KEY=VALUE`` SLO targets laid on the
        scenario's SLO (or on a ``slo`` override); ``validity`` overrides ValiditySpec fields;
        every other keyword is a field of LoadTestConfig (``workers``, ``find_capacity``,
        ``capacity``, ``report``, ...), so a new field needs no change here.

        Two defaults are applied only here, because they need the merged result: a window
        longer than a run that sets no window shrinks to the run (a 0.5 s run is one 0.5 s
        window), and an endpoint on Triton's default ports without a metrics URL gets the
        default metrics port beside it.
        """
        given = {k: v for k, v in (load or {}).items() if v is not None}
        if "concurrency" in given and "rates" in given:
            raise ConfigError("--concurrency and --rate are both given", hint="closed loop takes --concurrency, open loop --rate: pick one")
        if "concurrency" in given:
            given.setdefault("mode", "closed")
        if "rates" in given:
            given.setdefault("mode", "open")
        from_file = dict(scenario.load) if scenario else {}
        spec = replace(LoadSpec(), **strict_updates(LoadSpec(), {**from_file, **given}, "the load overrides"))
        if "window_s" not in given and "window_s" not in from_file:
            spec = spec.window_fitted()

        slo = overrides.pop("slo") if "slo" in overrides else (scenario.slo if scenario else None)
        for text in targets:
            slo = parse_target(text, slo)
        checks = scenario.validity if scenario else ValiditySpec()
        checks = replace(checks, **strict_updates(checks, {k: v for k, v in (validity or {}).items() if v is not None}, "the validity overrides"))

        model = model or (scenario.model if scenario else None)
        if not model:
            raise ConfigError("no model to load-test", hint="pass --model NAME (or set model = \"...\" in the scenario file)")
        rest = {k: v for k, v in overrides.items() if v is not None}
        if rest.get("capacity") is None:
            capacity = scenario.capacity if scenario else None
            rest["capacity"] = CapacitySpec() if capacity is None and rest.get("find_capacity") else capacity
        rest.setdefault("scenario_path", scenario.path if scenario else None)
        soak = rest.get("soak") or (scenario.soak if scenario else None)
        if soak is not None:  # the soak is the step: its duration, and windows enough for a fit but at most 3600
            rest["soak"] = soak
            window = spec.window_s if ("window_s" in given or "window_s" in from_file) else max(1.0, soak.duration_s / 360)
            spec = replace(spec, duration_s=soak.duration_s, window_s=window)
        fields_ = strict_updates(cls, rest, "LoadTestConfig.from_scenario", exclude=("endpoints", "model", "load", "validity"))
        resolved = tuple(ep if ep.metrics_url else replace(ep, metrics_url=default_metrics_url(ep)) for ep in endpoints)
        return cls(endpoints=resolved, model=model, load=spec, slo=slo, validity=checks, **fields_)

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
        out = conv(self)
        out["admin_key"] = "set" if self.admin_key else None  # never the key itself: reports are shared
        return out


def default_metrics_url(endpoint: Endpoint) -> str | None:
    """Triton's metrics URL beside an endpoint on its default ports; None elsewhere (unknown)."""
    if endpoint.port in DEFAULT_PORTS.values():
        return f"http://{endpoint.url.rsplit(':', 1)[0]}:{DEFAULT_METRICS_PORT}/metrics"
    return None


def resolve_endpoints(
    urls: Iterable[str], protocol: Protocol | None = None, metrics_urls: Iterable[str] = (), allow_remote: bool = False
) -> tuple[Endpoint, ...]:
    """``--url`` (default: loopback on Triton's port) and ``--metrics-url`` values -> endpoints.

    Metrics URLs are one per endpoint, in the same order, or none (then the default beside
    Triton's ports applies in ``from_scenario``): each server's counters are summed, so one
    URL for two servers would count one of them twice.
    """
    urls = list(urls) or [f"127.0.0.1:{DEFAULT_PORTS[protocol or 'grpc']}"]
    endpoints = [parse_endpoint(u, protocol, allow_remote) for u in urls]
    metrics = list(metrics_urls)
    if metrics and len(metrics) != len(endpoints):
        raise ConfigError(f"{len(metrics)} --metrics-url for {len(endpoints)} --url", hint="give one per --url, in the same order")
    for url in metrics:
        _check_metrics_url(url, allow_remote)
    return tuple(replace(ep, metrics_url=m) for ep, m in zip(endpoints, metrics)) if metrics else tuple(endpoints)


def _check_metrics_url(url: str, allow_remote: bool) -> None:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.scheme != "http" or not parsed.hostname:
        raise ConfigError(f"--metrics-url {url!r} is not an http:// URL", hint="e.g. http://127.0.0.1:8002/metrics")
    parse_endpoint(f"{parsed.hostname}:{parsed.port or 80}", "http", allow_remote)


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME:D1,D2`` (a ``--shape``) -> the input's name and its shape without the batch dimension."""
    if ":" not in text:
        raise ConfigError(f"--shape {text!r} is not NAME:D1,D2", hint="e.g. --shape INPUT0:3,224,224")
    name, dims = text.rsplit(":", 1)
    try:
        shape = tuple(int(d) for d in dims.split(",") if d.strip())
    except ValueError:
        raise ConfigError(f"--shape {text!r} has a non-integer dimension", hint="e.g. --shape INPUT0:3,224,224") from None
    return name.strip(), shape
