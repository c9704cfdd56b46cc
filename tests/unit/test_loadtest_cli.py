"""``sft-engine loadtest`` flags: scenario + flags merging, and bad input failing at once (exit 2)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sft_engine import cli
from sft_engine.errors import ConfigError
from sft_engine.commands import loadtest as command
from sft_engine.server import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    command.register(sub)
    return parser.parse_args(["loadtest", *argv])


def test_flags_override_the_scenario_file() -> None:
    args = _args("--slo", str(REPO_ROOT / "loadtest" / "default.toml"), "--model", "m", "--url", "127.0.0.1:9001",
                 "--duration", "3", "--target", "p99_ms=20", "--workers", "2")
    config = command.config_from_args(args)
    assert config.load.mode == "open" and config.load.rates == (100.0,) and config.load.arrival == "poisson"
    assert config.load.duration_s == 3.0 and config.load.warmup_s == 5.0
    assert config.slo.latency_ms[99.0] == 20.0 and config.slo.latency_ms[50.0] == 30.0
    assert config.workers == 2 and config.endpoints[0].port == 9001 and config.endpoints[0].metrics_url is None
    closed = command.config_from_args(_args("--slo", str(REPO_ROOT / "loadtest" / "default.toml"), "--model", "m", "--concurrency", "1,2"))
    assert closed.load.mode == "closed" and closed.load.concurrency == (1, 2)


def test_defaults_and_metrics_url_derivation() -> None:
    config = command.config_from_args(_args("--model", "m", "--duration", "0.5"))
    assert config.endpoints[0].url == "127.0.0.1:8001"
    assert config.endpoints[0].metrics_url == "http://127.0.0.1:8002/metrics"
    assert config.load.mode == "closed" and config.load.concurrency == (1,)
    assert config.load.window_s == 0.5  # a run shorter than a window is one window
    two = command.config_from_args(_args("--model", "m", "--url", "http://127.0.0.1:7000", "--url", "http://127.0.0.1:7100",
                                         "--metrics-url", "http://127.0.0.1:7002/metrics", "--metrics-url", "http://127.0.0.1:7102/metrics",
                                         "--shape", "INPUT0:3,8"))
    assert [ep.protocol for ep in two.endpoints] == ["http", "http"]
    assert [ep.metrics_url for ep in two.endpoints] == ["http://127.0.0.1:7002/metrics", "http://127.0.0.1:7102/metrics"]
    assert two.shapes == {"INPUT0": (3, 8)}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "m", "--rate", "0"], "rate must be > 0"),
        (["--model", "m", "--rate", "-10"], "rate must be > 0"),
        (["--model", "m", "--rate", "10", "--concurrency", "2"], "both given"),
        (["--model", "m", "--url", "10.0.0.1:8001"], "not a loopback address"),
        (["--model", "m", "--metrics-url", "http://8.8.8.8:8002/metrics"], "not a loopback address"),
        (["--model", "m", "--slo", "/nonexistent/slo.toml"], "does not exist"),
        (["--model", "m", "--duration", "0"], "--duration must be > 0"),
        (["--model", "m", "--timeout-ms", "0"], "--timeout-ms must be > 0"),
        (["--model", "m", "--workers", "0"], "--workers"),
        (["--model", "m", "--shape", "INPUT0"], "NAME:D1,D2"),
        (["--model", "m", "--find-capacity"], "needs an SLO"),
        (["--model", "m", "--url", "127.0.0.1:1", "--url", "127.0.0.1:2", "--metrics-url", "http://127.0.0.1:3/metrics"], "1 --metrics-url for 2 --url"),
        (["--model", "m", "--target", "p99=5"], "unknown"),
        ([], "no model"),
    ],
)
def test_bad_input_fails_at_once_with_exit_code_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    # a free port nobody listens on: any attempt to contact a server would fail differently
    code = cli.main(["loadtest", "--url", f"127.0.0.1:{free_port()}", *argv] if "--url" not in argv else ["loadtest", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and "(" in err  # message and hint on one line
    assert len(err.strip().splitlines()) == 1


def test_directory_as_slo_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["loadtest", "--model", "m", "--slo", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_unreachable_server_fails_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert cli.main(["loadtest", "--model", "m", "--url", f"127.0.0.1:{port}", "--duration", "1"]) == 2
    assert f"no Triton server answers at 127.0.0.1:{port}" in capsys.readouterr().err
    assert cli.main(["loadtest", "--model", "m", "--url", f"http://127.0.0.1:{port}", "--duration", "1"]) == 2
    assert "no Triton server answers" in capsys.readouterr().err


def test_max_rate_caps_the_capacity_search() -> None:
    capacity_toml = str(REPO_ROOT / "loadtest" / "capacity.toml")
    config = command.config_from_args(_args("--slo", capacity_toml, "--model", "m", "--find-capacity", "--max-rate", "800"))
    assert config.capacity.max_rate == 800.0 and config.capacity.max_steps == 8  # the file's other settings stay
    with pytest.raises(ConfigError, match="--max-rate needs --find-capacity"):
        command.config_from_args(_args("--slo", capacity_toml, "--model", "m", "--max-rate", "800"))

