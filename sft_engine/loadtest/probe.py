"""Synchronous control-plane calls to one Triton endpoint: liveness, model config, statistics.

The coordinator process uses these before and between steps and at window edges; the
hot path (worker processes) never does. HTTP goes through ``urllib`` (no extra event
loop in the coordinator), gRPC through tritonclient's synchronous client, both with
short timeouts so a dead server turns into an error in about a second, never a hang.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

from sft_engine.loadtest.config import Endpoint

__all__ = ["ProbeError", "ServerProbe", "HttpProbe", "GrpcProbe", "make_probe", "GRPC_INFER_METHOD"]

LOGGER = logging.getLogger(__name__)

GRPC_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"


class ProbeError(Exception):
    """A control-plane call failed. ``kind``: unreachable, not_found, rejected or error."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class ServerProbe:
    """Control-plane calls to one endpoint (base class; see ``make_probe``)."""

    def __init__(self, endpoint: Endpoint, timeout_s: float = 2.0) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s

    def live(self) -> bool:
        raise NotImplementedError

    def model_ready(self, model: str, version: str = "") -> bool:
        raise NotImplementedError

    def model_config(self, model: str, version: str = "") -> dict[str, Any]:
        raise NotImplementedError

    def statistics(self, model: str, version: str = "") -> dict[str, Any]:
        raise NotImplementedError

    def infer_raw(self, payload: Any) -> None:
        """Send the prebuilt request once; raise ProbeError with the server's message if refused."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def _model_path(model: str, version: str) -> str:
    return f"/v2/models/{model}" + (f"/versions/{version}" if version else "")


class HttpProbe(ServerProbe):
    """Control plane over Triton's HTTP/REST API with urllib."""

    def _request(self, path: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        url = f"http://{self.endpoint.url}{path}"
        req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            return exc.code, body
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ProbeError("unreachable", f"{self.endpoint.url}: {reason}") from None

    @staticmethod
    def _error_text(body: bytes) -> str:
        try:
            return str(json.loads(body.decode()).get("error", body.decode(errors="replace")))
        except (ValueError, AttributeError):
            return body.decode(errors="replace")[:300]

    def _json(self, path: str) -> dict[str, Any]:
        status, body = self._request(path)
        if status != 200:
            text = self._error_text(body)
            kind = "not_found" if ("unknown model" in text.lower() or "not found" in text.lower() or status == 404) else "error"
            raise ProbeError(kind, text)
        return json.loads(body.decode())

    def live(self) -> bool:
        try:
            status, _ = self._request("/v2/health/live")
        except ProbeError:
            return False
        return status == 200

    def model_ready(self, model: str, version: str = "") -> bool:
        status, _ = self._request(_model_path(model, version) + "/ready")
        return status == 200

    def model_config(self, model: str, version: str = "") -> dict[str, Any]:
        return self._json(_model_path(model, version) + "/config")

    def statistics(self, model: str, version: str = "") -> dict[str, Any]:
        return self._json(_model_path(model, version) + "/stats")

    def infer_raw(self, payload: Any) -> None:
        status, body = self._request(payload.http_path, data=payload.http_body, headers=payload.http_headers)
        if status != 200:
            raise ProbeError("rejected" if 400 <= status < 500 else "error", self._error_text(body))


class GrpcProbe(ServerProbe):
    """Control plane over Triton's gRPC API with tritonclient's synchronous client."""

    def __init__(self, endpoint: Endpoint, timeout_s: float = 2.0) -> None:
        super().__init__(endpoint, timeout_s)
        import grpc
        import tritonclient.grpc as grpcclient

        self._grpc = grpc
        self._client = grpcclient.InferenceServerClient(endpoint.url)
        self._channel = grpc.insecure_channel(endpoint.url)
        self._infer = self._channel.unary_unary(GRPC_INFER_METHOD)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return fn(*args, client_timeout=self.timeout_s, **kwargs)
        except InferenceServerException as exc:
            status = str(exc.status() or "")
            text = exc.message() if hasattr(exc, "message") else str(exc)
            if "UNAVAILABLE" in status and "unknown model" not in str(text).lower():
                raise ProbeError("unreachable", f"{self.endpoint.url}: {text}") from None
            if "DEADLINE_EXCEEDED" in status:
                raise ProbeError("unreachable", f"{self.endpoint.url}: no answer within {self.timeout_s:g} s") from None
            if "NOT_FOUND" in status or "unknown model" in str(text).lower():
                raise ProbeError("not_found", str(text)) from None
            raise ProbeError("error", str(text)) from None

    def live(self) -> bool:
        try:
            return bool(self._call(self._client.is_server_live))
        except ProbeError:
            return False

    def model_ready(self, model: str, version: str = "") -> bool:
        return bool(self._call(self._client.is_model_ready, model, version))

    def model_config(self, model: str, version: str = "") -> dict[str, Any]:
        return self._call(self._client.get_model_config, model, version, as_json=True).get("config", {})

    def statistics(self, model: str, version: str = "") -> dict[str, Any]:
        return self._call(self._client.get_inference_statistics, model, version, as_json=True)

    def infer_raw(self, payload: Any) -> None:
        grpc = self._grpc
        try:
            self._infer(payload.grpc_request, timeout=max(self.timeout_s, 10.0))
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                raise ProbeError("unreachable", f"{self.endpoint.url}: {exc.details()}") from None
            kind = "rejected" if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND) else "error"
            raise ProbeError(kind, str(exc.details())) from None

    def close(self) -> None:
        try:
            self._client.close()
            self._channel.close()
        except Exception:  # noqa: BLE001 - closing a dead channel must not mask the real error
            LOGGER.debug("closing gRPC probe channel failed", exc_info=True)


def make_probe(endpoint: Endpoint, timeout_s: float = 2.0) -> ServerProbe:
    return GrpcProbe(endpoint, timeout_s) if endpoint.protocol == "grpc" else HttpProbe(endpoint, timeout_s)
