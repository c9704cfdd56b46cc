"""The onnx target (``engines/onnx``): config on CPU or GPU instances, built and verified on CPU.

What needs CUDA or TensorRT lives in ``tests/gpu`` (run by ``scripts/gpu_check.sh``).
"""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2 as mc

from sft_engine.build import build
from sft_engine.build_config import BuildConfig
from sft_engine.engines.onnx import onnx_config
from sft_engine.repository.config import parse_pbtxt, to_pbtxt
from sft_engine.repository.manifest import read_manifest
from tests.helpers import LABELS

PARAMS = {"preprocess_input_size": "32"}


def _pbtxt(spec):
    """Render and parse back, as the repository writer does: what Triton would read."""
    return parse_pbtxt(to_pbtxt(spec))


def test_onnx_config_cpu_by_default_gpu_with_tensorrt_accelerator():
    cpu = _pbtxt(onnx_config("m", 4, (3, 32, 32), 8, 3, 0, (), PARAMS))
    assert cpu.platform == "onnxruntime_onnx" and cpu.default_model_filename == "model.onnx"
    assert (cpu.instance_group[0].kind, cpu.instance_group[0].count) == (mc.ModelInstanceGroup.KIND_CPU, 3)
    assert (cpu.input[0].data_type, cpu.output[0].data_type) == (mc.TYPE_FP32, mc.TYPE_FP32)
    assert not cpu.optimization.execution_accelerators.gpu_execution_accelerator
    gpu = _pbtxt(onnx_config("m", 4, (3, 32, 32), 8, 1, 0, (1,), PARAMS))
    assert (gpu.instance_group[0].kind, list(gpu.instance_group[0].gpus)) == (mc.ModelInstanceGroup.KIND_GPU, [1])
    (acc,) = gpu.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"
    assert [t.name for t in gpu.input] == ["input"] and [t.name for t in gpu.output] == ["logits"]


# -- is it really FP16? ---------------------------------------------------------------------

def test_onnx_target_builds_and_verifies_on_cpu(tiny_weights, tmp_path):
    repo = tmp_path / "repo"
    result = build(BuildConfig(arch="resnet18", num_classes=4, weights=tiny_weights, input_size=32, max_batch_size=8,
                               repository=repo, name="tiny_onnx", target="onnx", labels=list(LABELS), parity_samples=8))
    assert result.target == "onnx" and result.engine == "onnxruntime"
    version = repo / "tiny_onnx" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["build_manifest.json", "config.pbtxt.built", "model.onnx"], "no Python-backend files"
    cfg = parse_pbtxt((repo / "tiny_onnx" / "config.pbtxt").read_text())
    assert cfg.platform == "onnxruntime_onnx" and cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    manifest = read_manifest(version).to_dict()
    assert manifest["parity"]["passed"] and manifest["parity"]["max_abs_diff"] < 1e-3
    assert manifest["compatibility"]["onnx_opset"] == 17 and manifest["compatibility"]["engine"] == "onnx"


def test_onnx_serve_gpus_switch_to_gpu_instances(tiny_weights, tmp_path):
    repo = tmp_path / "repo"
    result = build(BuildConfig(arch="resnet18", num_classes=4, weights=tiny_weights, input_size=32, max_batch_size=8, repository=repo,
                               name="tiny_onnx_gpu", target="onnx", labels=list(LABELS), parity_samples=8, serve_gpus="all"))
    cfg = parse_pbtxt((repo / "tiny_onnx_gpu" / "config.pbtxt").read_text())
    assert result.target == "onnx"
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU and list(cfg.instance_group[0].gpus) == []
    (acc,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt"
