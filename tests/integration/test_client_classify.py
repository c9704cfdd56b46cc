"""The client against a real tritonserver: same labels as raw tritonclient and as curl (KServe v2).

One server for the module serves two versions of a built resnet18 (32×32, 4 classes,
different weights), so version selection is checked against real differences.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from sft_engine.client import AsyncClient, Client, Prediction
from sft_engine.client.predictions import softmax
from sft_engine.preprocess import Preprocessing
from sft_engine.repository.config import parameters_of, read_config, to_pbtxt
from tests.helpers import LABELS, build_two_versions

pytestmark = pytest.mark.integration

MODEL = "demo"
N_IMAGES = 11  # > max_batch_size 8: two requests per classify call


@pytest.fixture(scope="module")
def repo(tiny_weights, tmp_path_factory):
    repo = build_two_versions(tmp_path_factory.mktemp("client"), tiny_weights, MODEL, seed=7)
    # Serve both versions (the build keeps only the latest loaded), so a client can pick one.
    config_path = repo / MODEL / "config.pbtxt"
    config = read_config(config_path)
    config.version_policy.all.SetInParent()
    config_path.write_text(to_pbtxt(config))
    return repo


@pytest.fixture(scope="module")
def images(write_images):
    """Random-pixel PNGs of a size that the preprocessing must resize."""
    return write_images("images", [(40, 48)] * N_IMAGES, seed=3, names=lambda i: f"img{i:02d}.png")


@pytest.fixture(scope="module")
def batch(repo, images):
    """The images preprocessed from the parameters in config.pbtxt, as any non-sft client would."""
    prep = Preprocessing.from_parameters(parameters_of(read_config(repo / MODEL / "config.pbtxt")))
    return prep.batch(images)


def url_of(server, protocol):
    return server.grpc_url if protocol == "grpc" else server.http_url


def raw_request(server, protocol, x, class_count=0, version=""):
    """A hand-written tritonclient request, chunked by max_batch_size."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    mod = grpcclient if protocol == "grpc" else httpclient
    client = mod.InferenceServerClient(url_of(server, protocol))
    try:
        parts = []
        for start in range(0, len(x), 8):
            chunk = x[start:start + 8]
            inp = mod.InferInput("input", list(chunk.shape), "FP32")
            inp.set_data_from_numpy(chunk)
            out = mod.InferRequestedOutput("logits", class_count=class_count)
            parts.append(client.infer(MODEL, [inp], model_version=version, outputs=[out]).as_numpy("logits"))
        return np.concatenate(parts)
    finally:
        client.close()


def labels_of(results):
    return [[p.label for p in preds] for preds in results]


def entries_to_labels(rows):
    return [[(e.decode() if isinstance(e, bytes) else e).split(":", 2)[2] for e in row] for row in rows]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_classify_matches_raw_tritonclient(server, images, batch, protocol):
    with Client(url_of(server, protocol), protocol=protocol, model=MODEL) as client:
        results = client.classify(images, top_k=3)
    assert len(results) == N_IMAGES and all(len(r) == 3 and isinstance(r[0], Prediction) for r in results)
    raw_labels = entries_to_labels(raw_request(server, protocol, batch, class_count=3))
    assert labels_of(results) == raw_labels
    probs = softmax(raw_request(server, protocol, batch))
    for row, preds in enumerate(results):
        assert np.allclose([p.score for p in preds], probs[row, [p.index for p in preds]], atol=1e-5)
        assert preds[0].score >= preds[1].score >= preds[2].score


def _curl(args):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    done = subprocess.run(["curl", "-sS", "--fail-with-body", *args], capture_output=True, timeout=60)
    assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")
    return done.stdout


def curl_json_labels(server, x, tmp_path, k):
    """POST the KServe v2 JSON form: tensors as JSON lists, classification as an output parameter."""
    rows = []
    for start in range(0, len(x), 8):  # max_batch_size 8
        chunk = x[start:start + 8]
        body = {"inputs": [{"name": "input", "shape": list(chunk.shape), "datatype": "FP32", "data": chunk.ravel().tolist()}],
                "outputs": [{"name": "logits", "parameters": {"classification": k}}]}
        (tmp_path / "body.json").write_text(json.dumps(body))
        out = _curl(["-X", "POST", f"http://{server.http_url}/v2/models/{MODEL}/infer", "-H", "Content-Type: application/json",
                     "--data-binary", f"@{tmp_path / 'body.json'}"])
        answer = json.loads(out)["outputs"][0]
        assert answer["shape"] == [len(chunk), k] and answer["datatype"] == "BYTES"
        rows += entries_to_labels(np.array(answer["data"]).reshape(len(chunk), k))
    return rows


