"""``sft-engine serve``: the embedded tritonserver on loopback, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from sft_engine.server import DEFAULT_TRITON_TAG, ServerConfig, TritonServer


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model repository with the embedded tritonserver (loopback by default)")
    p.add_argument("--repository", default="model_repository", metavar="DIR")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; anything else exposes the server)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--model-control-mode", choices=("none", "poll", "explicit"), default="none")
    p.add_argument("--load-model", action="append", default=[], metavar="NAME", help="with explicit mode: models to load at start")
    p.add_argument("--log-verbose", type=int, default=0)
    p.add_argument("--print-docker", action="store_true", help="print the equivalent NGC container command for GPU hosts and exit")
    p.add_argument("--triton-tag", default=None, help=f"NGC container tag for --print-docker (default: from the build manifests, else {DEFAULT_TRITON_TAG})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.print_docker:
        tag = args.triton_tag or _tag_from_manifests(Path(args.repository))
        if tag is None:
            if _has_gpu_engines(Path(args.repository)):
                print(f"warning: no build manifest names an NGC container whose TensorRT matches; using {DEFAULT_TRITON_TAG} "
                      "(pass --triton-tag; see docs/gpu.md)", file=sys.stderr)
            tag = DEFAULT_TRITON_TAG
        from sft_engine.ops.deploy_spec import docker_commands

        print(docker_commands(Path(args.repository), tag=tag))
        return 0
    cfg = ServerConfig(
        repository=Path(args.repository), host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
        metrics_port=args.metrics_port, model_control_mode=args.model_control_mode, load_models=args.load_model,
        log_verbose=args.log_verbose,
    )
    # A plain flag, not a threading.Event: Event.set() takes a lock that the main thread
    # may be holding inside Event.wait() when the signal arrives, and would deadlock.
    stopping: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    _finish_interrupted_publish(cfg.repository)
    server = TritonServer(cfg)
    print(f"starting tritonserver on {cfg.host} for {cfg.repository} ...", flush=True)
    with server:
        print(f"ready\n  HTTP     http://{server.http_url}\n  gRPC     {server.grpc_url}\n  metrics  {server.metrics_url}", flush=True)
        for name in _model_names(cfg.repository):
            print(f"  model    http://{server.http_url}/v2/models/{name}/config", flush=True)
        print("press Ctrl-C to stop", flush=True)
        while not stopping:
            time.sleep(0.2)  # interrupted by the signal; the handler only appends to the list
            if not stopping and not server.is_alive():
                print(f"tritonserver exited: {server.last_error()}", flush=True)
                return 1
        print("stopping ...", flush=True)
    print("stopped", flush=True)
    return 0


def _finish_interrupted_publish(repository: Path) -> None:
    """A build killed after its commit point is finished before the server reads the repository."""
    from sft_engine.repository.writer import recover

    try:
        changed = recover(repository)
    except OSError as exc:
        print(f"warning: cannot check {repository} for an interrupted publish: {exc}", file=sys.stderr)
        return
    for name in changed:
        print(f"finished an interrupted publish of {name}", flush=True)


def _has_gpu_engines(repository: Path) -> bool:
    return any(repository.glob("*/*/model.plan")) or any(repository.glob("*/*/model.pt"))


def _model_names(repository: Path) -> list[str]:
    return sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").is_file())


def _tag_from_manifests(repository: Path) -> str | None:
    """The NGC tag a GPU build recorded (its TensorRT must match the container's)."""
    from sft_engine.repository.manifest import MANIFEST_NAME, find_manifest

    tags = set()
    for path in repository.glob(f"*/*/{MANIFEST_NAME}"):
        manifest = find_manifest(path.parent)
        if manifest is not None and manifest.triton_container_tag:
            tags.add(manifest.triton_container_tag)
    return sorted(tags)[-1] if tags else None
