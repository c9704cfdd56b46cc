"""The served preprocessing model's ``execute()``, in-process, on one mixed batch.

``sft_engine/pixels.py`` is what Triton's Python backend runs as ``<name>_preprocess``:
a dynamic batch of requests arrives in one ``execute()`` call and each request must get
its own answer, in order - its tensor, or a one-line INVALID_ARG error - whatever its
neighbours hold. A small stand-in for ``triton_python_backend_utils`` (the few names
the model uses) lets the real class run here, deterministically.
"""

from __future__ import annotations

import io
import json
import types

import numpy as np
import pytest
from google.protobuf import json_format
from PIL import Image

from sft_engine.engines.cpu.target import cpu_config
from sft_engine.pixels import PixelPipeline, TritonPythonModel
from sft_engine.preprocess import Preprocessing
from sft_engine.repository.config import to_proto
from sft_engine.repository.image_models import ImageServing, preprocess_spec

PREP = Preprocessing(input_size=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
INVALID_ARG = 3


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self._array = name, array

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Error:
    INVALID_ARG = INVALID_ARG

    def __init__(self, message: str, code: int | None = None) -> None:
        self.message, self.code = message, code


class _Response:
    def __init__(self, output_tensors, error=None) -> None:
        self.output_tensors, self.error = output_tensors, error


class _Request:
    def __init__(self, tensors: dict[str, np.ndarray]) -> None:
        self.tensors = tensors


def _fake_pb_utils() -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor = _Tensor
    pb.TritonError = _Error
    pb.InferenceResponse = _Response
    pb.triton_string_to_numpy = lambda name: {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16}[name]

    def get_input_tensor_by_name(request: _Request, name: str):
        return _Tensor(name, request.tensors[name]) if name in request.tensors else None

    pb.get_input_tensor_by_name = get_input_tensor_by_name
    return pb


def _png(seed: int, size=(48, 40)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _images(*items: bytes) -> _Request:
    """A request with a BYTES [batch, 1] ``IMAGE`` input, as the backend hands it over."""
    array = np.empty((len(items), 1), dtype=object)
    for i, data in enumerate(items):
        array[i, 0] = data
    return _Request({"IMAGE": array})


def _model(monkeypatch: pytest.MonkeyPatch, decode_threads: int) -> TritonPythonModel:
    monkeypatch.setitem(__import__("sys").modules, "triton_python_backend_utils", _fake_pb_utils())
    engine = cpu_config("demo", 4, PREP.shape, 8, 1, 0, PREP.to_parameters())
    config = json_format.MessageToDict(to_proto(preprocess_spec(engine, ImageServing(decode_threads=decode_threads))),
                                       preserving_proto_field_name=True)
    model = TritonPythonModel()
    model.initialize({"model_config": json.dumps(config)})
    return model


GOOD = [_png(i) for i in range(3)]


def _mixed_batch() -> list[_Request]:
    return [
        _images(GOOD[0]),                  # good
        _images(b"hello, world"),          # bad
        _images(GOOD[1], GOOD[2][:300]),  # two images, the second a truncated PNG
        _Request({}),                      # no IMAGE input at all
        _images(),                         # an IMAGE input with no element
        _images(GOOD[1], GOOD[2]),         # two good images
    ]


@pytest.mark.parametrize("decode_threads", [1, 3])
def test_each_request_of_a_mixed_batch_gets_its_own_answer_in_order(monkeypatch, decode_threads):
    model = _model(monkeypatch, decode_threads)
    try:
        responses = model.execute(_mixed_batch())
    finally:
        model.finalize()
    assert len(responses) == 6
    expect = PixelPipeline.from_parameters(PREP.to_parameters())

    good, bad, half, absent, empty, pair = responses
    assert good.error is None and [t.name for t in good.output_tensors] == ["PIXELS"]
    pixels = good.output_tensors[0].as_numpy()
    assert pixels.dtype == np.float32 and pixels.shape == (1, 3, 32, 32)
    np.testing.assert_array_equal(pixels[0], expect.bytes_to_array(GOOD[0]))

    assert pair.error is None
    np.testing.assert_array_equal(pair.output_tensors[0].as_numpy(), np.stack([expect.bytes_to_array(d) for d in GOOD[1:]]))

    for response in (bad, half, absent, empty):
        assert response.output_tensors == [] and response.error is not None
        assert response.error.code == INVALID_ARG and "\n" not in response.error.message
    assert bad.error.message == "the 12 bytes are not a PNG, JPEG or WebP image"
    assert half.error.message.startswith("image 1 of 2: the PNG image is truncated or corrupt")  # which of its images
    assert absent.error.message == empty.error.message == "the request has no IMAGE input"


def test_the_answers_do_not_depend_on_the_thread_count_or_the_run(monkeypatch):
    runs = []
    for threads in (1, 3, 3):
        model = _model(monkeypatch, threads)
        try:
            runs.append(model.execute(_mixed_batch()))
        finally:
            model.finalize()

    def summary(responses):
        return [(r.error.message if r.error else None, [t.as_numpy().tobytes() for t in r.output_tensors]) for r in responses]

    assert summary(runs[0]) == summary(runs[1]) == summary(runs[2])
