"""What every engine exporter hands on: an ``EngineArtifact``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sft_engine.repository.config import ModelConfigSpec

__all__ = ["EngineArtifact", "ExportContext", "Runner"]

#: in-process runner: NCHW float32 batch → logits (float32)
Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class EngineArtifact:
    """An exported engine, ready to be verified and published.

    ``files`` maps a file name inside the version directory to the file in the
    build's work directory. ``config`` is the model-level Triton config this engine
    needs (backend/platform, tensor names, instance kind).
    """

    target: str
    engine: str
    files: dict[str, Path]
    config: ModelConfigSpec
    runner: Runner
    details: dict[str, Any] = field(default_factory=dict)
    candidates: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ExportContext:
    """What every target's exporter receives.

    ``model`` is the eager FP32 model on CPU in eval mode; ``reference`` its logits
    on ``data.inputs``; ``parameters`` the config ``parameters`` (preprocessing) that
    every target's config.pbtxt must carry.
    """

    model: Any
    build: Any  # sft_engine.config.BuildConfig (not imported: engines stay below config)
    workdir: Path
    data: Any  # sft_engine.verify.ParityData
    reference: np.ndarray
    tolerance: Any  # sft_engine.verify.Tolerance
    parameters: dict[str, str]
