"""bf16 autocast against FP32 fine-tuning on this CPU, side by side.

For each arch, ``sft-engine finetune`` on the synthetic task twice per round, once with
``--amp bf16`` and once with ``--amp none``, alternated (rounds keep a drifting machine
load from favouring one), the same seed and data. Printed: seconds per training epoch
(the best round's), bf16 ÷ FP32 speed, and each run's final validation top-1 (bf16 moves
the numerics, not the task). Needs a CPU with AMX-BF16 or AVX512-BF16: elsewhere
``--amp bf16`` is refused, as it would run emulated.

    python benchmarks/bench_finetune_amp.py [--archs resnet18@64,timm:test_vit] [--images 256] [--rounds 2]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path


def epoch_seconds(out: Path) -> float:
    """Seconds of the fastest epoch of a finished run (the first pays one-time warm-up)."""
    with open(out / "metrics.csv", newline="") as fh:
        return min(float(row["seconds"]) for row in csv.DictReader(fh))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="resnet18@64,timm:test_vit", help="ARCH or ARCH@INPUT_SIZE, comma-separated")
    p.add_argument("--images", type=int, default=256, help="training images per epoch")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    from sft_engine.engines.cpu.isa import cpu_bf16_isa
    from sft_engine.finetune import FinetuneConfig, finetune

    isa = cpu_bf16_isa()
    print(f"bf16 in hardware: {isa or 'none (bf16 would be refused)'}")
    if isa is None:
        return 2
    print(f"{'arch':<22} {'fp32 s/epoch':>13} {'bf16 s/epoch':>13} {'bf16 x fp32':>12} {'top-1 fp32':>11} {'top-1 bf16':>11}")
    with tempfile.TemporaryDirectory(prefix="bench-amp-") as tmp:
        for spec in [a.strip() for a in args.archs.split(",") if a.strip()]:
            arch, _, size = spec.partition("@")
            best: dict[str, float] = {}
            top1: dict[str, float] = {}
            for r in range(args.rounds):
                for amp in ("none", "bf16") if r % 2 == 0 else ("bf16", "none"):
                    out = Path(tmp) / f"{arch.replace(':', '_')}-{amp}-{r}"
                    extra = {"input_size": int(size)} if size else {"preprocess": "source"}
                    res = finetune(FinetuneConfig(arch=arch, dataset="synthetic", num_classes=4, synthetic_train_size=args.images,
                                                  synthetic_val_size=64, epochs=args.epochs, batch_size=32, amp=amp, device="cpu",
                                                  output=out, progress=False, **extra))
                    best[amp] = min(best.get(amp, float("inf")), epoch_seconds(out))
                    top1[amp] = res.best_top1
            print(f"{spec:<22} {best['none']:>13.2f} {best['bf16']:>13.2f} {best['none'] / best['bf16']:>11.2f}x "
                  f"{top1['none']:>11.3f} {top1['bf16']:>11.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
