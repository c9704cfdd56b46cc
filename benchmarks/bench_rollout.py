#!/usr/bin/env python3
"""What does a rollout cost the traffic? Open-loop load with and without a rollout, side by side.

Builds two versions of resnet18@32, serves the repository in explicit model-control
mode, then runs the same constant-rate open-loop load test twice: once undisturbed,
once with `rollout` from version 1 to 2 in the middle. Prints requests, failures and
latency percentiles (from the intended send) for both, and the rollout's step times.

    python benchmarks/bench_rollout.py --rate 50 --duration 15
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from _fixture import build_random, embedded_server, random_weights

from sft_engine.loadtest import LoadSpec, LoadTestConfig, parse_endpoint, run_loadtest
from sft_engine.ops.model_control import ModelControl
from sft_engine.ops.modelconfig import disk_config, override
from sft_engine.ops.rollout.runner import RolloutPlan, rollout

MODEL = "tiny"


def summary(step) -> dict:
    lat = step.latency_ms
    return {"requests": step.requests.scheduled, "failed": step.requests.failed, "p50_ms": lat.get(50.0),
            "p99_ms": lat.get(99.0), "max_ms": lat.max_ms}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out: dict = {"rate": args.rate, "duration_s": args.duration}
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        work = Path(tmp)
        random_weights(work / "w.safetensors", "resnet18", 4)
        repo = work / "repo"
        for _ in range(2):  # two versions of the same engine
            build_random(repo, work / "w.safetensors", arch="resnet18", num_classes=4, input_size=32, max_batch_size=8,
                         name=MODEL, engine="onnxruntime", parity_samples=8)
        with embedded_server(repo, model_control_mode="explicit") as srv, ModelControl(srv.http_url) as control:
            control.load(MODEL, override(disk_config(repo, MODEL), [1]))
            control.wait_gone(MODEL, [2], 60)
            endpoint = replace(parse_endpoint(srv.grpc_url), metrics_url=srv.metrics_url)
            load = LoadTestConfig(endpoints=(endpoint,), model=MODEL, workers=1, load=LoadSpec(
                mode="open", rates=(args.rate,), arrival="constant", duration_s=args.duration, warmup_s=1.0, window_s=1.0))
            out["no_rollout"] = summary(run_loadtest(load).steps[0])
            result: dict = {}
            thread = threading.Thread(target=lambda: result.setdefault("load", run_loadtest(load)), daemon=True)
            thread.start()
            time.sleep(min(3.0, args.duration / 4))
            done = rollout(RolloutPlan(repo, MODEL, 2), control)
            thread.join(timeout=args.duration + 120)
            out["through_rollout"] = summary(result["load"].steps[0])
            out["rollout"] = {"outcome": done.outcome, "steps": {s.name: round(s.seconds, 2) for s in done.steps}}
    for key in ("no_rollout", "through_rollout"):
        row = out[key]
        print(f"{key:16s} requests {row['requests']:5d}  failed {row['failed']}  p50 {row['p50_ms']:.1f} ms  "
              f"p99 {row['p99_ms']:.1f} ms  max {row['max_ms']:.1f} ms")
    print(f"rollout {out['rollout']['outcome']}: " + ", ".join(f"{k} {v} s" for k, v in out["rollout"]["steps"].items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
