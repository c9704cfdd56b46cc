"""The coordinator's calls to one Triton endpoint outside the hot path.

The coordinator process reads the model's config, liveness and statistics before and
between steps and at window edges; the hot path (worker processes) never does. Those
are control-plane calls of the shared client (``sft_engine.triton.control``: urllib
for HTTP - no extra event loop in the coordinator -, tritonclient's synchronous client
for gRPC), with short timeouts so a dead server turns into an error in about a second,
never a hang. The one thing added here is ``infer_raw``: the prebuilt load-test
request sent once, so a request the server refuses fails the run before any load.
Failures are ``ControlError`` with a ``FailureKind``.
"""

from __future__ import annotations

import logging
from typing import Any

from sft_engine.loadtest.config import Endpoint
from sft_engine.triton.control import GRPC_INFER_METHOD, ControlClient, ControlError, HttpControl, make_control
from sft_engine.triton.failures import FailureKind, classify_exception, classify_status
from sft_engine.triton.security import GrpcTls

__all__ = ["ServerProbe", "HttpProbe", "GrpcProbe", "make_probe", "UNREACHABLE"]

LOGGER = logging.getLogger(__name__)

#: the failure kinds that mean "the endpoint does not answer"
UNREACHABLE = (FailureKind.UNAVAILABLE, FailureKind.TIMEOUT)


class ServerProbe:
    """Control-plane calls to one endpoint, and the one raw request (see ``make_probe``)."""

    def __init__(self, endpoint: Endpoint, timeout_s: float = 2.0, *, admin_key: str | None = None, tls: GrpcTls | None = None) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.tls = tls
        self.control: ControlClient = make_control(endpoint, timeout_s=timeout_s, admin_key=admin_key, tls=tls)

    def live(self) -> bool:
        return self.control.live()

    def model_ready(self, model: str, version: str = "") -> bool:
        return self.control.model_ready(model, version)

    def model_config(self, model: str, version: str = "") -> dict[str, Any]:
        return self.control.model_config(model, version)

    def statistics(self, model: str, version: str = "") -> dict[str, Any]:
        return self.control.statistics(model, version)

    def infer_raw(self, payload: Any) -> None:
        """Send the prebuilt request once; raise ControlError with the server's message if refused."""
        raise NotImplementedError

    def close(self) -> None:
        self.control.close()


class HttpProbe(ServerProbe):
    """The raw request as the prebuilt binary-tensor body, through urllib."""

    def infer_raw(self, payload: Any) -> None:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(f"http://{self.endpoint.url}{payload.http_path}", data=payload.http_body,
                                     headers=payload.http_headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=max(self.timeout_s, 10.0)) as resp:
                resp.read()
                return
        except urllib.error.HTTPError as exc:
            text = HttpControl.error_text(exc.read())
            raise ControlError(classify_status(exc.code, text), text, status=str(exc.code)) from None
        except Exception as exc:  # noqa: BLE001 - classified below; a bug re-raises
            failure = classify_exception(exc)
            if failure is None:
                raise
            raise ControlError(failure.kind, f"{self.endpoint.url}: {failure.message}") from None


class GrpcProbe(ServerProbe):
    """The raw request as the prebuilt serialized ``ModelInferRequest`` on a plain gRPC channel."""

    def __init__(self, endpoint: Endpoint, timeout_s: float = 2.0, *, admin_key: str | None = None, tls: GrpcTls | None = None) -> None:
        super().__init__(endpoint, timeout_s, admin_key=admin_key, tls=tls)
        import grpc

        self._grpc = grpc
        if tls is not None:
            self._channel = grpc.secure_channel(endpoint.url, tls.channel_credentials())
        else:
            self._channel = grpc.insecure_channel(endpoint.url)
        self._infer = self._channel.unary_unary(GRPC_INFER_METHOD)

    def infer_raw(self, payload: Any) -> None:
        try:
            self._infer(payload.grpc_request, timeout=max(self.timeout_s, 10.0))
        except self._grpc.RpcError as exc:
            code, text = exc.code(), str(exc.details())
            kind = classify_status(code.name, text)
            raise ControlError(kind, f"{self.endpoint.url}: {text}" if kind in UNREACHABLE else text, status=code.name) from None

    def close(self) -> None:
        super().close()
        try:
            self._channel.close()
        except Exception:  # noqa: BLE001 - closing a dead channel must not mask the real error
            LOGGER.debug("closing gRPC probe channel failed", exc_info=True)


def make_probe(endpoint: Endpoint, timeout_s: float = 2.0, *, admin_key: str | None = None, tls: GrpcTls | None = None) -> ServerProbe:
    if endpoint.protocol == "grpc":
        return GrpcProbe(endpoint, timeout_s, admin_key=admin_key, tls=tls)
    return HttpProbe(endpoint, timeout_s, admin_key=admin_key)
