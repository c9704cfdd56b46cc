#!/usr/bin/env python3
"""The model zoo on CPU: each family built by ``sft-engine build`` at its native input size, every precision side by side.

For each family (torchvision names, or ``timm:NAME``), with seeded random weights (nothing
downloads) moved off the family's own init so that labels vary from image to image:

* ``--time-refused``: a precision its gate refused is built again with the gate opened and
  timed beside the others (marked ``*``, never chosen), so that INT8 can be compared with
  bf16 where bf16 narrowly fails;
* labelled images: synthetic images at the family's input size, labelled with the eager
  model's own predictions (so INT8's gate agreement and accuracy drop mean agreement with
  eager), preprocessed by the family's own recipe (timm's ``pretrained_cfg``, torchvision's
  ``transforms()``, or the plain resize of the six CNNs the path began with);
* one build per precision (fp32, bf16, int8: ``sft-engine build --precision P``, every CPU
  candidate of that precision tried, each export timed); fp32 and bf16 are gated on a small
  labelled subset, INT8 calibrated and gated on the whole set (200 gate images);
* eager PyTorch FP32 and each precision's published engine (the serving code, EngineRunner)
  timed interleaved in-process, so the ×eager ratios come from one run;
* the engine ``--precision auto`` would publish: the fastest of those that passed, in that run;
* served ÷ in-process: that engine served by the embedded tritonserver, one short
  measurement (sft-engine's AsyncClient over gRPC, shared memory, ``--concurrency`` in flight)
  against the same engine in-process right after.

A failure (a candidate that cannot export or run, a gate it fails, a precision this CPU
lacks, a family the model source cannot build) is recorded with its stage and one line, and
the run goes on. Progress goes to stderr, a table to stdout, JSON (rewritten after each
family, so an interrupted run keeps what it measured) to ``--json``.

    python benchmarks/bench_zoo.py --batch 1 --budget 1 --json reports/bench_zoo.json
    python benchmarks/bench_zoo.py --models vit_b_16,swin_t --batch 1 --budget 1 --no-serve
    python benchmarks/bench_zoo.py --models timm:vit_small_patch14_reg4_dinov2 --batch 1 --budget 0.5 --time-refused
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from _fixture import build_without_gate, embedded_server, random_weights
from bench_cpu import available_precisions, saturation

from sft_engine.engines.cpu.serving_model import EngineRunner
from sft_engine.timing import time_closed_loop, time_interleaved

FAMILIES = ("resnet50,mobilenet_v3_large,efficientnet_b0,efficientnet_v2_s,regnet_y_800mf,convnext_tiny,swin_t,vit_b_16,"
            "timm:deit_small_patch16_224,maxvit_t,timm:mobilenetv4_conv_small,timm:vit_small_patch14_reg4_dinov2")
CLASSES = 10
GATE_IMAGES = 200  # sft_engine.engines.calibration.MIN_GATE_IMAGES


def one_line(exc: BaseException) -> str:
    """An error as one line: the project's message, or the exception's first line."""
    from sft_engine.errors import SftEngineError

    text = exc.message if isinstance(exc, SftEngineError) else f"{type(exc).__name__}: {exc}"
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)[:300]


def failure_stage(exc: BaseException) -> str:
    from sft_engine.errors import ExportError, ParityError, TargetUnavailable

    for cls, stage in ((ParityError, "gate"), (ExportError, "export"), (TargetUnavailable, "unavailable")):
        if isinstance(exc, cls):
            return stage
    return "build"


@contextlib.contextmanager
def timed_exports(sink: dict[str, float]) -> Iterator[None]:
    """Seconds each CPU candidate's export takes (the gate and timing excluded), recorded by candidate name."""
    from sft_engine.engines.registry import TARGETS

    original = TARGETS["cpu"]

    def export(ctx: Any, cand: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original.export(ctx, cand)
        finally:
            sink[cand.name] = round(time.perf_counter() - t0, 1)

    TARGETS["cpu"] = dataclasses.replace(original, export=export)
    try:
        yield
    finally:
        TARGETS["cpu"] = original


def labelled_images(model: torch.nn.Module, prep: Any, root: Path, count: int, small: int, labels: list[str]) -> tuple[Path, Path, np.ndarray]:
    """Synthetic images in class folders named by the eager model's predictions: all of them, and the first ``small``."""
    from sft_engine.finetune.synthetic import make_synthetic_images
    from sft_engine.verify import eager_logits

    files = make_synthetic_images(root / "raw", count=count, num_classes=CLASSES, image_size=prep.input_size, seed=7)
    x = prep.batch(files)
    preds = eager_logits(model, x, batch_size=16).argmax(1)
    full, subset = root / "labelled", root / "labelled-small"
    for i, (path, k) in enumerate(zip(files, preds)):
        for folder in ([full, subset] if i < small else [full]):
            (folder / labels[int(k)]).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder / labels[int(k)] / f"{i:04d}{path.suffix}")
    return full, subset, x


