"""Serving a model repository in the foreground: what ``sft-engine serve`` does, as functions.

``serve_until_stopped`` finishes a publish a killed build left half-done, starts the
embedded tritonserver, reports its endpoints, and keeps it up until SIGINT/SIGTERM or
until the server dies; ``container_tag`` picks the NGC container for the equivalent
``docker run`` from what the builds recorded. The command line only parses and prints.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable

from sft_engine.server import DEFAULT_TRITON_TAG, ServerConfig, TritonServer

__all__ = ["serve_until_stopped", "container_tag", "model_names", "docker_commands_for", "models_to_load"]

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


def _has_gpu_engines(repository: Path) -> bool:
    return any(repository.glob("*/*/model.plan")) or any(repository.glob("*/*/model.pt"))


def _tag_from_manifests(repository: Path) -> str | None:
    """The NGC tag a GPU build recorded (its TensorRT must match the container's)."""
    from sft_engine.repository.manifest import MANIFEST_NAME, find_manifest

    tags = set()
    for path in repository.glob(f"*/*/{MANIFEST_NAME}"):
        manifest = find_manifest(path.parent)
        if manifest is not None and manifest.triton_container_tag:
            tags.add(manifest.triton_container_tag)
    return sorted(tags)[-1] if tags else None


def container_tag(repository: Path, given: str | None = None) -> tuple[str, str | None]:
    """The NGC container tag to serve ``repository`` in, and a warning when it is a guess.

    ``given`` wins; else the newest tag a build manifest recorded; else the default,
    with a warning when GPU engines are present (their TensorRT may not match it).
    """
    repository = Path(repository)
    tag = given or _tag_from_manifests(repository)
    if tag is not None:
        return tag, None
    warning = None
    if _has_gpu_engines(repository):
        warning = (f"no build manifest names an NGC container whose TensorRT matches; using {DEFAULT_TRITON_TAG} "
                   "(pass --triton-tag; see docs/gpu.md)")
    return DEFAULT_TRITON_TAG, warning


def docker_commands_for(repository: Path, tag: str) -> str:
    """The container image build and ``docker run`` lines that serve ``repository`` on a GPU host."""
    from sft_engine.ops.deploy_spec import docker_commands

    return docker_commands(Path(repository), tag=tag)


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


def serve_until_stopped(cfg: ServerConfig, report: Report, warn: Report) -> int:
    """Serve until SIGINT/SIGTERM (returns 0) or until tritonserver exits by itself (returns 1).

    ``report`` receives the progress lines (endpoints, models, stopping), ``warn`` the
    warnings; a plain list flag, not a threading.Event, records the signal: Event.set()
    takes a lock that the main thread may be holding inside Event.wait() when the signal
    arrives, and would deadlock.
    """
    stopping: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    _finish_interrupted_publish(cfg.repository, report, warn)
    explicit = cfg.model_control_mode == "explicit"
    if explicit:
        cfg.load_models = models_to_load(cfg.repository, list(cfg.load_models))
    server = TritonServer(cfg)
    report(f"starting tritonserver on {cfg.host} for {cfg.repository} ...")
    with server:
        report(f"ready\n  HTTP     http://{server.http_url}\n  gRPC     {server.grpc_url}\n  metrics  {server.metrics_url}\n"
               f"  pid      {os.getpid()} (this process; its tritonserver: {server.pid})")
        served = cfg.load_models if explicit else model_names(cfg.repository)
        for name in served:  # only what is loaded: in explicit mode, the --load-model names and their image models
            report(f"  model    http://{server.http_url}/v2/models/{name}/config")
        if explicit and not served:
            report("  no model loaded (explicit mode): load one with POST /v2/repository/models/NAME/load")
        report("press Ctrl-C to stop")
        while not stopping:
            time.sleep(0.2)  # interrupted by the signal; the handler only appends to the list
            if not stopping and not server.is_alive():
                report(f"tritonserver exited: {server.last_error()}")
                return 1
        report("stopping ...")
    report("stopped")
    return 0
