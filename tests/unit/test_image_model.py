"""The fused ``<name>_image`` of a CPU engine and the gated fast decode, without a server.

The published ``<name>_image/<N>/`` must hold the fused ``model.py``, ``pixels.py`` byte
for byte and the engine's own ``model.py`` and files; loaded as Triton would load it
(a stand-in ``triton_python_backend_utils``), it must answer the exact path's logits and
give each bad request its own error. The fast decode must stay off by default, change
only large JPEGs, and be refused by its gate when the labels move.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sft_engine.build import IMAGE_MODEL, image_releases
from sft_engine.build_config import BuildConfig
from sft_engine.engines.cpu.target import cpu_config
from sft_engine.engines.fast_decode import gate_fast_decode
from sft_engine.errors import ConfigError, ParityError
from sft_engine.pixels import PixelPipeline
from sft_engine.preprocess import Preprocessing
from sft_engine.repository.config import parameters_of, read_config, to_pbtxt
from sft_engine.repository.image_models import ImageServing, ensemble_spec, fused_spec, preprocess_model_file, served_as_ensemble
from sft_engine.repository.writer import ModelRelease, publish_models
from sft_engine.verify import ParityData

PREP = Preprocessing(input_size=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
LABELS = ("a", "b", "c", "d")


def _photo(width: int, height: int, fmt: str = "JPEG", seed: int = 0) -> bytes:
    """Smooth gradients plus grain: compresses like a photograph, not like noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([127 + 100 * np.sin(xx / rng.uniform(20, 60)), 127 + 100 * np.cos((xx + yy) / rng.uniform(30, 90)),
                     127 + 100 * np.sin(yy / rng.uniform(15, 50))], axis=-1) + rng.normal(0, 6, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _tiny_onnx(path: Path) -> None:
    """input [N,3,32,32] → mean over H,W → [N,3] · W[3,4] → logits [N,4]: a real engine the runner loads."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.array([[3, -1, 0, 1], [-2, 2, 1, 0], [1, 0, -3, 2]], np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[2, 3], keepdims=0), helper.make_node("MatMul", ["pooled", "w"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], initializer=[weights])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def _engine_files(tmp_path: Path) -> dict[str, Path]:
    from sft_engine.engines.cpu.target import SERVING_MODEL

    _tiny_onnx(tmp_path / "model.onnx")
    (tmp_path / "engine.json").write_text(json.dumps({"engine": "onnxruntime", "file": "model.onnx", "intra_op_threads": 1}))
    return {"model.onnx": tmp_path / "model.onnx", "engine.json": tmp_path / "engine.json", "model.py": SERVING_MODEL}


def _publish(tmp_path: Path, settings: ImageServing = ImageServing()) -> Path:
    repo = tmp_path / "repo"
    engine = cpu_config("demo", 4, PREP.shape, 8, 1, 0, PREP.to_parameters())
    files = _engine_files(tmp_path)
    engine_release = ModelRelease("demo", to_pbtxt(engine), LABELS, files, lambda *a: None)
    publish_models(repo, [engine_release, *image_releases(engine, list(LABELS), settings, engine_files=files)])
    return repo


class _Tensor:
    def __init__(self, name, array):
        self._name, self._array = name, array

    def as_numpy(self):
        return self._array

    def name(self):
        return self._name


class _Error:
    INVALID_ARG = 3

    def __init__(self, message, code=None):
        self.message, self.code = message, code


class _Response:
    def __init__(self, output_tensors, error=None):
        self.output_tensors, self.error = output_tensors, error


def _fake_backend() -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor = _Tensor
    pb.TritonError = _Error
    pb.InferenceResponse = _Response
    pb.get_input_tensor_by_name = lambda request, name: request.get(name)
    pb.Logger = types.SimpleNamespace(log_warn=lambda message: None)
    return pb


def _served_model(repo: Path, monkeypatch) -> object:
    """``demo_image``'s model.py, initialized as the Python backend initializes it."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_backend())
    version = repo / "demo_image" / "1"
    spec = importlib.util.spec_from_file_location("served_image_model", version / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from google.protobuf import json_format

    config = json_format.MessageToDict(read_config(repo / "demo_image" / "config.pbtxt"), preserving_proto_field_name=True)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(repo / "demo_image"), "model_version": "1",
                      "model_name": "demo_image"})
    return model


