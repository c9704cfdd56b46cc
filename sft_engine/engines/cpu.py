"""CPU engines served through Triton's Python backend: ONNX Runtime or frozen TorchScript.

Which one is faster depends on the model and the machine, so ``--engine auto`` exports
both, runs each through the parity gate, times the survivors interleaved at a
representative batch, and keeps the fastest (as Model Navigator picks a format by
measurement). The figures of every candidate go into the build manifest.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sft_engine.engines import serving_model
from sft_engine.engines.base import EngineArtifact, ExportContext
from sft_engine.errors import ExportError, ParityError
from sft_engine.repository.config import DynamicBatchingSpec, InstanceGroupSpec, ModelConfigSpec, TensorSpec
from sft_engine.timing import time_interleaved
from sft_engine.verify import ParityData, Tolerance, check_parity

__all__ = ["export_cpu", "cpu_config", "INPUT_NAME", "OUTPUT_NAME", "ENGINE_FILES"]

LOGGER = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
ENGINE_FILES = {"onnxruntime": "model.onnx", "torchscript": "model.ts"}
SERVING_MODEL = Path(serving_model.__file__)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """ONNX with a dynamic batch axis (TorchScript-based exporter: fast and stable for CNNs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=17,
            do_constant_folding=True, dynamo=False,
        )


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Traced and frozen TorchScript.

    ``optimize_for_inference`` rewrites to ops that cannot be serialized, so it runs at
    load time in the serving model instead (``engine.json``: ``optimize_for_inference``).
    """
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
    frozen.save(str(path))


_EXPORTERS = {"onnxruntime": export_onnx, "torchscript": export_torchscript}


def default_threads(instance_count: int) -> int:
    """Intra-op threads per model instance: the cores shared out among instances."""
    return max(1, (os.cpu_count() or 1) // max(1, instance_count))


def cpu_config(name: str, num_classes: int, shape: tuple[int, ...], max_batch_size: int, instance_count: int,
               max_queue_delay_us: int, parameters: dict[str, str]) -> ModelConfigSpec:
    """Model-level Triton config of a CPU engine behind the Python backend."""
    return ModelConfigSpec(
        name=name,
        backend="python",
        max_batch_size=max_batch_size,
        inputs=(TensorSpec(INPUT_NAME, "FP32", tuple(shape)),),
        outputs=(TensorSpec(OUTPUT_NAME, "FP32", (num_classes,), label_filename="labels.txt"),),
        instance_groups=(InstanceGroupSpec("KIND_CPU", instance_count),),
        dynamic_batching=DynamicBatchingSpec(max_queue_delay_us=max_queue_delay_us),
        parameters=tuple(sorted(parameters.items())),
        warmup_batch_sizes=tuple(sorted({1, max_batch_size})),
    )


def export_cpu(
    model: nn.Module,
    engine: str,
    workdir: Path,
    data: ParityData,
    reference: np.ndarray,
    tolerance: Tolerance,
    config: ModelConfigSpec,
    instance_count: int,
    intra_op_threads: int = 0,
    timing_batch: int = 8,
    timing_budget_s: float = 3.0,
) -> EngineArtifact:
    """Export the CPU candidates, gate each on parity, and keep the fastest that passes."""
    names = list(_EXPORTERS) if engine == "auto" else [engine]
    threads = intra_op_threads or default_threads(instance_count)
    example = torch.from_numpy(np.ascontiguousarray(data.inputs[:2]))
    batch_cap = config.max_batch_size
    candidates: dict[str, dict[str, Any]] = {}
    runners: dict[str, serving_model.EngineRunner] = {}
    for name in names:
        cand_dir = workdir / name
        cand_dir.mkdir(parents=True, exist_ok=True)
        # intra_op_threads 0: the serving model shares the cores among its instances at load time
        settings = {"engine": name, "file": ENGINE_FILES[name], "intra_op_threads": intra_op_threads, "inter_op_threads": 1}
        if name == "torchscript":
            settings["optimize_for_inference"] = True
        try:
            _EXPORTERS[name](model, example, cand_dir / ENGINE_FILES[name])
            (cand_dir / "engine.json").write_text(json.dumps(settings, indent=2) + "\n")
            runner = serving_model.EngineRunner(str(cand_dir), settings, instances=instance_count)
        except Exception as exc:  # an unconvertible model is an expected outcome, told apart from bugs in the report
            LOGGER.warning("engine %s could not be exported: %s", name, exc)
            candidates[name] = {"engine": name, "exported": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        report = check_parity(name, reference, runner.run, data, tolerance, batch_size=min(batch_cap, 16))
        candidates[name] = {"engine": name, "exported": True, "parity": report.to_dict(), "intra_op_threads": threads}
        if report.passed:
            runners[name] = runner
    if not runners:
        failed = [c for c in candidates.values() if c.get("exported")]
        if failed:
            worst = "; ".join(f"{c['engine']}: {', '.join(c['parity']['reasons'])}" for c in failed)
            raise ParityError(f"no CPU engine matches the eager model ({worst})", hint="nothing was published; check the model or loosen --parity-atol", report=candidates)
        errors = "; ".join(f"{c['engine']}: {c['error']}" for c in candidates.values())
        raise ExportError(f"no CPU engine could be exported ({errors})", hint="try --engine torchscript or --engine onnxruntime")
    batch = np.ascontiguousarray(np.resize(data.inputs, (min(timing_batch, batch_cap), *data.inputs.shape[1:])))
    if len(runners) > 1 or engine == "auto":
        LOGGER.info("timing %s at batch %d", ", ".join(runners), len(batch))
        stats = time_interleaved({n: r.run for n, r in runners.items()}, batch, budget_s=timing_budget_s)
        for name, stat in stats.items():
            candidates[name]["latency"] = stat.to_dict()
        chosen = min(stats, key=lambda n: stats[n].p50_ms)
    else:
        chosen = names[0]
    LOGGER.info("chose CPU engine %s", chosen)
    cand_dir = workdir / chosen
    shutil.copyfile(SERVING_MODEL, cand_dir / "model.py")
    files = {p.name: p for p in (cand_dir / ENGINE_FILES[chosen], cand_dir / "engine.json", cand_dir / "model.py")}
    return EngineArtifact(
        target="cpu", engine=chosen, files=files, config=config, runner=runners[chosen].run,
        details={"parity": candidates[chosen]["parity"], "intra_op_threads": threads, "selection": "forced" if engine != "auto" else "fastest passing parity"},
        candidates=list(candidates.values()),
    )


def export(ctx: ExportContext) -> EngineArtifact:
    """Target ``cpu``: the uniform exporter entry point."""
    b = ctx.build
    config = cpu_config(b.name, b.num_classes, b.preprocessing.shape, b.max_batch_size, b.instance_count, b.max_queue_delay_us, ctx.parameters)
    return export_cpu(ctx.model, b.engine, ctx.workdir, ctx.data, ctx.reference, ctx.tolerance, config, b.instance_count,
                      b.intra_op_threads, timing_budget_s=b.selection_budget_s)
