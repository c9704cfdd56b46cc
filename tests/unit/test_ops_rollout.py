"""rollout without a server: the gate's inputs and tolerances, and what is refused before anything changes."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sft_engine.cli import main
from sft_engine.errors import ConfigError, RepositoryError
from sft_engine.ops.rollout.check import CheckSpec, gate_inputs
from sft_engine.repository.manifest import find_manifest
from sft_engine.ops.model_control import ModelControl
from sft_engine.ops.modelconfig import disk_config
from sft_engine.ops.rollout.runner import RolloutPlan, RolloutResult, rollout
from sft_engine.preprocess import Preprocessing
from sft_engine.server import free_port
from tests.unit.test_ops_deploy import make_repository

SETTINGS = {"parity_atol": 0.01, "parity_rtol": 0.002, "parity_min_top1_agreement": 0.98, "accuracy_max_drop": 0.5,
            "parity_samples": 6, "seed": 3, "calibration_dir": None}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = make_repository(tmp_path / "model_repository")
    manifest_path = repo / "tiny" / "1" / "build_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["settings"] = SETTINGS
    manifest["preprocessing"] = Preprocessing(input_size=32).to_parameters()
    manifest_path.write_text(json.dumps(manifest))
    return repo


def test_parity_gate_uses_the_builds_inputs_and_tolerance(repo):
    cfg = disk_config(repo, "tiny")
    manifest = find_manifest(repo / "tiny" / "1")
    data, tol = gate_inputs(cfg, manifest, CheckSpec())
    assert (tol.atol, tol.rtol, tol.min_top1_agreement, tol.max_accuracy_drop) == (0.01, 0.002, 0.98, 0.5)
    assert data.inputs.shape == (6, 3, 32, 32) and data.inputs.dtype == np.float32
    again, _ = gate_inputs(cfg, manifest, CheckSpec())
    assert np.array_equal(data.inputs, again.inputs)  # the same inputs every time: seeded as the build was
    other, _ = gate_inputs(cfg, manifest, CheckSpec(samples=2, seed=4))
    assert other.inputs.shape[0] == 2 and not np.array_equal(other.inputs, data.inputs[:2])


def test_top1_and_sanity_modes_relax_the_gate(repo):
    cfg = disk_config(repo, "tiny")
    manifest = find_manifest(repo / "tiny" / "1")
    _, top1 = gate_inputs(cfg, manifest, CheckSpec(mode="top1", min_agreement=0.9))
    assert math.isinf(top1.atol) and top1.min_top1_agreement == 0.9
    _, top1_default = gate_inputs(cfg, manifest, CheckSpec(mode="top1"))
    assert top1_default.min_top1_agreement == 0.98
    _, sanity = gate_inputs(cfg, manifest, CheckSpec(mode="sanity"))
    assert math.isinf(sanity.atol) and sanity.min_top1_agreement == 0.0 and math.isinf(sanity.max_accuracy_drop)


def test_reduced_precision_versions_are_judged_by_their_recorded_gate(repo):
    """A bf16 version rolled out over an FP32 one: the looser gate of the two applies."""
    cfg = disk_config(repo, "tiny")
    fp32 = find_manifest(repo / "tiny" / "1")
    bf16 = replace(fp32, parity={"tolerance": {"atol": 0.05, "rtol": 0.03, "min_top1_agreement": 0.995, "max_accuracy_drop": 0.3}})
    _, tol = gate_inputs(cfg, bf16, CheckSpec(), previous_manifest=fp32)
    assert (tol.atol, tol.rtol, tol.min_top1_agreement, tol.max_accuracy_drop) == (0.05, 0.03, 0.98, 0.5)
    _, back = gate_inputs(cfg, fp32, CheckSpec(), previous_manifest=bf16)  # and rolling back to FP32
    assert (back.atol, back.rtol) == (0.05, 0.03)
    _, alone = gate_inputs(cfg, bf16, CheckSpec())
    assert (alone.atol, alone.rtol, alone.min_top1_agreement) == (0.05, 0.03, 0.995)


def test_a_version_without_manifest_gets_default_tolerances(repo):
    (repo / "tiny" / "1" / "build_manifest.json").unlink()
    assert find_manifest(repo / "tiny" / "1") is None
    data, tol = gate_inputs(disk_config(repo, "tiny"), None, CheckSpec())
    assert tol.atol == 1e-3 and data.inputs.shape == (16, 3, 32, 32)


def test_bad_check_settings_are_refused():
    for spec in (CheckSpec(mode="exact"), CheckSpec(min_agreement=1.5), CheckSpec(samples=0)):  # type: ignore[arg-type]
        with pytest.raises(ConfigError):
            spec.validate()


def test_nonexistent_version_fails_before_the_server_is_contacted(repo):
    port = free_port()  # nothing listens there: the version check must come first
    with ModelControl(f"127.0.0.1:{port}") as control:
        with pytest.raises(RepositoryError, match="has no version 5.*versions there: 1"):
            rollout(RolloutPlan(repo, "tiny", 5), control)
        with pytest.raises(RepositoryError, match="model 'nope' is not in repository"):
            rollout(RolloutPlan(repo, "nope", 1), control)


def test_cli_refuses_bad_input_with_exit_2(repo, capsys):
    port = free_port()
    code = main(["rollout", "--repository", str(repo), "--model", "tiny", "--version", "1", "--url", f"127.0.0.1:{port}"])
    assert code == 2 and "no Triton server answers" in capsys.readouterr().err
    code = main(["rollout", "--repository", str(repo), "--model", "tiny", "--version", "0"])
    assert code == 2 and "not a version number" in capsys.readouterr().err
    code = main(["rollout", "--repository", str(repo), "--model", "tiny", "--version", "1", "--url", "10.1.2.3:8000"])
    assert code == 2 and "loopback" in capsys.readouterr().err


def test_result_exit_codes():
    result = RolloutResult(model="tiny", version=2, previous=[1])
    assert result.exit_code == 0
    result.outcome = "rolled_back"
    assert result.exit_code == 1 and result.to_dict()["exit_code"] == 1
    result.outcome = "rollback_failed"
    assert result.exit_code == 3


def test_cli_check_modes_match_the_gate():
    from sft_engine.commands import ops
    from sft_engine.ops.rollout.check import CHECK_MODES

    assert ops.CHECK_MODES == CHECK_MODES


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_a_quantized_version_is_checked_on_its_recorded_gate_images_only(mode):
    """The rollout check of an INT8 or FP8 version splits the labelled images again and keeps only its gate images."""
    from sft_engine.engines.calibration import split_for_int8
    from sft_engine.ops.rollout.check import _int8_gate
    from sft_engine.repository.manifest import BuildManifest
    from sft_engine.verify import ParityData

    data = ParityData(np.arange(240, dtype=np.float32).reshape(240, 1), np.arange(240) % 4, tuple(f"c{i % 4}/{i}.png" for i in range(240)))
    split = split_for_int8(data, 40, seed=5)
    gate = _int8_gate(data, BuildManifest(engine_details={mode: split.describe()}))
    assert len(gate.inputs) == 200 and gate.files == split.gate.files
    assert _int8_gate(data, BuildManifest(engine_details={"precision": "fp32"})) is data


def test_no_warning_about_gate_images_when_nothing_changed(tmp_path, caplog):
    """A previous INT8 version beside a new version built without its images: its gate is split from its own images."""
    import logging

    from sft_engine.engines.calibration import split_for_int8
    from sft_engine.ops.rollout.check import _int8_gate
    from sft_engine.repository.manifest import BuildManifest
    from sft_engine.verify import ParityData

    labelled = ParityData(np.arange(240, dtype=np.float32).reshape(240, 1), np.arange(240) % 4, tuple(f"c{i % 4}/{i}.png" for i in range(240)))
    split = split_for_int8(labelled, 40, seed=5)
    previous = BuildManifest(engine_details={"int8": split.describe()})
    new_inputs = ParityData(np.zeros((6, 1), dtype=np.float32))  # the new version's build had no calibration images
    with caplog.at_level(logging.INFO, logger="sft_engine.ops.rollout.check"):
        gate = _int8_gate(new_inputs, BuildManifest(engine_details={"precision": "fp32"}), previous, own_images=lambda m: labelled)
    assert gate.files == split.gate.files
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with caplog.at_level(logging.INFO, logger="sft_engine.ops.rollout.check"):
        assert _int8_gate(new_inputs, previous, own_images=lambda m: None) is new_inputs  # its images are gone: no false alarm
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    changed = ParityData(labelled.inputs, labelled.labels, tuple(f"c{i % 4}/x{i}.png" for i in range(240)))
    with caplog.at_level(logging.INFO, logger="sft_engine.ops.rollout.check"):
        _int8_gate(changed, previous, own_images=lambda m: changed)
    assert any("calibration images changed" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
