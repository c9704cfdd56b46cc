"""A soak: hours of steady open-loop load, judged on growth, not on speed.

A leak shows as a slope, not as a level: memory, file descriptors or threads of
tritonserver or of a Python-backend stub that keep climbing under constant load, or a
p99 that drifts up. During the soak's one step a ``Sampler`` thread reads, every
``sample_s``, the RSS, open fds and threads of the server process that serves the
endpoint (found by its command line, or the only tritonserver on the host) and of
every process below it (the ``triton_python_backend_stub`` of each model instance),
with psutil when it is installed, else from ``/proc``. ``judge`` fits a least-squares
line to each series, and to the p99 of each measurement window.

**The rule.** The first ``settle_fraction`` of the run is not fitted (caches, allocator
arenas and lazily started threads fill once). A series fails when its growth is both
*real* - the slope is at least ``min_t`` standard errors above zero, so noise around
a level cannot fail it - and *material* - the fitted line rises, over the whole soak
duration, by more than the series' allowance: RSS ``max(max_rss_growth_mb, ratio x
mean)``, ``max_fd_growth`` descriptors, ``max_thread_growth`` threads, p99
``max_p99_growth_ratio x median p99``. A series with fewer than 6 fitted points is
not judged (and says so).
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from sft_engine.loadtest.spec import SoakSpec

__all__ = ["ProcessSample", "Sampler", "SeriesFit", "SoakReport", "find_server_pids", "read_process", "fit_line", "judge"]

LOGGER = logging.getLogger(__name__)
_MIN_POINTS = 6
_METRICS = ("rss_mb", "fds", "threads")


@dataclass(frozen=True)
class ProcessSample:
    rss_mb: float
    fds: int
    threads: int


def _cmdline(pid: int) -> list[str]:
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def find_server_pids(ports: Iterable[int]) -> list[int]:
    """The tritonserver processes serving one of ``ports`` (``--http-port=N``/``--grpc-port=N`` on
    their command line), else the only tritonserver on the host; [] when none is found (a remote server)."""
    servers = [pid for pid in _pids() if (cmd := _cmdline(pid)) and Path(cmd[0]).name == "tritonserver"]
    wanted = {f"--{kind}-port={port}" for port in ports for kind in ("http", "grpc")}
    matching = [pid for pid in servers if wanted & set(_cmdline(pid))]
    return matching or (servers if len(servers) == 1 else [])


def _descendants(root: int) -> list[int]:
    parents = {pid: _ppid(pid) for pid in _pids()}
    out, frontier = [], {root}
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        out.extend(children)
        frontier = set(children)
    return sorted(out)


def read_process(pid: int) -> ProcessSample | None:
    """RSS, open fds and threads of ``pid`` (psutil if installed, else /proc); None once it is gone."""
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        psutil = None
    try:
        if psutil is not None:
            proc = psutil.Process(pid)
            with proc.oneshot():
                return ProcessSample(proc.memory_info().rss / 2**20, proc.num_fds(), proc.num_threads())
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        return ProcessSample(int(status["VmRSS"].split()[0]) / 1024, len(os.listdir(f"/proc/{pid}/fd")), int(status["Threads"]))
    except Exception:  # noqa: BLE001 - a process that exits between listing and reading is simply gone
        return None


def _label(pid: int, server: int) -> str:
    """``tritonserver``, or ``stub <model>/<version>`` named by the model.py the stub runs."""
    if pid == server:
        return "tritonserver"
    cmd = _cmdline(pid)
    name = Path(cmd[0]).name if cmd else str(pid)
    model_py = next((Path(a) for a in cmd[1:] if a.endswith("model.py")), None)
    if model_py is not None:
        return f"stub {model_py.parent.parent.name}/{model_py.parent.name}"
    return name


class Sampler:
    """Samples the server and its stubs every ``interval_s`` in a thread, from ``start()`` to ``stop()``."""

    def __init__(self, ports: Sequence[int], interval_s: float) -> None:
        self.ports, self.interval_s = list(ports), interval_s
        self.t0 = 0.0
        #: label -> [(seconds since start, sample)]
        self.series: dict[str, list[tuple[float, ProcessSample]]] = {}
        self.server_pid: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, t0: float | None = None) -> "Sampler":
        pids = find_server_pids(self.ports)
        self.server_pid = pids[0] if pids else None
        if self.server_pid is None:
            LOGGER.warning("soak: no local tritonserver serves ports %s; only the latency is judged", self.ports)
            return self
        self.t0 = time.monotonic() if t0 is None else t0
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)
        self._thread.start()
        return self

    def sample_once(self) -> None:
        if self.server_pid is None:
            return
        now = time.monotonic() - self.t0
        seen: dict[str, int] = {}
        for pid in [self.server_pid] + _descendants(self.server_pid):
            sample = read_process(pid)
            if sample is None:
                continue
            label = _label(pid, self.server_pid)
            seen[label] = seen.get(label, 0) + 1
            if seen[label] > 1:  # several instances of one model: one series each
                label = f"{label} #{seen[label]}"
            self.series.setdefault(label, []).append((now, sample))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception:  # noqa: BLE001 - sampling must never end the soak
                LOGGER.exception("soak sampling failed")
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.sample_once()


# -- the fit and the verdict ------------------------------------------------------------------
@dataclass
class SeriesFit:
    name: str  # "tritonserver rss_mb", "stub demo/1 fds", "p99_ms"
    points: int
    first: float | None
    last: float | None
    mean: float | None
    #: per hour, from the least-squares line
    slope_per_h: float | None
    t_value: float | None
    #: the line's rise over the whole soak duration, and what it may rise
    growth: float | None
    allowed: float | None
    judged: bool
    passed: bool
    note: str = ""


@dataclass
class SoakReport:
    duration_s: float
    sample_s: float
    rule: str
    server_pid: int | None
    series: list[SeriesFit] = field(default_factory=list)
    passed: bool = True
    reasons: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"soak {self.duration_s:g} s: {'PASS' if self.passed else 'FAIL'} ({self.rule})"]
        for s in self.series:
            if not s.judged:
                out.append(f"  {s.name:<34} not judged: {s.note}")
                continue
            out.append(f"  {s.name:<34} {s.first:>9.2f} -> {s.last:>9.2f}  slope {s.slope_per_h:+.3g}/h  t {s.t_value:+.1f}  "
                       f"growth {s.growth:+.3g} (allowed {s.allowed:.3g})  {'ok' if s.passed else 'GROWS'}")
        return out


def fit_line(points: Sequence[tuple[float, float]]) -> tuple[float, float, float]:
    """(slope, intercept, standard error of the slope) of the least-squares line through ``points``."""
    n = len(points)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return 0.0, my, math.inf
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    residual = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys))
    se = math.sqrt(residual / (n - 2) / sxx) if n > 2 else math.inf
    return slope, intercept, se


def _judge_series(name: str, points: list[tuple[float, float]], spec: SoakSpec, allowance: Any) -> SeriesFit:
    fitted = [p for p in points if p[0] >= spec.settle_fraction * spec.duration_s]
    if len(fitted) < _MIN_POINTS:
        return SeriesFit(name, len(fitted), None, None, None, None, None, None, None, judged=False, passed=True,
                         note=f"{len(fitted)} points after the settling part (needs {_MIN_POINTS})")
    slope, _, se = fit_line(fitted)
    mean = statistics.fmean(p[1] for p in fitted)
    t_value = slope / se if se > 0 and math.isfinite(se) else (math.inf if slope > 0 else 0.0)
    growth = slope * spec.duration_s
    allowed = float(allowance(fitted, mean))
    passed = not (t_value >= spec.min_t and growth > allowed)
    return SeriesFit(name, len(fitted), round(fitted[0][1], 3), round(fitted[-1][1], 3), round(mean, 3), round(slope * 3600, 4),
                     round(t_value, 2) if math.isfinite(t_value) else None, round(growth, 4), round(allowed, 4), True, passed)


def judge(spec: SoakSpec, samples: dict[str, list[tuple[float, ProcessSample]]], p99_windows: Sequence[tuple[float, float | None]],
          server_pid: int | None) -> SoakReport:
    """Fit every series (process metrics and the windows' p99) and apply the rule of the module docstring."""
    rule = (f"fails on a slope >= {spec.min_t:g} standard errors whose rise over {spec.duration_s:g} s exceeds: "
            f"RSS max({spec.max_rss_growth_mb:g} MB, {spec.max_rss_growth_ratio:.0%}), fds {spec.max_fd_growth:g}, "
            f"threads {spec.max_thread_growth:g}, p99 {spec.max_p99_growth_ratio:.0%}; first {spec.settle_fraction:.0%} not fitted")
    report = SoakReport(spec.duration_s, spec.sample_s, rule, server_pid)
    allowances = {
        "rss_mb": lambda pts, mean: max(spec.max_rss_growth_mb, spec.max_rss_growth_ratio * mean),
        "fds": lambda pts, mean: spec.max_fd_growth,
        "threads": lambda pts, mean: spec.max_thread_growth,
    }
    for label in sorted(samples, key=lambda s: (s != "tritonserver", s)):
        for metric in _METRICS:
            points = [(t, float(getattr(s, metric))) for t, s in samples[label]]
            report.series.append(_judge_series(f"{label} {metric}", points, spec, allowances[metric]))
    p99 = [(t, v) for t, v in p99_windows if v is not None]
    report.series.append(_judge_series("p99_ms", p99, spec,
                                       lambda pts, mean: spec.max_p99_growth_ratio * statistics.median(v for _, v in pts)))
    if server_pid is None:
        report.reasons.append("no local tritonserver process found: only the latency was judged")
    for s in report.series:
        if not s.passed:
            report.passed = False
            report.reasons.insert(0, f"{s.name} grows {s.slope_per_h:+.3g}/h (rise {s.growth:+.3g} over the soak, allowed {s.allowed:.3g})")
    return report
