"""Scores are softmax probabilities; the ranking is the logits' ranking (Triton's class_count order)."""

from __future__ import annotations

import numpy as np

from sft_engine.client.predictions import Prediction, softmax, top_k

LABELS = ["cat", "dog", "ship", "frog", "bird", "car"]


def test_softmax_rows_are_probabilities_and_stable():
    x = np.array([[1000.0, 1001.0, 999.0], [0.0, 0.0, 0.0]], np.float32)
    p = softmax(x)
    assert np.allclose(p.sum(axis=1), 1.0) and np.all(np.isfinite(p))
    assert np.allclose(p[1], 1 / 3)
    e = np.exp([-1.0, 0.0, -2.0])
    assert np.allclose(p[0], e / e.sum())


def test_top_k_ranks_by_logit_with_labels_and_probabilities():
    logits = np.array([[0.1, 2.0, -1.0, 0.5, 0.0, 1.0]], np.float32)
    (preds,) = top_k(logits, 3, LABELS)
    assert [p.label for p in preds] == ["dog", "car", "frog"]
    assert [p.index for p in preds] == [1, 5, 3]
    probs = softmax(logits)[0]
    assert np.allclose([p.score for p in preds], probs[[1, 5, 3]])
    assert preds[0].logit == np.float32(2.0)
    assert isinstance(preds[0], Prediction)


def test_both_selection_paths_agree_with_a_full_sort():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((50, 40)).astype(np.float32)
    labels = [f"c{i}" for i in range(40)]
    for k in (1, 3, 19, 20, 40):
        got = [[p.index for p in row] for row in top_k(logits, k, labels)]
        want = np.argsort(-logits, axis=1, kind="stable")[:, :k].tolist()
        assert got == want, k


def test_ties_rank_the_lower_index_first_and_k_is_clamped():
    logits = np.array([[1.0, 3.0, 3.0, 0.0]], np.float32)
    assert [p.index for p in top_k(logits, 2, LABELS)[0]] == [1, 2]
    assert len(top_k(logits, 99, LABELS)[0]) == 4


def test_missing_labels_fall_back_to_the_index():
    assert top_k(np.array([[0.0, 1.0]]), 1, [])[0][0].label == "1"
