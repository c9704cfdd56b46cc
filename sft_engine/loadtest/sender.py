"""The hot path: send the prebuilt request and classify the outcome, asynchronously.

gRPC: one ``grpc.aio`` channel per endpoint (the transport of tritonclient.grpc.aio),
calling Triton's ``ModelInfer`` with the request already serialized and the response
left as bytes - no protobuf work per request. A successful RPC is a success; Triton
reports failures as gRPC status codes.

HTTP: one ``aiohttp`` session (the transport of tritonclient.http.aio) posting the
prebuilt binary-tensor body; the response body is read and dropped.

``--transport tritonclient`` sends through tritonclient's own asyncio clients instead
(``tritonclient.grpc.aio`` / ``tritonclient.http.aio``, ``infer()`` with InferInputs
built once): the reference path, to cross-check the harness against the stock client.
It spends more CPU per request, as ``infer()`` rebuilds the request on every call.

Every outcome maps to one small integer (``OK``, ``TIMEOUT`` ...) so workers store
it in a byte array; the first message of each kind is kept for the report. What a
failure *is* comes from the shared table (``sft_engine.triton.failures``), the same
one the client and the operations commands use; ``STATUS_OF_KIND`` folds its kinds
into the load test's few report categories.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Sequence

from sft_engine.loadtest.config import Endpoint
from sft_engine.loadtest.payload import Payload
from sft_engine.triton.control import GRPC_INFER_METHOD
from sft_engine.triton.failures import FailureKind, classify_exception, classify_status
from sft_engine.triton.security import GrpcTls

__all__ = [
    "OK", "TIMEOUT", "UNAVAILABLE", "REJECTED", "SERVER_ERROR", "OVERLOADED", "CANCELLED", "UNFINISHED", "OTHER",
    "STATUS_NAMES", "STATUS_OF_KIND", "SLOW_STATUSES", "Sender", "GrpcSender", "HttpSender", "TritonClientSender",
    "make_sender",
]

OK, TIMEOUT, UNAVAILABLE, REJECTED, SERVER_ERROR, OVERLOADED, CANCELLED, UNFINISHED, OTHER = range(9)
#: names used in reports (errors by kind)
STATUS_NAMES = {
    OK: "ok", TIMEOUT: "timeout", UNAVAILABLE: "unavailable", REJECTED: "rejected", SERVER_ERROR: "server_error",
    OVERLOADED: "overloaded", CANCELLED: "aborted", UNFINISHED: "unfinished", OTHER: "other",
}
#: outcomes whose latency is recorded: successes, and failures *because* they were slow
#: (a timeout at the timeout value, a request still unanswered when the drain ended).
#: Fast failures (refused, rejected) are counted as errors but would flatter the tail.
SLOW_STATUSES = (OK, TIMEOUT, UNFINISHED)
#: failure kind -> report category. A model the server does not know (or will not
#: take the request for) is the request's fault: rejected. A model that is not ready
#: counts as unavailable, like a server that does not answer.
STATUS_OF_KIND = {
    FailureKind.TIMEOUT: TIMEOUT, FailureKind.UNAVAILABLE: UNAVAILABLE, FailureKind.MODEL_NOT_READY: UNAVAILABLE,
    FailureKind.OVERLOADED: OVERLOADED, FailureKind.MODEL_NOT_FOUND: REJECTED, FailureKind.INVALID: REJECTED,
    FailureKind.REFUSED: REJECTED, FailureKind.SERVER_ERROR: SERVER_ERROR, FailureKind.CANCELLED: CANCELLED,
    FailureKind.OTHER: OTHER,
}


class Sender:
    """Sends the payload to endpoint ``i``; returns a status code, never raises for a failed request."""

    def __init__(self, endpoints: Sequence[Endpoint], payload: Payload, timeout_s: float | None, max_connections: int = 4096,
                 tls: GrpcTls | None = None) -> None:
        self.endpoints = list(endpoints)
        self.tls = tls
        self.payload = payload
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        #: first message seen for each failure kind
        self.examples: dict[int, str] = {}

    async def start(self) -> None:
        raise NotImplementedError

    async def send(self, endpoint_index: int) -> int:
        raise NotImplementedError

    async def connect(self, endpoint_index: int, timeout_s: float = 10.0) -> str | None:
        """Open the connection to an endpoint before any timed request; an error text, or None."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def _note(self, status: int, message: str) -> int:
        if status not in self.examples:
            self.examples[status] = message[:300]
        return status


