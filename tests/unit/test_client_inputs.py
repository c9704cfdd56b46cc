"""Inputs are checked before anything is sent; images get exactly the build's preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sft_engine.client.errors import BadInput
from sft_engine.client.inputs import check_batch, chunks, image_chunks, plan_classify, preprocess_chunk
from sft_engine.client.model_info import ModelInfo
from sft_engine.preprocess import Preprocessing

PREP = Preprocessing(input_size=16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def _info(max_batch_size=4, dims=(3, 16, 16), dtype="TYPE_FP32", prep=PREP):
    config = {
        "name": "toy", "max_batch_size": max_batch_size,
        "input": [{"name": "input", "data_type": dtype, "dims": list(dims)}],
        "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [3], "label_filename": "labels.txt"}],
        "parameters": {k: {"string_value": v} for k, v in (prep.to_parameters().items() if prep else [])},
    }
    return ModelInfo.from_config(config)


def test_ready_batch_passes_unchanged():
    x = np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)
    out = check_batch(x, _info())
    assert out.dtype == np.float32 and np.array_equal(out, x)


@pytest.mark.parametrize("shape, fragment", [((3, 16, 16), "x[None]"), ((2, 3, 15, 16), "resize"), ((2, 16, 16, 3), "resize")])
def test_wrong_shape_says_expected_and_given(shape, fragment):
    with pytest.raises(BadInput) as info:
        check_batch(np.zeros(shape, np.float32), _info())
    assert info.value.expected == ["N", 3, 16, 16] and info.value.given == list(shape)
    assert fragment in info.value.hint


def test_wrong_dtype_says_expected_and_given():
    with pytest.raises(BadInput) as info:
        check_batch(np.zeros((1, 3, 16, 16), np.float64), _info())
    assert info.value.expected == "float32" and info.value.given == "float64" and "astype" in info.value.hint


def test_batch_too_large_is_an_error_only_without_split():
    x = np.zeros((9, 3, 16, 16), np.float32)
    assert len(check_batch(x, _info(max_batch_size=4), split=True)) == 9
    with pytest.raises(BadInput) as info:
        check_batch(x, _info(max_batch_size=4), split=False)
    assert info.value.given == 9 and "split=True" in info.value.hint


def test_variable_dims_accept_any_size():
    assert check_batch(np.zeros((1, 3, 7, 9), np.float32), _info(dims=(3, -1, -1))).shape == (1, 3, 7, 9)


def test_empty_batch_and_non_arrays_are_rejected():
    with pytest.raises(BadInput):
        check_batch(np.zeros((0, 3, 16, 16), np.float32), _info())
    with pytest.raises(BadInput):
        check_batch([[1.0]], _info())


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    x = torch.randn(2, 3, 16, 16)
    assert np.array_equal(check_batch(x, _info()), x.numpy())


def test_chunks_keep_order_and_bound_size():
    x = np.arange(10)
    parts = chunks(x, 4)
    assert [len(p) for p in parts] == [4, 4, 2] and np.array_equal(np.concatenate(parts), x)
    assert [list(c) for c in image_chunks(list("abcde"), 2)] == [["a", "b"], ["c", "d"], ["e"]]


def test_plan_sorts_the_input_forms(tmp_path):
    info = _info()
    pixels = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    path = tmp_path / "a.png"
    Image.fromarray(pixels).save(path)
    assert len(plan_classify(str(path), info).images) == 1
    assert len(plan_classify(path, info).images) == 1
    assert len(plan_classify(Image.fromarray(pixels), info).images) == 1
    assert len(plan_classify(pixels, info).images) == 1
    assert len(plan_classify(np.stack([pixels] * 3), info).images) == 3
    assert len(plan_classify([path, pixels, Image.fromarray(pixels)], info).images) == 3
    ready = plan_classify(np.zeros((2, 3, 16, 16), np.float32), info)
    assert ready.ready is not None and len(ready) == 2


@pytest.mark.parametrize("bad", [[], [1.5], np.zeros((2, 2), np.int32), 42, [np.zeros((3, 16, 16), np.float32)]])
def test_plan_rejects_what_is_not_an_image(bad):
    with pytest.raises(BadInput):
        plan_classify(bad, _info())


def test_preprocessing_is_exactly_the_builds(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    out = preprocess_chunk([pixels, pixels], _info())
    expected = PREP.batch([pixels, pixels])
    assert out.shape == (2, 3, 16, 16) and out.dtype == np.float32
    assert np.array_equal(out, expected)


def test_unreadable_image_is_bad_input(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(BadInput) as info:
        preprocess_chunk([bad], _info())
    assert "bad.png" in info.value.message
    with pytest.raises(BadInput):
        preprocess_chunk([tmp_path / "missing.png"], _info())


def test_model_without_recorded_preprocessing_takes_ready_tensors_only():
    info = _info(prep=None)
    assert info.preprocessing is None
    with pytest.raises(BadInput) as err:
        preprocess_chunk([np.zeros((4, 4, 3), np.uint8)], info)
    assert "NCHW" in err.value.hint


def test_preparation_windows_are_bounded_by_bytes_and_at_least_the_concurrency():
    from sft_engine.client.inputs import WINDOW_BYTES, window_for

    small = _info(max_batch_size=4)  # 4 × 3×16×16 float32 = 12 KiB per chunk
    assert window_for(small, 10, 4) == 10, "a small job is one window: prepare all, then send all"
    assert window_for(small, 10**6, 4) == WINDOW_BYTES // (4 * 3 * 16 * 16 * 4)
    big = _info(max_batch_size=64, dims=(3, 512, 512))  # 192 MiB per chunk
    assert window_for(big, 100, 3) == 3
