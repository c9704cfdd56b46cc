"""Optional system shared memory for request and response tensors (same host only).

Why: for large batches most of a loopback request's cost is copying and framing the
tensor bytes through the socket; with system shared memory the client writes the
batch into a POSIX shared memory region that Triton reads directly, and Triton
writes the logits into a second region, so only a small header crosses the socket.

A pool holds one input and one output region per concurrent request ("slot"), sized
for ``max_batch_size`` items. Regions are created here, registered with the server
by the client (over whichever protocol it speaks), and always cleaned up: ``close``
unregisters and unlinks them, and a finalizer unlinks them if the client is
garbage-collected or the interpreter exits without ``close``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import numpy as np

from sft_engine.client.errors import ClientError

__all__ = ["ShmSlot", "ShmPool", "release_patience_s", "in_use", "unregister_all", "aunregister_all"]

LOGGER = logging.getLogger(__name__)


@dataclass
class ShmSlot:
    """One request's regions: ``in_name``/``out_name`` are the names registered with Triton."""

    in_name: str
    in_key: str
    in_bytes: int
    in_handle: Any
    out_name: str
    out_key: str
    out_bytes: int
    out_handle: Any

    def write_input(self, array: np.ndarray) -> int:
        """Copy ``array`` into the input region; returns its byte size."""
        from tritonclient.utils import shared_memory as shm

        if array.nbytes > self.in_bytes:
            raise ClientError(f"a batch of {array.nbytes} bytes does not fit the {self.in_bytes}-byte shared memory region", hint="report this as a bug")
        shm.set_shared_memory_region(self.in_handle, [np.ascontiguousarray(array)])
        return int(array.nbytes)

    def registrations(self) -> list[tuple[str, str, int]]:
        return [(self.in_name, self.in_key, self.in_bytes), (self.out_name, self.out_key, self.out_bytes)]

    def read_output(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """A copy of the output region's first ``shape`` elements (the slot is reused afterwards)."""
        from tritonclient.utils import shared_memory as shm

        return np.array(shm.get_contents_as_numpy(self.out_handle, dtype, list(shape)), copy=True)


def release_patience_s(timeout_s: float) -> float:
    """How long ``close`` keeps trying to unregister regions the server still uses.

    Triton refuses to unregister a region while a request that names it runs - which
    happens after a client-side timeout, when the server is still working on the
    request. Waiting about one request timeout (2-10 s) lets such a request finish.
    """
    return min(max(timeout_s, 2.0), 10.0)


def in_use(exc: BaseException) -> bool:
    """Whether an unregister failed because a running request still uses the region."""
    return "in use" in str(exc)


def unregister_all(unregister: Callable[[str], None], names: list[str], timeout_s: float) -> None:
    """Unregister regions; retry those a timed-out request still uses, for ``release_patience_s``."""
    deadline = time.monotonic() + release_patience_s(timeout_s)
    delay = 0.02
    while names:
        busy = []
        for name in names:
            try:
                unregister(name)
            except ClientError as exc:
                if in_use(exc) and time.monotonic() < deadline:
                    busy.append(name)
                else:  # the server may be gone; the local regions are removed anyway
                    LOGGER.warning("cannot unregister shared memory region %s: %s", name, exc.message)
        names = busy
        if names:
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


async def aunregister_all(unregister: Callable[[str], Awaitable[None]], names: list[str], timeout_s: float) -> None:
    """The asyncio twin of ``unregister_all``."""
    deadline = time.monotonic() + release_patience_s(timeout_s)
    delay = 0.02
    while names:
        busy = []
        for name in names:
            try:
                await unregister(name)
            except ClientError as exc:
                if in_use(exc) and time.monotonic() < deadline:
                    busy.append(name)
                else:
                    LOGGER.warning("cannot unregister shared memory region %s: %s", name, exc.message)
        names = busy
        if names:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)


def _destroy(handles: list[Any]) -> None:
    from tritonclient.utils import shared_memory as shm

    while handles:
        handle = handles.pop()
        try:
            shm.destroy_shared_memory_region(handle)
        except Exception as exc:  # keep destroying the others
            LOGGER.warning("cannot remove shared memory region %s: %s", getattr(handle, "_shm_key", "?"), exc)


class ShmPool:
    """``slots`` pairs of regions for ``in_bytes`` input / ``out_bytes`` output each.

    Creating the pool creates the local regions only; registering them with the
    server is the client's job (``registrations()`` lists what to register).
    """

    def __init__(self, slots: int, in_bytes: int, out_bytes: int, prefix: str = "sft") -> None:
        if slots < 0 or in_bytes < 1 or out_bytes < 1:
            raise ClientError(f"invalid shared memory pool ({slots} slots, {in_bytes}/{out_bytes} bytes)", hint="report this as a bug")
        self.tag = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:10]}"
        self._handles: list[Any] = []
        self._finalizer = weakref.finalize(self, _destroy, self._handles)
        self.in_bytes, self.out_bytes = in_bytes, out_bytes
        self._lock = threading.Lock()
        self._numbers = itertools.count()
        self.slots: list[ShmSlot] = []
        try:
            for _ in range(slots):
                self.add_slot()
        except ClientError:
            self.destroy()
            raise

    def add_slot(self) -> ShmSlot:
        """Create one more input/output region pair (not registered with the server yet)."""
        from tritonclient.utils import shared_memory as shm

        with self._lock:
            i = next(self._numbers)
        names = (f"{self.tag}_{i}_in", f"{self.tag}_{i}_out")
        handles = []
        try:
            for name, size in zip(names, (self.in_bytes, self.out_bytes)):
                handle = shm.create_shared_memory_region(name, "/" + name, size, create_only=True)
                self._handles.append(handle)
                handles.append(handle)
        except shm.SharedMemoryException as exc:
            raise ClientError(f"cannot create shared memory regions: {exc.__cause__ or exc}", hint="check free space in /dev/shm, or use shared_memory=False") from exc
        slot = ShmSlot(names[0], "/" + names[0], self.in_bytes, handles[0], names[1], "/" + names[1], self.out_bytes, handles[1])
        with self._lock:
            self.slots.append(slot)
        LOGGER.debug("created shared memory slot %s_%d (%d + %d bytes)", self.tag, i, self.in_bytes, self.out_bytes)
        return slot

    def registrations(self) -> list[tuple[str, str, int]]:
        """``(name, key, byte_size)`` of every region, for ``register_system_shared_memory``."""
        return [reg for slot in self.slots for reg in slot.registrations()]

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.registrations()]

    def destroy(self) -> None:
        """Unmap and unlink every region (idempotent)."""
        _destroy(self._handles)
        self._finalizer.detach()
