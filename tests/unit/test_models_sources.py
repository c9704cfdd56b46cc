"""Model sources: names, heads per family, re-heading, preprocessing records; nothing downloaded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sft_engine.errors import ModelError
from sft_engine.models import build_model, canonical_arch, get_arch, head_prefix, source_preprocessing, split_name

pytest.importorskip("timm")


@pytest.mark.parametrize("name,expected", [
    ("resnet50", ("torchvision", "resnet50")),
    ("torchvision:vit_b_16", ("torchvision", "vit_b_16")),
    ("timm:convnext_tiny", ("timm", "convnext_tiny")),
])
def test_names(name, expected):
    assert split_name(name) == expected


@pytest.mark.parametrize("name", ["hf:bert", "timm:", ""])
def test_bad_names_are_one_line_errors(name):
    with pytest.raises(ModelError):
        split_name(name)


def test_unknown_models_of_each_source():
    with pytest.raises(ModelError, match="unknown architecture 'resnet9'"):
        get_arch("resnet9")
    with pytest.raises(ModelError, match="unknown timm model 'nonet_b0'"):
        get_arch("timm:nonet_b0")


@pytest.mark.parametrize("arch,head", [
    ("resnet18", "fc"), ("mobilenet_v3_small", "classifier.3"), ("efficientnet_b0", "classifier.1"),
    ("regnet_y_400mf", "fc"), ("convnext_tiny", "classifier.2"), ("vit_b_16", "heads.head"), ("swin_t", "head"),
    ("maxvit_t", "classifier.5"), ("googlenet", "fc"), ("inception_v3", "fc"), ("squeezenet1_1", "classifier.1"),
    ("densenet121", "classifier"), ("torchvision:shufflenet_v2_x0_5", "fc"),
])
def test_torchvision_heads(arch, head):
    assert get_arch(arch).head == head and head_prefix(arch) == head + "."


@pytest.mark.parametrize("arch,head", [
    ("timm:test_vit", "head"), ("timm:test_convnext", "head.fc"), ("timm:test_efficientnet", "classifier"),
    ("timm:resnet10t", "fc"), ("timm:mobilenetv4_conv_small", "classifier"), ("timm:vit_tiny_patch16_224", "head"),
    ("timm:deit_tiny_patch16_224", "head"), ("timm:convnext_atto", "head.fc"), ("timm:efficientvit_b0", "head.classifier.4"),
    ("timm:vit_small_patch14_reg4_dinov2", "head"),  # a backbone by default (num_classes=0): its head appears once classes are asked for
])
def test_timm_heads(arch, head):
    assert head_prefix(arch) == head + "."


@pytest.mark.parametrize("arch,size", [("mobilenet_v3_small", 64), ("timm:test_vit", 160), ("timm:test_convnext", 64),
                                       ("timm:test_efficientnet", 64), ("squeezenet1_1", 64)])
def test_built_models_have_the_new_head_where_the_spec_says(arch, size):
    model = build_model(arch, 3)
    head = model.get_submodule(get_arch(arch).head)
    assert (head.out_features if isinstance(head, nn.Linear) else head.out_channels) == 3
    assert not model.training
    with torch.no_grad():
        assert model(torch.rand(1, 3, size, size)).shape == (1, 3)


def test_registered_archs_build_as_before():
    torch.manual_seed(0)
    model = build_model("resnet18", 4)
    torch.manual_seed(0)
    import torchvision

    reference = torchvision.models.resnet18()
    reference.fc = nn.Linear(reference.fc.in_features, 4)
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name


def test_distilled_timm_models_are_refused_in_one_line():
    with pytest.raises(ModelError, match="2 classifier heads"):
        get_arch("timm:deit_tiny_distilled_patch16_224")


def test_canonical_names():
    assert canonical_arch("torchvision:resnet50") == "resnet50" and get_arch("torchvision:resnet50") is get_arch("resnet50")
    assert get_arch("timm:test_vit").name == "timm:test_vit"


def test_source_preprocessing_records():
    vit = source_preprocessing("timm:vit_tiny_patch16_224")
    assert (vit.input_size, vit.resize_size, vit.crop_mode, vit.resize, vit.mean) == (224, 248, "center", "bicubic", (0.5, 0.5, 0.5))
    r50 = source_preprocessing("resnet50")
    assert (r50.input_size, r50.resize_size, r50.crop_mode, r50.resize) == (224, 232, "center", "bilinear")
    assert get_arch("timm:test_vit").default_input_size == 160


def test_timm_pretrained_offline_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match="cannot download the timm weights test_vit") as info:
        build_model("timm:test_vit", 3, pretrained="DEFAULT")
    assert "--pretrained PATH" in info.value.hint and "\n" not in str(info.value)
    with pytest.raises(ModelError, match="unknown timm weights"):
        build_model("timm:test_vit", 3, pretrained="no_such_tag")
