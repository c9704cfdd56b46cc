"""``serve --model-control-mode explicit --load-model NAME``: checked before the server starts, image models included."""

from __future__ import annotations

from pathlib import Path

import pytest

from sft_engine.cli import main
from sft_engine.errors import ConfigError
from sft_engine.server import ServerConfig, TritonServer
from sft_engine.serving import models_to_load


def _repository(root: Path) -> Path:
    for name in ("resnet18_demo", "resnet18_demo_image", "resnet18_demo_preprocess", "other"):
        (root / name).mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(f'name: "{name}"\n')
    return root


def test_load_model_brings_its_image_models(tmp_path: Path) -> None:
    repo = _repository(tmp_path / "model_repository")
    assert models_to_load(repo, ["resnet18_demo"]) == ["resnet18_demo", "resnet18_demo_preprocess", "resnet18_demo_image"]
    assert models_to_load(repo, ["other", "other"]) == ["other"]


def test_an_unknown_load_model_names_the_model_and_those_that_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = _repository(tmp_path / "model_repository")
    with pytest.raises(ConfigError, match=r"--load-model resnet18: no model 'resnet18' in .* \(models there: other, resnet18_demo,"):
        models_to_load(repo, ["resnet18"])
    # the command refuses it before any server starts (no tritonserver is needed to see the error)
    code = main(["serve", "--repository", str(repo), "--model-control-mode", "explicit", "--load-model", "resnet18", "--http-port", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "no model 'resnet18'" in err and "resnet18_demo" in err and "tritonserver exited" not in err


def test_a_failed_start_names_the_model_that_failed(tmp_path: Path) -> None:
    server = TritonServer(ServerConfig(repository=tmp_path))
    server._log_file = tmp_path / "server.log"  # what tritonserver 2.51 prints when a model does not load
    server._log_file.write_text(
        "E1105 10:00:00.000 1 model_lifecycle.cc:654] failed to load 'demo' version 1: Internal: ModuleNotFoundError: onnxruntime\n"
        "I1105 10:00:00.100 1 server.cc:307] Waiting for in-flight requests to complete.\n"
        "error: creating server: Internal - failed to load all models\n")
    assert server.last_error() == "failed to load 'demo' version 1: Internal: ModuleNotFoundError: onnxruntime"
