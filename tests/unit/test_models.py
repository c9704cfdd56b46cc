from __future__ import annotations

import pytest
import torch

from sft_engine.errors import ModelError
from sft_engine.models import apply_state_dict, build_model, head_prefix, list_archs, load_state_dict_file, load_weights


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenet_v3_small", "efficientnet_b0"])
def test_registry_builds_head_for_n_classes(arch):
    model = build_model(arch, 7)
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    assert any(k.startswith(head_prefix(arch)) for k in model.state_dict())


def test_unknown_arch_lists_known_ones():
    with pytest.raises(ModelError, match="unknown architecture 'resnet9'") as info:
        build_model("resnet9", 4)
    assert "resnet18" in info.value.hint
    assert set(list_archs()) >= {"resnet18", "resnet50", "mobilenet_v3_small", "efficientnet_b0"}


def test_prefixes_and_wrappers_are_stripped(tmp_path):
    model = build_model("resnet18", 4)
    wrapped = {"state_dict": {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ddp.pt")
    fresh = build_model("resnet18", 4)
    load_weights(fresh, tmp_path / "ddp.pt")
    assert torch.equal(fresh.fc.weight, model.fc.weight)


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"fc.weight": torch.zeros(1), "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="pickled Python objects"):
        load_state_dict_file(tmp_path / "evil.pt")


def test_mismatch_lists_missing_unexpected_and_misshaped():
    model = build_model("resnet18", 4)
    state = dict(build_model("resnet18", 10).state_dict())
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ModelError) as info:
        apply_state_dict(model, state)
    text = info.value.one_line()
    assert "1 missing: layer1.0.conv1.weight" in text
    assert "1 unexpected: extra.weight" in text
    assert "fc.weight (10, 512) vs model (4, 512)" in text
    assert "--num-classes" in text


def test_skip_prefix_loads_backbone_only():
    source = build_model("resnet18", 10)
    target = build_model("resnet18", 4)
    apply_state_dict(target, source.state_dict(), skip_prefix=head_prefix("resnet18"))
    assert torch.equal(target.conv1.weight, source.conv1.weight)
