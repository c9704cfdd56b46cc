"""The half-precision export check the tensorrt target relies on (``engines/tensorrt/export_check``), on CPU.

What needs CUDA or TensorRT lives in ``tests/gpu`` (run by ``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import torch



def test_half_model_exports_as_the_tensorrt_target_needs_it():
    """The front half of the tensorrt target on CPU: dynamic batch 1..max, the config's input name,
    one FP32 output, ep.module() within FP16 tolerance of eager at batch 1 and max."""
    from sft_engine.engines.tensorrt.export_check import check_half_export
    from sft_engine.engines.tensorrt.target import INPUT_NAME
    from sft_engine.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", 4).eval()
    check = check_half_export(model, (3, 32, 32), 8, torch.device("cpu"), expected_input=INPUT_NAME)
    assert check.passed, check.reasons
    assert (check.input_name, check.input_dtype, check.batch_range) == ("images", "FP16", [1, 8])
    assert check.output_dtypes == ["FP32"] and len(check.outputs) == 1
    assert set(check.max_abs_diff) == {"1", "8"} and all(0 < d < 0.05 for d in check.max_abs_diff.values())


def test_export_check_names_a_wrong_binding_name():
    from sft_engine.engines.tensorrt.export_check import check_half_export
    from sft_engine.models import build_model

    model = build_model("resnet18", 4).eval()
    check = check_half_export(model, (3, 32, 32), 1, torch.device("cpu"), expected_input="INPUT__0")
    assert not check.passed and "named 'images'" in check.reasons[0]
    assert check.batch_range == [1, 1]
