"""The demo: the whole product in a few minutes, offline, on CPU.

Fine-tune resnet18 on the built-in synthetic dataset, build and publish the engine,
serve it with the embedded tritonserver, classify generated images over gRPC and
HTTP, and run a short open-loop load test with its plot. Every line it has to tell
goes to the caller's ``say`` (``sft-engine demo`` prints them), so the library
itself never prints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["DemoResult", "run_demo"]

#: one line for the person watching
Say = Callable[[str], None]

#: labelled validation images kept for the build: more than INT8 needs (its gate's 200 plus 32 to
#: calibrate), so that a CPU with INT8 instructions gets its INT8 candidate on the first run
_HOLDOUT_IMAGES = 300


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class DemoResult:
    """Where the demo left its files."""

    finetune_dir: Path
    repository: Path
    images: Path
    loadtest_report: Path


def run_demo(workdir: Path, epochs: int = 4, images: int = 8, loadtest_seconds: float = 8.0, say: Say = _quiet) -> DemoResult:
    """Run the demo in ``workdir`` (created; earlier demo files there are replaced), telling ``say`` each step."""
    from sft_engine.build import build
    from sft_engine.client import Client
    from sft_engine.build_config import BuildConfig, load_finetune_dir
    from sft_engine.finetune import FinetuneConfig, finetune, make_synthetic_images
    from sft_engine.server import ServerConfig, TritonServer

    def say_step(msg: str) -> None:
        say(f"\n== {msg}")

    started = time.monotonic()
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    repo = work / "model_repository"

    say_step("1/5 fine-tuning resnet18 on the synthetic dataset (4 classes, 32x32, CPU)")
    ft = finetune(FinetuneConfig(arch="resnet18", pretrained=None, dataset="synthetic", num_classes=4, input_size=32,
                                 epochs=epochs, synthetic_train_size=1200, synthetic_val_size=_HOLDOUT_IMAGES,
                                 holdout_images=_HOLDOUT_IMAGES,
                                 output=work / "finetune", overwrite=True, seed=0, device="cpu"))
    say(f"   best top-1 {ft.best_top1:.1%} on held-out synthetic images -> {ft.output_dir}")

    say_step("2/5 building the CPU engine, checking it against eager PyTorch, publishing it")
    cfg = BuildConfig().merged(load_finetune_dir(ft.output_dir), "fine-tuning metadata").merged(
        {"name": "demo", "repository": repo, "max_batch_size": 16}, "demo")
    result = build(cfg, progress=lambda msg: say("   " + msg))
    pub = result.published
    par = result.parity
    say(f"   published {pub.name} version {pub.version} ({result.engine_label}) at {pub.path}")
    say(f"   {winner_line(result.engine, result.precision, result.candidates)}")
    accuracy = (f", accuracy {par['engine_accuracy']:.1%} vs eager {par['eager_accuracy']:.1%} on {par['samples']} held-out images"
                if par.get("eager_accuracy") is not None else "")
    gated = " (INT8 is gated on these labels and accuracy, not on max|diff|)" if result.precision == "int8" else ""
    say(f"   parity: max|diff| {par['max_abs_diff']:.2g}, top-1 agreement {par['top1_agreement']:.1%}{accuracy}{gated}")

    say_step("3/5 serving the repository with the embedded tritonserver on 127.0.0.1")
    image_paths = make_synthetic_images(work / "images", count=images, num_classes=4, image_size=32, seed=123)
    with TritonServer(ServerConfig(repository=repo, http_port=0, grpc_port=0, metrics_port=0)) as server:
        say(f"   HTTP http://{server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}")

        say_step("4/5 classifying generated images through Triton (gRPC and HTTP)")
        with Client(server.grpc_url, protocol="grpc", model="demo") as grpc_client, \
                Client(server.http_url, protocol="http", model="demo") as http_client:
            by_grpc = grpc_client.classify(image_paths, top_k=2)
            by_http = http_client.classify(image_paths, top_k=2)
        correct = 0
        for path, preds, other in zip(image_paths, by_grpc, by_http):
            truth = path.parent.name  # make_synthetic_images writes <label>/<index>.png
            correct += preds[0].label == truth
            same = "same over HTTP" if other[0].label == preds[0].label else f"HTTP says {other[0].label}"
            say(f"   {path.name}: {preds[0].label} ({preds[0].score:.2f}), then {preds[1].label} ({preds[1].score:.2f}); {same}")
        say(f"   {correct}/{len(image_paths)} correct")

        if loadtest_seconds > 0:
            say_step(f"5/5 open-loop load test, about {loadtest_seconds:.0f} s of load")
            _demo_loadtest(server, work, loadtest_seconds, say)
        else:
            say_step("5/5 load test skipped (--loadtest-seconds 0)")

    say(f"\ndone in {time.monotonic() - started:.0f} s. Files:")
    say(f"   fine-tuned weights  {ft.output_dir}")
    say(f"   model repository    {repo}   (serve it: sft-engine serve --repository {repo})")
    say(f"   images              {work / 'images'}")
    say(f"   load-test report    {work / 'loadtest'}")
    return DemoResult(finetune_dir=ft.output_dir, repository=repo, images=work / "images", loadtest_report=work / "loadtest")


def winner_line(engine: str, precision: str | None, candidates: list[dict[str, Any]]) -> str:
    """Which engine and precision won the build's measurement, and by how much over the runner-up."""
    label = f"{engine} {precision}" if precision else engine

    def p50(c: dict[str, Any]) -> float | None:
        lat = c.get("latency") or {}
        return lat.get("p50_ms") if (c.get("parity") or {}).get("passed") else None

    chosen = next((c for c in candidates if (c.get("engine"), c.get("precision")) == (engine, precision)), None)
    others = [(p50(c), f"{c.get('engine')} {c.get('precision') or ''}".strip()) for c in candidates if c is not chosen]
    others = sorted((t, name) for t, name in others if t)
    mine = p50(chosen) if chosen else None
    if mine is None:
        return f"won: {label}"
    if not others:
        return f"won: {label}, {mine:.2f} ms p50 (the only candidate that passed its gate)"
    t, name = others[0]
    return f"won: {label}, {mine:.2f} ms p50, {t / mine:.1f}x faster than the runner-up {name} ({t:.2f} ms)"


def _demo_loadtest(server: Any, work: Path, seconds: float, say: Say) -> None:
    try:
        from sft_engine.loadtest import demo_run
    except ImportError:
        say("   (load-test harness not installed)")
        return
    summary = demo_run(url=server.grpc_url, model="demo", duration_s=seconds, report_dir=work / "loadtest")
    say("   " + summary.replace("\n", "\n   "))
