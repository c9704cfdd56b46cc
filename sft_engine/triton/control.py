"""The control plane of one Triton server: health, readiness, model config, load/unload, statistics.

Everything but inference that more than one part asks a server: the server launcher
waits for readiness, the operations commands load and unload models and read the
repository index, the load test reads the model's config and statistics at window
edges, the client reads the model's config. One client, two protocols:

* HTTP through ``urllib`` - no extra dependency, no event loop, safe from any thread
  (one short connection per call: these calls are rare);
* gRPC through tritonclient's synchronous client (its channel is thread-safe).

Every call has a timeout (``timeout_s``; loading a model ``load_timeout_s``), and every
failure is a ``ControlError`` whose ``kind`` comes from the one failure table
(``sft_engine.triton.failures``), so a dead server is an error in about a second,
never a hang, and callers branch on the kind rather than on the text.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any, Callable, Mapping, TypeVar

from sft_engine.errors import ServerError
from sft_engine.triton.address import Address, parse_address
from sft_engine.triton.failures import FailureKind, classify_exception, classify_status
from sft_engine.triton.model import model_path, normalize_config
from sft_engine.triton.security import GrpcTls, admin_headers

__all__ = ["ControlError", "ControlClient", "HttpControl", "GrpcControl", "make_control", "GRPC_INFER_METHOD"]

LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

#: the full name of Triton's gRPC inference method (for raw calls on a plain channel)
GRPC_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"


class ControlError(ServerError):
    """A control-plane call failed; ``kind`` says how, ``server_message`` is the server's own text."""

    def __init__(self, kind: FailureKind, message: str, hint: str | None = None, *, status: str | None = None,
                 server_message: str = "", wrong_protocol: bool = False) -> None:
        super().__init__(message, hint)
        self.kind = kind
        self.status = status
        self.server_message = server_message or message
        self.wrong_protocol = wrong_protocol


class ControlClient:
    """Control-plane calls to one server (see ``make_control``); a context manager."""

    def __init__(self, address: Address, timeout_s: float = 2.0, load_timeout_s: float = 600.0, *, admin_key: str | None = None,
                 tls: GrpcTls | None = None) -> None:
        """``admin_key`` goes in the ``sft-engine-admin-key`` header of every call (the restricted APIs need it);
        ``tls``: gRPC over TLS (Triton's HTTP endpoint has none)."""
        self.address = address
        self.url = address.url
        self.timeout_s = timeout_s
        self.load_timeout_s = load_timeout_s
        self._headers = admin_headers(admin_key, address.protocol)
        self.tls = tls

    # -- health ---------------------------------------------------------------------
    def live(self) -> bool:
        """Whether the server answers its liveness check (False when nothing answers)."""
        try:
            return self.server_live()
        except ControlError:
            return False

    def ready(self) -> bool:
        """Whether the server reports ready (False when nothing answers)."""
        try:
            return self.server_ready()
        except ControlError:
            return False

    def model_ready(self, model: str, version: str = "") -> bool:
        """Whether ``model`` (``version``; "" = the policy's versions) serves; raises when the server does not answer."""
        raise NotImplementedError

    # -- reading --------------------------------------------------------------------
    def model_config(self, model: str, version: str = "") -> dict[str, Any]:
        """The configuration the server runs the model with, in HTTP's JSON form (see ``normalize_config``)."""
        raise NotImplementedError

    def model_metadata(self, model: str, version: str = "") -> dict[str, Any]:
        raise NotImplementedError

    def repository_index(self) -> list[dict[str, Any]]:
        """Every model of the repository with its versions' states (``name``, ``version``, ``state``, ``reason``)."""
        raise NotImplementedError

    def statistics(self, model: str, version: str = "") -> dict[str, Any]:
        """The model's cumulative inference statistics, as the protocol's JSON form has them."""
        raise NotImplementedError

    # -- changing -------------------------------------------------------------------
    def load_model(self, model: str, config: Mapping[str, Any] | None = None) -> None:
        """Load (or reload) ``model``, with ``config`` as override; returns once the server has answered."""
        raise NotImplementedError

    def unload_model(self, model: str) -> None:
        raise NotImplementedError

    # -- lifetime -------------------------------------------------------------------
    def close(self) -> None:
        pass

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def server_live(self) -> bool:
        """Like ``live``, but a server that does not answer is a ControlError (with its reason)."""
        raise NotImplementedError

    def server_ready(self) -> bool:
        raise NotImplementedError

    def _error(self, exc: BaseException, what: str) -> ControlError:
        failure = classify_exception(exc)
        if failure is None:  # not a transport failure: say what it was, keep the cause
            return ControlError(FailureKind.OTHER, f"{what} at {self.url} failed: {type(exc).__name__}: {exc}")
        return self._failed(failure.kind, failure.message, what, status=failure.status, wrong_protocol=failure.wrong_protocol)

    def _failed(self, kind: FailureKind, text: str, what: str, *, status: str | None = None, wrong_protocol: bool = False) -> ControlError:
        text = " ".join(str(text).split())
        if kind in (FailureKind.UNAVAILABLE, FailureKind.TIMEOUT):
            message = f"{self.url}: {text}" if kind is FailureKind.UNAVAILABLE else f"{self.url}: no answer within {self.timeout_s:g} s"
        else:
            message = text
        return ControlError(kind, message, hint=f"{what} at the {self.address.protocol} server {self.url}", status=status,
                            server_message=text, wrong_protocol=wrong_protocol)


