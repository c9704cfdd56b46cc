"""Target ``tensorrt``: Torch-TensorRT FP16 → serialized TensorRT plan for Triton's TensorRT backend.

The pipeline, per GPU architecture of the build host:

1. the eager model, as a half-precision module (FP16 in, FP32 logits out; see
   ``gpu.half``), traced by ``torch_tensorrt.dynamo.trace`` with a dynamic batch
   dimension (profile min 1 / opt / max = max_batch_size);
2. ``dynamo.convert_exported_program_to_serialized_trt_engine`` with the FP16 arguments
   of the installed Torch-TensorRT version (``fp16_recipe``): one whole-graph
   engine, no PyTorch fallback, exactly what ``platform: "tensorrt_plan"`` loads;
3. the plan is deserialized with TensorRT and checked: a silently FP32 engine fails the
   build (``verdict``); the plan itself is then handed to the build's parity and
   accuracy gate (FP16 tolerances), one check per architecture.

Plans are tied to the GPU architecture, so a host with several architectures gets one
plan per compute capability and a ``cc_model_filenames`` map; and to the TensorRT
version, so the compatibility manifest names the NGC Triton container to serve with.

``--precision int8`` / ``fp8``: one Q/DQ ONNX model by ModelOpt post-training
quantization, calibrated on the build's labelled images (``calibration.split_for_int8``: the
rest gate it), built into a plan per architecture by TensorRT's ONNX parser, checked
with the inspector (most convolutions really run in INT8 / FP8) and gated like the CPU
INT8 engines (``modelopt``). FP16 stays the default: it needs no labelled images.

Config: ``optimization { cuda { graphs: true } }`` (the TensorRT backend captures CUDA
graphs; with dynamic batching and no preferred sizes it captures batch 1 and
max_batch_size, other sizes run uncaptured), KIND_GPU instances, dynamic batching,
warmup of batch 1 and max_batch_size.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from sft_engine.engines.base import (
    EngineArtifact, EngineCandidate, EngineConfig, ExportContext, ExportSettings, Target, serving_config,
)
from sft_engine.engines.calibration import split_for_int8
from sft_engine.engines.export.onnx import INPUT_NAME as ONNX_INPUT_NAME
from sft_engine.engines.export.onnx import export_onnx
from sft_engine.engines.gpu.compatibility import check_plan_servable, compatibility_manifest
from sft_engine.engines.gpu.devices import GpuInfo, list_gpus, select_gpus
from sft_engine.engines.gpu.half import FP16, half_module
from sft_engine.engines.gpu.probes import require_torch_tensorrt
from sft_engine.engines.tensorrt.fp16_recipe import Fp16Recipe, fp16_recipe
from sft_engine.engines.tensorrt.modelopt import (
    QUANT_MODES, assess_quantized, build_plan, fp8_unavailable_reason, quantize_with_modelopt, require_quantization_stack,
    tensorrt_build_flags,
)
from sft_engine.engines.tensorrt.verdict import assess_fp16
from sft_engine.errors import ConfigError, ExportError, TargetUnavailable
from sft_engine.repository.config import ModelConfigSpec, TensorSpec
from sft_engine.verify import Check

__all__ = ["TARGET", "PRECISIONS", "export", "check_available", "check_choice", "tensorrt_config", "tensorrt_engine_config", "batch_profile", "plan_filenames",
           "input_arguments", "batch_problems",
           "compile_plan", "detailed_profiling", "DEBUGGER_SINCE", "INPUT_NAME", "OUTPUT_NAME"]

LOGGER = logging.getLogger(__name__)

#: engine tensor names: Torch-TensorRT names inputs after forward()'s arguments and outputs ``output{i}``
INPUT_NAME = "images"
OUTPUT_NAME = "output0"


#: the default candidate: an FP16 plan per GPU architecture
CANDIDATE = EngineCandidate("tensorrt", FP16)
#: what ``--precision`` accepts with ``--target tensorrt`` (``auto`` = ``fp16``): FP16 and ModelOpt's quantized modes
PRECISIONS = ("auto", FP16, *QUANT_MODES)


def check_choice(engine: str, precision: str) -> None:
    """ConfigError unless ``--precision`` is one the tensorrt target builds, and no CPU ``--engine`` is named."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--target tensorrt has no {precision} mode",
                          hint=f"use --precision {', '.join(PRECISIONS[1:])} (auto = fp16), or --target cpu for bf16")
    if engine != "auto":
        raise ConfigError(f"--engine {engine} chooses a CPU engine, not a tensorrt one", hint="drop --engine, or use --target cpu")


