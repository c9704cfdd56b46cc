#!/usr/bin/env python3
"""CPU serving performance, side by side in one run.

For each model (resnet18@32, resnet50@224) and batch size (1, 8, 32) it measures:
  (a) eager PyTorch FP32 in-process (the seed's way to predict);
  (b) sft-engine's CPU engine in-process (the exact serving code, EngineRunner);
  (c) the same engine served by the embedded Triton over gRPC and HTTP:
      closed loop at concurrency 1, and at saturation: the best throughput over a
      sweep of requests in flight (as perf_analyzer sweeps concurrency), sent by
      sft-engine's AsyncClient through system shared memory, dynamic batching on.
and prints images/s, p50/p99 latency and the ratios b/a and c/b, and writes JSON.

    python benchmarks/bench_cpu.py --json reports/bench_cpu.json
    python benchmarks/bench_cpu.py --precision fp32 --json reports/bench_cpu_fp32.json
    python benchmarks/bench_cpu.py --models resnet18@32 --batches 1,8 --budget 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _fixture import build_random, embedded_server, random_weights

from sft_engine.engines.cpu import ENGINES as CPU_ENGINES, PRECISIONS as CPU_PRECISIONS
from sft_engine.engines.serving_model import EngineRunner
from sft_engine.timing import latency_stats, time_closed_loop, time_interleaved


def saturation(url: str, protocol: str, model: str, x: np.ndarray, concurrency: int, budget_s: float, shm: bool = True) -> dict:
    """``concurrency`` requests kept in flight by sft-engine's AsyncClient; throughput = images completed / wall time.

    The product's own client, with system shared memory for the tensors on loopback: it
    costs the shared cores least of the clients measured (tritonclient's gRPC client in
    threads spends more CPU per request, which the server then lacks).
    """
    from sft_engine.client import AsyncClient

    async def go() -> tuple[list[float], float]:
        async with AsyncClient(url, protocol=protocol, model=model, shared_memory=shm, concurrency=concurrency, retries=0) as client:
            for _ in range(concurrency):
                await client.infer(x)
            lat: list[float] = []
            stop = time.perf_counter() + budget_s

            async def worker() -> None:
                while time.perf_counter() < stop:
                    t0 = time.perf_counter()
                    await client.infer(x)
                    lat.append(time.perf_counter() - t0)

            t_start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return lat, time.perf_counter() - t_start

    lat, wall = asyncio.run(go())
    st = latency_stats(lat, len(x))
    return {"concurrency": concurrency, "requests": len(lat), "images_per_s": round(len(lat) * len(x) / wall, 2),
            "p50_ms": round(st.p50_ms, 3), "p99_ms": round(st.p99_ms, 3), "shared_memory": shm}


def _cpu_seconds(pid: int, reaped_children: bool = False) -> float:
    """CPU seconds of ``pid``; with ``reaped_children``, also of its children that have exited (a load worker)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if reaped_children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


class CpuSplit:
    """Cores used by the server, its Python-backend stubs and the client (this process and its finished workers)."""

    def __init__(self, server_pid: int) -> None:
        self.pids = {"server": [server_pid], "stub": _children(server_pid), "client": [os.getpid()]}

    def _seconds(self) -> dict[str, float]:
        return {k: sum(_cpu_seconds(p, reaped_children=(k == "client")) for p in v) for k, v in self.pids.items()}

    def __enter__(self) -> "CpuSplit":
        self.t0 = time.perf_counter()
        self.start = self._seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.t0
        self.cores = {k: round((v - self.start[k]) / wall, 2) for k, v in self._seconds().items()}


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


def sweep(url: str, protocol: str, model: str, x: np.ndarray, levels: list[int], budget_s: float, shm: bool) -> dict:
    """Saturation: the highest throughput over the concurrency levels, with the whole curve."""
    curve = [saturation(url, protocol, model, x, c, budget_s, shm) for c in levels]
    best = max(curve, key=lambda r: r["images_per_s"])
    return {**best, "curve": [{k: r[k] for k in ("concurrency", "images_per_s", "p50_ms", "p99_ms")} for r in curve]}


