"""``sft-engine serve``: the embedded tritonserver on loopback, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sft_engine.ngc import DEFAULT_TRITON_TAG
from sft_engine.server import ServerConfig


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
    from sft_engine.ngc import container_tag
    from sft_engine.serving import docker_commands_for, serve_until_stopped

    repository = Path(args.repository)
    if args.print_docker:
        tag, warning = container_tag(repository, args.triton_tag)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        print(docker_commands_for(repository, tag))
        return 0
    cfg = ServerConfig(
        repository=repository, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
        metrics_port=args.metrics_port, model_control_mode=args.model_control_mode, load_models=args.load_model,
        log_verbose=args.log_verbose,
    )
    return serve_until_stopped(cfg, report=lambda line: print(line, flush=True), warn=lambda line: print(line, file=sys.stderr))
