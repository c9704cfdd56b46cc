"""TritonServer.argv: the tritonserver command line built from a ServerConfig, without starting anything.

Every setting of the config reaches its flag and only its flag: the three addresses, the
three ports, the control mode and the models it loads, readiness, exit timeout, logging;
the caller's extra arguments come last, so they can add what the config has no field for.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sft_engine.errors import ServerError
from sft_engine.server import LOOPBACK, ServerConfig, TritonInstall, TritonServer

INSTALL = TritonInstall(binary=Path("/opt/triton/bin/tritonserver"), backends=Path("/opt/triton/backends"),
                        libs=Path("/opt/triton/libs"), stubs=Path("/opt/triton/stubs"))
BACKENDS = Path("/cache/backends")


def argv(**settings: object) -> list[str]:
    settings.setdefault("repository", Path("/srv/model_repository"))
    return TritonServer(ServerConfig(**settings)).argv(INSTALL, BACKENDS)  # type: ignore[arg-type]


def flags(line: list[str]) -> dict[str, list[str]]:
    """``--name=value`` arguments → name → every value it was given, in order."""
    out: dict[str, list[str]] = {}
    for arg in line[1:]:
        name, _, value = arg.partition("=")
        out.setdefault(name, []).append(value)
    return out


def test_the_default_command_line() -> None:
    assert argv() == [
        "/opt/triton/bin/tritonserver",
        "--model-repository=/srv/model_repository",
        "--backend-directory=/cache/backends",
        f"--http-address={LOOPBACK}", "--http-port=8000",
        f"--grpc-address={LOOPBACK}", "--grpc-port=8001",
        f"--metrics-address={LOOPBACK}", "--metrics-port=8002",
        "--model-control-mode=none",
        "--strict-readiness=true",
        "--exit-timeout-secs=10",
        "--log-verbose=0",
        "--allow-gpu-metrics=false",
        "--allow-cpu-metrics=true",
        "--disable-auto-complete-config",  # every config the build writes is complete: none is guessed at load
    ]
    assert LOOPBACK == "127.0.0.1"  # served on loopback unless the config says otherwise


def test_each_setting_reaches_its_own_flag_once() -> None:
    got = flags(argv(host="0.0.0.0", http_port=9100, grpc_port=9101, metrics_port=9102, model_control_mode="poll",
                     strict_readiness=False, exit_timeout_s=3, log_verbose=2, admin_key="k"))
    restricted = "model-repository,shared-memory,statistics,trace,logging:sft-engine-admin-key=k"
    assert got == {
        "--model-repository": ["/srv/model_repository"], "--backend-directory": ["/cache/backends"],
        "--http-address": ["0.0.0.0"], "--http-port": ["9100"],
        "--grpc-address": ["0.0.0.0"], "--grpc-port": ["9101"],
        "--metrics-address": ["0.0.0.0"], "--metrics-port": ["9102"],
        "--model-control-mode": ["poll"], "--strict-readiness": ["false"],
        "--exit-timeout-secs": ["3"], "--log-verbose": ["2"],
        "--allow-gpu-metrics": ["false"], "--allow-cpu-metrics": ["true"],
        "--disable-auto-complete-config": [""],
        # dynamic model control on a non-loopback address: the control plane only for the key's holders
        "--http-restricted-api": [restricted], "--grpc-restricted-protocol": [restricted],
    }


def test_the_repository_is_passed_as_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "repo").mkdir()
    assert flags(argv(repository="repo"))["--model-repository"] == [str((tmp_path / "repo").resolve())]


def test_explicit_mode_loads_each_named_model_in_order() -> None:
    got = flags(argv(model_control_mode="explicit", load_models=["resnet", "resnet_preprocess", "resnet_classify"]))
    assert got["--model-control-mode"] == ["explicit"]
    assert got["--load-model"] == ["resnet", "resnet_preprocess", "resnet_classify"]
    assert "--load-model" not in flags(argv(model_control_mode="explicit"))  # nothing named: Triton loads nothing


@pytest.mark.parametrize("mode", ["none", "poll"])
def test_load_model_is_only_for_explicit_mode(mode: str) -> None:
    """Triton refuses --load-model outside explicit mode; in the others every model is loaded anyway."""
    assert "--load-model" not in flags(argv(model_control_mode=mode, load_models=["resnet"]))


def test_extra_arguments_come_last_in_order() -> None:
    extra = ["--model-repository=/srv/second", "--log-verbose=1", "--pinned-memory-pool-byte-size=0"]
    line = argv(model_control_mode="explicit", load_models=["a"], extra_args=extra)
    assert line[-3:] == extra
    assert flags(line)["--model-repository"] == ["/srv/model_repository", "/srv/second"]


def test_the_config_keeps_the_ports_it_was_given() -> None:
    server = TritonServer(ServerConfig(repository=Path("/srv/r"), host="::1", http_port=0, grpc_port=0, metrics_port=0))
    got = flags(server.argv(INSTALL, BACKENDS))
    assert (got["--http-port"], got["--grpc-port"], got["--metrics-port"]) == (["0"], ["0"], ["0"])  # 0 is resolved by start()
    assert got["--http-address"] == got["--grpc-address"] == got["--metrics-address"] == ["::1"]


@pytest.mark.parametrize("field, value", [("http_port", 70000), ("grpc_port", -1), ("metrics_port", "8002")])
def test_a_port_that_is_not_a_tcp_port_is_a_one_line_error(field: str, value: object) -> None:
    with pytest.raises(ServerError, match=f"{field.replace('_', '-')} {value!r} is not a TCP port"):
        ServerConfig(repository=Path("/srv/r"), **{field: value})  # type: ignore[arg-type]


def test_a_port_with_connections_in_time_wait_is_free_but_one_with_a_listener_is_not():
    import socket

    from sft_engine.server import _port_in_use

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    assert _port_in_use("127.0.0.1", port)
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server side closes first: its end of the connection goes to TIME-WAIT
    client.close()
    listener.close()
    assert not _port_in_use("127.0.0.1", port)
