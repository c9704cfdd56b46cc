"""``sft-engine classify IMAGE...``: labels and scores from a served model."""

from __future__ import annotations

import argparse
import json

from sft_engine.commands.security_flags import add_tls_client_flags, tls_from


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classify images with a served model (HTTP or gRPC)",
                       description="Classify image files with a model served by Triton. Scores are softmax probabilities; "
                                   "the model's recorded preprocessing is applied.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--url", default=None, help="host:port of the server (default: 127.0.0.1:8001 for gRPC, 127.0.0.1:8000 for HTTP)")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--model", required=True)
    p.add_argument("--model-version", default=None, help="a version number (default: the latest served)")
    p.add_argument("--top-k", type=int, default=5, help="labels per image, best first (default: 5, as the Python client's top_k)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default: 30)")
    p.add_argument("--retries", type=int, default=2, help="retries when the server is unreachable (default: 2)")
    p.add_argument("--shared-memory", action="store_true", help="send tensors through system shared memory (server on this host)")
    p.add_argument("--server-side", action="store_true",
                   help="send the files themselves to <model>_image, which decodes and preprocesses them on the server")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    add_tls_client_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sft_engine.client import Client
    from sft_engine.triton.address import DEFAULT_PORTS

    url = args.url or f"127.0.0.1:{DEFAULT_PORTS[args.protocol]}"
    with Client(url, protocol=args.protocol, model=args.model, version=args.model_version, timeout=args.timeout,
                retries=args.retries, shared_memory=args.shared_memory, ssl=tls_from(args) or False) as client:
        results = client.classify(args.images, top_k=args.top_k, server_side=args.server_side)
    if args.json:
        doc = [{"image": str(path), "predictions": [{"label": p.label, "index": p.index, "score": p.score} for p in preds]}
               for path, preds in zip(args.images, results)]
        print(json.dumps(doc, indent=2))
        return 0
    for path, preds in zip(args.images, results):
        ranked = ", ".join(f"{p.label} {p.score:.3f}" for p in preds)
        print(f"{path}: {ranked}")
    return 0
