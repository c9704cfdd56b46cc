"""A server dies with whoever started it, and ``serve`` notices when its server dies: real SIGKILLs.

``sft-engine serve`` and every in-process ``TritonServer`` (what ``tune``, ``demo`` and the
benchmarks use) start tritonserver through one launcher; a supervisor that SIGKILLs
and restarts them must not find the old server still holding the ports.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sft_engine.server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
MODELS = Path(__file__).parent / "models"


@pytest.fixture
def repository(tmp_path: Path):
    """A one-model repository; whatever still runs on it when the test ends is killed (by pid)."""
    repo = tmp_path / "model_repository"
    shutil.copytree(MODELS / "lt_identity", repo / "lt_identity")
    yield repo
    for pid in _processes_using(repo):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _processes_using(path: Path) -> list[int]:
    """Live processes whose command line names ``path`` (tritonserver and its backend stubs)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _until(predicate, what: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(0.1)


def _serve(repository: Path, port: int) -> tuple[subprocess.Popen[str], int]:
    """``sft-engine serve`` as its own process; returns it and its tritonserver's pid."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sft_engine.cli", "serve", "--repository", str(repository), "--http-port", str(port),
         "--grpc-port", "0", "--metrics-port", "0"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:  # type: ignore[union-attr]
        seen.append(line)
        if line.strip().startswith("pid"):  # "pid <serve's> (this process; its tritonserver: <tritonserver's>)"
            return proc, int(line.rsplit(":", 1)[1].strip(" )\n"))
    raise AssertionError(f"serve did not start: {''.join(seen)[-2000:]}")


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_sigkill_of_serve_takes_its_tritonserver_down(repository: Path) -> None:
    port = free_port()
    proc, server_pid = _serve(repository, port)
    assert _alive(server_pid) and _processes_using(repository)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    _until(lambda: not _alive(server_pid), "tritonserver exits after serve was SIGKILLed")
    _until(lambda: not _processes_using(repository), "no backend stub is left behind")
    _until(lambda: _port_free(port), "the HTTP port is free again for a restarted serve")
    proc2, _ = _serve(repository, port)  # what a supervisor does next
    proc2.send_signal(signal.SIGTERM)
    assert proc2.wait(timeout=60) == 0


def test_serve_exits_non_zero_when_its_tritonserver_is_killed(repository: Path) -> None:
    proc, server_pid = _serve(repository, free_port())
    os.kill(server_pid, signal.SIGKILL)
    code = proc.wait(timeout=30)
    out = proc.stdout.read()  # type: ignore[union-attr]
    assert code == 1, out
    assert "tritonserver exited" in out
    _until(lambda: not _processes_using(repository), "no backend stub is left behind")


_LAUNCHER = """
import sys, time
from sft_engine.server import ServerConfig, TritonServer
srv = TritonServer(ServerConfig(repository=sys.argv[1], http_port=0, grpc_port=0, metrics_port=0)).start()
print(srv.pid, flush=True)
time.sleep(600)
"""


def test_sigkill_of_a_process_using_the_launcher_takes_its_server_down(repository: Path) -> None:
    """The launcher ``tune``, ``demo`` and the benchmarks use: the same guarantee without ``serve``."""
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(repository)], cwd=ROOT,  # names the repository: cleaned up
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, text=True)
    server_pid = int(proc.stdout.readline())  # type: ignore[union-attr]
    assert _alive(server_pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    _until(lambda: not _alive(server_pid), "tritonserver exits after its parent was SIGKILLed")
    _until(lambda: not _processes_using(repository), "no backend stub is left behind")
