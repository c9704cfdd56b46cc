"""The NGC containers (``ngc``): the tag ``serve --print-docker`` serves with, and ``build --print-docker``'s two commands of one release.

What needs CUDA or TensorRT lives in ``tests/gpu`` (run by ``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch

from sft_engine.commands import serve as serve_cmd
from sft_engine.engines.gpu import compatibility
from sft_engine.engines.gpu.compatibility import compatibility_manifest
from sft_engine.engines.gpu.devices import GpuInfo
from sft_engine.triton import releases


def test_print_docker_uses_the_tag_a_gpu_build_recorded(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compatibility, "_version", lambda module: {"tensorrt": "10.5.0.18"}.get(module))
    manifest = {"compatibility": compatibility_manifest("tensorrt", [GpuInfo(0, "H100", "9.0", 80.0)], {"9.0": "model.plan"})}
    version_dir = tmp_path / "repo" / "m" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "build_manifest.json").write_text(json.dumps(manifest))
    args = argparse.Namespace(print_docker=True, triton_tag=None, repository=str(tmp_path / "repo"))
    assert serve_cmd.run(args) == 0
    assert "nvcr.io/nvidia/tritonserver:24.10-py3" in capsys.readouterr().out


# -- build --print-docker: the two commands of one NGC release -------------------------------

def _print_docker(tmp_path, *extra):
    weights = tmp_path / "in" / "model.safetensors"
    weights.parent.mkdir(exist_ok=True)
    weights.write_bytes(b"x")
    (tmp_path / "in" / "labels.txt").write_text("a\nb\nc\n")
    proc = subprocess.run(
        [sys.executable, "-m", "sft_engine.cli", "build", "--arch", "resnet18", "--weights", "in/model.safetensors",
         "--labels", "in/labels.txt", "--repository", "repo", "--max-batch-size", "64", "--print-docker", *extra],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[2])},
    )
    return proc, weights


@pytest.mark.skipif(torch.cuda.is_available(), reason="shows that no CUDA is needed")
def test_print_docker_prints_build_and_serve_of_one_ngc_release(tmp_path):
    proc, weights = _print_docker(tmp_path, "--target", "tensorrt")
    assert proc.returncode == 0, proc.stderr
    build_cmd, serve_cmd = proc.stdout.strip().splitlines()
    newest = releases.TRITON_RELEASES[-1].tag
    assert f"nvcr.io/nvidia/pytorch:{newest}-py3" in build_cmd and f"nvcr.io/nvidia/tritonserver:{newest}-py3" in serve_cmd
    # the container's torch stack becomes constraints, so pip keeps it
    assert "pip list --format=freeze" in build_cmd and "-c /tmp/ngc-keep.txt" in build_cmd and "[tensorrt]" in build_cmd
    for name in ("torch", "torchvision", "torch[-_]tensorrt", "tensorrt", "numpy"):
        assert name in build_cmd
    # the same build runs inside, with absolute paths mounted where they are
    assert "sft-engine build" in build_cmd and "--print-docker" not in build_cmd and "--target tensorrt" in build_cmd
    assert f"-v {weights.parent}:{weights.parent}:ro" in build_cmd and f"--weights {weights}" in build_cmd
    repo = tmp_path / "repo"
    assert f"-v {repo}:{repo} " in build_cmd and f"--repository {repo}" in build_cmd
    assert f"{repo}:/models:ro" in serve_cmd and "tritonserver --model-repository=/models" in serve_cmd
    assert not repo.exists(), "printing builds nothing"


def test_print_docker_release_choice(tmp_path):
    proc, _ = _print_docker(tmp_path, "--target", "tensorrt", "--ngc-release", "25.10")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(":25.10-py3") == 2 and "--allow-unmatched-tensorrt" not in proc.stdout
    proc, _ = _print_docker(tmp_path, "--target", "tensorrt", "--ngc-release", "27.01")
    assert proc.returncode == 0 and "--allow-unmatched-tensorrt" in proc.stdout.splitlines()[0]
    assert "not in sft-engine's container table" in proc.stderr
    proc, _ = _print_docker(tmp_path, "--target", "torchscript-gpu")
    assert proc.returncode == 0 and "[tensorrt]" not in proc.stdout
    for bad in (["--target", "cpu"], ["--target", "tensorrt", "--ngc-release", "2026.3"]):
        proc, _ = _print_docker(tmp_path, *bad)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# -- --target auto probes by importing -------------------------------------------------------
