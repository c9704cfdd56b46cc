"""The hot path: send the prebuilt request and classify the outcome, asynchronously.

gRPC: one ``grpc.aio`` channel per endpoint (the transport of tritonclient.grpc.aio),
calling Triton's ``ModelInfer`` with the request already serialized and the response
left as bytes - no protobuf work per request. A successful RPC is a success; Triton
reports failures as gRPC status codes.

HTTP: one ``aiohttp`` session (the transport of tritonclient.http.aio) posting the
prebuilt binary-tensor body; the response body is read and dropped.

Every outcome maps to one small integer (``OK``, ``TIMEOUT`` ...) so workers store
it in a byte array; the first message of each kind is kept for the report.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

from sft_engine.loadtest.config import Endpoint
from sft_engine.loadtest.payload import Payload
from sft_engine.loadtest.probe import GRPC_INFER_METHOD

__all__ = [
    "OK", "TIMEOUT", "UNAVAILABLE", "REJECTED", "SERVER_ERROR", "OVERLOADED", "CANCELLED", "UNFINISHED", "OTHER",
    "STATUS_NAMES", "SLOW_STATUSES", "Transport", "GrpcTransport", "HttpTransport", "make_transport",
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


class Transport:
    """Sends the payload to endpoint ``i``; returns a status code, never raises for a failed request."""

    def __init__(self, endpoints: Sequence[Endpoint], payload: Payload, timeout_s: float | None) -> None:
        self.endpoints = list(endpoints)
        self.payload = payload
        self.timeout_s = timeout_s
        #: first message seen for each failure kind
        self.examples: dict[int, str] = {}

    async def start(self) -> None:
        raise NotImplementedError

    async def send(self, endpoint_index: int) -> int:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def _note(self, status: int, message: str) -> int:
        if status not in self.examples:
            self.examples[status] = message[:300]
        return status


class GrpcTransport(Transport):
    async def start(self) -> None:
        import grpc

        self._grpc = grpc
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self._channels = [grpc.aio.insecure_channel(ep.url, options=options) for ep in self.endpoints]
        self._calls = [ch.unary_unary(GRPC_INFER_METHOD) for ch in self._channels]
        self._body = self.payload.grpc_request
        sc = grpc.StatusCode
        self._kinds = {
            sc.DEADLINE_EXCEEDED: TIMEOUT,
            sc.UNAVAILABLE: UNAVAILABLE,
            sc.INVALID_ARGUMENT: REJECTED, sc.NOT_FOUND: REJECTED, sc.FAILED_PRECONDITION: REJECTED,
            sc.UNIMPLEMENTED: REJECTED, sc.OUT_OF_RANGE: REJECTED, sc.PERMISSION_DENIED: REJECTED,
            sc.UNAUTHENTICATED: REJECTED,
            sc.RESOURCE_EXHAUSTED: OVERLOADED,
            sc.INTERNAL: SERVER_ERROR, sc.UNKNOWN: SERVER_ERROR, sc.DATA_LOSS: SERVER_ERROR,
            sc.CANCELLED: CANCELLED, sc.ABORTED: SERVER_ERROR,
        }

    async def send(self, endpoint_index: int) -> int:
        try:
            await self._calls[endpoint_index](self._body, timeout=self.timeout_s)
            return OK
        except self._grpc.aio.AioRpcError as exc:
            code = exc.code()
            status = self._kinds.get(code, OTHER)
            if status == UNAVAILABLE and "unknown model" in (exc.details() or "").lower():
                status = REJECTED
            return self._note(status, f"{code.name}: {exc.details()}")

    async def close(self) -> None:
        for ch in getattr(self, "_channels", []):
            await ch.close(grace=None)


class HttpTransport(Transport):
    async def start(self) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=False), timeout=timeout)
        self._urls = [f"http://{ep.url}{self.payload.http_path}" for ep in self.endpoints]
        self._body = self.payload.http_body
        self._headers = dict(self.payload.http_headers)

    async def send(self, endpoint_index: int) -> int:
        aiohttp = self._aiohttp
        try:
            async with self._session.post(self._urls[endpoint_index], data=self._body, headers=self._headers) as resp:
                body = await resp.read()
                if resp.status == 200:
                    return OK
                status = resp.status
            text = body[:300].decode(errors="replace")
            if status in (429, 503):
                return self._note(OVERLOADED, f"HTTP {status}: {text}")
            if 400 <= status < 500:
                return self._note(REJECTED, f"HTTP {status}: {text}")
            return self._note(SERVER_ERROR, f"HTTP {status}: {text}")
        except asyncio.TimeoutError:
            return self._note(TIMEOUT, f"no response within {self.timeout_s:g} s")
        except (aiohttp.ClientConnectionError, ConnectionError) as exc:
            return self._note(UNAVAILABLE, f"{type(exc).__name__}: {exc}")
        except aiohttp.ClientError as exc:
            return self._note(OTHER, f"{type(exc).__name__}: {exc}")

    async def close(self) -> None:
        session: Any = getattr(self, "_session", None)
        if session is not None:
            await session.close()


def make_transport(endpoints: Sequence[Endpoint], payload: Payload, timeout_s: float | None) -> Transport:
    cls = GrpcTransport if endpoints[0].protocol == "grpc" else HttpTransport
    return cls(endpoints, payload, timeout_s)
