"""The load tester against a real tritonserver: coordinated omission, timeouts, SLO gate, capacity.

One server (module scope) serves four Python-backend models copied from
tests/integration/models into a temporary repository:

* ``lt_identity`` - the cheapest model there is;
* ``lt_stall``    - stalls once for S ms when the test drops a flag file into its directory;
* ``lt_slow``     - 200 ms per execution, for client timeouts;
* ``lt_capacity`` - the same, batching up to 8: its capacity is about 8 / 0.2 s = 40 requests/s.

Runs are short (1-2 s); the assertions rest on margins that CPU contention cannot
erase (a 800 ms stall against millisecond service times). Tests that expect a verdict
other than INVALID raise the send-lag tolerance (LENIENT): on two busy cores the
generator can be starved for more than the default 10 ms, which the tool rightly calls
INVALID - but those tests are about something else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from sft_engine import cli
from sft_engine.loadtest import (
    CapacitySpec, LoadSpec, LoadTestConfig, SloSpec, ValiditySpec, parse_endpoint, run_loadtest,
)
from sft_engine.loadtest.progress import Progress
from sft_engine.server import ServerConfig, TritonServer, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODELS = Path(__file__).parent / "models"
STALL_MS = 800.0


def _repository(root: Path) -> Path:
    for name in ("lt_identity", "lt_stall", "lt_slow"):
        shutil.copytree(MODELS / name, root / name)
    capacity = root / "lt_capacity"
    shutil.copytree(MODELS / "lt_slow", capacity)
    config = (capacity / "config.pbtxt").read_text()
    (capacity / "config.pbtxt").write_text(config.replace('name: "lt_slow"', 'name: "lt_capacity"'))
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repo = _repository(tmp_path_factory.mktemp("loadtest-repo"))
    with TritonServer(ServerConfig(repository=repo, http_port=0, grpc_port=0, metrics_port=0)) as srv:
        yield srv


LENIENT = ValiditySpec(max_send_lag_p99_ms=1000.0)


def _config(srv: TritonServer, model: str, load: LoadSpec, protocol: str = "grpc", **kwargs: object) -> LoadTestConfig:
    url = srv.grpc_url if protocol == "grpc" else srv.http_url
    endpoint = parse_endpoint(url, protocol)  # type: ignore[arg-type]
    endpoint = type(endpoint)(endpoint.host, endpoint.port, endpoint.protocol, srv.metrics_url)
    kwargs.setdefault("validity", LENIENT)
    return LoadTestConfig(endpoints=(endpoint,), model=model, load=load, workers=1, **kwargs)  # type: ignore[arg-type]


class _StallTrigger:
    """Progress callback that drops the stall flag 0.3 s into the measured interval."""

    def __init__(self, srv: TritonServer) -> None:
        self.flag = Path(srv.config.repository) / "lt_stall" / "STALL_MS"
        self.fired = False

    def __call__(self, p: Progress) -> None:
        if not self.fired and p.phase == "measure" and p.phase_elapsed_s >= 0.3:
            tmp = self.flag.with_name(".STALL_MS.tmp")
            tmp.write_text(f"{STALL_MS:g}")
            os.replace(tmp, self.flag)  # atomic: the model never sees an empty flag
            self.fired = True


def test_open_loop_tail_shows_every_request_scheduled_during_a_stall(server: TritonServer) -> None:
    rate = 100.0
    load = LoadSpec(mode="open", rates=(rate,), arrival="constant", duration_s=2.0, warmup_s=0.5, timeout_ms=5000)
    trigger = _StallTrigger(server)
    result = run_loadtest(_config(server, "lt_stall", load), progress=trigger)
    step = result.steps[0]
    assert trigger.fired and not trigger.flag.exists()  # the model consumed the flag: it stalled
    assert step.verdict == "MEASURED", step.validity
    assert step.latency_basis == "intended"
    assert step.requests.scheduled == pytest.approx(rate * 2.0, abs=2)
    assert step.requests.failed == 0
    # Every request scheduled in the first half of the stall waited at least S/2 from its
    # intended send time: about rate x S/2 = 40 of them. The tail reflects all of them.
    tail = step.histogram("latency").count_above_us(STALL_MS / 2 * 1000)
    assert tail >= 0.8 * rate * (STALL_MS / 2) / 1000.0
    assert step.latency_ms.get(99.0) >= 0.8 * STALL_MS
    assert step.latency_ms.max_ms >= 0.8 * STALL_MS
    # the generator kept its schedule through the stall: no send waited for a free slot (the
    # in-flight cap was never reached), so the lateness is the server's, however busy this host
    assert step.generator.in_flight_cap_waits == 0, step.generator


def test_latency_counts_from_the_intended_send_when_the_generator_cannot_send_on_time(server: TritonServer) -> None:
    """``--max-in-flight 1`` across a stall: requests leave late, and their wait is in their latency."""
    rate = 100.0
    load = LoadSpec(mode="open", rates=(rate,), arrival="constant", duration_s=2.0, warmup_s=0.5, timeout_ms=5000, max_in_flight=1)
    trigger = _StallTrigger(server)
    result = run_loadtest(_config(server, "lt_stall", load), progress=trigger)
    step = result.steps[0]
    assert trigger.fired and not trigger.flag.exists() and step.latency_basis == "intended"
    # the generator could not keep its schedule: the one slot was taken by the stalled request,
    # so the sends scheduled during the stall waited for it (about rate x S of them)
    assert step.generator.max_in_flight == 1
    assert step.generator.in_flight_cap_waits >= 0.5 * rate * STALL_MS / 1000.0, step.generator
    # every request that should have left during the first half of the stall waited at least
    # S/2 counted from when it should have been sent; timed from its actual send, only the
    # stalled request itself would be that slow
    tail = step.histogram("latency").count_above_us(STALL_MS / 2 * 1000)
    assert tail >= 0.8 * rate * (STALL_MS / 2) / 1000.0, tail
    assert step.latency_ms.get(99.0) >= 0.5 * STALL_MS


def test_closed_loop_hides_the_same_stall(server: TritonServer) -> None:
    load = LoadSpec(mode="closed", concurrency=(1,), duration_s=2.0, warmup_s=0.5, timeout_ms=5000)
    trigger = _StallTrigger(server)
    result = run_loadtest(_config(server, "lt_stall", load), progress=trigger)
    step = result.steps[0]
    assert trigger.fired and not trigger.flag.exists() and step.latency_basis == "sent"
    # the stall happened and exactly one request saw it ...
    assert step.latency_ms.max_ms >= 0.8 * STALL_MS
    assert step.histogram("latency").count_above_us(STALL_MS / 2 * 1000) <= 2
    # ... while the percentiles cannot notice: the one caller simply stopped sending, so at most
    # 2 of n requests are above S/2, and with n >= 20 the p90 is below S/2 however slow the host
    assert step.requests.succeeded >= 20, step.requests
    assert step.latency_ms.get(90.0) < STALL_MS / 2
    assert step.latency_ms.get(50.0) <= step.latency_ms.get(90.0)


def test_timeouts_are_failures_at_the_timeout_value(server: TritonServer) -> None:
    load = LoadSpec(mode="closed", concurrency=(2,), duration_s=1.0, warmup_s=0.2, timeout_ms=50)
    result = run_loadtest(_config(server, "lt_slow", load, slo=SloSpec(max_error_rate=0.01)))
    step = result.steps[0]
    assert step.requests.scheduled > 0
    assert step.requests.errors == {"timeout": step.requests.scheduled}
    assert step.error_rate == 1.0
    # never dropped: every timeout is in the latency histogram, at (at least) the timeout
    assert step.latency_ms.count == step.requests.scheduled
    assert step.latency_ms.min_ms >= 50.0 * 0.999
    assert "DEADLINE_EXCEEDED" in step.error_examples["timeout"]
    assert (result.verdict, result.exit_code) == ("FAIL", 1)


@pytest.mark.parametrize("protocol, model, timeout_ms", [("grpc", "lt_identity", None), ("http", "lt_slow", 50.0)])
def test_tritonclient_transport(server: TritonServer, protocol: str, model: str, timeout_ms: float | None) -> None:
    """The reference path (tritonclient's own aio clients) measures and classifies like the default one."""
    load = LoadSpec(mode="closed", concurrency=(2,), duration_s=1.0, warmup_s=0.2, timeout_ms=timeout_ms)
    step = run_loadtest(_config(server, model, load, protocol=protocol, transport="tritonclient")).steps[0]
    assert step.requests.scheduled > 0
    if timeout_ms is None:
        assert step.requests.failed == 0 and step.reconciliation is not None and step.reconciliation.ok
    else:
        assert step.requests.errors == {"timeout": step.requests.scheduled}
        assert step.latency_ms.min_ms >= timeout_ms * 0.999


def test_cli_pass_as_a_subprocess_writes_every_report(server: TritonServer, tmp_path: Path) -> None:
    slo = tmp_path / "pass.toml"
    slo.write_text("[load]\nconcurrency = 2\nduration_s = 1.5\nwarmup_s = 0.3\ntimeout_ms = 5000\n"
                   "[slo]\np90_ms = 5000\nmax_error_rate = 0.0\n[validity]\nmax_send_lag_p99_ms = 1000\n")
    report = tmp_path / "report"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(cli.__file__).resolve().parents[1])] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run(
        [sys.executable, "-m", "sft_engine.cli", "loadtest", "--slo", str(slo), "--url", server.grpc_url,
         "--model", "lt_identity", "--metrics-url", server.metrics_url, "--report", str(report), "--quiet"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verdict: PASS (exit 0)" in proc.stdout
    data = json.loads((report / "loadtest.json").read_text())
    assert data["schema_version"] == 1 and data["verdict"] == "PASS"
    step = data["steps"][0]
    assert step["slo"]["verdict"] == "PASS" and step["validity"]["valid"] is True
    assert step["reconciliation"]["ok"] is True
    assert step["server"]["requests_success"] > 0 and step["server"]["metrics"]["request_success"] > 0
    for name in ("loadtest-steps.csv", "loadtest-windows.csv", "loadtest.md", "loadtest.png"):
        assert (report / name).stat().st_size > 0


def test_cli_fail_exit_code(server: TritonServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["loadtest", "--url", server.grpc_url, "--model", "lt_identity", "--concurrency", "1",
                     "--duration", "1", "--warmup", "0.2", "--target", "p50_ms=0.001", "--min-tail-samples", "2",
                     "--max-send-lag-ms", "1000", "--quiet"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "FAIL p50_ms" in out and "verdict: FAIL (exit 1)" in out


def test_invalid_run_exit_code_for_too_few_samples(server: TritonServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["loadtest", "--url", server.grpc_url, "--model", "lt_identity", "--rate", "20",
                     "--duration", "1", "--warmup", "0", "--target", "p99_ms=1000", "--quiet"])
    out = capsys.readouterr().out
    assert code == 2 and "too few samples for p99" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "no_such_model"], "model 'no_such_model' is unknown"),
        (["--model", "lt_identity", "--shape", "INPUT0:3,3"], "does not match the model's dims [16]"),
        (["--model", "lt_identity", "--batch-size", "65"], "exceeds model 'lt_identity' max_batch_size 64"),
        (["--model", "lt_identity", "--rate", "0"], "rate must be > 0"),
        (["--model", "lt_identity", "--slo", "/nonexistent/slo.toml"], "does not exist"),
        (["--model", "lt_identity", "--model-version", "7"], "unknown"),
    ],
)
def test_bad_specs_fail_at_once(server: TritonServer, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["loadtest", "--url", server.grpc_url, "--duration", "1", "--quiet", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err


def test_wrong_input_data_shape_is_refused(server: TritonServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "inputs.npz"
    np.savez(data, INPUT0=np.zeros((4, 4), dtype=np.float32))
    code = cli.main(["loadtest", "--url", server.http_url, "--protocol", "http", "--model", "lt_identity",
                     "--input-data", str(data), "--quiet"])
    assert code == 2 and "does not match the model's dims [16]" in capsys.readouterr().err


def test_http_sweep_with_live_prometheus_exposition(server: TritonServer, tmp_path: Path) -> None:
    port = free_port()
    scraped: list[str] = []

    def scrape(p: Progress) -> None:
        if not scraped and p.phase == "measure" and p.phase_elapsed_s >= 0.3:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                scraped.append(resp.read().decode())

    load = LoadSpec(mode="closed", concurrency=(1, 2), duration_s=1.0, warmup_s=0.2, batch_size=4)
    config = _config(server, "lt_identity", load, protocol="http", prometheus_port=port, report=tmp_path / "sweep.json")
    result = run_loadtest(config, progress=scrape)
    assert [s.concurrency for s in result.steps] == [1, 2]
    assert all(s.verdict == "MEASURED" and s.requests.failed == 0 for s in result.steps)
    step = result.steps[1]
    assert step.inferences_per_s == pytest.approx(4 * step.throughput_rps)
    # batch 4 per request; Triton updates its success and inference counters at different
    # moments, so a request in flight at a snapshot edge may be counted in one and not yet
    # in the other (at most one per caller)
    assert step.server is not None
    assert abs(step.server.inference_count - 4 * step.server.requests_success) <= 4 * step.concurrency
    assert step.reconciliation is not None and step.reconciliation.ok
    # reported throughput agrees with what the server counted in (nearly) the same interval: the
    # snapshots are taken as close to the 1 s window edges as a busy coordinator manages, so
    # allow for a skew of tens of ms here (the benchmark checks 5% over 5 s windows)
    assert step.throughput_rps == pytest.approx(step.server.throughput_rps, rel=0.15)
    assert scraped and re.search(r'sft_loadtest_requests_total\{outcome="succeeded"\} [1-9]', scraped[0])
    assert (tmp_path / "sweep-steps.csv").read_text().count("\n") == 3
    assert json.loads((tmp_path / "sweep.json").read_text())["request"]["batch_size"] == 4


def test_demo_run_sizes_its_own_load(server: TritonServer, tmp_path: Path) -> None:
    from sft_engine.loadtest import demo_run

    summary = demo_run(server.grpc_url, "lt_identity", duration_s=1.0, report_dir=tmp_path / "demo")
    # the gate is p99 when the steps can collect its samples in time, else the highest percentile they can
    assert "open loop, Poisson arrivals" in summary and re.search(r"SLO p(99|95|90) <= 100 ms", summary)
    data = json.loads((tmp_path / "demo" / "loadtest.json").read_text())
    rates = [step["rate_rps"] for step in data["steps"]]
    assert len(rates) >= 2 and rates == sorted(rates), "a sweep of rising rates, so the plot shows a curve"
    for step in data["steps"]:
        assert step["mode"] == "open" and step["arrival"] == "poisson" and step["requests"]["succeeded"] > 0


def test_find_capacity_of_a_model_with_known_capacity(server: TritonServer) -> None:
    # lt_capacity: 200 ms per execution, batches of up to 8 -> at most 40 requests/s
    load = LoadSpec(mode="open", rates=(1.0,), duration_s=1.5, warmup_s=0.3, timeout_ms=3000)
    config = _config(
        server, "lt_capacity", load, find_capacity=True,
        slo=SloSpec(latency_ms={90.0: 800.0}, max_error_rate=0.01, require_stable=False),
        validity=ValiditySpec(min_tail_samples=2, max_send_lag_p99_ms=1000.0),
        capacity=CapacitySpec(min_rate=15.0, max_rate=75.0, max_steps=4),
    )
    result = run_loadtest(config)
    capacity = result.capacity
    assert capacity is not None and (result.verdict, result.exit_code) == ("PASS", 0), result.reasons
    first = result.steps[0]
    assert first.rate_rps == 75.0 and first.verdict == "FAIL"  # far beyond capacity: not sustained
    assert first.throughput_rps < 0.95 * first.offered_rps
    assert capacity.capacity_rps is not None and 15.0 <= capacity.capacity_rps <= 45.0
    assert len(result.steps) <= 4
