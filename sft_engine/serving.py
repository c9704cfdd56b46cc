"""Serving a model repository in the foreground: what ``sft-engine serve`` does, as functions.

``serve_until_stopped`` finishes a publish a killed build left half-done, keeps a
damaged version (files differing from its manifest) out of what is served, starts the
embedded tritonserver, reports its endpoints, and keeps it up until SIGINT/SIGTERM or
until the server dies; ``docker_commands_for`` prints the equivalent ``docker run``
(the NGC container is ``ngc``'s). The command line only parses and prints.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable

from sft_engine.server import ServerConfig, TritonServer
from sft_engine.watchdog import ModelWatchdog, WatchdogConfig

__all__ = ["serve_until_stopped", "model_names", "docker_commands_for", "models_to_load"]

Report = Callable[[str], None]


def model_names(repository: Path) -> list[str]:
    """The models of a repository (folders with a config.pbtxt)."""
    return sorted(p.name for p in Path(repository).iterdir() if (p / "config.pbtxt").is_file())


def models_to_load(repository: Path, names: list[str]) -> list[str]:
    """``--load-model`` names, checked against the repository, each with its image models.

    Checked before the server starts, so that a typo is one line naming the model and
    those that exist, not tritonserver's "failed to load all models". A model's
    ``<name>_preprocess`` and ``<name>_image`` (the ensemble from image bytes) come with
    it: a served engine without them would answer tensors but not files.
    """
    from sft_engine.errors import ConfigError

    repository = Path(repository)
    available = model_names(repository) if repository.is_dir() else []
    wanted: list[str] = []
    for name in names:
        if name not in available:
            there = ", ".join(available) or "none"
            raise ConfigError(f"--load-model {name}: no model {name!r} in {repository} (models there: {there})",
                              hint=f"pass one of them, or build it first: sft-engine build ... --name {name}")
        for model in (name, f"{name}_preprocess", f"{name}_image"):
            if model in available and model not in wanted:
                wanted.append(model)
    return wanted


def docker_commands_for(repository: Path, tag: str) -> str:
    """The container image build and ``docker run`` lines that serve ``repository`` on a GPU host.

    The repository is read for the Python packages its models need (``ops``' scan);
    ``ngc.docker_commands`` writes the commands.
    """
    from sft_engine.errors import RepositoryError
    from sft_engine.ngc import docker_commands
    from sft_engine.ops.deploy.spec import dockerfile, scan_repository

    try:
        info = scan_repository(Path(repository))
    except RepositoryError:  # nothing servable yet: the plain command still says how
        return docker_commands(Path(repository), tag=tag)
    return docker_commands(Path(repository), tag=tag, dockerfile=dockerfile(info, tag) if info.requirements else None)


def _finish_interrupted_publish(repository: Path, report: Report, warn: Report) -> None:
    """A build killed after its commit point is finished before the server reads the repository."""
    from sft_engine.repository.writer import recover

    try:
        changed = recover(repository)
    except OSError as exc:
        warn(f"warning: cannot check {repository} for an interrupted publish: {exc}")
        return
    for name in changed:
        report(f"finished an interrupted publish of {name}")


def _exclude_damaged_versions(repository: Path, warn: Report) -> None:
    """A version whose files differ from its manifest is kept out; the previous one serves (``repository.integrity``)."""
    from sft_engine.repository.integrity import exclude_damaged

    for line in exclude_damaged(repository):
        warn(f"warning: {line}")


def serve_until_stopped(cfg: ServerConfig, report: Report, warn: Report, watchdog: WatchdogConfig | None = WatchdogConfig()) -> int:
    """Serve until SIGINT/SIGTERM (returns 0) or until tritonserver exits by itself (returns 1).

    ``report`` receives the progress lines (endpoints, models, stopping), ``warn`` the
    warnings. ``watchdog`` (None: off) checks every model with a real inference and
    reloads one that fails (``sft_engine.watchdog``); "ready" is printed only once every
    model has answered such a check. A plain list flag, not a threading.Event, records
    the signal: Event.set() takes a lock that the main thread may be holding inside Event.wait() when the signal
    arrives, and would deadlock.
    """
    stopping: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    _finish_interrupted_publish(cfg.repository, report, warn)
    _exclude_damaged_versions(cfg.repository, warn)
    explicit = cfg.model_control_mode == "explicit"
    if explicit and "*" not in cfg.load_models:
        cfg.load_models = models_to_load(cfg.repository, list(cfg.load_models))
    server = TritonServer(cfg)
    report(f"starting tritonserver on {cfg.host} for {cfg.repository} ...")
    with server:
        names = served_models(cfg)
        dog = ModelWatchdog(server, names, report, watchdog or WatchdogConfig())
        failing = [h for h in dog.check_all() if not h.ok]
        for health in failing:
            warn(f"warning: model {health.model} does not answer: {health.message}")
        report(f"{'ready' if not failing else 'started (not every model answers)'}\n  HTTP     http://{server.http_url}\n  gRPC     {server.grpc_url}\n"
               f"  metrics  {server.metrics_url}\n  pid      {os.getpid()} (this process; its tritonserver: {server.pid})")
        for name in names:  # only what is loaded: in explicit mode, the --load-model names and their image models
            report(f"  model    http://{server.http_url}/v2/models/{name}/config")
        if explicit and not names:
            report("  no model loaded (explicit mode): load one with POST /v2/repository/models/NAME/load")
        report("press Ctrl-C to stop")
        if watchdog is not None:
            dog.start()
        try:
            code = _wait(server, dog, stopping, report)
        finally:
            dog.stop()
    if code == 0:
        report("stopped")
    return code


def served_models(cfg: ServerConfig) -> list[str]:
    """The models the server was told to load (explicit mode), else every model of the repository."""
    if cfg.model_control_mode == "explicit" and cfg.load_models and "*" not in cfg.load_models:
        return list(cfg.load_models)
    return model_names(cfg.repository)


def _wait(server: TritonServer, dog: ModelWatchdog, stopping: list[int], report: Report) -> int:
    """Until a signal (0) or the server's death (1); a restart by the watchdog is not a death."""
    while not stopping:
        time.sleep(0.2)  # interrupted by the signal; the handler only appends to the list
        if not stopping and not dog.restarting and not server.is_alive():
            report(f"tritonserver exited: {server.last_error()}")
            return 1
    report("stopping ...")
    return 0
