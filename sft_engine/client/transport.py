"""The one seam between the client and tritonclient: same calls over gRPC or HTTP, sync or asyncio.

Everything protocol-specific lives here - which tritonclient module, how timeouts
are passed (a per-call deadline for gRPC; socket timeouts for HTTP), how JSON
answers are shaped, how the HTTP client (not thread-safe) is kept one per thread -
and every failure leaves this module as a ``ClientError`` (``raise ... from`` the
original). The clients above only see ``Transport`` / ``AsyncTransport`` and numpy
arrays, so the protocols are interchangeable.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

import numpy as np

from sft_engine.client.errors import translate
from sft_engine.client.shm import ShmSlot
from sft_engine.triton.address import normalize_url

__all__ = [
    "InferTarget",
    "Transport",
    "AsyncTransport",
    "make_transport",
    "make_async_transport",
]

T = TypeVar("T")


@dataclass(frozen=True)
class InferTarget:
    """Where a request goes and which tensors it names; ``version`` "" = the server's latest."""

    model: str
    version: str
    input_name: str
    input_datatype: str
    output_name: str
    output_dtype: Any = np.float32


class _Base:
    protocol = ""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def _translated(self, exc: Exception, model: str | None) -> Exception:
        err = translate(exc, url=self.url, protocol=self.protocol, model=model, timeout_s=self.timeout_s)
        return exc if err is None else err


def _requested_output(module: Any, protocol: str, target: InferTarget, class_count: int) -> Any:
    if protocol == "http":
        return module.InferRequestedOutput(target.output_name, binary_data=True, class_count=class_count)
    return module.InferRequestedOutput(target.output_name, class_count=class_count)


def _build_request(module: Any, protocol: str, target: InferTarget, array: np.ndarray, class_count: int, slot: ShmSlot | None) -> tuple[Any, Any]:
    inp = module.InferInput(target.input_name, list(array.shape), target.input_datatype)
    out = _requested_output(module, protocol, target, class_count)
    if slot is None:
        if protocol == "http":
            inp.set_data_from_numpy(array, binary_data=True)
        else:
            inp.set_data_from_numpy(array)
    else:
        inp.set_shared_memory(slot.in_name, slot.write_input(array))
        out.set_shared_memory(slot.out_name, slot.out_bytes)
    return inp, out


def _read_result(result: Any, protocol: str, target: InferTarget, slot: ShmSlot | None) -> np.ndarray:
    if slot is None:
        array = result.as_numpy(target.output_name)
        if array is None:
            from sft_engine.client.errors import ServerSideError

            raise ServerSideError(f"the response of model {target.model!r} has no output {target.output_name!r}", hint="check the model's outputs")
        return array
    output = result.get_output(target.output_name)
    shape = output["shape"] if protocol == "http" else output.shape
    return slot.read_output(np.dtype(target.output_dtype), tuple(int(d) for d in shape))


# -- sync ---------------------------------------------------------------------------------


