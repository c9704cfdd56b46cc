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
above - the kind of failure comes from the shared table in ``sft_engine.triton.failures`` -
so that code using the client never has to know which protocol it speaks; the
original exception stays reachable as ``__cause__`` (callers ``raise ... from exc``).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from sft_engine.errors import SftEngineError
from sft_engine.triton.address import DEFAULT_PORTS
from sft_engine.triton.failures import FailureKind, classify_exception

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
    "unreachable",
    "never_ready",
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


def _where(url: str, protocol: str) -> str:
    return f"{protocol} server at {url}"


def _other_port(protocol: str) -> str:
    return f"{DEFAULT_PORTS['http']} for HTTP" if protocol == "http" else f"{DEFAULT_PORTS['grpc']} for gRPC"


def translate(exc: BaseException, *, url: str, protocol: str, model: str | None = None, timeout_s: float | None = None) -> ClientError | None:
    """The ClientError for a tritonclient/transport failure, or None when ``exc`` is not one.

    ``None`` means "a bug, not a transport failure": the caller re-raises ``exc`` as is.
    What kind of failure it is comes from the shared table (``sft_engine.triton.failures``);
    this function only words it for the client's caller.
    """
    if isinstance(exc, ClientError):
        return exc
    failure = classify_exception(exc)
    if failure is None:
        return None
    where = _where(url, protocol)
    what = f"model {model!r}" if model else "the request"
    kind, status = failure.kind, failure.status
    text = " ".join(failure.message.split())
    if kind is FailureKind.TIMEOUT:
        return RequestTimeout(
            f"{what} got no answer from the {where} within {timeout_s:g} s" if timeout_s else f"{what} timed out at the {where}: {text}",
            hint="raise the client timeout, or check the server's load", timeout_s=timeout_s, status=status,
        )
    if kind is FailureKind.MODEL_NOT_READY and model:
        return ModelNotReady(f"{what} is not ready at the {where}: {text}", hint="wait_until_ready(), or load the model", status=status)
    if kind in (FailureKind.UNAVAILABLE, FailureKind.MODEL_NOT_READY, FailureKind.OVERLOADED):
        if failure.wrong_protocol and status is None:
            return ServerUnavailable(
                f"the {where} does not speak HTTP ({text.split(':')[0]})",
                hint=f"is that the gRPC port? use gRPC (--protocol grpc; protocol='grpc' in Python), or the HTTP port (Triton's default is {_other_port('http')})",
            )
        hint = f"start the server (sft-engine serve), or check the URL and protocol (Triton's default port is {_other_port(protocol)})"
        if failure.wrong_protocol and protocol == "grpc":
            hint = f"is that the HTTP port? use HTTP (--protocol http; protocol='http' in Python), or the gRPC port (Triton's default is {_other_port('grpc')})"
        elif kind is FailureKind.OVERLOADED:
            hint = "the server sheds load (queue full or rate limited): retry later, or lower the load"
        return ServerUnavailable(f"cannot reach the {where}: {text}", hint=hint, status=status)
    if kind is FailureKind.MODEL_NOT_FOUND:
        return ModelNotFound(f"{text} (at the {where})", hint="check the model name and version: sft-engine serve lists what is loaded", status=status)
    if kind is FailureKind.INVALID:
        if status is None:  # tritonclient's own argument checks (raise_error without status)
            return BadInput(f"the request was not sent: {text}", hint="check the arguments", status=status)
        return BadInput(f"the server rejected the input: {text}", hint="match the model's input: its config is at GET /v2/models/NAME/config (client.model_config in Python)", status=status)
    return ServerSideError(f"{what} failed on the {where}: {text}", hint="read the server log; the message above is Triton's",
                           server_message=failure.message, status=status)


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


def unreachable(protocol: str, url: str, timeout_s: float) -> ServerUnavailable:
    """``wait_until_ready``'s verdict when nothing answered at the URL for the whole wait."""
    return ServerUnavailable(f"the {protocol} server at {url} did not answer within {timeout_s:g} s",
                             hint="start the server (sft-engine serve), or check the URL and protocol")


def never_ready(model: str, version: str, timeout_s: float, index: Iterable[Mapping[str, Any]] | None) -> ClientError:
    """``wait_until_ready``'s verdict when the server answered but never served the model.

    The repository index (None when it could not be read) tells an unknown model from
    one that is known but not loaded.
    """
    what = f"model {model!r}" + (f" version {version}" if version else "")
    err: ClientError = ModelNotFound(f"{what} did not become ready within {timeout_s:g} s")
    refined = refine_not_found(err, index, model, version)
    if refined is err:  # no index: say what we know
        return ModelNotReady(err.message, hint="check the server log; load the model or raise the timeout")
    return refined


def _version_key(v: str) -> tuple[int, str]:
    return (int(v), "") if v.isdigit() else (1 << 62, v)
