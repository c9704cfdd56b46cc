#!/usr/bin/env python3
"""CPU serving performance, side by side in one run.

For each model (resnet18@32, resnet50@224) and batch size (1, 8, 32) it measures:
  (a) eager PyTorch FP32 in-process (the seed's way to predict);
  (b) sft-engine's CPU engine in-process (the exact serving code, EngineRunner);
  (c) the same engine served by the embedded Triton over gRPC and HTTP:
      closed loop at concurrency 1, and at saturation (several requests in flight,
      dynamic batching on).
and prints images/s, p50/p99 latency and the ratios b/a and c/b, and writes JSON.

    python benchmarks/bench_cpu.py --json reports/bench_cpu.json
    python benchmarks/bench_cpu.py --models resnet18@32 --batches 1,8 --budget 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from sft_engine.build import build
from sft_engine.config import BuildConfig
from sft_engine.engines.serving_model import EngineRunner
from sft_engine.models import build_model, save_state_dict
from sft_engine.server import ServerConfig, TritonServer
from sft_engine.timing import latency_stats, time_closed_loop, time_interleaved


def saturation(make_call, x: np.ndarray, concurrency: int, budget_s: float) -> dict:
    """``concurrency`` threads in a closed loop each; throughput = images completed / wall time."""
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)
    stop = [0.0]

    def worker(i: int) -> None:
        call = make_call()  # HTTP clients (gevent) must live in the thread that uses them
        call(x)
        barrier.wait()
        while time.perf_counter() < stop[0]:
            t0 = time.perf_counter()
            call(x)
            lat[i].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    stop[0] = time.perf_counter() + budget_s + 60  # provisional, until everyone is warm
    barrier.wait()
    t_start = time.perf_counter()
    stop[0] = t_start + budget_s
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start
    flat = [v for vals in lat for v in vals]
    st = latency_stats(flat, len(x))
    return {"concurrency": concurrency, "requests": len(flat), "images_per_s": round(len(flat) * len(x) / wall, 2),
            "p50_ms": round(st.p50_ms, 3), "p99_ms": round(st.p99_ms, 3)}


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


class CpuSplit:
    """Cores used by the server, its Python-backend stubs and this (client) process over an interval."""

    def __init__(self, server_pid: int) -> None:
        self.pids = {"server": [server_pid], "stub": _children(server_pid), "client": [os.getpid()]}

    def __enter__(self) -> "CpuSplit":
        self.t0 = time.perf_counter()
        self.start = {k: sum(_cpu_seconds(p) for p in v) for k, v in self.pids.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.t0
        self.cores = {k: round((sum(_cpu_seconds(p) for p in v) - self.start[k]) / wall, 2) for k, v in self.pids.items()}


def grpc_call_factory(url: str, model: str, shape):
    import tritonclient.grpc as grpcclient

    def make():
        client = grpcclient.InferenceServerClient(url)
        inp = grpcclient.InferInput("input", list(shape), "FP32")
        out = [grpcclient.InferRequestedOutput("logits")]

        def call(x):
            inp.set_data_from_numpy(x)
            return client.infer(model, [inp], outputs=out).as_numpy("logits")
        return call
    return make


def http_call_factory(url: str, model: str, shape):
    import tritonclient.http as httpclient

    def make():
        client = httpclient.InferenceServerClient(url)
        inp = httpclient.InferInput("input", list(shape), "FP32")
        out = [httpclient.InferRequestedOutput("logits", binary_data=True)]

        def call(x):
            inp.set_data_from_numpy(x, binary_data=True)
            return client.infer(model, [inp], outputs=out).as_numpy("logits")
        return call
    return make


def bench_model(arch: str, size: int, batches: list[int], budget: float, engine: str, work: Path, concurrency: int) -> dict:
    torch.manual_seed(0)
    model = build_model(arch, 10).eval()
    weights = work / f"{arch}.safetensors"
    save_state_dict(model, weights)
    repo = work / "repo"
    name = f"{arch}_{size}"
    max_batch = max(batches) * concurrency
    res = build(BuildConfig(arch=arch, num_classes=10, weights=weights, input_size=size, max_batch_size=max_batch,
                            repository=repo, name=name, engine=engine, parity_samples=4, selection_budget_s=budget))
    print(f"# {name}: built {res.engine} engine (candidates: "
          + ", ".join(f"{c['engine']} {c.get('latency', {}).get('p50_ms', float('nan')):.1f} ms" for c in res.candidates) + ")", file=sys.stderr)
    runner = EngineRunner(str(res.published.path))
    torch.set_num_threads(os.cpu_count() or 1)

    def eager(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    rows = []
    with TritonServer(ServerConfig(repository=repo, http_port=0, grpc_port=0, metrics_port=0)) as srv:
        for batch in batches:
            x = np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)
            inproc = time_interleaved({"eager": eager, "engine": runner.run}, x, budget_s=2 * budget)
            grpc_make = grpc_call_factory(srv.grpc_url, name, x.shape)
            http_make = http_call_factory(srv.http_url, name, x.shape)
            grpc_c1 = time_closed_loop(grpc_make(), x, budget)
            http_c1 = time_closed_loop(http_make(), x, budget)
            # the engine in-process again, right after, so c/b compares like with like
            engine_again = time_closed_loop(runner.run, x, budget)
            with CpuSplit(srv.pid) as split:  # type: ignore[arg-type]
                sat_grpc = saturation(grpc_make, x, concurrency, budget)
            sat_grpc["cores_used"] = split.cores
            sat_http = saturation(http_make, x, concurrency, budget)
            engine_ref = max(inproc["engine"].images_per_s, engine_again.images_per_s)
            row = {
                "model": name, "batch": batch, "engine": res.engine,
                "eager": inproc["eager"].to_dict(), "engine_inproc": inproc["engine"].to_dict(),
                "engine_inproc_again": engine_again.to_dict(),
                "grpc_c1": grpc_c1.to_dict(), "http_c1": http_c1.to_dict(),
                "grpc_saturation": sat_grpc, "http_saturation": sat_http,
                "ratio_b_over_a": round(inproc["engine"].images_per_s / inproc["eager"].images_per_s, 3),
                "ratio_c_over_b_grpc": round(sat_grpc["images_per_s"] / engine_ref, 3),
                "ratio_c_over_b_http": round(sat_http["images_per_s"] / engine_ref, 3),
                "serving_added_p50_ms_grpc": round(grpc_c1.p50_ms - min(inproc["engine"].p50_ms, engine_again.p50_ms), 3),
                "serving_added_p50_ms_http": round(http_c1.p50_ms - min(inproc["engine"].p50_ms, engine_again.p50_ms), 3),
            }
            rows.append(row)
            print(f"{name:14s} b={batch:<3d} eager {row['eager']['images_per_s']:8.1f} img/s  engine {row['engine_inproc']['images_per_s']:8.1f}  "
                  f"b/a {row['ratio_b_over_a']:.2f}  | c1 p50 grpc {grpc_c1.p50_ms:.2f} ms http {http_c1.p50_ms:.2f} ms "
                  f"(engine {inproc['engine'].p50_ms:.2f} ms; +{row['serving_added_p50_ms_grpc']:.2f}/+{row['serving_added_p50_ms_http']:.2f}) "
                  f"| sat grpc {sat_grpc['images_per_s']:.1f} http {sat_http['images_per_s']:.1f} img/s  c/b {row['ratio_c_over_b_grpc']:.2f}/{row['ratio_c_over_b_http']:.2f} "
                  f"(cores: {' '.join(f'{k} {v}' for k, v in split.cores.items())})",
                  flush=True)
    return {"model": name, "engine": res.engine, "candidates": res.candidates, "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18@32,resnet50@224")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--budget", type=float, default=3.0, help="seconds per measurement")
    ap.add_argument("--engine", default="auto", choices=("auto", "onnxruntime", "torchscript"))
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight at saturation")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        for spec in args.models.split(","):
            arch, size = spec.split("@")
            results.append(bench_model(arch, int(size), batches, args.budget, args.engine, Path(tmp), args.concurrency))
    out = {"machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                       "python": platform.python_version(), "torch": torch.__version__},
           "budget_s": args.budget, "concurrency": args.concurrency, "results": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