def check_available(settings: ExportSettings | None = None) -> None:
    """Raise TargetUnavailable (one line, naming what is missing and what works instead).

    FP16 needs torch_tensorrt; INT8 and FP8 need TensorRT's own Python API and ModelOpt.
    """
    precision = settings.precision if settings is not None else "auto"
    if precision in QUANT_MODES:
        require_quantization_stack(precision)
    else:
        require_torch_tensorrt("tensorrt")


def batch_profile(max_batch_size: int) -> tuple[int, int, int]:
    """Optimization profile of the batch dimension: min 1, opt = max = ``max_batch_size``.

    Opt at the maximum: with dynamic batching under load, batches run near the maximum
    and TensorRT tunes its kernels for the opt shape.
    """
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be >= 1")
    return 1, max_batch_size, max_batch_size


def input_arguments(shape: tuple[int, ...], max_batch_size: int, dtype: Any) -> dict[str, Any]:
    """``torch_tensorrt.Input`` keywords for a dynamic batch: ``min_shape`` / ``opt_shape`` / ``max_shape``, or one ``shape``.

    ``torch_tensorrt.dynamo.trace`` turns the range into a ``torch.export.Dim`` of the batch,
    so a ViT or Swin traces with a symbolic batch (Torch-TensorRT issues #2074 / #2075 /
    #3016: a batch the export specialised makes a plan that refuses every other size;
    Swin's window ops #1271). ``opt`` is never ``min`` unless the range is one size
    (#4103: an ``opt_shape`` equal to ``min_shape`` fails to export): with max batch 1 the
    input is static.
    """
    lo, opt, hi = batch_profile(max_batch_size)
    if lo == hi:
        return {"shape": (hi, *shape), "dtype": dtype}
    return {"min_shape": (lo, *shape), "opt_shape": (opt, *shape), "max_shape": (hi, *shape), "dtype": dtype}


def batch_problems(io: dict[str, dict[str, Any]], input_name: str, max_batch_size: int) -> list[str]:
    """Why a built plan does not serve every batch from 1 to ``max_batch_size`` (empty when it does).

    A plan whose input has a fixed batch dimension, or a profile narrower than asked,
    loads in Triton but fails every request of another size: refused at build time.
    """
    entry = io.get(input_name) or {}
    shape, profile = list(entry.get("shape") or []), entry.get("profile")
    if max_batch_size == 1:
        return []
    if not shape or shape[0] != -1:
        return [f"the plan's input {input_name} has a fixed batch dimension ({shape[:1] or '?'}), not 1..{max_batch_size}: "
                "the export specialised the batch"]
    if profile and (profile[0][0] > 1 or profile[2][0] < max_batch_size):
        return [f"the plan's batch profile is {profile[0][0]}..{profile[2][0]}, not 1..{max_batch_size}"]
    return []


def plan_filenames(compute_capabilities: list[str]) -> dict[str, str]:
    """Compute capability → plan file: ``model.plan`` for one architecture, ``model_sm90.plan``... for several."""
    ccs = sorted(set(compute_capabilities), key=lambda c: tuple(int(p) for p in c.split(".")))
    if len(ccs) == 1:
        return {ccs[0]: "model.plan"}
    return {cc: f"model_sm{cc.replace('.', '')}.plan" for cc in ccs}


