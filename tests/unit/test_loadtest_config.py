"""Load-test configuration: endpoints, number lists, percentile keys, scenario files."""

from __future__ import annotations

from pathlib import Path

import pytest

from sft_engine.errors import ConfigError
from sft_engine.loadtest.config import LoadTestConfig, parse_endpoint
from sft_engine.loadtest.scenario import load_scenario, parse_target, scenario_from_mapping
from sft_engine.loadtest.spec import CapacitySpec, LoadSpec, SloSpec, ValiditySpec, parse_number_list, parse_percentile_key

REPO_ROOT = Path(__file__).resolve().parents[2]


# -- endpoints ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, host, port, protocol",
    [
        ("127.0.0.1:8001", "127.0.0.1", 8001, "grpc"),
        ("localhost:9000", "localhost", 9000, "grpc"),
        ("http://127.0.0.1:8000", "127.0.0.1", 8000, "http"),
        ("grpc://127.0.0.2:7001/", "127.0.0.2", 7001, "grpc"),
        ("[::1]:8001", "::1", 8001, "grpc"),
        ("127.0.0.1", "127.0.0.1", 8001, "grpc"),
    ],
)
def test_parse_endpoint_accepts_loopback_forms(text: str, host: str, port: int, protocol: str) -> None:
    ep = parse_endpoint(text)
    assert (ep.host, ep.port, ep.protocol) == (host, port, protocol)
    assert ep.is_loopback


def test_parse_endpoint_default_port_follows_protocol() -> None:
    assert parse_endpoint("127.0.0.1", "http").port == 8000
    assert parse_endpoint("[::1]:9", "http").url == "[::1]:9"


@pytest.mark.parametrize("text", ["10.0.0.5:8001", "example.com:8001", "http://192.168.1.2:8000", "0.0.0.0:8001"])
def test_parse_endpoint_refuses_remote_hosts_by_default(text: str) -> None:
    with pytest.raises(ConfigError, match="not a loopback address") as info:
        parse_endpoint(text)
    assert "--allow-remote" in (info.value.hint or "")
    assert parse_endpoint(text, allow_remote=True).is_loopback is False


