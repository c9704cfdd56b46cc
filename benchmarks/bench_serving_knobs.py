#!/usr/bin/env python3
"""Which serving knob moves CPU throughput at saturation? One model, several configurations.

Builds resnet18@32 (max batch 32), copies it into variants in a scratch repository
(instance count, ONNX Runtime thread spinning, dynamic-batching queue delay), serves
them all from one embedded tritonserver and drives each with the load-test harness
(closed loop, raw gRPC from a worker process) at batch 8. Prints images/s, the ratio to
the same engine in-process at batch 8 (c/b), and the average batch Triton executed.

    python benchmarks/bench_serving_knobs.py --json reports/bench_serving_knobs.json
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
from _fixture import build_random, embedded_server, random_weights

from sft_engine.engines.cpu.serving_model import EngineRunner
from sft_engine.loadtest import LoadSpec, LoadTestConfig, ValiditySpec, parse_endpoint, run_loadtest
from sft_engine.timing import time_closed_loop

#: name → (instances, allow_spinning, queue delay µs, requests in flight)
VARIANTS = {
    "built (1 instance, spinning, 200 us)": (1, True, 200, 4),
    "same, 8 requests in flight": (1, True, 200, 8),
    "2 instances x 1 thread": (2, True, 200, 4),
    "no thread spinning": (1, False, 200, 4),
    "queue delay 0": (1, True, 0, 4),
    "queue delay 3000 us": (1, True, 3000, 4),
}


def make_variant(repo: Path, base: str, name: str, instances: int, spinning: bool, delay_us: int) -> None:
    src, dst = repo / base, repo / name
    shutil.copytree(src, dst)
    config = (src / "config.pbtxt").read_text().replace(f'name: "{base}"', f'name: "{name}"')
    config = re.sub(r"count: \d+", f"count: {instances}", config, count=1)
    config = re.sub(r"max_queue_delay_microseconds: \d+", f"max_queue_delay_microseconds: {delay_us}", config)
    (dst / "config.pbtxt").write_text(config)
    engine = dst / "1" / "engine.json"
    engine.write_text(json.dumps(dict(json.loads(engine.read_text()), allow_spinning=spinning)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-knobs-") as tmp:
        work = Path(tmp)
        random_weights(work / "w.safetensors", "resnet18", 10)
        repo = work / "repo"
        build_random(repo, work / "w.safetensors", arch="resnet18", num_classes=10, input_size=32, max_batch_size=32,
                     name="base", engine="onnxruntime", parity_samples=4)
        names = {}
        for i, (label, (instances, spinning, delay, _)) in enumerate(VARIANTS.items()):
            names[label] = f"v{i}"
            make_variant(repo, "base", f"v{i}", instances, spinning, delay)
        shutil.rmtree(repo / "base")
        x = np.random.default_rng(0).standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
        inproc = time_closed_loop(EngineRunner(str(repo / "v0" / "1")).run, x, 3.0).images_per_s
        print(f"engine in-process, batch {args.batch}: {inproc:.0f} img/s", flush=True)
        with embedded_server(repo) as srv:
            for label, (_, _, _, in_flight) in VARIANTS.items():
                model = names[label]
                load = LoadSpec(mode="closed", concurrency=(in_flight,), batch_size=args.batch, duration_s=args.duration, warmup_s=1.0)
                config = LoadTestConfig(endpoints=(parse_endpoint(srv.grpc_url, "grpc"),), model=model, load=load,
                                        validity=ValiditySpec(max_send_lag_p99_ms=1000.0), workers=1)
                step = run_loadtest(config).steps[0]
                with urllib.request.urlopen(f"http://{srv.http_url}/v2/models/{model}/stats") as resp:
                    stats = json.load(resp)["model_stats"][0]
                avg_batch = stats["inference_count"] / max(1, stats["execution_count"])
                row = {"variant": label, "images_per_s": round(step.inferences_per_s, 1), "c_over_b": round(step.inferences_per_s / inproc, 3),
                       "p50_ms": step.latency_ms.get(50.0), "avg_executed_batch": round(avg_batch, 1)}
                rows.append(row)
                print(f"{label:38s} {row['images_per_s']:8.0f} img/s  c/b {row['c_over_b']:.2f}  p50 {row['p50_ms']:.2f} ms  "
                      f"avg executed batch {row['avg_executed_batch']}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"engine_inproc_images_per_s": inproc, "batch": args.batch, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
