"""What a newcomer reads in the first hour: defaults that agree, hints in the reader's terms, no false alarms."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import pytest

from sft_engine.cli import build_parser, main


def test_classify_top_k_defaults_as_the_api_and_help_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    from sft_engine.client import Client

    api_default = inspect.signature(Client.classify).parameters["top_k"].default
    args = build_parser().parse_args(["classify", "a.png", "--model", "m"])
    assert args.top_k == api_default == 5
    with pytest.raises(SystemExit):
        build_parser().parse_args(["classify", "--help"])
    assert "default: 5" in capsys.readouterr().out


def test_client_hints_name_the_cli_flag_too() -> None:
    from sft_engine.client.errors import BadInput
    from sft_engine.client.inputs import check_top_k as _check_top_k

    with pytest.raises(BadInput) as err:
        _check_top_k(0)
    assert "--top-k 5" in err.value.one_line()


def test_compose_start_line_builds_the_image_print_docker_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sft_engine.serving import docker_commands_for as docker_commands
    from tests.unit.test_ops_deploy import make_repository

    repo = make_repository(tmp_path / "model_repository")
    assert main(["deploy", "compose", "--repository", str(repo), "--output", str(tmp_path / "compose")]) == 0
    out = capsys.readouterr().out
    start = next(line for line in out.splitlines() if line.startswith("start:"))
    assert start.endswith("up -d --build")  # as the compose file's header says
    compose = (tmp_path / "compose" / "docker-compose.yml").read_text()
    image = docker_commands(repo, "24.10").split("docker build -t ", 1)[1].split()[0]
    assert f"image: {image}" in compose  # one image, one name


def test_no_cuda_runtime_notice_on_a_cpu_machine(capsys: pytest.CaptureFixture[str]) -> None:
    main(["deploy"])  # any command: the CLI sets up its logging
    capsys.readouterr()
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("torch.utils.cpp_extension")
    handler = Keep()
    logger.addHandler(handler)
    try:
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local/cuda")
        logger.warning("something else")
    finally:
        logger.removeHandler(handler)
    assert seen == ["something else"]


def test_int8_parity_line_says_what_gates_it(tmp_path: Path) -> None:
    from sft_engine.build import BuildResult
    from sft_engine.repository.writer import PublishedVersion
    from sft_engine.verify import ParityReport

    parity = ParityReport(engine="onnxruntime", samples=56, max_abs_diff=6.43, mean_abs_diff=1.0, allowed_abs_diff=28.1,
                          top1_agreement=0.99, eager_accuracy=None, engine_accuracy=None, passed=True, reasons=[])
    int8 = BuildResult(PublishedVersion(tmp_path, "m", 1), "cpu", "onnxruntime", parity, precision="int8")
    line = next(x for x in int8.summary_lines() if "parity:" in x)
    assert "gated on top-1 agreement and accuracy" in line
    fp32 = BuildResult(PublishedVersion(tmp_path, "m", 1), "cpu", "onnxruntime", parity, precision="fp32")
    assert "gated on" not in next(x for x in fp32.summary_lines() if "parity:" in x)


def test_the_demo_keeps_enough_labelled_images_for_int8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sft_engine import finetune as finetune_package
    from sft_engine.engines.calibration import MIN_CALIBRATION_IMAGES, MIN_GATE_IMAGES
    from sft_engine.walkthrough import run_demo

    seen = []

    def capture(config):
        seen.append(config)
        raise KeyboardInterrupt  # stop before any training

    monkeypatch.setattr(finetune_package, "finetune", capture)
    with pytest.raises(KeyboardInterrupt):
        run_demo(tmp_path / "demo")
    kept = min(seen[0].holdout_images, seen[0].synthetic_val_size)
    assert kept >= MIN_GATE_IMAGES + MIN_CALIBRATION_IMAGES


def test_the_demo_summary_names_the_winner_and_its_margin() -> None:
    from sft_engine.walkthrough import winner_line

    candidates = [
        {"engine": "openvino", "precision": "int8", "parity": {"passed": True}, "latency": {"p50_ms": 1.5}},
        {"engine": "openvino", "precision": "fp32", "parity": {"passed": True}, "latency": {"p50_ms": 6.0}},
        {"engine": "onnxruntime", "precision": "int8", "parity": {"passed": False}, "latency": {"p50_ms": 0.5}},
    ]
    assert winner_line("openvino", "int8", candidates) == "won: openvino int8, 1.50 ms p50, 4.0x faster than the runner-up openvino fp32 (6.00 ms)"
