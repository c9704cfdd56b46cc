"""FinetuneConfig validation, defaults resolution and TOML loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from sft_engine.errors import ConfigError, ModelError
from sft_engine.finetune import FinetuneConfig, load_finetune_toml


def test_defaults_resolve() -> None:
    c = FinetuneConfig().validated()
    assert (c.reg, c.reg_lambda, c.input_size, c.warmup_epochs) == ("none", 0.0, 224, 1.0)
    pre = FinetuneConfig(pretrained="ResNet18_Weights.IMAGENET1K_V1", epochs=2).validated()
    assert (pre.reg, pre.reg_lambda, pre.warmup_epochs) == ("l2sp", 0.1, 0.4)
    assert FinetuneConfig(pretrained="none").validated().pretrained is None
    assert FinetuneConfig(pretrained="x.pt", reg="distill").validated().reg_lambda == 1.0


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"reg_lambda": -0.1, "pretrained": "x.pt", "reg": "l2sp"}, "reg_lambda .λ. must be >= 0"),
        ({"reg_lambda": -1.0}, "must be >= 0"),
        ({"reg": "l2sp"}, "needs pretrained weights"),
        ({"reg": "distill"}, "needs pretrained weights"),
        ({"reg": "l2sp", "pretrained": "x.pt", "freeze_backbone": True}, "has no effect"),
        ({"reg": "bogus"}, "unknown regularizer"),
        ({"dataset": "imagenet"}, "unknown dataset"),
        ({"dataset": "imagefolder"}, "needs a data directory"),
        ({"epochs": 0}, "epochs is out of range"),
        ({"lr": 0}, "lr is out of range"),
        ({"num_classes": 1}, "num_classes is out of range"),
        ({"label_smoothing": 1.0}, "label_smoothing is out of range"),
        ({"warmup_epochs": 3, "epochs": 3}, "must be smaller than epochs"),
        ({"optimizer": "lamb"}, "unknown optimizer"),
        ({"amp": "fp8"}, "unknown AMP mode"),
        ({"device": "tpu"}, "unknown device"),
        ({"mean": (0.5, 0.5)}, "mean needs 3 values"),
        ({"std": (0.5, 0.0, 0.5)}, "std values must be > 0"),
        ({"resume": True, "overwrite": True}, "contradict"),
        ({"batch_size": "64"}, "batch_size must be an integer"),
        ({"freeze_backbone": "yes"}, "must be true or false"),
    ],
)
def test_bad_values_raise_config_errors(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FinetuneConfig(**kw).validated()  # type: ignore[arg-type]


def test_unknown_arch_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="unknown architecture"):
        FinetuneConfig(arch="resnet9000").validated()


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'"):
        FinetuneConfig().merged({"learning_rate": 0.1}, "test")


def test_toml_file_under_a_table_with_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    spec = tmp_path / "ft.toml"
    spec.write_text('[finetune]\narch = "mobilenet_v3_small"\ndataset = "imagefolder"\ndata_dir = "data"\nepochs = 3\nlr = 1\nmean = [0.5, 0.5, 0.5]\n')
    c = FinetuneConfig.from_mapping(load_finetune_toml(spec), str(spec)).validated()
    assert c.arch == "mobilenet_v3_small" and c.epochs == 3 and c.lr == 1.0
    assert c.data_dir == tmp_path / "data"
    assert c.mean == (0.5, 0.5, 0.5)


def test_broken_toml_is_a_config_error(tmp_path: Path) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text("epochs = = 3\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_finetune_toml(spec)
