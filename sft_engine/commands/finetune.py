"""``sft-engine finetune``: flags and/or ``--config FILE.toml`` → a checkpoint directory.

Settings merge as defaults < config file < flags; flags left out are not applied.
Under ``torchrun`` only rank 0 prints the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from sft_engine.finetune.config import AMP_MODES, DATASETS, OPTIMIZERS, REGULARIZERS
from sft_engine.pixels import CROP_MODES, INTERPOLATIONS


def _layer_decay(text: str) -> float | str:
    """``auto`` or a number (its range is the config's check)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor auto") from None

# flag dest → FinetuneConfig field of the same name (None = not given)
_FIELDS = (
    "arch", "pretrained", "dataset", "data_dir", "download", "num_classes", "input_size", "mean", "std", "preprocess", "resize_size",
    "crop_mode", "interpolation", "layer_decay", "augment",
    "val_fraction", "check_images", "synthetic_variant", "synthetic_train_size", "synthetic_val_size", "epochs",
    "batch_size", "optimizer", "lr", "head_lr", "momentum", "weight_decay", "warmup_epochs", "min_lr_ratio", "reg",
    "reg_lambda", "head_lambda", "distill_temperature", "label_smoothing", "freeze_backbone", "early_stopping_patience",
    "seed", "deterministic", "output", "overwrite", "resume", "keep_state", "holdout_images", "device", "amp", "channels_last",
    "num_workers", "progress",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a pretrained classifier on a new task (L_task + λ·L_pre) and write a checkpoint for build",
        description="Start from a pretrained model, replace its head, train on the task's data minimizing "
        "cross-entropy + λ·L_pre (L2-SP, distillation or none), and write model.safetensors + metadata.json "
        "for `sft-engine build --from-finetune DIR`.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML file of settings (keys as the flags, at the top level or under [finetune]); flags override it")
    model = p.add_argument_group("model")
    model.add_argument("--arch", help="any torchvision classifier (resnet50, vit_b_16, swin_t) or timm model as timm:NAME; see sft-engine models")
    model.add_argument("--pretrained", metavar="NAME|PATH|none",
                       help="the source's weights (torchvision enum name, timm tag, or DEFAULT), a .safetensors/.pth/.bin/.ckpt checkpoint, a finetune output DIR, or none")
    model.add_argument("--freeze-backbone", action="store_true", default=None, help="train the head only (linear probe)")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, help="synthetic (built in, default), cifar10 or imagefolder")
    data.add_argument("--data-dir", metavar="DIR", help="imagefolder: DIR/<class>/<image> (or DIR/train + DIR/val); cifar10: folder holding cifar-10-batches-py")
    data.add_argument("--download", action="store_true", default=None, help="cifar10: download it into --data-dir if missing")
    data.add_argument("--num-classes", type=int, help="number of classes (default: from the dataset; synthetic: 4)")
    data.add_argument("--input-size", type=int, help="square input size in pixels (default: the arch's, 224)")
    data.add_argument("--mean", help="R,G,B normalization mean (default ImageNet's)")
    data.add_argument("--std", help="R,G,B normalization std (default ImageNet's)")
    data.add_argument("--preprocess", choices=("plain", "source"),
                      help="plain (default): resize to --input-size; source: the arch's own eval transform (timm pretrained_cfg, "
                           "torchvision weights.transforms()), which sets the size, resize, crop, interpolation, mean and std")
    data.add_argument("--resize-size", type=int, help="resize before the center crop (timm: floor(input_size / crop_pct))")
    data.add_argument("--crop-mode", choices=CROP_MODES, help="squash (default), center or border")
    data.add_argument("--interpolation", choices=INTERPOLATIONS, help="resize filter (default bilinear)")
    data.add_argument("--no-augment", dest="augment", action="store_false", default=None, help="no random horizontal flips")
    data.add_argument("--val-fraction", type=float, help="imagefolder without val/: share of each class held out (default 0.1)")
    data.add_argument("--no-check-images", dest="check_images", action="store_false", default=None, help="skip decoding every image before training")
    data.add_argument("--synthetic-variant", choices=("a", "b"), help="synthetic task a (default) or b (other classes, same shapes and textures)")
    data.add_argument("--synthetic-train-size", type=int, help="synthetic training images (default 2000)")
    data.add_argument("--synthetic-val-size", type=int, help="synthetic validation images (default 400)")
    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int, help="per process")
    train.add_argument("--optimizer", choices=OPTIMIZERS)
    train.add_argument("--lr", type=float, help="backbone learning rate (default 1e-3)")
    train.add_argument("--head-lr", type=float, help="head learning rate (default: --lr)")
    train.add_argument("--layer-decay", type=_layer_decay, metavar="RATE|auto",
                       help="AdamW layer-wise lr decay: layer i of L gets lr * RATE**(L-i); auto (default): 0.75 for transformer families, else 1 (off)")
    train.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    train.add_argument("--weight-decay", type=float, help="decoupled weight decay (AdamW) / L2 (SGD); off under l2sp")
    train.add_argument("--warmup-epochs", type=float, help="linear warmup before the cosine decay (default: 1, at most a fifth of --epochs)")
    train.add_argument("--min-lr-ratio", type=float, help="final lr as a fraction of the peak (default 0)")
    train.add_argument("--label-smoothing", type=float)
    train.add_argument("--early-stopping", dest="early_stopping_patience", type=int, metavar="EPOCHS", help="stop after this many epochs without a better val top-1")
    train.add_argument("--seed", type=int)
    train.add_argument("--deterministic", action="store_true", default=None, help="deterministic kernels (slower on GPU)")
    reg = p.add_argument_group("objective: L_task + λ·L_pre")
    reg.add_argument("--reg", choices=REGULARIZERS, help="l2sp, distill, none; auto = l2sp with --pretrained, else none")
    reg.add_argument("--reg-lambda", type=float, help="λ (default: l2sp 0.1, distill 1.0)")
    reg.add_argument("--head-lambda", type=float, help="l2sp: plain L2 coefficient β on the new head (default 0.01)")
    reg.add_argument("--temperature", dest="distill_temperature", type=float, help="distill: softmax temperature (default 2)")
    run_ = p.add_argument_group("output and hardware")
    run_.add_argument("--output", metavar="DIR", help="output directory (default finetune-out)")
    run_.add_argument("--overwrite", action="store_true", default=None, help="replace an earlier run in --output")
    run_.add_argument("--resume", action="store_true", default=None, help="continue the interrupted run in --output")
    run_.add_argument("--keep-state", action="store_true", default=None, help="keep train_state/ (optimizer state) after finishing")
    run_.add_argument("--holdout-images", type=int, metavar="N",
                      help="labelled validation images kept in DIR/holdout/ for build's accuracy gate (default 256, 0: none)")
    run_.add_argument("--device", help="auto (default), cpu, cuda, cuda:N; under torchrun each rank takes cuda:LOCAL_RANK")
    run_.add_argument("--amp", choices=AMP_MODES, help="mixed precision: on CUDA auto is bf16 if supported (else fp16); on CPUs with AMX-BF16/AVX512-BF16 bf16 autocasts, auto stays FP32")
    run_.add_argument("--channels-last", action="store_true", default=None, help="channels_last memory format (default: on CUDA)")
    run_.add_argument("--num-workers", type=int, help="DataLoader workers (default: 0 on CPU, up to 8 on CUDA)")
    run_.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> Any:
    """Defaults < ``--config`` file < flags, as a FinetuneConfig (not yet validated)."""
    from sft_engine.finetune.config import FinetuneConfig, load_finetune_toml

    cfg = FinetuneConfig()
    if args.config:
        cfg = cfg.merged(load_finetune_toml(args.config), args.config)
    flags = {name: getattr(args, name) for name in _FIELDS if getattr(args, name, None) is not None}
    return cfg.merged(flags, "flags")


