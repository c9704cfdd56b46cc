"""``sft-engine rollout``, ``sft-engine check``, ``sft-engine tune`` and ``sft-engine deploy {k8s,compose}``.

Operations on a served repository: switch a running server to a new version without
dropping requests, search the serving configuration that meets an SLO at the least
cost, and write what a cluster or a compose host needs to serve the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sft_engine.commands.security_flags import add_admin_key_flag, admin_key_from
from sft_engine.errors import ConfigError

__all__ = ["register"]

_ROLLOUT_EPILOG = """\
the server must run in explicit model-control mode:
  sft-engine serve --repository model_repository --model-control-mode explicit --load-model resnet18_demo
then:
  sft-engine rollout --repository model_repository --model resnet18_demo --version 2
exit codes: 0 switched (or already serving), 1 check or load failed and rolled back,
2 bad input (no such version, server not in explicit mode), 3 rollback failed (inspect the server)
"""


def register(sub: argparse._SubParsersAction) -> None:
    _register_rollout(sub)
    _register_check(sub)
    _register_tune(sub)
    _register_deploy(sub)


def _gpus(text: str | None) -> tuple[int, ...]:
    """``--gpus 0,1``: the build's parser, so the ids mean and fail the same in every command."""
    from sft_engine.build_config import parse_gpu_ids

    return parse_gpu_ids(text, "--gpus") if text else ()


def _control_url(text: str, allow_remote: bool) -> str:
    """``--url``: Triton's HTTP endpoint as ``host:port``, loopback unless ``--allow-remote``."""
    from sft_engine.triton.address import parse_local_address

    return parse_local_address(text, "http", allow_remote=allow_remote).url


# -- rollout --------------------------------------------------------------------------
#: sft_engine.ops.rollout.check.CHECK_MODES, spelled out so that --help does not import the ops modules
CHECK_MODES = ("parity", "top1", "sanity")


def _register_rollout(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rollout", help="switch a running server to another model version without dropping requests",
                       description="Load version N beside the served one, check it against the served one on the live server, "
                                   "switch, unload the old one; roll back on any failure.",
                       epilog=_ROLLOUT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", default="model_repository", metavar="DIR", help="the repository the server serves")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--version", type=int, required=True, help="version to roll out")
    p.add_argument("--url", default="127.0.0.1:8000", metavar="HOST:PORT", help="the server's HTTP endpoint (default 127.0.0.1:8000)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --url")
    add_admin_key_flag(p)
    p.add_argument("--check", choices=CHECK_MODES, default="parity",
                   help="parity: outputs within the build's parity tolerance of the served version (rebuilds); "
                        "top1: top-1 classes agree (retrained weights); sanity: finite outputs of the right shape")
    p.add_argument("--min-agreement", type=float, default=None, help="top-1 agreement needed with --check top1 (default: the build's)")
    p.add_argument("--check-samples", type=int, default=None, help="inputs of the check (default: the build's parity samples)")
    p.add_argument("--ready-timeout", type=float, default=300.0, metavar="SECONDS")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_rollout)


def run_rollout(args: argparse.Namespace) -> int:
    from sft_engine.ops.rollout.check import CheckSpec
    from sft_engine.ops.rollout.runner import RolloutPlan, rollout_at

    if args.version < 1:
        raise ConfigError(f"--version {args.version} is not a version number", hint="versions start at 1")
    plan = RolloutPlan(
        repository=Path(args.repository), model=args.model, version=args.version,
        check=CheckSpec(mode=args.check, min_agreement=args.min_agreement, samples=args.check_samples),
        ready_timeout_s=args.ready_timeout,
    )
    url = _control_url(args.url, args.allow_remote)
    progress = (lambda _: None) if args.json else (lambda msg: print(msg, flush=True))
    result = rollout_at(url, plan, progress, admin_key=admin_key_from(args))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return result.exit_code
    served = ", ".join(map(str, result.serving)) or "nothing"
    if result.outcome in ("switched", "unchanged"):
        print(f"{result.model}: serving version {served}" + (f" ({result.reason})" if result.reason else ""))
    elif result.outcome == "rolled_back":
        print(f"error: rollout of {result.model} version {result.version} failed: {result.reason}"
              + (f" ({result.hint})" if result.hint else ""), file=sys.stderr)
        print(f"rolled back: serving version {served} as before", file=sys.stderr)
    else:
        print(f"error: rollout of {result.model} version {result.version} failed ({result.reason}) AND THE ROLLBACK FAILED: "
              f"the server now serves {served}; inspect it (GET /v2/repository/index) and load the wanted version by hand",
              file=sys.stderr)
    return result.exit_code


