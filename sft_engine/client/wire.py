"""What differs between gRPC and HTTP for the client, and the one place failures are translated.

``_GrpcWire`` / ``_HttpWire`` hold the protocol's side of an inference call (which
tritonclient module, how tensors are marked binary, how an output's shape is read
back, which control client speaks it); the sync and asyncio transports of one
protocol share them, so no code branches on the protocol once a class is chosen.
``_Translating`` turns any tritonclient failure inside it into a ``ClientError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from sft_engine.client.errors import ServerSideError, translate
from sft_engine.errors import ConfigError
from sft_engine.client.shm import ShmSlot
from sft_engine.triton.address import parse_address
from sft_engine.triton.control import ControlClient, GrpcControl, HttpControl
from sft_engine.triton.security import GrpcTls, admin_headers

__all__ = ["InferTarget"]


@dataclass(frozen=True)
class InferTarget:
    """Where a request goes and which tensors it names; ``version`` "" = the server's latest."""

    model: str
    version: str
    input_name: str
    input_datatype: str
    output_name: str
    output_dtype: Any = np.float32


class _Translating:
    """``with _Translating(transport, model):`` - any tritonclient failure inside becomes a ClientError.

    A class rather than a generator context manager: it is on the inference hot path.
    Exceptions that are not transport failures (bugs) pass through unchanged.
    """

    __slots__ = ("transport", "model")

    def __init__(self, transport: "_Base", model: str | None) -> None:
        self.transport = transport
        self.model = model

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False
        err = self.transport.translated(exc, self.model)
        if err is exc:
            return False
        raise err from exc


class _GrpcWire:
    """tritonclient.grpc's request and response shapes."""

    protocol = "grpc"
    _mod: Any
    #: status calls answer protobuf messages unless asked for JSON
    _json_kw = {"as_json": True}
    url: str
    timeout_s: float
    tls: GrpcTls | None
    admin_key: str | None

    def _control_client(self) -> ControlClient:
        return GrpcControl(parse_address(self.url, "grpc"), timeout_s=self.timeout_s, admin_key=self.admin_key, tls=self.tls)

    def _client_kwargs(self) -> dict[str, Any]:
        """tritonclient.grpc(.aio).InferenceServerClient's TLS arguments (none for plaintext)."""
        return self.tls.tritonclient_kwargs() if self.tls is not None else {}

    def _load_module(self) -> None:
        import tritonclient.grpc as grpcclient

        self._mod = grpcclient

    def _requested_output(self, target: InferTarget, class_count: int) -> Any:
        return self._mod.InferRequestedOutput(target.output_name, class_count=class_count)

    def _set_input(self, inp: Any, array: np.ndarray) -> None:
        inp.set_data_from_numpy(array)

    @staticmethod
    def _output_shape(output: Any) -> Any:
        return output.shape

    @staticmethod
    def _regions(status: Any) -> list[str]:
        return sorted(status.get("regions", {}).keys())


class _HttpWire:
    """tritonclient.http's request and response shapes (binary tensors both ways)."""

    protocol = "http"
    _mod: Any
    _json_kw: dict[str, Any] = {}
    url: str
    timeout_s: float
    tls: GrpcTls | None
    admin_key: str | None

    def _control_client(self) -> ControlClient:
        return HttpControl(parse_address(self.url, "http"), timeout_s=self.timeout_s, admin_key=self.admin_key)

    def _load_module(self) -> None:
        import tritonclient.http as httpclient

        self._mod = httpclient

    def _requested_output(self, target: InferTarget, class_count: int) -> Any:
        return self._mod.InferRequestedOutput(target.output_name, binary_data=True, class_count=class_count)

    def _set_input(self, inp: Any, array: np.ndarray) -> None:
        inp.set_data_from_numpy(array, binary_data=True)

    @staticmethod
    def _output_shape(output: Any) -> Any:
        return output["shape"]

    @staticmethod
    def _regions(status: Any) -> list[str]:
        return sorted(str(r.get("name")) for r in status)


class _Base:
    protocol = ""
    _mod: Any
    _set_input: Callable[[Any, np.ndarray], None]
    _requested_output: Callable[[InferTarget, int], Any]
    _output_shape: Callable[[Any], Any]
    _regions: Callable[[Any], list[str]]
    _control_client: Callable[[], ControlClient]
    _json_kw: dict[str, Any]

    def __init__(self, url: str, timeout_s: float, *, tls: GrpcTls | None = None, admin_key: str | None = None) -> None:
        """``tls``: gRPC over TLS (HTTP refuses it: Triton has no HTTPS); ``admin_key``: sent with the
        control-plane and shared-memory calls only (restricted where the server has a key), never with inference."""
        if tls is not None and self.protocol != "grpc":
            raise ConfigError("TLS is for gRPC only (Triton serves HTTP without TLS)", hint="use protocol='grpc', or a TLS gateway for HTTP")
        self.url = url
        self.timeout_s = timeout_s
        self.tls = tls
        self.admin_key = admin_key
        self._kw: dict[str, Any] = {}

    def _shm_kw(self) -> dict[str, Any]:
        """The shared-memory calls' keyword arguments: the timeout plus the admin header (a restricted API)."""
        headers = admin_headers(self.admin_key, self.protocol)
        return {**self._kw, "headers": headers} if headers else self._kw

    def translated(self, exc: Exception, model: str | None) -> Exception:
        err = translate(exc, url=self.url, protocol=self.protocol, model=model, timeout_s=self.timeout_s)
        return exc if err is None else err

    def _translating(self, model: str | None = None) -> _Translating:
        return _Translating(self, model)

    def _build_request(self, target: InferTarget, array: np.ndarray, class_count: int, slot: ShmSlot | None) -> tuple[Any, Any]:
        inp = self._mod.InferInput(target.input_name, list(array.shape), target.input_datatype)
        out = self._requested_output(target, class_count)
        if slot is None:
            self._set_input(inp, array)
        else:
            inp.set_shared_memory(slot.in_name, slot.write_input(array))
            out.set_shared_memory(slot.out_name, slot.out_bytes)
        return inp, out

    def _read_result(self, result: Any, target: InferTarget, slot: ShmSlot | None) -> np.ndarray:
        if slot is None:
            array = result.as_numpy(target.output_name)
            if array is None:
                raise ServerSideError(f"the response of model {target.model!r} has no output {target.output_name!r}", hint="check the model's outputs")
            return array
        output = result.get_output(target.output_name)
        return slot.read_output(np.dtype(target.output_dtype), tuple(int(d) for d in self._output_shape(output)))
