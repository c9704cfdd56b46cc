"""``--pretrained``: torchvision's weights without a network, from its cache, or from a local file.

No test here reaches the network: ``TORCH_HOME`` points at an empty folder and every
proxy at a closed local port, so a download fails at once, as it does on a machine
without network access.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from sft_engine.errors import ModelError
from sft_engine.finetune.pretrained import build_student, resolve_pretrained
from sft_engine.models import build_model
from sft_engine.models.hub import ensure_torchvision_weights

ROOT = Path(__file__).resolve().parents[2]
ARCH = "mobilenet_v3_small"  # the smallest registered architecture (10 MB of weights)
FILE = "mobilenet_v3_small-047dcff4.pth"  # torchvision's name for its DEFAULT weights
_NO_NETWORK = {name: "http://127.0.0.1:9" for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")}


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    """An empty torchvision cache and no way out; returns the folder torchvision looks in."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in _NO_NETWORK.items():
        monkeypatch.setenv(name, value)
    return home / "hub" / "checkpoints"


def _torchvision_file(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in torchvision's own format (``torch.save`` of the 1000-class model's state_dict)."""
    torch.manual_seed(seed)
    state = torchvision.models.get_model(ARCH).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def _assert_equal(model: torch.nn.Module, state: dict[str, torch.Tensor], skip: str | None = None) -> None:
    mine = model.state_dict()
    for key, value in state.items():
        if skip and key.startswith(skip):
            continue
        assert torch.equal(mine[key], value), key


def _cli(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **_NO_NETWORK)
    return subprocess.run([sys.executable, "-m", "sft_engine.cli", *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", ["finetune", "build"])
def test_default_weights_without_network_is_one_line_exit_2(command, offline, tmp_path):
    if command == "finetune":
        argv = ["finetune", "--arch", ARCH, "--pretrained", "DEFAULT", "--dataset", "synthetic", "--num-classes", "4",
                "--input-size", "32", "--epochs", "1", "--output", str(tmp_path / "ft")]
    else:
        argv = ["build", "--arch", ARCH, "--pretrained", "DEFAULT", "--num-classes", "4", "--input-size", "32",
                "--repository", str(tmp_path / "repo"), "--name", "m"]
    result = _cli(argv, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # progress lines aside
    assert len(lines) == 1 and "Traceback" not in result.stderr and "urllib" not in result.stderr, result.stderr[-2000:]
    line = lines[0]
    assert FILE in line and str(offline) in line and "--pretrained PATH" in line, line
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_default_weights_come_from_torchvisions_cache_when_the_file_is_there(offline):
    state = _torchvision_file(offline / FILE)
    assert ensure_torchvision_weights("MobileNet_V3_Small_Weights.IMAGENET1K_V1") == offline / FILE
    model = build_model(ARCH, 4, pretrained="DEFAULT")
    _assert_equal(model, state, skip="classifier.3.")  # the backbone is the file's, the head is new
    assert model.classifier[3].out_features == 4


def test_unknown_weights_name_is_a_model_error(offline):
    with pytest.raises(ModelError, match="unknown torchvision weights"):
        ensure_torchvision_weights("NoSuch_Weights.V1")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_torchvision_weights_file_by_path_loads_head_and_all(tmp_path, offline, suffix):
    path = tmp_path / f"{ARCH}{suffix}"
    state = _torchvision_file(tmp_path / "tv.pth", seed=3)
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path.write_bytes((tmp_path / "tv.pth").read_bytes())
    source = resolve_pretrained(ARCH, str(path))
    full, origin = build_student(ARCH, 1000, source)
    _assert_equal(full, state)  # every tensor, head included
    assert "backbone and head" in origin
    task, origin = build_student(ARCH, 4, source)
    _assert_equal(task, state, skip="classifier.3.")
    assert "new 4-class head" in origin


def test_build_accepts_a_torchvision_file_by_path(tmp_path, offline):
    path = tmp_path / FILE
    _torchvision_file(path, seed=5)
    result = _cli(["build", "--arch", ARCH, "--pretrained", str(path), "--num-classes", "1000", "--input-size", "32",
                   "--repository", str(tmp_path / "repo"), "--name", "m", "--engine", "onnxruntime", "--parity-samples", "4"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "repo" / "m" / "1").is_dir()
