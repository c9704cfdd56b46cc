from __future__ import annotations

import pytest

from sft_engine.errors import RepositoryError
from sft_engine.preprocess import Preprocessing
from sft_engine.repository.config import (
    DynamicBatchingSpec,
    InstanceGroupSpec,
    ModelConfigSpec,
    TensorSpec,
    parameters_of,
    parse_pbtxt,
    to_pbtxt,
    to_proto,
)


def _spec(**kw):
    base = dict(
        name="m", backend="python", max_batch_size=8,
        inputs=(TensorSpec("input", "FP32", (3, 32, 32)),),
        outputs=(TensorSpec("logits", "FP32", (4,), label_filename="labels.txt"),),
        instance_groups=(InstanceGroupSpec("KIND_CPU", 2),),
        dynamic_batching=DynamicBatchingSpec(150),
        parameters=tuple(Preprocessing(input_size=32).to_parameters().items()),
        warmup_batch_sizes=(1, 8),
    )
    base.update(kw)
    return ModelConfigSpec(**base)


def test_round_trip_keeps_every_field():
    text = to_pbtxt(_spec())
    cfg = parse_pbtxt(text)
    assert cfg.max_batch_size == 8
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 150
    assert cfg.instance_group[0].count == 2
    assert cfg.output[0].label_filename == "labels.txt"
    assert list(cfg.input[0].dims) == [3, 32, 32]
    assert [w.batch_size for w in cfg.model_warmup] == [1, 8]
    assert Preprocessing.from_parameters(parameters_of(cfg)) == Preprocessing(input_size=32)


def test_gpu_fields():
    cfg = to_proto(_spec(backend=None, platform="tensorrt_plan", cuda_graphs=True,
                         instance_groups=(InstanceGroupSpec("KIND_GPU", 1, (0, 1)),), cc_model_filenames=(("9.0", "model_sm90.plan"),)))
    assert cfg.optimization.cuda.graphs
    assert list(cfg.instance_group[0].gpus) == [0, 1]
    assert cfg.cc_model_filenames["9.0"] == "model_sm90.plan"


@pytest.mark.parametrize("kw, needle", [
    (dict(backend="python", platform="tensorrt_plan"), "exactly one"),
    (dict(max_batch_size=0), "dynamic batching"),
    (dict(inputs=(TensorSpec("input", "FP32", (3, 0, 32)),)), "invalid dims"),
    (dict(outputs=(TensorSpec("input", "FP32", (4,)),)), "repeats"),
    (dict(backend=None, platform="pytorch_libtorch"), "NAME__index"),
    (dict(warmup_batch_sizes=(16,)), "warmup"),
])
def test_invalid_configs_are_refused(kw, needle):
    with pytest.raises(RepositoryError, match=needle):
        to_proto(_spec(**kw))


def test_malformed_text_is_a_repository_error():
    with pytest.raises(RepositoryError, match="not a valid Triton model config"):
        parse_pbtxt("name: 'x' bogus_field: 3")
