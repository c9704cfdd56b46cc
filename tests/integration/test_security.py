"""Triton's secure-deployment practice, on the real embedded tritonserver.

The admin key restricts the model-repository (and shared-memory, statistics, trace,
logging) APIs on both protocols while inference stays open; rollout switches versions
with the key under load without one failed request; gRPC over TLS and mutual TLS work
from the client and the load test and refuse what they should; every kind of model
the build writes serves with auto-completion of configs turned off.
"""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from sft_engine.cli import main
from sft_engine.client import AsyncClient, Client
from sft_engine.errors import ConfigError, ServerError
from sft_engine.ops.model_control import ModelControl
from sft_engine.server import ServerConfig, TritonServer
from sft_engine.triton.control import ControlError, make_control
from sft_engine.triton.failures import FailureKind
from sft_engine.triton.security import GrpcTls, ServerTls, ensure_admin_key_file
from tests.helpers import LABELS, build_two_versions

pytestmark = pytest.mark.integration

MODEL = "secure"


@pytest.fixture(scope="module")
def repo(tiny_weights, tmp_path_factory):
    return build_two_versions(tmp_path_factory.mktemp("security"), tiny_weights, MODEL, seed=5)


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("key") / "admin-key"
    ensure_admin_key_file(path)
    return path


@pytest.fixture(scope="module")
def explicit(repo, key_file):
    key = key_file.read_text().strip()
    cfg = ServerConfig(repository=repo, http_port=0, grpc_port=0, metrics_port=0, model_control_mode="explicit", admin_key=key,
                       load_models=[MODEL, f"{MODEL}_preprocess", f"{MODEL}_image"])
    with TritonServer(cfg) as srv:
        yield srv


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all signed by the CA."""
    d = tmp_path_factory.mktemp("certs")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}", "-keyout", f"{who}.key", "-out", f"{who}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
                 "-extfile", f"{who}.ext", "-out", f"{who}.crt", cwd=d)
    return d


def _batch() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)


# -- the admin key ------------------------------------------------------------------------------
def test_the_key_file_is_private_and_never_in_the_log(explicit, key_file):
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() not in explicit.logs()
    assert "--disable-auto-complete-config" in explicit.argv(*_install())


def _install():
    from sft_engine.server import find_tritonserver, prepare_backend_dir

    install = find_tritonserver()
    return install, prepare_backend_dir(install)


def test_an_unload_without_the_key_is_refused_and_the_model_keeps_serving(explicit, key_file):
    with ModelControl(explicit.http_url) as control:
        with pytest.raises(ServerError, match="needs the admin key") as info:
            control.unload(MODEL)
        assert "--admin-key-file" in (info.value.hint or "")
    with make_control(explicit.grpc_url, "grpc") as grpc_control:
        for call in (lambda: grpc_control.unload_model(MODEL), grpc_control.repository_index, lambda: grpc_control.statistics(MODEL)):
            with pytest.raises(ControlError) as refused:
                call()
            assert refused.value.kind is FailureKind.REFUSED and "restricted" in refused.value.server_message
        assert grpc_control.model_ready(MODEL) and grpc_control.model_config(MODEL)["name"] == MODEL  # config stays open
    with make_control(explicit.http_url, "http", admin_key="wrong-key-0123456789") as wrong:
        with pytest.raises(ControlError, match="restricted"):
            wrong.load_model(MODEL)
    # inference needs no key, on either protocol, and the model is still there
    for url, protocol in ((explicit.grpc_url, "grpc"), (explicit.http_url, "http")):
        with Client(url, protocol=protocol, model=MODEL) as client:
            assert client.labels == LABELS
            assert client.infer(_batch()).shape == (2, 4)


def test_every_kind_of_built_model_serves_with_static_configs(explicit, tmp_path):
    """The engine, <name>_preprocess and the <name>_image ensemble: their written configs are complete."""
    from PIL import Image

    with make_control(explicit.http_url, "http") as control:
        for name in (MODEL, f"{MODEL}_preprocess", f"{MODEL}_image"):
            assert control.model_ready(name), name
    path = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
    with Client(explicit.grpc_url, model=MODEL) as client:
        local = [p.label for p in client.classify([path], top_k=2)[0]]
        served = [p.label for p in client.classify([path], top_k=2, server_side=True)[0]]
    assert served == local


def test_rollout_with_the_key_file_switches_versions_under_load_with_zero_failures(explicit, repo, key_file, capsys):
    import tritonclient.http as http

    code = main(["rollout", "--repository", str(repo), "--model", MODEL, "--version", "2", "--url", explicit.http_url, "--check", "sanity"])
    assert code == 2 and "admin key" in capsys.readouterr().err  # without the key: a one-line error, nothing changed

    stop = threading.Event()
    outcomes: list[str] = []

    def traffic() -> None:
        client = http.InferenceServerClient(explicit.http_url, network_timeout=60.0)
        batch = _batch()[:1]
        while not stop.is_set():
            inp = http.InferInput("input", list(batch.shape), "FP32")
            inp.set_data_from_numpy(batch, binary_data=True)
            try:
                client.infer(MODEL, [inp])
                outcomes.append("ok")
            except Exception as exc:  # noqa: BLE001 - every failure counts
                outcomes.append(f"failed: {exc}")
        client.close()

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        code = main(["rollout", "--repository", str(repo), "--model", MODEL, "--version", "2", "--url", explicit.http_url,
                     "--check", "sanity", "--admin-key-file", str(key_file)])
    finally:
        stop.set()
        thread.join()
    assert code == 0, capsys.readouterr().err
    assert "serving version 2" in capsys.readouterr().out
    failed = [o for o in outcomes if o != "ok"]
    assert outcomes and failed == []
    with ModelControl(explicit.http_url, admin_key=key_file.read_text().strip()) as control:
        assert control.ready_versions(MODEL) == [2]


def test_an_unload_with_the_key_works(explicit, key_file):
    key = key_file.read_text().strip()
    with make_control(explicit.grpc_url, "grpc", admin_key=key) as control:
        control.unload_model(f"{MODEL}_image")
        assert not control.model_ready(f"{MODEL}_image")
        control.load_model(f"{MODEL}_image")
        assert control.model_ready(f"{MODEL}_image")


def test_loadtest_reads_restricted_statistics_with_the_key(explicit, key_file, monkeypatch, capsys):
    monkeypatch.setenv("SFT_ENGINE_ADMIN_KEY", key_file.read_text().strip())
    code = main(["loadtest", "--url", f"grpc://{explicit.grpc_url}", "--model", MODEL, "--concurrency", "1", "--duration", "0.5",
                 "--warmup", "0.2", "--workers", "1", "--json", "--quiet", "--metrics-url", explicit.metrics_url,
                 "--max-send-lag-ms", "1000"])
    import json

    report = json.loads(capsys.readouterr().out)
    assert code == 0, report["reasons"]
    step = report["steps"][0]
    assert step["requests"]["failed"] == 0 and step["server"] is not None and step["server"].get("error") in (None, "")
    assert report["config"]["admin_key"] == "set"


def test_a_remote_dynamic_server_without_a_key_is_refused(repo, capsys):
    with pytest.raises(ServerError, match="load code"):
        ServerConfig(repository=repo, host="0.0.0.0", model_control_mode="explicit")
    code = main(["serve", "--repository", str(repo), "--allow-remote", "--model-control-mode", "explicit"])
    assert code == 2 and "--admin-key-file" in capsys.readouterr().err


# -- gRPC over TLS --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls_server(repo, certs):
    cfg = ServerConfig(repository=repo, http_port=0, grpc_port=0, metrics_port=0, tls=ServerTls(certs / "server.crt", certs / "server.key"))
    with TritonServer(cfg) as srv:
        yield srv


@pytest.fixture(scope="module")
def mutual_server(repo, certs):
    cfg = ServerConfig(repository=repo, http_port=0, grpc_port=0, metrics_port=0,
                       tls=ServerTls(certs / "server.crt", certs / "server.key", certs / "ca.crt"))
    with TritonServer(cfg) as srv:
        yield srv


def _labels_or_error(url: str, **tls: object) -> list[str] | Exception:
    """The labels a Client reads over gRPC with these TLS arguments (tritonclient's names), or what refused it."""
    try:
        with Client(url, model=MODEL, timeout=3.0, retries=0, **tls) as client:  # type: ignore[arg-type]
            return client.labels
    except Exception as exc:  # noqa: BLE001 - the refusal is what is tested
        return exc


async def _async_labels(url: str, **tls: object) -> list[str]:
    async with AsyncClient(url, model=MODEL, timeout=3.0, retries=0, **tls) as client:  # type: ignore[arg-type]
        return await client.get_labels()


def test_grpc_tls_refuses_plaintext_and_answers_a_client_with_the_ca(tls_server, certs):
    assert isinstance(_labels_or_error(tls_server.grpc_url), Exception)  # plaintext to a TLS port: refused
    assert isinstance(_labels_or_error(tls_server.grpc_url, root_certificates=certs / "server.key"), Exception)  # not a CA
    assert _labels_or_error(tls_server.grpc_url, ssl=True, root_certificates=certs / "ca.crt") == LABELS
    assert _labels_or_error(tls_server.grpc_url, ssl=GrpcTls(root_certificates=certs / "ca.crt")) == LABELS
    assert asyncio.run(_async_labels(tls_server.grpc_url, ssl=True, root_certificates=certs / "ca.crt")) == LABELS
    with make_control(tls_server.grpc_url, "grpc", tls=GrpcTls(root_certificates=certs / "ca.crt")) as control:
        assert control.server_ready()


def test_classify_over_tls_from_the_command_line(tls_server, certs, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "cat.png"
    Image.new("RGB", (40, 30), (200, 120, 40)).save(image)
    assert main(["classify", str(image), "--url", tls_server.grpc_url, "--model", MODEL, "--retries", "0"]) == 2  # plaintext: refused
    capsys.readouterr()
    assert main(["classify", str(image), "--url", tls_server.grpc_url, "--model", MODEL, "--tls-ca", str(certs / "ca.crt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["predictions"][0]["label"] in LABELS


def test_tls_over_http_is_refused_in_one_line(tls_server, certs):
    with pytest.raises(ConfigError, match="TLS is served on gRPC only"):
        Client(tls_server.http_url, protocol="http", model=MODEL, ssl=True)


def test_mutual_tls_refuses_a_client_without_a_certificate(mutual_server, certs):
    assert isinstance(_labels_or_error(mutual_server.grpc_url, ssl=True, root_certificates=certs / "ca.crt"), Exception)
    mutual = {"root_certificates": certs / "ca.crt", "certificate_chain": certs / "client.crt", "private_key": certs / "client.key"}
    assert _labels_or_error(mutual_server.grpc_url, **mutual) == LABELS
    assert asyncio.run(_async_labels(mutual_server.grpc_url, **mutual)) == LABELS


@pytest.mark.parametrize("transport", ["raw", "tritonclient"])
def test_loadtest_over_mutual_tls(mutual_server, certs, capsys, transport):
    import json

    common = ["loadtest", "--url", f"grpc://{mutual_server.grpc_url}", "--model", MODEL, "--concurrency", "1", "--duration", "0.5",
              "--warmup", "0.2", "--workers", "1", "--json", "--quiet", "--max-send-lag-ms", "1000", "--transport", transport,
              "--tls-ca", str(certs / "ca.crt")]
    code = main(common + ["--tls-client-cert", str(certs / "client.crt"), "--tls-client-key", str(certs / "client.key")])
    out = capsys.readouterr().out
    report = json.loads(out)
    assert code == 0, report["reasons"]
    assert report["steps"][0]["requests"]["succeeded"] > 0 and report["steps"][0]["requests"]["failed"] == 0
    assert main(common) != 0  # no client certificate: the probe cannot even read the model
    capsys.readouterr()
