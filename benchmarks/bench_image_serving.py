"""Raw image bytes to ``<name>_image`` against client-side preprocessing + tensor requests, measured side by side.

For each model (``--models``, default resnet18@64 and resnet50@224; random weights,
OpenVINO, max_batch_size 8) and precision (``--precisions``, default fp32 and int8:
INT8 is calibrated and gated by the build on 500 synthetic labelled images), built with
``sft-engine build`` so the repository has all three models, and each set of
photo-like files the script makes (``--sets``: ``jpeg`` 500×375 quality 85-95,
``jpeg-camera`` 3024×2016, ``png`` 500×375, ``png-camera`` 2048×1536), at saturation
(``--concurrency`` threads, each with its own gRPC client, on the same cores as the
server), one image per request:

* **tensor**: the client decodes and preprocesses each file (``sft_engine.pixels``,
  what ``Client.classify`` does) and sends the float tensor to ``<name>``;
* **bytes**: the client sends the file to ``<name>_image``: for a CPU engine the one
  Python model that decodes, preprocesses and runs the engine in one stub;
* **ensemble** (``--modes``): the same file to ``<name>_ensemble``, the ensemble
  ``<name>_preprocess`` → ``<name>`` published beside it (what ``<name>_image`` was);
* **fast**: the file to ``<name>_fast``, the fused model with ``fast_decode`` (DCT-scaled
  JPEG decoding, opt-in);
* **ready**: pre-made tensors to ``<name>`` (no decoding anywhere: the engine's ceiling).

Modes alternate within each round (``--rounds``) so load from other processes hits
all alike; the better of each mode's rounds is kept. Printed per row: img/s, p50/p99,
the ratio to **tensor**, and the bytes on the wire of a file over those of its tensor.
Then top-1 parity of every mode against **tensor** on the set's files.

``--breakdown`` measures first, in this process on one core, where the time of one
image goes: decode, convert to RGB, resize + crop, normalize + CHW, the engine's share
of a batch of 8, per set and model.

Usage::

    python benchmarks/bench_image_serving.py                                   # about 10 minutes on 2 cores
    python benchmarks/bench_image_serving.py --models resnet18@64 --precisions int8 --sets jpeg --modes tensor,bytes,ensemble
    python benchmarks/bench_image_serving.py --breakdown --concurrency 0 --models resnet18@64,resnet50@224
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_decoders import photo_like  # noqa: E402

MAX_BATCH = 8
#: set name → (width, height, format, files)
SETS = {"jpeg": (500, 375, "JPEG", 20), "jpeg-camera": (3024, 2016, "JPEG", 6), "png": (500, 375, "PNG", 12),
        "png-camera": (2048, 1536, "PNG", 4)}
MODES = ("tensor", "bytes", "ensemble", "fast", "ready")


def make_set(name: str, seed: int = 0) -> list[bytes]:
    width, height, fmt, count = SETS[name]
    return photo_like(count, width, height, fmt, None if fmt == "JPEG" else 90, seed=seed)


def build_models(repo: Path, work: Path, models: list[tuple[str, int]], precisions: list[str], engine: str) -> dict[str, dict[str, Any]]:
    """One build per model × precision; beside each, ``<name>_ensemble`` and ``<name>_fast`` for the side-by-side modes."""
    from dataclasses import replace

    from sft_engine.build import build
    from sft_engine.build_config import BuildConfig
    from sft_engine.engines.cpu.target import cpu_config
    from sft_engine.finetune.synthetic import make_synthetic_images
    from sft_engine.preprocess import Preprocessing
    from sft_engine.repository.config import to_pbtxt
    from sft_engine.repository.image_models import ImageServing, ensemble_spec, fused_spec
    from sft_engine.repository.writer import ModelRelease, publish_models

    built = {}
    for arch, size in models:
        labelled = work / f"labelled-{size}"
        if "int8" in precisions and not labelled.exists():
            make_synthetic_images(labelled, count=500, num_classes=10, image_size=size, seed=7)
        for precision in precisions:
            name = f"{arch}_{size}_{precision}"
            result = build(BuildConfig(arch=arch, num_classes=10, allow_random_weights=True, input_size=size, max_batch_size=MAX_BATCH,
                                       repository=repo, name=name, engine=engine, precision=precision, parity_samples=4,
                                       selection_budget_s=0.5, calibration_dir=labelled if precision == "int8" else None))
            spec = cpu_config(name, 10, Preprocessing(input_size=size).shape, MAX_BATCH, 1, 200, Preprocessing(input_size=size).to_parameters())
            image_dir = repo / f"{name}_image" / "1"
            files = {p.name: p for p in image_dir.iterdir() if p.is_file() and p.name not in ("build_manifest.json", "config.pbtxt.built")}
            labels = tuple((repo / name / "labels.txt").read_text().split())
            no_manifest: Callable[[Path, int, Any], None] = lambda *a: None  # noqa: E731
            publish_models(repo, [
                ModelRelease(f"{name}_ensemble", to_pbtxt(replace(ensemble_spec(spec), name=f"{name}_ensemble")), labels, {}, no_manifest),
                ModelRelease(f"{name}_fast", to_pbtxt(replace(fused_spec(spec, ImageServing(fast_decode=True)), name=f"{name}_fast")),
                             labels, files, no_manifest),
            ])
            built[name] = {"label": f"{arch}@{size}", "precision": precision, "engine": result.engine_label, "size": size}
    return built


class Mode:
    """One way of turning a file into logits over gRPC."""

    def __init__(self, kind: str, url: str, model: str, pipeline: Any) -> None:
        import tritonclient.grpc as grpcclient

        self.kind, self.url, self.pipeline, self.mod = kind, url, pipeline, grpcclient
        self.target = {"tensor": model, "ready": model, "bytes": f"{model}_image", "ensemble": f"{model}_ensemble", "fast": f"{model}_fast"}[kind]
        self._ready: dict[int, np.ndarray] = {}

    def client(self) -> Any:
        return self.mod.InferenceServerClient(self.url)

    def inputs(self, files: list[bytes]) -> list[Any]:
        if self.kind in ("tensor", "ready"):
            if self.kind == "ready":
                array = np.stack([self._ready.setdefault(id(d), self.pipeline.bytes_to_array(d)) for d in files])
            else:
                array = np.stack([self.pipeline.bytes_to_array(d) for d in files])
            inp = self.mod.InferInput("input", list(array.shape), "FP32")
        else:
            array = np.empty((len(files), 1), dtype=object)
            for i, data in enumerate(files):
                array[i, 0] = data
            inp = self.mod.InferInput("IMAGE", [len(files), 1], "BYTES")
        inp.set_data_from_numpy(array)
        return [inp]

    def logits(self, client: Any, files: list[bytes]) -> np.ndarray:
        return client.infer(self.target, self.inputs(files), outputs=[self.mod.InferRequestedOutput("logits")]).as_numpy("logits")


def wire_bytes(data: bytes, pipeline: Any) -> tuple[int, int]:
    """(file request, tensor request) sizes on the wire: the serialized gRPC messages."""
    from sft_engine.loadtest.payload import build_payload
    from sft_engine.triton.model import ServedModel

    array = pipeline.bytes_to_array(data)[None]
    out = {"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}
    tensor = {"name": "m", "max_batch_size": MAX_BATCH, "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": list(array.shape[1:])}], "output": [out]}
    blob = np.empty((1, 1), dtype=object)
    blob[0, 0] = data
    image = {"name": "m_image", "max_batch_size": MAX_BATCH, "input": [{"name": "IMAGE", "data_type": "TYPE_STRING", "dims": [1]}], "output": [out]}
    sizes = [build_payload(ServedModel.from_config(c), 1, given_arrays={c["input"][0]["name"]: a}).request_bytes("grpc")
             for c, a in ((image, blob), (tensor, array))]
    return sizes[0], sizes[1]


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
    return {"requests": int(flat.size), "img_per_s": flat.size / elapsed, "p50_ms": float(np.percentile(flat, 50)),
            "p99_ms": float(np.percentile(flat, 99))}


def parity(reference: Mode, other: Mode, files: list[bytes]) -> dict[str, float]:
    ca, cb = reference.client(), other.client()
    try:
        a = np.concatenate([reference.logits(ca, files[i:i + MAX_BATCH]) for i in range(0, len(files), MAX_BATCH)])
        b = np.concatenate([other.logits(cb, files[i:i + MAX_BATCH]) for i in range(0, len(files), MAX_BATCH)])
    finally:
        ca.close()
        cb.close()
    return {"images": len(files), "top1_identical": float(np.mean(a.argmax(1) == b.argmax(1))), "max_abs_diff": float(np.abs(a - b).max())}


def breakdown(sets: dict[str, list[bytes]], repo: Path | None, built: dict[str, dict[str, Any]], rounds: int) -> list[dict[str, Any]]:
    """Per image, on one core: decode, RGB, resize + crop, normalize + CHW (and the engine's share of a batch of 8)."""
    from PIL import Image

    from sft_engine.pixels import PixelPipeline
    from sft_engine.preprocess import IMAGENET_MEAN, IMAGENET_STD

    rows = []
    sizes = sorted({info["size"] for info in built.values()}) if built else [64, 224]
    for set_name, files in sets.items():
        for size in sizes:
            pipe = PixelPipeline(size, IMAGENET_MEAN, IMAGENET_STD)
            fast = PixelPipeline(size, IMAGENET_MEAN, IMAGENET_STD, fast_decode=True)
            stages: dict[str, list[float]] = {k: [] for k in ("open", "decode", "convert", "resize_crop", "normalize_chw", "fast_decode",
                                                              "normalize_float")}
            for _ in range(rounds):
                for data in files:
                    import io

                    t0 = time.perf_counter()
                    image = Image.open(io.BytesIO(data))
                    t1 = time.perf_counter()
                    image.load()
                    t2 = time.perf_counter()
                    rgb = image.convert("RGB")
                    t3 = time.perf_counter()
                    small = pipe.resize_and_crop(rgb)
                    t4 = time.perf_counter()
                    pipe.image_to_array(small)  # at the target size already: the lookup normalization and CHW alone
                    t5 = t6 = time.perf_counter()
                    fast.bytes_to_array(data)
                    t7 = time.perf_counter()
                    arr = np.asarray(small, dtype=np.float32) / np.float32(255)  # the float arithmetic per pixel, as before the lookup
                    np.ascontiguousarray(((arr - pipe.mean) / pipe.std).transpose(2, 0, 1))
                    t8 = time.perf_counter()
                    for key, value in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t7 - t6, t8 - t7)):
                        stages[key].append(value * 1000.0)
            row: dict[str, Any] = {"set": set_name, "size": size, **{k: statistics.median(v) for k, v in stages.items()}}
            row["exact_total"] = sum(row[k] for k in ("open", "decode", "convert", "resize_crop", "normalize_chw"))
            if repo is not None:
                row["engine_per_image"] = _engine_ms(repo, built, size)
            rows.append(row)
            engine = "  ".join(f"{k} {v:.3f}" for k, v in row.get("engine_per_image", {}).items())
            print(f"{set_name:12} @{size:<4} open {row['open']:.2f}  decode {row['decode']:.2f}  convert {row['convert']:.2f}  "
                  f"resize+crop {row['resize_crop']:.2f}  normalize+CHW {row['normalize_chw']:.3f} (per-pixel float {row['normalize_float']:.3f})  "
                  f"= {row['exact_total']:.2f} ms/img"
                  f"  | fast decode, all steps {row['fast_decode']:.2f}  | engine ms/img (batch 8) {engine}")
    return rows