class GrpcSender(Sender):
    async def start(self) -> None:
        import grpc

        self._grpc = grpc
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        if self.tls is not None:
            credentials = self.tls.channel_credentials()
            self._channels = [grpc.aio.secure_channel(ep.url, credentials, options=options) for ep in self.endpoints]
        else:
            self._channels = [grpc.aio.insecure_channel(ep.url, options=options) for ep in self.endpoints]
        self._calls = [ch.unary_unary(GRPC_INFER_METHOD) for ch in self._channels]
        self._body = self.payload.grpc_request
        self._bodies = [p.grpc_request for p in self.payload.variants]  # --images: one per file, sent in turn
        self._turn = 0

    async def send(self, endpoint_index: int) -> int:
        body = self._body
        if len(self._bodies) > 1:
            self._turn = (self._turn + 1) % len(self._bodies)
            body = self._bodies[self._turn]
        try:
            await self._calls[endpoint_index](body, timeout=self.timeout_s)
            return OK
        except self._grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            return self._note(STATUS_OF_KIND[classify_status(code.name, details)], f"{code.name}: {details}")

    async def connect(self, endpoint_index: int, timeout_s: float = 10.0) -> str | None:
        try:
            await asyncio.wait_for(self._channels[endpoint_index].channel_ready(), timeout_s)
        except asyncio.TimeoutError:
            return f"no gRPC connection to {self.endpoints[endpoint_index].url} within {timeout_s:g} s"
        return None

    async def close(self) -> None:
        for ch in getattr(self, "_channels", []):
            await ch.close(grace=None)


class HttpSender(Sender):
    async def start(self) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        # one connection per request in flight, within the file-descriptor limit (beyond it
        # requests wait for a connection - still timed from their intended send)
        connector = aiohttp.TCPConnector(limit=_connection_limit(self.max_connections), force_close=False)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        self._urls = [f"http://{ep.url}{self.payload.http_path}" for ep in self.endpoints]
        self._body = self.payload.http_body
        self._headers = dict(self.payload.http_headers)
        self._bodies = [(p.http_body, dict(p.http_headers)) for p in self.payload.variants]  # --images: one per file, in turn
        self._turn = 0

    async def send(self, endpoint_index: int) -> int:
        aiohttp = self._aiohttp
        body, headers = self._body, self._headers
        if len(self._bodies) > 1:
            self._turn = (self._turn + 1) % len(self._bodies)
            body, headers = self._bodies[self._turn]
        try:
            async with self._session.post(self._urls[endpoint_index], data=body, headers=headers) as resp:
                body = await resp.read()
                if resp.status == 200:
                    return OK
                status = resp.status
            text = body[:300].decode(errors="replace")
            return self._note(STATUS_OF_KIND[classify_status(status, text)], f"HTTP {status}: {text}")
        except asyncio.TimeoutError:
            return self._note(TIMEOUT, f"no response within {self.timeout_s:g} s")
        except (aiohttp.ClientConnectionError, ConnectionError) as exc:
            return self._note(UNAVAILABLE, f"{type(exc).__name__}: {exc}")
        except aiohttp.ClientError as exc:
            return self._note(OTHER, f"{type(exc).__name__}: {exc}")

    async def connect(self, endpoint_index: int, timeout_s: float = 10.0) -> str | None:
        url = f"http://{self.endpoints[endpoint_index].url}/v2/health/live"
        try:
            async with self._session.get(url, timeout=self._aiohttp.ClientTimeout(total=timeout_s)) as resp:
                await resp.read()
                return None if resp.status == 200 else f"{url} answered HTTP {resp.status}"
        except (asyncio.TimeoutError, self._aiohttp.ClientError, OSError) as exc:
            return f"{url}: {type(exc).__name__}: {exc}"

    async def close(self) -> None:
        session: Any = getattr(self, "_session", None)
        if session is not None:
            await session.close()