def _request(*images: bytes) -> dict:
    array = np.empty((len(images), 1), dtype=object)
    for i, data in enumerate(images):
        array[i, 0] = data
    return {"IMAGE": _Tensor("IMAGE", array)}


def test_the_fused_version_holds_its_own_copies_of_everything_it_runs(tmp_path):
    repo = _publish(tmp_path)
    version = repo / "demo_image" / "1"
    assert (version / "model.py").read_bytes() == IMAGE_MODEL.read_bytes()
    assert (version / "pixels.py").read_bytes() == preprocess_model_file().read_bytes()
    assert (version / "serving_model.py").read_bytes() == (repo / "demo" / "1" / "model.py").read_bytes()
    assert (version / "model.onnx").read_bytes() == (repo / "demo" / "1" / "model.onnx").read_bytes()
    cfg = read_config(repo / "demo_image" / "config.pbtxt")
    assert cfg.backend == "python" and not cfg.platform and cfg.max_batch_size == 8
    assert [(t.name, list(t.dims)) for t in cfg.input] == [("IMAGE", [1])] and cfg.output[0].label_filename == "labels.txt"
    assert "fast_decode" not in parameters_of(cfg)
    manifest = json.loads((version / "build_manifest.json").read_text())
    assert manifest["engine"] == "image" and manifest["engine_details"]["serves"] == {"model": "demo", "version": 1}
    assert "serving_model.py" in manifest["outputs"] and "pixels.py" in manifest["outputs"]
    assert (repo / "demo_preprocess" / "1" / "model.py").is_file()  # still published, for clients that want the tensor


