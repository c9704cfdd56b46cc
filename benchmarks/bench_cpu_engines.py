#!/usr/bin/env python3
"""Which CPU engine could beat eager PyTorch by more? One model, one batch, side by side.

Candidates, timed in alternating blocks (sft_engine.timing.time_interleaved):
eager FP32 (the reference), ONNX Runtime as sft-engine builds it, ONNX Runtime without
thread spinning, OpenVINO FP32 and, on CPUs with native bf16, OpenVINO bf16 (both as
sft-engine builds them), frozen TorchScript with optimize_for_inference, on CPUs with INT8 instructions (AVX2, VNNI, AMX-INT8) the INT8
engines the build quantizes (OpenVINO via NNCF, ONNX Runtime QDQ), and
AOTInductor (torch.export + Inductor with freezing, the compiled form torch.compile
can package) when a C++ compiler is present. Reduced-precision rows also print their
top-1 agreement with eager on the timed batch.

    python benchmarks/bench_cpu_engines.py --arch resnet50 --input-size 224 --batch 8
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from sft_engine.engines.base import EngineCandidate
from sft_engine.engines.cpu.isa import cpu_has_native_bf16, cpu_int8_isa
from sft_engine.engines.cpu.target import engine_json
from sft_engine.engines.export.onnx import export_onnx
from sft_engine.engines.export.openvino import export_openvino
from sft_engine.engines.export.torchscript import export_torchscript
from sft_engine.engines.cpu.quantize import quantize_onnx, quantize_openvino
from sft_engine.engines.cpu.serving_model import EngineRunner
from sft_engine.models import build_model
from sft_engine.timing import time_interleaved


def aot_inductor(model: torch.nn.Module, example: torch.Tensor, path: Path):
    import torch._inductor.config as inductor_config

    batch = torch.export.Dim("batch", min=1, max=256)
    with torch.no_grad():
        exported = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
        inductor_config.freezing = True
        package = torch._inductor.aoti_compile_and_package(exported, package_path=str(path))
    runner = torch._inductor.aoti_load_package(package)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return runner(torch.from_numpy(x)).numpy()
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--budget", type=float, default=30.0, help="seconds of timing in all")
    ap.add_argument("--no-aoti", action="store_true", help="skip AOTInductor (its compile takes a minute or more)")
    ap.add_argument("--no-int8", action="store_true", help="skip the INT8 engines")
    ap.add_argument("--calibration", type=int, default=32, help="calibration inputs for the INT8 engines")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = build_model(args.arch, 10).eval()
    x = np.random.default_rng(0).standard_normal((args.batch, 3, args.input_size, args.input_size)).astype(np.float32)
    example = torch.from_numpy(x)
    fns = {}

    def eager(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(batch)).numpy()

    fns["eager"] = eager
    compile_s: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        export_onnx(model, example, work / "model.onnx")
        compile_s["onnxruntime"] = time.perf_counter() - t0
        base = {"engine": "onnxruntime", "file": "model.onnx", "intra_op_threads": 0}
        fns["onnxruntime"] = EngineRunner(tmp, base).run
        fns["onnxruntime_no_spin"] = EngineRunner(tmp, dict(base, allow_spinning=False)).run
        t0 = time.perf_counter()
        export_openvino(model, example, work / "model.xml")
        compile_s["openvino"] = time.perf_counter() - t0
        fns["openvino"] = EngineRunner(tmp, engine_json(EngineCandidate("openvino"), 0)).run
        if cpu_has_native_bf16():
            fns["openvino_bf16"] = EngineRunner(tmp, engine_json(EngineCandidate("openvino", "bf16"), 0)).run
        if cpu_int8_isa() is not None and not args.no_int8:
            # INT8 as the build quantizes it (NNCF, ONNX Runtime QDQ). Calibrated here on random inputs: figures
            # for speed only; accuracy is the build's gate's job, on real held-out images
            calibration = np.random.default_rng(1).standard_normal((args.calibration, *x.shape[1:])).astype(np.float32)
            export_onnx(model, example, work / "int8-src.onnx")  # the OpenVINO export removed its intermediate model.onnx
            for kind, quantize, src, out in (("openvino", quantize_openvino, "model.xml", "model.xml"),
                                             ("onnxruntime", quantize_onnx, "int8-src.onnx", "model.onnx")):
                qdir = work / f"{kind}-int8"
                qdir.mkdir()
                t0 = time.perf_counter()
                try:
                    quantize(work / src, calibration, qdir / out)
                except Exception as exc:  # report, do not fail the benchmark
                    print(f"# {kind} int8 unavailable: {exc}"[:200], file=sys.stderr)
                    continue
                compile_s[f"{kind}_int8"] = time.perf_counter() - t0
                fns[f"{kind}_int8"] = EngineRunner(str(qdir), engine_json(EngineCandidate(kind, "int8"), 0)).run
        t0 = time.perf_counter()
        export_torchscript(model, example, work / "model.ts")
        compile_s["torchscript"] = time.perf_counter() - t0
        fns["torchscript"] = EngineRunner(tmp, {"engine": "torchscript", "file": "model.ts", "optimize_for_inference": True}).run
        if not args.no_aoti and shutil.which("g++"):
            t0 = time.perf_counter()
            try:
                fns["aot_inductor"] = aot_inductor(model, example, work / "model.pt2")
                compile_s["aot_inductor"] = time.perf_counter() - t0
            except Exception as exc:  # compiler missing or unsupported op: report, do not fail the benchmark
                print(f"# aot_inductor unavailable: {type(exc).__name__}: {exc}"[:200], file=sys.stderr)
        reference = eager(x)
        stats = time_interleaved(fns, x, budget_s=args.budget, blocks=3)
        eager_p50 = stats["eager"].p50_ms
        rows = []
        for name, st in stats.items():
            out = fns[name](x)
            diff = float(np.abs(out - reference).max())
            agree = float((out.argmax(1) == reference.argmax(1)).mean())
            rows.append({"engine": name, **st.to_dict(), "speedup_vs_eager": round(eager_p50 / st.p50_ms, 3),
                         "max_abs_diff": diff, "top1_agreement": agree, "compile_s": round(compile_s.get(name, 0.0), 1)})
            print(f"{name:22s} p50 {st.p50_ms:9.2f} ms  {st.images_per_s:8.1f} img/s  x{eager_p50 / st.p50_ms:5.2f} vs eager  "
                  f"max|diff| {diff:.1e}  top-1 {agree:.0%}  export/compile {compile_s.get(name, 0.0):.1f} s", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"arch": args.arch, "input_size": args.input_size, "batch": args.batch, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
