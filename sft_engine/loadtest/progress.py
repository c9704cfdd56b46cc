"""Live figures while a step runs: a snapshot type, a terminal renderer, a Prometheus exporter.

Workers publish their counters into shared memory every 250 ms; the coordinator
folds them into one ``Progress`` and hands it to whoever listens - the terminal line
of the CLI, the optional Prometheus endpoint, or a test that wants to act at a given
moment of a run (e.g. trigger a stall while the step is measuring).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = ["Progress", "TerminalProgress", "LiveExporter"]

LOGGER = logging.getLogger(__name__)


@dataclass
class Progress:
    step: int
    label: str
    #: starting, warmup, measure, drain, done
    phase: str
    phase_elapsed_s: float
    phase_total_s: float
    sent: int
    succeeded: int
    failed: int
    in_flight: int
    throughput_rps: float | None
    recent_p50_ms: float | None
    recent_p99_ms: float | None
    send_lag_p99_ms: float | None
    steps_planned: int | None = None
    #: the most frequent error message so far (kind and example), when any request failed
    top_error: str | None = None


class TerminalProgress:
    """One self-overwriting status line on a TTY; on a pipe, one line per phase change."""

    def __init__(self, stream: TextIO, tty: bool | None = None, quiet: bool = False) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.quiet = quiet
        self._last_phase: tuple[int, str] | None = None
        self._width = 0

    def __call__(self, p: Progress) -> None:
        if self.quiet:
            return
        line = self.format(p)
        if self.tty:
            pad = max(0, self._width - len(line))
            self._width = len(line)
            self.stream.write("\r" + line + " " * pad)
            if p.phase == "done":
                self.stream.write("\n")
            self.stream.flush()
        elif (p.step, p.phase) != self._last_phase and p.phase in ("measure", "done"):
            self.stream.write(line + "\n")
            self.stream.flush()
        self._last_phase = (p.step, p.phase)

    @staticmethod
    def format(p: Progress) -> str:
        of = f"/{p.steps_planned}" if p.steps_planned else ""
        parts = [f"[step {p.step + 1}{of} {p.label}] {p.phase} {p.phase_elapsed_s:4.1f}/{p.phase_total_s:.0f}s"]
        parts.append(f"sent {p.sent}  ok {p.succeeded}  err {p.failed}  in-flight {p.in_flight}")
        if p.throughput_rps is not None:
            parts.append(f"{p.throughput_rps:,.0f} req/s")
        if p.recent_p50_ms is not None:
            parts.append(f"p50 {p.recent_p50_ms:.2f} ms  p99 {p.recent_p99_ms:.2f} ms")
        if p.send_lag_p99_ms is not None:
            parts.append(f"lag p99 {p.send_lag_p99_ms:.2f} ms")
        if p.failed and p.top_error:
            parts.append(f"top error: {p.top_error[:100]}")
        return "  ".join(parts)


class LiveExporter:
    """Serves the live client-side figures on ``http://127.0.0.1:PORT/metrics`` (Prometheus text).

    Bound to loopback only; port 0 picks a free one (``self.port`` tells which).
    """

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        self.registry = CollectorRegistry(auto_describe=True)
        self._latest: Progress | None = None
        self.registry.register(_ProgressCollector(self))
        started = start_http_server(port, addr=host, registry=self.registry)
        self._server = started[0] if isinstance(started, tuple) else None
        self._thread = started[1] if isinstance(started, tuple) else None
        self.port = self._server.server_port if self._server is not None else port
        LOGGER.info("live load-test metrics on http://%s:%d/metrics", host, self.port)

    def update(self, progress: Progress) -> None:
        self._latest = progress

    @property
    def latest(self) -> Progress | None:
        return self._latest

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2.0)


class _ProgressCollector:
    def __init__(self, exporter: LiveExporter) -> None:
        self.exporter = exporter

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        p = self.exporter.latest
        if p is None:
            return
        requests = CounterMetricFamily("sft_loadtest_requests", "Requests of the current step, by outcome", labels=["outcome"])
        requests.add_metric(["succeeded"], p.succeeded)
        requests.add_metric(["failed"], p.failed)
        yield requests
        gauges = {
            "sft_loadtest_step": ("Index of the running step", p.step),
            "sft_loadtest_in_flight": ("Requests sent and not yet answered", p.in_flight),
            "sft_loadtest_sent": ("Requests sent in the current step", p.sent),
            "sft_loadtest_throughput_rps": ("Successful answers per second, last interval", p.throughput_rps),
            "sft_loadtest_latency_p50_seconds": ("p50 latency over the last second", None if p.recent_p50_ms is None else p.recent_p50_ms / 1000.0),
            "sft_loadtest_latency_p99_seconds": ("p99 latency over the last second", None if p.recent_p99_ms is None else p.recent_p99_ms / 1000.0),
            "sft_loadtest_send_lag_p99_seconds": ("p99 send lag over the last second", None if p.send_lag_p99_ms is None else p.send_lag_p99_ms / 1000.0),
        }
        for name, (doc, value) in gauges.items():
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=float(value))
        phase = GaugeMetricFamily("sft_loadtest_phase", "1 for the current phase", labels=["phase"])
        for name in ("warmup", "measure", "drain"):
            phase.add_metric([name], 1.0 if p.phase == name else 0.0)
        yield phase
