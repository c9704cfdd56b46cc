"""Every build target, by name: the one place a new target is added.

To add a target: write a module with a ``TARGET`` (see ``base.Target``: ``plan``,
``export``, the ``precisions`` it takes and its ``check_choice``) and add it to
``TARGETS`` below (or ``register_target`` it). To add a candidate of an existing target
(an engine × precision), add it to that target's plan (the CPU target: a row of
``cpu.target.CANDIDATES``); a new precision is one record of ``precision.PRECISIONS``.
"""

from __future__ import annotations

import logging

from sft_engine.engines import onnx
from sft_engine.engines.base import Target
from sft_engine.engines.cpu import target as cpu
from sft_engine.engines.gpu import torchscript as torchscript_gpu
from sft_engine.engines.tensorrt import target as tensorrt
from sft_engine.errors import ConfigError

__all__ = ["TARGETS", "AUTO_CHECKED", "target_names", "register_target", "resolve_target", "get_target", "check_choice"]

LOGGER = logging.getLogger(__name__)

#: target name → Target
TARGETS: dict[str, Target] = {t.name: t for t in (cpu.TARGET, tensorrt.TARGET, torchscript_gpu.TARGET, onnx.TARGET)}
#: the target ``--target auto`` choices are checked against before the host is probed: every host builds it
AUTO_CHECKED = cpu.TARGET.name


def target_names() -> tuple[str, ...]:
    """What ``--target`` accepts: ``auto`` and every registered target."""
    return ("auto", *TARGETS)


def register_target(target: Target) -> Target:
    """Add ``target`` (a duplicate name is refused); returns it, for a module-level line."""
    if target.name in TARGETS or target.name == "auto":
        raise ValueError(f"target {target.name!r} is already registered")
    TARGETS[target.name] = target
    return target


def resolve_target(target: str) -> str:
    """``auto`` → ``tensorrt`` (CUDA and a torch_tensorrt that imports and fits this torch),
    ``torchscript-gpu`` (CUDA without a working torch_tensorrt), or ``cpu``.

    The reason is logged, as a warning when a GPU host falls back from TensorRT (e.g. an
    installed torch_tensorrt built for another torch), so the CLI prints it.
    """
    if target != "auto":
        return target
    from sft_engine.engines.gpu.probes import probe_auto_target

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


def _owners(precision: str) -> list[str]:
    return [t.name for t in TARGETS.values() if precision in t.precisions]


def check_choice(target: str, engine: str, precision: str) -> None:
    """ConfigError unless ``--target`` / ``--engine`` / ``--precision`` go together.

    ``auto`` (not yet probed) is checked as ``AUTO_CHECKED``, naming the target a
    precision needs when that one lacks it; a target that takes no ``--precision``
    names those that do; the rest is the target's own ``check_choice``.
    """
    if target == "auto":
        checked = get_target(AUTO_CHECKED)
        owners = _owners(precision)
        if precision != "auto" and precision not in checked.precisions and owners:
            raise ConfigError(f"--precision {precision} needs --target {' or '.join(owners)}",
                              hint=f"pass --target {owners[0]} --precision {precision}")
    else:
        checked = get_target(target)
        if precision != "auto" and not checked.precisions:
            raise ConfigError(f"--precision applies to --target {' or '.join(t.name for t in TARGETS.values() if t.precisions)}, not {target}",
                              hint="GPU targets build FP16; drop --precision")
    checked.check_choice(engine, precision)
