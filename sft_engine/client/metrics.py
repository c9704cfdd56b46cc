"""Optional client-side latency histogram (prometheus-client).

Why on the client: the server's metrics measure queue and compute time inside
Triton; what a service team feels also includes serialization, the network and
preprocessing. One histogram, labelled by model, protocol and call (``infer`` per
request sent, ``classify`` per call including preprocessing), plus an error counter
labelled by error class. Metric objects are shared per registry, because
prometheus-client refuses to register the same metric name twice.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

__all__ = ["ClientMetrics", "resolve_metrics", "DEFAULT_BUCKETS"]

#: seconds; from sub-millisecond loopback calls to multi-second batches
DEFAULT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

_LOCK = threading.Lock()
_BY_REGISTRY: "weakref.WeakKeyDictionary[Any, ClientMetrics]" = weakref.WeakKeyDictionary()


class ClientMetrics:
    """The client's Prometheus metrics in one registry (the default one when ``registry`` is None)."""

    def __init__(self, registry: Any = None, namespace: str = "sft_engine_client", buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        from prometheus_client import REGISTRY, Counter, Histogram

        self.registry = REGISTRY if registry is None else registry
        self.latency = Histogram(f"{namespace}_request_seconds", "Client-side latency of sft-engine client calls",
                                 ("model", "protocol", "call"), buckets=buckets, registry=self.registry)
        self.errors = Counter(f"{namespace}_errors", "Failed sft-engine client calls, by error class",
                              ("model", "protocol", "call", "error"), registry=self.registry)

    @classmethod
    def for_registry(cls, registry: Any = None) -> "ClientMetrics":
        """The one ClientMetrics of ``registry`` (created on first use)."""
        from prometheus_client import REGISTRY

        registry = REGISTRY if registry is None else registry
        with _LOCK:
            found = _BY_REGISTRY.get(registry)
            if found is None:
                found = _BY_REGISTRY[registry] = cls(registry)
            return found

    def observe(self, model: str, protocol: str, call: str, seconds: float) -> None:
        self.latency.labels(model, protocol, call).observe(seconds)

    def failed(self, model: str, protocol: str, call: str, error: BaseException) -> None:
        self.errors.labels(model, protocol, call, type(error).__name__).inc()


def resolve_metrics(metrics: Any) -> ClientMetrics | None:
    """A client's ``metrics`` argument: None/False (off), True (default registry), a registry, or a ClientMetrics."""
    if metrics is None or metrics is False:
        return None
    if isinstance(metrics, ClientMetrics):
        return metrics
    if metrics is True:
        return ClientMetrics.for_registry(None)
    if hasattr(metrics, "register") and hasattr(metrics, "collect"):
        return ClientMetrics.for_registry(metrics)
    from sft_engine.errors import ConfigError

    raise ConfigError(f"metrics must be True, a prometheus CollectorRegistry or a ClientMetrics, got {type(metrics).__name__}",
                      hint="e.g. metrics=True for the default registry")
