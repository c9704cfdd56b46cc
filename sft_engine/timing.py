"""Small, honest timing helpers shared by the build's engine selection and the benchmarks.

Candidates are timed interleaved in short blocks (A-block, B-block, A-block, ...) rather
than one after another, so that a noisy neighbour on a shared machine slows them alike
and the *ratio* stays meaningful even when absolute times drift. Blocks, not single
calls: two runtimes with their own thread pools (ONNX Runtime's spinning workers,
PyTorch's OpenMP team) alternated call by call fight over the cores and both look
slower than either is alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

__all__ = ["LatencyStats", "latency_stats", "time_closed_loop", "time_interleaved"]


@dataclass(frozen=True)
class LatencyStats:
    iterations: int
    batch_size: int
    p50_ms: float
    p99_ms: float
    mean_ms: float

    @property
    def images_per_s(self) -> float:
        return self.batch_size / (self.p50_ms / 1000.0) if self.p50_ms > 0 else 0.0

    def to_dict(self) -> dict[str, float]:
        return {
            "iterations": self.iterations, "batch_size": self.batch_size, "p50_ms": round(self.p50_ms, 4),
            "p99_ms": round(self.p99_ms, 4), "mean_ms": round(self.mean_ms, 4), "images_per_s": round(self.images_per_s, 2),
        }


def latency_stats(samples: list[float], batch: int) -> LatencyStats:
    """Per-call durations in seconds → percentiles in milliseconds."""
    arr = np.asarray(samples) * 1000.0
    return LatencyStats(len(arr), batch, float(np.percentile(arr, 50)), float(np.percentile(arr, 99)), float(arr.mean()))


def time_closed_loop(fn: Callable[[np.ndarray], object], batch: np.ndarray, budget_s: float, min_iters: int = 5, warmup: int = 2) -> LatencyStats:
    """Call ``fn(batch)`` back to back for ``budget_s`` (and at least ``min_iters`` times)."""
    for _ in range(warmup):
        fn(batch)
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < min_iters or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        fn(batch)
        samples.append(time.perf_counter() - t0)
    return latency_stats(samples, len(batch))


def time_interleaved(
    fns: Mapping[str, Callable[[np.ndarray], object]],
    batch: np.ndarray,
    min_iters: int = 5,
    budget_s: float = 3.0,
    warmup: int = 2,
    blocks: int = 3,
) -> dict[str, LatencyStats]:
    """Time each function on ``batch``: ``blocks`` rounds of one block per function.

    Each block re-warms its function (``warmup`` untimed calls: the other runtime has
    just had the cores), then times calls for its share of ``budget_s`` and at least
    ``ceil(min_iters / blocks)`` calls.
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    share = budget_s / max(1, blocks * len(fns))
    per_block = max(1, -(-min_iters // blocks))
    for _ in range(blocks):
        for name, fn in fns.items():
            for _ in range(warmup):
                fn(batch)
            start = time.perf_counter()
            count = 0
            while count < per_block or (time.perf_counter() - start < share and count < 10_000):
                t0 = time.perf_counter()
                fn(batch)
                samples[name].append(time.perf_counter() - t0)
                count += 1
    return {name: latency_stats(vals, len(batch)) for name, vals in samples.items()}
