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
    p.add_argument("--host", default=None, help="bind address (default loopback; anything else exposes the server)")
    p.add_argument("--allow-remote", action="store_true",
                   help="bind all interfaces (0.0.0.0) unless --host says which; with explicit/poll model control needs --admin-key-file")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--model-control-mode", choices=("none", "poll", "explicit"), default=None,
                   help="default explicit (rollout works, a failing model is reloaded alone) on loopback or with --admin-key-file, "
                        "else none (a failing model restarts the server)")
    p.add_argument("--load-model", action="append", default=[], metavar="NAME",
                   help="with explicit mode: models to load at start (default every model of the repository)")
    p.add_argument("--watchdog-interval", type=float, default=1.0, metavar="SECONDS",
                   help="check every model with a real inference this often and reload one that fails (0 = off)")
    p.add_argument("--admin-key-file", type=Path, default=None, metavar="FILE",
                   help="restrict the model-repository, shared-memory, statistics, trace and logging APIs to requests with the key "
                        "in FILE (header sft-engine-admin-key); created with a random key, mode 0600, when absent")
    p.add_argument("--tls-cert", type=Path, default=None, metavar="PEM", help="gRPC over TLS: the server certificate (with --tls-key)")
    p.add_argument("--tls-key", type=Path, default=None, metavar="PEM", help="gRPC over TLS: the server certificate's private key")
    p.add_argument("--tls-client-ca", type=Path, default=None, metavar="PEM", help="mutual TLS: clients need a certificate of this CA")
    p.add_argument("--log-verbose", type=int, default=0)
    p.add_argument("--print-docker", action="store_true", help="print the equivalent NGC container command for GPU hosts and exit")
    p.add_argument("--triton-tag", default=None, help=f"NGC container tag for --print-docker (default: from the build manifests, else {DEFAULT_TRITON_TAG})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sft_engine.ngc import container_tag
    from sft_engine.serving import docker_commands_for, model_names, serve_until_stopped
    from sft_engine.watchdog import WatchdogConfig

    repository = Path(args.repository)
    if args.print_docker:
        tag, warning = container_tag(repository, args.triton_tag)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        print(docker_commands_for(repository, tag))
        return 0
    from sft_engine.errors import ConfigError
    from sft_engine.triton.address import is_loopback
    from sft_engine.triton.security import ServerTls, ensure_admin_key_file

    host = args.host or ("0.0.0.0" if args.allow_remote else "127.0.0.1")
    if args.watchdog_interval < 0:
        raise ConfigError(f"--watchdog-interval {args.watchdog_interval:g} is negative", hint="pass seconds > 0, or 0 to turn it off")
    if args.model_control_mode is None:
        args.model_control_mode = "explicit" if is_loopback(host) or args.admin_key_file is not None else "none"
    if args.model_control_mode != "none" and not is_loopback(host) and args.admin_key_file is None:
        raise ConfigError(f"--model-control-mode {args.model_control_mode} on {host} lets anyone who reaches it load code",
                          hint="pass --admin-key-file FILE (created with a random key when absent)")
    if (args.tls_cert is None) != (args.tls_key is None) or (args.tls_client_ca is not None and args.tls_cert is None):
        raise ConfigError("gRPC TLS needs both --tls-cert and --tls-key", hint="--tls-client-ca adds mutual TLS on top of them")
    key = None
    if args.admin_key_file is not None:
        key, created = ensure_admin_key_file(args.admin_key_file)
        print(f"admin key: {'created ' if created else ''}{args.admin_key_file} (header sft-engine-admin-key)", flush=True)
    tls = ServerTls(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert is not None else None
    load = list(args.load_model)
    if args.model_control_mode == "explicit" and not load and repository.is_dir():
        load = model_names(repository)
    cfg = ServerConfig(
        repository=repository, host=host, http_port=args.http_port, grpc_port=args.grpc_port,
        metrics_port=args.metrics_port, model_control_mode=args.model_control_mode, load_models=load,
        log_verbose=args.log_verbose, admin_key=key, tls=tls,
    )
    watchdog = WatchdogConfig(interval_s=args.watchdog_interval) if args.watchdog_interval > 0 else None
    return serve_until_stopped(cfg, report=lambda line: print(line, flush=True), warn=lambda line: print(line, file=sys.stderr),
                               watchdog=watchdog)
