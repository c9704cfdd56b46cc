"""The optimizer side of fine-tuning: parameter groups, the optimizer, mixed precision.

Kept apart from the loop in ``trainer.py`` because these are pure functions of the config
and the model: which parameters decay, at which learning rate, and which autocast dtype a
device supports.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch
from torch import nn

from sft_engine.engines.cpu.isa import cpu_bf16_isa
from sft_engine.errors import ConfigError
from sft_engine.finetune.config import FinetuneConfig

__all__ = ["param_groups", "make_optimizer", "resolve_amp", "layer_ids"]

#: a numbered block: ``3`` (nn.Sequential), ``encoder_layer_3`` (torchvision ViT), ``layer3``, ``block_3``, ``stage3``
_NUMBERED = re.compile(r"^(\d+|(encoder_)?layers?_?\d+|blocks?_?\d+|stages?_?\d+)$")


def _block_key(name: str) -> str | None:
    """The block a parameter belongs to: its path up to the first run of numbered components, None before any."""
    parts, key = name.split("."), []
    seen = False
    for part in parts[:-1]:
        if _NUMBERED.match(part):
            seen = True
            key.append(part)
        elif seen:
            break
        else:
            key.append(part)
    return ".".join(key) if seen else None


def layer_ids(model: nn.Module, head: str) -> dict[str, int]:
    """Depth of each parameter: 0 for the embedding, one per block, the head (and what follows the last block) last.

    timm models say it themselves (``group_matcher``, as timm's own layer decay uses);
    for the others each numbered block (``encoder_layer_3``, ``features.1.0``) is one layer.
    """
    names = [n for n, _ in model.named_parameters()]
    if hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        ids = {n: int(i) for n, i in group_parameters(model, model.group_matcher(coarse=False), reverse=True).items()}
    else:
        ids, current, last = {}, 0, None
        for name in names:
            key = _block_key(name)
            if key is None:
                ids[name] = current if last is not None else 0
                if last is not None and last != "<after>":  # the final norm after the blocks: one more layer
                    current += 1
                    last = "<after>"
                    ids[name] = current
                continue
            if key != last:
                current += 1
                last = key
            ids[name] = current
    top = max((i for n, i in ids.items() if not n.startswith(head)), default=0) + 1
    return {n: (top if n.startswith(head) else ids.get(n, top)) for n in names}


def param_groups(model: nn.Module, head: str, config: FinetuneConfig) -> list[dict[str, Any]]:
    """Backbone and head groups (own learning rates), each split into decayed / not decayed.

    With ``layer_decay`` < 1 (AdamW on transformer families by default) the backbone is
    split further by depth (``layer_ids``): layer i of L trains at ``lr * layer_decay **
    (L - i)``, the head at its own learning rate. Biases and norm parameters (1-d) are
    never decayed. Under L2-SP weight decay is
    off: it would pull the backbone towards zero while L2-SP pulls it towards the
    pretrained weights, and the head already has its own L2 term.
    """
    decay = 0.0 if config.reg == "l2sp" else config.weight_decay
    lrs = {"backbone": config.lr, "head": config.head_lr or config.lr}
    layer_decay = float(config.layer_decay) if isinstance(config.layer_decay, (int, float)) else 1.0
    depth = layer_ids(model, head) if layer_decay < 1.0 else {}
    top = max(depth.values(), default=0)
    buckets: dict[tuple[str, int, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "head" if name.startswith(head) else "backbone"
        buckets.setdefault((part, depth.get(name, top) if part == "backbone" else top, param.ndim > 1), []).append(param)
    return [
        {"params": params, "lr": lrs[part] * layer_decay ** (top - layer), "weight_decay": decay if decayed else 0.0,
         "name": f"{part}{f'_l{layer}' if depth and part == 'backbone' else ''}{'' if decayed else '_no_decay'}"}
        for (part, layer, decayed), params in sorted(buckets.items())
    ]


def make_optimizer(groups: list[dict[str, Any]], config: FinetuneConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.lr)


def resolve_amp(config: FinetuneConfig, device: torch.device, bf16_isa: Callable[[], str | None] = cpu_bf16_isa) -> torch.dtype | None:
    """The autocast dtype of the run, or None for FP32.

    On CUDA ``auto`` is bf16 where supported, else fp16 (with a gradient scaler). On a
    CPU only ``--amp bf16`` turns autocast on, and only where the CPU has bf16 in
    hardware (``bf16_isa()``: AMX-BF16 / AVX512-BF16, read from /proc/cpuinfo): elsewhere PyTorch emulates bf16 and trains slower than FP32. ``auto`` stays
    FP32 on CPUs, so that a run's numerics do not depend on which CPU it landed on.
    """
    if device.type == "cpu" and config.amp == "bf16":
        if not bf16_isa():
            raise ConfigError("--amp bf16 on this CPU would run emulated: it has neither AMX-BF16 nor AVX512-BF16",
                              hint="pass --amp none (or auto), or run on a CPU with bf16 in hardware or with --device cuda")
        return torch.bfloat16
    if device.type != "cuda":
        if config.amp == "fp16":
            raise ConfigError(f"--amp fp16 needs a CUDA device, this run is on {device}", hint="pass --amp none, auto or (on CPUs with AMX/AVX512-BF16) bf16, or --device cuda")
        return None
    if config.amp == "none":
        return None
    if config.amp == "fp16":
        return torch.float16
    if config.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16
