"""Eager FP32 (TF32 off and on) vs the compiled FP16 engine on one GPU: images/s and the share of the FP16 peak.

    python benchmarks/bench_gpu.py                      # resnet50 @ 224, batches 1, 8, 64, 256
    python benchmarks/bench_gpu.py --arch resnet18 --batches 1,32 --json out.json

The baseline is named truthfully: cuDNN runs FP32 convolutions in TF32 by default on
Ampere and later (``torch.backends.cudnn.conv.fp32_precision`` defaults to ``"tf32"``,
``torch.backends.cudnn.allow_tf32`` to True in the legacy API), so "eager FP32" is
measured twice, with TF32 off (true FP32, ``"ieee"``) and on (PyTorch's default), and the
FP16 engine's speed-up is given against both.

The FP16 engine is what the GPU targets publish: a TensorRT plan built by
``sft_engine.engines.tensorrt.target.compile_plan`` when torch_tensorrt imports, else the
frozen FP16 TorchScript of the ``torchscript-gpu`` target. Inputs live on the GPU
(FP32 for eager, FP16 for the engine), so the figures are compute throughput, not
PCIe or serving throughput. Timing: CUDA events around blocks of back-to-back calls,
median over blocks, after a warmup that also lets cuDNN pick its algorithms.

Peak share = images/s × FLOP per image ÷ dense FP16 tensor peak. FLOP per image is
counted with ``torch.utils.flop_counter`` (ResNet-50 at 224²: ≈ 8.2 GFLOP); the peak
comes from the GPU's name (H100 SXM / H200: 989 TFLOP/s dense) or ``--peak-tflops``.

Without a CUDA device it prints one line and exits 0, so CI can run it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

#: dense (no sparsity) FP16 tensor-core peak, TFLOP/s, by a substring of the device name; first match wins
PEAK_FP16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("H800", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("T4", 65.0),
)


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_FP16_TFLOPS:
        if key in device_name:
            return value
    return None


def set_tf32(enabled: bool) -> str:
    """Allow (or forbid) TF32 for FP32 convolutions and matmuls; returns the API used.

    torch ≥ 2.9 has per-backend ``fp32_precision`` ("tf32" / "ieee") and refuses a mix of
    it with the legacy ``allow_tf32`` flags, so the new API is used wherever it exists.
    """
    import torch

    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        value = "tf32" if enabled else "ieee"
        conv.fp32_precision = value
        torch.backends.cuda.matmul.fp32_precision = value
        return f"fp32_precision={value}"
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
    return f"allow_tf32={enabled}"


def tf32_default() -> str:
    """What this torch does with FP32 convolutions before anything is set (recorded in the JSON)."""
    import torch

    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return f"cudnn.conv.fp32_precision={conv.fp32_precision}"
    return f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}"


#: (JSON key, column title) of the three measured variants
VARIANTS = (("eager_fp32_img_s", "eager FP32 (TF32 off)"), ("eager_tf32_img_s", "eager FP32 (TF32 on, default)"), ("fp16_img_s", "FP16 engine"))


def table(rows: list[dict]) -> str:
    """The Markdown table of a run: images/s, peak share of each variant, FP16 speed-up against both baselines."""
    head = "| batch | " + " | ".join(f"{title} img/s | share of FP16 peak" for _, title in VARIANTS) + " | FP16 vs TF32 off | FP16 vs TF32 on |"
    lines = [head, "|" + "------:|" * (1 + 2 * len(VARIANTS) + 2)]
    for r in rows:
        cells = [f"{r['batch']}"]
        for key, _ in VARIANTS:
            share = r.get(key.replace("_img_s", "_peak_fraction"))
            cells += [f"{r[key]:,.0f}", f"{share:.1%}" if share is not None else "n/a"]
        cells += [f"{r['fp16_img_s'] / r['eager_fp32_img_s']:.2f}x", f"{r['fp16_img_s'] / r['eager_tf32_img_s']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def flop_per_image(model, shape: tuple[int, ...], device) -> float:
    """FLOP of one forward pass at batch 1 (2 × multiply-accumulates), counted by PyTorch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((1, *shape), device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return float(counter.get_total_flops())


def time_on_gpu(fn: Callable, x, seconds: float, warmup: int = 10) -> float:
    """Median seconds per call of ``fn(x)``, timed with CUDA events over blocks of calls."""
    import torch

    with torch.inference_mode():
        for _ in range(warmup):
            fn(x)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(x)
        end.record()
        end.synchronize()
        once_ms = max(start.elapsed_time(end), 1e-3)
        per_block = max(1, int(50.0 / once_ms))  # ~50 ms blocks
        samples: list[float] = []
        deadline = time.perf_counter() + seconds
        while len(samples) < 3 or (time.perf_counter() < deadline and len(samples) < 200):
            start.record()
            for _ in range(per_block):
                fn(x)
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1000.0 / per_block)
    return statistics.median(samples)