def tensorrt_config(
    name: str,
    num_classes: int,
    shape: tuple[int, ...],
    max_batch_size: int,
    instance_count: int,
    max_queue_delay_us: int,
    gpus: tuple[int, ...],
    parameters: dict[str, str],
    plans: dict[str, str] | None = None,
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
    input_dtype: str = "FP16",
) -> ModelConfigSpec:
    """Model-level Triton config of an FP16 TensorRT plan.

    ``plans`` maps compute capability → plan file; with several architectures the
    config carries ``cc_model_filenames`` (Triton picks the plan of the serving GPU and
    fails to load on an architecture without one), else ``default_model_filename``.
    """
    return serving_config(tensorrt_engine_config(num_classes, shape, plans, input_name, output_name, input_dtype),
                          name, max_batch_size, instance_count, max_queue_delay_us, parameters, tuple(gpus))


def tensorrt_engine_config(num_classes: int, shape: tuple[int, ...], plans: dict[str, str] | None = None, input_name: str = INPUT_NAME,
                           output_name: str = OUTPUT_NAME, input_dtype: str = "FP16") -> EngineConfig:
    """The engine half: ``tensorrt_plan`` on KIND_GPU with CUDA graphs; one plan, or one per compute capability."""
    plans = plans or {"any": "model.plan"}
    several = len(plans) > 1
    return EngineConfig(
        platform="tensorrt_plan",
        inputs=(TensorSpec(input_name, input_dtype, tuple(shape)),),
        outputs=(TensorSpec(output_name, "FP32", (num_classes,), label_filename="labels.txt"),),
        instance_kind="KIND_GPU",
        default_model_filename=None if several else next(iter(plans.values())),
        cc_model_filenames=tuple(sorted(plans.items())) if several else (),
        cuda_graphs=True,
    )


#: first Torch-TensorRT with ``dynamo.Debugger`` (py/torch_tensorrt/dynamo/debug/_Debugger.py appears at v2.8.0)
DEBUGGER_SINCE = (2, 8)


def detailed_profiling(version: tuple[int, int]) -> tuple[str, dict[str, Any]]:
    """How Torch-TensorRT ``version`` builds an engine with ``ProfilingVerbosity.DETAILED``.

    Returns ``(mechanism, extra compile kwargs)``. From 2.8 the ``Debugger`` context
    (``save_engine_profile=True``) sets it (``_TRTInterpreter`` reads the debugger
    config; the ``debug`` argument is deprecated there); 2.5 – 2.7 have no Debugger and
    set it from ``debug=True`` on the conversion call (``compilation_settings.debug`` in
    ``_TRTInterpreter._populate_trt_builder_config``). Without it the inspector reports
    layer names only and the FP16 check falls back to weaker evidence.
    """
    if version >= DEBUGGER_SINCE:
        return "debugger", {}
    return "debug_argument", {"debug": True}


@contextlib.contextmanager
def _detailed_profile(version: tuple[int, int], logdir: Path) -> Iterator[tuple[bool, dict[str, Any]]]:
    """Build with detailed profiling verbosity so the inspector reports layer precisions.

    Yields ``(detailed, extra compile kwargs)``. Both mechanisms reconfigure logging (the
    Debugger the root logger, ``debug=True`` Torch-TensorRT's logger), so the logging
    setup is restored after. Any failure to set up the Debugger, its construction or its
    ``__enter__`` (Torch-TensorRT 2.8 calls ``torch.ops.tensorrt.get_logging_level()`` there
    unguarded: it fails without the C++ runtime), just leaves it off.
    """
    root = logging.getLogger()
    trt_logger = logging.getLogger("torch_tensorrt")
    handlers, level, trt_level = root.handlers[:], root.level, trt_logger.level
    mechanism, extra = detailed_profiling(version)
    debugger = None
    if mechanism == "debugger":
        try:
            from torch_tensorrt.dynamo import Debugger

            logdir.mkdir(parents=True, exist_ok=True)
            debugger = Debugger(log_level="warning", save_engine_profile=True, engine_builder_monitor=False, logging_dir=str(logdir))
        except Exception as exc:  # diagnostics only
            LOGGER.info("detailed TensorRT profiling unavailable: %s", exc)
    def restore() -> None:
        root.handlers[:] = handlers
        root.setLevel(level)
        trt_logger.setLevel(trt_level)

    try:
        if mechanism == "debug_argument":
            yield True, extra
            return
        if debugger is not None:
            try:  # 2.8's __enter__ calls torch.ops.tensorrt.get_logging_level() unguarded (guarded from 2.9)
                debugger.__enter__()
            except Exception as exc:  # diagnostics only: build with plain logging
                LOGGER.info("detailed TensorRT profiling unavailable (Debugger.__enter__: %s: %s); plain logging", type(exc).__name__, exc)
                restore()
                debugger = None
        if debugger is None:
            yield False, {}
            return
        try:
            yield True, {}
        except BaseException:
            if not debugger.__exit__(*sys.exc_info()):
                raise
        else:
            try:
                debugger.__exit__(None, None, None)
            except Exception as exc:  # 2.8's __exit__ is unguarded too: the plan is built, keep it
                LOGGER.info("Torch-TensorRT Debugger.__exit__ failed (%s: %s)", type(exc).__name__, exc)
    finally:
        restore()


