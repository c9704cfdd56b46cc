#!/usr/bin/env python3
"""CPU serving performance per precision, side by side in one run.

For each model (resnet18@32, resnet50@224), each precision (fp32, bf16, int8: one build
each, as ``sft-engine build --precision P`` makes it, where the CPU runs it natively) and
each batch size (1, 8, 32) it measures:
  (a) eager PyTorch FP32 in-process (the seed's way to predict);
  (b) each precision's CPU engine in-process (the exact serving code, EngineRunner), timed
      interleaved with (a) and the other precisions, so their ratios come from one run;
  (c) the same engine served by the embedded Triton over gRPC and HTTP:
      closed loop at concurrency 1, and at saturation: the best throughput over a
      sweep of requests in flight (as perf_analyzer sweeps concurrency), sent by
      sft-engine's AsyncClient through system shared memory, dynamic batching on;
and top-1 accuracy of eager and of each engine on held-out labelled images (the gate
images of an INT8 build: none of them calibrated it). With ``--finetune DIR`` the
fine-tuned model is measured with its weights and holdout; other models get seeded
random weights and synthetic labelled images (speed and agreement only). Prints
images/s, p50 latency, the ratios b/a, between precisions and c/b, and writes JSON.

    python benchmarks/bench_cpu.py --finetune runs/demo-ft --json reports/bench_cpu.json
    python benchmarks/bench_cpu.py --precisions fp32 --json reports/bench_cpu_fp32.json
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from _fixture import embedded_server, random_weights

from sft_engine.engines.cpu.target import ENGINES as CPU_ENGINES, PRECISIONS as CPU_PRECISIONS
from sft_engine.engines.cpu.serving_model import EngineRunner
from sft_engine.timing import latency_stats, time_closed_loop, time_interleaved
from sft_engine.verify import ParityData


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


@dataclass
class Subject:
    """A model to measure: build settings, the eager model, and the labelled images accuracy is measured on.

    ``gate``: the held-out images an INT8 build of these settings is gated on (the
    labelled set minus its calibration images), so every precision's accuracy is
    measured on images no quantizer saw. ``trained``: the weights come from a fine-tune,
    so accuracy means something (with random weights only agreement with eager does).
    """

    name: str
    settings: dict
    model: torch.nn.Module
    gate: ParityData
    trained: bool


def subject(arch: str, size: int, work: Path, finetune_dir: Path | None) -> Subject:
    """The fine-tune's weights and holdout where ``finetune_dir`` matches, else seeded random weights and synthetic labelled images."""
    from sft_engine.build_config import BuildConfig, load_finetune_dir
    from sft_engine.engines.calibration import split_for_int8
    from sft_engine.finetune.synthetic import SyntheticDataset, make_synthetic_images
    from sft_engine.models import build_model, load_weights
    from sft_engine.verify import parity_inputs

    name = f"{arch}_{size}"
    settings = load_finetune_dir(finetune_dir) if finetune_dir is not None else None
    if settings is not None and (settings["arch"], settings["input_size"]) == (arch, size) and "calibration_dir" in settings:
        model = load_weights(build_model(arch, settings["num_classes"]), settings["weights"]).eval()
        trained = True
    else:  # random weights: the INT8 candidates still need labelled images to calibrate and gate
        labelled = work / f"labelled-{name}"
        make_synthetic_images(labelled, count=500, num_classes=10, image_size=size, seed=7)
        weights = work / f"{name}.safetensors"
        model = random_weights(weights, arch, 10)
        settings = {"arch": arch, "num_classes": 10, "labels": list(SyntheticDataset(10, 10, size).classes),
                    "input_size": size, "calibration_dir": labelled, "weights": weights}
        trained = False
    cfg = BuildConfig().merged(settings, "benchmark").validated()
    data = parity_inputs(cfg.preprocessing, 0, cfg.calibration_dir, labels=cfg.label_list)
    return Subject(name, settings, model, split_for_int8(data, 300, seed=0).gate, trained)


def accuracy(run, gate: ParityData, batch: int = 32) -> float:
    """Top-1 accuracy of ``run`` on the gate images."""
    preds = np.concatenate([run(np.ascontiguousarray(gate.inputs[i:i + batch])).argmax(1) for i in range(0, len(gate.inputs), batch)])
    return float((preds == gate.labels).mean())


