"""Does L_pre help? Pretrain on synthetic task A, fine-tune on a small task B.

1. Pretrain resnet18 on synthetic task A (variant ``a``: the first ``--classes-a``
   shape/texture pairs) from random weights.
2. Fine-tune it on a *small* synthetic task B (variant ``b``: other pairs, same
   visual vocabulary) with each regularizer - ``none``, ``l2sp``, ``distill`` - and,
   as a reference, train B from random weights (``scratch``); several seeds each (the
   seed draws B's training images, the head's initialisation and the batch order).
3. Score the checkpoint each run selected (best validation epoch) on a separate test
   split of B that no run saw, and report mean ± std over seeds.

Defaults run in a few minutes on 2 CPU cores; raise ``--seeds``, ``--train-b`` or the
epochs for a larger study. Results go to ``--json`` and a markdown table on stdout.

    python benchmarks/finetune_l2sp_experiment.py --json reports/finetune_l2sp.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from sft_engine.finetune import FinetuneConfig, SyntheticDataset, finetune
from sft_engine.finetune.data import InputTransform
from sft_engine.models import build_model, load_weights

METHODS = ("scratch", "none", "l2sp", "distill")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds per method")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--classes-a", type=int, default=8)
    p.add_argument("--train-a", type=int, default=3000, help="task A training images")
    p.add_argument("--epochs-a", type=int, default=6)
    p.add_argument("--classes-b", type=int, default=4)
    p.add_argument("--train-b", type=int, default=32, help="task B training images (small on purpose)")
    p.add_argument("--val-b", type=int, default=200, help="task B validation images (checkpoint selection)")
    p.add_argument("--test-b", type=int, default=1000, help="task B test images (the reported figure)")
    p.add_argument("--epochs-b", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning lr (backbone and head)")
    p.add_argument("--scratch-lr", type=float, default=None, help="lr for the scratch baseline (default: --lr)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="for none/distill/scratch (l2sp replaces it)")
    p.add_argument("--l2sp-lambda", default="0.1,1,10", help="λ for l2sp; a comma-separated list runs each")
    p.add_argument("--head-lambda", type=float, default=0.01)
    p.add_argument("--distill-lambda", default="1", help="λ for distill; a comma-separated list runs each")
    p.add_argument("--pretrained", default=None, help="reuse a task-A checkpoint (a finetune output dir) instead of pretraining")
    p.add_argument("--workdir", default=None, help="keep checkpoints here (default: a temporary directory)")
    p.add_argument("--json", dest="json_out", default=None, help="write the results here")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


@torch.no_grad()
def test_top1(weights: Path, args: argparse.Namespace) -> float:
    """Top-1 of a checkpoint on task B's test split (never used for training or selection)."""
    model = load_weights(build_model(args.arch, args.classes_b), weights).eval()
    tf = InputTransform(args.input_size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    data = SyntheticDataset(args.classes_b, args.test_b, args.input_size, seed=12345, variant="b", split="images", transform=tf)
    loader = torch.utils.data.DataLoader(data, batch_size=200)
    correct = total = 0
    for images, targets in loader:
        correct += int((model(images).argmax(1) == targets).sum())
        total += len(targets)
    return correct / total


def pretrain(args: argparse.Namespace, work: Path) -> tuple[str, dict[str, Any]]:
    if args.pretrained:
        return args.pretrained, {"reused": args.pretrained}
    started = time.perf_counter()
    result = finetune(FinetuneConfig(
        arch=args.arch, pretrained=None, dataset="synthetic", synthetic_variant="a", num_classes=args.classes_a,
        input_size=args.input_size, synthetic_train_size=args.train_a, synthetic_val_size=400, epochs=args.epochs_a,
        batch_size=64, optimizer="adamw", lr=1e-3, seed=0, output=work / "task_a", overwrite=True, progress=False,
    ))
    info = {"val_top1": result.best_top1, "epochs": result.epochs_run, "seconds": round(time.perf_counter() - started, 1)}
    print(f"task A pretrained: val top-1 {result.best_top1:.3f} in {info['seconds']} s", file=sys.stderr)
    return str(result.output_dir), info


def variants(methods: list[str], args: argparse.Namespace) -> list[tuple[str, str, float]]:
    """(label, method, λ) for every run of one seed: one per λ for l2sp and distill."""
    out = []
    for method in methods:
        lambdas = {"l2sp": args.l2sp_lambda, "distill": args.distill_lambda}.get(method)
        if lambdas is None:
            out.append((method, method, 0.0))
            continue
        for lam in (float(v) for v in lambdas.split(",") if v.strip()):
            out.append((f"{method} λ={lam:g}", method, lam))
    return out


def finetune_b(label: str, method: str, lam: float, seed: int, pretrained: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    reg = "none" if method == "scratch" else method
    lr = args.scratch_lr if method == "scratch" and args.scratch_lr else args.lr
    started = time.perf_counter()
    result = finetune(FinetuneConfig(
        arch=args.arch, pretrained=None if method == "scratch" else pretrained, dataset="synthetic", synthetic_variant="b",
        num_classes=args.classes_b, input_size=args.input_size, synthetic_train_size=args.train_b, synthetic_val_size=args.val_b,
        epochs=args.epochs_b, batch_size=args.batch_size, optimizer=args.optimizer, lr=lr, weight_decay=args.weight_decay,
        reg=reg, reg_lambda=lam, head_lambda=args.head_lambda, seed=seed, output=work / f"b_{method}_{lam:g}_{seed}", overwrite=True,
        progress=False,
    ))
    return {
        "method": label,
        "reg": reg,
        "reg_lambda": lam,
        "seed": seed,
        "test_top1": test_top1(result.weights_path, args),
        "val_top1": result.best_top1,
        "final_val_top1": result.history[-1]["val_top1"],
        "best_epoch": result.best_epoch,
        "final_train_pre_loss": result.history[-1]["train_pre_loss"],
        "seconds": round(time.perf_counter() - started, 2),
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    """Per method: test top-1 of the selected checkpoint, final-epoch val top-1, and the
    per-seed difference to ``none`` (same seed = same training images: a paired comparison)."""
    base = {r["seed"]: r["test_top1"] for r in runs if r["method"] == "none"}
    out = {}
    for label in labels:
        mine = [r for r in runs if r["method"] == label]
        test = [r["test_top1"] for r in mine]
        final = [r["final_val_top1"] for r in mine]
        diff = [r["test_top1"] - base[r["seed"]] for r in mine if r["seed"] in base]
        out[label] = {
            "n": len(mine),
            "test_top1_mean": _mean_std(test)[0],
            "test_top1_std": _mean_std(test)[1],
            "final_val_top1_mean": _mean_std(final)[0],
            "final_val_top1_std": _mean_std(final)[1],
            "vs_none_mean": _mean_std(diff)[0] if diff else None,
            "vs_none_std": _mean_std(diff)[1] if diff else None,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        print(f"error: unknown methods {sorted(unknown)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="sft-l2sp-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        started = time.perf_counter()
        pretrained, pre_info = pretrain(args, work)
        runs = []
        plan = variants(methods, args)
        for seed in range(args.seeds):
            for label, method, lam in plan:
                run = finetune_b(label, method, lam, seed, pretrained, args, work)
                runs.append(run)
                print(
                    f"  seed {seed} {label:16s} test top-1 {run['test_top1']:.3f} (best val {run['val_top1']:.3f} at epoch {run['best_epoch']}, "
                    f"final val {run['final_val_top1']:.3f}, {run['seconds']} s)",
                    file=sys.stderr,
                )
        summary = summarize(runs, [label for label, _, _ in plan])
        total = round(time.perf_counter() - started, 1)
    settings = {k: v for k, v in vars(args).items() if k not in ("json_out", "verbose", "workdir")}
    report = {
        "experiment": "finetune_l2sp",
        "settings": settings,
        "pretrain": pre_info,
        "runs": runs,
        "summary": summary,
        "seconds": total,
        "host": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine()},
    }
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"| method | test top-1, selected checkpoint | − none, same seed | val top-1, last epoch |  (mean ± std over {args.seeds} seeds)")
    print("|---|---|---|---|")
    for label, s in summary.items():
        vs = "—" if s["vs_none_mean"] is None or label == "none" else f"{s['vs_none_mean']:+.3f} ± {s['vs_none_std']:.3f}"
        print(f"| {label} | {s['test_top1_mean']:.3f} ± {s['test_top1_std']:.3f} | {vs} | {s['final_val_top1_mean']:.3f} ± {s['final_val_top1_std']:.3f} |")
    print(f"\ntotal {total} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
