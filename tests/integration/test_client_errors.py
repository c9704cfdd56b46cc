"""Every client error class, triggered for real against a real tritonserver (gRPC and HTTP).

The module's repository holds small Python-backend models made for failing: a toy
classifier (the happy path, with recorded preprocessing), a deliberately slow one,
one that answers with an error, one whose code raises, and one that stays unloaded.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sft_engine.client import (
    AsyncClient,
    BadInput,
    Client,
    ClientError,
    ModelNotFound,
    ModelNotReady,
    RequestTimeout,
    ServerSideError,
    ServerUnavailable,
)
from sft_engine.errors import SftEngineError
from sft_engine.preprocess import Preprocessing
from sft_engine.server import ServerConfig, TritonServer, free_port

pytestmark = pytest.mark.integration

PROTOCOLS = ["grpc", "http"]
SLOW_S = 0.6
SHORT_TIMEOUT_S = 0.15

CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 4
input [ {{ name: "input", data_type: TYPE_FP32, dims: [ 3, 8, 8 ] }} ]
output [ {{ name: "logits", data_type: TYPE_FP32, dims: [ 3 ], label_filename: "labels.txt" }} ]
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
{parameters}
"""

BODIES = {
    # logits = per-channel mean: a deterministic classifier
    "toy": "return [pb.InferenceResponse(output_tensors=[pb.Tensor('logits', self.logits(r))]) for r in requests]",
    "slow": f"time.sleep({SLOW_S})\n        return [pb.InferenceResponse(output_tensors=[pb.Tensor('logits', self.logits(r))]) for r in requests]",
    "broken": "return [pb.InferenceResponse(error=pb.TritonError('deliberate failure: weights not loaded')) for r in requests]",
    "raising": "raise ValueError('deliberate crash in execute')",
    "cold": "return [pb.InferenceResponse(output_tensors=[pb.Tensor('logits', self.logits(r))]) for r in requests]",
}

