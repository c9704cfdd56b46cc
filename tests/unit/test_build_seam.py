"""The build's one verify-and-select step, for any target: a target only exports, the build judges.

A target of plain Python runners (no engine library) is enough to see every rule: an
export that fails is recorded by a selecting target, a runner off the eager model fails
its gate, survivors are timed, and the gate follows the candidate's precision.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sft_engine.build import select
from sft_engine.engines.base import EngineArtifact, EngineCandidate, EngineConfig, ExportContext, ExportSettings, Target
from sft_engine.engines.registry import TARGETS, target_names
from sft_engine.errors import ExportError, ParityError
from sft_engine.repository.config import TensorSpec
from sft_engine.verify import BF16_TOLERANCE, Check, ParityData, Tolerance


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).eval()


def _exact(model: nn.Module):
    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(batch)).numpy()
    return run


def _target(runners: dict[str, object], selects: bool = True) -> Target:
    """A target whose candidates are ``runners``' keys; a runner that is an exception fails the export."""
    def plan(settings: ExportSettings) -> list[EngineCandidate]:
        return [EngineCandidate(*name.split("-")) for name in runners]

    def export(ctx: ExportContext, cand: EngineCandidate) -> EngineArtifact:
        runner = runners[cand.name]
        if isinstance(runner, Exception):
            raise runner
        config = EngineConfig(inputs=(TensorSpec("input", "FP32", (3, 2, 2)),), outputs=(TensorSpec("logits", "FP32", (4,)),), backend="python")
        return EngineArtifact(candidate=cand, engine=cand.engine, files={}, config=config, checks=(Check(cand.name, runner, subject=f"the {cand.name} engine"),),
                              details={"precision": cand.precision}, record={"extra": cand.name})

    return Target(name="fake", plan=plan, export=export, selects=selects, label="fake", export_hint="try another")


def _ctx(tmp_path) -> ExportContext:
    settings = ExportSettings(name="m", arch="x", num_classes=4, input_shape=(3, 2, 2), max_batch_size=8)
    data = ParityData(np.random.default_rng(0).standard_normal((10, 3, 2, 2)).astype(np.float32))
    return ExportContext(model=_model(), settings=settings, workdir=tmp_path, data=data)


def test_every_registered_target_plans_and_exports():
    assert target_names() == ("auto", "cpu", "tensorrt", "torchscript-gpu", "onnx")
    for name, target in TARGETS.items():
        assert target.name == name and callable(target.plan) and callable(target.export)


def test_selecting_target_records_every_candidate_and_keeps_a_survivor(tmp_path):
    ctx = _ctx(tmp_path)
    exact = _exact(ctx.model)
    target = _target({"good": exact, "also": exact, "broken": lambda b: np.zeros((len(b), 4), np.float32), "missing": RuntimeError("no such lib")})
    chosen = select(target, target.plan(ctx.settings), ctx, Tolerance(), {}, budget_s=0.2)
    rows = {c.candidate.name: c.to_dict() for c in chosen.candidates}
    assert rows["missing"] == {"engine": "missing", "precision": "fp32", "candidate": "missing", "exported": False, "error": "RuntimeError: no such lib"}
    assert rows["broken"]["exported"] and not rows["broken"]["parity"]["passed"] and "latency" not in rows["broken"]
    assert {"latency" in rows["good"], "latency" in rows["also"]} == {True} and rows["good"]["extra"] == "good"
    assert chosen.artifact.engine in ("good", "also") and chosen.details["selection"] == "fastest passing its gate"
    assert chosen.details["parity"]["passed"] and chosen.details["tolerance"] == chosen.details["parity"]["tolerance"]


def test_no_survivor_names_each_failure(tmp_path):
    ctx = _ctx(tmp_path)
    broken = _target({"broken": lambda b: np.zeros((len(b), 4), np.float32), "missing": RuntimeError("no such lib")})
    with pytest.raises(ParityError, match=r"no fake engine matches the eager model \(broken: max\|diff\|"):
        select(broken, broken.plan(ctx.settings), ctx, Tolerance(), {}, budget_s=0.2)
    gone = _target({"missing": RuntimeError("no such lib")})
    with pytest.raises(ExportError, match=r"no fake engine could be exported \(missing: RuntimeError: no such lib\)"):
        select(gone, gone.plan(ctx.settings), ctx, Tolerance(), {}, budget_s=0.2)


def test_a_single_candidate_target_raises_its_own_errors(tmp_path):
    ctx = _ctx(tmp_path)
    off = _target({"plan-fp16": lambda b: np.zeros((len(b), 4), np.float32)}, selects=False)
    with pytest.raises(ParityError, match="the plan-fp16 engine disagrees with the eager model"):
        select(off, off.plan(ctx.settings), ctx, Tolerance(), {}, budget_s=0.2)
    fails = _target({"plan-fp16": ExportError("cannot compile", hint="x")}, selects=False)
    with pytest.raises(ExportError, match="cannot compile"):
        select(fails, fails.plan(ctx.settings), ctx, Tolerance(), {}, budget_s=0.2)


def test_the_gate_follows_the_candidates_precision(tmp_path):
    ctx = _ctx(tmp_path)
    exact = _exact(ctx.model)
    nudged = lambda b: exact(b) + 0.02  # noqa: E731 - beyond FP32's 1e-3, within bf16's 5e-2
    target = _target({"ov-bf16": nudged, "ov": nudged})
    chosen = select(target, target.plan(ctx.settings), ctx, Tolerance(), {}, budget_s=0.2)
    rows = {c.candidate.name: c.to_dict() for c in chosen.candidates}
    assert rows["ov-bf16"]["parity"]["passed"] and not rows["ov"]["parity"]["passed"]
    assert rows["ov-bf16"]["parity"]["tolerance"]["atol"] == BF16_TOLERANCE.atol
    assert chosen.artifact.candidate == EngineCandidate("ov", "bf16") and chosen.details["selection"] == "fastest passing its gate"
