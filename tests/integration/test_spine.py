"""The spine, end to end: build → real tritonserver → HTTP and gRPC answers equal eager PyTorch."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from sft_engine.build import build
from sft_engine.build_config import BuildConfig
from sft_engine.errors import ServerError
from sft_engine.models import build_model, load_weights
from sft_engine.repository.manifest import read_manifest
from sft_engine.server import ServerConfig, TritonServer
from tests.helpers import LABELS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def repo(tiny_weights, tmp_path_factory):
    repo = tmp_path_factory.mktemp("spine") / "model_repository"
    build(BuildConfig(arch="resnet18", num_classes=4, weights=tiny_weights, input_size=32, max_batch_size=8,
                      repository=repo, name="tiny", engine="onnxruntime", labels=list(LABELS), parity_samples=8))
    return repo


@pytest.fixture(scope="module")
def eager(tiny_weights):
    return load_weights(build_model("resnet18", 4), tiny_weights).eval()


def _inputs(n=5, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def test_http_and_grpc_match_eager(server, repo, eager):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    x = _inputs()
    with torch.inference_mode():
        ref = eager(torch.from_numpy(x)).numpy()
    allowed = read_manifest(repo / "tiny" / "1").to_dict()["parity"]["allowed_abs_diff"]
    for mod, url in ((grpcclient, server.grpc_url), (httpclient, server.http_url)):
        client = mod.InferenceServerClient(url)
        inp = mod.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        got = client.infer("tiny", [inp]).as_numpy("logits")
        assert got.shape == (5, 4)
        assert np.abs(got - ref).max() <= allowed
        # classification extension: "score:index:label", labels from labels.txt
        res = client.infer("tiny", [inp], outputs=[mod.InferRequestedOutput("logits", class_count=2)])
        top = [row[0].decode().split(":") for row in res.as_numpy("logits")]
        assert [int(t[1]) for t in top] == list(ref.argmax(1))
        assert [t[2] for t in top] == [LABELS[i] for i in ref.argmax(1)]
        client.close()


def test_config_endpoint_shows_model_and_preprocessing(server):
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/tiny/config") as resp:
        cfg = json.load(resp)
    assert cfg["name"] == "tiny" and cfg["max_batch_size"] == 8
    assert cfg["dynamic_batching"] is not None
    assert cfg["parameters"]["preprocess_input_size"]["string_value"] == "32"
    assert cfg["output"][0]["label_filename"] == "labels.txt"


def test_dynamic_batching_concurrent_requests_correct(server, eager):
    """Requests merged by the dynamic batcher are split back to the right callers."""
    import tritonclient.grpc as grpcclient
    from concurrent.futures import ThreadPoolExecutor

    client = grpcclient.InferenceServerClient(server.grpc_url)
    batches = [_inputs(n=1 + i % 3, seed=10 + i) for i in range(12)]

    def one(x):
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return client.infer("tiny", [inp]).as_numpy("logits")

    with ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(one, batches))
    with torch.inference_mode():
        for x, got in zip(batches, outs):
            np.testing.assert_allclose(got, eager(torch.from_numpy(x)).numpy(), atol=1e-3)


def test_new_version_is_served_after_restart(repo, tiny_weights):
    result = build(BuildConfig(arch="resnet18", num_classes=4, weights=tiny_weights, input_size=32, max_batch_size=8,
                               repository=repo, name="tiny", engine="torchscript", labels=list(LABELS), parity_samples=8))
    assert result.published.version == 2
    with TritonServer(ServerConfig(repository=repo, http_port=0, grpc_port=0, metrics_port=0)) as srv:
        with urllib.request.urlopen(f"http://{srv.http_url}/v2/models/tiny/versions/2/ready") as resp:
            assert resp.status == 200
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(srv.http_url)
        x = _inputs(2)
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        assert client.infer("tiny", [inp], model_version="2").as_numpy("logits").shape == (2, 4)


def test_port_in_use_is_a_clear_error(repo):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        with pytest.raises(ServerError, match=f"port {port} on 127.0.0.1 is already in use"):
            TritonServer(ServerConfig(repository=repo, http_port=port, grpc_port=0, metrics_port=0)).start()


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sft_engine.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kw)


def test_serve_command_from_bare_environment_and_sigterm(repo):
    """`sft-engine serve` works without an activated venv and stops cleanly on SIGTERM."""
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    for key in ("SFT_ENGINE_CACHE", "XDG_CACHE_HOME"):
        if key in os.environ:
            env[key] = os.environ[key]
    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    proc = _cli("serve", "--repository", str(repo), "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
                "--metrics-port", str(ports[2]), env=env)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            lines.append(line)
            if "press Ctrl-C" in line:
                break
        assert any(f"http://127.0.0.1:{ports[0]}/v2/models/tiny/config" in ln for ln in lines), "".join(lines) + proc.stderr.read()  # type: ignore[union-attr]
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/models/tiny/ready") as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:  # the test failed: take the tritonserver it started down too
            for child in _children(proc.pid):
                os.killpg(child, signal.SIGKILL)
            proc.kill()
            proc.wait()
    with pytest.raises(OSError):  # the server went away with it
        urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/health/live", timeout=2)


def test_tritonserver_missing_is_one_line_exit_2(repo):
    code = ("import sys; sys.modules['pytriton'] = None; from sft_engine.cli import main; "
            f"sys.exit(main(['serve', '--repository', {str(repo)!r}, '--http-port', '0', '--grpc-port', '0', '--metrics-port', '0']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "tritonserver is not installed" in proc.stderr and "sft-engine[server]" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_print_docker(repo):
    proc = subprocess.run([sys.executable, "-m", "sft_engine.cli", "serve", "--repository", str(repo), "--print-docker"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "nvcr.io/nvidia/tritonserver:" in proc.stdout and "--model-repository=/models" in proc.stdout
    assert f"{Path(repo).resolve()}:/models:ro" in proc.stdout