class Transport(_Base):
    """Blocking calls, safe from several threads at once, plus ``submit`` to send without waiting."""

    def __init__(self, url: str, timeout_s: float, concurrency: int = 4) -> None:
        super().__init__(url, timeout_s)
        self._lock = threading.Lock()
        self.concurrency = concurrency
        self._executor: ThreadPoolExecutor | None = None

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

    def _call(self, fn: Callable[[], T], model: str | None = None) -> T:
        try:
            return fn()
        except Exception as exc:
            err = self._translated(exc, model)
            if err is exc:
                raise
            raise err from exc

    # protocol specifics
    def _client(self) -> Any:
        raise NotImplementedError

    def _kw(self) -> dict[str, Any]:
        return {}

    def _module(self) -> Any:
        raise NotImplementedError

    # the calls
    def is_live(self) -> bool:
        return bool(self._call(lambda: self._client().is_server_live(**self._kw())))

    def is_ready(self) -> bool:
        return bool(self._call(lambda: self._client().is_server_ready(**self._kw())))

    def is_model_ready(self, model: str, version: str) -> bool:
        return bool(self._call(lambda: self._client().is_model_ready(model, version, **self._kw()), model))

    def model_config(self, model: str, version: str) -> dict[str, Any]:
        raise NotImplementedError

    def model_metadata(self, model: str, version: str) -> dict[str, Any]:
        raise NotImplementedError

    def repository_index(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def shm_regions(self) -> list[str]:
        """Names of the system shared memory regions registered with the server."""
        raise NotImplementedError

    def register_shm(self, name: str, key: str, byte_size: int) -> None:
        self._call(lambda: self._client().register_system_shared_memory(name, key, byte_size, **self._kw()))

    def unregister_shm(self, name: str) -> None:
        self._call(lambda: self._client().unregister_system_shared_memory(name, **self._kw()))

    def infer(self, target: InferTarget, array: np.ndarray, class_count: int = 0, slot: ShmSlot | None = None) -> np.ndarray:
        """One request; the output as numpy (BYTES when ``class_count`` > 0). The hot path: no closures."""
        protocol = self.protocol
        try:
            inp, out = _build_request(self._module(), protocol, target, array, class_count, slot)
            result = self._client().infer(target.model, [inp], model_version=target.version, outputs=[out], **self._kw())
            return _read_result(result, protocol, target, slot)
        except Exception as exc:
            err = self._translated(exc, target.model)
            if err is exc:
                raise
            raise err from exc

    def close(self) -> None:
        raise NotImplementedError


class GrpcTransport(Transport):
    """tritonclient.grpc: one channel shared by all threads (gRPC channels are thread-safe)."""

    protocol = "grpc"

    def __init__(self, url: str, timeout_s: float, concurrency: int = 4) -> None:
        super().__init__(url, timeout_s, concurrency)
        import tritonclient.grpc as grpcclient

        self._mod = grpcclient
        self._grpc = grpcclient.InferenceServerClient(url)
        self._timeout_kw = {"client_timeout": timeout_s}
        self._outputs: dict[str, Any] = {}

    def _client(self) -> Any:
        return self._grpc

    def _kw(self) -> dict[str, Any]:
        return self._timeout_kw

    def _module(self) -> Any:
        return self._mod

    def model_config(self, model: str, version: str) -> dict[str, Any]:
        answer = self._call(lambda: self._grpc.get_model_config(model, version, as_json=True, **self._kw()), model)
        return dict(answer.get("config", {}))

    def model_metadata(self, model: str, version: str) -> dict[str, Any]:
        return dict(self._call(lambda: self._grpc.get_model_metadata(model, version, as_json=True, **self._kw()), model))

    def repository_index(self) -> list[dict[str, Any]]:
        return list(self._call(lambda: self._grpc.get_model_repository_index(as_json=True, **self._kw())).get("models", []))

    def shm_regions(self) -> list[str]:
        status = self._call(lambda: self._grpc.get_system_shared_memory_status(as_json=True, **self._kw()))
        return sorted(status.get("regions", {}).keys())

    def infer(self, target: InferTarget, array: np.ndarray, class_count: int = 0, slot: ShmSlot | None = None) -> np.ndarray:
        """The plain request (no shared memory, no classification) without any detour: batch-1 latency pays it."""
        if slot is not None or class_count:
            return super().infer(target, array, class_count, slot)
        try:
            inp = self._mod.InferInput(target.input_name, array.shape, target.input_datatype)
            inp.set_data_from_numpy(array)
            result = self._grpc.infer(target.model, [inp], model_version=target.version, outputs=[self._output(target.output_name)],
                                      client_timeout=self.timeout_s)
            out = result.as_numpy(target.output_name)
        except Exception as exc:
            err = self._translated(exc, target.model)
            if err is exc:
                raise
            raise err from exc
        if out is None:
            return _read_result(result, "grpc", target, None)  # raises the missing-output error
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
                if error is not None:
                    raise error
                future.set_result(_read_result(result, "grpc", target, None))
            except Exception as exc:
                err = self._translated(exc, target.model)
                if err is not exc:
                    err.__cause__ = exc
                future.set_exception(err)

        try:
            inp, out = _build_request(self._mod, "grpc", target, array, 0, None)
            self._grpc.async_infer(target.model, [inp], done, model_version=target.version, outputs=[out], client_timeout=self.timeout_s)
        except Exception as exc:
            err = self._translated(exc, target.model)
            if err is exc:
                raise
            raise err from exc
        return future

    def close(self) -> None:
        self._shutdown()
        self._grpc.close()


class HttpTransport(Transport):
    """tritonclient.http: one client per thread, because that client is not thread-safe.

    Each thread keeps its own keep-alive connection, so requests sent concurrently
    from the client's worker threads do not queue behind one socket.
    """

    protocol = "http"

    def __init__(self, url: str, timeout_s: float, concurrency: int = 4) -> None:
        super().__init__(url, timeout_s, concurrency)
        import tritonclient.http as httpclient

        self._mod = httpclient
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

    def _module(self) -> Any:
        return self._mod

    def model_config(self, model: str, version: str) -> dict[str, Any]:
        return dict(self._call(lambda: self._client().get_model_config(model, version), model))

    def model_metadata(self, model: str, version: str) -> dict[str, Any]:
        return dict(self._call(lambda: self._client().get_model_metadata(model, version), model))

    def repository_index(self) -> list[dict[str, Any]]:
        return list(self._call(lambda: self._client().get_model_repository_index()))

    def shm_regions(self) -> list[str]:
        return sorted(str(r.get("name")) for r in self._call(lambda: self._client().get_system_shared_memory_status()))

    def close(self) -> None:
        self._shutdown()
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()


# -- asyncio -------------------------------------------------------------------------------


class AsyncTransport(_Base):
    """The asyncio twin of ``Transport``; the tritonclient client is made inside the running loop."""

    def __init__(self, url: str, timeout_s: float) -> None:
        super().__init__(url, timeout_s)
        self._aio: Any = None

    async def _call(self, fn: Callable[[Any], Awaitable[T]], model: str | None = None) -> T:
        try:
            return await fn(self._get())
        except Exception as exc:
            err = self._translated(exc, model)
            if err is exc:
                raise
            raise err from exc

    def _get(self) -> Any:
        if self._aio is None:
            self._aio = self._make()
        return self._aio

    def _make(self) -> Any:
        raise NotImplementedError

    def _kw(self) -> dict[str, Any]:
        return {}

    def _module(self) -> Any:
        raise NotImplementedError

    async def is_live(self) -> bool:
        return bool(await self._call(lambda c: c.is_server_live(**self._kw())))

    async def is_ready(self) -> bool:
        return bool(await self._call(lambda c: c.is_server_ready(**self._kw())))

    async def is_model_ready(self, model: str, version: str) -> bool:
        return bool(await self._call(lambda c: c.is_model_ready(model, version, **self._kw()), model))

    async def model_config(self, model: str, version: str) -> dict[str, Any]:
        raise NotImplementedError

    async def model_metadata(self, model: str, version: str) -> dict[str, Any]:
        raise NotImplementedError

    async def repository_index(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def shm_regions(self) -> list[str]:
        raise NotImplementedError

    async def register_shm(self, name: str, key: str, byte_size: int) -> None:
        await self._call(lambda c: c.register_system_shared_memory(name, key, byte_size, **self._kw()))

    async def unregister_shm(self, name: str) -> None:
        await self._call(lambda c: c.unregister_system_shared_memory(name, **self._kw()))

    async def infer(self, target: InferTarget, array: np.ndarray, class_count: int = 0, slot: ShmSlot | None = None) -> np.ndarray:
        module, protocol = self._module(), self.protocol

        async def run(client: Any) -> np.ndarray:
            inp, out = _build_request(module, protocol, target, array, class_count, slot)
            result = await client.infer(target.model, [inp], model_version=target.version, outputs=[out], **self._kw())
            return _read_result(result, protocol, target, slot)

        return await self._call(run, target.model)

    async def close(self) -> None:
        client, self._aio = self._aio, None
        if client is not None:
            await client.close()


class AioGrpcTransport(AsyncTransport):
    protocol = "grpc"

    def __init__(self, url: str, timeout_s: float) -> None:
        super().__init__(url, timeout_s)
        import tritonclient.grpc as grpcclient
        import tritonclient.grpc.aio  # noqa: F401  (fails early when grpc support is missing)

        self._mod = grpcclient
        self._timeout_kw = {"client_timeout": timeout_s}

    def _make(self) -> Any:
        import tritonclient.grpc.aio as aio

        return aio.InferenceServerClient(self.url)

    def _kw(self) -> dict[str, Any]:
        return self._timeout_kw

    def _module(self) -> Any:
        return self._mod

    async def model_config(self, model: str, version: str) -> dict[str, Any]:
        answer = await self._call(lambda c: c.get_model_config(model, version, as_json=True, **self._kw()), model)
        return dict(answer.get("config", {}))

    async def model_metadata(self, model: str, version: str) -> dict[str, Any]:
        return dict(await self._call(lambda c: c.get_model_metadata(model, version, as_json=True, **self._kw()), model))

    async def repository_index(self) -> list[dict[str, Any]]:
        return list((await self._call(lambda c: c.get_model_repository_index(as_json=True, **self._kw()))).get("models", []))

    async def shm_regions(self) -> list[str]:
        status = await self._call(lambda c: c.get_system_shared_memory_status(as_json=True, **self._kw()))
        return sorted(status.get("regions", {}).keys())


class AioHttpTransport(AsyncTransport):
    """tritonclient.http.aio (aiohttp); the session's total timeout is the client timeout."""

    protocol = "http"

    def __init__(self, url: str, timeout_s: float) -> None:
        super().__init__(url, timeout_s)
        import tritonclient.http as httpclient
        import tritonclient.http.aio  # noqa: F401

        self._mod = httpclient

    def _make(self) -> Any:
        import tritonclient.http.aio as aio

        return aio.InferenceServerClient(self.url, conn_timeout=self.timeout_s)

    def _module(self) -> Any:
        return self._mod

    async def model_config(self, model: str, version: str) -> dict[str, Any]:
        return dict(await self._call(lambda c: c.get_model_config(model, version), model))

    async def model_metadata(self, model: str, version: str) -> dict[str, Any]:
        return dict(await self._call(lambda c: c.get_model_metadata(model, version), model))

    async def repository_index(self) -> list[dict[str, Any]]:
        return list(await self._call(lambda c: c.get_model_repository_index()))

    async def shm_regions(self) -> list[str]:
        return sorted(str(r.get("name")) for r in await self._call(lambda c: c.get_system_shared_memory_status()))


def make_transport(url: str, protocol: str, timeout_s: float, concurrency: int = 4) -> Transport:
    url = normalize_url(url, protocol)
    return GrpcTransport(url, timeout_s, concurrency) if protocol == "grpc" else HttpTransport(url, timeout_s, concurrency)


def make_async_transport(url: str, protocol: str, timeout_s: float) -> AsyncTransport:
    url = normalize_url(url, protocol)
    return AioGrpcTransport(url, timeout_s) if protocol == "grpc" else AioHttpTransport(url, timeout_s)
