"""End-to-end fine-tuning on tiny synthetic data: output schema, resume, atomicity, pretrained starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from sft_engine.errors import ConfigError
from sft_engine.finetune import METADATA_KEYS, FinetuneConfig, finetune, synthetic_labels
from sft_engine.finetune.pretrained import build_student, resolve_pretrained
from sft_engine.finetune.writer import atomic_write_text
from sft_engine.models import build_model, head_prefix, load_weights, save_state_dict, sha256_file

TINY: dict[str, Any] = dict(
    arch="resnet18", dataset="synthetic", num_classes=3, input_size=32, synthetic_train_size=48,
    synthetic_val_size=24, batch_size=16, progress=False, lr=2e-3,
)


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def pretrained_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet18 with a 6-class head (another task), as safetensors."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("pre") / "task_a.safetensors"
    save_state_dict(build_model("resnet18", 6), path)
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("run") / "out"
    return finetune(FinetuneConfig(epochs=2, output=out, **TINY))


def test_output_has_the_metadata_schema_build_reads(finished: Any) -> None:
    meta = json.loads(finished.metadata_path.read_text())
    assert list(meta)[: len(METADATA_KEYS)] == list(METADATA_KEYS)
    assert set(meta) == set(METADATA_KEYS) | {"training", "holdout"}
    assert meta["format"] == "sft-engine/finetune@1"
    assert (meta["arch"], meta["num_classes"], meta["input_size"], meta["dataset"]) == ("resnet18", 3, 32, "synthetic")
    assert meta["labels"] == synthetic_labels(3)
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["std"] == [0.229, 0.224, 0.225]
    assert meta["weights"] == "model.safetensors"
    assert meta["weights_sha256"] == sha256_file(finished.weights_path)
    assert meta["pretrained"] is None and meta["reg"] == "none" and meta["reg_lambda"] == 0.0
    assert meta["epochs"] == 2 and 1 <= meta["best_epoch"] <= 2 and meta["seed"] == 0
    assert meta["best_top1"] == max(row["val_top1"] for row in finished.history)
    assert isinstance(meta["created"], str) and meta["torch_version"] == torch.__version__


def test_weights_load_strictly_into_a_fresh_model(finished: Any) -> None:
    model = load_weights(build_model("resnet18", 3), finished.weights_path)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_metrics_are_written_as_json_and_csv(finished: Any) -> None:
    out = finished.output_dir
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("train_task_loss", "train_pre_loss", "train_loss", "val_top1", "lr"):
        assert key in rows[0]
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].split(",")[:2] == ["epoch", "lr"] and len(csv_lines) == 3
    assert not (out / "train_state").exists()


def test_rerun_into_a_finished_output_needs_overwrite(finished: Any) -> None:
    with pytest.raises(ConfigError, match="already holds a fine-tune run"):
        finetune(FinetuneConfig(epochs=2, output=finished.output_dir, **TINY))
    with pytest.raises(ConfigError, match="nothing to resume"):
        finetune(FinetuneConfig(epochs=2, output=finished.output_dir, resume=True, **TINY))


def test_interrupted_run_looks_incomplete_and_resumes_to_the_same_result(tmp_path: Path, finished: Any) -> None:
    out = tmp_path / "out"

    def stop(row: dict[str, Any]) -> None:
        raise Interrupt

    with pytest.raises(Interrupt):
        finetune(FinetuneConfig(epochs=2, output=out, **TINY), on_epoch_end=stop)
    assert not (out / "metadata.json").exists() and not (out / "model.safetensors").exists()
    assert (out / "train_state" / "last.pt").is_file()
    assert len(json.loads((out / "metrics.json").read_text())) == 1
    assert not list(out.rglob(".*tmp*"))

    resumed = finetune(FinetuneConfig(epochs=2, output=out, resume=True, **TINY))
    assert resumed.epochs_run == 2 and len(resumed.history) == 2
    for a, b in zip(resumed.history, finished.history):
        for key in ("train_loss", "val_loss", "val_top1", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_overwrite_removes_the_old_metadata_before_training(tmp_path: Path) -> None:
    out = tmp_path / "out"
    finetune(FinetuneConfig(epochs=1, output=out, **TINY))
    seen: list[bool] = []

    def stop(row: dict[str, Any]) -> None:
        seen.append((out / "metadata.json").exists())
        raise Interrupt

    with pytest.raises(Interrupt):
        finetune(FinetuneConfig(epochs=2, output=out, overwrite=True, **TINY), on_epoch_end=stop)
    assert seen == [False]
    assert not (out / "metadata.json").exists() and not (out / "model.safetensors").exists()


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path: Path) -> None:
    from sft_engine.finetune.writer import atomic_write

    target = tmp_path / "model.safetensors"

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"half a file")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, half_then_fail)
    assert list(tmp_path.iterdir()) == []
    atomic_write_text(target.with_suffix(".json"), "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]


def test_pretrained_checkpoint_with_another_head_loads_the_backbone_only(pretrained_ckpt: Path) -> None:
    from safetensors.torch import load_file

    source = resolve_pretrained("resnet18", str(pretrained_ckpt))
    model, how = build_student("resnet18", 3, source)
    state, ref = model.state_dict(), load_file(str(pretrained_ckpt))
    assert "backbone" in how and model.fc.out_features == 3
    assert all(torch.equal(state[k], ref[k]) for k in state if not k.startswith(head_prefix("resnet18")))
    same, how_same = build_student("resnet18", 6, source)
    assert "backbone and head" in how_same and torch.equal(same.fc.weight, ref["fc.weight"])


@pytest.mark.parametrize("reg", ["l2sp", "distill"])
def test_regularized_runs_log_both_terms(tmp_path: Path, pretrained_ckpt: Path, reg: str) -> None:
    result = finetune(FinetuneConfig(epochs=1, output=tmp_path / reg, pretrained=str(pretrained_ckpt), reg=reg, reg_lambda=0.5, **TINY))
    row = result.history[0]
    assert row["train_pre_loss"] > 0
    expected = row["train_task_loss"] + 0.5 * row["train_pre_loss"] + (0.01 * row["train_head_l2"] if reg == "l2sp" else 0.0)
    assert row["train_loss"] == pytest.approx(expected, rel=1e-4)
    meta = result.metadata
    assert (meta["reg"], meta["reg_lambda"], meta["pretrained"]) == (reg, 0.5, str(pretrained_ckpt))


def test_linear_probe_changes_only_the_head(tmp_path: Path, pretrained_ckpt: Path) -> None:
    from safetensors.torch import load_file

    result = finetune(FinetuneConfig(epochs=1, output=tmp_path / "probe", pretrained=str(pretrained_ckpt), freeze_backbone=True, **TINY))
    after, before = load_file(str(result.weights_path)), load_file(str(pretrained_ckpt))
    assert all(torch.equal(after[k], before[k]) for k in after if not k.startswith("fc."))
    assert result.metadata["reg"] == "none"


def test_early_stopping_stops_before_the_planned_epochs(tmp_path: Path) -> None:
    # a frozen random backbone and a negligible lr: val top-1 cannot improve after epoch 1
    cfg = dict(TINY, lr=1e-9, synthetic_train_size=16, synthetic_val_size=6, freeze_backbone=True)
    result = finetune(FinetuneConfig(epochs=6, early_stopping_patience=1, output=tmp_path / "es", **cfg))
    assert result.epochs_run == 2 and result.metadata["training"]["early_stopped"] is True
    assert result.best_epoch == 1 and result.metadata["epochs"] == 2