def compile_plan(module: nn.Module, recipe: Fp16Recipe, gpu: GpuInfo, shape: tuple[int, ...], max_batch_size: int, logdir: Path | None = None) -> tuple[bytes, bool]:
    """Serialized FP16 plan of ``module`` (already half, on ``gpu``); returns (plan, detailed_profile).

    ``logdir`` receives Torch-TensorRT's debug output (a temporary directory if None).
    """
    import torch_tensorrt

    device = torch.device("cuda", gpu.index)
    spec = torch_tensorrt.Input(**input_arguments(tuple(shape), max_batch_size, recipe.input_dtype))
    kwargs = dict(recipe.compile_kwargs)
    with contextlib.ExitStack() as stack:
        if logdir is None:
            logdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sft-trt-debug-")))
        stack.enter_context(torch.cuda.device(device))
        stack.enter_context(torch.no_grad())
        detailed, extra = stack.enter_context(_detailed_profile(recipe.version, logdir))
        kwargs.update(extra)
        exported = torch_tensorrt.dynamo.trace(module, inputs=(spec,), device=device)
        plan = torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine(
            exported, inputs=(spec,), device=device, require_full_compilation=True, min_block_size=1, **kwargs,
        )
    return bytes(plan), detailed


def _compile_one(ctx: ExportContext, recipe: Fp16Recipe, gpu: GpuInfo, path: Path) -> dict[str, Any]:
    """Build and check FP16, for one architecture. Returns the runner and what the manifest records."""
    from sft_engine.engines.tensorrt.runtime import PlanRunner

    s = ctx.settings
    device = torch.device("cuda", gpu.index)
    if not recipe.half_model:
        raise ValueError("the tensorrt target compiles the half model; autocast recipes are for dynamo.compile")
    module = half_module(ctx.model, device)
    parameters = sum(p.numel() for p in ctx.model.parameters())
    LOGGER.info("compiling FP16 TensorRT plan on GPU %d (%s, sm %s)", gpu.index, gpu.name, gpu.compute_capability)
    try:
        plan, detailed = compile_plan(module, recipe, gpu, tuple(s.input_shape), s.max_batch_size, ctx.workdir / f"trt-debug-{gpu.sm}")
    except Exception as exc:  # an unconvertible layer is an expected outcome, told apart from our bugs by the message
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"Torch-TensorRT could not compile {s.arch} for {gpu.name}: {type(exc).__name__}: {first}",
                          hint="try --target torchscript-gpu, or run with -vv for the TensorRT log") from exc
    finally:
        del module  # the half copy's weights: TensorRT holds its own from here on
        torch.cuda.empty_cache()
    path.write_bytes(plan)
    runner = PlanRunner(plan, gpu.index)
    problems = batch_problems(runner.io(), runner.input_name, s.max_batch_size)
    if problems:
        raise ExportError(f"the TensorRT plan of {s.arch} for {gpu.name} does not take every batch: {'; '.join(problems)}",
                          hint="nothing was published; try --target torchscript-gpu or onnx, or --max-batch-size 1")
    verdict = assess_fp16(runner.io(), runner.layers(batch_profile(s.max_batch_size)[1]), len(plan), parameters)
    if not verdict.passed:
        raise ExportError(f"the TensorRT plan for {gpu.name} is not FP16: {'; '.join(verdict.reasons)}",
                          hint=f"Torch-TensorRT {'.'.join(map(str, recipe.version))} ignored the FP16 request; nothing was published")
    check = Check(f"tensorrt-fp16@{gpu.sm}", runner.run, key=gpu.compute_capability, subject="the FP16 TensorRT plan",
                  against=f"eager FP32 on {gpu.name}")
    return {"runner": runner, "check": check, "verdict": verdict, "detailed_profile": detailed, "io": runner.io(), "bytes": len(plan)}


