"""The fine-tuning loop: from a validated config to a finished output directory.

Order of work, chosen so that bad input fails before anything is written: validate
the config, check the output directory, load and check the data, read the state to
resume (and check its labels), build the model; only then create files. Training
state is saved after every epoch (``train_state/last.pt``, enough to resume exactly:
shuffling and augmentation are seeded per epoch, not carried as RNG state), the best
epoch's weights are kept apart, and the checkpoint proper is written at the end by
``writer.write_final``, after a labelled sample of the validation set (``holdout``)
that build uses for its accuracy gate.

Single process by default; under ``torchrun`` with ``WORLD_SIZE`` > 1 the model is
wrapped in DistributedDataParallel, each process reads its shard through a
DistributedSampler, metrics are summed over processes, and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from sft_engine.errors import ConfigError, DataError, SftEngineError
from sft_engine.finetune import distributed as dist
from sft_engine.finetune import writer
from sft_engine.finetune.config import FinetuneConfig
from sft_engine.finetune.data import DataBundle, build_datasets, seed_worker
from sft_engine.finetune.holdout import write_holdout
from sft_engine.finetune.optim import make_optimizer, param_groups, resolve_amp
from sft_engine.finetune.objective import L2SP, Distill, FinetuneObjective
from sft_engine.finetune.pretrained import build_student, build_teacher, resolve_pretrained
from sft_engine.finetune.schedule import build_scheduler

__all__ = ["FinetuneResult", "finetune", "STATE_FORMAT"]

LOGGER = logging.getLogger(__name__)

STATE_FORMAT = "sft-engine/finetune-state@1"
#: settings that must not change between a run and its resumption
_FINGERPRINT = ("arch", "dataset", "input_size", "pretrained", "reg", "freeze_backbone", "optimizer", "batch_size", "seed",
                "layer_decay", "preprocess")


@dataclass
class FinetuneResult:
    """What a finished run produced."""

    output_dir: Path
    weights_path: Path
    metadata_path: Path
    best_top1: float
    best_epoch: int
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


def finetune(config: FinetuneConfig, on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> FinetuneResult:
    """Fine-tune ``config.arch`` on ``config.dataset`` and write ``config.output``.

    ``on_epoch_end`` (optional) receives each epoch's metrics row after it has been
    saved, on every process; raising from it stops the run, which can then be resumed.
    """
    config = config.validated()
    ctx = dist.setup(config.device)
    try:
        return _Run(config, ctx, on_epoch_end).run()
    finally:
        dist.teardown(ctx)


# -- helpers ----------------------------------------------------------------------------
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _progress(iterable: Iterable[Any], enabled: bool, **kwargs: Any) -> Any:
    """A tqdm bar on stderr when enabled, stderr is a terminal and tqdm is installed; else the iterable itself.

    Not on a pipe or a file (CI logs, ``| tee``): a bar redrawn there becomes hundreds of
    lines, while the per-epoch line the trainer logs is the one line a log needs.
    """
    if enabled and _is_terminal(sys.stderr):
        try:
            from tqdm.auto import tqdm

            return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, **kwargs)
        except ImportError:
            pass
    return iterable


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _fingerprint(config: FinetuneConfig) -> dict[str, Any]:
    return {key: (str(getattr(config, key)) if getattr(config, key) is not None else None) for key in _FINGERPRINT}


class _Run:
    """One run's state; ``run()`` does the work in the order the module doc gives."""

    def __init__(self, config: FinetuneConfig, ctx: dist.DistContext, on_epoch_end: Callable[[dict[str, Any]], None] | None) -> None:
        self.config = config
        self.ctx = ctx
        self.on_epoch_end = on_epoch_end
        self.out = config.output
        self.state_dir = self.out / writer.STATE_DIR
        self.show = config.progress and ctx.is_main

    def _info(self, msg: str, *args: Any) -> None:
        """Log on rank 0 only: every rank sees the same summed figures."""
        if self.ctx.is_main:
            LOGGER.info(msg, *args)

    # -- setup ---------------------------------------------------------------------------
    def _load_resume_state(self, data: DataBundle) -> dict[str, Any] | None:
        if not self.config.resume:
            return None
        path = self.state_dir / writer.LAST_STATE
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConfigError(f"training state {path} cannot be read ({type(exc).__name__})", hint="start again with --overwrite") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ConfigError(f"{path} is not an sft-engine training state", hint="start again with --overwrite")
        if list(state["labels"]) != list(data.labels):
            old, new = list(state["labels"]), list(data.labels)
            raise DataError(
                f"cannot resume: the run was trained on labels {old[:8]}{' ...' if len(old) > 8 else ''} but the dataset now has {new[:8]}{' ...' if len(new) > 8 else ''}",
                hint="resume with the same dataset, or start a new run with another --output (or --overwrite)",
            )
        ours = _fingerprint(self.config)
        saved = state["fingerprint"]  # a key an older run did not record is not compared
        changed = [f"{k} {saved.get(k)!r} -> {ours[k]!r}" for k in _FINGERPRINT if k in saved and saved[k] != ours[k]]
        if changed:
            raise ConfigError(f"cannot resume with changed settings: {'; '.join(changed)}", hint="resume with the settings of the interrupted run, or start a new run")
        return state

    def _build_model(self, labels: list[str]) -> None:
        from sft_engine.models import get_arch, head_prefix

        c = self.config
        self.head_path = get_arch(c.arch).head
        self.head_prefix = head_prefix(c.arch)
        source = resolve_pretrained(c.arch, c.pretrained)
        self.pretrained_source = source
        model, self.init_desc = build_student(c.arch, len(labels), source)
        if c.freeze_backbone:
            for name, param in model.named_parameters():
                param.requires_grad_(name.startswith(self.head_prefix))
        model.to(self.ctx.device)
        self.channels_last = c.channels_last if c.channels_last is not None else self.ctx.device.type == "cuda"
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        # the L2-SP reference and the teacher are taken now, before any resumed state is loaded
        l2sp = L2SP(model, self.head_prefix) if c.reg == "l2sp" else None
        distill = None
        if c.reg == "distill":
            teacher = build_teacher(c.arch, source).to(self.ctx.device)
            if self.channels_last:
                teacher.to(memory_format=torch.channels_last)
            distill = Distill(model, self.head_path, teacher, c.distill_temperature)
        self.objective = FinetuneObjective(c.reg, float(c.reg_lambda or 0.0), c.head_lambda, c.label_smoothing, l2sp=l2sp, distill=distill)
        self.model = model

    def _loaders(self, data: DataBundle) -> None:
        c, ctx = self.config, self.ctx
        workers = c.num_workers if c.num_workers is not None else (0 if ctx.device.type != "cuda" else min(8, max(1, (os.cpu_count() or 2) // ctx.world_size)))
        common: dict[str, Any] = dict(num_workers=workers, pin_memory=ctx.device.type == "cuda", worker_init_fn=seed_worker if workers else None)
        if workers:
            common["persistent_workers"] = False
        # one permutation per (seed, epoch) for any number of processes: rank r takes every
        # world-th index of it, so a run on N processes with batch B sees the same global
        # batches as one process with batch N*B
        self.train_sampler = torch.utils.data.DistributedSampler(data.train, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=c.seed)
        per_rank = len(data.train) // ctx.world_size
        drop_last = per_rank > c.batch_size  # never a lone last sample (BatchNorm cannot train on 1)
        self.train_data = data.train
        self.train_common = dict(common, batch_size=c.batch_size, drop_last=drop_last)
        self.val_loader = torch.utils.data.DataLoader(
            data.val, batch_size=c.batch_size, shuffle=False, sampler=dist.Shard(len(data.val), ctx.rank, ctx.world_size), **common
        )
        self.steps_per_epoch = max(1, per_rank // c.batch_size if drop_last else math.ceil(per_rank / c.batch_size))

    def _train_loader(self, epoch: int) -> torch.utils.data.DataLoader:
        """A loader whose shuffling depends only on (seed, epoch), so resuming replays it."""
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        self.train_sampler.set_epoch(epoch)
        return torch.utils.data.DataLoader(self.train_data, sampler=self.train_sampler, generator=generator, **self.train_common)

    # -- epochs --------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.ctx.device.type, dtype=self.amp_dtype)

    def _to_device(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.ctx.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets.to(self.ctx.device, non_blocking=True)

    def _set_train_mode(self) -> None:
        self.model.train()
        if self.config.freeze_backbone:  # a linear probe: frozen BatchNorm statistics too
            for name, module in self.raw_model.named_modules():
                if name and not (name + ".").startswith(self.head_prefix):
                    module.eval()

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        c = self.config
        torch.manual_seed(c.seed * 100_003 + epoch * 7919 + self.ctx.rank)  # augmentation in the main process
        self._set_train_mode()
        sums = torch.zeros(6, dtype=torch.float64, device=self.ctx.device)  # loss, task, pre, head, correct, count
        loader = _progress(self._train_loader(epoch), self.show, desc=f"epoch {epoch}/{c.epochs}", leave=False, unit="batch")
        for step, (images, targets) in enumerate(loader):
            images, targets = self._to_device(images, targets)
            with self._autocast():
                logits = self.model(images)
                terms = self.objective(logits, targets, images)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(terms.total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            n = targets.shape[0]
            with torch.no_grad():
                part = torch.stack([terms.total, terms.task, terms.pre, terms.head]).double() * n
                sums[:4] += part
                sums[4] += (logits.argmax(1) == targets).sum()
                sums[5] += n
            if self.show and hasattr(loader, "set_postfix") and step % 10 == 0:
                loader.set_postfix(loss=f"{terms.total.item():.3f}", task=f"{terms.task.item():.3f}", pre=f"{terms.pre.item():.3g}")
        dist.all_reduce_sum(sums)
        values = (sums[:5] / sums[5].clamp(min=1)).tolist()
        if not all(math.isfinite(v) for v in values):
            raise SftEngineError(
                f"the training loss became {values[0]} in epoch {epoch}",
                hint="lower --lr (or --reg-lambda), or pass --amp none",
            )
        return {"train_loss": values[0], "train_task_loss": values[1], "train_pre_loss": values[2], "train_head_l2": values[3], "train_top1": values[4]}

    @torch.no_grad()
    def _evaluate(self) -> dict[str, float]:
        self.raw_model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.ctx.device)  # loss, correct, count
        for images, targets in self.val_loader:
            images, targets = self._to_device(images, targets)
            with self._autocast():
                logits = self.raw_model(images)
            sums[0] += torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
            sums[1] += (logits.argmax(1) == targets).sum()
            sums[2] += targets.shape[0]
        dist.all_reduce_sum(sums)
        count = max(1.0, sums[2].item())
        return {"val_loss": sums[0].item() / count, "val_top1": sums[1].item() / count}

    def _save_state(self, epoch: int) -> None:
        from sft_engine.models import save_state_dict

        if self.best_epoch == epoch:
            writer.atomic_write(self.state_dir / writer.BEST_WEIGHTS, lambda tmp: save_state_dict(self.raw_model, tmp))
        state = {
            "format": STATE_FORMAT,
            "epoch": epoch,
            "model": {k: v.detach().cpu() for k, v in self.raw_model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "labels": self.labels,
            "fingerprint": _fingerprint(self.config),
        }
        writer.atomic_write(self.state_dir / writer.LAST_STATE, lambda tmp: torch.save(state, str(tmp)))
        writer.write_metrics(self.out, self.history)

    # -- the run -------------------------------------------------------------------------
    def run(self) -> FinetuneResult:
        c, ctx = self.config, self.ctx
        _seed_everything(c.seed)
        if c.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        if ctx.device.type == "cuda":
            torch.backends.cudnn.benchmark = not c.deterministic
        writer.check_output(self.out, resume=c.resume, overwrite=c.overwrite)
        self.amp_dtype = resolve_amp(c, ctx.device)
        data = build_datasets(c, rank=ctx.rank)
        self.labels = list(data.labels)
        resumed = self._load_resume_state(data)
        self._build_model(self.labels)
        self._loaders(data)

        groups = param_groups(self.model, self.head_prefix, c)
        self.optimizer = make_optimizer(groups, c)
        total = c.epochs * self.steps_per_epoch
        self.scheduler = build_scheduler(self.optimizer, total, round(c.warmup_epochs * self.steps_per_epoch), c.min_lr_ratio)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.best_top1, self.best_epoch, self.bad_epochs = -1.0, 0, 0
        self.history: list[dict[str, Any]] = []
        start = 1
        if resumed is not None:
            self.model.load_state_dict(resumed["model"])
            self.optimizer.load_state_dict(resumed["optimizer"])
            self.scheduler.load_state_dict(resumed["scheduler"])
            self.scaler.load_state_dict(resumed["scaler"])
            self.best_top1, self.best_epoch = float(resumed["best_top1"]), int(resumed["best_epoch"])
            self.bad_epochs = int(resumed["bad_epochs"])
            self.history = list(resumed["history"])
            start = int(resumed["epoch"]) + 1
            self._info("resuming %s after epoch %d (best top-1 %.4f at epoch %d)", self.out, start - 1, self.best_top1, self.best_epoch)

        if ctx.is_main and not c.resume:
            writer.prepare_output(self.out, overwrite=c.overwrite)
        dist.barrier()
        self.raw_model = self.model
        if ctx.distributed:
            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self._info(
            "fine-tuning %s from %s on %s: %d classes, %d train / %d val images, %d epochs, reg %s (λ=%g), %s on %s x%d",
            c.arch, self.init_desc, data.name, len(self.labels), len(data.train), len(data.val), c.epochs, c.reg, c.reg_lambda, c.optimizer, ctx.device, ctx.world_size,
        )

        early_stopped = False
        epochs = _progress(range(start, c.epochs + 1), self.show, desc="fine-tune", unit="epoch", initial=start - 1, total=c.epochs)
        for epoch in epochs:
            started = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch}
            lrs = {g["name"].split("_")[0]: g["lr"] for g in self.optimizer.param_groups}
            row["lr"], row["head_lr"] = lrs.get("backbone", 0.0), lrs.get("head", 0.0)
            row.update(self._train_epoch(epoch))
            row.update(self._evaluate())
            improved = row["val_top1"] > self.best_top1
            if improved:
                self.best_top1, self.best_epoch, self.bad_epochs = row["val_top1"], epoch, 0
            else:
                self.bad_epochs += 1
            row["best_top1"] = self.best_top1
            row["seconds"] = round(time.perf_counter() - started, 3)
            self.history.append(row)
            self._info(
                "epoch %d/%d: loss %.4f = task %.4f + %g x pre %.4g (+ head %.4g); train top-1 %.4f; val loss %.4f, top-1 %.4f%s",
                epoch, c.epochs, row["train_loss"], row["train_task_loss"], c.reg_lambda, row["train_pre_loss"], row["train_head_l2"],
                row["train_top1"], row["val_loss"], row["val_top1"], " (best)" if improved else "",
            )
            if hasattr(epochs, "set_postfix"):
                epochs.set_postfix(val_top1=f"{row['val_top1']:.3f}", best=f"{self.best_top1:.3f}")
            if ctx.is_main:
                self._save_state(epoch)
            dist.barrier()
            if self.on_epoch_end is not None:
                self.on_epoch_end(dict(row))
            if c.early_stopping_patience is not None and self.bad_epochs >= c.early_stopping_patience and epoch < c.epochs:
                self._info("early stopping after epoch %d: no better val top-1 for %d epochs", epoch, self.bad_epochs)
                early_stopped = True
                break
        if hasattr(epochs, "close"):
            epochs.close()
        return self._finish(data, early_stopped)

    def _finish(self, data: DataBundle, early_stopped: bool) -> FinetuneResult:
        from safetensors.torch import load_file

        c, ctx = self.config, self.ctx
        epochs_run = len(self.history)
        training = {
            "epochs_planned": c.epochs,
            "early_stopped": early_stopped,
            "initialized_from": self.init_desc,
            "optimizer": c.optimizer,
            "lr": c.lr,
            "head_lr": c.head_lr or c.lr,
            "momentum": c.momentum if c.optimizer == "sgd" else None,
            "weight_decay": 0.0 if c.reg == "l2sp" else c.weight_decay,
            "warmup_epochs": c.warmup_epochs,
            "min_lr_ratio": c.min_lr_ratio,
            "batch_size": c.batch_size,
            "world_size": ctx.world_size,
            "head_lambda": c.head_lambda if c.reg == "l2sp" else None,
            "distill_temperature": c.distill_temperature if c.reg == "distill" else None,
            "label_smoothing": c.label_smoothing,
            "freeze_backbone": c.freeze_backbone,
            "augment": c.augment,
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "none",
            "device": self.ctx.device.type,
            "data": data.details,
            "final_val_top1": self.history[-1]["val_top1"] if self.history else None,
            "metrics": [writer.METRICS_JSON, writer.METRICS_CSV],
            "sft_engine_version": _version(),
        }
        training["replicas_identical"] = dist.replicas_agree(self.raw_model)  # every rank takes part
        holdout = None
        if ctx.is_main and c.holdout_images:  # before metadata.json, which marks the directory complete
            holdout = write_holdout(data.val, self.labels, self.out, c.holdout_images)
        metadata = writer.make_metadata(c, self.labels, data.name, self.best_epoch, self.best_top1, epochs_run, training, holdout)
        weights_path, meta_path = self.out / writer.WEIGHTS_NAME, self.out / writer.METADATA_NAME
        if ctx.is_main:
            best = load_file(str(self.state_dir / writer.BEST_WEIGHTS), device="cpu")
            self.raw_model.load_state_dict(best)
            weights_path, meta_path = writer.write_final(self.out, self.raw_model, metadata)
            if not c.keep_state:
                shutil.rmtree(self.state_dir, ignore_errors=True)
        dist.barrier()
        if self.objective.distill is not None:
            self.objective.distill.remove()
        if ctx.is_main or meta_path.is_file():
            metadata = writer.read_metadata(self.out)
        return FinetuneResult(
            output_dir=self.out,
            weights_path=weights_path,
            metadata_path=meta_path,
            best_top1=self.best_top1,
            best_epoch=self.best_epoch,
            epochs_run=epochs_run,
            history=list(self.history),
            labels=list(self.labels),
            metadata=metadata,
        )


def _version() -> str:
    from sft_engine import __version__

    return __version__
