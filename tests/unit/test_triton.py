"""The shared Triton layer: addresses, the failure table, the served-config reader, the control client's errors."""

from __future__ import annotations

import asyncio
import socket
import urllib.error

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from sft_engine.errors import ConfigError, ServerError
from sft_engine.server import free_port
from sft_engine.triton import (
    Address, ControlError, FailureKind, ServedModel, classify_exception, classify_status, make_control, normalize_config,
    numpy_dtype, parse_address,
)

K = FailureKind


# -- addresses --------------------------------------------------------------------------
@pytest.mark.parametrize("text, protocol, want", [
    ("127.0.0.1", "grpc", Address("127.0.0.1", 8001, "grpc")),
    ("127.0.0.1", "http", Address("127.0.0.1", 8000, "http")),
    ("http://localhost:9000/", None, Address("localhost", 9000, "http")),
    ("grpc://[::1]", None, Address("::1", 8001, "grpc")),
    ("  [::1]:5 ", None, Address("::1", 5, "grpc")),
])
def test_addresses_parse_with_the_protocols_default_port(text, protocol, want):
    assert parse_address(text, protocol) == want


def test_ipv6_hosts_are_bracketed_and_loopback_is_literal():
    assert Address("::1", 8001, "grpc").url == "[::1]:8001"
    assert Address("::1", 8001, "grpc").is_loopback and Address("localhost", 1, "http").is_loopback
    assert not Address("example.com", 1, "http").is_loopback and not Address("10.0.0.1", 1, "http").is_loopback


@pytest.mark.parametrize("text, protocol, match", [
    ("", None, "empty"), ("h:", None, "not host:port"), ("h:x", None, "not host:port"), ("a:b:c", None, "IPv6"),
    ("h:70000", None, "not a TCP port"), ("h:0", None, "not a TCP port"), ("https://h:1", None, "TLS"),
    ("ftp://h:1", None, "unknown scheme"), ("h:1/v2", None, "has a path"), ("http://h:1", "grpc", "says http"),
    ("h:1", "udp", "unknown protocol"),
])
def test_bad_addresses_name_the_problem(text, protocol, match):
    with pytest.raises(ConfigError, match=match) as info:
        parse_address(text, protocol, what="--url")
    assert info.value.hint


# -- the failure table -------------------------------------------------------------------
@pytest.mark.parametrize("status, message, kind", [
    ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", K.TIMEOUT),
    ("UNAVAILABLE", "failed to connect to all addresses", K.UNAVAILABLE),
    ("StatusCode.UNAVAILABLE", "Request for unknown model: 'x' is not found", K.MODEL_NOT_FOUND),
    ("StatusCode.UNAVAILABLE", "model 'demo' is not ready", K.MODEL_NOT_READY),
    ("StatusCode.NOT_FOUND", "Request for unknown model: 'x' is not found", K.MODEL_NOT_FOUND),
    (400, "Request for unknown model: 'x' is not found", K.MODEL_NOT_FOUND),
    ("404", "not found", K.MODEL_NOT_FOUND),
    ("400", "inference request batch-size must be <= 8", K.INVALID),
    ("StatusCode.INVALID_ARGUMENT", "unexpected shape", K.INVALID),
    (403, "forbidden", K.REFUSED),
    ("UNIMPLEMENTED", "", K.REFUSED),
    (429, "", K.OVERLOADED), ("503", "Exceeds maximum queue size", K.OVERLOADED), ("RESOURCE_EXHAUSTED", "", K.OVERLOADED),
    (502, "", K.UNAVAILABLE),
    ("StatusCode.INTERNAL", "deliberate failure", K.SERVER_ERROR), (500, "boom", K.SERVER_ERROR),
    ("CANCELLED", "", K.CANCELLED),
    ("SOMETHING_NEW", "", K.OTHER),
    (None, "failed to obtain inference response", K.TIMEOUT),
    (None, "unexpected keyword", K.INVALID),
])
def test_every_status_has_one_kind(status, message, kind):
    assert classify_status(status, message) is kind