def _build_gpus(settings: ExportSettings) -> dict[str, GpuInfo]:
    """One GPU per compute capability among those the build may use (``--build-gpu``, else every visible one)."""
    by_cc: dict[str, GpuInfo] = {}
    for gpu in select_gpus(tuple(settings.build_gpus), list_gpus()):
        by_cc.setdefault(gpu.compute_capability, gpu)
    return by_cc


def export(ctx: ExportContext, candidate: EngineCandidate = CANDIDATE) -> EngineArtifact:
    """One plan per GPU architecture of the build host (or of ``--build-gpu``): FP16, or INT8 / FP8 by ModelOpt."""
    if candidate.precision in QUANT_MODES:
        return _export_quantized(ctx, candidate)
    s = ctx.settings
    check_available(s)
    import torch_tensorrt

    by_cc = _build_gpus(s)
    plans = plan_filenames(list(by_cc))
    recipe = fp16_recipe(torch_tensorrt.__version__)
    LOGGER.info("Torch-TensorRT %s: FP16 via %s", torch_tensorrt.__version__, recipe.api)
    results: dict[str, dict[str, Any]] = {}
    for cc, filename in plans.items():
        results[cc] = _compile_one(ctx, recipe, by_cc[cc], ctx.workdir / filename)
    first = results[next(iter(plans))]
    names = {(r["runner"].input_name, r["runner"].output_name) for r in results.values()}
    if len(names) != 1:
        raise ExportError(f"the plans disagree on tensor names: {sorted(names)}", hint="report this as a bug")
    input_name, output_name = names.pop()
    compat = compatibility_manifest("tensorrt", list(by_cc.values()), plans)
    check_plan_servable(compat, s.allow_unmatched_tensorrt)
    details = {
        "fp16_check": {cc: {**r["verdict"].to_dict(), "detailed_profile": r["detailed_profile"]} for cc, r in results.items()},
        "fp16_recipe": recipe.describe(),
        "batch_profile": list(batch_profile(s.max_batch_size)),
        "io": first["io"],
        "plan_bytes": {plans[cc]: r["bytes"] for cc, r in results.items()},
        "compatibility": compat,
    }
    return EngineArtifact(
        candidate=candidate, engine="tensorrt-fp16", files={f: ctx.workdir / f for f in plans.values()},
        config=tensorrt_engine_config(s.num_classes, tuple(s.input_shape), plans, input_name, output_name, first["io"][input_name]["dtype"]),
        checks=tuple(r["check"] for r in results.values()), details=details, checks_field="parity_per_architecture",
    )