def bench_model(subj: Subject, precisions: list[str], batches: list[int], budget: float, engine: str, work: Path,
                levels: list[int], shm: bool, int8_anyway: bool = False) -> dict:
    """Every precision built and served side by side: eager and each engine timed interleaved in-process, then each served."""
    from sft_engine.build import build
    from sft_engine.build_config import BuildConfig

    repo = work / "repo"
    max_batch = min(max(batches) * max(levels), 256)
    built: dict[str, dict] = {}
    runners = {}
    for precision in precisions:
        name = f"{subj.name}_{precision}"
        cfg = BuildConfig().merged(subj.settings, "benchmark").merged(
            {"name": name, "repository": repo, "max_batch_size": max_batch, "engine": engine, "precision": precision,
             "parity_samples": 16, "selection_budget_s": budget, "allow_int8_without_isa": int8_anyway}, "benchmark")
        t0 = time.perf_counter()
        res = build(cfg)
        print(f"# {name}: built {res.engine_label} in {time.perf_counter() - t0:.0f} s (candidates: "
              + ", ".join(f"{c['candidate']} {c.get('latency', {}).get('p50_ms', float('nan')):.1f} ms" for c in res.candidates) + ")",
              file=sys.stderr, flush=True)
        runners[precision] = EngineRunner(str(res.published.path)).run
        built[precision] = {"model": name, "engine": res.engine, "precision": res.precision, "candidates": res.candidates,
                            "gate": {k: res.parity.get(k) for k in ("samples", "top1_agreement", "max_abs_diff", "eager_accuracy", "engine_accuracy")}}
    torch.set_num_threads(os.cpu_count() or 1)

    def eager(x):
        with torch.inference_mode():
            return subj.model(torch.from_numpy(x)).numpy()

    acc = {"eager": accuracy(eager, subj.gate), **{p: accuracy(r, subj.gate) for p, r in runners.items()}}
    print(f"# {subj.name}: top-1 on {len(subj.gate.inputs)} held-out images ({'fine-tuned' if subj.trained else 'random weights: not meaningful'}): "
          + ", ".join(f"{k} {v:.2%}" for k, v in acc.items()), file=sys.stderr, flush=True)
    rows = []
    with embedded_server(repo) as srv:
        for batch in batches:
            x = np.ascontiguousarray(np.resize(subj.gate.inputs, (batch, *subj.gate.inputs.shape[1:])))
            inproc = time_interleaved({"eager": eager, **runners}, x, budget_s=(1 + len(runners)) * budget)
            for precision, runner in runners.items():
                name = built[precision]["model"]
                grpc_c1 = time_closed_loop(grpc_call_factory(srv.grpc_url, name, x.shape)(), x, budget)
                http_c1 = time_closed_loop(http_call_factory(srv.http_url, name, x.shape)(), x, budget)
                engine_again = time_closed_loop(runner, x, budget)  # right after, so c/b compares like with like
                sat_grpc = sweep(srv.grpc_url, "grpc", name, x, levels, budget, shm)
                with CpuSplit(srv.pid) as split:  # type: ignore[arg-type]  # at the best level, for the profile
                    saturation(srv.grpc_url, "grpc", name, x, sat_grpc["concurrency"], budget, shm)
                sat_grpc["cores_used"] = split.cores
                sat_http = sweep(srv.http_url, "http", name, x, levels, budget, shm)
                engine_ref = max(inproc[precision].images_per_s, engine_again.images_per_s)
                best_p50 = min(inproc[precision].p50_ms, engine_again.p50_ms)
                row = {
                    "model": subj.name, "batch": batch, "precision": precision, "engine": built[precision]["engine"],
                    "eager": inproc["eager"].to_dict(), "engine_inproc": inproc[precision].to_dict(),
                    "engine_inproc_again": engine_again.to_dict(), "grpc_c1": grpc_c1.to_dict(), "http_c1": http_c1.to_dict(),
                    "grpc_saturation": sat_grpc, "http_saturation": sat_http,
                    "accuracy": acc[precision], "eager_accuracy": acc["eager"],
                    "ratio_b_over_a": round(inproc[precision].images_per_s / inproc["eager"].images_per_s, 3),
                    "ratio_c_over_b_grpc": round(sat_grpc["images_per_s"] / engine_ref, 3),
                    "ratio_c_over_b_http": round(sat_http["images_per_s"] / engine_ref, 3),
                    "serving_added_p50_ms_grpc": round(grpc_c1.p50_ms - best_p50, 3),
                    "serving_added_p50_ms_http": round(http_c1.p50_ms - best_p50, 3),
                }
                for other in runners:  # in-process ratios between precisions, from the same interleaved run
                    if other != precision:
                        row[f"ratio_vs_{other}"] = round(inproc[precision].images_per_s / inproc[other].images_per_s, 3)
                rows.append(row)
                print(f"{subj.name:14s} {precision:5s} b={batch:<3d} eager {row['eager']['images_per_s']:8.1f} img/s  engine "
                      f"{row['engine_inproc']['images_per_s']:8.1f}  b/a {row['ratio_b_over_a']:.2f}"
                      + "".join(f"  /{o} {row[f'ratio_vs_{o}']:.2f}" for o in runners if o != precision)
                      + f"  | c1 p50 grpc {grpc_c1.p50_ms:.2f} ms http {http_c1.p50_ms:.2f} ms (engine {best_p50:.2f} ms) "
                      f"| sat grpc {sat_grpc['images_per_s']:.1f} (c={sat_grpc['concurrency']}) http {sat_http['images_per_s']:.1f} img/s  "
                      f"c/b {row['ratio_c_over_b_grpc']:.2f}/{row['ratio_c_over_b_http']:.2f} "
                      f"(cores: {' '.join(f'{k} {v}' for k, v in split.cores.items())})  top-1 {acc[precision]:.2%}",
                      flush=True)
    return {"model": subj.name, "trained": subj.trained, "gate_images": int(len(subj.gate.inputs)), "accuracy": acc,
            "builds": built, "rows": rows}


