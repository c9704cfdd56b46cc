"""The shared pixel pipeline and the two image-serving models, without a server.

The served ``<name>_preprocess/<N>/model.py`` must be ``sft_engine/pixels.py`` byte for
byte and need nothing of sft-engine; bytes decoded by it must give exactly the tensor
that client-side preprocessing gives; every kind of bad image is one line.
"""

from __future__ import annotations

import ast
import json
import io
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from tritonclient.grpc import model_config_pb2 as mc

from sft_engine.build import publish_image_models
from sft_engine.engines.cpu.target import cpu_config
from sft_engine.errors import ConfigError, RepositoryError
from sft_engine.pixels import ImageError, PixelPipeline
from sft_engine.preprocess import Preprocessing
from sft_engine.repository.config import parameters_of, read_config, to_pbtxt, to_proto
from sft_engine.repository.image_models import ImageServing, ensemble_spec, preprocess_model_file, preprocess_spec
from sft_engine.repository.writer import list_versions

PREP = Preprocessing(input_size=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def _encoded(fmt: str, size=(48, 40), mode="RGB", seed=0, **save) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, format=fmt, **save)
    return buf.getvalue()


def _engine_spec():
    return cpu_config("demo", 4, PREP.shape, 8, 1, 0, PREP.to_parameters())


@pytest.mark.parametrize("fmt,mode", [("PNG", "RGB"), ("JPEG", "RGB"), ("WEBP", "RGB"), ("PNG", "RGBA"), ("PNG", "L"), ("PNG", "P")])
def test_bytes_give_exactly_the_client_side_tensor(tmp_path, fmt, mode):
    data = _encoded(fmt, mode=mode)
    path = tmp_path / f"img.{fmt.lower()}"
    path.write_bytes(data)
    served = PixelPipeline.from_parameters(parameters_of(to_proto(preprocess_spec(_engine_spec()))))
    np.testing.assert_array_equal(served.bytes_to_array(data), PREP.image_to_array(path))


def test_pipeline_reads_the_engine_parameters_back():
    pipe = PixelPipeline.from_parameters(PREP.to_parameters())
    assert pipe.input_size == 32 and pipe.max_image_pixels == 40_000_000
    np.testing.assert_array_equal(pipe.mean, np.float32([0.5, 0.4, 0.3]))
    with pytest.raises(ValueError, match="unsupported preprocessing layout"):
        PixelPipeline.from_parameters({**PREP.to_parameters(), "preprocess_layout": "NHWC"})


