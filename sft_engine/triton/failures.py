"""The one table of what a failed Triton call means, whatever protocol or library reported it.

Triton and its client libraries report the same failure in several shapes: a gRPC
status (``StatusCode.NOT_FOUND``), an HTTP status (``400`` with the reason in the body),
an ``InferenceServerException`` carrying either, a bare ``ConnectionRefusedError`` or
``TimeoutError``, an ``aiohttp`` or ``urllib`` error. Every part that talks to a server
(the client, the load test, the operations commands) needs the same answer to "what
kind of failure is this?", so it is decided here once, as a ``FailureKind``; each part
then maps the kind to what it reports (a ``ClientError`` class, a load-test status
code, a control-plane error).

Two facts need the message, not only the status: Triton answers a request for an
unknown model with gRPC ``UNAVAILABLE`` / HTTP ``400`` ("Request for unknown model"),
and a known model that is not loaded with ``UNAVAILABLE`` too ("... is not ready").
"""

from __future__ import annotations

import asyncio
import enum
import http.client
import socket
import urllib.error
from dataclasses import dataclass

__all__ = [
    "FailureKind", "Failure", "GRPC_KINDS", "kind_of_grpc", "kind_of_http", "classify_status", "classify_exception",
    "is_unknown_model",
]


class FailureKind(str, enum.Enum):
    """What went wrong, in the terms a caller acts on."""

    TIMEOUT = "timeout"                   #: no answer within the deadline
    UNAVAILABLE = "unavailable"           #: nothing (or not the expected protocol) answers at the address
    OVERLOADED = "overloaded"             #: the server sheds load (queue full, rate limited): try again later
    MODEL_NOT_FOUND = "model_not_found"   #: the server does not know this model or version
    MODEL_NOT_READY = "model_not_ready"   #: known, but not loaded / still loading
    INVALID = "invalid"                   #: the request does not fit the model (shape, type, batch size)
    REFUSED = "refused"                   #: the server refuses the call itself (not implemented, not allowed)
    SERVER_ERROR = "server_error"         #: the server or the model failed
    CANCELLED = "cancelled"               #: the call was cancelled before an answer came
    OTHER = "other"                       #: a transport failure of no known kind

    @property
    def transient(self) -> bool:
        """Whether the same call may succeed later without any change."""
        return self in (FailureKind.UNAVAILABLE, FailureKind.OVERLOADED, FailureKind.TIMEOUT)


K = FailureKind
#: gRPC status code name -> kind (Triton's own errors and the gRPC library's)
GRPC_KINDS: dict[str, FailureKind] = {
    "DEADLINE_EXCEEDED": K.TIMEOUT,
    "UNAVAILABLE": K.UNAVAILABLE,
    "NOT_FOUND": K.MODEL_NOT_FOUND,
    "INVALID_ARGUMENT": K.INVALID, "OUT_OF_RANGE": K.INVALID, "FAILED_PRECONDITION": K.INVALID,
    "UNIMPLEMENTED": K.REFUSED, "PERMISSION_DENIED": K.REFUSED, "UNAUTHENTICATED": K.REFUSED, "ALREADY_EXISTS": K.REFUSED,
    "RESOURCE_EXHAUSTED": K.OVERLOADED,
    "INTERNAL": K.SERVER_ERROR, "UNKNOWN": K.SERVER_ERROR, "DATA_LOSS": K.SERVER_ERROR, "ABORTED": K.SERVER_ERROR,
    "CANCELLED": K.CANCELLED,
}
_HTTP_KINDS: dict[int, FailureKind] = {
    400: K.INVALID, 413: K.INVALID, 404: K.MODEL_NOT_FOUND, 408: K.TIMEOUT,
    429: K.OVERLOADED, 503: K.OVERLOADED, 502: K.UNAVAILABLE, 504: K.UNAVAILABLE,
}


def is_unknown_model(message: str) -> bool:
    """Triton's words for a model (or version) it does not know, in any protocol."""
    text = message.lower()
    return "unknown model" in text or ("model" in text and "is not found" in text)


def _is_not_ready(message: str) -> bool:
    text = message.lower()
    return "model" in text and ("not ready" in text or "unavailable" in text)


def kind_of_grpc(code_name: str) -> FailureKind:
    """The kind of a gRPC status by its name (``"UNAVAILABLE"``, ``"StatusCode.UNAVAILABLE"``)."""
    return GRPC_KINDS.get(code_name.rsplit(".", 1)[-1], K.OTHER)


