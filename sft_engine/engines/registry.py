"""Every build target, by name: the one place a new target is added.

To add a target: write ``engines/<name>.py`` with a ``TARGET`` (see ``base.Target``:
``plan``, ``export``, ``check_available``) and add it to ``TARGETS`` below. To add a
candidate of an existing target (an engine × precision), add it to that target's
plan (the CPU target: a row of ``cpu.CANDIDATES``); a new precision also needs its gate
in ``verify.PRECISION_GATES``.
"""

from __future__ import annotations

import logging

from sft_engine.engines import cpu, onnx, tensorrt, torchscript_gpu
from sft_engine.engines.base import Target
from sft_engine.errors import ConfigError

__all__ = ["TARGETS", "target_names", "resolve_target", "get_target", "check_choice"]

LOGGER = logging.getLogger(__name__)

#: target name → Target
TARGETS: dict[str, Target] = {t.name: t for t in (cpu.TARGET, tensorrt.TARGET, torchscript_gpu.TARGET, onnx.TARGET)}


def target_names() -> tuple[str, ...]:
    """What ``--target`` accepts: ``auto`` and every registered target."""
    return ("auto", *TARGETS)


def resolve_target(target: str) -> str:
    """``auto`` → ``tensorrt`` (CUDA and a torch_tensorrt that imports and fits this torch),
    ``torchscript-gpu`` (CUDA without a working torch_tensorrt), or ``cpu``.

    The reason is logged, as a warning when a GPU host falls back from TensorRT (e.g. an
    installed torch_tensorrt built for another torch), so the CLI prints it.
    """
    if target != "auto":
        return target
    from sft_engine.engines.compat import probe_auto_target

    chosen, why = probe_auto_target()
    if chosen == "torchscript-gpu":
        LOGGER.warning("--target auto: building torchscript-gpu, not tensorrt: %s", why)
    else:
        LOGGER.info("--target auto: building %s: %s", chosen, why)
    return chosen


def get_target(name: str) -> Target:
    target = TARGETS.get(name)
    if target is None:
        raise ConfigError(f"unknown target {name!r}", hint=f"choose one of: {', '.join(target_names())}")
    return target


def check_choice(target: str, engine: str, precision: str) -> None:
    """ConfigError unless ``--target`` / ``--engine`` / ``--precision`` go together.

    ``--engine`` chooses among the CPU target's candidates, ``--precision`` among the
    CPU target's (fp32, bf16, int8) or the tensorrt target's (fp16, int8, fp8); the
    other GPU targets build FP16 only.
    """
    if target != "auto":
        get_target(target)
    if target == "tensorrt":
        tensorrt.check_precision(precision)
        if engine != "auto":
            raise ConfigError(f"--engine {engine} chooses a CPU engine, not a tensorrt one", hint="drop --engine, or use --target cpu")
        return
    if target == "auto" and precision in ("fp16", "fp8"):
        raise ConfigError(f"--precision {precision} needs --target tensorrt", hint=f"pass --target tensorrt --precision {precision}")
    cpu.check_choice(engine, precision)
    if precision != "auto" and target not in ("cpu", "auto"):
        raise ConfigError(f"--precision applies to --target cpu or tensorrt, not {target}", hint="GPU targets build FP16; drop --precision")