def curl_binary_labels(server, x, tmp_path, k):
    """POST the binary tensor extension: JSON header + raw bytes, sized by Inference-Header-Content-Length."""
    rows = []
    for start in range(0, len(x), 8):
        chunk = np.ascontiguousarray(x[start:start + 8], dtype="<f4")
        header = json.dumps({
            "inputs": [{"name": "input", "shape": list(chunk.shape), "datatype": "FP32", "parameters": {"binary_data_size": chunk.nbytes}}],
            "outputs": [{"name": "logits", "parameters": {"classification": k, "binary_data": True}}],
        }).encode()
        (tmp_path / "body.bin").write_bytes(header + chunk.tobytes())
        out = _curl(["-X", "POST", f"http://{server.http_url}/v2/models/{MODEL}/infer", "-H", "Content-Type: application/octet-stream",
                     "-H", f"Inference-Header-Content-Length: {len(header)}", "--data-binary", f"@{tmp_path / 'body.bin'}",
                     "-D", str(tmp_path / "headers.txt")])
        headers = {k_.strip().lower(): v.strip() for k_, _, v in
                   (line.partition(":") for line in (tmp_path / "headers.txt").read_text().splitlines() if ":" in line)}
        json_size = int(headers["inference-header-content-length"])
        meta = json.loads(out[:json_size])["outputs"][0]
        assert meta["shape"] == [len(chunk), k] and meta["parameters"]["binary_data_size"] == len(out) - json_size
        data, entries, pos = out[json_size:], [], 0
        while pos < len(data):  # BYTES elements: 4-byte little-endian length, then the bytes
            size = int.from_bytes(data[pos:pos + 4], "little")
            entries.append(data[pos + 4:pos + 4 + size])
            pos += 4 + size
        rows += entries_to_labels(np.array(entries, dtype=object).reshape(len(chunk), k))
    return rows


def test_classify_matches_curl_json_form(server, images, batch, tmp_path):
    with Client(server.http_url, protocol="http", model=MODEL) as client:
        assert labels_of(client.classify(images, top_k=3)) == curl_json_labels(server, batch, tmp_path, 3)


def test_classify_matches_curl_binary_tensor_form(server, images, batch, tmp_path):
    with Client(server.grpc_url, protocol="grpc", model=MODEL) as client:
        assert labels_of(client.classify(images, top_k=3)) == curl_binary_labels(server, batch, tmp_path, 3)


def test_every_input_form_gives_the_same_predictions(server, images, batch):
    import torch

    pil = [Image.open(p).convert("RGB") for p in images]
    pixels = [np.asarray(img) for img in pil]
    with Client(server.grpc_url, model=MODEL) as client:
        reference = client.classify(images, top_k=4)
        forms = {
            "str paths": [str(p) for p in images], "PIL": pil, "HWC uint8": pixels, "NHWC uint8": np.stack(pixels),
            "NCHW float32": batch, "torch": torch.from_numpy(batch),
        }
        for name, form in forms.items():
            got = client.classify(form, top_k=4)
            assert [[p.index for p in r] for r in got] == [[p.index for p in r] for r in reference], name
            assert np.allclose([[p.score for p in r] for r in got], [[p.score for p in r] for r in reference], atol=1e-5), name
        single = client.classify(images[0], top_k=2)
        assert len(single) == 1 and [p.index for p in single[0]] == [p.index for p in reference[0][:2]]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_many_preparation_windows_keep_the_order(server, images, protocol, monkeypatch):
    """With a tiny window budget every chunk is its own window: prepare, send, overlap, collect in order."""
    import sft_engine.client.inputs as inputs

    many = list(images) * 3  # 33 images: 5 chunks of at most 8
    with Client(url_of(server, protocol), protocol=protocol, model=MODEL) as client:
        want = client.classify(many, top_k=2)
    monkeypatch.setattr(inputs, "WINDOW_BYTES", 1)
    with Client(url_of(server, protocol), protocol=protocol, model=MODEL, concurrency=1) as client:
        assert labels_of(client.classify(many, top_k=2)) == labels_of(want)

    async def main():
        async with AsyncClient(url_of(server, protocol), protocol=protocol, model=MODEL, concurrency=1) as aclient:
            return await aclient.classify(many, top_k=2)

    assert labels_of(asyncio.run(main())) == labels_of(want)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_infer_splits_large_batches_concurrently_in_order(server, protocol):
    x = np.random.default_rng(5).standard_normal((21, 3, 32, 32)).astype(np.float32)
    with Client(url_of(server, protocol), protocol=protocol, model=MODEL, concurrency=3) as client:
        logits = client.infer(x)
    expected = np.concatenate([raw_request(server, protocol, x[i:i + 1]) for i in range(len(x))])
    assert logits.shape == (21, 4) and logits.dtype == np.float32
    assert np.allclose(logits, expected, atol=1e-4)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_async_client_gives_the_same_results(server, images, protocol):
    x = np.random.default_rng(6).standard_normal((19, 3, 32, 32)).astype(np.float32)
    with Client(url_of(server, protocol), protocol=protocol, model=MODEL) as client:
        want_preds, want_logits = client.classify(images, top_k=2), client.infer(x)

    async def main():
        async with AsyncClient(url_of(server, protocol), protocol=protocol, model=MODEL) as client:
            assert await client.is_live() and await client.is_ready()
            await client.wait_until_ready(5)
            preds, logits = await asyncio.gather(client.classify(images, top_k=2), client.infer(x))
            assert client.labels == LABELS and client.model_config["max_batch_size"] == 8
            return preds, logits

    preds, logits = asyncio.run(main())
    assert labels_of(preds) == labels_of(want_preds)
    assert np.allclose(logits, want_logits, atol=1e-4)


