"""What the client costs, measured side by side against hand-written tritonclient code.

Two ratios, both measured in one run against the same embedded tritonserver:

1. Per-request overhead, batch 1 over gRPC: ``Client.infer(x)`` against a loop of
   ``InferInput`` + ``set_data_from_numpy`` + ``infer`` + ``as_numpy`` on a reused
   ``tritonclient.grpc.InferenceServerClient``. Requests alternate between the two
   (blocks of ``--block``, default 1) so that drift in the machine's load hits both
   alike; the overhead is the ratio of median latencies (target: at most 5 % added).
2. Classifying small image files (PNG, written by this script): ``Client.classify(paths)``
   against four hand-written approaches - a sequential batch loop, every batch in
   flight at once with ``async_infer``, and a thread pool that preprocesses and sends
   batches in parallel, with the top-k from Triton's classification extension or from
   the raw logits with numpy - all using the same preprocessing. A few rounds of
   every approach pick the best hand-written one; then ours and that one run head
   to head, alternating (AB, BA, ...), so that drift in the machine's load hits both
   alike. The figure is the ratio of the two medians (target: within 10 %); the
   median and quartiles of the per-run ratios, and the client process's CPU time per
   run (much less sensitive to other load on the machine), are printed too.

The model is a resnet18 with random weights (no downloads), 32×32 input, 10 classes,
ONNX Runtime engine, max_batch_size 8. Usage::

    python benchmarks/bench_client.py                 # defaults below, about two minutes
    python benchmarks/bench_client.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import queue
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MODEL = "bench"
MAX_BATCH = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=1500, help="batch-1 requests per side (default: 1500)")
    p.add_argument("--block", type=int, default=1, help="requests per alternating block (default: 1, strict alternation)")
    p.add_argument("--images", type=int, default=1000, help="image files to classify (default: 1000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every classify approach, to pick the best hand-written one (default: 3)")
    p.add_argument("--pairs", type=int, default=20, help="alternating head-to-head runs of ours and the best hand-written approach (default: 20)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--workdir", type=Path, default=None, help="where to build the model and write images (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def build_model(workdir: Path) -> Path:
    from _fixture import build_random, random_weights

    weights = workdir / "weights.safetensors"
    random_weights(weights, "resnet18", len(LABELS))
    repo = workdir / "model_repository"
    build_random(repo, weights, arch="resnet18", num_classes=len(LABELS), input_size=32, max_batch_size=MAX_BATCH,
                 name=MODEL, engine="onnxruntime", labels=LABELS, parity_samples=4)
    return repo


def write_images(folder: Path, n: int) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"img{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


# -- 1. batch-1 overhead -----------------------------------------------------------------------


def bench_batch1(url: str, requests: int, block: int) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient

    from sft_engine.client import Client

    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    raw = grpcclient.InferenceServerClient(url)

    def raw_call() -> np.ndarray:
        inp = grpcclient.InferInput("input", [1, 3, 32, 32], "FP32")
        inp.set_data_from_numpy(x)
        return raw.infer(MODEL, [inp], outputs=[grpcclient.InferRequestedOutput("logits")]).as_numpy("logits")

    with Client(url, protocol="grpc", model=MODEL) as client:
        ours_call = lambda: client.infer(x)  # noqa: E731
        assert np.allclose(raw_call(), ours_call(), atol=1e-4)
        for _ in range(100):  # warm both paths and the server
            raw_call()
            ours_call()
        times: dict[str, list[float]] = {"tritonclient": [], "sft_engine.client": []}
        sides: list[tuple[str, Callable[[], Any]]] = [("tritonclient", raw_call), ("sft_engine.client", ours_call)]
        done = 0
        while done < requests:
            n = min(block, requests - done)
            for name, call in sides:
                for _ in range(n):
                    t0 = time.perf_counter()
                    call()
                    times[name].append(time.perf_counter() - t0)
            sides.reverse()  # alternate which side goes first
            done += n
    raw.close()
    stats = {name: _latency_stats(values) for name, values in times.items()}
    ratio_median = stats["sft_engine.client"]["median_ms"] / stats["tritonclient"]["median_ms"]
    ratio_mean = stats["sft_engine.client"]["mean_ms"] / stats["tritonclient"]["mean_ms"]
    return {"requests_per_side": requests, "block": block, "latency": stats,
            "overhead_median_pct": (ratio_median - 1) * 100, "overhead_mean_pct": (ratio_mean - 1) * 100}


def _latency_stats(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    return {"median_ms": statistics.median(ms), "mean_ms": statistics.fmean(ms), "p90_ms": ms[int(0.9 * (len(ms) - 1))],
            "p99_ms": ms[int(0.99 * (len(ms) - 1))]}


# -- 2. classify image files -------------------------------------------------------------------------


def hand_written(url: str, top_k: int) -> dict[str, Callable[[list[Path]], list[list[str]]]]:
    """Four ways a careful engineer would classify files with tritonclient alone."""
    import tritonclient.grpc as grpcclient

    from sft_engine.preprocess import Preprocessing

    client = grpcclient.InferenceServerClient(url)
    config = client.get_model_config(MODEL, as_json=True)["config"]
    prep = Preprocessing.from_parameters(config["parameters"])

    def request(batch: np.ndarray) -> tuple[list[Any], list[Any]]:
        inp = grpcclient.InferInput("input", list(batch.shape), "FP32")
        inp.set_data_from_numpy(batch)
        return [inp], [grpcclient.InferRequestedOutput("logits", class_count=top_k)]

    def labels(result: Any) -> list[list[str]]:
        return [[e.decode().split(":", 2)[2] for e in row] for row in result.as_numpy("logits")]

    def sequential(paths: list[Path]) -> list[list[str]]:
        out: list[list[str]] = []
        for i in range(0, len(paths), MAX_BATCH):
            inputs, outputs = request(prep.batch(paths[i:i + MAX_BATCH]))
            out += labels(client.infer(MODEL, inputs, outputs=outputs))
        return out

    def all_in_flight(paths: list[Path]) -> list[list[str]]:
        batch = prep.batch(paths)
        done: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
        starts = range(0, len(paths), MAX_BATCH)
        for start in starts:
            inputs, outputs = request(batch[start:start + MAX_BATCH])
            client.async_infer(MODEL, inputs, callback=lambda result, error, s=start: done.put((s, result, error)), outputs=outputs)
        results = {}
        for _ in starts:
            start, result, error = done.get()
            if error is not None:
                raise error
            results[start] = labels(result)
        return [row for start in starts for row in results[start]]

    pool = ThreadPoolExecutor(4)

    def one_chunk(chunk: list[Path]) -> list[list[str]]:
        inputs, outputs = request(prep.batch(chunk))
        return labels(client.infer(MODEL, inputs, outputs=outputs))

    def thread_pool(paths: list[Path]) -> list[list[str]]:
        chunks = [paths[i:i + MAX_BATCH] for i in range(0, len(paths), MAX_BATCH)]
        return [row for rows in pool.map(one_chunk, chunks) for row in rows]

    def one_chunk_logits(chunk: list[Path]) -> list[list[str]]:
        batch = prep.batch(chunk)
        inp = grpcclient.InferInput("input", list(batch.shape), "FP32")
        inp.set_data_from_numpy(batch)
        logits = client.infer(MODEL, [inp], outputs=[grpcclient.InferRequestedOutput("logits")]).as_numpy("logits")
        return [[LABELS[i] for i in row] for row in np.argsort(-logits, axis=1, kind="stable")[:, :top_k].tolist()]

    def thread_pool_logits(paths: list[Path]) -> list[list[str]]:
        chunks = [paths[i:i + MAX_BATCH] for i in range(0, len(paths), MAX_BATCH)]
        return [row for rows in pool.map(one_chunk_logits, chunks) for row in rows]

    return {"sequential loop": sequential, "async_infer, all in flight": all_in_flight, "thread pool (4)": thread_pool,
            "thread pool (4), raw logits + numpy top-k": thread_pool_logits}


def bench_classify(url: str, paths: list[Path], rounds: int, pairs: int, top_k: int) -> dict[str, Any]:
    """Phase 1 picks the best hand-written approach; phase 2 runs ours and it head to head, alternating."""
    from sft_engine.client import Client

    ours_name = "sft_engine.client classify"
    approaches = hand_written(url, top_k)
    with Client(url, protocol="grpc", model=MODEL) as client:
        client.labels  # the config and labels are read once per client, like the hand-written setup above
        approaches[ours_name] = lambda ps: [[p.label for p in preds] for preds in client.classify(ps, top_k=top_k)]
        reference = approaches["sequential loop"](paths)
        for name, run in approaches.items():  # warm-up and agreement check
            assert run(paths) == reference, f"{name} disagrees with the sequential loop"

        cpu: dict[str, list[float]] = {name: [] for name in approaches}

        def timed(name: str) -> float:
            """Wall seconds of one run; the client process's CPU seconds go to ``cpu``."""
            c0, t0 = time.process_time(), time.perf_counter()
            approaches[name](paths)
            wall = time.perf_counter() - t0
            cpu[name].append(time.process_time() - c0)
            return wall

        seconds: dict[str, list[float]] = {name: [] for name in approaches}
        order = list(approaches)
        for r in range(rounds):
            for name in (order if r % 2 == 0 else order[::-1]):
                seconds[name].append(timed(name))
        medians = {name: statistics.median(values) for name, values in seconds.items()}
        hand = {name: m for name, m in medians.items() if name != ours_name}
        best = min(hand, key=hand.__getitem__)
        # Head to head: the two alternate (AB, BA, AB, ...) so that drift in the machine's load hits both alike.
        ours_s, best_s = [], []
        for i in range(pairs):
            if i % 2 == 0:
                ours_s.append(timed(ours_name))
                best_s.append(timed(best))
            else:
                best_s.append(timed(best))
                ours_s.append(timed(ours_name))
    ratios = sorted(a / b for a, b in zip(ours_s, best_s))
    return {"images": len(paths), "selection_rounds": rounds, "seconds": seconds, "median_s": medians,
            "images_per_s": {name: len(paths) / m for name, m in medians.items()},
            "client_cpu_median_s": {name: statistics.median(values) for name, values in cpu.items()},
            "best_hand_written": best, "head_to_head": {"runs": pairs, "ours_s": ours_s, "best_s": best_s},
            "ratio": statistics.median(ours_s) / statistics.median(best_s), "paired_ratio_median": statistics.median(ratios),
            "paired_ratio_quartiles": [ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from _fixture import embedded_server

    with tempfile.TemporaryDirectory(prefix="bench-client-", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        repo = build_model(workdir)
        paths = write_images(workdir / "images", args.images)
        print(f"built the model and wrote {len(paths)} images in {time.perf_counter() - t0:.1f} s", flush=True)
        with embedded_server(repo) as server:
            batch1 = bench_batch1(server.grpc_url, args.requests, args.block)
            lat = batch1["latency"]
            print(f"batch-1 gRPC, {args.requests} requests per side in alternating blocks of {args.block}:")
            for name, s in lat.items():
                print(f"  {name:20s} median {s['median_ms']:.3f} ms  mean {s['mean_ms']:.3f} ms  p90 {s['p90_ms']:.3f} ms  p99 {s['p99_ms']:.3f} ms")
            print(f"  added per-request overhead: {batch1['overhead_median_pct']:+.1f}% (median), {batch1['overhead_mean_pct']:+.1f}% (mean)  [target <= 5%]", flush=True)
            classify = bench_classify(server.grpc_url, paths, args.rounds, args.pairs, args.top_k)
            print(f"classify {len(paths)} PNG files (32x32), top-{args.top_k}, gRPC; median of {args.rounds} rounds of every approach:")
            for name, s in classify["median_s"].items():
                print(f"  {name:42s} {s:.3f} s  ({classify['images_per_s'][name]:.0f} images/s)  "
                      f"client CPU {classify['client_cpu_median_s'][name]:.3f} s")
            h2h = classify["head_to_head"]
            q1, q3 = classify["paired_ratio_quartiles"]
            print(f"  head to head with the best hand-written ({classify['best_hand_written']}), {args.pairs} alternating runs each: "
                  f"median {statistics.median(h2h['ours_s']):.3f} s vs {statistics.median(h2h['best_s']):.3f} s")
            print(f"  sft_engine.client / best hand-written: {classify['ratio']:.3f} (ratio of medians; "
                  f"per-run ratios: median {classify['paired_ratio_median']:.3f}, quartiles {q1:.3f}-{q3:.3f})  [target <= 1.10]")
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "batch1_grpc": batch1, "classify": classify,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
