"""The transport seam: what ``Client`` / ``AsyncClient`` need from a connection to a server.

The clients do everything above the wire - reading the model's interface, checking
inputs, chunking, retries, shared-memory slots, labels, error refinement - and ask a
transport only for these calls, with numpy arrays in and out and every failure
already a ``ClientError``. The tritonclient transports (``client/transport.py``) are
one implementation; ``Client(transport=...)`` takes any other, as httpx's
``Client(transport=...)`` does, so the client's behaviour is testable against an
in-memory fake and a caller can put its own connection (a proxy, a recorder) under it.

Only the control plane and ``infer`` are abstract. ``submit`` defaults to a blocking
``infer`` behind a finished future, and shared memory to "not supported".
"""

from __future__ import annotations

import abc
from concurrent.futures import Future
from typing import Any

import numpy as np

from sft_engine.client.errors import ClientError
from sft_engine.client.shm import ShmSlot
from sft_engine.client.wire import InferTarget

__all__ = ["Transport", "AsyncTransport"]


def _no_shm(transport: object) -> ClientError:
    return ClientError(f"{type(transport).__name__} does not support shared memory", hint="pass shared_memory=False")


class Transport(abc.ABC):
    """Blocking calls, safe from several threads at once. ``version`` "" = the server's latest."""

    @abc.abstractmethod
    def is_live(self) -> bool: ...

    @abc.abstractmethod
    def is_ready(self) -> bool: ...

    @abc.abstractmethod
    def is_model_ready(self, model: str, version: str) -> bool: ...

    @abc.abstractmethod
    def model_config(self, model: str, version: str) -> dict[str, Any]:
        """The configuration in HTTP's JSON form (dims as integers)."""

    @abc.abstractmethod
    def model_metadata(self, model: str, version: str) -> dict[str, Any]: ...

    @abc.abstractmethod
    def repository_index(self) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def infer(self, target: InferTarget, array: np.ndarray, class_count: int = 0, slot: ShmSlot | None = None) -> np.ndarray:
        """One request: the output as numpy; with ``class_count`` > 0 Triton's classification strings (BYTES)."""

    def submit(self, target: InferTarget, array: np.ndarray) -> "Future[np.ndarray]":
        """Send one request without waiting; the future holds the output or a ClientError."""
        future: Future[np.ndarray] = Future()
        try:
            future.set_result(self.infer(target, array))
        except ClientError as exc:
            future.set_exception(exc)
        return future

    def shm_regions(self) -> list[str]:
        raise _no_shm(self)

    def register_shm(self, name: str, key: str, byte_size: int) -> None:
        raise _no_shm(self)

    def unregister_shm(self, name: str) -> None:
        raise _no_shm(self)

    def close(self) -> None:
        """Release connections (the client calls it once, from ``close``)."""


class AsyncTransport(abc.ABC):
    """The asyncio twin of ``Transport``: the same calls as coroutines, for one event loop."""

    @abc.abstractmethod
    async def is_live(self) -> bool: ...

    @abc.abstractmethod
    async def is_ready(self) -> bool: ...

    @abc.abstractmethod
    async def is_model_ready(self, model: str, version: str) -> bool: ...

    @abc.abstractmethod
    async def model_config(self, model: str, version: str) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def model_metadata(self, model: str, version: str) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def repository_index(self) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def infer(self, target: InferTarget, array: np.ndarray, class_count: int = 0, slot: ShmSlot | None = None) -> np.ndarray: ...

    async def shm_regions(self) -> list[str]:
        raise _no_shm(self)

    async def register_shm(self, name: str, key: str, byte_size: int) -> None:
        raise _no_shm(self)

    async def unregister_shm(self, name: str) -> None:
        raise _no_shm(self)

    async def close(self) -> None:
        """Release connections (the client awaits it once, from ``close``)."""
