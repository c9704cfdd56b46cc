"""Raw image bytes against a real tritonserver: ``<name>_image`` answers what client-side preprocessing answers.

Two builds of a resnet18 (32×32, 4 classes, max_batch_size 8) give versions 1 and 2 of
all three models. The images are PNGs and JPEGs of a size the preprocessing must
resize. Checked: the README's curl line and raw tritonclient (gRPC and HTTP) get the
labels ``Client.classify`` gets client-side; every kind of bad image is its request's
one-line error (a real GIF and a truncated PNG among them) while the good ones around it
are answered, also 1,000 of them interleaved with good requests under load; the server
keeps serving.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sft_engine.client import Client
from sft_engine.repository.writer import list_versions
from tests.helpers import build_two_versions

pytestmark = pytest.mark.integration

MODEL = "demo"
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def repo(tiny_weights, tmp_path_factory):
    repo = build_two_versions(tmp_path_factory.mktemp("image"), tiny_weights, MODEL, seed=11, max_image_pixels=1_000_000)
    return repo


@pytest.fixture(scope="module")
def images(write_images):
    """Photo-sized random images, half PNG and half JPEG (quality 90)."""
    return write_images("image-files", [(30 + 7 * i, 50 + 3 * i) for i in range(8)], seed=5,
                        names=lambda i: f"img{i}.png" if i % 2 == 0 else f"img{i}.jpg")


@pytest.fixture(scope="module")
def expected(server, images):
    """Top-3 labels and logits from client-side preprocessing (the reference)."""
    with Client(server.grpc_url, model=MODEL) as client:
        top = [[p.label for p in preds] for preds in client.classify(images, top_k=3)]
        batch = np.stack([client.model_info.preprocessing.image_to_array(p) for p in images])  # type: ignore[union-attr]
        logits = client.infer(batch)
    return top, logits


def _image_request(mod, data_list, class_count=3, protocol="grpc"):
    inp = mod.InferInput("IMAGE", [len(data_list), 1], "BYTES")
    array = np.array([[d] for d in data_list], dtype=object)
    if protocol == "http":
        inp.set_data_from_numpy(array, binary_data=True)
        out = mod.InferRequestedOutput("logits", binary_data=True, class_count=class_count)
    else:
        inp.set_data_from_numpy(array)
        out = mod.InferRequestedOutput("logits", class_count=class_count)
    return inp, out


def _labels(entries):
    return [(e.decode() if isinstance(e, bytes) else e).split(":", 2)[2] for e in entries]


def test_a_rebuild_adds_a_version_to_all_three_models(repo):
    for name in (MODEL, f"{MODEL}_preprocess", f"{MODEL}_image"):
        assert list_versions(repo / name) == [1, 2], name
    assert (repo / f"{MODEL}_preprocess" / "2" / "model.py").read_bytes() == (repo / f"{MODEL}_preprocess" / "1" / "model.py").read_bytes()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_raw_tritonclient_gets_the_client_side_labels(server, images, expected, protocol):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    mod = grpcclient if protocol == "grpc" else httpclient
    top, logits = expected
    client = mod.InferenceServerClient(server.grpc_url if protocol == "grpc" else server.http_url)
    try:
        for i, path in enumerate(images):
            inp, out = _image_request(mod, [path.read_bytes()], protocol=protocol)
            result = client.infer(f"{MODEL}_image", [inp], outputs=[out])
            assert _labels(result.as_numpy("logits").reshape(-1)) == top[i], path.name
            inp, _ = _image_request(mod, [path.read_bytes()], protocol=protocol)
            raw = client.infer(f"{MODEL}_image", [inp]).as_numpy("logits")
            np.testing.assert_allclose(raw[0], logits[i], atol=1e-4, rtol=1e-4)
    finally:
        client.close()


def _photographs() -> list[bytes]:
    """Photo-like JPEGs (gradients, grain; quality 85-95), small and large (under this repository's 1 MP limit), and a PNG."""
    rng = np.random.default_rng(21)
    out = []
    for i, (width, height) in enumerate([(500, 375), (375, 500), (1152, 864), (640, 480), (1000, 750), (320, 240)]):
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        s = width / 500.0
        base = np.stack([127 + 100 * np.sin(xx / (s * rng.uniform(20, 90))), 127 + 100 * np.cos((xx + yy) / (s * rng.uniform(30, 120))),
                         127 + 100 * np.sin(yy / (s * rng.uniform(15, 80)))], axis=-1) + rng.normal(0, 6, (height, width, 3))
        buf = io.BytesIO()
        image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        image.save(buf, format="PNG") if i == 5 else image.save(buf, format="JPEG", quality=int(rng.integers(85, 96)))
        out.append(buf.getvalue())
    return out


def test_the_cpu_engines_image_model_is_one_python_model_answering_the_exact_path(repo, server):
    """``<name>_image`` of a CPU engine decodes and runs the engine in one stub; its labels are the client-side path's."""
    import tritonclient.grpc as grpcclient

    from sft_engine.repository.config import read_config

    cfg = read_config(repo / f"{MODEL}_image" / "config.pbtxt")
    assert cfg.backend == "python" and not cfg.platform and not cfg.ensemble_scheduling.step
    photos = _photographs()
    with Client(server.grpc_url, model=MODEL) as client:
        prep = client.model_info.preprocessing  # type: ignore[union-attr]
        exact = client.infer(np.stack([prep.pipeline().bytes_to_array(p) for p in photos]))
    raw = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        single = [raw.infer(f"{MODEL}_image", [_image_request(grpcclient, [p])[0]]).as_numpy("logits")[0] for p in photos]
        batched = raw.infer(f"{MODEL}_image", [_image_request(grpcclient, photos[:4])[0]]).as_numpy("logits")
    finally:
        raw.close()
    assert np.array_equal(np.argmax(single, axis=1), exact.argmax(1))
    np.testing.assert_allclose(np.stack(single), exact, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(batched, exact[:4], atol=1e-4, rtol=1e-4)


def _readme_curl() -> str:
    text = README.read_text()
    block = re.search(r"<!-- image-curl -->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README has no image curl block"
    return block.group(1)


@pytest.mark.parametrize("index", [0, 1])  # a PNG and a JPEG
def test_readme_curl_line_gets_the_client_side_labels(server, images, expected, index, tmp_path):
    if shutil.which("curl") is None or shutil.which("perl") is None:
        pytest.skip("curl or perl is not installed")
    script = _readme_curl().replace("cat.jpg", str(images[index])).replace("resnet18_demo", MODEL).replace("localhost:8000", server.http_url)
    done = subprocess.run(["bash", "-c", script], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    answer = json.loads(done.stdout)["outputs"][0]
    assert answer["datatype"] == "BYTES" and answer["shape"] == [1, 3]
    assert _labels(answer["data"]) == expected[0][index]


def _jpeg(size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _big_png() -> bytes:
    """1,200×1,000 = 1.2 MP, over this repository's --max-image-pixels 1,000,000."""
    buf = io.BytesIO()
    Image.new("1", (1200, 1000)).save(buf, format="PNG")
    return buf.getvalue()


def _encoded(fmt: str, size=(200, 150)) -> bytes:
    """A real image file of format ``fmt``, as Pillow writes it."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


BAD = {
    "not an image": (b"this is not an image at all", "not a PNG, JPEG or WebP image"),
    "real GIF": (_encoded("GIF"), "not a PNG, JPEG or WebP image"),  # a well-formed file of a format not served
    "truncated PNG": (_encoded("PNG")[:2000], "truncated or corrupt"),
    "truncated JPEG": (_jpeg()[:400], "truncated or corrupt"),
    "0 bytes": (b"", r"empty \(0 bytes\)"),
    "too many pixels": (_big_png(), "1200x1000 = 1200000 pixels, over the limit of 1000000 pixels"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_each_bad_image_is_a_one_line_error_and_the_server_keeps_serving(server, images, expected, kind):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    data, message = BAD[kind]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        inp, out = _image_request(grpcclient, [data])
        with pytest.raises(InferenceServerException) as info:
            client.infer(f"{MODEL}_image", [inp], outputs=[out])
        text = info.value.message()
        assert re.search(message, text) and "\n" not in text, text
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        inp, out = _image_request(grpcclient, [images[1].read_bytes()])
        assert _labels(client.infer(f"{MODEL}_image", [inp], outputs=[out]).as_numpy("logits").reshape(-1)) == expected[0][1]
    finally:
        client.close()


def test_a_request_with_one_bad_image_names_it(server, images):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(server.http_url)
    try:
        inp, out = _image_request(httpclient, [images[0].read_bytes(), b"", images[1].read_bytes()], protocol="http")
        with pytest.raises(InferenceServerException, match=r"image 1 of 3: the image is empty") as info:
            client.infer(f"{MODEL}_image", [inp], outputs=[out])
        assert info.value.status() == "400"
    finally:
        client.close()


def test_1000_bad_requests_interleaved_with_good_ones_lose_no_good_one(server, images, expected):
    """Good and bad requests alternate, 16 in flight, so the dynamic batcher mixes them in one execute."""
    import tritonclient.grpc as grpcclient

    top = expected[0]
    bad_kinds = list(BAD.values())
    plan = []  # (request index, good image index or None, bad kind)
    for i in range(2000):
        plan.append((i, (i // 2) % len(images), None) if i % 2 == 0 else (i, None, (i // 2) % len(bad_kinds)))
    results: dict[int, object] = {}
    lock = threading.Lock()
    slots = threading.Semaphore(16)
    done = threading.Event()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        def sender() -> None:
            for index, good, bad in plan:
                slots.acquire()
                data = images[good].read_bytes() if good is not None else bad_kinds[bad][0]  # type: ignore[index]
                inp, out = _image_request(grpcclient, [data])

                def callback(result, error, index=index):
                    with lock:
                        results[index] = error if error is not None else _labels(result.as_numpy("logits").reshape(-1))
                        if len(results) == len(plan):
                            done.set()
                    slots.release()

                client.async_infer(f"{MODEL}_image", [inp], callback, outputs=[out])

        thread = threading.Thread(target=sender)
        thread.start()
        assert done.wait(600), f"{len(plan) - len(results)} requests never answered"
        thread.join()
    finally:
        client.close()
    good_results = [(results[i], top[g]) for i, g, _ in plan if g is not None]
    bad_results = [(results[i], bad_kinds[b][1]) for i, g, b in plan if g is None]
    assert len(good_results) == 1000 and len(bad_results) == 1000
    lost = [r for r, want in good_results if r != want]
    assert not lost, f"{len(lost)} good requests lost or wrong, e.g. {lost[0]}"
    for error, message in bad_results:
        assert not isinstance(error, list) and re.search(message, error.message()), error
    assert server.is_alive()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_server_side_classify_matches_client_side(server, images, protocol):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    with Client(url, protocol=protocol, model=MODEL) as client:
        local = client.classify(images, top_k=4)
        remote = client.classify(images, top_k=4, server_side=True)
        forms = client.classify([Image.open(images[0]), images[1].read_bytes(), str(images[2])], top_k=4, server_side=True)
    assert [[p.label for p in r] for r in remote] == [[p.label for p in r] for r in local]
    for r, want in zip(remote, local):
        np.testing.assert_allclose([p.score for p in r], [p.score for p in want], atol=1e-5)
    assert [[p.label for p in r] for r in forms] == [[p.label for p in r] for r in local[:3]]


def test_async_server_side_classify_matches_client_side(server, images):
    import asyncio

    from sft_engine.client import AsyncClient

    async def run():
        async with AsyncClient(server.grpc_url, model=MODEL) as client:
            return await client.classify(images, top_k=3), await client.classify(images, top_k=3, server_side=True)

    local, remote = asyncio.run(run())
    assert [[p.label for p in r] for r in remote] == [[p.label for p in r] for r in local]


def test_server_side_bad_input_and_missing_model_are_one_line_errors(server, images):
    from sft_engine.client import BadInput, ModelNotFound

    with Client(server.grpc_url, model=MODEL, retries=0) as client:
        with pytest.raises(BadInput, match="not a PNG, JPEG or WebP image"):
            client.classify([images[0], b"junk"], server_side=True)
        with pytest.raises(BadInput, match="cannot be sent as an image file"):
            client.classify(np.zeros((1, 3, 32, 32), np.float32), server_side=True)
        assert len(client.classify(images[:1], server_side=True)) == 1  # still serving
    with Client(server.grpc_url, model=f"{MODEL}_preprocess", retries=0) as client:
        with pytest.raises(ModelNotFound, match="has no model 'demo_preprocess_image'") as info:
            client.classify(images[:1], server_side=True)
        assert "server_side=False" in (info.value.hint or "")


def test_cli_classify_server_side_prints_the_client_side_labels(server, images):
    import os
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    outputs = []
    for extra in ([], ["--server-side"]):
        done = subprocess.run([sys.executable, "-m", "sft_engine.cli", "classify", *map(str, images[:4]), "--model", MODEL,
                               "--url", server.grpc_url, "--json", *extra], capture_output=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        outputs.append([[p["label"] for p in item["predictions"]] for item in json.loads(done.stdout)])
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_loadtest_sends_the_image_files_round_robin_and_reports_their_bytes(server, images, tmp_path, protocol, capsys):
    from sft_engine import cli

    url = server.grpc_url if protocol == "grpc" else server.http_url
    report = tmp_path / "lt.json"
    code = cli.main(["loadtest", "--url", url, "--protocol", protocol, "--model", f"{MODEL}_image", "--images", str(images[0].parent),
                     "--concurrency", "4", "--duration", "1.5", "--warmup", "0.3", "--target", "max_error_rate=0",
                     "--min-tail-samples", "1", "--max-send-lag-ms", "10000", "--report", str(report), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    data = json.loads(report.read_text())
    request = data["request"]
    mean_file = sum(p.stat().st_size for p in images) / len(images)
    assert request["images"] == len(images) and request["input_bytes"] == round(mean_file + 4)  # a BYTES element: 4-byte length + file
    assert mean_file < request["request_bytes"] < mean_file + 600
    assert f"{request['request_bytes']} bytes on the wire, mean of {len(images)} image files" in out
    assert data["steps"][0]["slo"]["verdict"] == "PASS"  # max_error_rate = 0: every file decoded and classified


def test_loadtest_refuses_images_for_a_tensor_model(server, images, capsys):
    from sft_engine import cli

    code = cli.main(["loadtest", "--url", server.grpc_url, "--model", MODEL, "--images", str(images[0].parent),
                     "--concurrency", "1", "--duration", "1", "--quiet"])
    out = capsys.readouterr()
    assert code == 2 and "--images sends image files, but model 'demo' takes input FP32" in out.out + out.err
