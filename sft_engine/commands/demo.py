"""``sft-engine demo``: the whole product in a few minutes, offline, on CPU.

Fine-tune resnet18 on the built-in synthetic dataset, build and publish the engine,
serve it with the embedded tritonserver, classify generated images over gRPC and
HTTP, and run a short open-loop load test with its plot. Prints what it did and where
the files are.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="fine-tune, build, serve, classify and load-test a small model, offline")
    p.add_argument("--workdir", default="demo-output", help="where the demo writes everything (default: demo-output)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--images", type=int, default=8, help="generated images to classify")
    p.add_argument("--loadtest-seconds", type=float, default=8.0, help="0 skips the load test")
    p.set_defaults(func=run)


def _step(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def run(args: argparse.Namespace) -> int:
    from sft_engine.build import build
    from sft_engine.client import Client
    from sft_engine.config import BuildConfig
    from sft_engine.finetune import FinetuneConfig, finetune, make_synthetic_images
    from sft_engine.server import ServerConfig, TritonServer

    started = time.monotonic()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    repo = work / "model_repository"

    _step("1/5 fine-tuning resnet18 on the synthetic dataset (4 classes, 32x32, CPU)")
    ft = finetune(FinetuneConfig(arch="resnet18", pretrained=None, dataset="synthetic", num_classes=4, input_size=32,
                                 epochs=args.epochs, synthetic_train_size=1200, synthetic_val_size=200,
                                 output=work / "finetune", overwrite=True, seed=0, device="cpu"))
    print(f"   best top-1 {ft.best_top1:.1%} on held-out synthetic images -> {ft.output_dir}")

    _step("2/5 building the CPU engine, checking it against eager PyTorch, publishing it")
    from sft_engine.config import load_finetune_dir

    cfg = BuildConfig().merged(load_finetune_dir(ft.output_dir), "fine-tuning metadata").merged(
        {"name": "demo", "repository": repo, "max_batch_size": 16}, "demo")
    result = build(cfg, progress=lambda msg: print("   " + msg, flush=True))
    pub = result.published
    par = result.parity
    print(f"   published {pub.name} version {pub.version} ({result.engine_label}) at {pub.path}")
    accuracy = (f", accuracy {par['engine_accuracy']:.1%} vs eager {par['eager_accuracy']:.1%} on {par['samples']} held-out images"
                if par.get("eager_accuracy") is not None else "")
    print(f"   parity: max|diff| {par['max_abs_diff']:.2g}, top-1 agreement {par['top1_agreement']:.1%}{accuracy}")

    _step("3/5 serving the repository with the embedded tritonserver on 127.0.0.1")
    images = make_synthetic_images(work / "images", count=args.images, num_classes=4, image_size=32, seed=123)
    with TritonServer(ServerConfig(repository=repo, http_port=0, grpc_port=0, metrics_port=0)) as server:
        print(f"   HTTP http://{server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}")

        _step("4/5 classifying generated images through Triton (gRPC and HTTP)")
        with Client(server.grpc_url, protocol="grpc", model="demo") as grpc_client, \
                Client(server.http_url, protocol="http", model="demo") as http_client:
            by_grpc = grpc_client.classify(images, top_k=2)
            by_http = http_client.classify(images, top_k=2)
        correct = 0
        for path, preds, other in zip(images, by_grpc, by_http):
            truth = path.parent.name  # make_synthetic_images writes <label>/<index>.png
            correct += preds[0].label == truth
            same = "same over HTTP" if other[0].label == preds[0].label else f"HTTP says {other[0].label}"
            print(f"   {path.name}: {preds[0].label} ({preds[0].score:.2f}), then {preds[1].label} ({preds[1].score:.2f}); {same}")
        print(f"   {correct}/{len(images)} correct")

        if args.loadtest_seconds > 0:
            _step(f"5/5 open-loop load test, about {args.loadtest_seconds:.0f} s of load")
            _demo_loadtest(server, work, args.loadtest_seconds)
        else:
            _step("5/5 load test skipped (--loadtest-seconds 0)")

    print(f"\ndone in {time.monotonic() - started:.0f} s. Files:")
    print(f"   fine-tuned weights  {ft.output_dir}")
    print(f"   model repository    {repo}   (serve it: sft-engine serve --repository {repo})")
    print(f"   images              {work / 'images'}")
    print(f"   load-test report    {work / 'loadtest'}")
    return 0


def _demo_loadtest(server, work: Path, seconds: float) -> None:
    try:
        from sft_engine.loadtest import demo_run
    except ImportError:
        print("   (load-test harness not installed)", file=sys.stderr)
        return
    summary = demo_run(url=server.grpc_url, model="demo", duration_s=seconds, report_dir=work / "loadtest")
    print("   " + summary.replace("\n", "\n   "))
