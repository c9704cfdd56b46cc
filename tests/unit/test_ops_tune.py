"""tune without a server: candidate configurations, the search order, ranking, the table, publishing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from sft_engine.errors import ConfigError, RepositoryError
from sft_engine.ops.modelconfig import ServingKnobs, apply_knobs, disk_config, knobs_of, override, require_version, with_versions
from sft_engine.ops.tune.config import TuneResult
from sft_engine.ops.tune.search import Candidate, TuneSpace, coordinate_descent, default_space
from sft_engine.ops.tune.table import candidate_table
from sft_engine.ops.tune.writer import publish_tuned, render_config
from sft_engine.repository.config import DynamicBatchingSpec, ModelConfigSpec, TensorSpec, parse_pbtxt, to_proto
from tests.helpers import tree_digest
from tests.unit.test_ops_deploy import make_repository


def _cfg(max_batch: int = 8, delay: int = 200, warmups: tuple[int, ...] = (1, 8)) -> mc.ModelConfig:
    return to_proto(ModelConfigSpec(
        name="tiny", inputs=(TensorSpec("input", "FP32", (3, 32, 32)),), outputs=(TensorSpec("logits", "FP32", (4,)),),
        max_batch_size=max_batch, backend="python", dynamic_batching=DynamicBatchingSpec(delay, (max_batch,)), warmup_batch_sizes=warmups,
    ))


def test_apply_knobs_keeps_the_config_valid():
    cfg = _cfg()
    out = apply_knobs(cfg, ServingKnobs(max_batch_size=4, queue_delay_us=0, instances=2))
    assert out.max_batch_size == 4
    assert out.dynamic_batching.max_queue_delay_microseconds == 0
    assert list(out.dynamic_batching.preferred_batch_size) == []  # 8 > 4: dropped
    assert [w.batch_size for w in out.model_warmup] == [1, 4]  # 8 dropped, the new maximum warmed up
    assert [(g.kind, g.count) for g in out.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 2)]
    assert cfg.max_batch_size == 8 and len(cfg.model_warmup) == 2  # the input is not modified
    gpu = apply_knobs(cfg, ServingKnobs(8, 100, 2, gpus=(0, 1)))
    assert [(g.kind, g.count, list(g.gpus)) for g in gpu.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 2, [0, 1])]
    assert knobs_of(gpu) == ServingKnobs(8, 100, 2, (0, 1)) and knobs_of(gpu).total_instances == 4
    assert knobs_of(cfg) == ServingKnobs(8, 200, 1)
    with pytest.raises(ConfigError):
        apply_knobs(cfg, ServingKnobs(0, 0, 1))
    with pytest.raises(ConfigError, match="distinct"):
        apply_knobs(cfg, ServingKnobs(8, 0, 1, gpus=(0, 0)))


def test_overrides_name_exactly_the_versions_served():
    body = override(_cfg(), [3, 1, 3])
    # protobuf's JSON mapping writes int64 as strings; Triton's parser reads them so
    assert [int(v) for v in body["version_policy"]["specific"]["versions"]] == [1, 3]
    assert set(body["version_policy"]) == {"specific"}
    assert body["name"] == "tiny" and body["max_batch_size"] == 8
    live = {"name": "tiny", "version_policy": {"latest": {"num_versions": 1}}, "max_batch_size": 8}
    assert with_versions(live, [2])["version_policy"] == {"specific": {"versions": [2]}}
    assert live["version_policy"] == {"latest": {"num_versions": 1}}


def test_default_space_stays_within_the_build_and_the_slo(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    space = default_space(ServingKnobs(8, 200, 1), built_max=8, request_batch=1, slo_limit_ms=1.0, gpus=())
    assert space.max_batch_sizes == (1, 2, 4, 8)
    assert space.queue_delays_us == (0, 100, 200, 500)  # 2000 us exceeds half of the 1 ms SLO
    assert space.instance_counts == (1, 2)
    space = default_space(ServingKnobs(32, 0, 1), built_max=32, request_batch=4, slo_limit_ms=None, gpus=(0,))
    assert space.max_batch_sizes == (8, 16, 32)  # at least the request's batch size
    assert space.instance_counts == (1, 2)
    with pytest.raises(ConfigError, match="built and verified for"):
        TuneSpace((4, 16), (0,), (1,)).validate(built_max=8, request_batch=1)
    with pytest.raises(ConfigError, match="below the load's batch size"):
        TuneSpace((1, 2), (0,), (1,)).validate(built_max=8, request_batch=4)
    with pytest.raises(ConfigError):
        TuneSpace((1,), (-5,), (1,)).validate(built_max=8, request_batch=1)


def _measured(knobs: ServingKnobs, index: int, capacity: float | None, latency: float) -> Candidate:
    return Candidate(index, knobs, capacity_rps=capacity, latency_ms=latency, verdict="PASS" if capacity else "FAIL")


def test_ranking_prefers_slo_then_capacity_then_latency_then_fewer_instances():
    k = ServingKnobs(8, 0, 1)
    failing_fast = _measured(k, 0, None, 1.0)
    slow_but_meets = _measured(k, 1, 10.0, 90.0)
    more = _measured(k, 2, 20.0, 90.0)
    same_lower_latency = _measured(k, 3, 20.0, 50.0)
    same_more_instances = _measured(ServingKnobs(8, 0, 2), 4, 20.0, 50.0)
    ranked = sorted([failing_fast, slow_but_meets, more, same_lower_latency, same_more_instances], key=Candidate.score, reverse=True)
    assert [c.index for c in ranked] == [3, 4, 2, 1, 0]


def test_coordinate_descent_moves_one_knob_at_a_time_from_the_best():
    space = TuneSpace(max_batch_sizes=(4, 8), queue_delays_us=(0, 500), instance_counts=(1, 2))
    # a synthetic server: 2 instances help, batch 8 helps, queue delay hurts
    def capacity(k: ServingKnobs) -> float:
        return 100.0 * k.instances + 10.0 * k.max_batch_size - k.queue_delay_us / 10

    order: list[ServingKnobs] = []

    def evaluate(knobs: ServingKnobs, index: int) -> Candidate:
        order.append(knobs)
        return _measured(knobs, index, capacity(knobs), 10.0)

    candidates, skipped = coordinate_descent(ServingKnobs(4, 500, 1), space, evaluate, lambda: True)
    assert order == [
        ServingKnobs(4, 500, 1),  # the current configuration first
        ServingKnobs(4, 500, 2),  # instances
        ServingKnobs(8, 500, 2),  # then batch size, from the best so far
        ServingKnobs(8, 0, 2),    # then queue delay
    ]
    assert skipped == [] and [c.index for c in candidates] == [0, 1, 2, 3]
    best = max(candidates, key=Candidate.score)
    assert best.knobs == ServingKnobs(8, 0, 2)

    budget = iter([True, False, False])
    candidates, skipped = coordinate_descent(ServingKnobs(4, 500, 1), space, evaluate, lambda: next(budget))
    assert len(candidates) == 2 and len(skipped) == 2  # the current one is always measured


def test_candidate_table_marks_the_best():
    base = _measured(ServingKnobs(8, 200, 1), 0, None, 180.0)
    best = _measured(ServingKnobs(8, 0, 1), 1, 40.0, 12.5)
    best.cpu_utilization, best.at_rate_rps = 0.42, 40.0
    result = TuneResult(model="tiny", version=1, percentile=90.0, slo={"p90_ms": 100.0}, baseline=base, best=best, candidates=[base, best])
    table = candidate_table(result)
    lines = table.splitlines()
    assert lines[0].split()[:6] == ["#", "instances", "max_batch", "delay_us", "capacity_rps", "p90_ms"]
    assert lines[2].lstrip().startswith("*1") and "40.0" in lines[2] and "12.50" in lines[2] and "42%" in lines[2]
    assert lines[1].lstrip().startswith("0") and "FAIL" in lines[1]
    assert result.met and result.improves and result.exit_code == 0
    assert json.dumps(result.to_dict())  # JSON-able


def test_publish_tuned_adds_a_version_and_touches_no_other(tmp_path: Path):
    repo = make_repository(tmp_path / "model_repository")
    (repo / "tiny" / "labels.txt").write_text("cat\ndog\nship\nfrog\n")
    (repo / "tiny" / "1" / "__pycache__").mkdir()
    (repo / "tiny" / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"cached")
    before = tree_digest(repo / "tiny" / "1")
    disk = disk_config(repo, "tiny")
    text = render_config(apply_knobs(disk, ServingKnobs(4, 0, 2)), disk)
    published = publish_tuned(repo, "tiny", 1, text, {"best": {"index": 1}})
    assert published.version == 2
    assert tree_digest(repo / "tiny" / "1") == before
    files = sorted(p.name for p in (repo / "tiny" / "2").iterdir())
    assert files == ["build_manifest.json", "config.pbtxt.built", "engine.json", "model.py"]
    assert (repo / "tiny" / "2" / "config.pbtxt.built").read_text() == text  # the config it goes live with
    cfg = parse_pbtxt((repo / "tiny" / "config.pbtxt").read_text())
    assert cfg.max_batch_size == 4 and cfg.instance_group[0].count == 2
    assert not cfg.version_policy.HasField("specific")  # the policy on disk is kept, not a rollout's
    manifest = json.loads((repo / "tiny" / "2" / "build_manifest.json").read_text())
    assert manifest["tuned"] == {"from_version": 1, "best": {"index": 1}} and manifest["version"] == 2
    assert set(manifest["outputs"]) == {"config.pbtxt.built", "engine.json", "model.py"}
    assert (repo / "tiny" / "labels.txt").read_text() == "cat\ndog\nship\nfrog\n"
    with pytest.raises(RepositoryError, match="has no version 7"):
        publish_tuned(repo, "tiny", 7, text, {})
    with pytest.raises(RepositoryError, match="versions there: 1, 2"):
        require_version(repo, "tiny", 3)
    with pytest.raises(RepositoryError, match="models there: tiny"):
        disk_config(repo, "other")


def test_tune_merges_the_scenario_as_the_loadtest_cli_does(tmp_path: Path) -> None:
    """A scenario shorter than a window, an endpoint on Triton's ports: the same run either way."""
    import argparse

    from sft_engine.commands import loadtest as loadtest_command
    from sft_engine.loadtest.config import parse_endpoint
    from sft_engine.ops.tune.config import TuneConfig
    from sft_engine.ops.tune.bench import CandidateBench

    slo = tmp_path / "slo.toml"
    slo.write_text("[load]\nrate = 50\nduration_s = 0.5\nwarmup_s = 0\n[slo]\np99_ms = 20\n[validity]\nmin_tail_samples = 3\n")
    parser = argparse.ArgumentParser()
    loadtest_command.register(parser.add_subparsers())
    cli = loadtest_command.config_from_args(parser.parse_args(["loadtest", "--slo", str(slo), "--model", "m", "--url", "http://127.0.0.1:8000"]))
    bench = CandidateBench(TuneConfig(repository=tmp_path, model="m", slo_file=slo), None, parse_endpoint("127.0.0.1:8000", "http"))  # type: ignore[arg-type]
    assert bench.base.load == cli.load and bench.load.window_s == 0.5  # the window shrinks to the run
    assert bench.base.endpoints[0].metrics_url == cli.endpoints[0].metrics_url == "http://127.0.0.1:8002/metrics"
    assert bench.base.validity == cli.validity and bench.base.slo == cli.slo
    assert bench.base.find_capacity and bench.base.capacity is not None
    bench.base.validate()  # a run tune would start is a valid load test