def _bomb() -> bytes:
    """8000×6000 = 48 MP, a few KB as a 1-bit PNG: over the default limit of 40 MP."""
    buf = io.BytesIO()
    Image.new("1", (8000, 6000)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("data,message", [
    (b"", r"the image is empty \(0 bytes\)"),
    (b"GIF89a" + bytes(100), "not a PNG, JPEG or WebP image"),  # GIF is not among the accepted formats
    (b"hello, world", "the 12 bytes are not a PNG, JPEG or WebP image"),
    (_encoded("JPEG", size=(200, 150))[:600], "the (JPEG )?image is truncated or corrupt"),
    (_encoded("PNG", size=(200, 150))[:300], "the PNG image is truncated or corrupt"),
    (_bomb(), "8000x6000 = 48000000 pixels, over the limit of 40000000 pixels"),
])
def test_bad_images_are_one_line_errors(data, message):
    pipe = PixelPipeline.from_parameters(PREP.to_parameters())
    with pytest.raises(ImageError, match=message) as info:
        pipe.bytes_to_array(data)
    assert "\n" not in str(info.value)


def test_pixel_limit_is_a_parameter():
    pipe = PixelPipeline.from_parameters({**PREP.to_parameters(), "preprocess_max_image_pixels": "1000"})
    with pytest.raises(ImageError, match="48x40 = 1920 pixels, over the limit of 1000"):
        pipe.bytes_to_array(_encoded("PNG"))


@pytest.mark.parametrize("threads", [None, 2])
def test_a_bad_image_spoils_nothing_else_in_its_batch(threads):
    pipe = PixelPipeline.from_parameters(PREP.to_parameters())
    good = [_encoded("PNG", seed=i) for i in range(3)]
    items = [good[0], b"", good[1], b"junk", good[2]]
    with ThreadPoolExecutor(threads or 1) as pool:
        out = pipe.arrays_from_bytes(items, pool if threads else None)
    assert [type(o).__name__ for o in out] == ["ndarray", "ImageError", "ndarray", "ImageError", "ndarray"]
    for got, data in zip([out[0], out[2], out[4]], good):
        np.testing.assert_array_equal(got, pipe.bytes_to_array(data))


def test_served_model_file_is_the_shared_module_and_needs_no_sft_engine(tmp_path):
    repo = tmp_path / "repo"
    publish_image_models(repo, _engine_spec(), ["a", "b", "c", "d"], ImageServing(), 1)
    served = repo / "demo_preprocess" / "1" / "model.py"
    assert served.read_bytes() == preprocess_model_file().read_bytes()
    assert served.read_bytes() == (sys.modules["sft_engine.pixels"].__file__ and open(sys.modules["sft_engine.pixels"].__file__, "rb").read())
    imported = set()
    for node in ast.walk(ast.parse(served.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"io", "json", "concurrent", "numpy", "PIL", "triton_python_backend_utils"}, imported
    assert (repo / "demo_image" / "1").is_dir() and (repo / "demo_image" / "labels.txt").read_text() == "a\nb\nc\nd\n"
    publish_image_models(repo, _engine_spec(), ["a", "b", "c", "d"], ImageServing(), 2)
    assert list_versions(repo / "demo_preprocess") == [1, 2] and list_versions(repo / "demo_image") == [1, 2]


def test_configs_wire_bytes_through_preprocessing_to_the_engine(tmp_path):
    engine = _engine_spec()
    pre = to_proto(preprocess_spec(engine, ImageServing(max_image_pixels=1_000_000, instances=3)))
    assert [(t.name, t.data_type, list(t.dims)) for t in pre.input] == [("IMAGE", mc.TYPE_STRING, [1])]
    assert [(t.name, list(t.dims)) for t in pre.output] == [("PIXELS", [3, 32, 32])]
    assert pre.backend == "python" and pre.instance_group[0].count == 3 and pre.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert pre.max_batch_size == 8 and pre.HasField("dynamic_batching") and not pre.model_warmup
    assert parameters_of(pre)["preprocess_max_image_pixels"] == "1000000"
    ens = to_proto(ensemble_spec(engine))
    assert ens.platform == "ensemble" and ens.max_batch_size == 8 and ens.output[0].label_filename == "labels.txt"
    steps = [(s.model_name, dict(s.input_map), dict(s.output_map)) for s in ens.ensemble_scheduling.step]
    assert steps == [("demo_preprocess", {"IMAGE": "IMAGE"}, {"PIXELS": "PIXELS"}), ("demo", {"input": "PIXELS"}, {"logits": "logits"})]
    (tmp_path / "config.pbtxt").write_text(to_pbtxt(ens))
    assert read_config(tmp_path / "config.pbtxt") == ens


def test_ensemble_rules_are_checked_before_writing():
    from dataclasses import replace

    from sft_engine.repository.config import DynamicBatchingSpec

    with pytest.raises(RepositoryError, match="cannot have instance groups, a dynamic batcher or warmup"):
        to_proto(replace(ensemble_spec(_engine_spec()), dynamic_batching=DynamicBatchingSpec()))
    with pytest.raises(RepositoryError, match="ensemble steps go with platform 'ensemble'"):
        to_proto(replace(ensemble_spec(_engine_spec()), ensemble_steps=()))


@pytest.mark.parametrize("kw,flag", [(dict(max_image_pixels=10), "--max-image-pixels"), (dict(instances=0), "instances"), (dict(decode_threads=0), "threads")])
def test_image_serving_settings_are_checked(kw, flag):
    with pytest.raises(ConfigError, match=flag):
        ImageServing(**kw)


def test_the_engine_and_its_image_models_publish_as_one_unit(tmp_path):
    """A failure while staging the last of the three leaves none of them published."""
    from dataclasses import replace

    from sft_engine.build import image_releases
    from sft_engine.repository.writer import ModelRelease, publish_models
    from tests.helpers import tree_digest

    repo = tmp_path / "repo"
    engine = _engine_spec()
    (tmp_path / "model.onnx").write_bytes(b"engine bytes")

    def engine_manifest(version_dir, version, unit):
        pass

    def releases():
        return [ModelRelease("demo", to_pbtxt(engine), ("a", "b", "c", "d"), {"model.onnx": tmp_path / "model.onnx"}, engine_manifest),
                *image_releases(engine, ["a", "b", "c", "d"], ImageServing())]

    publish_models(repo, releases())
    before = tree_digest(repo)
    assert {p.name for p in repo.iterdir()} == {"demo", "demo_preprocess", "demo_image"}
    assert json.loads((repo / "demo_image" / "1" / "build_manifest.json").read_text())["engine_details"]["serves"] == {"model": "demo", "version": 1}

    def broken(version_dir, version, unit):
        raise OSError(28, "No space left on device")

    failing = releases()
    failing[-1] = replace(failing[-1], manifest_writer=broken)
    with pytest.raises(RepositoryError, match=r"(?i)no space left on"):
        publish_models(repo, failing)
    assert tree_digest(repo) == before
    for name in ("demo", "demo_preprocess", "demo_image"):
        assert list_versions(repo / name) == [1]
