"""CPU engines served through Triton's Python backend: ONNX Runtime, OpenVINO or frozen TorchScript.

Which one is faster depends on the model and the machine, so ``--engine auto`` exports
each, runs it through the parity gate, times the survivors interleaved at a
representative batch, and keeps the fastest (as Model Navigator picks a format by
measurement). The figures of every candidate go into the build manifest.

Precision is a second axis. On CPUs that compute bfloat16 natively (AVX512-BF16, AMX),
OpenVINO's bf16 mode runs ResNet-50 about twice as fast as any FP32 engine; like the
GPU targets' FP16 it moves the logits, so a bf16 candidate must pass the stricter
reduced-precision gate (``BF16_TOLERANCE``: top-1 agreement, accuracy drop on
labelled calibration images) before it may win. ``--precision fp32`` keeps FP32.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from sft_engine.engines import serving_model
from sft_engine.engines.base import EngineArtifact, ExportContext
from sft_engine.engines.precision import bf16_tolerance
from sft_engine.errors import ExportError, ParityError, TargetUnavailable
from sft_engine.repository.config import DynamicBatchingSpec, InstanceGroupSpec, ModelConfigSpec, TensorSpec
from sft_engine.timing import time_interleaved
from sft_engine.verify import ParityData, Tolerance, check_parity

__all__ = ["export_cpu", "cpu_config", "plan_candidates", "Candidate", "cpu_has_native_bf16", "INPUT_NAME", "OUTPUT_NAME", "ENGINE_FILES"]

LOGGER = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: the files of each engine kind; the first is the one the runtime opens
ENGINE_FILES = {"onnxruntime": ("model.onnx",), "torchscript": ("model.ts",), "openvino": ("model.xml", "model.bin")}
#: the pip package each engine kind needs at build and serving time
ENGINE_PACKAGES = {"onnxruntime": "onnxruntime", "torchscript": "torch", "openvino": "openvino"}
#: engine kinds with a bf16 mode
BF16_ENGINES = ("openvino",)
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


def export_openvino(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """OpenVINO IR (``model.xml`` + ``model.bin``) converted from the ONNX export, dynamic batch kept.

    Weights stay FP32 on disk (``compress_to_fp16=False``): the precision is chosen when
    the model is compiled, from ``engine.json``, so one IR serves FP32 and bf16.
    """
    import openvino as ov

    onnx_path = path.with_suffix(".onnx")
    export_onnx(model, example, onnx_path)
    try:
        ov.save_model(ov.convert_model(str(onnx_path)), str(path), compress_to_fp16=False)
    finally:
        onnx_path.unlink(missing_ok=True)


_EXPORTERS = {"onnxruntime": export_onnx, "torchscript": export_torchscript, "openvino": export_openvino}


@dataclass(frozen=True)
class Candidate:
    """One engine the CPU build may publish: a runtime and the arithmetic it runs in."""

    engine: str
    precision: str = "fp32"

    @property
    def name(self) -> str:
        return self.engine if self.precision == "fp32" else f"{self.engine}-{self.precision}"

    def settings(self, intra_op_threads: int) -> dict[str, Any]:
        """``engine.json``: what the serving model needs to load and run this engine."""
        out: dict[str, Any] = {"engine": self.engine, "file": ENGINE_FILES[self.engine][0],
                               "intra_op_threads": intra_op_threads, "inter_op_threads": 1}
        if self.engine == "torchscript":
            out["optimize_for_inference"] = True
        if self.engine == "openvino":
            out["precision"] = "bf16" if self.precision == "bf16" else "f32"
        return out


def cpu_has_native_bf16() -> bool:
    """Whether OpenVINO reports bf16 arithmetic on this CPU (AVX512-BF16 or AMX)."""
    if importlib.util.find_spec("openvino") is None:
        return False
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def plan_candidates(engine: str, precision: str, native_bf16: bool) -> list[Candidate]:
    """The candidates for ``--engine``/``--precision`` on a CPU with or without native bf16.

    ``auto`` precision adds bf16 candidates only where bf16 is native: emulated bf16 is
    slower than FP32 and would only lose the timing.
    """
    engines = [e for e in ENGINE_FILES] if engine == "auto" else [engine]
    if precision == "bf16" and not native_bf16:
        raise TargetUnavailable("this CPU has no native bf16 arithmetic (AVX512-BF16 or AMX), or OpenVINO is not installed",
                                hint="build with --precision fp32, or on a CPU of the serving hosts' kind")
    plan = []
    if precision in ("auto", "fp32"):
        plan += [Candidate(e) for e in engines]
    if precision == "bf16" or (precision == "auto" and native_bf16):
        plan += [Candidate(e, "bf16") for e in engines if e in BF16_ENGINES]
    return plan


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
    precision: str = "fp32",
    source: Mapping[str, Any] | None = None,
) -> EngineArtifact:
    """Export the CPU candidates, gate each on parity, and keep the fastest that passes.

    ``source`` names the tolerance settings the user gave, which the bf16 gate keeps.
    """
    if engine != "auto" and importlib.util.find_spec(ENGINE_PACKAGES[engine]) is None:
        raise TargetUnavailable(f"engine {engine} needs the {ENGINE_PACKAGES[engine]} package, which is not installed",
                                hint=f"pip install 'sft-engine[{'openvino' if engine == 'openvino' else 'onnx'}]', or use --engine auto")
    plan = plan_candidates(engine, precision, cpu_has_native_bf16() if precision != "fp32" else False)
    threads = intra_op_threads or default_threads(instance_count)
    example = torch.from_numpy(np.ascontiguousarray(data.inputs[:2]))
    batch_cap = config.max_batch_size
    candidates: dict[str, dict[str, Any]] = {}
    runners: dict[str, serving_model.EngineRunner] = {}
    exported: dict[str, Path] = {}  # engine kind → directory already holding its files
    for cand in plan:
        name = cand.name
        cand_dir = workdir / name
        cand_dir.mkdir(parents=True, exist_ok=True)
        # intra_op_threads 0: the serving model shares the cores among its instances at load time
        settings = cand.settings(intra_op_threads)
        record: dict[str, Any] = {"engine": cand.engine, "precision": cand.precision, "candidate": name}
        if importlib.util.find_spec(ENGINE_PACKAGES[cand.engine]) is None:
            candidates[name] = {**record, "exported": False, "error": f"{ENGINE_PACKAGES[cand.engine]} is not installed"}
            continue
        try:
            if cand.engine in exported:
                for file in ENGINE_FILES[cand.engine]:
                    shutil.copyfile(exported[cand.engine] / file, cand_dir / file)
            else:
                _EXPORTERS[cand.engine](model, example, cand_dir / ENGINE_FILES[cand.engine][0])
                exported[cand.engine] = cand_dir
            (cand_dir / "engine.json").write_text(json.dumps(settings, indent=2) + "\n")
            runner = serving_model.EngineRunner(str(cand_dir), settings, instances=instance_count)
        except Exception as exc:  # an unconvertible model is an expected outcome, told apart from bugs in the report
            LOGGER.warning("engine %s could not be exported: %s", name, exc)
            candidates[name] = {**record, "exported": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        gate = bf16_tolerance(tolerance, source or {}) if cand.precision == "bf16" else tolerance
        report = check_parity(name, reference, runner.run, data, gate, batch_size=min(batch_cap, 16))
        candidates[name] = {**record, "exported": True, "parity": report.to_dict(), "intra_op_threads": threads}
        if report.passed:
            runners[name] = runner
    if not runners:
        failed = [c for c in candidates.values() if c.get("exported")]
        if failed:
            worst = "; ".join(f"{c['candidate']}: {', '.join(c['parity']['reasons'])}" for c in failed)
            raise ParityError(f"no CPU engine matches the eager model ({worst})", hint="nothing was published; check the model or loosen --parity-atol", report=candidates)
        errors = "; ".join(f"{c['candidate']}: {c['error']}" for c in candidates.values())
        raise ExportError(f"no CPU engine could be exported ({errors})", hint="try --engine torchscript or --engine onnxruntime")
    batch = np.ascontiguousarray(np.resize(data.inputs, (min(timing_batch, batch_cap), *data.inputs.shape[1:])))
    if len(runners) > 1:
        LOGGER.info("timing %s at batch %d", ", ".join(runners), len(batch))
        stats = time_interleaved({n: r.run for n, r in runners.items()}, batch, budget_s=timing_budget_s)
        for name, stat in stats.items():
            candidates[name]["latency"] = stat.to_dict()
        chosen = min(stats, key=lambda n: stats[n].p50_ms)
    else:
        chosen = next(iter(runners))
    LOGGER.info("chose CPU engine %s", chosen)
    cand_dir = workdir / chosen
    record = candidates[chosen]
    shutil.copyfile(SERVING_MODEL, cand_dir / "model.py")
    names = (*ENGINE_FILES[record["engine"]], "engine.json", "model.py")
    return EngineArtifact(
        target="cpu", engine=record["engine"], files={n: cand_dir / n for n in names}, config=config, runner=runners[chosen].run,
        details={"parity": record["parity"], "precision": record["precision"], "intra_op_threads": threads,
                 "selection": "fastest passing its gate" if len(plan) > 1 else "forced"},
        candidates=list(candidates.values()),
    )


def export(ctx: ExportContext) -> EngineArtifact:
    """Target ``cpu``: the uniform exporter entry point."""
    b = ctx.build
    config = cpu_config(b.name, b.num_classes, b.preprocessing.shape, b.max_batch_size, b.instance_count, b.max_queue_delay_us, ctx.parameters)
    return export_cpu(ctx.model, b.engine, ctx.workdir, ctx.data, ctx.reference, ctx.tolerance, config, b.instance_count,
                      b.intra_op_threads, timing_budget_s=b.selection_budget_s, precision=b.precision, source=b.source)