class _Captured(Exception):
    def __init__(self, config) -> None:
        super().__init__("captured")
        self.config = config


def _tune_config_from(monkeypatch, tmp_path: Path, *flags: str):
    """The TuneConfig ``sft-engine tune FLAGS`` builds (the tune itself does not run)."""
    import sft_engine.ops.tune.runner as runner
    from sft_engine.cli import main

    def capture(config, progress=None):
        raise _Captured(config)

    monkeypatch.setattr(runner, "tune", capture)
    with pytest.raises(_Captured) as caught:
        main(["tune", "--repository", str(tmp_path), "--model", "m", "--slo", str(tmp_path / "slo.toml"), *flags])
    return caught.value.config


def test_tune_flags_are_parsed_by_the_shared_parsers(monkeypatch, tmp_path: Path):
    """Number lists as the load test reads them (a queue delay may be 0), GPU ids as the build
    reads them, the server and metrics URLs as the Triton address parser reads them."""
    config = _tune_config_from(monkeypatch, tmp_path, "--max-batch-sizes", "1:4:1", "--queue-delays-us", "0,500",
                               "--instance-counts", "2", "--gpus", "1,0", "--url", "localhost",
                               "--metrics-url", "http://[::1]:8002/metrics")
    assert config.max_batch_sizes == (1, 2, 3, 4) and config.queue_delays_us == (0, 500) and config.instance_counts == (2,)
    assert config.gpus == (1, 0) and config.url == "localhost:8000" and config.metrics_url == "http://[::1]:8002/metrics"
    default = _tune_config_from(monkeypatch, tmp_path)
    assert default.max_batch_sizes is None and default.gpus == () and default.url is None and default.metrics_url is None


