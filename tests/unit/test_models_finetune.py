"""Fine-tuning any source's model: its head is what L2-SP leaves out and --freeze-backbone trains;
layer-wise learning-rate decay for transformer families; the run's preprocessing is the arch's."""

from __future__ import annotations

import pytest

from sft_engine.finetune.config import FinetuneConfig, default_layer_decay
from sft_engine.finetune.objective import L2SP
from sft_engine.finetune.optim import layer_ids, param_groups
from sft_engine.models import build_model, head_prefix

pytest.importorskip("timm")


def _config(**kw) -> FinetuneConfig:
    return FinetuneConfig.from_mapping({"epochs": 2, **kw}, "test").validated()


@pytest.mark.parametrize("arch", ["timm:test_convnext", "timm:test_vit", "mobilenet_v3_small", "squeezenet1_1"])
def test_l2sp_leaves_out_exactly_the_head(arch):
    model = build_model(arch, 3)
    prefix = head_prefix(arch)
    reg = L2SP(model, prefix)
    head = {id(p) for n, p in model.named_parameters() if n.startswith(prefix)}
    assert head and {id(p) for p in reg.head} == head
    assert not head & {id(p) for p, _ in reg.shared}


def test_layer_decay_defaults_by_family():
    assert default_layer_decay("vit_b_16") == 0.75 and default_layer_decay("timm:deit_small_patch16_224") == 0.75
    assert default_layer_decay("swin_t") == 0.75
    assert default_layer_decay("resnet50") == 1.0 and default_layer_decay("timm:convnext_tiny") == 1.0
    assert _config(arch="resnet18").layer_decay == 1.0
    assert _config(arch="resnet18", optimizer="sgd", layer_decay="auto").layer_decay == 1.0
    with pytest.raises(Exception, match="layer_decay"):
        _config(arch="resnet18", layer_decay=1.5)


def test_layer_decay_groups_scale_by_depth():
    arch = "timm:test_vit"
    model = build_model(arch, 3)
    config = _config(arch=arch, lr=1e-3, head_lr=1e-2, layer_decay=0.5)
    groups = param_groups(model, head_prefix(arch), config)
    by_param = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    depth = layer_ids(model, head_prefix(arch))
    top = max(depth.values())
    assert by_param[id(named["head.weight"])] == pytest.approx(1e-2)
    assert by_param[id(named["patch_embed.proj.weight"])] == pytest.approx(1e-3 * 0.5 ** top)
    lrs = [by_param[id(named[n])] for n in named if not n.startswith("head.")]
    deepest_block = max(n for n in named if n.startswith("blocks."))
    assert by_param[id(named[deepest_block])] > by_param[id(named["patch_embed.proj.weight"])]
    assert sorted(set(lrs)) == sorted({1e-3 * 0.5 ** (top - depth[n]) for n in named if not n.startswith("head.")})
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_torchvision_vit_layers_are_its_encoder_blocks():
    import torch
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.vit_b_16()
    depth = layer_ids(model, "heads.head.")
    assert depth["conv_proj.weight"] == 0 and depth["class_token"] == 0
    assert depth["encoder.layers.encoder_layer_0.ln_1.weight"] == depth["encoder.layers.encoder_layer_0.mlp.0.weight"] == 1
    assert depth["encoder.layers.encoder_layer_11.ln_2.bias"] == 12 and depth["heads.head.weight"] == 14


def test_source_preprocessing_is_the_runs_record():
    config = _config(arch="timm:vit_tiny_patch16_224", preprocess="source")
    prep = config.preprocessing
    assert (prep.input_size, prep.resize_size, prep.crop_mode, prep.resize, prep.mean) == (224, 248, "center", "bicubic", (0.5, 0.5, 0.5))
    plain = _config(arch="resnet18").preprocessing
    assert (plain.input_size, plain.crop_mode, plain.resize_size, plain.resize) == (224, "squash", None, "bilinear")