class TritonClientSender(Sender):
    """tritonclient's asyncio ``InferenceServerClient.infer`` per request (gRPC or HTTP)."""

    async def start(self) -> None:
        import numpy as np
        from tritonclient.grpc import service_pb2
        from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

        self._grpc = self.endpoints[0].protocol == "grpc"
        if self._grpc:
            import tritonclient.grpc.aio as client_mod
        else:
            import tritonclient.http.aio as client_mod
        request = service_pb2.ModelInferRequest.FromString(self.payload.grpc_request)
        self._inputs = []
        for tensor, raw in zip(request.inputs, request.raw_input_contents):
            shape = list(tensor.shape)
            if tensor.datatype == "BYTES":
                array = deserialize_bytes_tensor(raw).reshape(shape)
            else:
                array = np.frombuffer(raw, dtype=triton_to_np_dtype(tensor.datatype)).reshape(shape)
            inp = client_mod.InferInput(tensor.name, shape, tensor.datatype)
            if self._grpc:
                inp.set_data_from_numpy(array)
            else:
                inp.set_data_from_numpy(array, binary_data=True)
            self._inputs.append(inp)
        self._outputs = None
        if not self._grpc:
            header_len = int(self.payload.http_headers["Inference-Header-Content-Length"])
            names = [o["name"] for o in json.loads(self.payload.http_body[:header_len]).get("outputs", [])]
            self._outputs = [client_mod.InferRequestedOutput(name, binary_data=True) for name in names] or None
            self._clients = [client_mod.InferenceServerClient(ep.url, conn_limit=_connection_limit(self.max_connections))
                             for ep in self.endpoints]
        else:
            tls = self.tls.tritonclient_kwargs() if self.tls is not None else {}
            self._clients = [client_mod.InferenceServerClient(ep.url, **tls) for ep in self.endpoints]

    async def send(self, endpoint_index: int) -> int:
        client = self._clients[endpoint_index]
        try:
            if self._grpc:
                await client.infer(self.payload.model, self._inputs, model_version=self.payload.version, client_timeout=self.timeout_s)
            elif self.timeout_s:
                await asyncio.wait_for(client.infer(self.payload.model, self._inputs, model_version=self.payload.version,
                                                    outputs=self._outputs), self.timeout_s)
            else:
                await client.infer(self.payload.model, self._inputs, model_version=self.payload.version, outputs=self._outputs)
            return OK
        except asyncio.TimeoutError:
            return self._note(TIMEOUT, f"no response within {self.timeout_s:g} s")
        except Exception as exc:  # noqa: BLE001 - tritonclient and aiohttp errors alike, classified by the shared table
            failure = classify_exception(exc)
            if failure is None:
                return self._note(OTHER, f"{type(exc).__name__}: {exc}")
            label = failure.status or type(exc).__name__
            return self._note(STATUS_OF_KIND[failure.kind], f"{label}: {failure.message}")

    async def connect(self, endpoint_index: int, timeout_s: float = 10.0) -> str | None:
        try:
            live = await asyncio.wait_for(self._clients[endpoint_index].is_server_live(), timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure means "not connected", with its text
            return f"{self.endpoints[endpoint_index].url}: {type(exc).__name__}: {exc}"
        return None if live else f"{self.endpoints[endpoint_index].url} is not live"

    async def close(self) -> None:
        for client in getattr(self, "_clients", []):
            await client.close()


def _connection_limit(wanted: int) -> int:
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, ValueError, OSError):
        return max(1, wanted)
    if soft == resource.RLIM_INFINITY:
        return max(1, wanted)
    return max(1, min(wanted, soft - 64))


def make_sender(
    endpoints: Sequence[Endpoint], payload: Payload, timeout_s: float | None, max_connections: int = 4096, kind: str = "raw",
    tls: GrpcTls | None = None,
) -> Sender:
    cls: type[Sender]
    if kind == "tritonclient":
        cls = TritonClientSender
    else:
        cls = GrpcSender if endpoints[0].protocol == "grpc" else HttpSender
    return cls(endpoints, payload, timeout_s, max_connections, tls)
