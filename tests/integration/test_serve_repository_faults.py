"""``sft-engine serve`` started over a repository a fault left behind: a damaged version, a killed publisher.

Real processes throughout: ``serve`` is its own process over a really built repository
(two ONNX Runtime versions of the tiny resnet18, with their preprocessing and ensemble
models), the damage is done to the files on disk, and the publisher is SIGKILLed after
its commit point. What is asserted is what a client of the started server sees.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from sft_engine.cli import main
from sft_engine.repository.manifest import MANIFEST_NAME
from sft_engine.repository.writer import BUILT_CONFIG_NAME, list_versions
from sft_engine.server import free_port
from tests.helpers import LABELS, build_two_versions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny"


@pytest.fixture(scope="module")
def built(tiny_weights, tmp_path_factory) -> Path:
    return build_two_versions(tmp_path_factory.mktemp("faults"), tiny_weights, MODEL, seed=3)


@pytest.fixture
def repo(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model_repository"
    shutil.copytree(built, copy)
    return copy


@contextlib.contextmanager
def _serving(repository: Path):
    """``sft-engine serve`` as its own process; yields (HTTP address, every line it printed before 'ready')."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sft_engine.cli", "serve", "--repository", str(repository), "--http-port", str(port),
         "--grpc-port", "0", "--metrics-port", "0"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            seen.append(line.rstrip("\n"))
            if line.strip().startswith("pid"):
                break
        else:
            raise AssertionError(f"serve did not start (exit {proc.wait()}): {seen[-20:]}")
        yield f"127.0.0.1:{port}", seen
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _ready(http: str, model: str, version: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{http}/v2/models/{model}/versions/{version}/ready", timeout=5) as resp:
            return resp.status == 200
    except urllib.error.HTTPError:
        return False


def _answering_version(http: str) -> int:
    body = {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                        "data": np.zeros(3 * 32 * 32, np.float32).tolist()}]}
    req = urllib.request.Request(f"http://{http}/v2/models/{MODEL}/infer", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return int(json.loads(resp.read())["model_version"])


@pytest.mark.parametrize("damage", ["truncated engine", "altered model.py"])
def test_serve_keeps_a_damaged_latest_version_out_and_serves_the_previous_one(repo: Path, damage: str, capsys) -> None:
    if damage == "truncated engine":
        model, path = MODEL, repo / MODEL / "2" / "model.onnx"
        path.write_bytes(path.read_bytes()[:4096])
    else:  # the preprocessing model's code, changed by hand after the build
        model, path = f"{MODEL}_preprocess", repo / f"{MODEL}_preprocess" / "2" / "model.py"
        path.write_text(path.read_text() + "\n# edited\n")
    assert main(["check", "--repository", str(repo)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0], err
    with _serving(repo) as (http, lines):
        warnings = [line for line in lines if str(path) in line]
        assert len(warnings) == 1 and f"{model} version 2 is damaged" in warnings[0], lines
        assert "serving version(s) 1 instead" in warnings[0]
        assert _ready(http, model, 1) and not _ready(http, model, 2)
        if model == MODEL:
            assert _answering_version(http) == 1  # clients get the previous version, not a failing one


def test_serve_refuses_to_start_when_no_intact_version_is_left(repo: Path) -> None:
    for version in (1, 2):
        (repo / MODEL / str(version) / "model.onnx").write_bytes(b"\0" * 64)
    done = subprocess.run([sys.executable, "-m", "sft_engine.cli", "serve", "--repository", str(repo), "--http-port", str(free_port())],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and str(repo / MODEL / "2" / "model.onnx") in err[0] and "no intact version" in err[0], err


def test_serve_finishes_a_publish_whose_publisher_was_killed_after_its_commit_point(repo: Path, tmp_path: Path) -> None:
    """A real publisher SIGKILLed right after writing its journal; the next ``serve`` finishes it and serves version 3."""
    files = {p.name: str(p) for p in (repo / MODEL / "2").iterdir() if p.is_file() and p.name not in (MANIFEST_NAME, BUILT_CONFIG_NAME)}
    spec = tmp_path / "publish.json"
    spec.write_text(json.dumps({"repository": str(repo), "name": MODEL, "config_text": (repo / MODEL / "config.pbtxt").read_text(),
                                "labels": LABELS, "files": files}))
    marker = tmp_path / "paused"
    env = dict(os.environ, PYTHONPATH=str(ROOT), SFT_ENGINE_PUBLISH_PAUSE_AT="1", SFT_ENGINE_PUBLISH_PAUSE_FILE=str(marker))
    proc = subprocess.Popen([sys.executable, "-m", "tests.publish_worker", str(spec)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"  # type: ignore[union-attr]
        time.sleep(0.05)
    assert marker.read_text().startswith("1 committed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert list_versions(repo / MODEL) == [1, 2]  # the journal is written, no rename done
    with _serving(repo) as (http, lines):
        assert f"finished an interrupted publish of {MODEL}" in lines, lines
        assert list_versions(repo / MODEL) == [1, 2, 3]
        assert _ready(http, MODEL, 3) and not _ready(http, MODEL, 2)
        assert _answering_version(http) == 3
