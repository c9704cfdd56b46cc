"""Checkpoints fine-tuned elsewhere: timm's train.py, Hugging Face, Lightning, DDP; safe loading only."""

from __future__ import annotations

import argparse
import os

import pytest
import torch
from safetensors.torch import save_file

from sft_engine.errors import ModelError
from sft_engine.models import apply_state_dict, build_model, load_state_dict_file, load_weights

pytest.importorskip("timm")
ARCH = "timm:test_convnext"


class Anything:
    """A class of the user's: unpickling it could run code."""


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(1)
    return build_model(ARCH, 5)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _layouts(state):
    return {
        "plain.pth": state,
        "model.safetensors": state,  # Hugging Face hub / save_pretrained
        "pytorch_model.bin": state,
        "timm_train.pth": {"epoch": 3, "arch": "test_convnext", "state_dict": state,
                                                   "optimizer": {}, "version": 2, "args": argparse.Namespace(lr=0.1, model="test_convnext"),
                                                   "metric": 71.5},
        "ddp.pt": {f"module.{k}": v for k, v in state.items()},
        "lightning.ckpt": {"epoch": 1, "global_step": 10, "pytorch-lightning_version": "2.4.0",
                           "state_dict": {**{f"model.{k}": v for k, v in state.items()}, "criterion.weight": torch.ones(5)},
                           "optimizer_states": [{"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3)}},
                                                 "param_groups": [{"lr": 0.001, "betas": (0.9, 0.999), "params": [0]}]}],
                           "lr_schedulers": [{"last_epoch": 1, "base_lrs": [0.001]}],
                           "callbacks": {"ModelCheckpoint{'monitor': 'val_acc', 'mode': 'max'}": {"best_model_score": torch.tensor(0.9),
                                                                                                 "best_model_path": "epoch=1.ckpt"}},
                           "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 2, "completed": 1}}}},
                           "hparams_name": "kwargs", "hyper_parameters": {"lr": 0.001, "arch": "test_convnext"}},
        "hf_timm_wrapper.safetensors": {f"timm_model.{k}": v for k, v in state.items()},
        "compiled.bin": {"model": {f"_orig_mod.{k}": v for k, v in state.items()}},
    }


@pytest.mark.parametrize("filename", list(_layouts({"x": torch.zeros(1)})))
def test_every_layout_loads_exactly(tmp_path, trained, filename):
    layout = _layouts(trained.state_dict())[filename]
    path = tmp_path / filename
    if filename.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in layout.items()}, str(path))
    else:
        torch.save(layout, path)
    model = build_model(ARCH, 5)
    assert not _same(model, trained)
    load_weights(model, path)
    assert _same(model, trained)


def test_pickled_objects_are_refused(tmp_path, trained):
    path = tmp_path / "evil.pth"  # any class beyond tensors and argparse.Namespace is refused
    torch.save({"state_dict": trained.state_dict(), "thing": Anything()}, path)
    with pytest.raises(ModelError, match="pickled Python objects"):
        load_state_dict_file(path)
    os.remove(path)


def test_wrong_classes_and_wrong_arch_name_the_keys(tmp_path, trained):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(path))
    with pytest.raises(ModelError, match="mis-shaped: head.fc.weight") as info:
        load_weights(build_model(ARCH, 3), path)
    assert "--num-classes" in info.value.hint
    with pytest.raises(ModelError, match="does not fit the model"):
        load_weights(build_model("timm:test_vit", 5), path)


def test_backbone_only_under_a_prefix(trained):
    state = {f"model.{k}": v for k, v in trained.state_dict().items() if not k.startswith("head.fc.")}
    model = build_model(ARCH, 7)
    apply_state_dict(model, state, skip_prefix="head.fc.")
    assert torch.equal(model.stem[0].weight, trained.stem[0].weight)
