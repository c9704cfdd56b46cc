"""Worker processes: each runs one asyncio loop that applies its share of the load.

Why processes: one Python process tops out at a few thousand requests/s, and a load
generator that runs out of CPU silently turns an open loop into a slower one. Several
processes, each with its own event loop and connections, keep the generator ahead of
the server; the send lag they measure proves it (or declares the run invalid).

Per request, a worker does: read the clock, await the prebuilt send, read the clock,
append five numbers to arrays. Everything else - windowing, HDR histograms, error
counts - happens after the step, with numpy, while no load is applied. Results go
back to the coordinator as encoded histograms per window, so merging across
processes is exact.

Workers are fresh interpreters started by ``pool.WorkerPool`` (why not ``fork`` or
``multiprocessing``: see there), reused for every step of a run; this module is what
runs inside one.
"""

from __future__ import annotations

import array
import asyncio
import gc
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Sequence

import numpy as np

from sft_engine.loadtest.config import Endpoint
from sft_engine.loadtest.shared_block import ControlBlock
from sft_engine.loadtest.histogram import LatencyHistogram
from sft_engine.loadtest.payload import Payload
from sft_engine.loadtest.schedule import WorkerPlan, intended_times
from sft_engine.loadtest.sender import (
    CANCELLED, OK, SLOW_STATUSES, STATUS_NAMES, TIMEOUT, UNAVAILABLE, UNFINISHED, Sender, make_sender,
)

__all__ = ["WorkerInit", "WindowData", "WorkerStepResult", "worker_main"]

LOGGER = logging.getLogger(__name__)

#: after an abort, in-flight requests get this long before they are cancelled
ABORT_GRACE_S = 0.5
MONITOR_INTERVAL_S = 0.1


@dataclass(frozen=True)
class WorkerInit:
    worker_index: int
    endpoints: tuple[Endpoint, ...]
    payload: Payload
    timeout_s: float | None
    max_in_flight: int
    unreachable_after_s: float
    transport: str = "raw"
    #: a GrpcTls, or None for plaintext
    tls: Any = None


@dataclass
class WindowData:
    """One worker's view of one measurement window (requests by intended send time)."""

    scheduled: int = 0
    sent: int = 0  # actually sent within the window (by send time)
    succeeded_done: int = 0  # successful answers received within the window (by completion time)
    errors: dict[str, int] = field(default_factory=dict)
    latency: str = ""
    service: str = ""
    lag: str = ""


@dataclass
class WorkerStepResult:
    worker_index: int
    windows: list[WindowData]
    #: every request of the step (warmup and drain included), by outcome
    totals: dict[str, int]
    per_endpoint: list[int]
    examples: dict[str, str]
    cpu_s: float
    wall_s: float
    cap_waits: int = 0
    max_in_flight_seen: int = 0
    aborted: str | None = None


