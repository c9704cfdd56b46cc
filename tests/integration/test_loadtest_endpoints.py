"""Several endpoints measured as one service, and a server killed in the middle of a run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from sft_engine import cli
from sft_engine.loadtest import LoadSpec, LoadTestConfig, ValiditySpec, parse_endpoint, run_loadtest
from sft_engine.server import ServerConfig, TritonServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODELS = Path(__file__).parent / "models"


def _start(root: Path) -> TritonServer:
    shutil.copytree(MODELS / "lt_identity", root / "lt_identity")
    return TritonServer(ServerConfig(repository=root, http_port=0, grpc_port=0, metrics_port=0)).start()


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TritonServer, TritonServer]]:
    first = _start(tmp_path_factory.mktemp("replica-a"))
    try:
        second = _start(tmp_path_factory.mktemp("replica-b"))
    except BaseException:
        first.close()
        raise
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def test_load_is_spread_over_replicas_and_reconciled(two_servers: tuple[TritonServer, TritonServer]) -> None:
    endpoints = tuple(
        type(ep)(ep.host, ep.port, ep.protocol, srv.metrics_url)
        for srv in two_servers for ep in [parse_endpoint(srv.grpc_url)]
    )
    config = LoadTestConfig(endpoints=endpoints, model="lt_identity",
                            load=LoadSpec(mode="open", rates=(200.0,), duration_s=1.5, warmup_s=0.3), workers=2,
                            validity=ValiditySpec(max_send_lag_p99_ms=1000.0))  # busy CI cores: see test_loadtest_server
    result = run_loadtest(config)
    step = result.steps[0]
    assert step.verdict == "MEASURED" and step.requests.failed == 0, step.validity
    counts = [ep["requests"] for ep in step.endpoints]
    assert min(counts) > 0 and abs(counts[0] - counts[1]) <= 2  # round robin over the replicas
    assert step.reconciliation is not None and step.reconciliation.ok
    assert step.reconciliation.server_received is not None
    assert abs(step.reconciliation.server_received - sum(counts)) <= 2  # summed over both servers
    assert step.server is not None and step.server.metrics is not None
    # /metrics and the statistics API are read one after the other: a request may land in between
    assert abs(step.server.metrics["request_success"] - step.server.requests_success) <= 0.02 * step.server.requests_success


def _cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(cli.__file__).resolve().parents[1])] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def test_ctrl_c_stops_the_run_and_keeps_a_partial_report(two_servers: tuple[TritonServer, TritonServer], tmp_path: Path) -> None:
    srv = two_servers[0]
    report = tmp_path / "interrupted.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sft_engine.cli", "loadtest", "--url", srv.grpc_url, "--model", "lt_identity",
         "--rate", "100", "--duration", "60", "--warmup", "0", "--report", str(report), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_cli_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background job would ignore SIGINT
    )
    try:
        _wait_for_load(proc, srv, 50)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out
    data = json.loads(report.read_text())
    assert data["verdict"] == "INVALID" and data["steps"][0]["aborted"] == "interrupted"
    assert data["steps"][0]["requests"]["succeeded"] > 0


def _wait_for_load(proc: subprocess.Popen[str], srv: TritonServer, requests: int, timeout_s: float = 180.0) -> None:
    """Until the server has answered ``requests`` more requests of the load test in ``proc``.

    On a busy machine the CLI's start (imports, worker processes) can take tens of
    seconds, so the wait is generous; a run that ends before its load arrived fails
    with its own output, which says why.
    """
    baseline = _server_successes(srv)
    deadline = time.monotonic() + timeout_s
    while _server_successes(srv) < baseline + requests:
        if proc.poll() is not None:
            out, _ = proc.communicate()
            pytest.fail(f"the load test ended (exit {proc.returncode}) before its load reached the server:\n{out}")
        assert time.monotonic() < deadline, f"the load never reached the server in {timeout_s:.0f} s"
        time.sleep(0.1)


def _server_successes(srv: TritonServer) -> int:
    with urllib.request.urlopen(f"http://{srv.http_url}/v2/models/lt_identity/stats", timeout=5) as resp:
        return int(json.loads(resp.read())["model_stats"][0]["inference_stats"]["success"]["count"])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_server_killed_mid_run_ends_with_partial_report_and_exit_2(tmp_path: Path, protocol: str) -> None:
    srv = _start(tmp_path / "repo")
    proc = None
    try:
        url = srv.grpc_url if protocol == "grpc" else f"http://{srv.http_url}"
        report = tmp_path / "killed.json"
        proc = subprocess.Popen(
            [sys.executable, "-m", "sft_engine.cli", "loadtest", "--url", url, "--model", "lt_identity",
             "--rate", "200", "--duration", "60", "--warmup", "0", "--report", str(report), "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_cli_env(),
        )
        _wait_for_load(proc, srv, 100)
        os.kill(srv.pid, signal.SIGKILL)  # type: ignore[arg-type]
        out, _ = proc.communicate(timeout=60)  # far less than the 60 s the run asked for
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        srv.close()
    assert proc.returncode == 2, out
    data = json.loads(report.read_text())
    step = data["steps"][0]
    assert data["verdict"] == "INVALID" and data["exit_code"] == 2
    assert "server unreachable" in step["aborted"]
    assert step["requests"]["succeeded"] > 0  # partial: what was measured before the kill
    assert step["duration_s"] < 60