@pytest.mark.parametrize("exc, kind", [
    (InferenceServerException(msg="Request for unknown model: 'x' is not found", status="StatusCode.UNAVAILABLE"), K.MODEL_NOT_FOUND),
    (InferenceServerException(msg="boom", status="500"), K.SERVER_ERROR),
    (ConnectionRefusedError(111, "Connection refused"), K.UNAVAILABLE),
    (urllib.error.URLError(ConnectionRefusedError(111, "refused")), K.UNAVAILABLE),
    (urllib.error.URLError(socket.timeout("timed out")), K.TIMEOUT),
    (TimeoutError(), K.TIMEOUT), (asyncio.TimeoutError(), K.TIMEOUT),
])
def test_exceptions_are_classified(exc, kind):
    failure = classify_exception(exc)
    assert failure is not None and failure.kind is kind


def test_wrong_protocol_is_recognised_and_bugs_are_not_failures():
    import http.client

    assert classify_exception(http.client.BadStatusLine("\x00\x00")).wrong_protocol
    grpc_on_http = InferenceServerException(msg="failed to connect; last error: UNAVAILABLE: Socket closed", status="StatusCode.UNAVAILABLE")
    assert classify_exception(grpc_on_http).wrong_protocol
    assert classify_exception(KeyError("x")) is None and classify_exception(TypeError("x")) is None


def test_transient_kinds():
    assert {k for k in K if k.transient} == {K.UNAVAILABLE, K.OVERLOADED, K.TIMEOUT}


# -- the served-config reader ---------------------------------------------------------------
HTTP_FORM = {
    "name": "demo", "backend": "onnxruntime", "max_batch_size": 8, "dynamic_batching": {},
    "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
    "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [3, 32, 32]}, {"name": "raw", "data_type": "TYPE_STRING", "dims": [1],
                                                                                  "optional": True}],
    "output": [{"name": "logits", "data_type": "TYPE_FP16", "dims": [4], "label_filename": "labels.txt"}],
    "parameters": {"sft_engine.input_size": {"string_value": "32"}},
}
GRPC_FORM = {"config": {
    "name": "demo", "backend": "onnxruntime", "max_batch_size": 8, "dynamic_batching": {}, "instance_group": [{"count": 2}],
    "input": [{"name": "input", "dims": ["3", "32", "32"]}, {"name": "raw", "data_type": "TYPE_STRING", "dims": ["1"], "optional": True}],
    "output": [{"name": "logits", "data_type": "TYPE_FP16", "dims": ["4"], "label_filename": "labels.txt"}],
    "parameters": {"sft_engine.input_size": {"string_value": "32"}},
}}


def test_both_protocols_read_into_the_same_spec():
    a, b = ServedModel.from_config(HTTP_FORM, "1"), ServedModel.from_config(GRPC_FORM, "1")
    assert a == b
    assert [(t.name, t.datatype, t.dims, t.optional) for t in a.inputs] == [("input", "FP32", (3, 32, 32), False), ("raw", "BYTES", (1,), True)]
    assert a.outputs[0].label_filename == "labels.txt" and a.outputs[0].datatype == "FP16"
    assert (a.backend, a.batching, a.dynamic_batching, a.instance_count) == ("onnxruntime", True, True, 2)
    assert a.parameters == {"sft_engine.input_size": "32"}
    assert normalize_config(GRPC_FORM)["input"][0] == {"name": "input", "dims": [3, 32, 32], "data_type": "TYPE_FP32"}
    assert normalize_config(HTTP_FORM)["output"][0]["label_filename"] == "labels.txt"
    assert a.to_dict()["inputs"][1] == {"name": "raw", "datatype": "BYTES", "dims": [1]}


def test_dtypes_come_from_tritonclients_table():
    assert numpy_dtype("FP32") is np.float32 and numpy_dtype("BYTES") is np.object_ and numpy_dtype("INT64") is np.int64
    assert numpy_dtype("NOT_A_TYPE") is None


# -- the control client ---------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_dead_server_is_an_unavailable_control_error_quickly(protocol):
    port = free_port()  # nothing listens there
    with make_control(f"127.0.0.1:{port}", protocol, timeout_s=1.0) as control:
        assert control.live() is False and control.ready() is False
        with pytest.raises(ControlError) as info:
            control.model_config("m")
    err = info.value
    assert err.kind in (K.UNAVAILABLE, K.TIMEOUT) and isinstance(err, ServerError)
    assert f"127.0.0.1:{port}" in err.message and err.hint


def test_a_normalized_config_is_still_a_valid_config():
    """A load may carry the config read from the server back as its override."""
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    for form in (HTTP_FORM, GRPC_FORM):
        json_format.ParseDict(normalize_config(form), model_config_pb2.ModelConfig())
