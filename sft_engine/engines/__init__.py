"""Engine exporters, one module per target; each exposes ``export(ctx) -> EngineArtifact``."""

from __future__ import annotations

import importlib

from sft_engine.engines.base import EngineArtifact, ExportContext, Runner
from sft_engine.errors import ConfigError

__all__ = ["EngineArtifact", "ExportContext", "Runner", "exporter_for", "TARGET_MODULES"]

#: target name → module implementing ``export(ctx)``
TARGET_MODULES = {
    "cpu": "sft_engine.engines.cpu",
    "tensorrt": "sft_engine.engines.tensorrt",
    "torchscript-gpu": "sft_engine.engines.torchscript_gpu",
    "onnx": "sft_engine.engines.onnx",
}


def resolve_target(target: str) -> str:
    """``auto`` → ``tensorrt`` when CUDA and torch_tensorrt are present, else ``cpu``."""
    if target != "auto":
        return target
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("torch_tensorrt") is not None:
        return "tensorrt"
    return "cpu"


def exporter_for(target: str, build: object = None):
    """The ``export`` function of ``target``, after the target's own availability check.

    The check runs before any model is built, so a host that lacks CUDA or
    torch_tensorrt learns it at once, in one line naming what works instead.
    """
    name = TARGET_MODULES.get(target)
    if name is None:
        raise ConfigError(f"unknown target {target!r}", hint=f"choose one of: auto, {', '.join(TARGET_MODULES)}")
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise ConfigError(f"target {target!r} is not available in this version", hint="use --target cpu") from None
        raise
    check = getattr(module, "check_available", None)
    if check is not None:
        check(build)
    return module.export
