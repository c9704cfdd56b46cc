"""A restart under load: ``serve`` stopped (SIGTERM) and started again at once, on the same ports.

The stopped server leaves its side of the load's connections in TIME-WAIT; the new
``serve`` must still start on those ports. A client with the default retry policy rides
through the gap (it loses only requests whose deadline passed: none here); one that opted
out of retries sees the gap as ``ServerUnavailable``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sft_engine.client import Client
from sft_engine.client.errors import ServerUnavailable
from sft_engine.server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
MODELS = Path(__file__).parent / "models"
MODEL = "lt_identity"


def _serve(repo: Path, ports: tuple[int, int, int]) -> tuple[subprocess.Popen[str], list[str]]:
    http, grpc, metrics = ports
    proc = subprocess.Popen(
        [sys.executable, "-m", "sft_engine.cli", "serve", "--repository", str(repo), "--http-port", str(http),
         "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if line.startswith("press Ctrl-C") or line.startswith("error"):
            break
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()  # type: ignore[arg-type]
    return proc, lines


class Load:
    """One client sending requests back to back in a thread; records (start, end, error or None)."""

    def __init__(self, url: str, **options) -> None:
        self.client = Client(url, protocol="http", model=MODEL, timeout=5.0, **options)
        self.log: list[tuple[float, float, Exception | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        batch = np.ones((1, 16), np.float32)
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                self.client.infer(batch)
                self.log.append((start, time.monotonic(), None))
            except Exception as exc:  # noqa: BLE001 - counted: what the client lost
                self.log.append((start, time.monotonic(), exc))
            time.sleep(0.01)

    def start(self) -> "Load":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.client.close()


def test_serve_restarted_at_once_under_load_comes_back_on_the_same_ports_and_the_client_loses_nothing(tmp_path: Path):
    repo = tmp_path / "model_repository"
    shutil.copytree(MODELS / MODEL, repo / MODEL)
    ports = (free_port(), free_port(), free_port())
    first, lines = _serve(repo, ports)
    assert lines[-1].startswith("press Ctrl-C"), lines
    url = f"127.0.0.1:{ports[0]}"
    patient = Load(url)  # the default retry policy
    impatient = Load(url, retries=0)
    second = None
    try:
        patient.start()
        impatient.start()
        time.sleep(2.0)
        assert any(err is None for _, _, err in patient.log), patient.log[:3]
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0, lines
        stopped = time.monotonic()
        second, lines2 = _serve(repo, ports)
        assert lines2[-1].startswith("press Ctrl-C"), lines2  # not "port ... is already in use"
        assert any(f"http://{url}" in ln for ln in lines2), lines2
        back = time.monotonic()
        deadline = time.monotonic() + 30
        while not any(err is None and start > back for start, _, err in patient.log) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        patient.stop()
        impatient.stop()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=60)
    lost = [err for _, _, err in patient.log if err is not None]
    assert not lost, lost[:3]  # no request's 10 s deadline passed
    rode_through = [(s, e) for s, e, err in patient.log if err is None and s < back and e > stopped]
    assert rode_through, "no request was answered across the restart"
    refused = [err for _, _, err in impatient.log if err is not None]
    assert refused and all(isinstance(err, ServerUnavailable) for err in refused), refused[:3]
