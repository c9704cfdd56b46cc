"""scripts/gpu_check.sh is not green when it proved nothing: its first line says which targets
ran on the GPU, and --require-tensorrt fails unless the tensorrt target did. Also the GPU
benchmark's TF32 switch and table, which run without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
for folder in ("scripts", "benchmarks"):
    sys.path.insert(0, str(ROOT / folder))
try:
    import bench_gpu
    import gpu_verdict
finally:
    del sys.path[:2]


def _junit(tmp_path: Path, cases: dict[str, str]) -> Path:
    body = []
    for name, status in cases.items():
        inner = {"passed": "", "failed": '<failure message="AssertionError: boom"/>',
                 "skipped": '<skipped type="pytest.skip" message="needs torch_tensorrt"/>'}[status]
        body.append(f'<testcase classname="tests.gpu.test_gpu_engines" name="{name}">{inner}</testcase>')
    path = tmp_path / "gpu_tests.xml"
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{"".join(body)}</testsuite></testsuites>')
    return path


def test_verdict_names_what_ran_and_what_did_not(tmp_path):
    junit = _junit(tmp_path, {"test_torchscript_gpu_build": "passed", "test_torch_export_of_the_half_model": "passed",
                              "test_tensorrt_build": "skipped", "test_tensorrt_several_architectures": "skipped"})
    line, code = gpu_verdict.verdict(gpu_verdict.outcomes(junit), 0, 0, require_tensorrt=False)
    assert code == 0 and line.startswith("gpu_check verdict: PASS")
    assert "ran on GPU: torchscript-gpu, torch.export" in line and "not run: tensorrt (needs torch_tensorrt)" in line
    line, code = gpu_verdict.verdict(gpu_verdict.outcomes(junit), 0, 0, require_tensorrt=True)
    assert code == 4 and "--require-tensorrt" in line


def test_verdict_fails_on_a_failed_target_and_proves_nothing_when_all_skipped(tmp_path):
    failed = _junit(tmp_path, {"test_torchscript_gpu_build": "passed", "test_tensorrt_build": "failed"})
    line, code = gpu_verdict.verdict(gpu_verdict.outcomes(failed), 1, 0, require_tensorrt=False)
    assert code == 1 and "failed: tensorrt (AssertionError: boom)" in line
    skipped = _junit(tmp_path, {name: "skipped" for _, name in gpu_verdict.TARGET_TESTS})
    line, code = gpu_verdict.verdict(gpu_verdict.outcomes(skipped), 0, 0, require_tensorrt=False)
    assert code == 3 and "NOTHING PROVEN" in line and "ran on GPU: nothing" in line
    passed = _junit(tmp_path, {name: "passed" for _, name in gpu_verdict.TARGET_TESTS})
    assert gpu_verdict.verdict(gpu_verdict.outcomes(passed), 0, 0, require_tensorrt=True)[1] == 0
    assert gpu_verdict.verdict(gpu_verdict.outcomes(passed), 0, 2, require_tensorrt=True)[1] == 1, "a failed benchmark fails"


def test_verdict_tests_are_the_gpu_tests_that_exist():
    source = "".join(p.read_text() for p in sorted((ROOT / "tests" / "gpu").glob("test_*.py")))
    for _, test in gpu_verdict.TARGET_TESTS:
        assert f"def {test}(" in source, test


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU path of the script")
@pytest.mark.parametrize("flags,code", [([], 3), (["--require-tensorrt"], 4)])
def test_gpu_check_on_a_host_without_a_gpu_is_not_green(tmp_path, flags, code):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    proc = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), *flags], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == code, proc.stdout + proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("gpu_check verdict: NOTHING PROVEN") and "ran on GPU: nothing" in first
    assert "PyTorch sees no CUDA device" in first
    assert ("--require-tensorrt" in first) == bool(flags)


def test_gpu_check_refuses_unknown_arguments():
    proc = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), "--require-tensorrtx"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown argument" in proc.stderr


def test_tf32_switch_uses_one_api_and_the_table_names_both_baselines():
    conv = torch.backends.cudnn.conv
    before = (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    try:
        assert bench_gpu.set_tf32(False) == "fp32_precision=ieee" and conv.fp32_precision == "ieee"
        assert bench_gpu.set_tf32(True) == "fp32_precision=tf32" and torch.backends.cuda.matmul.fp32_precision == "tf32"
        assert bench_gpu.tf32_default() == "cudnn.conv.fp32_precision=tf32"
    finally:
        conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = before
    row = {"batch": 8, "eager_fp32_img_s": 1000.0, "eager_tf32_img_s": 2000.0, "fp16_img_s": 6000.0,
           "eager_fp32_peak_fraction": 0.01, "eager_tf32_peak_fraction": 0.02, "fp16_peak_fraction": 0.05}
    text = bench_gpu.table([row])
    assert "eager FP32 (TF32 off)" in text and "eager FP32 (TF32 on, default)" in text
    assert "| 8 | 1,000 | 1.0% | 2,000 | 2.0% | 6,000 | 5.0% | 6.00x | 3.00x |" in text


def test_a_modelopt_without_its_onnx_pieces_is_a_skip_with_its_reason_not_a_failure(tmp_path):
    """The INT8/FP8 tests skip with the probe's reason; the verdict passes on the rest and repeats the reason whole."""
    reason = ("INT8/FP8 need TensorRT and ModelOpt's ONNX quantizer: nvidia-modelopt 0.35.0 lacks its ONNX quantizer's dependencies: "
              "missing onnx_graphsurgeon, onnxruntime (pip install onnx-graphsurgeon onnxruntime-gpu, or pip install 'nvidia-modelopt[onnx]')")
    cases = "".join(f'<testcase classname="tests.gpu.test_gpu_quantized" name="{name}"><skipped type="pytest.skip" message="{reason}"/></testcase>'
                    for name in ("test_tensorrt_int8_build", "test_tensorrt_fp8_build"))
    cases += '<testcase classname="tests.gpu.test_gpu_engines" name="test_tensorrt_build"/>'
    junit = tmp_path / "gpu_tests.xml"
    junit.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{cases}</testsuite></testsuites>')
    line, code = gpu_verdict.verdict(gpu_verdict.outcomes(junit), 0, 0, require_tensorrt=True)
    assert code == 0 and line.startswith("gpu_check verdict: PASS"), line
    assert "tensorrt int8 (ModelOpt) (INT8/FP8 need" in line and "pip install 'nvidia-modelopt[onnx]')" in line


def test_the_quantized_gpu_tests_skip_on_the_real_import_probe():
    source = (ROOT / "tests" / "gpu" / "test_gpu_quantized.py").read_text()
    assert "quantization_stack_problem(" in source and "find_spec(\"modelopt\")" not in source
    assert "reason=f\"INT8/FP8 need TensorRT and ModelOpt's ONNX quantizer: {STACK_PROBLEM}\"" in source
