"""Where a build runs (``--build-gpu``) and where Triton serves (``--serve-gpus``): validated apart (``build_config``), placed apart (``build.published_config``)."""

from __future__ import annotations

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from sft_engine.build_config import BuildConfig
from sft_engine.errors import ConfigError
from sft_engine.repository.config import parse_pbtxt, to_pbtxt


def _pbtxt(spec):
    """Render and parse back, as the repository writer does: what Triton would read."""
    return parse_pbtxt(to_pbtxt(spec))


# -- build devices are not serving placement ------------------------------------------------

def _cfg(*argv):
    from sft_engine.cli import build_parser
    from sft_engine.commands.build import config_from_args

    return config_from_args(build_parser().parse_args(["build", "--arch", "resnet18", "--num-classes", "3", "--allow-random-weights", *argv]))


def test_build_gpu_does_not_place_the_served_instances():
    """A plan built with --build-gpu 1 must load on a one-GPU server: instance_group.gpus stays empty (all GPUs)."""
    from sft_engine.build import export_settings, published_config
    from sft_engine.engines.tensorrt.target import tensorrt_engine_config

    settings = export_settings(_cfg("--target", "tensorrt", "--build-gpu", "1").validated())
    assert settings.build_gpus == (1,) and settings.serve_gpus is None
    cfg = _pbtxt(published_config(tensorrt_engine_config(3, (3, 32, 32)), settings))
    group = cfg.instance_group[0]
    assert group.kind == mc.ModelInstanceGroup.KIND_GPU and list(group.gpus) == []
    placed = export_settings(_cfg("--target", "tensorrt", "--build-gpu", "1", "--serve-gpus", "0,2").validated())
    assert list(_pbtxt(published_config(tensorrt_engine_config(3, (3, 32, 32)), placed)).instance_group[0].gpus) == [0, 2]
    everywhere = export_settings(_cfg("--target", "torchscript-gpu", "--serve-gpus", "all").validated())
    assert everywhere.serve_gpus == ()


def test_gpus_flag_and_key_are_refused_naming_their_replacements():
    for make in (lambda: _cfg("--target", "tensorrt", "--gpus", "1"), lambda: BuildConfig().merged({"gpus": [1]}, "spec.toml")):
        with pytest.raises(ConfigError) as info:
            make()
        assert "--build-gpu" in info.value.one_line() and "--serve-gpus" in info.value.one_line()
    with pytest.raises(ConfigError, match="--target cpu serves on CPU"):
        _cfg("--target", "cpu", "--serve-gpus", "0").validated()
    with pytest.raises(ConfigError, match="distinct GPU ids"):
        _cfg("--target", "onnx", "--serve-gpus", "1,1").validated()
    with pytest.raises(ConfigError, match="not a list of GPU ids"):
        _cfg("--target", "tensorrt", "--build-gpu", "first").validated()
