"""What a tune is asked to do (``TuneConfig``) and what it found (``TuneResult``).

Both live apart from the search that fills them so that the measurement
(``bench``) and the printout (``table``) can name them without importing the runner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft_engine.errors import ConfigError
from sft_engine.ops.tune.search import Candidate

__all__ = ["TuneConfig", "TuneResult"]


@dataclass
class TuneConfig:
    repository: Path
    model: str
    #: scenario (SLO) TOML, the load-test harness's format: [load], [slo], [validity], [capacity]
    slo_file: Path
    budget_s: float = 600.0
    #: version whose engine is tuned (default: the latest)
    version: int | None = None
    #: values to try per knob; None: a small grid around the current configuration
    max_batch_sizes: tuple[int, ...] | None = None
    queue_delays_us: tuple[int, ...] | None = None
    instance_counts: tuple[int, ...] | None = None
    #: GPU ids for KIND_GPU instance groups (instances are per GPU)
    gpus: tuple[int, ...] = ()
    #: HTTP endpoint of a server in explicit mode; None starts an embedded one
    url: str | None = None
    metrics_url: str | None = None
    allow_remote: bool = False
    workers: int | None = None
    #: the admin key of the server at ``url`` (the embedded server gets a fresh one of its own)
    admin_key: str | None = field(default=None, repr=False)

    def validate(self) -> None:
        if not math.isfinite(self.budget_s) or self.budget_s <= 0:
            raise ConfigError(f"--budget must be > 0 seconds, got {self.budget_s}", hint="e.g. --budget 600")


@dataclass
class TuneResult:
    model: str
    version: int
    percentile: float
    slo: dict[str, Any]
    baseline: Candidate
    best: Candidate | None
    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    budget_s: float = 0.0
    seconds: float = 0.0
    config_text: str | None = None
    published_version: int | None = None

    @property
    def met(self) -> bool:
        return self.best is not None and self.best.meets_slo

    @property
    def improves(self) -> bool:
        return self.met and self.best is not None and self.best.knobs != self.baseline.knobs

    @property
    def exit_code(self) -> int:
        return 0 if self.met else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "version": self.version, "slo": self.slo, "gated_percentile": self.percentile,
            "met": self.met, "best": self.best.to_dict() if self.best else None, "baseline": self.baseline.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates], "skipped": self.skipped,
            "budget_s": self.budget_s, "seconds": round(self.seconds, 1), "published_version": self.published_version,
            "config_pbtxt": self.config_text, "exit_code": self.exit_code,
        }
