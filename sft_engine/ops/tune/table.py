"""The printout of a tune: one line per candidate while it runs, a table at the end."""

from __future__ import annotations

from sft_engine.ops.tune.config import TuneResult
from sft_engine.ops.tune.search import Candidate

__all__ = ["candidate_table", "candidate_line"]


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _row(c: Candidate, percentile: float) -> list[str]:
    cap = _fmt(c.capacity_rps, ",.1f")
    lat = _fmt(c.latency_ms, ".2f")
    summary = f"{c.verdict}: capacity {cap} req/s, p{percentile:g} {lat} ms" + (f" ({c.note})" if c.note else "")
    return [
        str(c.index), str(c.knobs.instances) + (f"x{len(c.knobs.gpus)}gpu" if c.knobs.gpus else ""), str(c.knobs.max_batch_size),
        str(c.knobs.queue_delay_us), cap, lat, _fmt(c.at_rate_rps, ",.1f"), _fmt(None if c.cpu_utilization is None else 100 * c.cpu_utilization, ".0f", "%"),
        _fmt(None if c.gpu_utilization is None else 100 * c.gpu_utilization, ".0f", "%"), f"{c.seconds:.0f}", summary,
    ]


def candidate_table(result: TuneResult) -> str:
    """The candidates as a fixed-width table, best marked with ``*``."""
    head = ["#", "instances", "max_batch", "delay_us", "capacity_rps", f"p{result.percentile:g}_ms", "at_rps", "cpu", "gpu", "seconds", "verdict"]
    rows = []
    for c in result.candidates:
        row = _row(c, result.percentile)
        row[0] = ("*" if c is result.best else " ") + row[0]
        row[-1] = c.verdict + (f" ({c.note})" if c.note else "")
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) if i < len(head) - 1 else h for i, (h, w) in enumerate(zip(head, widths)))]
    for r in rows:
        lines.append("  ".join(v.rjust(w) if i < len(head) - 1 else v for i, (v, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def candidate_line(c: Candidate, percentile: float) -> str:
    """The one-line outcome of a candidate, as ``tune`` reports it while it runs."""
    return _row(c, percentile)[-1]
