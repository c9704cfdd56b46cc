"""``sft-engine models``: listing, filtering, JSON, and the one-line error for no match."""

from __future__ import annotations

import json

import pytest

from sft_engine.cli import main

pytest.importorskip("timm")


def test_lists_torchvision_with_preprocessing(capsys):
    assert main(["models", "--source", "torchvision", "--filter", "resnet50"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("arch")
    line = next(l for l in out if l.startswith("resnet50 "))
    assert "center 232->224" in line and "bilinear" in line and "mean 0.485,0.456,0.406" in line
    assert not any(l.startswith("timm:") for l in out)


def test_timm_json_carries_the_preprocessing_record(capsys):
    assert main(["models", "--source", "timm", "--filter", "vit_tiny_patch16_2*", "--json"]) == 0
    rows = {row["arch"]: row for row in json.loads(capsys.readouterr().out)}
    row = rows["timm:vit_tiny_patch16_224"]
    assert (row["input_size"], row["resize_size"], row["crop_mode"], row["interpolation"]) == (224, 248, "center", "bicubic")
    assert row["mean"] == [0.5, 0.5, 0.5] and row["std"] == [0.5, 0.5, 0.5]
    assert all(name.startswith("timm:vit_tiny_patch16_2") for name in rows)


def test_both_sources_by_default(capsys):
    assert main(["models", "--filter", "convnext_tiny"]) == 0
    out = capsys.readouterr().out
    assert "\nconvnext_tiny " in out and "\ntimm:convnext_tiny " in out


def test_no_match_is_one_line_exit_2(capsys):
    assert main(["models", "--filter", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no model matches 'no-such-model'" in err