# -- check ----------------------------------------------------------------------------
def _register_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="verify every version of every model against its build manifest (sha256 of each file)",
                       epilog="exit codes: 0 every file matches, 1 a file is missing, truncated or altered (each is listed), 2 bad input")
    p.add_argument("--repository", default="model_repository", metavar="DIR", help="the model repository to verify")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from sft_engine.repository.integrity import verify_repository

    checks = verify_repository(Path(args.repository))
    damaged = [c for c in checks if not c.intact]
    if args.json:
        print(json.dumps([{"model": c.model, "version": c.version, "verifiable": c.verifiable, "files": c.files,
                           "damage": [{"path": str(d.path), "problem": d.problem, "detail": d.detail} for d in c.damage]}
                          for c in checks], indent=2))
        return 1 if damaged else 0
    for c in checks:
        if not c.verifiable:
            print(f"{c.model} version {c.version}: not verifiable (no build manifest with file hashes)")
        elif c.intact:
            print(f"{c.model} version {c.version}: ok ({c.files} files)")
    for c in damaged:
        for d in c.damage:
            print(f"DAMAGED {c.model} version {c.version}: {d.line()}", file=sys.stderr)
    verified = sum(1 for c in checks if c.verifiable)
    print(f"{len(damaged)} of {verified} verifiable version(s) damaged" if damaged else f"all {verified} verifiable version(s) match their manifests")
    return 1 if damaged else 0


# -- tune -----------------------------------------------------------------------------
_TUNE_EPILOG = """\
the SLO file is the load-test scenario format ([load], [slo], [validity], [capacity]), e.g.:
  [load]
  duration_s = 5
  warmup_s = 1
  [slo]
  p99_ms = 50
examples:
  sft-engine tune --repository model_repository --model resnet18_demo --slo loadtest/capacity.toml --budget 600
  sft-engine tune ... --max-batch-sizes 4,8,16 --queue-delays-us 0,500 --instance-counts 1,2 --dry-run
  sft-engine tune ... --url 127.0.0.1:8000   (a running server in explicit mode, restored afterwards)
exit codes: 0 a configuration meets the SLO (written as a new version, or printed with --dry-run),
1 none meets it or none could be measured validly (INVALID, with its reason), 2 bad input
"""


def _int_list(text: str | None, flag: str, allow_zero: bool = False) -> tuple[int, ...] | None:
    """``--max-batch-sizes 1,2,4`` (or a range ``1:8:1``): the load test's number-list parser, whole numbers only."""
    from sft_engine.loadtest.spec import parse_number_list

    if text is None:
        return None
    return tuple(int(v) for v in parse_number_list(text, flag, integer=True, allow_zero=allow_zero))


def _register_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="search batch size, queue delay and instances for the most load within an SLO",
                       description="Load each candidate configuration through the repository API, find its capacity under "
                                   "open-loop load against the SLO, and publish the best as a new version.",
                       epilog=_TUNE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", default="model_repository", metavar="DIR")
    p.add_argument("--model", required=True)
    p.add_argument("--version", type=int, default=None, help="version whose engine is tuned (default: the latest)")
    p.add_argument("--slo", type=Path, required=True, metavar="FILE", help="SLO/scenario TOML (the load-test format)")
    p.add_argument("--budget", type=float, default=600.0, metavar="SECONDS", help="time for the whole search (default 600)")
    p.add_argument("--max-batch-sizes", default=None, metavar="B[,B...]", help="values to try (default: 1 and powers of two up to the built maximum)")
    p.add_argument("--queue-delays-us", default=None, metavar="US[,US...]", help="dynamic-batching queue delays to try (default 0,100,500,2000 within half the SLO)")
    p.add_argument("--instance-counts", default=None, metavar="N[,N...]", help="instance counts to try, per GPU with --gpus (default 1,2,4 up to the cores)")
    p.add_argument("--gpus", default=None, metavar="IDS", help="GPU ids: candidates get KIND_GPU instance groups on these GPUs")
    p.add_argument("--url", default=None, metavar="HOST:PORT", help="HTTP endpoint of a running server in explicit mode (default: start an embedded one)")
    p.add_argument("--metrics-url", default=None, metavar="URL", help="that server's /metrics, for CPU/GPU use")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --url")
    add_admin_key_flag(p)
    p.add_argument("--workers", type=int, default=None, help="load-generator processes (default: half the cores)")
    p.add_argument("--dry-run", action="store_true", help="print the winning config.pbtxt instead of publishing it")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_tune)


