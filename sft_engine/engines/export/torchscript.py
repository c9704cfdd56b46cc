"""Traced and frozen TorchScript (the CPU target's ``torchscript`` engine)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

__all__ = ["export_torchscript"]


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Traced and frozen TorchScript.

    ``optimize_for_inference`` rewrites to ops that cannot be serialized, so it runs at
    load time in the serving model instead (``engine.json``: ``optimize_for_inference``).
    """
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
    frozen.save(str(path))
