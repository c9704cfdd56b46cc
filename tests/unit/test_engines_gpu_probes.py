"""What a host can build and what ``--target auto`` builds there (``engines/gpu/probes``), and the one-line error of a CPU host.

What needs CUDA or TensorRT lives in ``tests/gpu`` (run by ``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from sft_engine.engines.gpu import probes
from sft_engine.engines.gpu.probes import unavailable_reason


def test_unavailable_reasons_name_what_is_missing_and_what_works():
    both = unavailable_reason("tensorrt", cuda=False, torch_tensorrt_problem="torch_tensorrt is not installed", needs_torch_tensorrt=True)
    assert "a CUDA GPU and torch_tensorrt" in both.one_line() and "--target onnx" in both.one_line()
    no_trt = unavailable_reason("tensorrt", cuda=True, torch_tensorrt_problem="torch_tensorrt is not installed", needs_torch_tensorrt=True)
    assert "needs torch_tensorrt" in no_trt.one_line() and "--target torchscript-gpu" in no_trt.one_line()
    assert unavailable_reason("tensorrt", cuda=True, torch_tensorrt_problem=None, needs_torch_tensorrt=True) is None
    assert "\n" not in both.one_line()


# -- through the CLI and the build ----------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="the error path of a host without CUDA")
@pytest.mark.parametrize("target", ["tensorrt", "torchscript-gpu"])
def test_cli_gpu_target_without_cuda_fails_in_one_line(target, tmp_path):
    repo = tmp_path / "repo"
    proc = subprocess.run(
        [sys.executable, "-m", "sft_engine.cli", "build", "--target", target, "--arch", "resnet18", "--num-classes", "3",
         "--allow-random-weights", "--input-size", "32", "--max-batch-size", "4", "--parity-samples", "2",
         "--repository", str(repo), "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: target {target} needs a CUDA GPU")
    assert "--target onnx" in lines[0] and "Traceback" not in proc.stderr
    assert not proc.stdout.strip()
    assert not repo.exists(), "the repository must stay untouched"


def test_auto_target_per_host():
    assert probes.auto_target(cuda=True, torch_tensorrt_problem=None)[0] == "tensorrt"
    target, why = probes.auto_target(cuda=True, torch_tensorrt_problem="torch_tensorrt is not installed")
    assert target == "torchscript-gpu" and "torch_tensorrt is not installed" in why
    assert probes.auto_target(cuda=False, torch_tensorrt_problem="anything") == ("cpu", "PyTorch sees no CUDA device")


def test_torch_tensorrt_for_another_torch_is_told_from_its_version():
    assert "built for torch 2.13, not the installed torch 2.14.1" in probes.torch_tensorrt_mismatch("2.13.0", "2.14.1")
    assert probes.torch_tensorrt_mismatch("2.8.0a0", "2.8.0a0+5228986c39.nv25.6") is None
    assert probes.torch_tensorrt_mismatch(None, "2.14.1") is None


def _fake_torch_tensorrt(root, version: str, body: str) -> None:
    package = root / "torch_tensorrt"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(body)
    info = root / f"torch_tensorrt-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch_tensorrt\nVersion: {version}\n")


def test_probe_imports_torch_tensorrt_and_reports_why_it_fails(tmp_path, monkeypatch):
    """A wheel built for this torch minor whose import fails (undefined symbol) is probed by importing it."""
    minor = ".".join(torch.__version__.split(".")[:2])
    _fake_torch_tensorrt(tmp_path, f"{minor}.0", "raise OSError('libtorchtrt.so: undefined symbol: _ZN3c104impl8GPUTrace')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torch_tensorrt", raising=False)
    problem = probes._torch_tensorrt_problem()
    assert problem.startswith("torch_tensorrt cannot be imported (libtorchtrt.so: undefined symbol")
    target, why = probes.auto_target(True, problem)
    assert target == "torchscript-gpu" and "undefined symbol" in why
    error = probes.unavailable_reason("tensorrt", cuda=True, torch_tensorrt_problem=problem, needs_torch_tensorrt=True)
    assert "--target torchscript-gpu" in error.one_line()


def test_probe_refuses_a_torch_tensorrt_of_another_torch_without_importing_it(tmp_path, monkeypatch):
    _fake_torch_tensorrt(tmp_path, "2.4.0", "raise SystemExit('must not be imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torch_tensorrt", raising=False)
    assert "torch_tensorrt 2.4.0 is built for torch 2.4" in probes._torch_tensorrt_problem()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU host's answer")
def test_auto_resolves_to_cpu_without_cuda(caplog):
    from sft_engine.engines.registry import resolve_target

    caplog.set_level("INFO")
    assert resolve_target("auto") == "cpu" and "PyTorch sees no CUDA device" in caplog.text
    assert resolve_target("onnx") == "onnx"


# -- build devices are not serving placement ------------------------------------------------
