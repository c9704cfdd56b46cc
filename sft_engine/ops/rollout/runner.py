"""Zero-downtime rollout of a model version on a running Triton server.

Why it cannot drop a request: every change is a load request with a config override
whose ``version_policy`` names the versions to serve, and Triton answers a load only
after the versions it adds are loaded and warmed up, keeps serving the versions it
keeps (reloading one in the background if the config changed) and lets requests in
flight finish before it unloads a version. So the sequence is:

1. **load** - the previous versions *and* the new one (``specific: [old..., new]``);
2. **ready** - the new version reports READY (its warmup has run);
3. **check** - both versions answer the parity gate's inputs, asked by version number;
   the new one must agree with the previous one (``sft_engine.ops.rollout.check``);
4. **switch** - ``specific: [new]``: the default route is the new version, the old ones
   unload once their requests in flight are done;
5. **verify** - an unversioned request is answered by the new version.

A version whose files differ from its build manifest (``repository.integrity``) is
refused before step 1. Any failure from step 1 on restores what the server served before - the previous
versions with the configuration the server reported for them - and the result says
so (exit code 1); a failed restore is reported loudly (exit code 3).

Triton routes an unversioned request to the highest-numbered READY version: between
steps 2 and 4, clients that do not pin a version already reach the new version when
its number is higher. Clients that must not see an unchecked version pin
``model_version``; for everyone else a failed check is undone within one load request.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sft_engine.errors import RepositoryError, SftEngineError
from sft_engine.ops import Notify, quiet
from sft_engine.ops.model_control import LoadFailed, ModelControl
from sft_engine.ops.modelconfig import disk_config, override, require_version
from sft_engine.ops.rollout.check import CheckReport, CheckSpec, compare_versions
from sft_engine.ops.snapshot import ServingSnapshot
from sft_engine.repository.integrity import require_intact
from sft_engine.repository.manifest import find_manifest

__all__ = ["RolloutPlan", "RolloutStep", "RolloutResult", "rollout", "rollout_at", "SWITCHED", "UNCHANGED", "ROLLED_BACK", "ROLLBACK_FAILED"]

LOGGER = logging.getLogger(__name__)

SWITCHED, UNCHANGED, ROLLED_BACK, ROLLBACK_FAILED = "switched", "unchanged", "rolled_back", "rollback_failed"
_EXIT = {SWITCHED: 0, UNCHANGED: 0, ROLLED_BACK: 1, ROLLBACK_FAILED: 3}


@dataclass
class RolloutPlan:
    """What to roll out, where, and how patiently."""

    repository: Path
    model: str
    version: int
    check: CheckSpec = field(default_factory=CheckSpec)
    ready_timeout_s: float = 300.0
    unload_timeout_s: float = 120.0


@dataclass
class RolloutStep:
    name: str
    ok: bool
    detail: str
    seconds: float


@dataclass
class RolloutResult:
    model: str
    version: int
    previous: list[int]
    outcome: str = SWITCHED
    reason: str | None = None
    hint: str | None = None
    serving: list[int] = field(default_factory=list)
    check: CheckReport | None = None
    steps: list[RolloutStep] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return _EXIT[self.outcome]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["check"] = self.check.to_dict() if self.check else None
        out["exit_code"] = self.exit_code
        return out


class _Failed(Exception):
    """A step failed; the rollout restores the previous state."""

    def __init__(self, step: str, reason: str, hint: str | None = None) -> None:
        super().__init__(reason)
        self.step, self.reason, self.hint = step, reason, hint


class _Rollout:
    def __init__(self, plan: RolloutPlan, control: ModelControl, progress: Notify) -> None:
        self.plan = plan
        self.control = control
        self.progress = progress
        self.cfg = disk_config(plan.repository, plan.model)
        self.version_dir = require_version(plan.repository, plan.model, plan.version)
        require_intact(self.version_dir)  # a damaged version is refused before anything changes

    def _step(self, result: RolloutResult, name: str, started: float, ok: bool, detail: str) -> None:
        result.steps.append(RolloutStep(name, ok, detail, round(time.monotonic() - started, 3)))
        self.progress(f"{name:<8} {'ok' if ok else 'FAILED'}: {detail}")

    def run(self) -> RolloutResult:
        plan, control = self.plan, self.control
        control.check_live()
        if not control.known_to_server(plan.model):
            raise RepositoryError(f"the server at {control.url} has no model {plan.model!r} in its repository",
                                  hint="point --url at the server that serves --repository")
        snapshot = ServingSnapshot.take(control, plan.model)
        previous = list(snapshot.versions)
        result = RolloutResult(model=plan.model, version=plan.version, previous=previous, serving=list(previous))
        if previous == [plan.version]:
            result.outcome = UNCHANGED
            result.reason = f"version {plan.version} is already the only version served"
            return result
        try:
            self._advance(result, previous)
        except _Failed as failure:
            result.reason, result.hint = failure.reason, failure.hint
            self._step(result, failure.step, time.monotonic(), False, failure.reason)
            self._restore(result, snapshot)
        except (SftEngineError, KeyboardInterrupt) as exc:
            if isinstance(exc, SftEngineError) and not result.steps:
                raise  # refused before anything changed (e.g. not explicit mode): nothing to undo
            result.reason = f"interrupted: {exc}" if isinstance(exc, KeyboardInterrupt) else str(exc)
            self._restore(result, snapshot)
            if isinstance(exc, KeyboardInterrupt):
                raise
        return result

    # -- the forward path ------------------------------------------------------------
    def _advance(self, result: RolloutResult, previous: list[int]) -> None:
        plan, control = self.plan, self.control
        name, new = plan.model, plan.version
        started = time.monotonic()
        both = sorted(set(previous) | {new})
        try:
            seconds = control.load(name, override(self.cfg, both))
        except LoadFailed as exc:
            raise _Failed("load", f"version {new} failed to load: {exc.message}", "fix or rebuild the version; the server log has details") from None
        self._step(result, "load", started, True, f"serving versions {', '.join(map(str, both))} (load took {seconds:.1f} s)")

        started = time.monotonic()
        if not control.wait_ready(name, new, plan.ready_timeout_s):
            raise _Failed("ready", f"version {new} did not become ready within {plan.ready_timeout_s:.0f} s",
                          "check the server log; raise --ready-timeout for slow models")
        lost = [v for v in previous if not control.is_ready(name, v)]
        if lost:
            raise _Failed("ready", f"version(s) {', '.join(map(str, lost))} stopped being ready while version {new} loaded",
                          "check the server log")
        self._step(result, "ready", started, True, f"version {new} is ready (warmup done)")

        older = [v for v in previous if v != new]
        started = time.monotonic()
        if older:
            reference = max(older)
            report = compare_versions(
                control, name, self.cfg, reference, new,
                find_manifest(plan.repository / name / str(reference)), find_manifest(self.version_dir), plan.check,
            )
            result.check = report
            if not report.passed:
                raise _Failed("check", f"{report.summary()}: {'; '.join(report.reasons)}", report.hint)
            self._step(result, "check", started, True, report.summary())
        else:
            self._step(result, "check", started, True, "nothing was served before: no previous version to compare with")

        started = time.monotonic()
        try:
            control.load(name, override(self.cfg, [new]))
        except LoadFailed as exc:
            raise _Failed("switch", f"switching to version {new} failed: {exc.message}", "check the server log") from None
        left = control.wait_gone(name, older, plan.unload_timeout_s)
        detail = f"serving version {new} only"
        if older:
            detail += f"; version(s) {', '.join(map(str, older))} " + (f"still unloading after {plan.unload_timeout_s:.0f} s" if left else "unloaded")
        self._step(result, "switch", started, True, detail)

        started = time.monotonic()
        answered = self._answering_version()
        if answered is not None and answered != new:
            raise _Failed("verify", f"an unversioned request was answered by version {answered}, not {new}", "another client may be changing the model")
        result.serving = control.ready_versions(name)
        self._step(result, "verify", started, True, f"unversioned requests are answered by version {new}" if answered else "no request sent (variable input dims)")
        result.outcome = SWITCHED

    def _answering_version(self) -> int | None:
        cfg = self.cfg
        dims = [int(d) for d in cfg.input[0].dims]
        if cfg.max_batch_size < 1 or any(d < 1 for d in dims):
            return None
        batch = np.zeros((1, *dims), dtype=np.float32)
        return self.control.infer(self.plan.model, None, cfg.input[0].name, cfg.output[0].name, batch)[1]

    # -- the way back ----------------------------------------------------------------
    def _restore(self, result: RolloutResult, snapshot: ServingSnapshot) -> None:
        plan, control = self.plan, self.control
        previous = list(snapshot.versions)
        started = time.monotonic()
        try:
            snapshot.restore(control)
            added = [] if plan.version in previous else [plan.version]
            control.wait_gone(plan.model, added, plan.unload_timeout_s)
            serving = control.ready_versions(plan.model)
        except (LoadFailed, SftEngineError) as exc:
            result.outcome = ROLLBACK_FAILED
            message = getattr(exc, "message", str(exc))
            self._step(result, "rollback", started, False, f"restoring version(s) {previous} failed: {message}")
            return
        result.serving = serving
        if sorted(serving) != sorted(previous):
            result.outcome = ROLLBACK_FAILED
            self._step(result, "rollback", started, False, f"the server serves {serving or 'nothing'}, expected {previous or 'nothing'}")
            return
        result.outcome = ROLLED_BACK
        what = f"version(s) {', '.join(map(str, previous))} serving as before" if previous else "model unloaded, as before"
        self._step(result, "rollback", started, True, f"{what}; version {plan.version} unloaded")


def rollout(plan: RolloutPlan, control: ModelControl, progress: Notify = quiet) -> RolloutResult:
    """Roll ``plan.version`` out on the server behind ``control``; see the module docstring.

    Raises an SftEngineError for what prevents starting (a version that does not exist,
    no server, a server not in explicit model-control mode); every failure after the
    first change ends in a result whose outcome is ``rolled_back`` (or ``rollback_failed``).
    """
    plan.check.validate()
    return _Rollout(plan, control, progress).run()


def rollout_at(url: str, plan: RolloutPlan, progress: Notify = quiet, admin_key: str | None = None) -> RolloutResult:
    """``rollout`` on the server whose HTTP endpoint is ``url`` (``host:port``); a load may take
    as long as the plan lets a version become ready, so the control client waits that long.
    ``admin_key``: the server's, where its model-repository API is restricted."""
    with ModelControl(url, load_timeout_s=max(60.0, plan.ready_timeout_s), admin_key=admin_key) as control:
        return rollout(plan, control, progress)
