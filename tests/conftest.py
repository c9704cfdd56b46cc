"""Shared fixtures: small real models, real repositories, real servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import LABELS


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet18 with a 4-class head, random but fixed weights, as safetensors."""
    import torch

    from sft_engine.models import build_model, save_state_dict

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18_4.safetensors"
    save_state_dict(build_model("resnet18", 4), path)
    return path


@pytest.fixture(scope="session")
def labels_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("labels") / "labels.txt"
    path.write_text("\n".join(LABELS) + "\n")
    return path
