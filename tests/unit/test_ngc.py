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
    build_cmd, *serve_lines = proc.stdout.strip().splitlines()
    serve_cmd = "\n".join(serve_lines)
    newest = releases.DEFAULT_RELEASE
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


def test_print_docker_builds_in_the_upstream_container_of_the_serving_release(tmp_path):
    """tritonserver 26.05 is built from pytorch:26.04 (server build.py at v2.69.0): the equal-number rule would build in 26.05."""
    proc, _ = _print_docker(tmp_path, "--target", "tensorrt", "--ngc-release", "26.05")
    assert proc.returncode == 0, proc.stderr
    build_cmd, *serve_lines = proc.stdout.strip().splitlines()
    assert "nvcr.io/nvidia/pytorch:26.04-py3" in build_cmd and "pytorch:26.05" not in build_cmd
    assert "FROM nvcr.io/nvidia/tritonserver:26.05-py3" in serve_lines
    assert "no source gives the TensorRT of release 26.05" in proc.stderr and "--allow-unmatched-tensorrt" in build_cmd


@pytest.mark.parametrize("row", releases.TRITON_RELEASES, ids=lambda r: r.tag)
def test_every_release_builds_in_its_upstream_container(row):
    from sft_engine.ngc import build_container, release_for

    tag, found = release_for(row.tag)
    assert found is row and build_container(tag, found) == f"nvcr.io/nvidia/pytorch:{row.upstream}-py3"


def test_quantized_builds_are_refused_on_the_tensorrt_8_6_releases(tmp_path):
    (tmp_path / "cal").mkdir()
    quant = ("--target", "tensorrt", "--precision", "int8", "--calibration", str(tmp_path / "cal"))
    proc, _ = _print_docker(tmp_path, *quant, "--ngc-release", "24.03")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "24.03" in proc.stderr and "opset 19" in proc.stderr and "--ngc-release 24.05 or later" in proc.stderr
    proc, _ = _print_docker(tmp_path, *quant, "--ngc-release", "24.05")
    assert proc.returncode == 0, proc.stderr


# -- --target auto probes by importing -------------------------------------------------------


# -- every printed serve command brings what the image models import --------------------------

def _image_model_packages() -> set[str]:
    """pip names of what the build's image-model ``model.py`` (``pixels.py``, copied unchanged) imports beyond the stock container."""
    import ast

    from packaging.utils import canonicalize_name

    from sft_engine.ngc import STOCK_MODULES
    from sft_engine.repository.image_models import preprocess_model_file

    tree = ast.parse(preprocess_model_file().read_text())
    modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    third_party = modules - set(sys.stdlib_module_names) - set(STOCK_MODULES)
    assert "PIL" in third_party, third_party
    return {canonicalize_name({"PIL": "pillow"}.get(m, m)) for m in third_party}


def _installed_by(serve_text: str) -> set[str]:
    """pip names the serve lines install into the image they run (nothing when they run the stock one)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    out = set()
    for line in serve_text.splitlines():
        if "pip install" in line:
            words = [w.strip('"\'') for w in line.split("pip install", 1)[1].split() if not w.startswith("-")]
            out |= {canonicalize_name(Requirement(w).name) for w in words}
    run = serve_text.strip().splitlines()[-1]
    assert run.startswith("docker run") and "nvcr.io/nvidia/tritonserver" not in run, "the stock image has no Pillow"
    return out


def _repository_with_image_models(root):
    from sft_engine.build import publish_image_models
    from sft_engine.preprocess import Preprocessing
    from sft_engine.repository.config import InstanceGroupSpec, ModelConfigSpec, TensorSpec
    from sft_engine.repository.image_models import ImageServing

    engine = ModelConfigSpec(name="tiny", inputs=(TensorSpec("images", "FP16", (3, 32, 32)),),
                             outputs=(TensorSpec("output0", "FP32", (4,), label_filename="labels.txt"),), max_batch_size=8,
                             platform="tensorrt_plan", instance_groups=(InstanceGroupSpec(kind="KIND_GPU", count=1, gpus=(0,)),),
                             parameters=tuple(Preprocessing(input_size=32).to_parameters().items()))
    root.mkdir(parents=True)
    publish_image_models(root, engine, ["a", "b", "c", "d"], ImageServing(), 1)
    return root


def test_every_printed_serve_command_brings_what_the_image_models_import(tmp_path, capsys):
    needed = _image_model_packages()
    printed = {}
    for extra in (("--target", "tensorrt"), ("--target", "tensorrt", "--ngc-release", "26.05"), ("--target", "torchscript-gpu")):
        proc, _ = _print_docker(tmp_path, *extra)
        assert proc.returncode == 0, proc.stderr
        printed[f"build {' '.join(extra)}"] = "\n".join(proc.stdout.strip().splitlines()[1:])
    for name, repo in (("serve, nothing built", tmp_path / "none"), ("serve, image models", _repository_with_image_models(tmp_path / "built"))):
        assert serve_cmd.run(argparse.Namespace(print_docker=True, triton_tag="26.03", repository=str(repo))) == 0
        printed[name] = capsys.readouterr().out
    for name, text in printed.items():
        assert needed <= _installed_by(text), (name, text)
        assert "docker build -t " in text and "<<'EOF'" in text, name
