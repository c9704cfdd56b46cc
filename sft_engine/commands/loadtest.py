"""``sft-engine loadtest``: does a deployment meet its SLO, and what is its capacity?

Flags override the scenario file given with ``--slo`` (which may set the load too,
so ``--slo loadtest/default.toml --url ... --model ...`` is a complete run).
Exit codes: 0 PASS (or a valid run without SLO), 1 FAIL, 2 invalid run or bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from sft_engine.errors import ConfigError
from sft_engine.commands.security_flags import add_admin_key_flag, add_tls_client_flags, admin_key_from, tls_from

__all__ = ["register", "run", "config_from_args"]

_EPILOG = """\
examples:
  sft-engine loadtest --url 127.0.0.1:8001 --model resnet18_demo --concurrency 1,2,4,8 --duration 10
  sft-engine loadtest --url 127.0.0.1:8001 --model resnet18_demo --rate 200 --arrival poisson --slo loadtest/default.toml
  sft-engine loadtest --slo loadtest/capacity.toml --url 127.0.0.1:8001 --model resnet18_demo --find-capacity --report out/
  sft-engine loadtest --slo loadtest/capacity.toml --url 127.0.0.1:8001 --model resnet18_demo --find-capacity --max-rate 800
exit codes: 0 pass, 1 SLO failed, 2 invalid run (generator saturated, too few samples, server gone) or bad input
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "loadtest",
        help="load-test a served model against an SLO; find its capacity",
        description="Closed-loop (concurrency) or open-loop (rate, coordinated-omission-free) load test of a Triton model, "
                    "with HDR percentiles, server-side statistics, an SLO gate and a capacity search.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = p.add_argument_group("target")
    target.add_argument("--url", action="append", default=[], metavar="HOST:PORT",
                        help="Triton endpoint; repeat to spread the load over replicas (default: 127.0.0.1 on Triton's port)")
    target.add_argument("--protocol", choices=("grpc", "http"), default=None, help="wire protocol (default grpc, or the URL's scheme)")
    target.add_argument("--model", default=None, help="model name (or 'model' in the scenario file)")
    target.add_argument("--model-version", default="", metavar="N", help="model version (default: the server's latest)")
    target.add_argument("--metrics-url", action="append", default=[], metavar="URL",
                        help="Prometheus /metrics of each server (default: port 8002 when --url uses 8000/8001)")
    target.add_argument("--allow-remote", action="store_true", help="allow non-loopback --url/--metrics-url hosts")
    add_admin_key_flag(target)
    add_tls_client_flags(target)

    load = p.add_argument_group("load")
    load.add_argument("--concurrency", default=None, metavar="N[,N...]", help="closed loop: concurrent requests; a list or start:stop:step sweeps")
    load.add_argument("--rate", default=None, metavar="R[,R...]", help="open loop: requests/s; a list or start:stop:step sweeps")
    load.add_argument("--arrival", choices=("constant", "poisson"), default=None, help="open-loop arrivals (default constant)")
    load.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="measured time per step (default 10)")
    load.add_argument("--warmup", type=float, default=None, metavar="SECONDS", help="unmeasured load before each step (default 2)")
    load.add_argument("--window", type=float, default=None, metavar="SECONDS", help="measurement window (default 1)")
    load.add_argument("--batch-size", type=int, default=None, metavar="N", help="batch size of each request (default 1)")
    load.add_argument("--shape", action="append", default=[], metavar="NAME:D1,D2", help="shape of a variable-size input, without the batch dim")
    load.add_argument("--input-data", type=Path, default=None, metavar="FILE.npz", help="input arrays by name (default: random data)")
    load.add_argument("--images", type=Path, default=None, metavar="DIR",
                      help="send these image files round-robin, as they are (to <model>_image, or any model with one BYTES input)")
    load.add_argument("--timeout-ms", type=float, default=None, metavar="MS", help="client timeout; a timeout is a failure at that latency")
    load.add_argument("--workers", type=int, default=None, metavar="N", help="load-generator processes (default: half the cores)")
    load.add_argument("--max-in-flight", type=int, default=None, metavar="N", help="open-loop cap on unanswered requests per worker (default 4096)")
    load.add_argument("--seed", type=int, default=None, metavar="N", help="seed of Poisson arrivals and input data (default 0)")
    load.add_argument("--transport", choices=("raw", "tritonclient"), default="raw",
                      help="raw: the request prebuilt once, sent as bytes (default); tritonclient: its asyncio clients' infer()")

    gate = p.add_argument_group("SLO and validity")
    gate.add_argument("--slo", type=Path, default=None, metavar="FILE", help="scenario TOML: [load], [slo], [validity], [capacity]")
    gate.add_argument("--target", action="append", default=[], metavar="KEY=VALUE", help="SLO target, e.g. p99_ms=50, max_error_rate=0.001 (repeatable)")
    gate.add_argument("--max-send-lag-ms", type=float, default=None, metavar="MS", help="send lag p99 above this makes the run invalid (default 10)")
    gate.add_argument("--min-tail-samples", type=int, default=None, metavar="N", help="samples needed beyond a gated percentile (default 10)")
    gate.add_argument("--find-capacity", action="store_true", help="bisect the open-loop rate for the highest one meeting the SLO")
    gate.add_argument("--soak", default=None, metavar="DURATION",
                      help="one steady --rate for DURATION (e.g. 30m): fails on growth of the server's and stubs' RSS, fds, threads or of p99")
    gate.add_argument("--max-rate", type=float, default=None, metavar="R",
                      help="with --find-capacity: the upper end of the search, req/s (default: [capacity] max_rate, else a "
                           "closed-loop probe's rate); below what the load generator can send")

    out = p.add_argument_group("output")
    out.add_argument("--report", type=Path, default=None, metavar="PATH",
                     help="directory for JSON, CSV, Markdown and PNG reports (or NAME.json: files NAME.json, NAME-steps.csv ...)")
    out.add_argument("--percentiles", default=None, metavar="Q[,Q...]", help="percentiles to report (default 50,90,95,99,99.9)")
    out.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    out.add_argument("--prometheus-port", type=int, default=None, metavar="PORT", help="serve live client figures on 127.0.0.1:PORT/metrics")
    out.add_argument("--quiet", action="store_true", help="no live progress")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> Any:
    """Scenario file first, flags on top: the LoadTestConfig of this invocation."""
    from sft_engine.loadtest.config import LoadTestConfig, parse_shape, resolve_endpoints
    from sft_engine.loadtest.scenario import load_scenario
    from dataclasses import replace

    from sft_engine.loadtest.spec import CapacitySpec, SoakSpec, parse_duration, parse_number_list

    scenario = load_scenario(args.slo) if args.slo else None
    soak = None
    if args.soak is not None:
        if args.duration is not None:
            raise ConfigError("--soak and --duration are both given", hint="the soak's DURATION is the step's duration")
        soak = replace((scenario.soak if scenario else None) or SoakSpec(), duration_s=parse_duration(args.soak))
    load = {
        "concurrency": None if args.concurrency is None else tuple(int(c) for c in parse_number_list(args.concurrency, "--concurrency", integer=True)),
        "rates": None if args.rate is None else parse_number_list(args.rate, "--rate"),
        "arrival": args.arrival, "duration_s": args.duration, "warmup_s": args.warmup, "window_s": args.window,
        "batch_size": args.batch_size, "timeout_ms": args.timeout_ms, "max_in_flight": args.max_in_flight, "seed": args.seed,
    }
    if load["concurrency"] is not None and load["rates"] is not None:
        raise ConfigError("--concurrency and --rate are both given", hint="closed loop takes --concurrency, open loop --rate: pick one")
    capacity = None
    if args.max_rate is not None:
        if not args.find_capacity:
            raise ConfigError("--max-rate needs --find-capacity", hint="add --find-capacity, or load at a fixed rate with --rate R")
        capacity = replace((scenario.capacity if scenario else None) or CapacitySpec(), max_rate=args.max_rate)
        capacity.validate()
    return LoadTestConfig.from_scenario(
        scenario,
        capacity=capacity,
        endpoints=resolve_endpoints(args.url, args.protocol, args.metrics_url, args.allow_remote),
        model=args.model,
        load=load,
        targets=args.target,
        validity={"max_send_lag_p99_ms": args.max_send_lag_ms, "min_tail_samples": args.min_tail_samples},
        model_version=args.model_version or "",
        find_capacity=bool(args.find_capacity),
        workers=args.workers,
        shapes=dict(parse_shape(s) for s in args.shape),
        input_data=args.input_data,
        images=args.images,
        report=args.report,
        prometheus_port=args.prometheus_port,
        allow_remote=bool(args.allow_remote),
        percentiles=tuple(parse_number_list(args.percentiles, "--percentiles")) if args.percentiles else None,
        transport=args.transport,
        admin_key=admin_key_from(args),
        tls=tls_from(args),
        soak=soak,
    )


def run(args: argparse.Namespace) -> int:
    try:
        from sft_engine.loadtest.progress import TerminalProgress
        from sft_engine.loadtest.runner import run_loadtest
        from sft_engine.loadtest.summary import result_lines, step_lines
    except ModuleNotFoundError as exc:
        if exc.name in ("hdrh", "aiohttp", "grpc", "tritonclient"):
            raise ConfigError(f"the load tester needs the '{exc.name}' package", hint="pip install 'sft-engine[loadtest]'") from None
        raise

    config = config_from_args(args)
    out = sys.stderr if args.json else sys.stdout
    progress = TerminalProgress(sys.stderr, quiet=args.quiet)

    def on_step(step: Any) -> None:
        print("\n".join(step_lines(step)), file=out, flush=True)

    result = run_loadtest(config, progress=progress, on_step=on_step)
    print("\n".join(result_lines(result)), file=out)
    if result.soak is not None:
        print("\n".join(result.soak.lines()), file=out)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, allow_nan=False))
    return result.exit_code
