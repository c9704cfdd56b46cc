"""Warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from sft_engine.finetune.schedule import build_scheduler, warmup_cosine


def test_warmup_rises_linearly_to_one() -> None:
    assert [warmup_cosine(s, 100, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_cosine_decays_from_one_to_the_minimum() -> None:
    values = [warmup_cosine(s, 100, 10, min_ratio=0.1) for s in range(10, 101)]
    assert values[0] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.1)
    assert warmup_cosine(55, 100, 10, min_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert warmup_cosine(500, 100, 10, min_ratio=0.1) == pytest.approx(0.1)


def test_no_warmup_starts_at_the_peak() -> None:
    assert warmup_cosine(0, 10, 0) == 1.0
    assert warmup_cosine(5, 10, 0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_scheduler_applies_the_factor_to_every_group() -> None:
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 1.0}])
    sched = build_scheduler(opt, total_steps=10, warmup_steps=2)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.5])
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 1.0])
