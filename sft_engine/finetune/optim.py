"""The optimizer side of fine-tuning: parameter groups, the optimizer, mixed precision.

Kept apart from the loop in ``trainer.py`` because these are pure functions of the config
and the model: which parameters decay, at which learning rate, and which autocast dtype a
device supports.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sft_engine.errors import ConfigError
from sft_engine.finetune.config import FinetuneConfig

__all__ = ["param_groups", "make_optimizer", "resolve_amp"]


def param_groups(model: nn.Module, head: str, config: FinetuneConfig) -> list[dict[str, Any]]:
    """Backbone and head groups (own learning rates), each split into decayed / not decayed.

    Biases and norm parameters (1-d) are never decayed. Under L2-SP weight decay is
    off: it would pull the backbone towards zero while L2-SP pulls it towards the
    pretrained weights, and the head already has its own L2 term.
    """
    decay = 0.0 if config.reg == "l2sp" else config.weight_decay
    lrs = {"backbone": config.lr, "head": config.head_lr or config.lr}
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "head" if name.startswith(head) else "backbone"
        buckets.setdefault((part, param.ndim > 1), []).append(param)
    return [
        {"params": params, "lr": lrs[part], "weight_decay": decay if decayed else 0.0, "name": f"{part}{'' if decayed else '_no_decay'}"}
        for (part, decayed), params in sorted(buckets.items())
    ]


def make_optimizer(groups: list[dict[str, Any]], config: FinetuneConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.lr)


def resolve_amp(config: FinetuneConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        if config.amp in ("bf16", "fp16"):
            raise ConfigError(f"--amp {config.amp} needs a CUDA device, this run is on {device}", hint="pass --amp none (or auto), or --device cuda")
        return None
    if config.amp == "none":
        return None
    if config.amp == "fp16":
        return torch.float16
    if config.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16
