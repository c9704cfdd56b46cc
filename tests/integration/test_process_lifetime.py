"""A server dies with whoever started it, and ``serve`` notices when its server dies: real SIGKILLs.

The same for the load tester: its worker processes die with a SIGKILLed coordinator,
through PR_SET_PDEATHSIG alone (their own parent poll frozen in the test).

``sft-engine serve`` and every in-process ``TritonServer`` (what ``tune``, ``demo`` and the
benchmarks use) start tritonserver through one launcher; a supervisor that SIGKILLs
and restarts them must not find the old server still holding the ports.
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
import urllib.request
from pathlib import Path

import pytest

from sft_engine.server import _port_in_use, free_port

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
    """No process holds ``port`` any more, judged as a restarted ``serve`` judges it (``SO_REUSEADDR``).

    A plain ``bind()`` would wait out the TIME-WAIT of the old server's connections (a
    minute), which a restart does not have to wait for (test_faults_restart.py).
    """
    return not _port_in_use("127.0.0.1", port)


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


# A load-test coordinator whose workers have the worker's own "is my parent still there?"
# poll (``os.getppid`` in its monitor) frozen, so only the kernel's PR_SET_PDEATHSIG, set by
# ``lifetime.bound_to_parent`` when the pool starts them, can end them while they are
# inside a long step. ``off`` also drops the PDEATHSIG: the control that shows the test
# would catch its loss.
_COORDINATOR = """
import sys
from sft_engine import cli
from sft_engine.loadtest import pool
pool._WORKER_CODE = "import os; _p = os.getppid(); os.getppid = lambda: _p; " + pool._WORKER_CODE
if sys.argv[1] == "off":
    pool.bound_to_parent = list
sys.exit(cli.main(["loadtest", "--url", sys.argv[2], "--model", "lt_identity", "--rate", "20", "--duration", "600",
                   "--workers", "2", "--max-send-lag-ms", "100000", "--quiet"]))
"""


def _children(pid: int, marker: str) -> list[int]:
    """Live processes whose parent is ``pid`` and whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and marker in cmdline and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _successes(http_url: str, model: str) -> int:
    with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/stats", timeout=10) as resp:
        stats = json.loads(resp.read())
    return sum(int(m["inference_stats"]["success"]["count"]) for m in stats["model_stats"])


@pytest.fixture(scope="module")
def identity_server(tmp_path_factory: pytest.TempPathFactory):
    from sft_engine.server import ServerConfig, TritonServer

    repo = tmp_path_factory.mktemp("lifetime-loadtest") / "model_repository"
    shutil.copytree(MODELS / "lt_identity", repo / "lt_identity")
    with TritonServer(ServerConfig(repository=repo, http_port=0, grpc_port=0, metrics_port=0)) as srv:
        yield srv


def _sigkill_coordinator_mid_step(srv, pdeathsig: str) -> list[int]:
    """Start the coordinator, wait until its two workers are sending, SIGKILL it; its workers' pids."""
    before = _successes(srv.http_url, "lt_identity")
    proc = subprocess.Popen([sys.executable, "-c", _COORDINATOR, pdeathsig, srv.grpc_url], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _until(lambda: len(_children(proc.pid, "worker_main")) == 2, "the coordinator starts its two workers")
        workers = _children(proc.pid, "worker_main")
        # 20 req/s from the workers: well past the coordinator's one test request, so the step runs
        _until(lambda: _successes(srv.http_url, "lt_identity") >= before + 20, "the workers' step is under way")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    return workers


def test_sigkill_of_a_loadtest_coordinator_ends_its_workers_through_pdeathsig(identity_server) -> None:
    workers = _sigkill_coordinator_mid_step(identity_server, "on")
    try:
        _until(lambda: not any(_alive(pid) for pid in workers), "the workers die with their SIGKILLed coordinator", 30.0)
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_without_pdeathsig_the_frozen_poll_leaves_the_workers_running(identity_server) -> None:
    """The control: nothing but PDEATHSIG ends these workers, so the test above measures it alone."""
    workers = _sigkill_coordinator_mid_step(identity_server, "off")
    try:
        time.sleep(3.0)  # the test above allows 30 s; with PDEATHSIG the kernel kills them at once
        assert all(_alive(pid) for pid in workers), "workers exited without PDEATHSIG: something else ends them"
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
