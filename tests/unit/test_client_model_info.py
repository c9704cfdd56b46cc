"""Model configs from either protocol read the same; settings are checked once."""

from __future__ import annotations

import numpy as np
import pytest

from sft_engine.client.errors import ClientError
from sft_engine.client.model_info import ModelInfo, labels_from_classification, parse_classification
from sft_engine.client.settings import ClientSettings
from sft_engine.errors import ConfigError
from sft_engine.preprocess import Preprocessing
from sft_engine.triton.address import normalize_url
from sft_engine.triton.model import normalize_config

PARAMS = {k: {"string_value": v} for k, v in Preprocessing(input_size=32).to_parameters().items()}
HTTP_FORM = {
    "name": "demo", "platform": "", "backend": "python", "max_batch_size": 8,
    "input": [{"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [3, 32, 32]}],
    "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [4], "label_filename": "labels.txt"}],
    "parameters": PARAMS,
}
GRPC_FORM = {"config": {
    "name": "demo", "backend": "python", "max_batch_size": 8,
    "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": ["3", "32", "32"]}],
    "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": ["4"], "label_filename": "labels.txt"}],
    "parameters": PARAMS,
}}


def test_both_protocol_forms_give_the_same_info():
    a = ModelInfo.from_config(HTTP_FORM, versions=["1"])
    b = ModelInfo.from_config(GRPC_FORM, versions=["1"])
    for info in (a, b):
        assert info.input_dims == (3, 32, 32) and info.output_dims == (4,) and info.max_batch_size == 8
        assert info.input_name == "input" and info.output_name == "logits" and info.input_datatype == "FP32"
        assert info.num_classes == 4 and info.has_labels and info.preprocessing == Preprocessing(input_size=32)
    assert normalize_config(GRPC_FORM)["input"][0]["dims"] == [3, 32, 32]


def test_sizes_probe_and_target():
    info = ModelInfo.from_config(HTTP_FORM, version="2")
    assert info.shm_sizes() == (8 * 3 * 32 * 32 * 4, 8 * 4 * 4)
    assert info.probe_input().shape == (1, 3, 32, 32) and info.input_dtype == np.float32
    target = info.target()
    assert (target.model, target.version, target.input_name, target.output_name) == ("demo", "2", "input", "logits")


def test_unbatched_models_use_chunks_of_one():
    info = ModelInfo.from_config({**HTTP_FORM, "max_batch_size": 0})
    assert not info.batching and info.chunk_size == 1 and info.probe_input().shape == (3, 32, 32)


def test_variable_dims_cannot_use_shared_memory():
    cfg = {**HTTP_FORM, "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [3, -1, -1]}]}
    with pytest.raises(ClientError):
        ModelInfo.from_config(cfg).shm_sizes()


def test_multi_input_models_are_refused_with_a_hint():
    cfg = {**HTTP_FORM, "input": HTTP_FORM["input"] * 2}
    with pytest.raises(ClientError) as info:
        ModelInfo.from_config(cfg)
    assert "tritonclient" in info.value.hint


def test_classification_entries_parse_including_colons_in_labels():
    assert parse_classification(b"0.5:2:ship") == (0.5, 2, "ship")
    assert parse_classification("-1.25:0:a:b") == (-1.25, 0, "a:b")
    assert parse_classification(b"3.0:1") == (3.0, 1, None)
    assert labels_from_classification([b"1:2:ship", b"0.5:0:cat", b"0:1"], 3) == ["cat", "1", "ship"]


def test_settings_are_validated():
    s = ClientSettings.create("http://localhost", protocol="http", model="m", version=2, timeout=5, retries=1,
                              shared_memory=False, concurrency=2, labels=None)
    assert s.url == "localhost:8000" and s.version == "2" and s.retry.attempts == 2
    assert ClientSettings.create("h:1", protocol="grpc", model="m", version=None, timeout=1, retries=0,
                                 shared_memory=True, concurrency=1, labels=["a"]).version == ""
    bad = [dict(protocol="udp"), dict(model=""), dict(version=0), dict(version="latest"), dict(timeout=0),
           dict(timeout=float("inf")), dict(concurrency=0), dict(retries=-1)]
    base = dict(protocol="grpc", model="m", version=None, timeout=1.0, retries=0, shared_memory=False, concurrency=1, labels=None)
    for override in bad:
        with pytest.raises(ConfigError):
            ClientSettings.create("h:1", **{**base, **override})


@pytest.mark.parametrize("url, want", [("127.0.0.1:8001", "127.0.0.1:8001"), ("localhost", "localhost:8001"),
                                       ("grpc://h:9", "h:9"), ("[::1]:5", "[::1]:5")])
def test_urls_are_normalized(url, want):
    assert normalize_url(url, "grpc") == want


@pytest.mark.parametrize("url", ["", "h:", "h:x", "h:70000", "a:b:c", "https://h:1", "h:1/v2"])
def test_bad_urls_are_config_errors(url):
    with pytest.raises(ConfigError):
        normalize_url(url, "grpc")
