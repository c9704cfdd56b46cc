"""An engine process killed under load: SIGKILL of a model's Python-backend stub, for real.

Triton 2.51 neither restarts the stub nor stops reporting the model READY; ``serve``'s
watchdog must notice (one line), reload that model (one line), and the requests lost must
be only those between the kill and the recovery. The Kubernetes readiness probe must
fail while the model fails every request, although Triton's model readiness says READY.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from sft_engine.server import ServerConfig, TritonServer, free_port
from sft_engine.triton.health import PROBE_SCRIPT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
MODELS = Path(__file__).parent / "models"
MODEL = "lt_identity"


@pytest.fixture
def repository(tmp_path: Path):
    repo = tmp_path / "model_repository"
    shutil.copytree(MODELS / MODEL, repo / MODEL)
    return repo


def stubs_of(repo: Path) -> list[int]:
    """Live Python-backend stub processes serving a model of ``repo``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "triton_python_backend_stub" in cmd and str(repo) in cmd:
                found.append(int(entry.name))
    return found


class Load:
    """Requests one after another (about 50/s) in a thread; records (send time, ok, message)."""

    def __init__(self, url: str) -> None:
        import tritonclient.http as http

        self.http = http
        self.client = http.InferenceServerClient(url, connection_timeout=5.0, network_timeout=5.0)
        self.log: list[tuple[float, bool, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        x = np.ones((1, 16), np.float32)
        while not self._stop.is_set():
            tensor = self.http.InferInput("INPUT0", [1, 16], "FP32")
            tensor.set_data_from_numpy(x)
            sent = time.monotonic()
            try:
                self.client.infer(MODEL, [tensor])
                self.log.append((sent, True, ""))
            except Exception as exc:  # noqa: BLE001 - recorded: what the user sees
                self.log.append((sent, False, " ".join(str(exc).split())))
            time.sleep(0.02)

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _until(predicate, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(0.05)


def test_serve_reloads_a_model_whose_stub_was_killed_under_load(repository: Path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sft_engine.cli", "serve", "--repository", str(repository), "--http-port", str(port),
         "--grpc-port", "0", "--metrics-port", "0", "--watchdog-interval", "0.5"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        _until(lambda: any(ln.startswith("press Ctrl-C") for ln in lines), "serve ready", 120)
        assert any(ln.startswith("ready") for ln in lines), lines
        with Load(f"127.0.0.1:{port}") as load:
            _until(lambda: any(ok for _, ok, _ in load.log), "a first answered request")
            [stub] = stubs_of(repository)
            killed = time.monotonic()
            os.kill(stub, signal.SIGKILL)
            _until(lambda: any(ln.startswith("recovered:") for ln in lines), "the recovery line", 60)
            recovered = time.monotonic()
            _until(lambda: any(ok and sent > recovered for sent, ok, _ in load.log), "an answer after the recovery")
            time.sleep(1.0)
        faults = [ln for ln in lines if ln.startswith("fault:")]
        assert len(faults) == 1 and MODEL in faults[0] and "not healthy" in faults[0], lines
        assert len([ln for ln in lines if ln.startswith("recovered:")]) == 1, lines
        failed = [(sent, msg) for sent, ok, msg in load.log if not ok]
        # lost: only requests sent between the kill and the recovery, with the stub's error
        assert failed and all(killed - 0.1 <= sent <= recovered for sent, _ in failed), (failed, killed, recovered)
        assert all(ok for sent, ok, _ in load.log if sent > recovered)
        assert len(stubs_of(repository)) == 1  # a new stub serves the model
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 0, lines


def test_readiness_probe_fails_while_the_stub_is_dead_though_triton_says_ready(repository: Path):
    with TritonServer(ServerConfig(repository=repository, http_port=0, grpc_port=0, metrics_port=0)) as srv:
        probe = [sys.executable, "-c", PROBE_SCRIPT, str(srv.config.http_port), MODEL]
        ok = subprocess.run(probe, capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
        [stub] = stubs_of(repository)
        os.kill(stub, signal.SIGKILL)
        _until(lambda: not stubs_of(repository), "the stub gone")
        dead = subprocess.run(probe, capture_output=True, text=True, timeout=30)
        assert dead.returncode == 1 and "not healthy" in dead.stderr, (dead.returncode, dead.stderr)
        # what Triton 2.51 itself says: still READY, and no new stub (docs/operations.md, Faults)
        with urllib.request.urlopen(f"http://{srv.http_url}/v2/models/{MODEL}/ready", timeout=5) as resp:
            assert resp.status == 200
        assert not stubs_of(repository)


def test_the_watchdog_sends_no_probe_while_the_model_answers_its_own_traffic(repository):
    """Under load the model's own answers are the health check: the server counts only the load's requests."""
    from sft_engine.triton.control import HttpControl
    from sft_engine.triton.address import parse_address
    from sft_engine.watchdog import ModelWatchdog, WatchdogConfig

    cfg = ServerConfig(repository=repository, http_port=0, grpc_port=0, metrics_port=0, model_control_mode="explicit",
                       load_models=[MODEL])

    def successes(control) -> int:
        return sum(int(v["inference_stats"]["success"]["count"]) for v in control.statistics(MODEL)["model_stats"])

    with TritonServer(cfg) as server, HttpControl(parse_address(server.http_url, "http")) as control:
        with ModelWatchdog(server, [MODEL], lambda line: None, WatchdogConfig(interval_s=0.1)):
            time.sleep(0.5)  # idle: the watchdog probes with real inferences
            assert successes(control) >= 2
            with Load(server.http_url) as load:
                time.sleep(0.5)  # the first checks under load
                before, answered_before = successes(control), len(load.log)
                time.sleep(2.0)  # about 20 checks
                after, answered_after = successes(control), len(load.log)
    assert all(ok for _, ok, _ in load.log)
    # every success the server counted in the window is one of the load's (one request may straddle each edge)
    assert abs((after - before) - (answered_after - answered_before)) <= 2, (after - before, answered_after - answered_before)