def _shm_files(names):
    return [n for n in names if os.path.exists(f"/dev/shm/{n}")]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_shared_memory_gives_the_same_results_and_cleans_up(server, images, protocol):
    import tritonclient.http as httpclient

    x = np.random.default_rng(8).standard_normal((17, 3, 32, 32)).astype(np.float32)
    with Client(url_of(server, protocol), protocol=protocol, model=MODEL) as plain:
        want_preds, want_logits = plain.classify(images, top_k=3), plain.infer(x)
    with Client(url_of(server, protocol), protocol=protocol, model=MODEL, shared_memory=True, concurrency=2) as client:
        preds, logits = client.classify(images, top_k=3), client.infer(x)
        names = client.shared_memory_regions()
        assert len(names) == 4 and len(_shm_files(names)) == 4
        registered = {r["name"] for r in httpclient.InferenceServerClient(server.http_url).get_system_shared_memory_status()}
        assert set(names) <= registered
    assert labels_of(preds) == labels_of(want_preds)
    assert np.allclose(logits, want_logits, atol=1e-4)
    registered = {r["name"] for r in httpclient.InferenceServerClient(server.http_url).get_system_shared_memory_status()}
    assert not set(names) & registered, "regions must be unregistered on close"
    assert _shm_files(names) == [], "regions must be unlinked on close"

    async def main():
        async with AsyncClient(url_of(server, protocol), protocol=protocol, model=MODEL, shared_memory=True) as aclient:
            result = await aclient.infer(x)
            return result, aclient.shared_memory_regions()

    async_logits, async_names = asyncio.run(main())
    assert np.allclose(async_logits, want_logits, atol=1e-4) and async_names and _shm_files(async_names) == []


def test_version_selection(server):
    x = np.random.default_rng(9).standard_normal((3, 3, 32, 32)).astype(np.float32)
    outputs = {}
    for version in (1, "2", None):
        with Client(server.grpc_url, model=MODEL, version=version) as client:
            outputs[version] = client.infer(x)
            assert client.model_info.versions == ("1", "2")
    assert np.allclose(outputs[1], raw_request(server, "grpc", x, version="1"), atol=1e-4)
    assert np.allclose(outputs["2"], raw_request(server, "grpc", x, version="2"), atol=1e-4)
    assert np.allclose(outputs[None], outputs["2"], atol=1e-4), "no version = the latest"
    assert not np.allclose(outputs[1], outputs["2"], atol=1e-3), "the two versions have different weights"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_model_config_preprocessing_and_health(server, protocol):
    with Client(url_of(server, protocol), protocol=protocol, model=MODEL) as client:
        assert client.is_live() and client.is_ready()
        client.wait_until_ready(timeout=5)
        config = client.model_config
        assert config["max_batch_size"] == 8 and config["input"][0]["dims"] == [3, 32, 32]
        assert config["output"][0]["dims"] == [4]
        info = client.model_info
        assert (info.input_name, info.output_name, info.num_classes) == ("input", "logits", 4)
        assert info.preprocessing == Preprocessing(input_size=32)
        assert client.labels == LABELS


def test_latency_histogram_counts_requests(server, images):
    registry = CollectorRegistry()
    with Client(server.grpc_url, model=MODEL, metrics=registry) as client:
        client.classify(images, top_k=1)  # 11 images, max_batch_size 8: two requests
    labels = {"model": MODEL, "protocol": "grpc"}
    assert registry.get_sample_value("sft_engine_client_request_seconds_count", {**labels, "call": "infer"}) == 2
    assert registry.get_sample_value("sft_engine_client_request_seconds_count", {**labels, "call": "classify"}) == 1


def test_classify_command(server, images, capsys):
    from sft_engine.cli import main

    code = main(["classify", *map(str, images[:3]), "--url", server.http_url, "--protocol", "http", "--model", MODEL, "--top-k", "2", "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    with Client(server.grpc_url, model=MODEL) as client:
        want = client.classify(images[:3], top_k=2)
    assert [[p["label"] for p in item["predictions"]] for item in doc] == labels_of(want)
    assert [item["image"] for item in doc] == [str(p) for p in images[:3]]
    code = main(["classify", str(images[0]), "--url", server.grpc_url, "--model", MODEL, "--top-k", "1"])
    assert code == 0 and capsys.readouterr().out.startswith(f"{images[0]}: {want[0][0].label} ")
