"""Fine-tuning learns, keeps the best epoch's weights, and a linear probe trains its head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from sft_engine.build_config import BuildConfig, load_finetune_dir
from sft_engine.finetune import FinetuneConfig, finetune
from sft_engine.finetune import writer
from sft_engine.models import build_model, save_state_dict
from sft_engine.verify import eager_logits, parity_inputs

TASK: dict[str, Any] = dict(arch="resnet18", dataset="synthetic", num_classes=4, input_size=32, synthetic_train_size=320,
                            synthetic_val_size=80, batch_size=32, progress=False, seed=0)


def _model_at_each_epoch(out: Path, snapshots: dict[int, dict[str, torch.Tensor]]):
    """An on_epoch_end hook keeping the model as it was at the end of each epoch (from the resume state)."""
    def hook(row: dict[str, Any]) -> None:
        state = torch.load(out / writer.STATE_DIR / writer.LAST_STATE, weights_only=True)
        snapshots[int(row["epoch"])] = {k: v.clone() for k, v in state["model"].items()}
    return hook


def test_finetuning_learns_and_writes_the_best_epochs_weights(tmp_path):
    out = tmp_path / "ft"
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    result = finetune(FinetuneConfig(epochs=3, output=out, lr=2e-3, holdout_images=80, **TASK), on_epoch_end=_model_at_each_epoch(out, snapshots))
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0], losses
    assert result.best_top1 >= 0.5, result.history  # chance is 0.25
    written = load_file(str(result.weights_path))
    best = snapshots[result.best_epoch]
    assert all(torch.equal(written[k], best[k]) for k in best if k in written), "the written weights are not the best epoch's"
    for epoch, snap in snapshots.items():
        if epoch != result.best_epoch and result.history[epoch - 1]["val_top1"] < result.best_top1:
            assert any(not torch.equal(written[k], snap[k]) for k in snap if k in written)
    # held-out images the run never trained or selected on, through the build's preprocessing
    cfg = BuildConfig().merged(load_finetune_dir(out), "fine-tune")
    data = parity_inputs(cfg.preprocessing, 0, out / "holdout", labels=cfg.label_list)
    assert data.labels is not None and len(data.labels) >= 40
    model = build_model("resnet18", 4)
    model.load_state_dict(written)
    accuracy = float((eager_logits(model.eval(), data.inputs, 32).argmax(1) == data.labels).mean())
    assert accuracy >= 0.5, accuracy


def test_linear_probe_trains_the_head_and_only_the_head(tmp_path):
    torch.manual_seed(7)
    start = tmp_path / "start.safetensors"
    save_state_dict(build_model("resnet18", 4), start)  # same class count: the head is loaded, so its start is known
    result = finetune(FinetuneConfig(epochs=1, output=tmp_path / "probe", pretrained=str(start), freeze_backbone=True,
                                     **dict(TASK, synthetic_train_size=64, synthetic_val_size=16)))
    after, before = load_file(str(result.weights_path)), load_file(str(start))
    assert all(torch.equal(after[k], before[k]) for k in after if not k.startswith("fc.")), "the backbone moved"
    assert not torch.equal(after["fc.weight"], before["fc.weight"]), "the head did not train"
    assert not torch.equal(after["fc.bias"], before["fc.bias"])
