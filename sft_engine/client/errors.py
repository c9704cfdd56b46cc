"""The client's errors: one root, one class per thing a caller can act on.

    ClientError                 (an SftEngineError) anything the client met after construction
    ├── ServerUnavailable       nothing answers at the URL (refused, reset, wrong protocol) - transient
    ├── ModelNotFound           the server does not know the model, or not that version
    ├── ModelNotReady           the server knows the model but it is not loaded / still loading
    ├── BadInput                the tensor or image does not fit the model (caught before sending
    │                           when possible; the server's INVALID_ARGUMENT lands here too)
    ├── RequestTimeout          no answer within the client's timeout
    └── ServerSideError         the server or the model failed; Triton's message is preserved

tritonclient reports failures in several shapes depending on the protocol and the
failure: ``InferenceServerException`` with a gRPC status (``StatusCode.NOT_FOUND``) or
an HTTP status (``404``), bare ``ConnectionRefusedError`` / ``TimeoutError`` from the
HTTP stack, ``aiohttp`` errors from the asyncio HTTP client, and parse errors when an
HTTP client talks to a gRPC port. ``translate`` turns all of them into the classes
above so that code using the client never has to know which protocol it speaks; the
original exception stays reachable as ``__cause__`` (callers ``raise ... from exc``).
"""

from __future__ import annotations

import asyncio
import http.client
import socket
from typing import Any, Iterable, Mapping

from sft_engine.errors import SftEngineError

__all__ = [
    "ClientError",
    "ServerUnavailable",
    "ModelNotFound",
    "ModelNotReady",
    "BadInput",
    "RequestTimeout",
    "ServerSideError",
    "translate",
    "refine_not_found",
]


class ClientError(SftEngineError):
    """Root of every error the client raises once it is constructed.

    ``status`` is the transport's status string when the server answered (``"404"``,
    ``"StatusCode.INTERNAL"``), else ``None``; ``attempts`` is how many times the call
    was tried (more than 1 when the retry policy retried it).
    """

    def __init__(self, message: str, hint: str | None = None, *, status: str | None = None) -> None:
        super().__init__(message, hint)
        self.status = status
        self.attempts = 1


class ServerUnavailable(ClientError):
    """No server answers at the URL with the expected protocol; worth retrying later."""


class ModelNotFound(ClientError):
    """The server does not know this model, or not this version of it."""


class ModelNotReady(ClientError):
    """The model exists in the server's repository but cannot serve requests now."""


class BadInput(ClientError):
    """The input does not fit the model; ``expected`` and ``given`` say how."""

    def __init__(self, message: str, hint: str | None = None, *, expected: Any = None, given: Any = None, status: str | None = None) -> None:
        super().__init__(message, hint, status=status)
        self.expected = expected
        self.given = given


class RequestTimeout(ClientError):
    """The server did not answer within ``timeout_s`` seconds."""

    def __init__(self, message: str, hint: str | None = None, *, timeout_s: float | None = None, status: str | None = None) -> None:
        super().__init__(message, hint, status=status)
        self.timeout_s = timeout_s


class ServerSideError(ClientError):
    """The server or the model failed the request; ``server_message`` is Triton's own text."""

    def __init__(self, message: str, hint: str | None = None, *, server_message: str = "", status: str | None = None) -> None:
        super().__init__(message, hint, status=status)
        self.server_message = server_message


# -- translation ---------------------------------------------------------------------

_UNAVAILABLE = {"StatusCode.UNAVAILABLE", "502", "503", "504"}
_TIMEOUT = {"StatusCode.DEADLINE_EXCEEDED", "408"}
_NOT_FOUND = {"StatusCode.NOT_FOUND", "404"}
_INVALID = {"StatusCode.INVALID_ARGUMENT", "StatusCode.OUT_OF_RANGE", "StatusCode.FAILED_PRECONDITION", "400", "413"}


def _where(url: str, protocol: str) -> str:
    return f"{protocol} server at {url}"


def _other_port(protocol: str) -> str:
    return "8000 for HTTP" if protocol == "http" else "8001 for gRPC"


