"""Is the load generator ever the bottleneck? The harness against a hand-written tritonclient loop.

Against a Python-backend identity model on the embedded tritonserver, at the same
concurrency, interleaved (loop, harness, loop, harness ...) so that drift on a shared
machine hits both alike:

* **loop**: a tight asyncio ``tritonclient.grpc.aio`` (or ``.http.aio``) loop - N
  coroutines awaiting ``client.infer`` back to back - counting answers received in
  the measured interval;
* **harness**: ``run_loadtest`` in closed loop at the same concurrency (default
  transport: the request prebuilt once); once more with ``--transport tritonclient``.

Printed: both request rates, their ratio (target >= 0.90), and whether the harness's
*reported* throughput is within 5% of what the server itself counted in the same
interval (Triton's statistics API; checked the same way for the loop). A last run
drives the harness open-loop at 80% of the loop's rate and reports achieved/offered
and the send lag.

``--stall-experiment`` instead runs the coordinated-omission experiment: a model that
stalls once for S ms, measured open-loop at a constant rate and closed-loop at
concurrency 1 and 4, the stall injected 0.5 s into each measured interval.

    python benchmarks/bench_loadtest.py --concurrency 4 --duration 5 --json bench.json
    python benchmarks/bench_loadtest.py --stall-experiment --stall-ms 1000 --rate 100 --duration 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

_IDENTITY_CONFIG = """
name: "identity"
backend: "python"
max_batch_size: 64
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 16 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 16 ] } ]
dynamic_batching { }
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""

_IDENTITY_MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", data)]))
        return out
'''


_STALL_MODEL = '''
import os
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.flag = os.path.join(args["model_repository"], "STALL_MS")

    def execute(self, requests):
        if os.path.exists(self.flag):
            with open(self.flag) as f:
                text = f.read().strip()
            if text:  # written atomically by the benchmark; empty = not yet
                os.remove(self.flag)
                time.sleep(float(text) / 1000.0)
        out = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", data)]))
        return out
