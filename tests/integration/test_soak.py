"""A 2-minute soak against a real tritonserver: the server and its Python-backend stub sampled, the verdict PASS.

The identity model (Python backend: one ``triton_python_backend_stub``) at a steady
50 requests/s; nothing in the serving path should grow, so every fitted series must
hold and the run must pass. The 30-minute figures are in docs/performance.md.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from sft_engine.loadtest import LoadTestConfig, parse_endpoint, run_loadtest
from sft_engine.loadtest.spec import SoakSpec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

MODELS = Path(__file__).parent / "models"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("soak") / "model_repository"
    shutil.copytree(MODELS / "lt_identity", root / "lt_identity")
    return root


def test_two_minute_soak_passes_and_samples_the_server_and_its_stub(server) -> None:
    endpoint = replace(parse_endpoint(server.grpc_url), metrics_url=server.metrics_url)
    config = LoadTestConfig.from_scenario(None, endpoints=[endpoint], model="lt_identity", workers=1,
                                          load={"rates": (50.0,), "warmup_s": 2.0}, soak=SoakSpec(duration_s=120.0, sample_s=4.0))
    result = run_loadtest(config)
    soak = result.soak
    assert soak is not None and soak.server_pid == server.pid
    names = {s.name for s in soak.series}
    assert {"tritonserver rss_mb", "tritonserver fds", "tritonserver threads", "p99_ms"} <= names
    assert any(n.startswith("stub lt_identity/1 ") for n in names), names  # the Python-backend stub, by its model.py
    assert all(s.judged for s in soak.series), soak.lines()
    assert soak.passed, soak.lines()
    assert result.verdict == "PASS", (result.reasons, soak.lines())
    step = result.steps[0]
    assert step.requests.failed == 0 and step.requests.succeeded >= 50 * 120
    assert result.to_dict()["soak"]["series"]  # in the JSON report