def available_precisions(asked: str, int8_anyway: bool = False) -> list[str]:
    """The precisions asked for, less those this CPU does not run natively (said on stderr); ``int8_anyway``: keep INT8."""
    from sft_engine.engines.cpu.isa import cpu_has_native_bf16
    from sft_engine.engines.cpu.isa import cpu_int8_isa

    native = {"fp32": True, "bf16": cpu_has_native_bf16(), "int8": int8_anyway or cpu_int8_isa() is not None, "auto": True}
    out = []
    for p in asked.split(","):
        if p not in CPU_PRECISIONS:
            raise SystemExit(f"error: unknown precision {p!r} (choose from {', '.join(CPU_PRECISIONS)})")
        if native[p]:
            out.append(p)
        else:
            print(f"# {p} skipped: this CPU does not run it natively", file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18@32,resnet50@224")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--budget", type=float, default=3.0, help="seconds per measurement")
    ap.add_argument("--engine", default="auto", choices=CPU_ENGINES)
    ap.add_argument("--precisions", default="fp32,bf16,int8",
                    help="comma-separated: one build each, measured side by side (auto: the build's own choice)")
    ap.add_argument("--finetune", type=Path, metavar="DIR",
                    help="a sft-engine finetune output (with a holdout of >= 232 images): its model is measured with its "
                         "weights, and accuracy on its held-out images; other models get random weights")
    ap.add_argument("--allow-emulated-int8", action="store_true",
                    help="measure INT8 on a CPU without INT8 instructions too (emulated: what such a CPU reaches)")
    ap.add_argument("--concurrency", default="2,4,8,16,32", help="requests in flight swept for saturation")
    ap.add_argument("--no-shm", action="store_true", help="send tensors in the request body at saturation, not through shared memory")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    levels = [int(c) for c in args.concurrency.split(",")]
    precisions = available_precisions(args.precisions, args.allow_emulated_int8)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        for spec in args.models.split(","):
            arch, size = spec.split("@")
            work = Path(tmp) / spec.replace("@", "_")
            work.mkdir()
            subj = subject(arch, int(size), work, args.finetune)
            results.append(bench_model(subj, precisions, batches, args.budget, args.engine, work, levels, not args.no_shm,
                                       args.allow_emulated_int8))
    from sft_engine.engines.cpu.isa import cpu_int8_isa

    out = {"machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                       "int8_isa": cpu_int8_isa(), "python": platform.python_version(), "torch": torch.__version__},
           "budget_s": args.budget, "concurrency_levels": levels, "precisions": precisions, "shared_memory": not args.no_shm,
           "results": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
