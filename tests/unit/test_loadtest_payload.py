"""The prebuilt request: shapes from the model config, and bad specs refused before any load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from sft_engine.errors import ConfigError
from sft_engine.loadtest.payload import build_payload
from sft_engine.triton.model import ServedModel

HTTP_CONFIG = {
    "name": "clf", "backend": "onnxruntime", "max_batch_size": 8,
    "input": [{"name": "image", "data_type": "TYPE_FP32", "dims": [3, 4, 4]}, {"name": "mask", "data_type": "TYPE_BOOL", "dims": [-1]}],
    "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}],
    "dynamic_batching": {}, "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
}
GRPC_CONFIG = {  # gRPC as_json: dims as strings
    "name": "plain", "max_batch_size": 0,
    "input": [{"name": "x", "data_type": "TYPE_INT64", "dims": ["2", "3"]}, {"name": "s", "data_type": "TYPE_STRING", "dims": ["1"]}],
    "output": [{"name": "y", "data_type": "TYPE_FP16", "dims": ["2"]}],
}


def test_model_spec_from_both_config_forms() -> None:
    spec = ServedModel.from_config(HTTP_CONFIG, "1")
    assert spec.max_batch_size == 8 and spec.dynamic_batching and spec.instance_count == 2
    assert [(t.name, t.datatype, t.dims) for t in spec.inputs] == [("image", "FP32", (3, 4, 4)), ("mask", "BOOL", (-1,))]
    plain = ServedModel.from_config(GRPC_CONFIG)
    assert plain.inputs[0].dims == (2, 3) and plain.inputs[1].datatype == "BYTES" and plain.max_batch_size == 0


def test_payload_for_a_batching_model() -> None:
    spec = ServedModel.from_config(HTTP_CONFIG, "1")
    payload = build_payload(spec, batch_size=4, shapes={"mask": (5,)})
    assert payload.input_shapes == {"image": (4, 3, 4, 4), "mask": (4, 5)}
    assert payload.http_path == "/v2/models/clf/versions/1/infer"
    request = service_pb2.ModelInferRequest.FromString(payload.grpc_request)
    assert request.model_name == "clf" and request.model_version == "1"
    assert [list(t.shape) for t in request.inputs] == [[4, 3, 4, 4], [4, 5]]
    assert len(request.raw_input_contents[0]) == 4 * 3 * 4 * 4 * 4
    header_len = int(payload.http_headers["Inference-Header-Content-Length"])
    header = json.loads(payload.http_body[:header_len])
    assert header["outputs"] == [{"name": "logits", "parameters": {"binary_data": True}}]
    assert len(payload.http_body) == header_len + payload.input_bytes


def test_payload_without_batching_and_bytes_inputs() -> None:
    payload = build_payload(ServedModel.from_config(GRPC_CONFIG))
    assert payload.input_shapes == {"x": (2, 3), "s": (1,)}
    request = service_pb2.ModelInferRequest.FromString(payload.grpc_request)
    assert request.raw_input_contents[1] == b"\x08\x00\x00\x00xxxxxxxx"  # length-prefixed BYTES


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 9, "shapes": {"mask": (5,)}}, "exceeds model 'clf' max_batch_size 8"),
        ({"shapes": {}}, "variable dims"),
        ({"shapes": {"mask": (5,), "image": (3, 3)}}, r"shape \[3, 3\] does not match the model's dims \[3, 4, 4\]"),
        ({"shapes": {"mask": (5,), "image": (3, 4, 5)}}, "does not match"),
        ({"shapes": {"mask": (0,)}}, "dimension < 1"),
        ({"shapes": {"mask": (5,), "nope": (1,)}}, "unknown input"),
    ],
)
def test_bad_request_specs_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_payload(ServedModel.from_config(HTTP_CONFIG), **kwargs)


def test_batch_size_on_a_model_that_does_not_batch() -> None:
    with pytest.raises(ConfigError, match="does not batch"):
        build_payload(ServedModel.from_config(GRPC_CONFIG), batch_size=2)


def test_input_data_file(tmp_path: Path) -> None:
    spec = ServedModel.from_config(HTTP_CONFIG)
    good = tmp_path / "good.npz"
    np.savez(good, image=np.ones((3, 4, 4), dtype=np.float32), mask=np.ones((2, 7), dtype=bool))
    payload = build_payload(spec, batch_size=3, input_data=good)
    assert payload.input_shapes == {"image": (3, 3, 4, 4), "mask": (3, 7)}
    request = service_pb2.ModelInferRequest.FromString(payload.grpc_request)
    assert np.frombuffer(request.raw_input_contents[0], dtype=np.float32).tolist() == [1.0] * 144
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, image=np.ones((5, 5), dtype=np.float32), mask=np.ones((1, 2), dtype=bool))
    with pytest.raises(ConfigError, match=r"'image' has shape \[5, 5\]"):
        build_payload(spec, input_data=wrong)
    extra = tmp_path / "extra.npz"
    np.savez(extra, image=np.ones((3, 4, 4), dtype=np.float32), mask=np.ones((1, 2), dtype=bool), other=np.ones(1))
    with pytest.raises(ConfigError, match="does not take"):
        build_payload(spec, input_data=extra)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="cannot be read"):
        build_payload(spec, input_data=junk)


IMAGE_CONFIG = {
    "name": "demo_image", "platform": "ensemble", "max_batch_size": 8,
    "input": [{"name": "IMAGE", "data_type": "TYPE_STRING", "dims": ["1"]}],
    "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": ["4"]}],
}


def test_image_payload_sends_each_file_as_it_is_round_robin(tmp_path: Path) -> None:
    from tritonclient.utils import deserialize_bytes_tensor

    from sft_engine.loadtest.payload import build_image_payload, image_files

    for name, data in (("b.jpg", b"\xff\xd8jpeg-bytes"), ("a.png", b"\x89PNG-longer-bytes"), ("notes.txt", b"skip me")):
        (tmp_path / name).write_bytes(data)
    files = image_files(tmp_path)
    assert [p.name for p in files] == ["a.png", "b.jpg"]
    payload = build_image_payload(ServedModel.from_config(IMAGE_CONFIG), files, batch_size=2)
    assert len(payload.variants) == 2 and payload.input_shapes == {"IMAGE": (2, 1)}
    for variant, path in zip(payload.variants, files):
        request = service_pb2.ModelInferRequest.FromString(variant.grpc_request)
        assert [list(t.shape) for t in request.inputs] == [[2, 1]] and request.inputs[0].datatype == "BYTES"
        assert deserialize_bytes_tensor(request.raw_input_contents[0]).tolist() == [path.read_bytes()] * 2
        header_len = int(variant.http_headers["Inference-Header-Content-Length"])
        assert variant.http_body[header_len:] == request.raw_input_contents[0]
    assert payload.input_bytes == round(sum(2 * (4 + len(p.read_bytes())) for p in files) / 2)
    assert payload.request_bytes("http") == round(sum(len(v.http_body) for v in payload.variants) / 2)


def test_images_need_a_model_taking_files_and_a_folder_of_them(tmp_path: Path) -> None:
    from sft_engine.loadtest.payload import build_image_payload, image_files

    with pytest.raises(ConfigError, match="holds no .png"):
        image_files(tmp_path)
    with pytest.raises(ConfigError, match="is not a directory"):
        image_files(tmp_path / "missing")
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(ConfigError, match="model 'clf' takes image FP32, mask BOOL.*<name>_image"):
        build_image_payload(ServedModel.from_config(HTTP_CONFIG), image_files(tmp_path))
