"""Talking to a Triton server: what every part that does so shares.

    address   ``host:port`` parsing, Triton's default ports, the loopback check
    failures  the one table of failure kinds (timeout, unavailable, model not found, ...)
    model     a served model's config, from either protocol's JSON, as typed specs
    control   the control plane: health, readiness, config, index, load/unload, statistics

This layer sits just above ``errors``: it imports nothing else of sft-engine, and the
client, the load test, the server launcher and the operations commands build on it.
Inference itself stays with each user (the client's transports, the load test's raw
hot path), which take their failure kinds from here.
"""

from __future__ import annotations

from sft_engine.triton.address import DEFAULT_PORTS, PROTOCOLS, Address, is_loopback, normalize_url, parse_address
from sft_engine.triton.control import ControlClient, ControlError, GrpcControl, HttpControl, make_control
from sft_engine.triton.failures import Failure, FailureKind, classify_exception, classify_status
from sft_engine.triton.model import ServedModel, ServedTensor, normalize_config, numpy_dtype

__all__ = [
    "DEFAULT_PORTS", "PROTOCOLS", "Address", "is_loopback", "normalize_url", "parse_address",
    "ControlClient", "ControlError", "GrpcControl", "HttpControl", "make_control",
    "Failure", "FailureKind", "classify_exception", "classify_status",
    "ServedModel", "ServedTensor", "normalize_config", "numpy_dtype",
]
