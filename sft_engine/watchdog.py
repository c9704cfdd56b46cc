"""Keeps a served model answering when its engine process dies: probe, reload, report.

Why ``serve`` does this itself: Triton 2.51's Python backend does not restart a dead
stub (the restart it had until 24.05 was removed when its decoupled and plain paths
were unified), and its model readiness keeps saying READY, so a model whose stub was
killed fails every request until someone reloads it (docs/operations.md, "Faults").

Every ``interval_s`` each model gets a health check (``triton.health``: readiness plus a
real inference). A model that fails it is reloaded: in explicit model-control mode
with a load request whose config override is the configuration the server runs it
with (so a rollout's version policy survives), through the admin key when the
repository API is restricted. The override carries one parameter more (the time of the
reload): a load of an unchanged model whose files are older than its last load is a
no-op for Triton and would leave the dead stub in place, and an unload waits on that
dead stub. In the other modes, which refuse explicit loads, by
restarting tritonserver on the same ports. One line reports the fault, one the
recovery with the time it took.

A model whose own traffic shows it answering (its success count rose since the last
check and its failure count did not, from the statistics API) is not sent a health
inference: under load the probe would only add requests to what a load test measures
and to the server-side counts it reconciles. An idle model, or one whose failures
rose, gets the real inference.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from sft_engine.server import TritonServer
from sft_engine.triton.address import Address
from sft_engine.triton.control import ControlError, HttpControl
from sft_engine.triton.health import Health, check_model

__all__ = ["WatchdogConfig", "ModelWatchdog"]

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatchdogConfig:
    """How often to check, and how long a recovery may take before it is tried again."""

    interval_s: float = 1.0
    probe_timeout_s: float = 5.0
    recover_timeout_s: float = 60.0


class ModelWatchdog:
    """A daemon thread that checks ``models`` on ``server`` and repairs the failing ones; a context manager."""

    def __init__(self, server: TritonServer, models: list[str], report: Callable[[str], None],
                 config: WatchdogConfig = WatchdogConfig()) -> None:
        self.server = server
        self.models = list(models)
        self.report = report
        self.config = config
        self.faults = 0
        #: True while the watchdog restarts tritonserver (its death then is not a crash)
        self.restarting = False
        self.recoveries: list[float] = []
        self._health: dict[str, Health] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sft-watchdog", daemon=True)
        self._configs: dict[str, dict[str, Any]] = {}
        #: per model, the (success, fail) counts of the last check, the probe's own answer included
        self._counts: dict[str, tuple[int, int]] = {}

    def _control(self) -> HttpControl:
        cfg = self.server.config
        return HttpControl(Address(cfg.host, cfg.http_port, "http"), timeout_s=self.config.probe_timeout_s,
                           load_timeout_s=self.config.recover_timeout_s, admin_key=cfg.admin_key)

    def ready(self) -> dict[str, Health]:
        """The last verdict per model (what ``serve``'s readiness reports)."""
        return dict(self._health)

    def check_all(self) -> list[Health]:
        control = self._control()
        out = []
        for model in self.models:
            counts = _counts(control, model)
            last, self._counts[model] = self._counts.get(model), counts
            if counts is not None and last is not None and counts[0] > last[0] and counts[1] == last[1]:
                health = Health(model, True)  # its own requests were answered, and none failed: no probe needed
                self._health[model] = health
                out.append(health)
                continue
            health = check_model(control, model, config=self._configs.get(model), timeout_s=self.config.probe_timeout_s)
            if counts is not None and health.ok:
                self._counts[model] = (counts[0] + 1, counts[1])  # the probe's own success is not traffic
            if health.ok and model not in self._configs:
                try:
                    self._configs[model] = control.model_config(model)
                except ControlError:
                    pass
            self._health[model] = health
            out.append(health)
        return out

    def start(self) -> "ModelWatchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.config.recover_timeout_s + 5)

    def __enter__(self) -> "ModelWatchdog":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.config.interval_s):
            if not self.server.is_alive():
                return  # serve notices a dead server itself and exits
            try:
                failing = [h for h in self.check_all() if not h.ok]
                if failing:
                    self._recover(failing)
            except Exception:  # noqa: BLE001 - the watchdog must outlive any one bad check
                LOGGER.exception("model watchdog check failed")

    def _recover(self, failing: list[Health]) -> None:
        started = time.monotonic()
        self.faults += 1
        names = ", ".join(h.model for h in failing)
        how = "reloading it" if self.server.config.model_control_mode == "explicit" else "restarting tritonserver"
        self.report(f"fault: model {names} fails requests ({failing[0].message}); {how}")
        try:
            if self.server.config.model_control_mode == "explicit":
                control = self._control()
                for health in failing:
                    try:  # what the server runs now: a rollout's version policy stays
                        live = control.model_config(health.model)
                    except ControlError:
                        live = self._configs.get(health.model)
                    control.load_model(health.model, _marked(live, started))
            else:
                self.restarting = True
                try:
                    self.server.restart()
                finally:
                    self.restarting = False
        except Exception as exc:  # noqa: BLE001 - reported, tried again at the next check
            self.report(f"recovery of {names} failed: {' '.join(str(exc).split())}; trying again")
            return
        deadline = started + self.config.recover_timeout_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            healths = {h.model: h for h in self.check_all()}
            if all(healths[h.model].ok for h in failing):
                took = time.monotonic() - started
                self.recoveries.append(took)
                self.report(f"recovered: model {names} answers again after {took:.2f} s")
                return
            time.sleep(0.1)
        self.report(f"recovery of {names} did not complete within {self.config.recover_timeout_s:.0f} s; trying again")


def _counts(control: HttpControl, model: str) -> tuple[int, int] | None:
    """The model's cumulative (success, fail) request counts over its versions, or None when they cannot be read."""
    try:
        stats = control.statistics(model)
    except ControlError:
        return None
    success = fail = 0
    for version in stats.get("model_stats", []):
        inference = version.get("inference_stats", {})
        success += int(inference.get("success", {}).get("count", 0))
        fail += int(inference.get("fail", {}).get("count", 0))
    return success, fail


def _marked(config: dict[str, Any] | None, when: float) -> dict[str, Any] | None:
    """``config`` with a reload marker parameter, so Triton sees a changed config and loads it anew."""
    if config is None:
        return None
    params = dict(config.get("parameters") or {})
    params["sft_engine_reloaded"] = {"string_value": f"{when:.3f}"}
    return {**config, "parameters": params}