@pytest.mark.parametrize(("flags", "message"), [
    (["--max-batch-sizes", "0,4"], "--max-batch-sizes must be > 0"),
    (["--instance-counts", "1.5"], "--instance-counts must be a whole number"),
    (["--queue-delays-us", "-100"], "--queue-delays-us must be >= 0"),
    (["--queue-delays-us", "x"], "--queue-delays-us 'x' is not a number"),
    (["--gpus", "0,0"], "must name distinct GPU ids"),
    (["--gpus", "a"], "not a list of GPU ids"),
    (["--url", "10.1.2.3:8000"], "is not a loopback address"),
    (["--url", "127.0.0.1:8000", "--metrics-url", "http://10.1.2.3:8002/metrics"], "--metrics-url .* is not a loopback address"),
    (["--url", "127.0.0.1:8000", "--metrics-url", "127.0.0.1:8002"], "is not an http:// URL"),
])
def test_tune_refuses_bad_flags_with_exit_2(monkeypatch, tmp_path: Path, capsys, flags, message):
    import re

    import sft_engine.ops.tune.runner as runner
    from sft_engine.cli import main

    monkeypatch.setattr(runner, "tune", lambda *a, **k: pytest.fail("tune ran despite a bad flag"))
    code = main(["tune", "--repository", str(tmp_path), "--model", "m", "--slo", str(tmp_path / "slo.toml"), *flags])
    assert code == 2 and re.search(message, capsys.readouterr().err)


