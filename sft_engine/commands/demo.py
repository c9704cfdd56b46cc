"""``sft-engine demo``: the whole product in a few minutes, offline, on CPU (``sft_engine.walkthrough``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="fine-tune, build, serve, classify and load-test a small model, offline")
    p.add_argument("--workdir", default="demo-output", help="where the demo writes everything (default: demo-output)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--images", type=int, default=8, help="generated images to classify")
    p.add_argument("--loadtest-seconds", type=float, default=8.0, help="0 skips the load test")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sft_engine.walkthrough import run_demo

    run_demo(Path(args.workdir), epochs=args.epochs, images=args.images, loadtest_seconds=args.loadtest_seconds,
             say=lambda line: print(line, flush=True))
    return 0
