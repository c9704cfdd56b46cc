"""HDR histograms of latencies in microseconds, recorded in bulk and merged across processes.

Why HdrHistogram: every percentile (p50 ... p99.99) stays within 0.1% of the true
value at any magnitude from 1 us to an hour, histograms of different workers and
windows add exactly, and the compressed V2 encoding is the interchange format other
HDR tools read (``HistogramLogAnalyzer``, ``hdr-plot``).

Why bulk recording: the ``hdrhistogram`` package records one value at a time in
pure Python. Workers keep raw timestamps during the run (an ``array.append`` per
request) and turn them into histograms after the step with numpy, using the exact
HdrHistogram bucket arithmetic, so recording costs nothing while load is applied.
Percentiles are read from the counts array with numpy for the same reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
from hdrh.histogram import HdrHistogram

__all__ = ["LatencyHistogram", "LatencySummary", "LOWEST_US", "HIGHEST_US", "SIGNIFICANT_DIGITS"]

LOWEST_US = 1
#: one hour: anything slower is clamped (and a run that slow has other problems)
HIGHEST_US = 3_600_000_000
SIGNIFICANT_DIGITS = 3


@dataclass
class LatencySummary:
    """Percentiles and moments of one histogram, in milliseconds."""

    count: int = 0
    min_ms: float | None = None
    mean_ms: float | None = None
    stddev_ms: float | None = None
    max_ms: float | None = None
    percentiles: dict[str, float] = field(default_factory=dict)

    def get(self, q: float) -> float | None:
        return self.percentiles.get(f"p{q:g}")


class LatencyHistogram:
    """An HdrHistogram of microsecond values (1 us .. 1 h, 3 significant digits)."""

    def __init__(self, hist: HdrHistogram | None = None) -> None:
        self.hist = hist if hist is not None else HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        self._counts = np.ctypeslib.as_array(self.hist.counts)

    # -- recording ----------------------------------------------------------------
    def record_us(self, values: Iterable[float] | np.ndarray) -> None:
        """Record many microsecond values at once (rounded, clamped to 1 us .. 1 h)."""
        arr = np.asarray(values, dtype=np.float64)
        if arr.size == 0:
            return
        ints = np.clip(np.rint(arr), LOWEST_US, HIGHEST_US).astype(np.int64)
        idx = self._indices(ints)
        np.add.at(self._counts, idx, 1)
        h = self.hist
        h.total_count += int(ints.size)
        h.min_value = min(h.min_value, int(ints.min()))
        h.max_value = max(h.max_value, int(ints.max()))

    def _indices(self, values: np.ndarray) -> np.ndarray:
        """HdrHistogram's counts index for each value (vectorized ``_counts_index_for``)."""
        h = self.hist
        masked = (values | h.sub_bucket_mask).astype(np.float64)  # exact below 2**53
        pow2ceiling = np.frexp(masked)[1].astype(np.int64)  # = bit_length
        bucket = pow2ceiling - h.unit_magnitude - (h.sub_bucket_half_count_magnitude + 1)
        sub_bucket = values >> (bucket + h.unit_magnitude)
        return ((bucket + 1) << h.sub_bucket_half_count_magnitude) + sub_bucket - h.sub_bucket_half_count

    # -- merging / transport --------------------------------------------------------
    def add(self, other: "LatencyHistogram") -> "LatencyHistogram":
        if other.count:
            self._counts += other._counts
            self.hist.total_count += other.hist.total_count
            self.hist.min_value = min(self.hist.min_value, other.hist.min_value)
            self.hist.max_value = max(self.hist.max_value, other.hist.max_value)
        return self

    def encode(self) -> str:
        """Compressed, base64 HdrHistogram V2 encoding (what other HDR tools read)."""
        encoded = self.hist.encode()
        return encoded.decode("ascii") if isinstance(encoded, bytes) else str(encoded)

    @classmethod
    def decode(cls, text: str | bytes) -> "LatencyHistogram":
        hist = HdrHistogram.decode(text.encode("ascii") if isinstance(text, str) else text)
        out = cls()
        decoded = np.ctypeslib.as_array(hist.counts)
        n = min(decoded.size, out._counts.size)
        out._counts[:n] += decoded[:n]
        total = int(out._counts.sum())
        out.hist.total_count = total
        if total:
            nz = np.flatnonzero(out._counts)
            out.hist.min_value = int(out.hist.get_value_from_index(int(nz[0])))
            out.hist.max_value = int(out.hist.get_value_from_index(int(nz[-1])))
        return out

    @classmethod
    def merge(cls, parts: Iterable["LatencyHistogram | str"]) -> "LatencyHistogram":
        out = cls()
        for part in parts:
            out.add(cls.decode(part) if isinstance(part, (str, bytes)) else part)
        return out

    # -- reading ------------------------------------------------------------------
    @property
    def count(self) -> int:
        return int(self.hist.total_count)

    def percentiles_us(self, qs: Iterable[float]) -> dict[float, float]:
        """HdrHistogram percentiles (highest equivalent value of the bucket holding the q-th value)."""
        qs = list(qs)
        total = self.count
        if not total:
            return {q: math.nan for q in qs}
        cumulative = np.cumsum(self._counts)
        out: dict[float, float] = {}
        for q in qs:
            target = max(1, int(min(q, 100.0) * total / 100.0 + 0.5))
            index = int(np.searchsorted(cumulative, target, side="left"))
            value = self.hist.get_value_from_index(index)
            out[q] = float(self.hist.get_highest_equivalent_value(value) if q > 0 else self.hist.get_lowest_equivalent_value(value))
        return out

    def percentile_us(self, q: float) -> float:
        return self.percentiles_us([q])[q]

    def min_us(self) -> float:
        if not self.count:
            return math.nan
        index = int(np.flatnonzero(self._counts)[0])
        return float(self.hist.get_lowest_equivalent_value(self.hist.get_value_from_index(index)))

    def max_us(self) -> float:
        if not self.count:
            return math.nan
        index = int(np.flatnonzero(self._counts)[-1])
        return float(self.hist.get_highest_equivalent_value(self.hist.get_value_from_index(index)))

    def _bucket_values(self) -> tuple[np.ndarray, np.ndarray]:
        """Non-empty buckets: (median equivalent value, count)."""
        nz = np.flatnonzero(self._counts)
        h = self.hist
        mids = np.array([h._hdr_median_equiv_value(h.get_value_from_index(int(i))) for i in nz], dtype=np.float64)
        return mids, self._counts[nz].astype(np.float64)

    def mean_stddev_us(self) -> tuple[float, float]:
        if not self.count:
            return math.nan, math.nan
        values, counts = self._bucket_values()
        mean = float((values * counts).sum() / counts.sum())
        var = float((((values - mean) ** 2) * counts).sum() / counts.sum())
        return mean, math.sqrt(var)

    def count_above_us(self, threshold_us: float) -> int:
        """How many recorded values are above ``threshold_us`` (bucket resolution)."""
        if not self.count:
            return 0
        index = int(self._indices(np.array([int(max(LOWEST_US, min(HIGHEST_US, threshold_us)))], dtype=np.int64))[0])
        return int(self._counts[index + 1:].sum())

    def summary(self, qs: Iterable[float]) -> LatencySummary:
        """Percentiles and moments in milliseconds; empty histogram -> count 0 and Nones."""
        qs = list(qs)
        if not self.count:
            return LatencySummary(count=0, percentiles={})
        mean, std = self.mean_stddev_us()
        pct = self.percentiles_us(qs)
        return LatencySummary(
            count=self.count,
            min_ms=_ms(self.min_us()),
            mean_ms=_ms(mean),
            stddev_ms=_ms(std),
            max_ms=_ms(self.max_us()),
            percentiles={f"p{q:g}": _ms(v) for q, v in pct.items()},
        )


def _ms(us: float) -> float:
    return round(us / 1000.0, 4)