def kind_of_http(status: int) -> FailureKind:
    """The kind of an HTTP status other than 200."""
    kind = _HTTP_KINDS.get(status)
    if kind is not None:
        return kind
    if 400 <= status < 500:
        return K.REFUSED
    return K.SERVER_ERROR


def classify_status(status: str | int | None, message: str = "") -> FailureKind:
    """The kind of a failure the server answered: its status (gRPC name or HTTP code) and message.

    ``status`` None is a tritonclient-side failure without a status: its timeout
    ("failed to obtain inference response") or its own argument checks.
    """
    text = " ".join(str(message).split())
    if status is None or str(status) in ("", "None"):
        return K.TIMEOUT if text == "failed to obtain inference response" else K.INVALID
    code = str(status)
    kind = kind_of_http(int(code)) if code.isdigit() else kind_of_grpc(code)
    if kind in (K.UNAVAILABLE, K.INVALID, K.MODEL_NOT_FOUND, K.OVERLOADED) and is_unknown_model(text):
        return K.MODEL_NOT_FOUND
    if kind is K.UNAVAILABLE and _is_not_ready(text):
        return K.MODEL_NOT_READY
    if kind is K.UNAVAILABLE and "is restricted, expecting header" in text:  # gRPC answers a missing admin key so
        return K.REFUSED
    return kind


@dataclass(frozen=True)
class Failure:
    """A classified failure: its kind, the status the server sent (if any) and its text.

    ``wrong_protocol`` says an HTTP client met something that is not HTTP (a gRPC
    port), or a gRPC client's connection was closed at once (an HTTP port).
    """

    kind: FailureKind
    message: str
    status: str | None = None
    wrong_protocol: bool = False


def classify_exception(exc: BaseException) -> Failure | None:
    """The Failure behind an exception from a Triton call, or None when ``exc`` is not one (a bug).

    An error that already carries a ``FailureKind`` (the control client's ``ControlError``)
    keeps it.
    """
    kind = getattr(exc, "kind", None)
    if isinstance(kind, FailureKind):
        return Failure(kind, str(getattr(exc, "server_message", "") or exc), getattr(exc, "status", None),
                       bool(getattr(exc, "wrong_protocol", False)))
    if isinstance(exc, urllib.error.HTTPError):
        return Failure(classify_status(exc.code, exc.reason or ""), str(exc.reason or exc), str(exc.code))
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    # timeouts first: TimeoutError is an OSError, and aiohttp's ServerTimeoutError a connection error
    if isinstance(exc, (TimeoutError, socket.timeout, asyncio.TimeoutError)) or _is_gevent_timeout(exc):
        return Failure(K.TIMEOUT, str(exc) or "timed out")
    status, message = _status_and_message(exc)
    if status is not None or type(exc).__name__ == "InferenceServerException":
        wrong = status is not None and kind_of_grpc(status) is K.UNAVAILABLE and "socket closed" in message.lower()
        return Failure(classify_status(status, message), message, status, wrong_protocol=wrong)
    if isinstance(exc, http.client.HTTPException) or type(exc).__name__ == "HTTPParseError":
        return Failure(K.UNAVAILABLE, f"{type(exc).__name__}: {exc}", wrong_protocol=True)
    if isinstance(exc, (ConnectionError, OSError, urllib.error.URLError)) or _is_aiohttp_connection_error(exc):
        return Failure(K.UNAVAILABLE, str(exc) or type(exc).__name__)
    if _is_aiohttp_error(exc):
        return Failure(K.OTHER, f"{type(exc).__name__}: {exc}")
    return None


def _status_and_message(exc: BaseException) -> tuple[str | None, str]:
    status_fn = getattr(exc, "status", None)
    message_fn = getattr(exc, "message", None)
    status = status_fn() if callable(status_fn) else None
    message = message_fn() if callable(message_fn) else str(exc)
    code_fn = getattr(exc, "code", None)  # a raw grpc.RpcError that escaped tritonclient
    if status is None and callable(code_fn) and callable(getattr(exc, "details", None)):
        try:
            status = str(code_fn())
            message = str(exc.details())  # type: ignore[attr-defined]
        except Exception:  # pragma: no cover - defensive: not an RpcError after all
            status = None
    return (str(status) if status is not None else None), str(message or "")


def _is_gevent_timeout(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("gevent") and "Timeout" in type(exc).__name__


def _is_aiohttp_connection_error(exc: BaseException) -> bool:
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp comes with tritonclient[http]
        return False
    return isinstance(exc, aiohttp.ClientConnectionError)


def _is_aiohttp_error(exc: BaseException) -> bool:
    try:
        import aiohttp
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, aiohttp.ClientError)