MODEL_PY = """\
import time

import numpy as np
import triton_python_backend_utils as pb


class TritonPythonModel:
    def logits(self, request):
        x = pb.get_input_tensor_by_name(request, "input").as_numpy()
        return np.ascontiguousarray(x.mean(axis=(2, 3)), dtype=np.float32)

    def execute(self, requests):
        {body}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("client_errors") / "repo"
    params = "\n".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}' for k, v in Preprocessing(input_size=8).to_parameters().items())
    for name, body in BODIES.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(CONFIG.format(name=name, parameters=params))
        (repo / name / "labels.txt").write_text("red\ngreen\nblue\n")
        (repo / name / "1" / "model.py").write_text(MODEL_PY.format(body=body))
    loaded = [n for n in BODIES if n != "cold"]
    with TritonServer(ServerConfig(repository=repo, http_port=0, grpc_port=0, metrics_port=0, model_control_mode="explicit", load_models=loaded)) as srv:
        yield srv


def url_of(server, protocol):
    return server.grpc_url if protocol == "grpc" else server.http_url


def x(n=1):
    return np.random.default_rng(n).standard_normal((n, 3, 8, 8)).astype(np.float32)


def test_happy_path_of_the_toy_model(server):
    """The failures below are failures of one thing at a time: the same model works when asked right."""
    with Client(server.grpc_url, model="toy") as client:
        logits = client.infer(x(3))
        assert np.allclose(logits, x(3).mean(axis=(2, 3)), atol=1e-6)
        assert client.labels == ["red", "green", "blue"]


# -- server unavailable ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_server_unavailable_when_nothing_listens(protocol):
    url = f"127.0.0.1:{free_port()}"
    with Client(url, protocol=protocol, model="toy", retries=1, timeout=5) as client:
        assert client.is_live() is False and client.is_ready() is False
        with pytest.raises(ServerUnavailable) as info:
            client.infer(x())
        assert info.value.attempts == 2, "one retry of a transient failure"
        assert url in info.value.message and info.value.hint
        assert info.value.__cause__ is not None, "the transport's exception is kept as the cause"
        with pytest.raises(ServerUnavailable):
            client.wait_until_ready(timeout=0.3, interval=0.1)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_server_going_away_mid_session(server, protocol):
    """Chunks already configured and in flight fail with ServerUnavailable after the retries."""
    config = ServerConfig(repository=server.config.repository, http_port=0, grpc_port=0, metrics_port=0,
                          model_control_mode="explicit", load_models=["toy"], exit_timeout_s=1)  # idle keep-alive connections stay open
    with TritonServer(config) as second:
        client = Client(url_of(second, protocol), protocol=protocol, model="toy", retries=2, concurrency=2)
        assert len(client.infer(x(9))) == 9
    with client:
        with pytest.raises(ServerUnavailable) as info:
            client.infer(x(9))  # three chunks, sent asynchronously, each retried
        assert info.value.attempts == 3
        assert client.is_live() is False


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_server_unavailable_async(protocol):
    async def main():
        async with AsyncClient(f"127.0.0.1:{free_port()}", protocol=protocol, model="toy", retries=0) as client:
            assert await client.is_live() is False
            await client.classify(x())

    with pytest.raises(ServerUnavailable):
        asyncio.run(main())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_protocol_for_the_port_is_unavailable_with_a_hint(server, protocol):
    other = server.http_url if protocol == "grpc" else server.grpc_url
    with Client(other, protocol=protocol, model="toy", retries=0, timeout=5) as client:
        with pytest.raises(ServerUnavailable) as info:
            client.infer(x())
    assert ("HTTP port" if protocol == "grpc" else "gRPC port") in info.value.hint


# -- model not found / not ready -------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_model(server, protocol):
    with Client(url_of(server, protocol), protocol=protocol, model="nope") as client:
        with pytest.raises(ModelNotFound) as info:
            client.classify(x())
        assert "'nope'" in info.value.message and "toy" in info.value.hint
        assert client.is_ready() is False


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_version(server, protocol):
    with Client(url_of(server, protocol), protocol=protocol, model="toy", version=9) as client:
        with pytest.raises(ModelNotFound) as info:
            client.infer(x())
        assert "version 9" in info.value.message and "1" in info.value.hint


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_model_not_ready(server, protocol):
    with Client(url_of(server, protocol), protocol=protocol, model="cold") as client:
        with pytest.raises(ModelNotReady) as info:
            client.infer(x())
        assert "'cold'" in info.value.message and "not loaded" in info.value.message
        assert client.is_ready() is False
        with pytest.raises(ModelNotReady):
            client.wait_until_ready(timeout=0.3, interval=0.1)


def test_model_not_ready_async(server):
    async def main():
        async with AsyncClient(server.http_url, protocol="http", model="cold") as client:
            await client.infer(x())

    with pytest.raises(ModelNotReady):
        asyncio.run(main())


# -- bad input --------------------------------------------------------------------------------------


def _executions(server):
    import tritonclient.http as httpclient

    stats = httpclient.InferenceServerClient(server.http_url).get_inference_statistics("toy")
    return sum(int(s["inference_stats"]["success"]["count"]) + int(s["inference_stats"]["fail"]["count"]) for s in stats["model_stats"])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_input_is_caught_before_sending(server, protocol, tmp_path):
    bad_file = tmp_path / "broken.png"
    bad_file.write_bytes(b"not an image")
    with Client(url_of(server, protocol), protocol=protocol, model="toy") as client:
        client.labels  # read the config and labels first, so only the calls below could reach the server
        before = _executions(server)
        cases = {
            "shape": (lambda: client.infer(np.zeros((2, 3, 9, 8), np.float32)), [ "N", 3, 8, 8], [2, 3, 9, 8]),
            "no batch dim": (lambda: client.infer(np.zeros((3, 8, 8), np.float32)), ["N", 3, 8, 8], [3, 8, 8]),
            "dtype": (lambda: client.infer(x().astype(np.float64)), "float32", "float64"),
            "batch too large": (lambda: client.infer(x(5), split=False), "<= 4", 5),
            "int pixels": (lambda: client.classify(np.zeros((8, 8, 3), np.int64)), None, None),
            "unreadable file": (lambda: client.classify([bad_file]), None, None),
            "top_k": (lambda: client.classify(x(), top_k=0), None, None),
        }
        for name, (call, expected, given) in cases.items():
            with pytest.raises(BadInput) as info:
                call()
            if expected is not None:
                assert (info.value.expected, info.value.given) == (expected, given), name
            assert info.value.hint, name
        assert _executions(server) == before, "no bad request may reach the server"
        assert len(client.infer(x(5))) == 5, "with split (the default) a large batch is fine"


# -- timeout ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_request_timeout(server, protocol):
    with Client(url_of(server, protocol), protocol=protocol, model="slow", timeout=SHORT_TIMEOUT_S) as client:
        client.model_info
        with pytest.raises(RequestTimeout) as info:
            client.infer(x())
        assert info.value.timeout_s == SHORT_TIMEOUT_S and info.value.attempts == 1, "timeouts are not retried"
        with pytest.raises(RequestTimeout):
            client.infer(x(6))  # two chunks in flight


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_request_timeout_async(server, protocol):
    async def main():
        async with AsyncClient(url_of(server, protocol), protocol=protocol, model="slow", timeout=SHORT_TIMEOUT_S) as client:
            await client.infer(x())

    with pytest.raises(RequestTimeout):
        asyncio.run(main())


def test_timeout_with_shared_memory_retires_the_slot_and_cleans_up(server):
    import tritonclient.http as httpclient

    with Client(server.grpc_url, model="slow", timeout=30) as patient:
        patient.infer(x())  # let the requests earlier timeout tests left behind drain first
    with Client(server.grpc_url, model="slow", timeout=SHORT_TIMEOUT_S, shared_memory=True, concurrency=1) as client:
        client.model_info
        with pytest.raises(RequestTimeout):
            client.infer(x())
        names = client.shared_memory_regions()
        assert len(names) == 4, "the timed-out slot is replaced, never reused"
    # close() waited until the server released the timed-out request's regions, then unregistered them
    registered = {r["name"] for r in httpclient.InferenceServerClient(server.http_url).get_system_shared_memory_status()}
    assert not set(names) & registered


# -- server-side error --------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model, text", [("broken", "deliberate failure: weights not loaded"), ("raising", "deliberate crash in execute")])
def test_server_side_error_keeps_tritons_message(server, protocol, model, text):
    with Client(url_of(server, protocol), protocol=protocol, model=model) as client:
        with pytest.raises(ServerSideError) as info:
            client.infer(x())
        with pytest.raises(ServerSideError, match=text):
            client.infer(x(9))  # chunks in flight together fail the same way
    assert text in info.value.server_message and text in info.value.one_line()
    assert info.value.attempts == 1, "a model error is not retried"


def test_server_side_error_async(server):
    async def main():
        async with AsyncClient(server.grpc_url, model="broken") as client:
            await client.infer(x())

    with pytest.raises(ServerSideError, match="deliberate failure"):
        asyncio.run(main())


# -- one root, one line ---------------------------------------------------------------------------------


def test_errors_share_one_root_and_the_cli_prints_one_line(server, tmp_path, capsys):
    from PIL import Image

    from sft_engine.cli import main

    for cls in (ServerUnavailable, ModelNotFound, ModelNotReady, BadInput, RequestTimeout, ServerSideError):
        assert issubclass(cls, ClientError) and issubclass(cls, SftEngineError)
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    assert main(["classify", str(image), "--url", server.grpc_url, "--model", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model 'nope' is not in the server's repository (models there:") and "\n" not in err
    assert main(["classify", str(image), "--url", server.grpc_url, "--model", "toy", "--top-k", "2"]) == 0
    assert capsys.readouterr().out.startswith(f"{image}: ")
