#!/usr/bin/env python3
"""How much of "served at saturation" is the load generator? One engine, several clients.

On a small machine the client shares the server's cores, so the CPU it spends per
request is taken from the engine. This builds resnet18@32 (the build's own engine
choice, max batch 128), serves it, and drives it at batch 8 with:
  - tritonclient's gRPC client, one per thread (what the first CPU figures used);
  - sft-engine's AsyncClient with the tensors in the request body;
  - sft-engine's AsyncClient with system shared memory (what bench_cpu.py uses);
  - sft-engine's load-test harness (closed loop, pre-serialized gRPC requests sent from
    a worker process: what `sft-engine loadtest` does);
over gRPC and HTTP at several numbers of requests in flight, and prints images/s with
the cores used by the stub, tritonserver and the client. It also prints the engine
in-process at batch 8 and 128, the ceiling that merged batches could reach; c/b is
against the faster of two in-process runs at batch 8, one before and one after the
served runs (the conservative ratio on a noisy machine).

    python benchmarks/bench_saturation_clients.py --json reports/bench_saturation_clients.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fixture import build_random, embedded_server  # noqa: E402
from bench_cpu import CpuSplit, grpc_call_factory, saturation  # noqa: E402

from sft_engine.engines.cpu.serving_model import EngineRunner  # noqa: E402
from sft_engine.timing import time_closed_loop  # noqa: E402


def threaded_tritonclient(url: str, model: str, x: np.ndarray, concurrency: int, budget_s: float) -> float:
    """images/s with one tritonclient gRPC client per thread, each in a closed loop."""
    make = grpc_call_factory(url, model, x.shape)
    counts = [0] * concurrency
    ready = threading.Barrier(concurrency + 1)
    stop = [float("inf")]

    def worker(i: int) -> None:
        call = make()
        call(x)
        ready.wait()
        while time.perf_counter() < stop[0]:
            call(x)
            counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    ready.wait()
    t0 = time.perf_counter()
    stop[0] = t0 + budget_s
    for t in threads:
        t.join()
    return sum(counts) * len(x) / (time.perf_counter() - t0)


def harness(url: str, model: str, batch: int, concurrency: int, budget_s: float) -> float:
    """images/s from the load-test harness in closed-loop mode (its worker process is a child of this one)."""
    from sft_engine.loadtest import LoadSpec, LoadTestConfig, ValiditySpec, parse_endpoint, run_loadtest

    load = LoadSpec(mode="closed", concurrency=(concurrency,), batch_size=batch, duration_s=budget_s, warmup_s=1.0)
    config = LoadTestConfig(endpoints=(parse_endpoint(url, "grpc"),), model=model, load=load,
                            validity=ValiditySpec(max_send_lag_p99_ms=1000.0), workers=1)
    return run_loadtest(config).steps[0].inferences_per_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--concurrency", default="8,16,32")
    ap.add_argument("--budget", type=float, default=4.0, help="seconds per measurement")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-clients-") as tmp:
        repo = Path(tmp) / "repo"
        res = build_random(repo, arch="resnet18", num_classes=10, input_size=32, max_batch_size=128, name="r18", parity_samples=16)
        print(f"# engine: {res.engine_label}", file=sys.stderr)
        runner = EngineRunner(str(res.published.path))
        inproc = {}
        for b in (args.batch, 128):
            inproc[b] = time_closed_loop(runner.run, np.random.rand(b, 3, 32, 32).astype(np.float32), args.budget).images_per_s
            print(f"engine in-process, batch {b}: {inproc[b]:,.0f} img/s", flush=True)
        x = np.random.default_rng(0).standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
        with embedded_server(repo) as srv:
            urls = {"grpc": srv.grpc_url, "http": srv.http_url}
            for conc in levels:
                cases = [("tritonclient gRPC, threads", "grpc", lambda c=conc: threaded_tritonclient(srv.grpc_url, "r18", x, c, args.budget)),
                         ("load-test harness, gRPC, worker process", "grpc", lambda c=conc: harness(srv.grpc_url, "r18", args.batch, c, args.budget))]
                for proto in ("grpc", "http"):
                    for shm in (False, True):
                        label = f"AsyncClient {proto}, {'shared memory' if shm else 'tensors in the body'}"
                        cases.append((label, proto, lambda p=proto, s=shm, c=conc: saturation(urls[p], p, "r18", x, c, args.budget, s)["images_per_s"]))
                for label, proto, fn in cases:
                    with CpuSplit(srv.pid) as split:  # type: ignore[arg-type]
                        ips = fn()
                    row = {"client": label, "protocol": proto, "in_flight": conc, "images_per_s": round(ips, 1), "cores": split.cores}
                    rows.append(row)
                    print(f"{label:45s} in flight {conc:3d}: {ips:9,.0f} img/s  c/b {ips / inproc[args.batch]:.2f} (so far)  "
                          f"(cores: {' '.join(f'{k} {v}' for k, v in split.cores.items())})", flush=True)
        after = time_closed_loop(runner.run, np.random.rand(args.batch, 3, 32, 32).astype(np.float32), args.budget).images_per_s
        print(f"engine in-process, batch {args.batch}, again: {after:,.0f} img/s", flush=True)
        reference = max(inproc[args.batch], after)
        inproc["after"] = after
        print(f"c/b against {reference:,.0f} img/s:")
        for row in rows:
            row["c_over_b"] = round(row["images_per_s"] / reference, 3)
            print(f"  {row['client']:45s} in flight {row['in_flight']:3d}: c/b {row['c_over_b']:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"engine": res.engine, "precision": res.precision, "batch": args.batch,
                                         "engine_inproc_images_per_s": inproc, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
