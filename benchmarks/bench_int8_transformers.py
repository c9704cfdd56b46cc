"""INT8 for transformer families on CPU: a ViT and a ConvNeXt fine-tuned, then built with every precision, side by side.

For each arch: ``sft-engine finetune`` on the synthetic task with the arch's own
preprocessing (timm's pretrained_cfg) and a labelled holdout, then ``sft-engine build
--precision auto`` calibrated and gated on that holdout: every CPU candidate (ONNX
Runtime, TorchScript, OpenVINO at FP32, OpenVINO bf16 where native, ONNX Runtime and
OpenVINO INT8 with the quantizers' transformer settings) exported, gated and timed
interleaved in one run. Printed per candidate: whether it passed its gate, top-1
agreement and accuracy drop, p50 latency at the timing batch, and its speed ×FP32 (the
fastest FP32 engine) and ×bf16.

    python benchmarks/bench_int8_transformers.py [--archs timm:test_vit,timm:test_convnext] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


def run(arch: str, root: Path, epochs: int, train: int, holdout: int, calibration: int) -> dict[str, Any]:
    from sft_engine.build import build
    from sft_engine.build_config import BuildConfig, load_finetune_dir
    from sft_engine.finetune import FinetuneConfig, finetune

    out = root / arch.replace(":", "_")
    ft = finetune(FinetuneConfig(arch=arch, dataset="synthetic", preprocess="source", num_classes=4, synthetic_train_size=train,
                                 synthetic_val_size=holdout + 20, holdout_images=holdout, epochs=epochs, batch_size=32, lr=2e-3,
                                 warmup_epochs=0.0,
                                 output=out, progress=False, device="cpu"))
    cfg = BuildConfig().merged(load_finetune_dir(ft.output_dir), "fine-tuning metadata").merged(
        {"repository": root / "repo", "max_batch_size": 8, "int8_calibration_images": calibration, "selection_budget_s": 4.0}, "benchmark")
    result = build(cfg)
    rows = result.candidates
    fp32 = min((r["latency"]["p50_ms"] for r in rows if r.get("latency") and r["precision"] == "fp32"), default=None)
    bf16 = next((r["latency"]["p50_ms"] for r in rows if r.get("latency") and r["precision"] == "bf16"), None)
    for r in rows:
        lat = (r.get("latency") or {}).get("p50_ms")
        r["x_fp32"] = round(fp32 / lat, 2) if lat and fp32 else None
        r["x_bf16"] = round(bf16 / lat, 2) if lat and bf16 else None
    out = {"arch": arch, "val_top1": ft.best_top1, "published": f"{result.engine} {result.precision}", "candidates": rows}
    if bf16 is None and any(r["precision"] == "bf16" and r.get("exported") for r in rows):
        out["published_x_bf16_gate_failed"] = published_vs_ungated_bf16(cfg, result, root)
    return out


def published_vs_ungated_bf16(cfg: Any, result: Any, root: Path, batch: int = 8) -> float:
    """The published engine's speed ÷ that of the bf16 engine its gate refused, built again without the gate, timed interleaved.

    Without it an INT8 engine could not be compared with bf16 on the models where bf16
    narrowly fails its gate.
    """
    import numpy as np
    from _fixture import build_without_gate

    from sft_engine.engines.cpu.serving_model import EngineRunner
    from sft_engine.timing import time_interleaved

    ungated = build_without_gate(cfg, precision="bf16", engine="openvino", name=f"{result.published.path.parent.name}_bf16_ungated")
    size = cfg.preprocessing.input_size
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    stats = time_interleaved({"published": EngineRunner(str(result.published.path)).run,
                              "bf16": EngineRunner(str(ungated.published.path)).run}, x, budget_s=8.0)
    return round(stats["published"].images_per_s / stats["bf16"].images_per_s, 2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="timm:test_vit,timm:test_convnext")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-images", type=int, default=400)
    p.add_argument("--holdout-images", type=int, default=300, help="labelled images kept to calibrate and gate (200 gate it)")
    p.add_argument("--calibration-images", type=int, default=64)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    from sft_engine.engines.cpu.isa import cpu_has_native_bf16, cpu_int8_isa

    print(f"{os.cpu_count()} cores; INT8 ISA {cpu_int8_isa()}; native bf16 {cpu_has_native_bf16()}")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        for arch in args.archs.split(","):
            res = run(arch, Path(tmp), args.epochs, args.train_images, args.holdout_images, args.calibration_images)
            results.append(res)
            print(f"\n{arch}: val top-1 {res['val_top1']:.2%}, published {res['published']}")
            print(f"  {'candidate':<18} {'gate':<7} {'top-1 agr':>9} {'acc drop':>8} {'p50 ms':>8} {'xfp32':>6} {'xbf16':>6}")
            for r in res["candidates"]:
                par = r.get("parity") or {}
                lat = (r.get("latency") or {}).get("p50_ms")
                gate = "passed" if par.get("passed") else ("failed" if par else "error")
                drop = None if par.get("eager_accuracy") is None else 100 * (par["eager_accuracy"] - par["engine_accuracy"])
                print(f"  {r['candidate']:<18} {gate:<7} {par.get('top1_agreement', float('nan')):>9.2%} "
                      f"{drop if drop is not None else float('nan'):>8.2f} {lat or float('nan'):>8.2f} "
                      f"{r['x_fp32'] or float('nan'):>6.2f} {r['x_bf16'] or float('nan'):>6.2f}"
                      + (f"  {r['error']}" if r.get("error") else ""))
            if "published_x_bf16_gate_failed" in res:
                print(f"  published {res['published']} x bf16 (built again without its gate, timed side by side): "
                      f"{res['published_x_bf16_gate_failed']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
