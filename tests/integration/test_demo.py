"""``sft-engine demo`` end to end, as a newcomer runs it: fine-tune → build → serve → classify → load test."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sft_engine.loadtest.demo import gate_for
from sft_engine.loadtest.spec import ValiditySpec
from sft_engine.repository.writer import list_versions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("rate", [5.0, 20.0, 60.0, 150.0, 400.0, 2000.0])
def test_the_demo_gates_on_a_percentile_its_steps_can_support(rate):
    validity = ValiditySpec()
    q, step_s = gate_for(rate, 8.0 / 3, 8.0)
    assert step_s <= 8.0 and q in (99.0, 95.0, 90.0)
    if rate * 8.0 >= 1.3 * validity.min_samples(90.0):  # some percentile fits the time
        assert rate * step_s >= validity.min_samples(q), "the lowest-rate step would be INVALID for too few samples"
    higher = [p for p in (99.0, 95.0, 90.0) if p > q]
    for p in higher:  # and no higher percentile would have fitted
        assert 1.3 * validity.min_samples(p) / rate > 8.0


def test_demo_end_to_end(tmp_path):
    work = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "sft_engine.cli", "demo", "--workdir", str(work), "--epochs", "2",
                             "--images", "4", "--loadtest-seconds", "6"],
                            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=900)
    out = result.stdout
    assert result.returncode == 0, (out + result.stderr)[-3000:]
    for step in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert f"== {step}" in out
    assert list_versions(work / "model_repository" / "demo") == [1]
    # step 4: every image right, and gRPC and HTTP give the same top label for each
    answers = [line.strip() for line in out.splitlines() if re.match(r"\s+\d+\.png: ", line)]
    assert len(answers) == 4, out[-3000:]
    assert all(line.endswith("; same over HTTP") for line in answers), answers  # else "HTTP says <label>"
    assert re.search(r"^\s+4/4 correct$", out, re.MULTILINE), out[-3000:]
    # step 5: the SLO verdict line, and it is a PASS
    verdict = [line for line in out.splitlines() if line.strip().startswith("SLO p")]
    assert len(verdict) == 1, out[-3000:]
    assert "too few samples for" not in verdict[0], verdict[0]  # the gated percentile has its samples
    assert (work / "loadtest").is_dir() and any((work / "loadtest").iterdir())
    assert "Traceback" not in result.stderr
    # a healthy first run: no WARNING line, and the summary says which engine and precision won, by how much
    assert not [line for line in (out + result.stderr).splitlines() if "WARNING" in line], (out + result.stderr)[-3000:]
    won = next(line for line in out.splitlines() if line.strip().startswith("won: "))
    from sft_engine.engines.cpu.isa import cpu_int8_isa

    if cpu_int8_isa() is not None:  # the demo keeps enough labelled images for INT8: it competes, and on such a CPU wins
        assert "INT8 needs at least" not in out + result.stderr
        assert " int8" in won, won
    if verdict[0].strip().endswith(": PASS"):
        return
    # Not a PASS. A FAIL, or an INVALID for any reason of the product's, fails the test; an
    # INVALID only because other processes starved the load generator is this host's doing:
    # reported as a skip, never a pass.
    def starved(step: dict) -> bool:
        reasons = step["validity"]["reasons"]
        return (step["verdict"] == "INVALID" and step["generator"]["saturated"] and bool(reasons)
                and all(r.startswith("load generator saturated") for r in reasons))

    steps = json.loads((work / "loadtest" / "loadtest.json").read_text())["steps"]
    assert all(step["verdict"] == "PASS" or starved(step) for step in steps), verdict[0]
    pytest.skip(f"the host starved the demo's load generator (INVALID, not FAIL): {verdict[0].strip()[:300]}")
