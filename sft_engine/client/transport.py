"""The one seam between the client and tritonclient: same calls over gRPC or HTTP, sync or asyncio.

Three things differ between the protocols, and each lives in one place:

* the inference call's shape - which tritonclient module, how tensors are marked
  binary (HTTP) or not (gRPC), how an output's shape is read back - is a small
  protocol class (``client/wire.py``) that the sync and asyncio transports of that
  protocol share;
* how a timeout is passed (a per-call deadline for gRPC; socket timeouts for HTTP)
  and how the tritonclient client is kept (one thread-safe channel for gRPC; one
  client per thread for HTTP, whose client is not thread-safe) is the transport
  class itself;
* the control plane (liveness, readiness, config, metadata, repository index) is the
  shared control client of ``sft_engine.triton.control``, so the client reads a model
  exactly as the load test and the operations commands do.

Every failure leaves this module as a ``ClientError`` (``raise ... from`` the
original), translated in one place (``_Translating``). The clients above only see the
``Transport`` / ``AsyncTransport`` interfaces of ``client/base.py`` and numpy arrays, so
the protocols are interchangeable (and so is any other transport).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import numpy as np

from sft_engine.client.base import AsyncTransport, Transport
from sft_engine.client.settings import ClientSettings
from sft_engine.client.shm import ShmSlot
from sft_engine.client.wire import InferTarget, _Base, _GrpcWire, _HttpWire, _Translating
from sft_engine.triton.address import parse_address
from sft_engine.triton.control import ControlClient, GrpcControl
from sft_engine.triton.security import GrpcTls

__all__ = [
    "TritonTransport",
    "AsyncTritonTransport",
    "GrpcTransport",
    "HttpTransport",
    "AioGrpcTransport",
    "AioHttpTransport",
    "make_transport",
    "make_async_transport",
    "transport_for",
    "async_transport_for",
]

T = TypeVar("T")


# -- sync ---------------------------------------------------------------------------------


class TritonTransport(_Base, Transport):
    """tritonclient's blocking calls, safe from several threads at once, plus ``submit`` to send without waiting."""

    def __init__(self, url: str, timeout_s: float, concurrency: int = 4, *, tls: GrpcTls | None = None, admin_key: str | None = None) -> None:
        super().__init__(url, timeout_s, tls=tls, admin_key=admin_key)
        self._lock = threading.Lock()
        self.concurrency = concurrency
        self._executor: ThreadPoolExecutor | None = None
        self._control: ControlClient | None = None

    def submit(self, target: InferTarget, array: np.ndarray) -> "Future[np.ndarray]":
        """Send one request without waiting; the future holds the output or a ClientError.

        The default runs ``infer`` on worker threads; gRPC overrides it with a truly
        asynchronous call.
        """
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"sft-{self.protocol}")
        return self._executor.submit(self.infer, target, array)

    def _shutdown(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        control, self._control = self._control, None
        if control is not None:
            control.close()

    def _client(self) -> Any:
        raise NotImplementedError

    # the control plane: the shared control client
    @property
    def control(self) -> ControlClient:
        if self._control is None:
            with self._lock:
                if self._control is None:
                    self._control = self._control_client()
        return self._control

    def is_live(self) -> bool:
        with self._translating():
            return self.control.server_live()

    def is_ready(self) -> bool:
        with self._translating():
            return self.control.server_ready()

    def is_model_ready(self, model: str, version: str) -> bool:
        with self._translating(model):
            return self.control.model_ready(model, version)

    def model_config(self, model: str, version: str) -> dict[str, Any]:
        with self._translating(model):
            return self.control.model_config(model, version)

    def model_metadata(self, model: str, version: str) -> dict[str, Any]:
        with self._translating(model):
            return self.control.model_metadata(model, version)

    def repository_index(self) -> list[dict[str, Any]]:
        with self._translating():
            return self.control.repository_index()

    # shared memory
    def shm_regions(self) -> list[str]:
        """Names of the system shared memory regions registered with the server."""
        with self._translating():
            return self._regions(self._client().get_system_shared_memory_status(**self._json_kw, **self._shm_kw()))

    def register_shm(self, name: str, key: str, byte_size: int) -> None:
        with self._translating():
            self._client().register_system_shared_memory(name, key, byte_size, **self._shm_kw())

    def unregister_shm(self, name: str) -> None:
        with self._translating():
            self._client().unregister_system_shared_memory(name, **self._shm_kw())

    def infer(self, target: InferTarget, array: np.ndarray, class_count: int = 0, slot: ShmSlot | None = None) -> np.ndarray:
        """One request; the output as numpy (BYTES when ``class_count`` > 0). The hot path: no closures."""
        with _Translating(self, target.model):
            inp, out = self._build_request(target, array, class_count, slot)
            result = self._client().infer(target.model, [inp], model_version=target.version, outputs=[out], **self._kw)
            return self._read_result(result, target, slot)


class GrpcTransport(_GrpcWire, TritonTransport):
    """tritonclient.grpc: one channel shared by all threads (gRPC channels are thread-safe)."""

    def __init__(self, url: str, timeout_s: float, concurrency: int = 4, *, tls: GrpcTls | None = None, admin_key: str | None = None) -> None:
        super().__init__(url, timeout_s, concurrency, tls=tls, admin_key=admin_key)
        self._load_module()
        self._grpc = self._mod.InferenceServerClient(url, **self._client_kwargs())
        self._kw = {"client_timeout": timeout_s}
        self._outputs: dict[str, Any] = {}

    def _client(self) -> Any:
        return self._grpc

    def infer(self, target: InferTarget, array: np.ndarray, class_count: int = 0, slot: ShmSlot | None = None) -> np.ndarray:
        """The plain request (no shared memory, no classification) without any detour: batch-1 latency pays it."""
        if slot is not None or class_count:
            return super().infer(target, array, class_count, slot)
        with _Translating(self, target.model):
            inp = self._mod.InferInput(target.input_name, array.shape, target.input_datatype)
            inp.set_data_from_numpy(array)
            result = self._grpc.infer(target.model, [inp], model_version=target.version, outputs=[self._output(target.output_name)],
                                      client_timeout=self.timeout_s)
            out = result.as_numpy(target.output_name)
        if out is None:
            return self._read_result(result, target, None)  # raises the missing-output error
        return out

    def _output(self, name: str) -> Any:
        """A reusable requested-output message (tritonclient copies it into each request)."""
        out = self._outputs.get(name)
        if out is None:
            out = self._outputs[name] = self._mod.InferRequestedOutput(name)
        return out

    def submit(self, target: InferTarget, array: np.ndarray) -> "Future[np.ndarray]":
        """``async_infer``: the request is sent now, gRPC's own thread completes the future."""
        future: Future[np.ndarray] = Future()
        future.set_running_or_notify_cancel()  # running from now on: cannot be cancelled half-way

        def done(result: Any, error: Any) -> None:
            try:
                with _Translating(self, target.model):
                    if error is not None:
                        raise error
                    value = self._read_result(result, target, None)
            except Exception as exc:
                future.set_exception(exc)
            else:
                future.set_result(value)

        with _Translating(self, target.model):
            inp, out = self._build_request(target, array, 0, None)
            self._grpc.async_infer(target.model, [inp], done, model_version=target.version, outputs=[out], client_timeout=self.timeout_s)
        return future

    def _control_client(self) -> ControlClient:
        """The control plane on this transport's own channel."""
        return GrpcControl(parse_address(self.url, "grpc"), timeout_s=self.timeout_s, client=self._grpc, admin_key=self.admin_key)

    def close(self) -> None:
        self._shutdown()
        self._grpc.close()


class HttpTransport(_HttpWire, TritonTransport):
    """tritonclient.http: one client per thread, because that client is not thread-safe.

    Each thread keeps its own keep-alive connection, so requests sent concurrently
    from the client's worker threads do not queue behind one socket.
    """

    def __init__(self, url: str, timeout_s: float, concurrency: int = 4, *, tls: GrpcTls | None = None, admin_key: str | None = None) -> None:
        super().__init__(url, timeout_s, concurrency, tls=tls, admin_key=admin_key)
        self._load_module()
        self._local = threading.local()
        self._clients: list[Any] = []

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._mod.InferenceServerClient(self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def close(self) -> None:
        self._shutdown()
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()


# -- asyncio -------------------------------------------------------------------------------


class AsyncTritonTransport(_Base, AsyncTransport):
    """The asyncio twin of ``TritonTransport``; the tritonclient client is made inside the running loop.

    Control-plane calls (rare: a readiness poll, the config once) run the shared sync
    control client on the loop's default executor, so they never block the loop.
    """

    def __init__(self, url: str, timeout_s: float, *, tls: GrpcTls | None = None, admin_key: str | None = None) -> None:
        super().__init__(url, timeout_s, tls=tls, admin_key=admin_key)
        self._aio: Any = None
        self._control: ControlClient | None = None

    def _get(self) -> Any:
        if self._aio is None:
            self._aio = self._make()
        return self._aio

    def _make(self) -> Any:
        raise NotImplementedError

    async def _controlled(self, model: str | None, call: Callable[[ControlClient], T]) -> T:
        if self._control is None:
            self._control = self._control_client()
        control = self._control
        with self._translating(model):
            return await asyncio.get_running_loop().run_in_executor(None, call, control)

    async def is_live(self) -> bool:
        return await self._controlled(None, lambda c: c.server_live())

    async def is_ready(self) -> bool:
        return await self._controlled(None, lambda c: c.server_ready())

    async def is_model_ready(self, model: str, version: str) -> bool:
        return await self._controlled(model, lambda c: c.model_ready(model, version))

    async def model_config(self, model: str, version: str) -> dict[str, Any]:
        return await self._controlled(model, lambda c: c.model_config(model, version))

    async def model_metadata(self, model: str, version: str) -> dict[str, Any]:
        return await self._controlled(model, lambda c: c.model_metadata(model, version))

    async def repository_index(self) -> list[dict[str, Any]]:
        return await self._controlled(None, lambda c: c.repository_index())

    async def shm_regions(self) -> list[str]:
        with self._translating():
            return self._regions(await self._get().get_system_shared_memory_status(**self._json_kw, **self._shm_kw()))

    async def register_shm(self, name: str, key: str, byte_size: int) -> None:
        with self._translating():
            await self._get().register_system_shared_memory(name, key, byte_size, **self._shm_kw())

    async def unregister_shm(self, name: str) -> None:
        with self._translating():
            await self._get().unregister_system_shared_memory(name, **self._shm_kw())

    async def infer(self, target: InferTarget, array: np.ndarray, class_count: int = 0, slot: ShmSlot | None = None) -> np.ndarray:
        with _Translating(self, target.model):
            inp, out = self._build_request(target, array, class_count, slot)
            result = await self._get().infer(target.model, [inp], model_version=target.version, outputs=[out], **self._kw)
            return self._read_result(result, target, slot)

    async def close(self) -> None:
        client, self._aio = self._aio, None
        control, self._control = self._control, None
        if control is not None:
            control.close()
        if client is not None:
            await client.close()


class AioGrpcTransport(_GrpcWire, AsyncTritonTransport):
    def __init__(self, url: str, timeout_s: float, *, tls: GrpcTls | None = None, admin_key: str | None = None) -> None:
        super().__init__(url, timeout_s, tls=tls, admin_key=admin_key)
        self._load_module()
        import tritonclient.grpc.aio  # noqa: F401  (fails early when grpc support is missing)

        self._kw = {"client_timeout": timeout_s}

    def _make(self) -> Any:
        import tritonclient.grpc.aio as aio

        return aio.InferenceServerClient(self.url, **self._client_kwargs())


class AioHttpTransport(_HttpWire, AsyncTritonTransport):
    """tritonclient.http.aio (aiohttp); the session's total timeout is the client timeout."""

    def __init__(self, url: str, timeout_s: float, *, tls: GrpcTls | None = None, admin_key: str | None = None) -> None:
        super().__init__(url, timeout_s, tls=tls, admin_key=admin_key)
        self._load_module()
        import tritonclient.http.aio  # noqa: F401

    def _make(self) -> Any:
        import tritonclient.http.aio as aio

        return aio.InferenceServerClient(self.url, conn_timeout=self.timeout_s)


def make_transport(url: str, protocol: str, timeout_s: float, concurrency: int = 4, *, tls: GrpcTls | None = None,
                   admin_key: str | None = None) -> TritonTransport:
    """``tls``: gRPC over TLS (mutual with a client certificate); ``admin_key``: for the restricted
    shared-memory and repository-index calls of a server that has one."""
    address = parse_address(url, protocol)
    cls = GrpcTransport if address.protocol == "grpc" else HttpTransport
    return cls(address.url, timeout_s, concurrency, tls=tls, admin_key=admin_key)


def make_async_transport(url: str, protocol: str, timeout_s: float, *, tls: GrpcTls | None = None,
                         admin_key: str | None = None) -> AsyncTritonTransport:
    address = parse_address(url, protocol)
    cls = AioGrpcTransport if address.protocol == "grpc" else AioHttpTransport
    return cls(address.url, timeout_s, tls=tls, admin_key=admin_key)


def transport_for(settings: ClientSettings) -> TritonTransport:
    """The tritonclient transport a ``Client`` with these settings talks through."""
    return make_transport(settings.url, settings.protocol, settings.timeout_s, settings.concurrency, tls=settings.tls,
                          admin_key=settings.admin_key)


def async_transport_for(settings: ClientSettings) -> AsyncTritonTransport:
    """The tritonclient transport an ``AsyncClient`` with these settings talks through."""
    return make_async_transport(settings.url, settings.protocol, settings.timeout_s, tls=settings.tls, admin_key=settings.admin_key)
