"""Learning-rate schedule: linear warmup, then cosine decay, stepped every batch.

Warmup matters most when fine-tuning: the new head starts random, and its first large
gradients would otherwise flow into (and damage) the pretrained backbone.
"""

from __future__ import annotations

import math

import torch

__all__ = ["warmup_cosine", "build_scheduler"]


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """The learning-rate factor at optimizer step ``step`` (0-based).

    Rises linearly to 1 over ``warmup_steps`` steps (1/W, 2/W, ... 1), then follows a
    half cosine from 1 down to ``min_ratio`` at ``total_steps``; stays there after.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR applying ``warmup_cosine`` to every parameter group's base lr."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total_steps, warmup_steps, min_ratio))