def test_the_fused_model_answers_the_exact_path_and_each_bad_request_alone(tmp_path, monkeypatch):
    from sft_engine.engines.cpu.serving_model import EngineRunner

    repo = _publish(tmp_path)
    model = _served_model(repo, monkeypatch)
    photos = [_photo(500, 375, seed=i) for i in range(3)] + [_photo(120, 90, "PNG", seed=9)]
    requests = [_request(photos[0]), _request(b"junk"), _request(photos[1], photos[2]), _request(photos[3], b""), _request(photos[3])]
    responses = model.execute(requests)
    assert len(responses) == 5
    assert [r.error is None for r in responses] == [True, False, True, False, True]
    assert "not a PNG, JPEG or WebP image" in responses[1].error.message and responses[1].error.code == _Error.INVALID_ARG
    assert responses[3].error.message.startswith("image 1 of 2: the image is empty")
    exact = PREP.pipeline()
    runner = EngineRunner(str(repo / "demo" / "1"))
    want = runner.run(np.stack([exact.bytes_to_array(p) for p in (photos[0], photos[1], photos[2], photos[3])]))
    got = np.concatenate([responses[i].output_tensors[0].as_numpy() for i in (0, 2, 4)])
    assert [t.name() for t in responses[0].output_tensors] == ["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert model.execute([_request(b"")])[0].error is not None  # a batch of bad images only: no engine call, one error


def test_an_existing_ensemble_image_model_stays_an_ensemble(tmp_path):
    repo = tmp_path / "repo"
    engine = cpu_config("demo", 4, PREP.shape, 8, 1, 0, PREP.to_parameters())
    assert not served_as_ensemble(repo, "demo")
    publish_models(repo, [ModelRelease("demo", to_pbtxt(engine), LABELS, _engine_files(tmp_path), lambda *a: None),
                          *image_releases(engine, list(LABELS), ImageServing())])  # no engine files: the ensemble
    assert served_as_ensemble(repo, "demo") and read_config(repo / "demo_image" / "config.pbtxt").platform == "ensemble"


def test_fused_spec_records_the_fast_decode_only_when_enabled():
    engine = cpu_config("demo", 4, PREP.shape, 8, 1, 0, PREP.to_parameters())
    assert "fast_decode" not in dict(fused_spec(engine).parameters)
    assert dict(fused_spec(engine, ImageServing(fast_decode=True)).parameters)["fast_decode"] == "true"
    assert "fast_decode" not in dict(engine.parameters)  # the engine's preprocessing, which clients read, stays exact
    with pytest.raises(ConfigError, match="not a Python-backend engine"):
        from dataclasses import replace

        fused_spec(replace(engine, backend=None, platform="tensorrt_plan"))
    assert ensemble_spec(engine).platform == "ensemble"


def test_fast_decode_is_off_by_default_and_touches_only_large_jpegs():
    large, small, png = _photo(500, 375), _photo(60, 50), _photo(500, 375, "PNG")
    exact = PixelPipeline.from_parameters(PREP.to_parameters())
    fast = PixelPipeline.from_parameters({**PREP.to_parameters(), "fast_decode": "true"})
    assert not exact.fast_decode and fast.fast_decode
    assert exact.decode(large).size == (500, 375) and fast.decode(large).size == (63, 47)  # 1/8: the smallest scale still >= 32
    for data in (small, png):
        np.testing.assert_array_equal(fast.bytes_to_array(data), exact.bytes_to_array(data))
    close = np.abs(fast.bytes_to_array(large) - exact.bytes_to_array(large))
    assert 0 < close.mean() < 0.1  # different pixels, the same picture


def _gate_images(tmp_path: Path, count: int, size: tuple[int, int]) -> ParityData:
    paths = []
    for i in range(count):
        path = tmp_path / f"c{i % 2}" / f"{i}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(_photo(*size, seed=i))
        paths.append(path)
    return ParityData(PREP.batch(paths), np.arange(count) % 2, tuple(p.relative_to(tmp_path).as_posix() for p in paths))


def test_the_fast_decode_gate_records_agreement_and_refuses_moved_labels(tmp_path):
    data = _gate_images(tmp_path, 6, (400, 300))

    def coarse(batch):  # the label follows the image's overall colour: reduced-scale decoding keeps it
        return batch.mean(axis=(2, 3))

    record = gate_fast_decode(coarse, data, tmp_path, PREP, 0.99)
    assert record["top1_agreement"] == 1.0 and record["reduced_scale_images"] == 6 and record["gate_images"] == 6
    assert 0 < record["mean_abs_input_diff"] < 0.1

    def fragile(batch):  # the label follows the last bits of every pixel: any change of pixels moves it
        keys = (np.abs(batch.reshape(len(batch), -1)).sum(1) * 1e4).astype(np.int64) % 4
        return np.eye(4)[keys]

    with pytest.raises(ParityError, match=r"keeps the engine's label on only .* of 6 gate images \(at least 99.00% needed\)"):
        gate_fast_decode(fragile, data, tmp_path, PREP, 0.99)


def test_the_fast_decode_gate_refuses_to_judge_nothing(tmp_path):
    data = _gate_images(tmp_path, 3, (50, 40))  # smaller than twice the target: decoded exactly
    with pytest.raises(ParityError, match="none of the 3 gate images is a JPEG at least twice"):
        gate_fast_decode(lambda b: b.mean(axis=(2, 3)), data, tmp_path, PREP, 0.99)


def test_fast_decode_needs_labelled_images_and_reaches_the_image_models():
    with pytest.raises(ConfigError, match="--fast-decode needs labelled images"):
        BuildConfig(arch="resnet18", num_classes=4, allow_random_weights=True, fast_decode=True).validated()
    assert BuildConfig(fast_decode=True).image_serving.fast_decode is True
    assert BuildConfig().image_serving.fast_decode is False


def test_the_build_flag_sets_the_field():
    import argparse

    from sft_engine.commands import build as build_cmd

    parser = argparse.ArgumentParser()
    build_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["build", "--fast-decode"])
    assert args.fast_decode is True and "fast_decode" in build_cmd._FLAG_FIELDS


def test_an_enabled_fast_decode_is_recorded_in_both_image_models(tmp_path):
    repo = tmp_path / "repo"
    engine = cpu_config("demo", 4, PREP.shape, 8, 1, 0, PREP.to_parameters())
    files = _engine_files(tmp_path)
    gate = {"fast_decode": {"enabled": True, "top1_agreement": 1.0, "gate_images": 200}}
    publish_models(repo, [ModelRelease("demo", to_pbtxt(engine), LABELS, files, lambda *a: None),
                          *image_releases(engine, list(LABELS), ImageServing(fast_decode=True), engine_files=files, extra_details=gate)])
    for name in ("demo_image", "demo_preprocess"):
        assert parameters_of(read_config(repo / name / "config.pbtxt"))["fast_decode"] == "true", name
        assert json.loads((repo / name / "1" / "build_manifest.json").read_text())["engine_details"]["fast_decode"] == gate["fast_decode"]
        assert PixelPipeline.from_parameters(parameters_of(read_config(repo / name / "config.pbtxt"))).fast_decode
    assert "fast_decode" not in parameters_of(read_config(repo / "demo" / "config.pbtxt"))
