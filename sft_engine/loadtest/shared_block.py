"""A tiny shared-memory control block between the coordinator and its worker processes.

One float64 array in a memory-mapped temporary file: slot 0 is the abort flag (any
process may raise it: a worker that finds the server gone, the coordinator on a dead
probe or Ctrl-C), then one row of live counters per worker. A file mapping needs no
resource tracker and no ``multiprocessing`` bootstrapping, so worker processes can be
plain ``python -c`` subprocesses that never re-import the caller's ``__main__``.
Torn reads of a live counter are harmless: they are progress figures, not results.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["ControlBlock", "LIVE_FIELDS"]

#: layout of each worker's row of live figures
LIVE_FIELDS = ("sent", "succeeded", "failed", "in_flight", "recent_p50_ms", "recent_p99_ms", "recent_lag_p99_ms", "step")
_ABORT = 0


class ControlBlock:
    def __init__(self, path: Path, n_workers: int, owner: bool) -> None:
        self.path = Path(path)
        self.n_workers = n_workers
        self.owner = owner
        size = 8 * (1 + n_workers * len(LIVE_FIELDS))
        with open(self.path, "r+b") as f:
            self._mm = mmap.mmap(f.fileno(), size)
        self.array = np.frombuffer(self._mm, dtype=np.float64)

    @classmethod
    def create(cls, n_workers: int) -> "ControlBlock":
        fd, name = tempfile.mkstemp(prefix="sft-loadtest-", suffix=".ctl")
        size = 8 * (1 + n_workers * len(LIVE_FIELDS))
        os.write(fd, b"\0" * size)
        os.close(fd)
        return cls(Path(name), n_workers, owner=True)

    @classmethod
    def attach(cls, path: str | Path, n_workers: int) -> "ControlBlock":
        return cls(Path(path), n_workers, owner=False)

    # -- abort flag -------------------------------------------------------------------
    def request_abort(self) -> None:
        self.array[_ABORT] = 1.0

    def clear_abort(self) -> None:
        self.array[_ABORT] = 0.0

    def aborted(self) -> bool:
        return bool(self.array[_ABORT] != 0.0)

    # -- live figures -----------------------------------------------------------------
    def offset(self, worker: int) -> int:
        return 1 + worker * len(LIVE_FIELDS)

    def write_live(self, worker: int, values: list[float]) -> None:
        start = self.offset(worker)
        self.array[start:start + len(values)] = values

    def rows(self) -> list[dict[str, float]]:
        n = len(LIVE_FIELDS)
        values = self.array[1:].tolist()
        return [dict(zip(LIVE_FIELDS, values[i * n:(i + 1) * n])) for i in range(self.n_workers)]

    def close(self) -> None:
        array = getattr(self, "array", None)
        if array is not None:
            del self.array
            try:
                self._mm.close()
            except BufferError:  # a view is still alive somewhere; the OS frees it at exit
                pass
        if self.owner:
            self.path.unlink(missing_ok=True)
