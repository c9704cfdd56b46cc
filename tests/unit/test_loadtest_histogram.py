"""HDR histograms: bulk recording matches hdrhistogram's own, merging across workers is exact."""

from __future__ import annotations

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram

from sft_engine.loadtest.histogram import HIGHEST_US, LatencyHistogram


def _values(n: int = 5000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.rint(rng.lognormal(mean=7.0, sigma=1.6, size=n)).clip(1, 10**9).astype(np.int64)


def test_bulk_recording_matches_hdrhistogram_bucket_for_bucket() -> None:
    values = _values()
    reference = HdrHistogram(1, HIGHEST_US, 3)
    for v in values:
        reference.record_value(int(v))
    ours = LatencyHistogram()
    ours.record_us(values)
    assert np.array_equal(np.ctypeslib.as_array(reference.counts), np.ctypeslib.as_array(ours.hist.counts))
    for q in (0.0, 50.0, 90.0, 99.0, 99.9, 100.0):
        assert ours.percentile_us(q) == reference.get_value_at_percentile(q)
    assert ours.count == reference.get_total_count() == values.size
    assert ours.max_us() == reference.get_max_value()
    mean, std = ours.mean_stddev_us()
    assert mean == reference.get_mean_value()
    assert abs(std - reference.get_stddev()) < 1e-6 * reference.get_stddev()


def test_merge_of_encoded_parts_equals_one_histogram() -> None:
    values = _values(9000, seed=1)
    whole = LatencyHistogram()
    whole.record_us(values)
    parts = []
    for chunk in np.array_split(values, 3):  # three "workers"
        h = LatencyHistogram()
        h.record_us(chunk)
        parts.append(h.encode())
    merged = LatencyHistogram.merge(parts)
    assert merged.count == whole.count
    assert merged.percentiles_us([50, 99, 99.9]) == whole.percentiles_us([50, 99, 99.9])
    assert merged.min_us() == whole.min_us() and merged.max_us() == whole.max_us()


def test_values_are_rounded_and_clamped() -> None:
    h = LatencyHistogram()
    h.record_us([0.2, -5.0, 2.6, 10.0**12])
    assert h.count == 4
    assert h.min_us() == 1.0
    assert h.max_us() >= HIGHEST_US * 0.999


def test_count_above_counts_the_tail() -> None:
    h = LatencyHistogram()
    h.record_us([1000] * 90 + [500_000] * 10)
    assert h.count_above_us(250_000) == 10
    assert h.count_above_us(100) == 100
    assert h.count_above_us(600_000) == 0


def test_summary_in_milliseconds_and_empty() -> None:
    h = LatencyHistogram()
    empty = h.summary([50, 99])
    assert empty.count == 0 and empty.percentiles == {} and empty.get(50) is None
    h.record_us([1000, 2000, 3000, 4000])
    s = h.summary([50, 99.9])
    assert s.count == 4
    # HDR reports the highest value equivalent to the bucket: within 0.1% (3 significant digits)
    assert s.get(50) == pytest.approx(2.0, rel=1e-3) and s.get(99.9) == pytest.approx(4.0, rel=1e-3)
    assert s.min_ms == pytest.approx(1.0, rel=1e-3) and s.max_ms == pytest.approx(4.0, rel=1e-3)
