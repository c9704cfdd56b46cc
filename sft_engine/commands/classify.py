"""``sft-engine classify IMAGE...``: labels and scores from a served model."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classify images with a served model (HTTP or gRPC)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--url", default="127.0.0.1:8001", help="host:port of the server (default: gRPC on 127.0.0.1:8001)")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--model", required=True)
    p.add_argument("--model-version", default=None)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sft_engine.client import Client

    with Client(args.url, protocol=args.protocol, model=args.model, version=args.model_version, timeout=args.timeout) as client:
        results = client.classify(args.images, top_k=args.top_k)
    for path, preds in zip(args.images, results):
        ranked = ", ".join(f"{p.label} {p.score:.3f}" for p in preds)
        print(f"{path}: {ranked}")
    return 0