def _tensorrt_engine(model, shape: tuple[int, ...], max_batch: int, device, workdir: Path):
    """The plan the ``tensorrt`` target would publish, run through TensorRT's runtime."""
    import tensorrt
    import torch
    import torch_tensorrt

    from sft_engine.engines.gpu.devices import GpuInfo
    from sft_engine.engines.gpu.half import half_module
    from sft_engine.engines.tensorrt.fp16_recipe import fp16_recipe
    from sft_engine.engines.tensorrt.target import compile_plan
    from sft_engine.engines.tensorrt.runtime import PlanRunner

    props = torch.cuda.get_device_properties(device)
    gpu = GpuInfo(device.index or 0, props.name, f"{props.major}.{props.minor}", 0.0)
    recipe = fp16_recipe(torch_tensorrt.__version__)
    module = half_module(model, device)
    started = time.perf_counter()
    plan, _ = compile_plan(module, recipe, gpu, shape, max_batch, workdir / "trt-debug")
    print(f"  built the TensorRT plan in {time.perf_counter() - started:.0f} s ({len(plan) / 2**20:.1f} MiB)", flush=True)
    del module
    runner = PlanRunner(plan, device.index or 0)
    return f"TensorRT plan (Torch-TensorRT {torch_tensorrt.__version__}, TensorRT {tensorrt.__version__}, FP16 via {recipe.api})", runner.run_device


def fp16_engine(model, shape: tuple[int, ...], max_batch: int, device, workdir: Path, choice: str):
    """(name, callable on a CUDA FP16 batch) of the FP16 engine the GPU targets would publish."""
    import importlib.util

    import torch

    from sft_engine.engines.gpu.half import half_module

    use_trt = choice == "tensorrt" or (choice == "auto" and importlib.util.find_spec("torch_tensorrt") is not None)
    if use_trt:
        try:
            return _tensorrt_engine(model, shape, max_batch, device, workdir)
        except Exception as exc:
            if choice == "tensorrt":
                raise
            print(f"  TensorRT engine failed ({type(exc).__name__}: {str(exc)[:200]}); falling back to FP16 TorchScript", flush=True)
    module = half_module(model, device)
    example = torch.zeros((min(2, max_batch), *shape), device=device, dtype=torch.float16)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        frozen = torch.jit.freeze(torch.jit.trace(module, example, check_trace=False).eval())
    return f"frozen FP16 TorchScript (torch {torch.__version__})", frozen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--batches", default="1,8,64,256")
    parser.add_argument("--engine", choices=("auto", "tensorrt", "torchscript"), default="auto")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per (engine, batch)")
    parser.add_argument("--peak-tflops", type=float, help="dense FP16 peak of this GPU (default: from its name)")
    parser.add_argument("--gpu", type=int, default=0)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device visible to PyTorch; skipped")
        return 0

    import tempfile

    from sft_engine.models import build_model

    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    device = torch.device("cuda", args.gpu)
    torch.cuda.set_device(device)
    torch.backends.cudnn.benchmark = True
    shape = (3, args.input_size, args.input_size)
    props = torch.cuda.get_device_properties(device)
    peak = args.peak_tflops or peak_tflops(props.name)
    torch.manual_seed(0)
    model = build_model(args.arch, args.num_classes).eval()
    gflop = flop_per_image(model, shape, torch.device("cpu")) / 1e9
    print(f"{args.arch} @ {args.input_size}, {props.name} (sm {props.major}.{props.minor}), {gflop:.2f} GFLOP/image, "
          f"dense FP16 peak {f'{peak:.0f} TFLOP/s' if peak else 'unknown (pass --peak-tflops)'}", flush=True)
    default_tf32 = tf32_default()
    with tempfile.TemporaryDirectory(prefix="bench-gpu-", dir=args.workdir) as tmp:
        name, engine = fp16_engine(model, shape, max(batches), device, Path(tmp), args.engine)
        eager = model.to(device)
        print(f"FP16 engine: {name}; TF32 default of this torch: {default_tf32}", flush=True)
        rows = []
        for batch in batches:
            x32 = torch.randn((batch, *shape), device=device)
            x16 = x32.half()
            set_tf32(False)
            t32 = time_on_gpu(eager, x32, args.seconds)
            api = set_tf32(True)
            ttf = time_on_gpu(eager, x32, args.seconds)
            t16 = time_on_gpu(engine, x16, args.seconds)
            row = {"batch": batch, "eager_fp32_img_s": batch / t32, "eager_tf32_img_s": batch / ttf, "fp16_img_s": batch / t16,
                   "speedup_vs_fp32": t32 / t16, "speedup_vs_tf32": ttf / t16, "tf32_api": api}
            for key, _ in VARIANTS:
                row[key.replace("_img_s", "_peak_fraction")] = (row[key] * gflop * 1e9) / (peak * 1e12) if peak else None
            rows.append(row)
            del x32, x16
    print()
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "arch": args.arch, "input_size": args.input_size, "gpu": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "gflop_per_image": gflop, "peak_fp16_tflops": peak, "fp16_engine": name, "torch": torch.__version__,
            "tf32_default": default_tf32, "rows": rows,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
