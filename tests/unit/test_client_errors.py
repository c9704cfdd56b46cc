"""Every shape in which tritonclient reports a failure becomes the right ClientError."""

from __future__ import annotations

import asyncio
import socket

import pytest
from tritonclient.utils import InferenceServerException

from sft_engine.client import errors as E
from sft_engine.errors import SftEngineError

CTX = dict(url="127.0.0.1:8001", protocol="grpc", model="demo", timeout_s=2.0)


def _ise(status, msg="boom"):
    return InferenceServerException(msg=msg, status=status)


@pytest.mark.parametrize(
    "exc, cls",
    [
        (_ise("StatusCode.UNAVAILABLE", "failed to connect to all addresses"), E.ServerUnavailable),
        (_ise("503", "Service Unavailable"), E.ServerUnavailable),
        (ConnectionRefusedError(111, "Connection refused"), E.ServerUnavailable),
        (ConnectionResetError(104, "reset"), E.ServerUnavailable),
        (_ise("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded"), E.RequestTimeout),
        (TimeoutError("timed out"), E.RequestTimeout),
        (socket.timeout("timed out"), E.RequestTimeout),
        (asyncio.TimeoutError(), E.RequestTimeout),
        (_ise(None, "failed to obtain inference response"), E.RequestTimeout),
        (_ise("StatusCode.NOT_FOUND", "Request for unknown model: 'x' is not found"), E.ModelNotFound),
        (_ise("404", "Request for unknown model: 'x' is not found"), E.ModelNotFound),
        (_ise("StatusCode.INVALID_ARGUMENT", "unexpected shape for input 'input'"), E.BadInput),
        (_ise("400", "inference request batch-size must be <= 8"), E.BadInput),
        (_ise("StatusCode.INTERNAL", "deliberate failure"), E.ServerSideError),
        (_ise("500", "Failed to process the request(s): ValueError"), E.ServerSideError),
        (_ise("StatusCode.UNAVAILABLE", "model 'demo' is not ready"), E.ModelNotReady),
    ],
)
def test_translate_maps_each_failure_shape(exc, cls):
    err = E.translate(exc, **CTX)
    assert type(err) is cls
    assert isinstance(err, E.ClientError) and isinstance(err, SftEngineError)
    assert err.hint, "every client error names a fix"


def test_server_message_is_preserved_verbatim():
    err = E.translate(_ise("StatusCode.INTERNAL", "model raised: ValueError('bad weights')"), **CTX)
    assert isinstance(err, E.ServerSideError)
    assert err.server_message == "model raised: ValueError('bad weights')"
    assert "ValueError('bad weights')" in err.one_line()
    assert err.status == "StatusCode.INTERNAL"


def test_timeout_names_the_budget():
    err = E.translate(TimeoutError(), **CTX)
    assert isinstance(err, E.RequestTimeout) and err.timeout_s == 2.0 and "2 s" in err.message


def test_http_client_on_grpc_port_is_unavailable_with_a_hint():
    from geventhttpclient.response import HTTPParseError

    err = E.translate(HTTPParseError("Expected HTTP/"), url="127.0.0.1:8001", protocol="http")
    assert isinstance(err, E.ServerUnavailable) and "gRPC port" in err.hint


def test_grpc_client_on_http_port_hints_at_the_protocol():
    err = E.translate(_ise("StatusCode.UNAVAILABLE", "failed to connect to all addresses; last error: UNAVAILABLE: Socket closed"), **CTX)
    assert isinstance(err, E.ServerUnavailable) and "HTTP port" in err.hint


def test_aiohttp_connection_error_is_unavailable():
    import aiohttp

    err = E.translate(aiohttp.ClientConnectionError("Cannot connect"), url="h:1", protocol="http")
    assert isinstance(err, E.ServerUnavailable)


def test_bugs_are_not_translated():
    assert E.translate(KeyError("x"), **CTX) is None
    assert E.translate(TypeError("x"), **CTX) is None


def test_client_errors_pass_through():
    err = E.BadInput("x", "y")
    assert E.translate(err, **CTX) is err


INDEX = [
    {"name": "demo", "version": "1", "state": "READY"},
    {"name": "demo", "version": "2", "state": "READY"},
    {"name": "cold"},
    {"name": "failed", "version": "1", "state": "UNAVAILABLE", "reason": "load failed: bad onnx"},
]


def _nf():
    return E.ModelNotFound("Request for unknown model", status="404")


def test_refine_unknown_model_lists_what_exists():
    err = E.refine_not_found(_nf(), INDEX, "nope", "")
    assert isinstance(err, E.ModelNotFound) and "cold, demo, failed" in err.hint


def test_refine_unknown_version_lists_ready_versions():
    err = E.refine_not_found(_nf(), INDEX, "demo", "7")
    assert isinstance(err, E.ModelNotFound) and "1, 2" in err.hint


@pytest.mark.parametrize("model, fragment", [("cold", "not loaded"), ("failed", "load failed: bad onnx")])
def test_refine_known_but_not_ready(model, fragment):
    err = E.refine_not_found(_nf(), INDEX, model, "")
    assert isinstance(err, E.ModelNotReady) and fragment in err.message


def test_refine_without_index_keeps_the_error():
    err = _nf()
    assert E.refine_not_found(err, None, "demo", "") is err
    other = E.RequestTimeout("t")
    assert E.refine_not_found(other, INDEX, "demo", "") is other


def test_bad_input_carries_expected_and_given():
    err = E.BadInput("shape", "fix", expected=[1, 3], given=[2, 3])
    assert err.expected == [1, 3] and err.given == [2, 3] and err.one_line() == "shape (fix)"
