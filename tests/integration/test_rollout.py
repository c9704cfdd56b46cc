"""Rollout on a real tritonserver in explicit model-control mode: under load, failing checks, bad input."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.request
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sft_engine.build import build
from sft_engine.cli import main
from sft_engine.build_config import BuildConfig
from sft_engine.errors import RepositoryError
from sft_engine.ops.rollout.check import CheckSpec
from sft_engine.ops.model_control import ModelControl
from sft_engine.ops.modelconfig import disk_config, override
from sft_engine.ops.rollout.runner import ROLLED_BACK, SWITCHED, RolloutPlan, rollout
from sft_engine.repository.manifest import read_manifest, write_manifest
from sft_engine.server import ServerConfig, TritonServer
from tests.helpers import tree_digest

pytestmark = pytest.mark.integration

MODEL = "tiny"


@pytest.fixture(scope="module")
def repo(tiny_weights, tmp_path_factory):
    """v1 and v2 from the same weights, v3 from other weights, v4 a copy of v1 with a corrupt engine."""
    import torch

    from sft_engine.models import build_model, save_state_dict

    root = tmp_path_factory.mktemp("rollout")
    torch.manual_seed(1)
    other = root / "other.safetensors"
    save_state_dict(build_model("resnet18", 4), other)
    repo = root / "model_repository"
    base = BuildConfig(arch="resnet18", num_classes=4, weights=tiny_weights, input_size=32, max_batch_size=8,
                       repository=repo, name=MODEL, engine="onnxruntime", parity_samples=8)
    for weights in (tiny_weights, tiny_weights, other):
        build(replace(base, weights=weights))
    shutil.copytree(repo / MODEL / "1", repo / MODEL / "4")
    (repo / MODEL / "4" / "model.onnx").write_bytes(b"not an onnx model")
    # v4's manifest records the corrupt engine: intact on disk, as built, but it cannot load
    write_manifest(repo / MODEL / "4", read_manifest(repo / MODEL / "4"))
    return repo


@pytest.fixture(scope="module")
def server(repo):
    with TritonServer(ServerConfig(repository=repo, http_port=0, grpc_port=0, metrics_port=0, model_control_mode="explicit")) as srv:
        yield srv


@pytest.fixture
def control(server):
    with ModelControl(server.http_url) as ctl:
        yield ctl


def _serve_only(control: ModelControl, repo: Path, version: int) -> None:
    """Put the server in a known state: exactly ``version`` served."""
    control.load(MODEL, override(disk_config(repo, MODEL), [version]))
    assert control.wait_gone(MODEL, [v for v in range(1, 5) if v != version], 60) == []
    assert control.ready_versions(MODEL) == [version]


def _answering(control: ModelControl) -> int:
    return control.infer(MODEL, None, "input", "logits", np.zeros((1, 3, 32, 32), np.float32))[1]


def _answered(http_url: str) -> int:
    """Requests the server has answered for the model (its statistics' success count, every version)."""
    with urllib.request.urlopen(f"http://{http_url}/v2/models/{MODEL}/stats", timeout=5) as resp:
        stats = json.loads(resp.read())
    return sum(int(m["inference_stats"]["success"]["count"]) for m in stats.get("model_stats", []))


def _wait_for_answered_requests(http_url: str, thread: threading.Thread, timeout_s: float = 60.0) -> None:
    """Until the server has answered a request of the load test started just before (not a fixed sleep)."""
    before = _answered(http_url)
    deadline = time.monotonic() + timeout_s
    while _answered(http_url) <= before:
        assert thread.is_alive(), "the load test ended before any request was answered"
        assert time.monotonic() < deadline, f"no request answered within {timeout_s:.0f} s of starting the load"
        time.sleep(0.05)


def test_rollout_under_open_loop_load_drops_no_request(server, repo, control):
    from sft_engine.loadtest import LoadSpec, LoadTestConfig, parse_endpoint, run_loadtest

    _serve_only(control, repo, 1)
    endpoint = replace(parse_endpoint(server.grpc_url), metrics_url=server.metrics_url)
    load = LoadTestConfig(endpoints=(endpoint,), model=MODEL, workers=1,
                          load=LoadSpec(mode="open", rates=(20.0,), arrival="constant", duration_s=18.0, warmup_s=1.0, window_s=1.0))
    outcome: dict[str, object] = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("result", run_loadtest(load)), daemon=True)
    thread.start()
    try:
        # the rollout starts once the load is answered, and the load outlasts it
        _wait_for_answered_requests(server.http_url, thread)
        result = rollout(RolloutPlan(repo, MODEL, 2), control)
        rollout_done_alive = thread.is_alive()
    finally:
        thread.join(timeout=90)
    assert result.outcome == SWITCHED, result.reason
    assert [s.name for s in result.steps] == ["load", "ready", "check", "switch", "verify"]
    assert result.check is not None and result.check.passed and result.check.previous == 1
    assert rollout_done_alive, "the load test ended before the rollout did: it did not cover the switch"
    step = outcome["result"].steps[0]  # type: ignore[attr-defined]
    assert step.requests.scheduled >= 300  # 20/s for 18 s
    assert step.requests.failed == 0, step.requests.errors
    assert step.requests.succeeded == step.requests.scheduled
    assert control.ready_versions(MODEL) == [2]
    assert _answering(control) == 2


