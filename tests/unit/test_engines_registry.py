"""The extension points: a new target is one module plus one registry line, a new precision one record of the table.

This file is that module: a toy target (its exporter, the precisions it takes, its own
``check_choice``) and a toy precision (its gate), each added with one line, and a whole
``sft-engine build`` with them through the public path (``BuildConfig`` → ``build``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sft_engine.build import build
from sft_engine.build_config import BuildConfig
from sft_engine.engines import precision, registry
from sft_engine.engines.base import EngineArtifact, EngineCandidate, ExportContext, ExportSettings, Target
from sft_engine.engines.cpu.target import cpu_engine_config
from sft_engine.errors import ConfigError, ParityError
from sft_engine.verify import Check, Tolerance
from tests.helpers import LABELS

#: the toy precision: logits may move by 0.2, the decision may not
TOY8 = precision.Precision("toy8", gate=Tolerance(atol=0.2, rtol=0.0, min_top1_agreement=0.99), failure_hint="build with --precision fp32")
#: how far the toy engine moves every logit: outside FP32's gate (1e-3), inside toy8's
NUDGE = 0.1


def _plan(settings: ExportSettings) -> list[EngineCandidate]:
    return [EngineCandidate("toy", "toy8" if settings.precision == "auto" else settings.precision)]


def _export(ctx: ExportContext, candidate: EngineCandidate) -> EngineArtifact:
    model = ctx.model
    path = ctx.workdir / "toy.bin"
    path.write_bytes(b"toy engine")

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(batch)).numpy() + NUDGE

    s = ctx.settings
    return EngineArtifact(candidate=candidate, engine="toy", files={"toy.bin": path}, config=cpu_engine_config(s.num_classes, s.input_shape),
                          checks=(Check(candidate.name, run, subject="the toy engine"),), details={"precision": candidate.precision})


def _check_choice(engine: str, precision_name: str) -> None:
    if engine not in ("auto", "toy"):
        raise ConfigError(f"--target toy has no engine {engine}", hint="drop --engine")


TOY = Target(name="toy", plan=_plan, export=_export, precisions=("toy8", "fp32"), check_choice=_check_choice, label="toy")


@pytest.fixture
def toy():
    """The two table lines, taken back after the test."""
    precision.register_precision(TOY8)
    registry.register_target(TOY)
    try:
        yield
    finally:
        del registry.TARGETS["toy"], precision.PRECISIONS["toy8"]


def _cfg(tiny_weights, tmp_path, **kw) -> BuildConfig:
    settings = {"target": "toy", **kw}
    return BuildConfig(arch="resnet18", num_classes=4, weights=tiny_weights, input_size=32, max_batch_size=4, repository=tmp_path / "repo",
                       name="toy_model", labels=list(LABELS), parity_samples=8, **settings)


def test_a_toy_target_and_precision_build_through_the_public_path(toy, tiny_weights, tmp_path):
    assert "toy" in registry.target_names()
    result = build(_cfg(tiny_weights, tmp_path))
    assert (result.target, result.engine, result.precision) == ("toy", "toy", "toy8")
    assert result.report.passed and result.report.tolerance["atol"] == TOY8.gate.atol, "judged by the toy precision's own gate"
    version = tmp_path / "repo" / "toy_model" / "1"
    manifest = json.loads((version / "build_manifest.json").read_text())
    assert manifest["target"] == "toy" and manifest["parity"]["max_abs_diff"] == pytest.approx(NUDGE, abs=1e-4)
    assert (version / "toy.bin").read_bytes() == b"toy engine"
    served = json.loads((tmp_path / "repo" / "toy_model_image" / "1" / "build_manifest.json").read_text())
    assert served["engine_details"]["serves"] == {"model": "toy_model", "version": 1}


def test_the_toy_targets_choices_are_its_own(toy, tiny_weights, tmp_path):
    with pytest.raises(ConfigError, match="--target toy has no engine openvino"):
        _cfg(tiny_weights, tmp_path, engine="openvino").validated()
    with pytest.raises(ConfigError, match="unknown CPU precision 'toy8'"):
        _cfg(tiny_weights, tmp_path, target="cpu", precision="toy8").validated()
    with pytest.raises(ParityError, match="the toy engine disagrees with the eager model"):  # FP32's gate, not toy8's
        build(_cfg(tiny_weights, tmp_path, precision="fp32"))
    assert not (tmp_path / "repo" / "toy_model").exists()


def test_a_table_line_is_not_added_twice(toy):
    with pytest.raises(ValueError, match="already registered"):
        precision.register_precision(TOY8)
    with pytest.raises(ValueError, match="already registered"):
        registry.register_target(TOY)
