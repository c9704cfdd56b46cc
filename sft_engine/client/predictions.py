"""Typed classification results: softmax probabilities, computed on the client.

Why not Triton's classification extension (``class_count``) for results: it returns
the top-k *raw output values* (logits for sft-engine models) as text, so the scores
are not probabilities, cannot be turned into probabilities without the other
classes, and lose precision in formatting. The client asks for the full logits
(binary, or through shared memory) and computes a numerically stable softmax over all
classes, so ``score`` is a probability in [0, 1] and the scores of all classes of an
image sum to 1. The ranking is the same as Triton's: both sort the same logits.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

__all__ = ["Prediction", "softmax", "top_k"]


class Prediction(NamedTuple):
    """One ranked class for one image.

    ``score`` is the softmax probability over all classes; ``logit`` the model's raw
    output for the class (what Triton's ``class_count`` would report as its value).
    A named tuple: immutable, typed, and cheap to create by the thousand.
    """

    label: str
    index: int
    score: float
    logit: float


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: the row maximum is subtracted first)."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def top_k(logits: np.ndarray, k: int, labels: Sequence[str]) -> list[list[Prediction]]:
    """The ``k`` most likely classes of each row, best first (ties: lower index first)."""
    logits = np.asarray(logits)
    logits = logits.reshape(len(logits), -1)
    k = max(1, min(int(k), logits.shape[1]))
    probs = softmax(logits)
    if k < logits.shape[1] // 2:
        part = np.argpartition(-logits, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(part, np.lexsort((part, -np.take_along_axis(logits, part, axis=1)), axis=1), axis=1)
    else:
        order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(probs, order, axis=1).tolist()
    values = np.take_along_axis(logits, order, axis=1).astype(np.float64).tolist()
    names = [labels[i] if i < len(labels) else str(i) for i in range(logits.shape[1])]
    make = Prediction
    return [[make(names[i], i, s, v) for i, s, v in zip(idx, srow, vrow)] for idx, srow, vrow in zip(order.tolist(), scores, values)]