class HttpControl(ControlClient):
    """Triton's HTTP/REST control plane through urllib."""

    def _request(self, path: str, body: Mapping[str, Any] | None = None, *, timeout_s: float | None = None,
                 method: str | None = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        headers = dict(self._headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(f"http://{self.url}{path}", data=data, method=method or ("POST" if data is not None else "GET"),
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s or self.timeout_s) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except Exception as exc:
            err = self._error(exc, f"{req.get_method()} {path}")
            raise err from None

    @staticmethod
    def error_text(body: bytes) -> str:
        """Triton's error message in an HTTP error body (``{"error": "..."}``)."""
        try:
            return str(json.loads(body.decode()).get("error", body.decode(errors="replace")))
        except (ValueError, AttributeError):
            return body.decode(errors="replace")[:300]

    def _json(self, path: str, body: Mapping[str, Any] | None = None, *, timeout_s: float | None = None) -> Any:
        status, raw = self._request(path, body, timeout_s=timeout_s)
        if status != 200:
            text = self.error_text(raw)
            raise self._failed(classify_status(status, text), text, path, status=str(status))
        return json.loads(raw.decode()) if raw.strip() else {}

    def server_live(self) -> bool:
        return self._request("/v2/health/live")[0] == 200

    def server_ready(self) -> bool:
        return self._request("/v2/health/ready")[0] == 200

    def model_ready(self, model: str, version: str = "") -> bool:
        return self._request(model_path(model, version) + "/ready")[0] == 200

    def model_config(self, model: str, version: str = "") -> dict[str, Any]:
        return normalize_config(self._json(model_path(model, version) + "/config"))

    def model_metadata(self, model: str, version: str = "") -> dict[str, Any]:
        return dict(self._json(model_path(model, version)))

    def repository_index(self) -> list[dict[str, Any]]:
        return [dict(e) for e in self._json("/v2/repository/index", {})]

    def statistics(self, model: str, version: str = "") -> dict[str, Any]:
        return dict(self._json(model_path(model, version) + "/stats"))

    def load_model(self, model: str, config: Mapping[str, Any] | None = None) -> None:
        body = {"parameters": {"config": json.dumps(config)}} if config is not None else {}
        self._json(f"/v2/repository/models/{model}/load", body, timeout_s=self.load_timeout_s)

    def unload_model(self, model: str) -> None:
        self._json(f"/v2/repository/models/{model}/unload", {}, timeout_s=self.load_timeout_s)


class GrpcControl(ControlClient):
    """Triton's gRPC control plane through tritonclient's synchronous client."""

    def __init__(self, address: Address, timeout_s: float = 2.0, load_timeout_s: float = 600.0, *, client: Any = None,
                 admin_key: str | None = None, tls: GrpcTls | None = None) -> None:
        """``client``: an existing ``tritonclient.grpc.InferenceServerClient`` to share (not closed here; made with its own TLS)."""
        super().__init__(address, timeout_s, load_timeout_s, admin_key=admin_key, tls=tls)
        self._owned = client is None
        if client is None:
            import tritonclient.grpc as grpcclient

            client = grpcclient.InferenceServerClient(self.url, **(tls.tritonclient_kwargs() if tls is not None else {}))
        self._client = client

    def _call(self, what: str, fn: Callable[..., T], *args: Any, timeout_s: float | None = None, **kwargs: Any) -> T:
        try:
            return fn(*args, headers=self._headers or None, client_timeout=timeout_s or self.timeout_s, **kwargs)
        except Exception as exc:
            raise self._error(exc, what) from None

    def server_live(self) -> bool:
        return bool(self._call("liveness", self._client.is_server_live))

    def server_ready(self) -> bool:
        return bool(self._call("readiness", self._client.is_server_ready))

    def model_ready(self, model: str, version: str = "") -> bool:
        return bool(self._call(f"readiness of {model}", self._client.is_model_ready, model, version))

    def model_config(self, model: str, version: str = "") -> dict[str, Any]:
        return normalize_config(self._call(f"config of {model}", self._client.get_model_config, model, version, as_json=True))

    def model_metadata(self, model: str, version: str = "") -> dict[str, Any]:
        return dict(self._call(f"metadata of {model}", self._client.get_model_metadata, model, version, as_json=True))

    def repository_index(self) -> list[dict[str, Any]]:
        answer = self._call("repository index", self._client.get_model_repository_index, as_json=True)
        return [dict(e) for e in answer.get("models", [])]

    def statistics(self, model: str, version: str = "") -> dict[str, Any]:
        return dict(self._call(f"statistics of {model}", self._client.get_inference_statistics, model, version, as_json=True))

    def load_model(self, model: str, config: Mapping[str, Any] | None = None) -> None:
        body = json.dumps(config) if config is not None else None
        self._call(f"load of {model}", self._client.load_model, model, config=body, timeout_s=self.load_timeout_s)

    def unload_model(self, model: str) -> None:
        self._call(f"unload of {model}", self._client.unload_model, model, timeout_s=self.load_timeout_s)

    def close(self) -> None:
        if not self._owned:
            return
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing a dead channel must not mask the real error
            LOGGER.debug("closing the gRPC control channel to %s failed", self.url, exc_info=True)


def make_control(address: Address | str, protocol: str | None = None, timeout_s: float = 2.0, load_timeout_s: float = 600.0, *,
                 admin_key: str | None = None, tls: GrpcTls | None = None) -> ControlClient:
    """The control client for an address (an ``Address`` or ``host:port`` text with ``protocol``).

    ``tls`` applies to gRPC only: Triton serves HTTP without TLS (put a gateway in front).
    """
    if not isinstance(address, Address):
        address = parse_address(address, protocol)
    if address.protocol == "grpc":
        return GrpcControl(address, timeout_s, load_timeout_s, admin_key=admin_key, tls=tls)
    return HttpControl(address, timeout_s, load_timeout_s, admin_key=admin_key)