def translate(exc: BaseException, *, url: str, protocol: str, model: str | None = None, timeout_s: float | None = None) -> ClientError | None:
    """The ClientError for a tritonclient/transport failure, or None when ``exc`` is not one.

    ``None`` means "a bug, not a transport failure": the caller re-raises ``exc`` as is.
    """
    if isinstance(exc, ClientError):
        return exc
    where = _where(url, protocol)
    what = f"model {model!r}" if model else "the request"
    # Timeouts first: TimeoutError is an OSError, and aiohttp's ServerTimeoutError is a connection error.
    if isinstance(exc, (TimeoutError, socket.timeout, asyncio.TimeoutError)) or _is_gevent_timeout(exc):
        return RequestTimeout(
            f"{what} got no answer from the {where} within {timeout_s:g} s" if timeout_s else f"{what} timed out at the {where}",
            hint="raise the client timeout, or check the server's load",
            timeout_s=timeout_s,
        )
    status, message = _status_and_message(exc)
    if status is not None or _is_inference_server_exception(exc):
        return _from_status(status, message, where=where, what=what, protocol=protocol, model=model, timeout_s=timeout_s)
    if isinstance(exc, http.client.HTTPException) or type(exc).__name__ == "HTTPParseError":
        return ServerUnavailable(
            f"the {where} does not speak HTTP ({exc.__class__.__name__})",
            hint=f"is that the gRPC port? use protocol='grpc', or the HTTP port (Triton's default is {_other_port('http')})",
        )
    if isinstance(exc, (ConnectionError, OSError)) or _is_aiohttp_connection_error(exc):
        reason = str(exc) or exc.__class__.__name__
        return ServerUnavailable(
            f"cannot reach the {where}: {reason}",
            hint=f"start the server (sft-engine serve), or check the URL and protocol (Triton's default port is {_other_port(protocol)})",
        )
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


def _is_inference_server_exception(exc: BaseException) -> bool:
    return type(exc).__name__ == "InferenceServerException"


def _is_gevent_timeout(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("gevent") and "Timeout" in type(exc).__name__


def _is_aiohttp_connection_error(exc: BaseException) -> bool:
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp comes with tritonclient[http]
        return False
    return isinstance(exc, aiohttp.ClientConnectionError)


def _from_status(status: str | None, message: str, *, where: str, what: str, protocol: str, model: str | None, timeout_s: float | None) -> ClientError:
    text = " ".join(message.split())
    if status in _TIMEOUT or text == "failed to obtain inference response":
        return RequestTimeout(f"{what} got no answer from the {where} within {timeout_s:g} s" if timeout_s else f"{what} timed out: {text}",
                              hint="raise the client timeout, or check the server's load", timeout_s=timeout_s, status=status)
    if status in _UNAVAILABLE:
        lowered = text.lower()
        if model and "model" in lowered and ("not ready" in lowered or "unavailable" in lowered):
            return ModelNotReady(f"{what} is not ready at the {where}: {text}", hint="wait_until_ready(), or load the model", status=status)
        hint = f"start the server (sft-engine serve), or check the URL and protocol (Triton's default port is {_other_port(protocol)})"
        if "socket closed" in lowered and protocol == "grpc":
            hint = f"is that the HTTP port? use protocol='http', or the gRPC port (Triton's default is {_other_port('grpc')})"
        return ServerUnavailable(f"cannot reach the {where}: {text}", hint=hint, status=status)
    if status in _NOT_FOUND:
        return ModelNotFound(f"{text} (at the {where})", hint="check the model name and version: sft-engine serve lists what is loaded", status=status)
    if status in _INVALID:
        return BadInput(f"the server rejected the input: {text}", hint="match the model's input (see client.model_config)", status=status)
    if status is None:  # tritonclient's own argument checks (raise_error without status)
        return BadInput(f"the request was not sent: {text}", hint="check the arguments", status=status)
    return ServerSideError(f"{what} failed on the {where}: {text}", hint="read the server log; the message above is Triton's",
                           server_message=message, status=status)


def refine_not_found(err: ClientError, index: Iterable[Mapping[str, Any]] | None, model: str, version: str) -> ClientError:
    """Tell "unknown model" from "known but not loaded" using the repository index.

    Triton answers NOT_FOUND for both; its repository index lists every model of the
    repository with its state (in explicit or poll model-control mode also the
    models that are not loaded), which is what the caller needs to know to fix it.
    """
    if not isinstance(err, ModelNotFound) or index is None:
        return err
    entries = [dict(e) for e in index]
    mine = [e for e in entries if e.get("name") == model]
    if not mine:
        names = sorted({str(e.get("name")) for e in entries if e.get("name")})
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") if names else "none"
        new: ClientError = ModelNotFound(f"model {model!r} is not in the server's repository", hint=f"models there: {shown}", status=err.status)
    else:
        ready = sorted({str(e.get("version")) for e in mine if e.get("state") == "READY" and e.get("version")}, key=_version_key)
        if version and ready and version not in ready:
            new = ModelNotFound(f"model {model!r} has no version {version} loaded", hint=f"ready versions: {', '.join(ready)} (or omit the version for the latest)", status=err.status)
        else:
            states = "; ".join((f"version {e['version']} " if e.get("version") else "") + (e.get("state") or "not loaded")
                               + (f" ({e['reason']})" if e.get("reason") else "") for e in mine)
            new = ModelNotReady(f"model {model!r} is in the repository but not ready: {states}",
                                hint="load it (POST /v2/repository/models/NAME/load in explicit mode) or wait_until_ready()", status=err.status)
    new.attempts = err.attempts
    return new


def _version_key(v: str) -> tuple[int, str]:
    return (int(v), "") if v.isdigit() else (1 << 62, v)
