"""Load testing of a Triton deployment: does it meet its SLO, and what is its capacity?

Programmatic use (a tuner or a rollout gate calls the same code as the CLI)::

    from sft_engine.loadtest import LoadTestConfig, LoadSpec, SloSpec, parse_endpoint, run_loadtest

    config = LoadTestConfig(
        endpoints=(parse_endpoint("127.0.0.1:8001"),),
        model="resnet18",
        load=LoadSpec(mode="open", rates=(200.0,), arrival="poisson", duration_s=10, warmup_s=2),
        slo=SloSpec(latency_ms={99.0: 50.0}, max_error_rate=0.001),
    )
    result = run_loadtest(config)
    result.verdict, result.exit_code, result.steps[0].latency_ms.get(99.0)

Modules, in the order a request meets them: ``spec`` (typed load, SLO, validity,
capacity specs), ``scenario`` (TOML scenario files), ``config`` (endpoints and
``LoadTestConfig.from_scenario``), ``probe`` (the coordinator's calls outside the hot
path), ``schedule`` (open/closed loop plans), ``payload`` (the prebuilt request),
``pool`` (the coordinator's side of the worker processes), ``worker`` and ``sender``
(the hot path, in worker processes), ``shared_block`` (abort flag and live counters
shared with the workers), ``histogram`` (HDR), ``server_stats`` (Triton statistics and
/metrics), ``analysis``, ``slo``, ``capacity``, ``results`` (the typed, versioned
result), ``report``, ``summary`` and ``progress`` (what is printed), ``runner``, ``demo``.
"""

from __future__ import annotations

from sft_engine.loadtest.config import Endpoint, LoadTestConfig, parse_endpoint
from sft_engine.loadtest.scenario import Scenario, load_scenario
from sft_engine.loadtest.spec import CapacitySpec, LoadSpec, SloSpec, ValiditySpec
from sft_engine.loadtest.results import (
    EXIT_CODES, FAIL, INVALID, MEASURED, PASS, SCHEMA_VERSION, CapacityResult, LoadTestResult, StepResult,
)
from sft_engine.loadtest.demo import demo_run
from sft_engine.loadtest.runner import run_loadtest

__all__ = [
    "run_loadtest",
    "demo_run",
    "LoadTestConfig", "LoadSpec", "SloSpec", "ValiditySpec", "CapacitySpec", "Endpoint", "Scenario",
    "load_scenario", "parse_endpoint",
    "LoadTestResult", "StepResult", "CapacityResult",
    "PASS", "FAIL", "INVALID", "MEASURED", "EXIT_CODES", "SCHEMA_VERSION",
]