def _epoch_line(progress: bool, epochs: int) -> Any:
    """Without a terminal (CI logs, ``| tee``) the progress bars are off: one line per epoch on stderr instead."""
    if not progress or sys.stderr.isatty() or int(os.environ.get("RANK", "0")) != 0:
        return None

    def line(row: dict[str, Any]) -> None:
        best = " (best)" if row["val_top1"] >= row["best_top1"] else ""
        print(f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
              f"val top-1 {row['val_top1']:.2%}{best}, {row['seconds']:.1f} s", file=sys.stderr, flush=True)

    return line


def run(args: argparse.Namespace) -> int:
    from sft_engine.finetune import finetune

    config = config_from_args(args)
    result = finetune(config, on_epoch_end=_epoch_line(config.progress, config.epochs))
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    meta = result.metadata
    if args.json:
        print(json.dumps({
            "output_dir": str(result.output_dir), "weights": str(result.weights_path), "metadata": str(result.metadata_path),
            "best_top1": result.best_top1, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
            "labels": result.labels, "holdout": meta.get("holdout"),
        }, indent=2))
        return 0
    stopped = " (early stop)" if meta.get("training", {}).get("early_stopped") else ""
    epochs = f"{result.epochs_run} epoch{'' if result.epochs_run == 1 else 's'}"
    print(f"fine-tuned {meta['arch']} on {meta['dataset']} ({meta['num_classes']} classes) for {epochs}{stopped}, reg {meta['reg']} (λ={meta['reg_lambda']:g})")
    print(f"  best val top-1 {result.best_top1:.2%} at epoch {result.best_epoch}")
    print(f"  weights:  {result.weights_path}")
    print(f"  metadata: {result.metadata_path}")
    print(f"  metrics:  {result.output_dir / 'metrics.csv'}")
    holdout = meta.get("holdout")
    if holdout:
        print(f"  holdout:  {result.output_dir / holdout['dir']} ({holdout['images']} labelled images for build's accuracy gate)")
    print(f"  next: sft-engine build --from-finetune {result.output_dir}", file=sys.stdout)
    return 0