def candidate_failures(precision: str, rows: list[dict]) -> list[dict]:
    """Each candidate of a build that did not export, could not run, or failed its gate: stage and one line."""
    out = []
    for r in rows:
        if r.get("error"):
            stage = "run" if r["error"].startswith("exported, but") else "export"
            out.append({"precision": precision, "candidate": r["candidate"], "stage": stage, "reason": r["error"]})
        elif r.get("parity") and not r["parity"]["passed"]:
            out.append({"precision": precision, "candidate": r["candidate"], "stage": "gate", "reason": "; ".join(r["parity"]["reasons"])})
    return out


def bench_family(arch: str, args: argparse.Namespace, precisions: list[str], work: Path) -> dict[str, Any]:
    from sft_engine.build import build
    from sft_engine.build_config import BuildConfig, default_model_name
    from sft_engine.models.preprocessing import resolve_preprocessing

    slug = default_model_name(arch)
    out: dict[str, Any] = {"family": arch, "builds": {}, "failures": []}

    def say(text: str) -> None:
        print(f"# {arch}: {text}", file=sys.stderr, flush=True)

    try:
        prep, origin = resolve_preprocessing(arch)
        weights = work / f"{slug}.safetensors"
        model = random_weights(weights, arch, CLASSES, jitter=args.jitter)
        labels = [f"class_{i}" for i in range(CLASSES)]
        count = args.images if "int8" in precisions else args.fp_gate_images  # only INT8 needs the gate's 200 and more
        full, subset, x_all = labelled_images(model, prep, work, count, args.fp_gate_images, labels)
    except Exception as exc:
        out["failures"].append({"precision": "-", "candidate": "-", "stage": "model", "reason": one_line(exc)})
        say(f"refused at stage model: {one_line(exc)}")
        return out
    out.update(input_size=prep.input_size, preprocessing=origin, label_classes=int(len(set(x.name for x in full.iterdir()))))
    say(f"input {prep.input_size}, preprocessing {origin}; eager labels {out['label_classes']} of {CLASSES} classes")
    runners, published, ungated = {}, {}, {}
    for precision in precisions:
        name = f"{slug}_{precision}"
        cfg = BuildConfig(arch=arch, num_classes=CLASSES, labels=labels, weights=weights, name=name,
                          repository=work / f"repo-{precision}", max_batch_size=max(8, 2 * args.batch * args.concurrency),
                          precision=precision, calibration_dir=full if precision == "int8" else subset,
                          int8_calibration_images=max(1, count - GATE_IMAGES), selection_budget_s=args.budget)
        exports: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            with timed_exports(exports):
                res = build(cfg)
        except Exception as exc:
            report = getattr(exc, "report", None)
            rows = [{"candidate": k, **v} for k, v in report.items()] if isinstance(report, dict) else []
            out["builds"][precision] = {"error": one_line(exc), "stage": failure_stage(exc), "export_s": exports,
                                        "agreement": {r["candidate"]: r["top1_agreement"] for r in rows if "top1_agreement" in r}}
            out["failures"].append({"precision": precision, "candidate": "-", "stage": failure_stage(exc), "reason": one_line(exc)})
            say(f"{precision}: refused at stage {failure_stage(exc)} after {time.perf_counter() - t0:.0f} s: {one_line(exc)}")
            if args.time_refused and failure_stage(exc) == "gate":
                loose = build_without_gate(cfg, name=f"{cfg.name}_ungated", repository=work / f"repo-{precision}-ungated")
                ungated[precision] = EngineRunner(str(loose.published.path)).run
                say(f"{precision}: built again without its gate, for timing only (never chosen)")
            continue
        out["failures"] += candidate_failures(precision, res.candidates)
        chosen_name = next(r["candidate"] for r in res.candidates if (r["engine"], r["precision"]) == (res.engine, res.precision)) \
            if res.candidates else res.engine
        out["builds"][precision] = {
            "engine": res.engine_label, "candidate": chosen_name, "build_s": round(time.perf_counter() - t0, 1), "export_s": exports,
            "gate": {k: res.parity.get(k) for k in ("samples", "top1_agreement", "max_abs_diff", "eager_accuracy", "engine_accuracy")},
            "candidates": [{k: r.get(k) for k in ("candidate", "exported", "error")} | ({"top1_agreement": r["parity"]["top1_agreement"], "passed": r["parity"]["passed"]} if r.get("parity") else {})
                           for r in res.candidates]}
        runners[precision] = EngineRunner(str(res.published.path)).run
        published[precision] = (name, work / f"repo-{precision}")
        say(f"{precision}: built {res.engine_label} in {time.perf_counter() - t0:.0f} s (exports: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in exports.items()) + f"), gate top-1 agreement {res.parity['top1_agreement']:.2%}")
    if not runners:
        return out
    torch.set_num_threads(os.cpu_count() or 1)
    timed = {**runners, **{f"{p} (gate failed)": run for p, run in ungated.items()}}

    def eager(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    x = np.ascontiguousarray(np.resize(x_all, (args.batch, *x_all.shape[1:])))
    stats = time_interleaved({"eager": eager, **timed}, x, budget_s=(1 + len(timed)) * args.budget)
    out["images_per_s"] = {k: round(v.images_per_s, 2) for k, v in stats.items()}
    out["x_eager"] = {p: round(stats[p].images_per_s / stats["eager"].images_per_s, 3) for p in timed}
    bf16 = next((k for k in ("bf16", "bf16 (gate failed)") if k in stats), None)
    if bf16 is not None:
        out["x_bf16"] = {p: round(stats[p].images_per_s / stats[bf16].images_per_s, 3) for p in timed}
    chosen = max(runners, key=lambda p: stats[p].images_per_s)
    out["chosen"] = {"precision": chosen, "engine": out["builds"][chosen]["engine"], "candidate": out["builds"][chosen]["candidate"],
                     "export_s": out["builds"][chosen]["export_s"].get(out["builds"][chosen]["candidate"])}
    say("in-process ×eager: " + ", ".join(f"{p} {v:.2f}" for p, v in out["x_eager"].items()) + f"; chosen {out['chosen']['engine']}")
    if not args.no_serve:
        name, repo = published[chosen]
        try:
            with embedded_server(repo) as srv:
                served = saturation(srv.grpc_url, "grpc", name, x, args.concurrency, args.budget)
                again = time_closed_loop(runners[chosen], x, args.budget)
            inproc = max(stats[chosen].images_per_s, again.images_per_s)
            out["served"] = {**served, "inproc_images_per_s": round(inproc, 2), "ratio": round(served["images_per_s"] / inproc, 3)}
            say(f"served ÷ in-process {out['served']['ratio']:.2f} ({served['images_per_s']:.1f} vs {inproc:.1f} img/s)")
        except Exception as exc:
            out["failures"].append({"precision": chosen, "candidate": "-", "stage": "serve", "reason": one_line(exc)})
            say(f"refused at stage serve: {one_line(exc)}")
    return out


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def table(results: list[dict]) -> str:
    head = (f"{'family':34s} {'size':>4s} {'chosen (auto)':22s} {'fp32×':>6s} {'bf16×':>6s} {'int8×':>6s} {'int8/bf16':>9s} "
            f"{'int8 agr':>8s} {'export s':>8s} {'served÷in':>9s}")
    lines = [head, "-" * len(head)]
    for r in results:
        xe, xb = r.get("x_eager", {}), r.get("x_bf16", {})
        int8 = r["builds"].get("int8", {})
        agr = (int8.get("gate") or {}).get("top1_agreement")
        if agr is None and int8.get("agreement"):
            agr = max(int8["agreement"].values())  # the best candidate's, that failed its gate
        chosen = r.get("chosen", {})

        def x(table: dict, p: str) -> str:  # '*': timed though its gate refused it
            return _fmt(table[p]) if p in table else (_fmt(table.get(f"{p} (gate failed)")) + "*").replace("-*", "-")

        lines.append(f"{r['family']:34s} {r.get('input_size', '-')!s:>4s} {chosen.get('engine', '-'):22s} {x(xe, 'fp32'):>6s} "
                     f"{x(xe, 'bf16'):>6s} {x(xe, 'int8'):>6s} {x(xb, 'int8') + ('*' if 'bf16 (gate failed)' in xe and 'int8' in xb else ''):>9s} {_fmt(agr, '.1%'):>8s} "
                     f"{_fmt(chosen.get('export_s'), '.0f'):>8s} {_fmt(r.get('served', {}).get('ratio')):>9s}")
    lines.append("(* timed with --time-refused: that precision's gate refused it, so it is never chosen)")
    fails = [(r["family"], f) for r in results for f in r["failures"]]
    if fails:
        lines.append("\nfailures (family, precision, candidate, stage: reason):")
        lines += [f"  {fam} {f['precision']} {f['candidate']} {f['stage']}: {f['reason']}" for fam, f in fails]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=FAMILIES, help="comma-separated torchvision names or timm:NAME")
    ap.add_argument("--batch", type=int, default=1, help="batch size of the timing")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds per measurement (and each build's selection timing)")
    ap.add_argument("--precisions", default="fp32,bf16,int8")
    ap.add_argument("--images", type=int, default=232, help=f"labelled images: {GATE_IMAGES} gate INT8, the rest (>= 32) calibrate it")
    ap.add_argument("--fp-gate-images", type=int, default=48, help="of them, how many gate fp32 and bf16")
    ap.add_argument("--jitter", type=float, default=0.05, help="noise added to the random init, so labels vary")
    ap.add_argument("--time-refused", action="store_true",
                    help="time a precision its gate refused too (built again without the gate; shown as 'gate failed', never chosen)")
    ap.add_argument("--concurrency", type=int, default=2, help="requests in flight in the served measurement")
    ap.add_argument("--no-serve", action="store_true", help="skip the served measurement")
    ap.add_argument("--json", type=Path, help="write the results here (after each family)")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.budget <= 0 or args.images < GATE_IMAGES + 32:
        ap.error(f"--batch must be >= 1, --budget > 0 and --images >= {GATE_IMAGES + 32}")
    from sft_engine.engines.cpu.isa import cpu_has_native_bf16, cpu_int8_isa

    precisions = available_precisions(args.precisions)
    machine = {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(), "int8_isa": cpu_int8_isa(),
               "native_bf16": cpu_has_native_bf16(), "python": platform.python_version(), "torch": torch.__version__}
    print(f"# {machine['cpu_count']} cores; INT8 ISA {machine['int8_isa']}; native bf16 {machine['native_bf16']}; "
          f"batch {args.batch}, budget {args.budget} s", file=sys.stderr, flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-zoo-") as tmp:
        for arch in [a.strip() for a in args.models.split(",") if a.strip()]:
            work = Path(tmp) / arch.replace(":", "_")
            work.mkdir()
            t0 = time.perf_counter()
            res = bench_family(arch, args, precisions, work)
            res["seconds"] = round(time.perf_counter() - t0, 1)
            results.append(res)
            shutil.rmtree(work, ignore_errors=True)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps({"machine": machine, "settings": {k: str(v) for k, v in vars(args).items()},
                                                 "precisions": precisions, "results": results}, indent=2, default=str))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
