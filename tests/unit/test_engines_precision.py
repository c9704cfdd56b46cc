"""The precision table's gates (``engines/precision``): reduced-precision defaults that yield to what the user set.

What needs CUDA or TensorRT lives in ``tests/gpu`` (run by ``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import pytest

from sft_engine.build_config import BuildConfig
from sft_engine.engines.precision import gate_for
from sft_engine.verify import FP16_TOLERANCE, Tolerance


def test_fp16_tolerance_defaults_unless_the_user_set_a_value():
    given = Tolerance()  # FP32 defaults of the build
    assert gate_for("fp16", given, {}) == FP16_TOLERANCE
    assert FP16_TOLERANCE.min_top1_agreement == 0.995 and FP16_TOLERANCE.max_accuracy_drop == 0.3
    user = Tolerance(atol=0.5, rtol=0.001, min_top1_agreement=0.9)
    mixed = gate_for("fp16", user, {"parity_atol": "flags", "parity_min_top1_agreement": "spec.toml", "arch": "flags"})
    assert (mixed.atol, mixed.rtol, mixed.min_top1_agreement) == (0.5, FP16_TOLERANCE.rtol, 0.9)


# -- Triton configs -------------------------------------------------------------------------

def test_fp16_gate_passes_close_logits_and_refuses_wrong_ones(tmp_path):
    """The gate both GPU targets share, run on CPU with runners whose errors are known."""
    import numpy as np

    from sft_engine.errors import ParityError
    from sft_engine.verify import Check, ParityData, run_checks

    rng = np.random.default_rng(0)
    reference = rng.standard_normal((16, 4)).astype(np.float32) * 5
    cfg = BuildConfig().merged({"parity_atol": 0.02}, "flags")  # a value the user set survives
    data = ParityData(np.zeros((16, 3, 8, 8), np.float32))
    gate = gate_for("fp16", Tolerance(atol=0.02), cfg.source)
    close = iter([reference[:16] + 1e-3])
    check = Check("torchscript-fp16@sm_90", lambda batch: next(close)[: len(batch)], subject="the FP16 TorchScript module", against="eager FP32 on H200")
    [report] = run_checks([check], reference, data, gate, raise_on_failure=True)
    assert report.passed and report.tolerance["atol"] == 0.02 and report.tolerance["rtol"] == FP16_TOLERANCE.rtol
    shuffled = iter([reference[::-1].copy()])
    wrong = Check("tensorrt-fp16@sm_90", lambda batch: next(shuffled)[: len(batch)], subject="the FP16 TensorRT plan", against="eager FP32 on H200")
    with pytest.raises(ParityError, match="the FP16 TensorRT plan disagrees with eager FP32 on H200"):
        run_checks([wrong], reference, data, gate, raise_on_failure=True)
