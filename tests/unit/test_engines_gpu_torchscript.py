"""The torchscript-gpu target (``engines/gpu/torchscript``): its config and FP16 weights, on CPU.

What needs CUDA or TensorRT lives in ``tests/gpu`` (run by ``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import torch
from tritonclient.grpc import model_config_pb2 as mc

from sft_engine.engines.gpu.torchscript import export_fp16_torchscript, torchscript_gpu_config, weight_dtypes
from sft_engine.repository.config import parse_pbtxt, to_pbtxt

PARAMS = {"preprocess_input_size": "32"}


def _pbtxt(spec):
    """Render and parse back, as the repository writer does: what Triton would read."""
    return parse_pbtxt(to_pbtxt(spec))


def test_torchscript_gpu_config_follows_pytorch_backend_conventions():
    cfg = _pbtxt(torchscript_gpu_config("m", 4, (3, 32, 32), 16, 1, 100, (0,), PARAMS))
    assert cfg.platform == "pytorch_libtorch"
    assert [t.name for t in cfg.input] == ["INPUT__0"] and [t.name for t in cfg.output] == ["OUTPUT__0"]
    assert (cfg.input[0].data_type, cfg.output[0].data_type) == (mc.TYPE_FP16, mc.TYPE_FP32)
    assert cfg.output[0].label_filename == "labels.txt"
    assert cfg.default_model_filename == "model.pt"
    assert not cfg.optimization.cuda.graphs, "CUDA graphs do nothing for the PyTorch backend"
    assert not cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU


def test_fp16_torchscript_holds_fp16_weights(tmp_path):
    """The torchscript-gpu export, on CPU: FP16 constants after freezing, FP32 logits out."""
    from sft_engine.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", 3).eval()
    example = torch.randn(2, 3, 32, 32).numpy()
    export_fp16_torchscript(model, example, torch.device("cpu"), tmp_path / "model.pt")
    loaded = torch.jit.load(str(tmp_path / "model.pt"))
    weights = weight_dtypes(loaded)
    assert set(weights) == {"float16"} and weights["float16"] > 2 * 11_000_000 * 0.9
    out = loaded(torch.from_numpy(example).half())
    assert out.dtype == torch.float32 and out.shape == (2, 3)
    assert next(model.parameters()).dtype == torch.float32, "the eager model must stay FP32"


# -- compatibility --------------------------------------------------------------------------