def bench_model(arch: str, size: int, batches: list[int], budget: float, engine: str, precision: str, work: Path,
                levels: list[int], shm: bool) -> dict:
    weights = work / f"{arch}.safetensors"
    model = random_weights(weights, arch, 10)
    repo = work / "repo"
    name = f"{arch}_{size}"
    max_batch = min(max(batches) * max(levels), 256)
    res = build_random(repo, weights, arch=arch, num_classes=10, input_size=size, max_batch_size=max_batch,
                       name=name, engine=engine, precision=precision, parity_samples=16, selection_budget_s=budget)
    print(f"# {name}: built {res.engine_label} engine (candidates: "
          + ", ".join(f"{c['candidate']} {c.get('latency', {}).get('p50_ms', float('nan')):.1f} ms" for c in res.candidates) + ")", file=sys.stderr)
    runner = EngineRunner(str(res.published.path))
    torch.set_num_threads(os.cpu_count() or 1)

    def eager(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    rows = []
    with embedded_server(repo) as srv:
        for batch in batches:
            x = np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)
            inproc = time_interleaved({"eager": eager, "engine": runner.run}, x, budget_s=2 * budget)
            grpc_make = grpc_call_factory(srv.grpc_url, name, x.shape)
            http_make = http_call_factory(srv.http_url, name, x.shape)
            grpc_c1 = time_closed_loop(grpc_make(), x, budget)
            http_c1 = time_closed_loop(http_make(), x, budget)
            # the engine in-process again, right after, so c/b compares like with like
            engine_again = time_closed_loop(runner.run, x, budget)
            sat_grpc = sweep(srv.grpc_url, "grpc", name, x, levels, budget, shm)
            with CpuSplit(srv.pid) as split:  # type: ignore[arg-type]  # at the best level, for the profile
                saturation(srv.grpc_url, "grpc", name, x, sat_grpc["concurrency"], budget, shm)
            sat_grpc["cores_used"] = split.cores
            sat_http = sweep(srv.http_url, "http", name, x, levels, budget, shm)
            engine_ref = max(inproc["engine"].images_per_s, engine_again.images_per_s)
            row = {
                "model": name, "batch": batch, "engine": res.engine, "precision": res.precision,
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
                  f"| sat grpc {sat_grpc['images_per_s']:.1f} (c={sat_grpc['concurrency']}) http {sat_http['images_per_s']:.1f} (c={sat_http['concurrency']}) img/s  c/b {row['ratio_c_over_b_grpc']:.2f}/{row['ratio_c_over_b_http']:.2f} "
                  f"(cores: {' '.join(f'{k} {v}' for k, v in split.cores.items())})",
                  flush=True)
    return {"model": name, "engine": res.engine, "precision": res.precision, "candidates": res.candidates, "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18@32,resnet50@224")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--budget", type=float, default=3.0, help="seconds per measurement")
    ap.add_argument("--engine", default="auto", choices=CPU_ENGINES)
    ap.add_argument("--precision", default="auto", choices=CPU_PRECISIONS, help="fp32 keeps every candidate FP32")
    ap.add_argument("--concurrency", default="2,4,8,16,32", help="requests in flight swept for saturation")
    ap.add_argument("--no-shm", action="store_true", help="send tensors in the request body at saturation, not through shared memory")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    levels = [int(c) for c in args.concurrency.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        for spec in args.models.split(","):
            arch, size = spec.split("@")
            results.append(bench_model(arch, int(size), batches, args.budget, args.engine, args.precision, Path(tmp), levels, not args.no_shm))
    out = {"machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                       "python": platform.python_version(), "torch": torch.__version__},
           "budget_s": args.budget, "concurrency_levels": levels, "precision": args.precision, "shared_memory": not args.no_shm, "results": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