'''


def write_repository(root: Path) -> Path:
    for name, code in (("identity", _IDENTITY_MODEL), ("stall", _STALL_MODEL)):
        model = root / name
        (model / "1").mkdir(parents=True)
        config = _IDENTITY_CONFIG.replace('name: "identity"', f'name: "{name}"')
        if name == "stall":
            config = config.replace("dynamic_batching { }\n", "")
        (model / "config.pbtxt").write_text(config)
        (model / "1" / "model.py").write_text(code)
    return root


def stall_experiment(srv: object, repo: Path, stall_ms: float, rate: float, duration_s: float, warmup_s: float) -> list[dict[str, object]]:
    """Open loop vs closed loop against the same one-off stall."""
    from sft_engine.loadtest import LoadSpec, LoadTestConfig, parse_endpoint, run_loadtest

    from sft_engine.loadtest.progress import Progress

    class Trigger:
        """Drops the stall flag 0.5 s into the measured interval, once."""

        def __init__(self) -> None:
            self.fired = False

        def __call__(self, p: Progress) -> None:
            if not self.fired and p.phase == "measure" and p.phase_elapsed_s >= 0.5:
                tmp = repo / "stall" / ".STALL_MS.tmp"
                tmp.write_text(f"{stall_ms:g}")
                os.replace(tmp, repo / "stall" / "STALL_MS")
                self.fired = True

    rows = []
    for mode, level in (("open", rate), ("closed", 1), ("closed", 4)):
        trigger = Trigger()

        load = LoadSpec(mode=mode, rates=(float(level),) if mode == "open" else (), concurrency=(int(level),),
                        arrival="constant", duration_s=duration_s, warmup_s=warmup_s, timeout_ms=10_000)
        config = LoadTestConfig(endpoints=(parse_endpoint(srv.grpc_url),), model="stall", load=load, workers=1)  # type: ignore[attr-defined]
        step = run_loadtest(config, progress=trigger).steps[0]
        lat = step.latency_ms
        rows.append({
            "mode": step.label, "requests": step.requests.scheduled, "throughput_rps": step.throughput_rps,
            "p50_ms": lat.get(50.0), "p90_ms": lat.get(90.0), "p99_ms": lat.get(99.0), "p99.9_ms": lat.get(99.9),
            "max_ms": lat.max_ms, "over_half_stall": step.histogram("latency").count_above_us(stall_ms / 2 * 1000),
            "service_p99_ms": step.service_time_ms.get(99.0), "send_lag_p99_ms": step.send_lag_ms.get(99.0),
        })
    return rows


def server_successes(http_url: str, model: str = "identity") -> int:
    with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/stats", timeout=5) as resp:
        stats = json.loads(resp.read())
    return int(stats["model_stats"][0]["inference_stats"]["success"]["count"])


async def _tight_loop(url: str, protocol: str, concurrency: int, warmup_s: float, duration_s: float) -> tuple[int, float, float]:
    """N coroutines calling infer back to back; answers received inside [start, end)."""
    if protocol == "grpc":
        import tritonclient.grpc.aio as client_mod
    else:
        import tritonclient.http.aio as client_mod
    client = client_mod.InferenceServerClient(url) if protocol == "grpc" else client_mod.InferenceServerClient(url, conn_limit=concurrency)
    data = np.random.default_rng(0).random((1, 16), dtype=np.float32)
    inp = client_mod.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(data)
    start = time.monotonic() + warmup_s
    end = start + duration_s
    counted = 0

    async def user() -> None:
        nonlocal counted
        while True:
            await client.infer("identity", [inp])
            now = time.monotonic()
            if start <= now < end:
                counted += 1
            elif now >= end:
                return

    await asyncio.gather(*(user() for _ in range(concurrency)))
    await client.close()
    return counted, start, end


def run_loop(srv: object, protocol: str, concurrency: int, warmup_s: float, duration_s: float) -> dict[str, float]:
    url = srv.grpc_url if protocol == "grpc" else srv.http_url  # type: ignore[attr-defined]
    result: dict[str, float] = {}

    async def measured() -> None:
        task = asyncio.create_task(_tight_loop(url, protocol, concurrency, warmup_s, duration_s))
        await asyncio.sleep(warmup_s)
        before = await asyncio.to_thread(server_successes, srv.http_url)  # type: ignore[attr-defined]
        await asyncio.sleep(duration_s)
        after = await asyncio.to_thread(server_successes, srv.http_url)  # type: ignore[attr-defined]
        counted, _, _ = await task
        result.update(rps=counted / duration_s, server_rps=(after - before) / duration_s)

    cpu0 = time.process_time()
    asyncio.run(measured())
    result["client_cpu"] = (time.process_time() - cpu0) / (warmup_s + duration_s)
    return result


def run_harness(srv: object, protocol: str, mode: str, level: float, warmup_s: float, duration_s: float, workers: int,
                transport: str = "raw") -> dict[str, float]:
    from sft_engine.loadtest import LoadSpec, LoadTestConfig, parse_endpoint, run_loadtest

    url = srv.grpc_url if protocol == "grpc" else srv.http_url  # type: ignore[attr-defined]
    load = LoadSpec(mode=mode, concurrency=(int(level),) if mode == "closed" else (1,), rates=(level,) if mode == "open" else (),
                    duration_s=duration_s, warmup_s=warmup_s, window_s=1.0)
    config = LoadTestConfig(endpoints=(parse_endpoint(url, protocol),), model="identity", load=load, workers=workers, transport=transport)
    total_before = server_successes(srv.http_url)  # type: ignore[attr-defined]
    result = run_loadtest(config)
    total_after = server_successes(srv.http_url)  # type: ignore[attr-defined]
    step = result.steps[0]
    recon = step.reconciliation
    return {
        "rps": step.throughput_rps,
        "offered_rps": step.offered_rps,
        "server_rps": step.server.throughput_rps if step.server else float("nan"),
        "client_total": float(recon.client_sent) if recon else float("nan"),
        "server_total": float(total_after - total_before),
        "send_lag_p99_ms": step.send_lag_ms.get(99.0) or 0.0,
        "worker_cpu": max(step.generator.worker_cpu or [0.0]),
        "latency_p50_ms": step.latency_ms.get(50.0) or float("nan"),
        "latency_p99_ms": step.latency_ms.get(99.0) or float("nan"),
        "verdict": result.verdict,  # type: ignore[dict-item]
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=2, help="interleaved loop/harness pairs (medians reported)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    parser.add_argument("--stall-experiment", action="store_true", help="run the coordinated-omission experiment instead")
    parser.add_argument("--stall-ms", type=float, default=1000.0)
    parser.add_argument("--rate", type=float, default=100.0, help="open-loop rate of the stall experiment")
    args = parser.parse_args(argv)

    from _fixture import embedded_server

    if args.stall_experiment:
        with tempfile.TemporaryDirectory() as tmp:
            repo = write_repository(Path(tmp) / "repo")
            with embedded_server(repo) as srv:
                rows = stall_experiment(srv, repo, args.stall_ms, args.rate, args.duration, args.warmup)
        print(f"stall of {args.stall_ms:g} ms, 0.5 s into a {args.duration:g} s measured interval")
        print("| load | requests | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | requests > S/2 |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['mode']} | {r['requests']} | {r['throughput_rps']:.0f} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | "
                  f"{r['p99_ms']:.1f} | {r['p99.9_ms']:.1f} | {r['max_ms']:.0f} | {r['over_half_stall']} |")
        if args.json:
            args.json.write_text(json.dumps({"stall_ms": args.stall_ms, "rate": args.rate, "duration_s": args.duration, "rows": rows}, indent=2) + "\n")
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        repo = write_repository(Path(tmp) / "repo")
        with embedded_server(repo) as srv:
            loops, harnesses = [], []
            for i in range(args.repeat):
                loops.append(run_loop(srv, args.protocol, args.concurrency, args.warmup, args.duration))
                harnesses.append(run_harness(srv, args.protocol, "closed", args.concurrency, args.warmup, args.duration, args.workers))
                print(f"pair {i + 1}: loop {loops[-1]['rps']:,.0f} req/s, harness {harnesses[-1]['rps']:,.0f} req/s", file=sys.stderr)
            loop_rps = statistics.median(r["rps"] for r in loops)
            harness_rps = statistics.median(r["rps"] for r in harnesses)
            open_rate = round(0.8 * loop_rps)
            open_run = run_harness(srv, args.protocol, "open", open_rate, args.warmup, args.duration, args.workers)
            # the same closed loop through tritonclient's own aio clients (--transport tritonclient)
            reference = run_harness(srv, args.protocol, "closed", args.concurrency, args.warmup, args.duration, args.workers, "tritonclient")

    reported_vs_server = [h["rps"] / h["server_rps"] for h in harnesses]
    loop_vs_server = [lp["rps"] / lp["server_rps"] for lp in loops]
    ratio = harness_rps / loop_rps
    figures = {
        "protocol": args.protocol,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "repeat": args.repeat,
        "workers": args.workers,
        "loop_rps": [round(r["rps"], 1) for r in loops],
        "harness_rps": [round(r["rps"], 1) for r in harnesses],
        "loop_rps_median": round(loop_rps, 1),
        "harness_rps_median": round(harness_rps, 1),
        "ratio": round(ratio, 4),
        "ratio_target": 0.90,
        "ratio_ok": ratio >= 0.90,
        "harness_reported_vs_server": [round(x, 4) for x in reported_vs_server],
        "harness_within_5pct_of_server": all(abs(x - 1.0) <= 0.05 for x in reported_vs_server),
        "harness_client_total_vs_server_total": [(int(h["client_total"]), int(h["server_total"])) for h in harnesses],
        "loop_reported_vs_server": [round(x, 4) for x in loop_vs_server],
        "harness_send_lag_p99_ms": [round(h["send_lag_p99_ms"], 3) for h in harnesses],
        "harness_worker_cpu": [round(h["worker_cpu"], 3) for h in harnesses],
        "loop_client_cpu": [round(lp["client_cpu"], 3) for lp in loops],
        "harness_tritonclient_transport_rps": round(reference["rps"], 1),
        "harness_tritonclient_transport_worker_cpu": round(reference["worker_cpu"], 3),
        "open_loop": {
            "offered_rps": open_run["offered_rps"],
            "achieved_rps": open_run["rps"],
            "achieved_vs_offered": round(open_run["rps"] / open_run["offered_rps"], 4) if open_run["offered_rps"] else None,
            "reported_vs_server": round(open_run["rps"] / open_run["server_rps"], 4) if open_run["server_rps"] else None,
            "send_lag_p99_ms": open_run["send_lag_p99_ms"],
            "latency_p50_ms": open_run["latency_p50_ms"],
            "latency_p99_ms": open_run["latency_p99_ms"],
            "verdict": open_run["verdict"],
        },
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average": list(os.getloadavg())},
    }
    print(f"tight tritonclient loop : {loop_rps:10,.1f} req/s (median of {args.repeat})")
    print(f"sft-engine loadtest     : {harness_rps:10,.1f} req/s")
    print(f"ratio harness/loop      : {ratio:10.3f}  (target >= 0.90: {'ok' if ratio >= 0.90 else 'MISSED'})")
    print(f"harness, tritonclient transport: {reference['rps']:,.1f} req/s (one run)")
    print(f"reported vs server count: {', '.join(f'{x:.4f}' for x in reported_vs_server)}  "
          f"(within 5%: {'yes' if figures['harness_within_5pct_of_server'] else 'NO'})")
    ol = figures["open_loop"]
    print(f"open loop at {ol['offered_rps']:,.0f}/s   : achieved {ol['achieved_rps']:,.1f}/s ({ol['achieved_vs_offered']}), "
          f"send lag p99 {ol['send_lag_p99_ms']:.2f} ms, {ol['verdict']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if figures["ratio_ok"] and figures["harness_within_5pct_of_server"] else 1


if __name__ == "__main__":
    sys.exit(main())