def run_tune(args: argparse.Namespace) -> int:
    from sft_engine.ops.tune.config import TuneConfig
    from sft_engine.ops.tune.runner import publish_best, tune
    from sft_engine.ops.tune.table import candidate_table
    from sft_engine.triton.address import parse_metrics_url

    if args.metrics_url and not args.url:
        raise ConfigError("--metrics-url needs --url", hint="the embedded server's metrics are found without it")
    config = TuneConfig(
        repository=Path(args.repository), model=args.model, slo_file=args.slo, budget_s=args.budget, version=args.version,
        max_batch_sizes=_int_list(args.max_batch_sizes, "--max-batch-sizes"),
        queue_delays_us=_int_list(args.queue_delays_us, "--queue-delays-us", allow_zero=True),
        instance_counts=_int_list(args.instance_counts, "--instance-counts"),
        gpus=_gpus(args.gpus), url=_control_url(args.url, args.allow_remote) if args.url else None,
        metrics_url=parse_metrics_url(args.metrics_url, allow_remote=args.allow_remote) if args.metrics_url else None,
        allow_remote=args.allow_remote, workers=args.workers,
        admin_key=admin_key_from(args),
    )
    log = sys.stderr if args.json else sys.stdout
    result = tune(config, progress=lambda msg: print(msg, file=log, flush=True))
    print("", file=log)
    print(candidate_table(result), file=log)
    best = result.best
    if best is None or not result.met:
        if best is not None:
            what = f"best: #{best.index} {best.knobs.label()}, p{result.percentile:g} {best.latency_ms} ms at {best.at_rate_rps} req/s"
        else:
            verdicts = ", ".join(f"#{c.index} {c.verdict}" + (f" ({c.note})" if c.note else "") for c in result.candidates)
            what = f"no candidate has a valid measurement ({verdicts}): nothing is written"
        print(f"no candidate meets the SLO {result.slo}; {what}", file=sys.stderr)
        if args.json:
            print(json.dumps(result.to_dict(), indent=2))
        return result.exit_code
    print(f"best: #{best.index} {best.knobs.label()}: {best.capacity_rps:,.1f} req/s within the SLO "
          f"(baseline {result.baseline.capacity_rps or 0:,.1f})", file=log)
    if args.dry_run:
        if not args.json:
            print("\n# config.pbtxt (dry run, nothing written)")
            print(result.config_text)
    elif not result.improves:
        print("the current configuration is the best found: nothing written", file=log)
    else:
        published = publish_best(config, result)
        assert published is not None  # improves: met, with a config to write
        print(f"published {published.name} version {published.version} with the tuned config.pbtxt at {published.path}", file=log)
        print(f"  roll it out: sft-engine rollout --repository {config.repository} --model {config.model} --version {published.version}", file=log)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    return result.exit_code


# -- deploy ---------------------------------------------------------------------------
_DEPLOY_EPILOG = """\
examples:
  sft-engine deploy k8s --repository model_repository --output deploy/k8s --storage-uri pvc://models --max-replicas 8
  sft-engine deploy k8s ... --gpus 0 --scale-metric pending_requests --target-pending-requests 16
  sft-engine deploy compose --repository model_repository --output deploy/compose --replicas 2
exit codes: 0 written, 2 bad input (no models in the repository, GPU ids a replica does not have)
"""


