"""Raw image bytes to ``<name>_image`` against client-side preprocessing + tensor requests, measured side by side.

For each model (resnet50@224 and resnet18@32 by default; random weights, ONNX Runtime,
max_batch_size 8, built with ``sft-engine build`` so the repository has all three
models) and each protocol (gRPC, HTTP), from JPEG files of photo size (500×375,
quality 90, photo-like content made by this script):

(a) **tensor**: the client decodes and preprocesses each file (``sft_engine.pixels``,
    what ``Client.classify`` does) and sends the float tensor to ``<name>``;
(b) **bytes**: the client sends the file itself to ``<name>_image``, which decodes and
    preprocesses it on the server (``<name>_preprocess``) and runs the engine.

Both start from the file's bytes and end with the logits, one image per request, at
concurrency 1 and at saturation (``--concurrency``, default 8: threads, each with its
own tritonclient client), on the same cores as the server. The runs alternate
a, b, a, b (``--rounds``) so load from other processes hits both alike; the better
of each mode's rounds is kept. Printed: throughput, p50/p99 latency, bytes per
request on the wire (the exact gRPC message / HTTP body), the ratios b/a, and the
parity of (b) against (a) over ``--parity-images`` images (top-1 labels identical,
largest logit difference).

Usage::

    python benchmarks/bench_image_serving.py                       # both models, about 5 minutes on 2 cores
    python benchmarks/bench_image_serving.py --models resnet18@32 --seconds 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_decoders import photo_like_jpegs  # noqa: E402

MAX_BATCH = 8


def build_models(repo: Path, models: list[tuple[str, int]]) -> dict[str, str]:
    from sft_engine.build import build
    from sft_engine.build_config import BuildConfig

    names = {}
    for arch, size in models:
        name = f"{arch}_{size}"
        build(BuildConfig(arch=arch, num_classes=10, allow_random_weights=True, input_size=size, max_batch_size=MAX_BATCH,
                          repository=repo, name=name, engine="onnxruntime", parity_samples=4, selection_budget_s=0.5))
        names[f"{arch}@{size}"] = name
    return names


class Mode:
    """One way of turning a file into logits: a request builder per client."""

    def __init__(self, kind: str, protocol: str, url: str, model: str, pipeline: Any) -> None:
        self.kind, self.protocol, self.url, self.model, self.pipeline = kind, protocol, url, model, pipeline
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient

        self.mod = grpcclient if protocol == "grpc" else httpclient
        self.target = model if kind == "tensor" else f"{model}_image"

    def client(self) -> Any:
        return self.mod.InferenceServerClient(self.url)

    def inputs(self, files: list[bytes]) -> list[Any]:
        if self.kind == "tensor":
            array = np.stack([self.pipeline.bytes_to_array(data) for data in files])
            inp = self.mod.InferInput("input", list(array.shape), "FP32")
        else:
            array = np.empty((len(files), 1), dtype=object)
            for i, data in enumerate(files):
                array[i, 0] = data
            inp = self.mod.InferInput("IMAGE", [len(files), 1], "BYTES")
        if self.protocol == "http":
            inp.set_data_from_numpy(array, binary_data=True)
        else:
            inp.set_data_from_numpy(array)
        return [inp]

    def outputs(self) -> list[Any]:
        if self.protocol == "http":
            return [self.mod.InferRequestedOutput("logits", binary_data=True)]
        return [self.mod.InferRequestedOutput("logits")]

    def logits(self, client: Any, files: list[bytes]) -> np.ndarray:
        return client.infer(self.target, self.inputs(files), outputs=self.outputs()).as_numpy("logits")


def wire_bytes(mode: Mode, data: bytes) -> int:
    """The exact size of one request on the wire: the serialized gRPC message, or the HTTP body."""
    from sft_engine.loadtest.payload import build_payload
    from sft_engine.triton.model import ServedModel

    if mode.kind == "tensor":
        array = mode.pipeline.bytes_to_array(data)[None]
        config = {"name": mode.target, "max_batch_size": MAX_BATCH, "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": list(array.shape[1:])}],
                  "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}]}
    else:
        array = np.empty((1, 1), dtype=object)
        array[0, 0] = data
        config = {"name": mode.target, "max_batch_size": MAX_BATCH, "input": [{"name": "IMAGE", "data_type": "TYPE_STRING", "dims": [1]}],
                  "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}]}
    payload = build_payload(ServedModel.from_config(config), 1, given_arrays={config["input"][0]["name"]: array})
    return payload.request_bytes(mode.protocol)


def run_load(mode: Mode, files: list[bytes], concurrency: int, seconds: float) -> dict[str, float]:
    """``concurrency`` threads send one file each per request, back to back, for ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    stop = threading.Event()
    start_gate = threading.Barrier(concurrency + 1)

    def worker(index: int) -> None:
        client = mode.client()
        try:
            mode.logits(client, [files[index % len(files)]])  # connect
            start_gate.wait()
            i = index
            while not stop.is_set():
                t0 = time.perf_counter()
                mode.logits(client, [files[i % len(files)]])
                latencies[index].append(time.perf_counter() - t0)
                i += concurrency
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    start_gate.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    flat = np.asarray([x for per in latencies for x in per]) * 1000.0
    return {"requests": int(flat.size), "img_per_s": flat.size / elapsed, "p50_ms": float(np.percentile(flat, 50)), "p99_ms": float(np.percentile(flat, 99))}


