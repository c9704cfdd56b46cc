"""The tensorrt target without a GPU (``engines/tensorrt/target``): its config, batch profile, plan names, and detailed profiling.

What needs CUDA or TensorRT lives in ``tests/gpu`` (run by ``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import logging

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from sft_engine.engines.tensorrt.target import batch_profile, plan_filenames, tensorrt_config
from sft_engine.repository.config import parse_pbtxt, to_pbtxt

PARAMS = {"preprocess_input_size": "32"}


def _pbtxt(spec):
    """Render and parse back, as the repository writer does: what Triton would read."""
    return parse_pbtxt(to_pbtxt(spec))


def test_tensorrt_config_single_architecture():
    cfg = _pbtxt(tensorrt_config("m", 4, (3, 32, 32), 64, 2, 300, (0, 1), PARAMS, plans={"9.0": "model.plan"}))
    assert cfg.platform == "tensorrt_plan" and not cfg.backend
    assert cfg.max_batch_size == 64
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.input] == [("images", mc.TYPE_FP16, [3, 32, 32])]
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.output] == [("output0", mc.TYPE_FP32, [4])]
    assert cfg.output[0].label_filename == "labels.txt"
    group = cfg.instance_group[0]
    assert (group.kind, group.count, list(group.gpus)) == (mc.ModelInstanceGroup.KIND_GPU, 2, [0, 1])
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 300
    assert cfg.optimization.cuda.graphs is True
    assert sorted(w.batch_size for w in cfg.model_warmup) == [1, 64]
    assert all(w.inputs["images"].data_type == mc.TYPE_FP16 for w in cfg.model_warmup)
    assert cfg.default_model_filename == "model.plan" and not cfg.cc_model_filenames
    assert cfg.parameters["preprocess_input_size"].string_value == "32"


def test_tensorrt_config_several_architectures_use_cc_model_filenames():
    plans = plan_filenames(["9.0", "8.0", "9.0"])
    assert plans == {"8.0": "model_sm80.plan", "9.0": "model_sm90.plan"}
    cfg = _pbtxt(tensorrt_config("m", 4, (3, 32, 32), 8, 1, 0, (), PARAMS, plans=plans))
    assert dict(cfg.cc_model_filenames) == plans
    assert not cfg.default_model_filename
    assert list(cfg.instance_group[0].gpus) == []  # every GPU of the serving host
    assert plan_filenames(["8.6"]) == {"8.6": "model.plan"}


def test_batch_profile():
    assert batch_profile(1) == (1, 1, 1)
    assert batch_profile(256) == (1, 256, 256)
    with pytest.raises(ValueError):
        batch_profile(0)


@pytest.mark.parametrize("version,mechanism,extra", [
    ((2, 5), "debug_argument", {"debug": True}),
    ((2, 7), "debug_argument", {"debug": True}),
    ((2, 8), "debugger", {}),
    ((2, 13), "debugger", {}),
])
def test_detailed_profiling_per_torch_tensorrt_version(version, mechanism, extra):
    """The Debugger exists from 2.8 (py/torch_tensorrt/dynamo/debug/ first appears at v2.8.0);
    2.5 - 2.7 set ProfilingVerbosity.DETAILED from debug=True on the conversion call."""
    from sft_engine.engines.tensorrt.target import DEBUGGER_SINCE, detailed_profiling

    assert DEBUGGER_SINCE == (2, 8)
    assert detailed_profiling(version) == (mechanism, extra)


# -- the tensorrt target's torch.export, checked where TensorRT is absent -------------------


class _Debugger:
    """A stand-in for torch_tensorrt.dynamo.Debugger: 2.8's __enter__ calls get_logging_level() unguarded."""

    entered = exited = 0
    fail_enter = False

    def __init__(self, **kwargs):
        pass

    def __enter__(self):
        logging.getLogger().handlers.append(logging.NullHandler())  # what the Debugger does to the root logger, before failing
        if _Debugger.fail_enter:
            raise RuntimeError("No such operator tensorrt::get_logging_level")
        _Debugger.entered += 1
        return self

    def __exit__(self, *exc):
        _Debugger.exited += 1
        return False


@pytest.fixture
def fake_debugger(monkeypatch):
    import sys
    import types

    package, dynamo = types.ModuleType("torch_tensorrt"), types.ModuleType("torch_tensorrt.dynamo")
    dynamo.Debugger = _Debugger
    package.dynamo = dynamo
    monkeypatch.setitem(sys.modules, "torch_tensorrt", package)
    monkeypatch.setitem(sys.modules, "torch_tensorrt.dynamo", dynamo)
    _Debugger.entered = _Debugger.exited = 0
    _Debugger.fail_enter = False
    return _Debugger


def test_a_debugger_whose_enter_fails_falls_back_to_plain_logging(fake_debugger, tmp_path):
    from sft_engine.engines.tensorrt.target import _detailed_profile

    handlers = logging.getLogger().handlers[:]
    fake_debugger.fail_enter = True
    with _detailed_profile((2, 8), tmp_path / "log") as (detailed, extra):
        assert (detailed, extra) == (False, {})
        assert logging.getLogger().handlers == handlers, "the half-done logging setup is undone for the build"
    assert logging.getLogger().handlers == handlers


def test_a_working_debugger_is_entered_and_left_and_build_errors_still_propagate(fake_debugger, tmp_path):
    from sft_engine.engines.tensorrt.target import _detailed_profile

    handlers = logging.getLogger().handlers[:]
    with _detailed_profile((2, 8), tmp_path / "log") as (detailed, _):
        assert detailed and fake_debugger.entered == 1
    assert fake_debugger.exited == 1 and logging.getLogger().handlers == handlers
    with pytest.raises(ValueError, match="unconvertible"):
        with _detailed_profile((2, 9), tmp_path / "log"):
            raise ValueError("unconvertible layer")
    assert fake_debugger.exited == 2 and logging.getLogger().handlers == handlers