def _register_deploy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deploy", help="write Kubernetes or docker-compose files serving the repository with the NGC Triton container",
                       epilog=_DEPLOY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    targets = p.add_subparsers(dest="deploy_target", metavar="TARGET", parser_class=type(p))
    k8s = targets.add_parser("k8s", help="KServe InferenceService, or Deployment + Service + HPA on Triton metrics",
                             epilog=_DEPLOY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    compose = targets.add_parser("compose", help="docker-compose.yml with Triton replicas and Prometheus",
                                 epilog=_DEPLOY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    for q, default_out in ((k8s, "deploy/k8s"), (compose, "deploy/compose")):
        q.add_argument("--repository", default="model_repository", metavar="DIR")
        q.add_argument("--output", default=default_out, metavar="DIR", help=f"where the files go (default {default_out})")
        q.add_argument("--name", default="sft-engine", help="name of the service and its resources (default sft-engine)")
        q.add_argument("--image", default=None, help="container image (default: NGC Triton, or the written Dockerfile's image)")
        q.add_argument("--triton-tag", default=None, help="NGC tag (default: from GPU build manifests, else the embedded server's)")
        q.add_argument("--gpus", default=None, metavar="IDS", help="GPUs per replica, e.g. 0,1 (model instance groups use ids 0..n-1)")
        q.add_argument("--model-control-mode", choices=("none", "explicit"), default="none",
                       help="explicit lets sft-engine rollout switch versions on a running replica (its repository API needs the admin key)")
        q.add_argument("--admin-key-file", type=Path, default=None, metavar="FILE",
                       help="with explicit mode: the admin key (created with a random key when absent; default OUTPUT/admin-key)")
    k8s.add_argument("--namespace", default=None)
    k8s.add_argument("--monitoring-namespace", default="monitoring", help="namespace allowed to scrape the metrics port (NetworkPolicy)")
    k8s.add_argument("--tls-secret", default=None, metavar="NAME", help="gRPC over TLS with this kubernetes.io/tls Secret (tls.crt, tls.key)")
    k8s.add_argument("--tls-mutual", action="store_true", help="mutual TLS: clients need a certificate of the Secret's ca.crt")
    k8s.add_argument("--storage-uri", default=None, metavar="URI", help="where the cluster finds the repository: pvc://CLAIM[/PATH], s3://, gs://, as:// "
                                                                       "(default pvc://NAME-model-repository)")
    k8s.add_argument("--replicas", type=int, default=1, help="initial replicas of the Deployment")
    k8s.add_argument("--min-replicas", type=int, default=1)
    k8s.add_argument("--max-replicas", type=int, default=4)
    k8s.add_argument("--cpu", default="2", help="CPU request per replica (default 2)")
    k8s.add_argument("--memory", default="4Gi", help="memory request and limit per replica (default 4Gi)")
    k8s.add_argument("--scale-metric", choices=("queue_time", "pending_requests"), default="queue_time",
                     help="HPA metric from Triton: average queue time per request, or pending requests per pod")
    k8s.add_argument("--target-queue-time-us", type=int, default=20_000, help="HPA target of queue_time per pod (default 20000 us)")
    k8s.add_argument("--target-pending-requests", type=int, default=8, help="HPA target of pending_requests per pod (default 8)")
    compose.add_argument("--replicas", type=int, default=1, help="Triton services (ports 8000+10i, 8001+10i, 8002+10i)")
    compose.add_argument("--host", default="127.0.0.1", help="host address the ports are published on (default loopback)")
    compose.add_argument("--tls-cert", type=Path, default=None, metavar="PEM", help="gRPC over TLS: the server certificate (with --tls-key)")
    compose.add_argument("--tls-key", type=Path, default=None, metavar="PEM", help="gRPC over TLS: its private key")
    compose.add_argument("--tls-client-ca", type=Path, default=None, metavar="PEM", help="mutual TLS: the CA of the clients' certificates")
    k8s.set_defaults(func=run_deploy)
    compose.set_defaults(func=run_deploy)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_deploy(args: argparse.Namespace) -> int:
    from sft_engine.ops.deploy.writer import deploy_compose, deploy_k8s
    from sft_engine.ops.deploy.spec import DeployOptions

    options = DeployOptions(
        repository=Path(args.repository), output=Path(args.output), name=args.name, image=args.image,
        triton_tag=args.triton_tag, gpus=_gpus(args.gpus), model_control_mode=args.model_control_mode,
        replicas=args.replicas, admin_key_file=args.admin_key_file,
    )
    if args.deploy_target == "k8s":
        options.monitoring_namespace = args.monitoring_namespace
        options.tls_secret, options.tls_mutual = args.tls_secret, args.tls_mutual
        options.namespace = args.namespace
        options.storage_uri = args.storage_uri
        options.min_replicas, options.max_replicas = args.min_replicas, args.max_replicas
        options.cpu, options.memory = args.cpu, args.memory
        options.scale_metric = args.scale_metric
        options.target_queue_time_us, options.target_pending_requests = args.target_queue_time_us, args.target_pending_requests
        info, files = deploy_k8s(options)
    else:
        options.host = args.host
        options.tls_cert, options.tls_key, options.tls_client_ca = args.tls_cert, args.tls_key, args.tls_client_ca
        info, files = deploy_compose(options)
    models = ", ".join(f"{m.name} (versions {', '.join(map(str, m.versions))}, {m.kind})" for m in info.models)
    print(f"models: {models}")
    for path in files:
        print(f"wrote {path}")
    if options.admin_key_file is not None:
        print(f"admin key: {options.admin_key_file} (in {'admin-key-secret.yaml' if args.deploy_target == 'k8s' else 'admin-key.env'} too: "
              "keep both out of version control); rollout and tune take it as --admin-key-file")
    if any(p.name == "Dockerfile" for p in files):
        print(f"the Python-backend models need {', '.join(info.requirements)} in the container: build the image from the Dockerfile")
    if args.deploy_target == "k8s":
        print("plain Kubernetes: kubectl apply -k " + str(options.output) + " (HPA needs prometheus-adapter with prometheus-adapter-rules.yaml)")
        print("KServe:           kubectl apply -f " + str(options.output / "inferenceservice.yaml"))
    else:
        build = " --build" if any(p.name == "Dockerfile" for p in files) else ""  # as the file's header says
        print("start: docker compose -f " + str(options.output / "docker-compose.yml") + " up -d" + build)
    return 0
