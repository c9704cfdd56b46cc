"""The parity gate's rules one at a time: each failing alone, with its own reason."""

from __future__ import annotations

import numpy as np
import pytest

from sft_engine.verify import ParityData, Tolerance, check_parity

#: ten inputs, two classes, class 1 ahead by 1e-4 (well inside the 1e-3 logit tolerance)
REFERENCE = np.tile(np.array([[0.0, 1e-4]], dtype=np.float32), (10, 1))
INPUTS = np.zeros((10, 3, 4, 4), dtype=np.float32)


def _gate(engine_logits: np.ndarray, labels: np.ndarray | None = None, **tolerance: float):
    return check_parity("test", REFERENCE, lambda batch: engine_logits[: len(batch)] if len(batch) == len(engine_logits) else None,
                        ParityData(INPUTS, labels), Tolerance(**tolerance), batch_size=len(INPUTS))


def test_identical_outputs_pass():
    report = _gate(REFERENCE.copy(), labels=np.ones(10, dtype=np.int64))
    assert report.passed and report.reasons == [] and report.top1_agreement == 1.0 and report.engine_accuracy == 1.0


def test_top1_agreement_alone_fails_the_gate():
    flipped = REFERENCE.copy()
    flipped[:2] = [1e-4, 0.0]  # two of ten decisions change, logits within tolerance
    report = _gate(flipped)
    assert not report.passed
    assert report.max_abs_diff <= report.allowed_abs_diff
    assert report.reasons == ["top-1 agreement 80.00% < 99.00%"]
    assert _gate(flipped, min_top1_agreement=0.8).passed  # exactly at the bound passes


def test_accuracy_drop_alone_fails_the_gate():
    flipped = REFERENCE.copy()
    flipped[:1] = [1e-4, 0.0]  # one of ten labelled images now wrong: 10 points
    labels = np.ones(10, dtype=np.int64)
    report = _gate(flipped, labels=labels, min_top1_agreement=0.0)
    assert not report.passed
    assert (report.eager_accuracy, report.engine_accuracy) == (1.0, pytest.approx(0.9))
    assert report.reasons == ["accuracy drop 10.00 points > 0.3"]
    assert _gate(flipped, labels=labels, min_top1_agreement=0.0, max_accuracy_drop=10.0).passed
    assert _gate(flipped, min_top1_agreement=0.0).passed  # without labels there is no accuracy rule


def test_a_better_engine_is_no_accuracy_drop():
    labels = np.zeros(10, dtype=np.int64)
    better = REFERENCE.copy()
    better[:5] = [1e-4, 0.0]
    assert _gate(better, labels=labels, min_top1_agreement=0.0).passed


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_outputs_fail_the_gate(bad):
    broken = REFERENCE.copy()
    broken[3, 0] = bad
    report = _gate(broken, min_top1_agreement=0.0, atol=1e9)
    assert not report.passed
    assert report.reasons[0] == "engine produced non-finite values"
    if np.isnan(bad):
        assert report.reasons == ["engine produced non-finite values"]  # NaN compares false: only this rule catches it