def _export_quantized(ctx: ExportContext, candidate: EngineCandidate) -> EngineArtifact:
    """INT8 / FP8 plans: Q/DQ ONNX by ModelOpt on the calibration images, one plan per architecture, each checked.

    Everything that can be refused is refused before the slow steps: the stack, the
    labelled images (too few for calibration plus a 200-image gate), FP8 on GPUs older
    than Ada/Hopper, a TensorRT too old for explicit quantization.
    """
    import tensorrt as trt

    from sft_engine.engines.tensorrt.runtime import PlanRunner

    s, mode = ctx.settings, candidate.precision
    require_quantization_stack(mode)
    split = split_for_int8(ctx.data, s.int8_calibration_images, seed=s.seed)
    by_cc = _build_gpus(s)
    if mode == "fp8":
        reason = fp8_unavailable_reason(list(by_cc))
        if reason:
            raise TargetUnavailable(reason, hint="build --precision int8 (any GPU from Turing on), or --build-gpu an H100/H200/L40S")
    flags = tensorrt_build_flags(trt.__version__, mode)
    plans = plan_filenames(list(by_cc))
    profile = batch_profile(s.max_batch_size)
    onnx_path, qdq_path = ctx.workdir / "model_fp32.onnx", ctx.workdir / f"model_{mode}.onnx"
    LOGGER.info("exporting ONNX and quantizing it to %s with ModelOpt on %d calibration images", mode.upper(), len(split.calibration))
    export_onnx(ctx.model, torch.from_numpy(ctx.example), onnx_path)
    quantizer = quantize_with_modelopt(onnx_path, split.calibration, qdq_path, mode)
    checks, verdicts, sizes, ios, names = [], {}, {}, {}, set()
    for cc, filename in plans.items():
        gpu = by_cc[cc]
        LOGGER.info("building the %s TensorRT plan on GPU %d (%s, sm %s)", mode.upper(), gpu.index, gpu.name, cc)
        with torch.cuda.device(gpu.index):
            plan_bytes = build_plan(qdq_path, flags, ONNX_INPUT_NAME, tuple(s.input_shape), profile)
        (ctx.workdir / filename).write_bytes(plan_bytes)
        runner = PlanRunner(plan_bytes, gpu.index)
        verdict = assess_quantized(runner.layers(profile[1]), mode)
        if not verdict.passed:
            raise ExportError(f"the TensorRT plan for {gpu.name} is not {mode.upper()}: {'; '.join(verdict.reasons)}",
                              hint="nothing was published; build --precision fp16")
        verdicts[cc], sizes[filename], ios[cc] = verdict.to_dict(), len(plan_bytes), runner.io()
        names.add((runner.input_name, runner.output_name))
        checks.append(Check(f"tensorrt-{mode}@{gpu.sm}", runner.run, key=cc, subject=f"the {mode.upper()} TensorRT plan",
                            against=f"eager FP32 on {gpu.name}"))
    if len(names) != 1:
        raise ExportError(f"the plans disagree on tensor names: {sorted(names)}", hint="report this as a bug")
    (input_name, output_name), first = names.pop(), next(iter(ios.values()))
    compat = compatibility_manifest("tensorrt", list(by_cc.values()), plans)
    check_plan_servable(compat, s.allow_unmatched_tensorrt)
    details = {
        "precision": mode,
        mode: {**quantizer, **split.describe()},
        "quantized_check": verdicts,
        "tensorrt_build": flags.describe(),
        "batch_profile": list(profile),
        "io": first,
        "plan_bytes": sizes,
        "compatibility": compat,
    }
    return EngineArtifact(
        candidate=candidate, engine=f"tensorrt-{mode}", files={f: ctx.workdir / f for f in plans.values()},
        config=tensorrt_engine_config(s.num_classes, tuple(s.input_shape), plans, input_name, output_name, first[input_name]["dtype"]),
        checks=tuple(checks), details=details, checks_field="parity_per_architecture", gate_data=split.gate,
        record={mode: details[mode]},
    )


def plan(settings: ExportSettings) -> list[EngineCandidate]:
    """FP16 unless ``--precision int8`` or ``fp8`` asks for a quantized plan."""
    if settings.precision in QUANT_MODES:
        return [EngineCandidate("tensorrt", settings.precision)]
    return [CANDIDATE]


TARGET = Target(name="tensorrt", plan=plan, export=export, precisions=PRECISIONS[1:], check_choice=check_choice,
                check_available=check_available, ngc_container=True)
