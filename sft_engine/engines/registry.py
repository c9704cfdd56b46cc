"""Every build target, by name: the one place a new target is added.

To add a target: write ``engines/<name>.py`` with a ``TARGET`` (see ``base.Target``:
``plan``, ``export``, ``check_available``) and add it to ``TARGETS`` below. To add a
candidate of an existing target (an engine × precision), add it to that target's
plan (the CPU target: a row of ``cpu.CANDIDATES``); a new precision also needs its gate
in ``verify.PRECISION_GATES``.
"""

from __future__ import annotations

import importlib.util

from sft_engine.engines import cpu, onnx, tensorrt, torchscript_gpu
from sft_engine.engines.base import Target
from sft_engine.errors import ConfigError

__all__ = ["TARGETS", "target_names", "resolve_target", "get_target", "check_choice"]

#: target name → Target
TARGETS: dict[str, Target] = {t.name: t for t in (cpu.TARGET, tensorrt.TARGET, torchscript_gpu.TARGET, onnx.TARGET)}


def target_names() -> tuple[str, ...]:
    """What ``--target`` accepts: ``auto`` and every registered target."""
    return ("auto", *TARGETS)


def resolve_target(target: str) -> str:
    """``auto`` → ``tensorrt`` when CUDA and torch_tensorrt are present, else ``cpu``."""
    if target != "auto":
        return target
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("torch_tensorrt") is not None:
        return "tensorrt"
    return "cpu"


def get_target(name: str) -> Target:
    target = TARGETS.get(name)
    if target is None:
        raise ConfigError(f"unknown target {name!r}", hint=f"choose one of: {', '.join(target_names())}")
    return target


def check_choice(target: str, engine: str, precision: str) -> None:
    """ConfigError unless ``--target`` / ``--engine`` / ``--precision`` go together.

    ``--engine`` and ``--precision`` choose among the CPU target's candidates; the GPU
    targets build FP16 only.
    """
    if target != "auto":
        get_target(target)
    cpu.check_choice(engine, precision)
    if precision != "auto" and target not in ("cpu", "auto"):
        raise ConfigError(f"--precision applies to --target cpu, not {target}", hint="GPU targets build FP16; drop --precision")
