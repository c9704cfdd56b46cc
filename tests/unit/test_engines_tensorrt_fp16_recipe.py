"""The FP16 compile arguments per Torch-TensorRT version (``engines/tensorrt/fp16_recipe``), without torch_tensorrt.

What needs CUDA or TensorRT lives in ``tests/gpu`` (run by ``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import json

import pytest
import torch

from sft_engine.engines.tensorrt.fp16_recipe import fp16_recipe
from sft_engine.deps import require_minor
from sft_engine.errors import TargetUnavailable


@pytest.mark.parametrize("version", ["2.5.0", "2.9.0+cu128"])
def test_up_to_2_9_asks_for_fp16_kernels_with_enabled_precisions(version):
    recipe = fp16_recipe(version)
    assert recipe.api == "enabled_precisions"
    assert recipe.compile_kwargs == {"enabled_precisions": {torch.float16}}
    assert recipe.half_model and recipe.input_dtype == torch.float16


@pytest.mark.parametrize("version", ["2.10.0", "2.12.1"])
def test_2_10_to_2_12_never_pass_enabled_precisions_under_explicit_typing(version):
    recipe = fp16_recipe(version)
    assert recipe.api == "explicit_typing"
    assert "enabled_precisions" not in recipe.compile_kwargs  # it raises there
    assert recipe.half_model and recipe.input_dtype == torch.float16


@pytest.mark.parametrize("version", ["2.13.0", "2.14.1.dev20260101+cu130"])
def test_from_2_13_fp16_comes_from_the_half_model(version):
    recipe = fp16_recipe(version)
    assert recipe.api == "half_model"
    assert recipe.compile_kwargs == {}  # enabled_precisions would be dropped silently
    assert recipe.half_model and recipe.input_dtype == torch.float16


@pytest.mark.parametrize("version", ["2.10.0", "2.12.0", "2.13.0", "2.14.0"])
def test_autocast_form_for_dynamo_compile(version):
    recipe = fp16_recipe(version, entry="compile", autocast=True)
    assert recipe.compile_kwargs == {"enable_autocast": True, "autocast_low_precision_type": torch.float16}
    assert not recipe.half_model and recipe.input_dtype == torch.float32


def test_autocast_is_refused_where_it_does_not_exist():
    with pytest.raises(ValueError, match="2.10"):
        fp16_recipe("2.9.0", entry="compile", autocast=True)
    with pytest.raises(ValueError, match="serialized"):
        fp16_recipe("2.13.0", entry="serialized_engine", autocast=True)


def test_too_old_torch_tensorrt_is_a_clear_error():
    with pytest.raises(TargetUnavailable, match="2.4.1 is older than 2.5"):
        fp16_recipe("2.4.1")


def test_recipe_is_recorded_as_json():
    described = fp16_recipe("2.9.0").describe()
    assert json.loads(json.dumps(described))["compile_kwargs"] == {"enabled_precisions": ["float16"]}
    assert require_minor("v2.13.0rc4") == (2, 13)


# -- FP16 tolerance -------------------------------------------------------------------------