def test_failing_check_rolls_back_to_the_served_version(repo, control, capsys):
    _serve_only(control, repo, 2)
    code = main(["rollout", "--repository", str(repo), "--model", MODEL, "--version", "3", "--url", control.url])
    err = capsys.readouterr().err
    assert code == 1
    assert "rolled back: serving version 2" in err
    assert "other weights" in err and "--check top1" in err  # the hint names the mode for retrained weights
    assert control.ready_versions(MODEL) == [2]
    assert control.versions(MODEL).get(3) != "READY"
    assert _answering(control) == 2


def test_retrained_version_passes_with_the_sanity_check(repo, control):
    _serve_only(control, repo, 2)
    result = rollout(RolloutPlan(repo, MODEL, 3, check=CheckSpec(mode="sanity")), control)
    assert result.outcome == SWITCHED, result.reason
    # measured (the outputs differ a lot), and the sanity mode accepts the difference
    assert result.check is not None and result.check.mode == "sanity" and result.check.passed
    assert result.check.samples == 8 and result.check.max_abs_diff > 0.01
    assert control.ready_versions(MODEL) == [3]
    assert _answering(control) == 3


def test_version_that_fails_to_load_rolls_back(repo, control):
    _serve_only(control, repo, 2)
    result = rollout(RolloutPlan(repo, MODEL, 4), control)
    assert result.outcome == ROLLED_BACK and result.exit_code == 1
    assert "version 4 failed to load" in (result.reason or "")
    assert result.steps[-1].name == "rollback" and result.steps[-1].ok
    assert control.ready_versions(MODEL) == [2]
    assert _answering(control) == 2


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_damaged_version_is_refused_before_any_change(repo, control, capsys, damage):
    _serve_only(control, repo, 2)
    engine = repo / MODEL / "3" / "model.onnx"
    good = engine.read_bytes()
    engine.write_bytes(good[: len(good) // 2] if damage == "truncated" else good[:-16] + bytes(16))
    try:
        code = main(["rollout", "--repository", str(repo), "--model", MODEL, "--version", "3", "--url", control.url, "--check", "sanity"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2
        assert len(err) == 1 and str(engine) in err[0] and f"{damage}" in err[0], err
        assert control.ready_versions(MODEL) == [2]
        assert control.versions(MODEL).get(3) != "READY"
        assert _answering(control) == 2
    finally:
        engine.write_bytes(good)


def test_nonexistent_version_is_refused_before_any_change(repo, control, capsys):
    _serve_only(control, repo, 2)
    before = tree_digest(repo)
    code = main(["rollout", "--repository", str(repo), "--model", MODEL, "--version", "9", "--url", control.url])
    err = capsys.readouterr().err
    assert code == 2
    assert "has no version 9" in err and "versions there: 1, 2, 3, 4" in err
    assert control.ready_versions(MODEL) == [2]
    assert tree_digest(repo) == before
    with pytest.raises(RepositoryError, match="has no version 9"):
        rollout(RolloutPlan(repo, MODEL, 9), control)


def test_server_not_in_explicit_mode_says_how_to_start_it(repo, capsys):
    # a repository whose latest version loads in "none" mode: v4 is corrupt, so serve a copy without it
    copy = repo.parent / "none_mode_repository"
    if not copy.exists():
        shutil.copytree(repo, copy, ignore=shutil.ignore_patterns("4"))
    with TritonServer(ServerConfig(repository=copy, http_port=0, grpc_port=0, metrics_port=0, model_control_mode="none")) as srv:
        code = main(["rollout", "--repository", str(copy), "--model", MODEL, "--version", "2", "--url", srv.http_url])
        err = capsys.readouterr().err
        assert code == 2
        assert "does not allow loading models" in err
        assert "--model-control-mode explicit" in err
        with ModelControl(srv.http_url) as ctl:
            assert ctl.ready_versions(MODEL) == [3]  # untouched