# -- inside the worker process -----------------------------------------------------------
class _StepRun:
    """One step in one worker: schedule, send, record raw timestamps, summarize."""

    def __init__(self, plan: WorkerPlan, transport: Sender, init: WorkerInit, control: ControlBlock) -> None:
        self.plan = plan
        self.step = plan.step
        self.transport = transport
        self.init = init
        self.control = control
        self.n_endpoints = len(init.endpoints)
        # raw per-request records (append-only; read with numpy after the step)
        self.t_intended = array.array("d")
        self.t_ready = array.array("d")
        self.t_sent = array.array("d")
        self.t_done = array.array("d")
        self.status = array.array("b")
        self.endpoint = array.array("B")
        self.in_flight = 0
        self.max_in_flight_seen = 0
        self.cap_waits = 0
        self.ok = 0
        self.failed = 0
        self.stop = False
        self.stop_time = 0.0
        self.aborted: str | None = None
        self.unavailable_since: list[float | None] = [None] * self.n_endpoints
        self.tasks: set[asyncio.Task[None]] = set()
        self._slot_free = asyncio.Event()
        self._waiting_for_slot = False
        self._cpu_marks: dict[int, float] = {}
        self._parent = os.getppid()

    # -- recording ------------------------------------------------------------------
    def _record(self, intended: float, ready: float, sent: float, done: float, status: int, ep: int) -> None:
        if status == TIMEOUT and self.init.timeout_s:
            # a timeout counts at (at least) the timeout, even if the client library fired a hair early
            done = max(done, sent + self.init.timeout_s)
        self.t_intended.append(intended)
        self.t_ready.append(ready)
        self.t_sent.append(sent)
        self.t_done.append(done)
        self.status.append(status)
        self.endpoint.append(ep)
        if status == OK:
            self.ok += 1
            self.unavailable_since[ep] = None
        else:
            self.failed += 1
            if status == UNAVAILABLE:
                since = self.unavailable_since[ep]
                if since is None:
                    self.unavailable_since[ep] = done
                elif done - since >= self.init.unreachable_after_s and not self.stop:
                    example = self.transport.examples.get(UNAVAILABLE, "connection refused")
                    self._abort(f"server unreachable: {self.init.endpoints[ep].url} refused every request for {done - since:.1f} s ({example})")

    def _abort(self, reason: str) -> None:
        if not self.stop:
            self.stop = True
            self.stop_time = time.monotonic()
            self.aborted = self.aborted or reason
            self.control.request_abort()
            self._slot_free.set()

    # -- closed loop ----------------------------------------------------------------
    async def _user(self, uid: int) -> None:
        step = self.step
        total_users = step.concurrency or 1
        k = self.plan.first_request + uid
        await _sleep_until(step.start)
        ready = step.start
        send = self.transport.send
        mono = time.monotonic
        end = step.measure_end
        while not self.stop:
            t_send = mono()
            if t_send >= end:
                return
            ep = k % self.n_endpoints
            self.in_flight += 1
            if self.in_flight > self.max_in_flight_seen:
                self.max_in_flight_seen = self.in_flight
            try:
                status = await send(ep)
            except asyncio.CancelledError:
                self.in_flight -= 1
                self._record(t_send, ready, t_send, mono(), CANCELLED if self.aborted else UNFINISHED, ep)
                return
            t_done = mono()
            self.in_flight -= 1
            self._record(t_send, ready, t_send, t_done, status, ep)
            ready = t_done
            k += total_users

    # -- open loop ------------------------------------------------------------------
    async def _fire(self, ep: int, intended: float, ready: float) -> None:
        mono = time.monotonic
        t_send = mono()
        try:
            status = await self.transport.send(ep)
        except asyncio.CancelledError:
            status = CANCELLED if self.aborted else UNFINISHED
        t_done = mono()
        self.in_flight -= 1
        if self._waiting_for_slot:
            self._slot_free.set()
        self._record(intended, ready, t_send, t_done, status, ep)

    async def _scheduler(self) -> None:
        loop = asyncio.get_running_loop()
        mono = time.monotonic
        plan = self.plan
        cap = self.init.max_in_flight
        k = plan.worker_index
        burst = 0
        for t in intended_times(plan):
            if self.stop:
                return
            delay = t - mono()
            if delay > 0.0002:
                await asyncio.sleep(delay)
                burst = 0
                if self.stop:
                    return
            elif burst >= 16:  # behind schedule: let the sends already created start
                await asyncio.sleep(0)
                burst = 0
            ready = t
            if self.in_flight >= cap:
                self.cap_waits += 1
                while self.in_flight >= cap and not self.stop:
                    self._waiting_for_slot = True
                    self._slot_free.clear()
                    await self._slot_free.wait()
                self._waiting_for_slot = False
                if self.stop:
                    return
                ready = max(t, mono())
            self.in_flight += 1
            if self.in_flight > self.max_in_flight_seen:
                self.max_in_flight_seen = self.in_flight
            task = loop.create_task(self._fire(k % self.n_endpoints, t, ready))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            k += plan.n_workers
            burst += 1

    # -- supervision ----------------------------------------------------------------
    async def _monitor(self) -> None:
        last_live = 0.0
        while True:
            now = time.monotonic()
            if not self.stop and self.control.aborted():
                self._abort("aborted by the coordinator")
            if os.getppid() != self._parent:
                self._abort("the coordinating process is gone")
            if now - last_live >= 0.25:
                last_live = now
                self._publish_live(now)
            await asyncio.sleep(MONITOR_INTERVAL_S)

    def _publish_live(self, now: float) -> None:
        n = len(self.t_done)
        values = [float(n + self.in_flight), float(self.ok), float(self.failed), float(self.in_flight), 0.0, 0.0, 0.0, float(self.step.index)]
        if n:
            tail = min(n, 4000)
            done = np.array(self.t_done[n - tail:])
            recent = done >= now - 1.0
            if recent.any():
                lat = (done - np.array(self.t_intended[n - tail:]))[recent] * 1000.0
                lag = (np.array(self.t_sent[n - tail:]) - np.array(self.t_ready[n - tail:]))[recent] * 1000.0
                p50, p99 = np.percentile(lat, [50, 99])
                values[4:7] = [float(p50), float(p99), float(np.percentile(np.clip(lag, 0, None), 99))]
        self.control.write_live(self.plan.worker_index, values)

    def _cpu_mark(self, which: int) -> None:
        self._cpu_marks[which] = time.process_time()

    async def run(self) -> WorkerStepResult:
        loop = asyncio.get_running_loop()
        step = self.step
        mono = time.monotonic
        loop.call_at(max(loop.time(), step.measure_start), self._cpu_mark, 0)
        loop.call_at(max(loop.time(), step.measure_end), self._cpu_mark, 1)
        monitor = loop.create_task(self._monitor())
        if step.mode == "closed":
            work = [loop.create_task(self._user(u)) for u in range(self.plan.concurrency)]
        else:
            work = [loop.create_task(self._scheduler())] if self.plan.rate > 0 else []
        deadline = step.measure_end + step.drain_s
        while True:
            # first the schedule (or the closed-loop users), then the drain of what is in flight
            pending: list[asyncio.Task[Any]] = [t for t in work if not t.done()] or [t for t in self.tasks if not t.done()]
            if not pending:
                break
            now = mono()
            if self.stop:
                deadline = min(deadline, self.stop_time + ABORT_GRACE_S)
            if now >= deadline:
                break
            await asyncio.wait(pending, timeout=min(0.1, deadline - now))
        leftovers = [t for t in work if not t.done()] + [t for t in self.tasks if not t.done()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.gather(*leftovers, return_exceptions=True)
        monitor.cancel()
        await asyncio.gather(monitor, return_exceptions=True)
        self._publish_live(mono())
        return self._summarize()

    def _summarize(self) -> WorkerStepResult:
        step = self.step
        windows = step.windows
        n_windows = len(windows)
        intended = np.frombuffer(self.t_intended, dtype=np.float64)
        ready = np.frombuffer(self.t_ready, dtype=np.float64)
        sent = np.frombuffer(self.t_sent, dtype=np.float64)
        done = np.frombuffer(self.t_done, dtype=np.float64)
        status = np.frombuffer(self.status, dtype=np.int8)
        endpoint = np.frombuffer(self.endpoint, dtype=np.uint8)
        ms, me, w = step.measure_start, step.measure_end, step.window_s

        def window_of(times: np.ndarray) -> np.ndarray:
            idx = np.floor((times - ms) / w).astype(np.int64)
            return np.where((times >= ms) & (times < me), np.clip(idx, 0, n_windows - 1), -1)

        win = window_of(intended)
        sent_win = np.bincount(window_of(sent) + 1, minlength=n_windows + 1)[1:]
        ok_done_win = np.bincount(window_of(done)[status == OK] + 1, minlength=n_windows + 1)[1:]
        latency_us = (done - intended) * 1e6
        service_us = (done - sent) * 1e6
        lag_us = np.clip(sent - ready, 0.0, None) * 1e6
        slow = np.isin(status, SLOW_STATUSES)

        measured = np.flatnonzero(win >= 0)
        order = measured[np.argsort(win[measured], kind="stable")]
        bounds = np.searchsorted(win[order], np.arange(n_windows + 1))
        out_windows = []
        for i in range(n_windows):
            sel = order[bounds[i]:bounds[i + 1]]
            st = status[sel]
            counts = np.bincount(st, minlength=len(STATUS_NAMES))
            errors = {STATUS_NAMES[c]: int(n) for c, n in enumerate(counts) if c != OK and n}
            sel_slow = sel[slow[sel]]
            lat, svc, lag = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
            lat.record_us(latency_us[sel_slow])
            svc.record_us(service_us[sel_slow])
            lag.record_us(lag_us[sel])
            out_windows.append(WindowData(
                scheduled=int(sel.size), sent=int(sent_win[i]), succeeded_done=int(ok_done_win[i]), errors=errors,
                latency=lat.encode(), service=svc.encode(), lag=lag.encode(),
            ))
        totals_arr = np.bincount(status, minlength=len(STATUS_NAMES))
        totals = {STATUS_NAMES[c]: int(n) for c, n in enumerate(totals_arr) if n}
        per_endpoint = np.bincount(endpoint, minlength=self.n_endpoints).tolist() if endpoint.size else [0] * self.n_endpoints
        cpu0 = self._cpu_marks.get(0)
        cpu1 = self._cpu_marks.get(1, time.process_time())
        wall = (min(time.monotonic(), me) - ms) if cpu0 is not None else 0.0
        return WorkerStepResult(
            worker_index=self.plan.worker_index,
            windows=out_windows,
            totals=totals,
            per_endpoint=[int(x) for x in per_endpoint],
            examples={STATUS_NAMES[k]: v for k, v in self.transport.examples.items()},
            cpu_s=float(cpu1 - cpu0) if cpu0 is not None else 0.0,
            wall_s=float(max(wall, 0.0)),
            cap_waits=self.cap_waits,
            max_in_flight_seen=self.max_in_flight_seen,
            aborted=self.aborted,
        )


def _raise_fd_limit() -> None:
    """An open loop over HTTP holds one socket per request in flight: allow as many as the OS lets us."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else max(soft, 65536), hard))
    except (ImportError, ValueError, OSError):
        pass


async def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _worker_async(conn: Connection, init: WorkerInit, control: ControlBlock) -> None:
    transport = make_sender(init.endpoints, init.payload, init.timeout_s, init.max_in_flight, init.transport, tls=init.tls)
    await transport.start()
    try:
        # connections are up before any timed request (the coordinator already sent a test request)
        for i in range(len(init.endpoints)):
            error = await transport.connect(i)
            if error is not None:
                conn.send(("error", error))
                return
        conn.send(("ready", os.getpid()))
        # everything built so far lives for the whole run: keep it out of the cyclic GC's
        # way, so collections during a step stay short
        gc.collect()
        gc.freeze()
        loop = asyncio.get_running_loop()
        while True:
            try:
                message = await loop.run_in_executor(None, conn.recv)
            except (EOFError, OSError):
                return
            if message[0] == "exit":
                return
            if message[0] == "step":
                plan: WorkerPlan = message[1]
                transport.examples.clear()
                try:
                    result = await _StepRun(plan, transport, init, control).run()
                except Exception as exc:  # noqa: BLE001 - report to the coordinator instead of dying silently
                    LOGGER.exception("worker %d failed in step %d", init.worker_index, plan.step.index)
                    conn.send(("error", f"worker {init.worker_index} failed: {type(exc).__name__}: {exc}"))
                    continue
                conn.send(("result", result))
    finally:
        await transport.close()


def worker_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of a worker process: ``worker_main([socket_fd, control_path, n_workers])``."""
    args = list(sys.argv[1:] if argv is None else argv)
    # Ctrl-C reaches the whole process group: the coordinator handles it (abort, partial
    # report) and tells the workers; a worker dying on its own would lose its results.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _raise_fd_limit()
    conn = Connection(int(args[0]))
    control = ControlBlock.attach(args[1], int(args[2]))
    init: WorkerInit | None = None
    try:
        init = conn.recv()
        asyncio.run(_worker_async(conn, init, control))
    except KeyboardInterrupt:
        pass
    except (EOFError, OSError):
        pass  # the coordinator is gone
    except Exception as exc:  # noqa: BLE001 - the coordinator must learn why, not just see EOF
        index = init.worker_index if init is not None else "?"
        try:
            conn.send(("error", f"worker {index} crashed: {type(exc).__name__}: {exc}"))
        except OSError:
            pass
    finally:
        control.close()
        conn.close()
    return 0