def parity(tensor: Mode, raw: Mode, files: list[bytes]) -> dict[str, float]:
    ca, cb = tensor.client(), raw.client()
    try:
        a = np.concatenate([tensor.logits(ca, files[i:i + MAX_BATCH]) for i in range(0, len(files), MAX_BATCH)])
        b = np.concatenate([raw.logits(cb, files[i:i + MAX_BATCH]) for i in range(0, len(files), MAX_BATCH)])
    finally:
        ca.close()
        cb.close()
    return {"images": len(files), "top1_identical": float(np.mean(a.argmax(1) == b.argmax(1))), "max_abs_diff": float(np.abs(a - b).max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50@224,resnet18@32")
    parser.add_argument("--concurrency", type=int, default=8, help="saturation: requests in flight")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=32, help="distinct JPEGs sent in turn")
    parser.add_argument("--parity-images", default="resnet50@224=250,resnet18@32=1000")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    from sft_engine.pixels import PixelPipeline
    from sft_engine.repository.config import parameters_of, read_config
    from sft_engine.server import ServerConfig, TritonServer

    models = [(m.split("@")[0], int(m.split("@")[1])) for m in args.models.split(",")]
    parity_counts = dict((k, int(v)) for k, v in (item.split("=") for item in args.parity_images.split(",")))
    files = photo_like_jpegs(args.images)
    print(f"{os.cpu_count()} cores; {len(files)} JPEGs 500x375 q90, mean {np.mean([len(f) for f in files]) / 1024:.1f} KB")
    results: dict[str, Any] = {"cores": os.cpu_count(), "jpeg_mean_bytes": float(np.mean([len(f) for f in files])), "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp:
        repo = Path(tmp) / "repo"
        names = build_models(repo, models)
        with TritonServer(ServerConfig(repository=repo, http_port=0, grpc_port=0, metrics_port=0)) as server:
            for label, name in names.items():
                pipe = PixelPipeline.from_parameters(parameters_of(read_config(repo / name / "config.pbtxt")))
                for protocol in ("grpc", "http"):
                    url = server.grpc_url if protocol == "grpc" else server.http_url
                    tensor, raw = Mode("tensor", protocol, url, name, pipe), Mode("bytes", protocol, url, name, pipe)
                    sizes = {m.kind: float(np.mean([wire_bytes(m, f) for f in files])) for m in (tensor, raw)}
                    for concurrency in (1, args.concurrency):
                        best: dict[str, dict[str, float]] = {}
                        for _ in range(args.rounds):
                            for mode in (tensor, raw):
                                figures = run_load(mode, files, concurrency, args.seconds)
                                if mode.kind not in best or figures["img_per_s"] > best[mode.kind]["img_per_s"]:
                                    best[mode.kind] = figures
                        a, b = best["tensor"], best["bytes"]
                        row = {"model": label, "protocol": protocol, "concurrency": concurrency, "tensor": a, "bytes": b,
                               "request_bytes": sizes, "throughput_ratio": b["img_per_s"] / a["img_per_s"]}
                        results["runs"].append(row)
                        print(f"{label:13} {protocol:4} c={concurrency:<2} tensor {a['img_per_s']:7.1f} img/s p50 {a['p50_ms']:6.1f} p99 {a['p99_ms']:6.1f} ms "
                              f"{sizes['tensor'] / 1024:6.1f} KB | bytes {b['img_per_s']:7.1f} img/s p50 {b['p50_ms']:6.1f} p99 {b['p99_ms']:6.1f} ms "
                              f"{sizes['bytes'] / 1024:5.1f} KB | b/a {row['throughput_ratio']:.2f}x, {sizes['tensor'] / sizes['bytes']:.1f}x fewer bytes")
                n = parity_counts.get(label, 0)
                if n:
                    pipe_files = photo_like_jpegs(n, seed=1)
                    par = parity(Mode("tensor", "grpc", server.grpc_url, name, pipe), Mode("bytes", "grpc", server.grpc_url, name, pipe), pipe_files)
                    results.setdefault("parity", {})[label] = par
                    print(f"{label:13} parity over {n} images: top-1 identical {par['top1_identical']:.2%}, max |logit diff| {par['max_abs_diff']:.2g}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