@pytest.mark.parametrize(
    "text, protocol, match",
    [
        ("https://127.0.0.1:8000", None, "TLS"),
        ("ftp://127.0.0.1:8000", None, "unknown scheme"),
        ("http://127.0.0.1:8000", "grpc", "says http"),
        ("127.0.0.1:8000/v2/models", None, "has a path"),
        ("127.0.0.1:99999", None, "not a TCP port"),
        ("", None, "empty"),
    ],
)
def test_parse_endpoint_rejects_malformed(text: str, protocol: str | None, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_endpoint(text, protocol)  # type: ignore[arg-type]


# -- small parsers ----------------------------------------------------------------------
def test_parse_number_list_forms() -> None:
    assert parse_number_list("100", "rate") == (100.0,)
    assert parse_number_list("1,2,4,8", "c", integer=True) == (1.0, 2.0, 4.0, 8.0)
    assert parse_number_list("100:500:200", "rate") == (100.0, 300.0, 500.0)
    assert parse_number_list([50, "75,100"], "rate") == (50.0, 75.0, 100.0)
    assert parse_number_list(2.5, "rate") == (2.5,)


@pytest.mark.parametrize("text, match", [("0", "> 0"), ("-5", "> 0"), ("1,,2", "empty entry"), ("a", "not a number"),
                                         ("5:1:1", "empty"), ("1:5", "start:stop:step"), ("nan", "> 0"), ("1.5", "whole")])
def test_parse_number_list_rejects(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_number_list(text, "value", integer=text == "1.5")


@pytest.mark.parametrize("key, q", [("p50_ms", 50.0), ("p99_ms", 99.0), ("p999_ms", 99.9), ("p99_9_ms", 99.9),
                                    ("p99.9_ms", 99.9), ("p9999_ms", 99.99), ("p5_ms", 5.0)])
def test_parse_percentile_key(key: str, q: float) -> None:
    assert parse_percentile_key(key) == pytest.approx(q)


def test_parse_percentile_key_ignores_other_keys_and_rejects_100() -> None:
    assert parse_percentile_key("max_error_rate") is None
    with pytest.raises(ConfigError, match="between 0 and 100"):
        parse_percentile_key("p100_ms")


def test_parse_target_builds_and_overrides() -> None:
    slo = parse_target("p99_ms=50")
    slo = parse_target("max_error_rate=0.01", slo)
    slo = parse_target("require_stable=false", slo)
    assert slo.latency_ms == {99.0: 50.0} and slo.max_error_rate == 0.01 and slo.require_stable is False
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_target("p99_ms")
    with pytest.raises(ConfigError, match="unknown"):
        parse_target("latency=5")


# -- specs --------------------------------------------------------------------------------
def test_load_spec_validation() -> None:
    LoadSpec(mode="open", rates=(10.0,)).validate()
    with pytest.raises(ConfigError, match="rate must be > 0"):
        LoadSpec(mode="open", rates=(0.0,)).validate()
    with pytest.raises(ConfigError, match="needs a rate"):
        LoadSpec(mode="open", rates=()).validate()
    with pytest.raises(ConfigError, match="concurrency"):
        LoadSpec(mode="closed", concurrency=(0,)).validate()
    with pytest.raises(ConfigError, match="--window"):
        LoadSpec(duration_s=1.0, window_s=2.0).validate()
    with pytest.raises(ConfigError, match="--batch-size"):
        LoadSpec(batch_size=0).validate()
    with pytest.raises(ConfigError, match="--timeout-ms"):
        LoadSpec(timeout_ms=-1).validate()


def test_validity_min_samples_grow_with_the_percentile() -> None:
    v = ValiditySpec(min_tail_samples=10)
    assert v.min_samples(50.0) == 20
    assert v.min_samples(99.0) == 1000
    assert v.min_samples(99.9) == 10000


def test_slo_gated_percentile_is_the_highest() -> None:
    slo = SloSpec(latency_ms={50.0: 10.0, 99.0: 50.0})
    assert slo.gated_percentile == 99.0
    assert SloSpec(max_error_rate=0.0).gated_percentile is None
    with pytest.raises(ConfigError, match="no targets"):
        SloSpec().validate()


def _config(**kwargs: object) -> LoadTestConfig:
    base: dict[str, object] = {"endpoints": (parse_endpoint("127.0.0.1:8001"),), "model": "m"}
    base.update(kwargs)
    return LoadTestConfig(**base)  # type: ignore[arg-type]


def test_config_validation() -> None:
    _config().validate()
    with pytest.raises(ConfigError, match="needs an SLO"):
        _config(find_capacity=True).validate()
    with pytest.raises(ConfigError, match="mix grpc and http"):
        _config(endpoints=(parse_endpoint("127.0.0.1:1"), parse_endpoint("http://127.0.0.1:2"))).validate()
    with pytest.raises(ConfigError, match="not a loopback"):
        _config(endpoints=(parse_endpoint("10.1.1.1:1", allow_remote=True),)).validate()
    with pytest.raises(ConfigError, match="--workers"):
        _config(workers=0).validate()
    with pytest.raises(ConfigError, match="model"):
        _config(model="a/b").validate()
    with pytest.raises(ConfigError, match="version"):
        _config(model_version="latest").validate()
    with pytest.raises(ConfigError, match="min_rate"):
        _config(find_capacity=True, slo=SloSpec(max_error_rate=0.0), capacity=CapacitySpec(min_rate=10, max_rate=5)).validate()


def test_config_report_percentiles_include_slo_ones() -> None:
    cfg = _config(slo=SloSpec(latency_ms={99.99: 100.0, 75.0: 5.0}))
    assert 99.99 in cfg.report_percentiles and 75.0 in cfg.report_percentiles and 50.0 in cfg.report_percentiles
    assert cfg.to_dict()["slo"]["latency_ms"] == {"p99.99_ms": 100.0, "p75_ms": 5.0}


# -- scenario files -------------------------------------------------------------------------
def test_scenario_infers_mode_and_parses_sections(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        'model = "resnet"\n[load]\nrate = [100, 200]\narrival = "poisson"\nduration_s = 3\n'
        "[slo]\np99_ms = 50\np50_ms = 5\nmax_error_rate = 0.01\n[validity]\nmin_tail_samples = 5\n"
        "[capacity]\nmin_rate = 10\nmax_rate = 100\n"
    )
    s = load_scenario(path)
    assert s.model == "resnet"
    assert s.load == {"rates": (100.0, 200.0), "mode": "open", "arrival": "poisson", "duration_s": 3.0}
    assert s.slo is not None and s.slo.latency_ms == {99.0: 50.0, 50.0: 5.0} and s.slo.max_error_rate == 0.01
    assert s.validity.min_tail_samples == 5
    assert s.capacity is not None and (s.capacity.min_rate, s.capacity.max_rate) == (10.0, 100.0)


@pytest.mark.parametrize(
    "text, match",
    [
        ("[load]\nrate = 0\n", "must be > 0"),
        ("[load]\nrate = -3\n", "must be > 0"),
        ("[load]\nrate = 10\nconcurrency = 2\n", "both rate and concurrency"),
        ("[load]\nmode = 'open'\n", "no rate"),
        ("[load]\nrat = 10\n", "unknown key"),
        ("[slo]\np99 = 10\n", "unknown key 'p99'"),
        ("[slo]\np99_ms = 'fast'\n", "must be int or float"),
        ("[slo]\nmax_error_rate = 2\n", r"\[0, 1\]"),
        ("[slo]\nrequire_stable = 1\n", "must be bool"),
        ("[validity]\nmin_tail_samples = 0\n", "min_tail_samples"),
        ("[capacity]\ntolerance = 2\n", "tolerance"),
        ("[load]\nduration_s = true\n", "boolean"),
        ("slo = 3\n", "must be a table"),
        ("[slo\n", "not valid TOML"),
        ("extra = 1\n", "unknown key"),
    ],
)
def test_scenario_errors_name_the_problem(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_scenario(path)


def test_unreadable_scenario_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_scenario(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_scenario(tmp_path)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_scenario(binary)


def test_scenario_from_mapping_without_slo() -> None:
    s = scenario_from_mapping({"load": {"concurrency": [1, 2]}})
    assert s.slo is None and s.load["concurrency"] == (1, 2) and s.load["mode"] == "closed"


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "loadtest").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_scenarios_are_valid(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.slo is not None and not scenario.slo.is_empty
    merged = LoadSpec(**{k: v for k, v in scenario.load.items()})
    merged.validate()


def test_shipped_scenarios_exist() -> None:
    assert (REPO_ROOT / "loadtest" / "default.toml").is_file()


# -- LoadTestConfig.from_scenario -----------------------------------------------------
def test_from_scenario_lays_overrides_on_the_file() -> None:
    scenario = scenario_from_mapping({"model": "m", "load": {"rate": 100, "duration_s": 5, "window_s": 2}, "slo": {"p99_ms": 30}})
    ep = parse_endpoint("127.0.0.1:9001")
    config = LoadTestConfig.from_scenario(scenario, endpoints=(ep,), load={"duration_s": 1.5, "seed": None}, targets=["p50_ms=5"], workers=None)
    assert config.model == "m" and config.load.rates == (100.0,) and config.load.mode == "open"
    assert config.load.duration_s == 1.5 and config.load.seed == 0 and config.load.window_s == 2.0  # the file's window stays
    assert config.slo.latency_ms == {99.0: 30.0, 50.0: 5.0} and scenario.slo.latency_ms == {99.0: 30.0}
    assert config.endpoints[0].metrics_url is None  # not Triton's default ports: no guess
    with pytest.raises(ConfigError, match="longer than --duration"):
        config.validate()
    closed = LoadTestConfig.from_scenario(scenario, endpoints=(ep,), load={"concurrency": (2,)})
    assert closed.load.mode == "closed" and closed.load.concurrency == (2,) and closed.load.window_s == 2.0


def test_from_scenario_defaults_and_refusals() -> None:
    plain = LoadTestConfig.from_scenario(None, endpoints=(parse_endpoint("[::1]:8001"),), model="m", load={"duration_s": 0.25}, find_capacity=True)
    assert plain.load.window_s == 0.25  # no window given anywhere: one window per run
    assert plain.endpoints[0].metrics_url == "http://[::1]:8002/metrics"
    assert plain.capacity is not None and plain.slo is None and plain.scenario_path is None
    with pytest.raises(ConfigError, match="no model"):
        LoadTestConfig.from_scenario(None, endpoints=(parse_endpoint("127.0.0.1"),))
    with pytest.raises(ConfigError, match="both given"):
        LoadTestConfig.from_scenario(None, endpoints=(), model="m", load={"concurrency": (1,), "rates": (5.0,)})
    with pytest.raises(ConfigError, match="unknown key 'worker'"):
        LoadTestConfig.from_scenario(None, endpoints=(), model="m", worker=3)
    with pytest.raises(ConfigError, match="unknown key 'rate'"):
        LoadTestConfig.from_scenario(None, endpoints=(), model="m", load={"rate": 3})
