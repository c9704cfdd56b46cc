"""``sft-engine finetune`` through the real CLI: success, and every bad input as exit code 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sft_engine.cli import main
from sft_engine.finetune import FinetuneConfig, finetune
from tests.unit.finetune_fixtures import write_cifar, write_folder

FAST = ["--arch", "resnet18", "--input-size", "32", "--batch-size", "16", "--no-progress"]


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    code = main(["finetune", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def _not_complete(out: Path) -> None:
    assert not (out / "metadata.json").exists()
    assert not (out / "model.safetensors").exists()


def test_cli_trains_from_a_toml_config_with_flag_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "ft.toml"
    spec.write_text('[finetune]\nnum_classes = 3\nsynthetic_train_size = 32\nsynthetic_val_size = 12\nepochs = 5\noutput = "out"\n')
    code = main(["finetune", "--config", str(spec), "--epochs", "1", *FAST])
    out = capsys.readouterr().out
    assert code == 0
    assert "best val top-1" in out and "sft-engine build --from-finetune" in out
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert meta["epochs"] == 1 and meta["num_classes"] == 3


def test_cli_cifar10_format_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_cifar(tmp_path / "cifar", per_batch=4)
    code = main(["finetune", "--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar"), "--epochs", "1", "--output", str(tmp_path / "out"), "--json", *FAST])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["labels"][0] == "airplane" and result["epochs_run"] == 1


def test_negative_lambda(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, ["--reg-lambda", "-0.5", "--output", str(tmp_path / "out"), *FAST], "reg_lambda", "must be >= 0")
    assert not (tmp_path / "out").exists()


def test_empty_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data").mkdir()
    _fails(capsys, ["--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"), "--output", str(tmp_path / "out"), *FAST], "holds no class folders")
    assert not (tmp_path / "out").exists()


def test_one_class_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_folder(tmp_path / "data", {"cats": 3})
    _fails(capsys, ["--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"), "--output", str(tmp_path / "out"), *FAST], "one class", "at least 2")
    assert not (tmp_path / "out").exists()


def test_corrupt_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_folder(tmp_path / "data", {"a": 3, "b": 3})
    (tmp_path / "data" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    _fails(capsys, ["--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"), "--output", str(tmp_path / "out"), *FAST], "broken.jpg", "cannot be decoded")
    assert not (tmp_path / "out").exists()


def test_resume_with_different_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"

    def stop(row: dict[str, Any]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(FinetuneConfig(num_classes=3, input_size=32, synthetic_train_size=24, synthetic_val_size=6, batch_size=16, epochs=2, output=out, progress=False), on_epoch_end=stop)
    before = (out / "train_state" / "last.pt").read_bytes()
    _fails(capsys, ["--resume", "--num-classes", "4", "--synthetic-train-size", "24", "--synthetic-val-size", "6", "--epochs", "2", "--output", str(out), *FAST],
           "cannot resume", "labels")
    _not_complete(out)
    assert (out / "train_state" / "last.pt").read_bytes() == before


def test_resume_without_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, ["--resume", "--output", str(tmp_path / "out"), *FAST], "no interrupted run")


def test_l2sp_without_pretrained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, ["--reg", "l2sp", "--output", str(tmp_path / "out"), *FAST], "needs pretrained weights", "--pretrained")


def test_missing_pretrained_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, ["--pretrained", str(tmp_path / "nope.safetensors"), "--num-classes", "3", "--synthetic-train-size", "12",
                    "--synthetic-val-size", "3", "--output", str(tmp_path / "out"), *FAST], "does not exist")
    _not_complete(tmp_path / "out")


def test_fp16_amp_on_cpu_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, ["--amp", "fp16", "--device", "cpu", "--output", str(tmp_path / "out"), *FAST], "needs a CUDA device")


def test_bf16_amp_on_cpu_follows_the_hardware() -> None:
    """bf16 autocast on a CPU only with bf16 in hardware; ``auto`` stays FP32 on every CPU."""
    import torch

    from sft_engine.errors import ConfigError
    from sft_engine.finetune.optim import resolve_amp

    cpu = torch.device("cpu")
    assert resolve_amp(FinetuneConfig(amp="bf16"), cpu, bf16_isa=lambda: "AVX512-BF16") is torch.bfloat16
    assert resolve_amp(FinetuneConfig(amp="auto"), cpu, bf16_isa=lambda: "AMX-BF16") is None
    with pytest.raises(ConfigError, match="would run emulated"):
        resolve_amp(FinetuneConfig(amp="bf16"), cpu, bf16_isa=lambda: None)


def test_bf16_autocast_trains_on_a_cpu_that_has_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sft_engine.engines.cpu.isa import cpu_bf16_isa

    argv = ["--amp", "bf16", "--device", "cpu", "--num-classes", "3", "--synthetic-train-size", "32", "--synthetic-val-size", "12",
            "--epochs", "1", "--output", str(tmp_path / "out"), *FAST]
    if cpu_bf16_isa() is None:
        _fails(capsys, argv, "would run emulated", "--amp none")
        return
    assert main(["finetune", *argv]) == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert meta["training"]["amp"] == "bfloat16" and meta["epochs"] == 1
    fp32 = [*argv[:argv.index("--output")], "--output", str(tmp_path / "fp32"), *FAST]
    assert main(["finetune", *fp32[2:]]) == 0  # the same seeded run without autocast
    losses = [float((tmp_path / out / "metrics.csv").read_text().splitlines()[1].split(",")[3]) for out in ("out", "fp32")]
    assert losses[0] != losses[1], losses  # bf16 arithmetic really ran: the same seeded run's training loss moved


def test_without_a_terminal_progress_is_one_line_per_epoch(tmp_path):
    """CI logs and ``| tee``: no redrawn bars (carriage returns), one line per epoch instead."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "sft_engine.cli", "finetune", "--arch", "resnet18", "--dataset", "synthetic", "--num-classes", "4",
         "--input-size", "32", "--epochs", "2", "--output", str(tmp_path / "out"), "--synthetic-train-size", "64",
         "--synthetic-val-size", "32"],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(root)), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "\r" not in result.stderr and "\r" not in result.stdout
    epoch_lines = [line for line in result.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epoch_lines] == ["epoch 1/2", "epoch 2/2"], result.stderr
    assert len(result.stderr.splitlines()) <= 4, result.stderr