def _engine_ms(repo: Path, built: dict[str, dict[str, Any]], size: int) -> dict[str, float]:
    from sft_engine.engines.cpu.serving_model import EngineRunner

    out = {}
    for name, info in built.items():
        if info["size"] != size:
            continue
        runner = EngineRunner(str(repo / name / "1"))
        batch = np.random.default_rng(0).standard_normal((MAX_BATCH, 3, size, size)).astype(np.float32)
        runner.run(batch)
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            runner.run(batch)
            times.append((time.perf_counter() - t0) * 1000.0 / MAX_BATCH)
        out[info["precision"]] = statistics.median(times)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18@64,resnet50@224")
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--engine", default="openvino", help="CPU engine of every build (auto: the build's choice)")
    parser.add_argument("--sets", default="jpeg,jpeg-camera,png", help=f"of {', '.join(SETS)}")
    parser.add_argument("--modes", default="tensor,bytes,ensemble,ready", help=f"of {', '.join(MODES)} (tensor is always run)")
    parser.add_argument("--concurrency", type=int, default=8, help="saturation: requests in flight (0: no serving runs)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--breakdown", action="store_true", help="in-process stage timings first")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    from sft_engine.pixels import PixelPipeline
    from sft_engine.repository.config import parameters_of, read_config
    from sft_engine.server import ServerConfig, TritonServer

    models = [(m.split("@")[0], int(m.split("@")[1])) for m in args.models.split(",")]
    precisions = args.precisions.split(",")
    modes = ["tensor", *[m for m in args.modes.split(",") if m != "tensor"]]
    sets = {name: make_set(name) for name in args.sets.split(",")}
    for name, files in sets.items():
        print(f"set {name}: {len(files)} files {SETS[name][0]}x{SETS[name][1]} {SETS[name][2]}, mean {np.mean([len(f) for f in files]) / 1024:.1f} KB")
    results: dict[str, Any] = {"cores": os.cpu_count(), "sets": {k: float(np.mean([len(f) for f in v])) for k, v in sets.items()}, "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp:
        repo = Path(tmp) / "repo"
        built = build_models(repo, Path(tmp), models, precisions, args.engine)
        if args.breakdown:
            results["breakdown"] = breakdown(sets, repo, built, args.rounds)
        if args.concurrency > 0:
            with TritonServer(ServerConfig(repository=repo, http_port=0, grpc_port=0, metrics_port=0)) as server:
                for name, info in built.items():
                    pipe = PixelPipeline.from_parameters(parameters_of(read_config(repo / name / "config.pbtxt")))
                    by_kind = {kind: Mode(kind, server.grpc_url, name, pipe) for kind in modes}
                    for set_name, files in sets.items():
                        sizes = [wire_bytes(f, pipe) for f in files]
                        byte_ratio = float(np.mean([s[0] for s in sizes]) / np.mean([s[1] for s in sizes]))
                        best: dict[str, dict[str, float]] = {}
                        for _ in range(args.rounds):
                            for kind, mode in by_kind.items():
                                figures = run_load(mode, files, args.concurrency, args.seconds)
                                if kind not in best or figures["img_per_s"] > best[kind]["img_per_s"]:
                                    best[kind] = figures
                        base = best["tensor"]["img_per_s"]
                        for kind, fig in best.items():
                            par = parity(by_kind["tensor"], by_kind[kind], files) if kind not in ("tensor", "ready") else None
                            row = {"model": info["label"], "precision": info["precision"], "engine": info["engine"], "set": set_name, "mode": kind,
                                   **fig, "x_tensor": fig["img_per_s"] / base, "file_bytes_over_tensor_bytes": byte_ratio, "parity": par}
                            results["runs"].append(row)
                            agree = f"  top-1 identical {par['top1_identical']:.0%} max|diff| {par['max_abs_diff']:.2g}" if par else ""
                            print(f"{info['label']:13} {info['precision']:5} {set_name:12} {kind:8} {fig['img_per_s']:8.1f} img/s  p50 {fig['p50_ms']:7.1f}  "
                                  f"p99 {fig['p99_ms']:7.1f} ms  {row['x_tensor']:.2f}x tensor  file/tensor bytes {byte_ratio:.2f}{agree}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