def test_a_remote_metrics_url_is_taken_with_allow_remote(monkeypatch, tmp_path: Path):
    config = _tune_config_from(monkeypatch, tmp_path, "--url", "10.1.2.3:8000", "--metrics-url", "http://10.1.2.3:8002/metrics", "--allow-remote")
    assert config.url == "10.1.2.3:8000" and config.metrics_url == "http://10.1.2.3:8002/metrics" and config.allow_remote


def test_an_invalid_candidate_never_wins_and_says_why(monkeypatch, capsys):
    """The lower end of a search an INVALID step cut short is no capacity: it cannot meet the SLO or win."""
    from sft_engine.cli import main
    from sft_engine.ops.tune.search import best_of

    invalid = Candidate(3, ServingKnobs(32, 0, 1), capacity_rps=1500.0, latency_ms=7.52, verdict="INVALID",
                        note="capacity search stopped: generator; step 1: load generator saturated")
    failing = _measured(ServingKnobs(8, 0, 1), 0, None, 180.0)
    assert not invalid.meets_slo and failing.score() > invalid.score()
    assert best_of([invalid, failing]) is failing
    assert best_of([invalid]) is None
    result = TuneResult(model="tiny", version=1, percentile=99.0, slo={"p99_ms": 50.0}, baseline=invalid, best=None, candidates=[invalid])
    assert not result.met and result.exit_code == 1
    table = candidate_table(result)
    assert "*" not in table and "INVALID (capacity search stopped: generator" in table  # the verdict prints its reason

    monkeypatch.setattr("sft_engine.ops.tune.runner.tune", lambda config, progress: result)
    code = main(["tune", "--repository", "r", "--model", "tiny", "--slo", "slo.toml", "--dry-run"])
    captured = capsys.readouterr()
    assert code == 1
    assert "within the SLO" not in captured.out + captured.err and "config.pbtxt" not in captured.out
    assert "no candidate has a valid measurement (#3 INVALID (capacity search stopped: generator" in captured.err
