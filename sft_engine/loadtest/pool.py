"""The coordinator's side of the worker processes: start them, hand out step plans, collect results.

Workers are fresh interpreters (``python -c``, never ``fork``: gRPC is not fork-safe;
never ``multiprocessing.spawn``: it re-imports the caller's ``__main__``, which breaks
any script that calls ``run_loadtest`` without a main guard), each running
``worker.worker_main``. They talk to the pool over a socket pair (pickled plans and
results) and share a small memory-mapped control block (abort flag, live counters).
A worker that dies, hangs or misses a step's deadline becomes an error of that step,
never a hang of the run; closing the pool asks, then terminates, then kills.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Sequence

from sft_engine.errors import LoadTestError
from sft_engine.lifetime import bound_to_parent
from sft_engine.loadtest.config import Endpoint
from sft_engine.loadtest.shared_block import ControlBlock
from sft_engine.loadtest.payload import Payload
from sft_engine.loadtest.schedule import WorkerPlan
from sft_engine.loadtest.worker import WorkerInit, WorkerStepResult

__all__ = ["WorkerPool"]

#: what each worker interpreter runs (``python -c``); a module constant so a test can wrap it
_WORKER_CODE = "import sys; from sft_engine.loadtest.worker import worker_main; sys.exit(worker_main())"


class WorkerPool:
    """Starts the worker processes once, hands them step plans, collects their results."""

    def __init__(
        self,
        n_workers: int,
        endpoints: Sequence[Endpoint],
        payload: Payload,
        timeout_s: float | None,
        max_in_flight: int,
        unreachable_after_s: float,
        startup_timeout_s: float = 60.0,
        transport: str = "raw",
        tls: Any = None,
    ) -> None:
        """``tls``: a ``GrpcTls`` for gRPC over TLS (the workers read its files themselves)."""
        self.n_workers = n_workers
        self._inits = [
            WorkerInit(i, tuple(endpoints), payload, timeout_s, max_in_flight, unreachable_after_s, transport, tls) for i in range(n_workers)
        ]
        self._startup_timeout_s = startup_timeout_s
        self.control: ControlBlock | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._conns: list[Connection] = []
        self.pids: list[int] = []

    @staticmethod
    def _environment() -> dict[str, str]:
        """The workers must import this very package, also when it is not installed."""
        env = os.environ.copy()
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([package_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        return env

    def start(self) -> "WorkerPool":
        self.control = ControlBlock.create(self.n_workers)
        env = self._environment()
        for init in self._inits:
            parent, child = socket.socketpair()
            try:
                proc = subprocess.Popen(
                    bound_to_parent([sys.executable, "-c", _WORKER_CODE, str(child.fileno()), str(self.control.path), str(self.n_workers)]),
                    pass_fds=[child.fileno()], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                )
            finally:
                child.close()
            conn = Connection(parent.detach())
            self._procs.append(proc)
            self._conns.append(conn)
            try:
                conn.send(init)
            except OSError:  # the worker is gone before it read its settings: one line, not a traceback
                raise LoadTestError(f"load-test worker {len(self._conns) - 1} could not start: {self._exited(len(self._procs) - 1)}",
                                    hint="the machine may be overloaded; try fewer --workers") from None
        deadline = time.monotonic() + self._startup_timeout_s
        for i, conn in enumerate(self._conns):
            message = self._receive(i, conn, deadline)
            if message is None:
                raise LoadTestError(f"load-test worker {i} did not start within {self._startup_timeout_s:.0f} s",
                                    hint="the machine may be overloaded; try fewer --workers")
            if message[0] == "error":
                raise LoadTestError(f"cannot send requests: {message[1]}", hint="check that the server is up and serves the model at --url")
            self.pids.append(int(message[1]))
        return self

    def _exited(self, i: int) -> str:
        return f"worker {i} exited (code {self._procs[i].poll()})"

    def _receive(self, i: int, conn: Connection, deadline: float) -> tuple[str, Any] | None:
        while time.monotonic() < deadline:
            try:
                if conn.poll(0.05):
                    return conn.recv()
            except (EOFError, OSError, pickle.UnpicklingError):
                return ("error", self._exited(i))
            if self._procs[i].poll() is not None and not conn.poll(0):
                return ("error", self._exited(i))
        return None

    def send_step(self, plans: Sequence[WorkerPlan]) -> None:
        assert self.control is not None
        self.control.clear_abort()
        for conn, plan in zip(self._conns, plans):
            conn.send(("step", plan))

    def collect(self, deadline: float, on_wait: Any = None) -> tuple[list[WorkerStepResult], list[str]]:
        """Results of the current step; workers that fail or miss the deadline give an error instead."""
        results: list[WorkerStepResult] = []
        errors: list[str] = []
        pending = set(range(self.n_workers))
        while pending and time.monotonic() < deadline:
            for i in sorted(pending):
                conn = self._conns[i]
                try:
                    ready = conn.poll(0)
                    message = conn.recv() if ready else None
                except (EOFError, OSError, pickle.UnpicklingError):
                    errors.append(self._exited(i))
                    pending.discard(i)
                    continue
                if message is not None:
                    pending.discard(i)
                    if message[0] == "result":
                        results.append(message[1])
                    else:
                        errors.append(str(message[1]))
                elif self._procs[i].poll() is not None:
                    errors.append(self._exited(i))
                    pending.discard(i)
            if pending:
                if on_wait is not None:
                    on_wait()
                time.sleep(0.02)
        for i in sorted(pending):
            errors.append(f"worker {i} did not report within the step's deadline")
        if pending:
            self.abort()
        return results, errors

    def live_rows(self) -> list[dict[str, float]]:
        return self.control.rows() if self.control is not None else []

    def aborted(self) -> bool:
        return self.control is not None and self.control.aborted()

    def abort(self) -> None:
        if self.control is not None:
            self.control.request_abort()

    def close(self) -> None:
        """Ask workers to exit, then terminate and finally kill any that remain."""
        for conn in self._conns:
            try:
                conn.send(("exit",))
            except OSError:
                pass
        deadline = time.monotonic() + 3.0
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=2.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=2.0)
        for conn in self._conns:
            conn.close()
        self._procs.clear()
        self._conns.clear()
        if self.control is not None:
            self.control.close()
            self.control = None

    def __enter__(self) -> "WorkerPool":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
