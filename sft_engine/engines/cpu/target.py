"""Target ``cpu``: engines served through Triton's Python backend: ONNX Runtime, OpenVINO or frozen TorchScript.

Which one is faster depends on the model and the machine, so ``--engine auto`` plans
each of them; the build gates every candidate on parity, times the survivors
interleaved at a representative batch, and keeps the fastest (as Model Navigator picks
a format by measurement). The figures of every candidate go into the build manifest.

Precision is a second axis. On CPUs that compute bfloat16 natively (AVX512-BF16, AMX),
OpenVINO's bf16 mode runs ResNet-50 about twice as fast as any FP32 engine; like the
GPU targets' FP16 it moves the logits, so a bf16 candidate must pass the stricter
reduced-precision gate (``verify.BF16_TOLERANCE``: top-1 agreement, accuracy drop on
labelled calibration images) before it may win. ``--precision fp32`` keeps FP32.

INT8 is the third rung. Where the CPU has integer dot-product instructions (AVX2, VNNI,
AMX-INT8) and labelled images were given, post-training static quantization (NNCF for
OpenVINO, ONNX Runtime's QDQ quantizer) calibrated on part of the images yields engines
that the build gates (``verify.INT8_TOLERANCE``) on the other part, which the quantizer
never saw (``EngineArtifact.gate_data``). Too few images: the INT8 candidates are
recorded as not exported, with the reason.

A new candidate is a row of ``CANDIDATES`` (and an exporter of ``engines.export`` in
``_EXPORTERS`` for a new engine kind); a new precision is also a record of
``engines.precision.PRECISIONS`` (its gate, whether it needs labelled images).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from sft_engine.engines.base import EngineArtifact, EngineCandidate, EngineConfig, ExportContext, ExportSettings, Target, serving_config
from sft_engine.engines.calibration import split_for_int8
from sft_engine.engines.cpu import serving_model
from sft_engine.engines.cpu.isa import cpu_has_native_bf16, cpu_int8_isa, require_int8_isa
from sft_engine.engines.cpu.quantize import quantize_onnx, quantize_openvino
from sft_engine.engines.export.onnx import INPUT_NAME, OUTPUT_NAME, export_onnx
from sft_engine.engines.export.openvino import export_openvino
from sft_engine.engines.export.torchscript import export_torchscript
from sft_engine.errors import ConfigError, ExportError, TargetUnavailable
from sft_engine.repository.config import ModelConfigSpec, TensorSpec
from sft_engine.verify import Check

__all__ = ["TARGET", "cpu_config", "cpu_engine_config", "plan_candidates", "engine_json", "check_choice",
           "CANDIDATES", "ENGINES", "PRECISIONS", "INPUT_NAME", "OUTPUT_NAME", "ENGINE_FILES", "INT8_PACKAGES"]

LOGGER = logging.getLogger(__name__)

#: the files of each engine kind; the first is the one the runtime opens
ENGINE_FILES = {"onnxruntime": ("model.onnx",), "torchscript": ("model.ts",), "openvino": ("model.xml", "model.bin")}
#: the pip package each engine kind needs at build and serving time
ENGINE_PACKAGES = {"onnxruntime": "onnxruntime", "torchscript": "torch", "openvino": "openvino"}
#: every candidate the CPU target knows, in planning order: engine kind × precision
CANDIDATES = (
    EngineCandidate("onnxruntime"),
    EngineCandidate("torchscript"),
    EngineCandidate("openvino"),
    EngineCandidate("openvino", "bf16"),
    EngineCandidate("onnxruntime", "int8"),
    EngineCandidate("openvino", "int8"),
)
#: the package each engine kind's INT8 quantizer needs
INT8_PACKAGES = {"openvino": "nncf", "onnxruntime": "onnxruntime"}
#: ``--engine`` and ``--precision`` choices (``auto``: let the build measure)
ENGINES = ("auto", *ENGINE_FILES)
PRECISIONS = ("auto", *dict.fromkeys(c.precision for c in CANDIDATES))
SERVING_MODEL = Path(serving_model.__file__)


_EXPORTERS = {"onnxruntime": export_onnx, "torchscript": export_torchscript, "openvino": export_openvino}


def engine_json(candidate: EngineCandidate, intra_op_threads: int) -> dict[str, Any]:
    """``engine.json``: what the serving model needs to load and run ``candidate``.

    ``intra_op_threads`` 0: the serving model shares the cores among its instances at
    load time (so a re-tuned instance count needs no new engine.json).
    """
    out: dict[str, Any] = {"engine": candidate.engine, "file": ENGINE_FILES[candidate.engine][0],
                           "intra_op_threads": intra_op_threads, "inter_op_threads": 1}
    if candidate.engine == "torchscript":
        out["optimize_for_inference"] = True
    if candidate.engine == "openvino":
        # INT8: the quantized layers run in INT8 whatever the hint; the rest stay FP32
        out["precision"] = "bf16" if candidate.precision == "bf16" else "f32"
    if candidate.precision == "int8":
        out["quantized"] = "int8"
    return out


def check_choice(engine: str, precision: str) -> None:
    """ConfigError unless ``--engine`` / ``--precision`` name a candidate the CPU target has."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown CPU engine {engine!r}", hint=f"choose one of: {', '.join(ENGINES)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown CPU precision {precision!r}", hint=f"choose one of: {', '.join(PRECISIONS)}")
    if precision not in ("auto", "fp32") and engine != "auto" and EngineCandidate(engine, precision) not in CANDIDATES:
        able = [c.engine for c in CANDIDATES if c.precision == precision]
        raise ConfigError(f"engine {engine} has no {precision} mode",
                          hint=f"use --engine {' or '.join(able)} (or auto) with --precision {precision}, or --precision fp32")


def plan_candidates(engine: str, precision: str, native_bf16: bool, int8_isa: str | None = None,
                    labelled: bool = True) -> list[EngineCandidate]:
    """The candidates for ``--engine``/``--precision`` on a CPU with or without native bf16 and INT8.

    ``auto`` precision adds bf16 candidates only where bf16 is native, and INT8 ones only
    where the CPU has INT8 dot-product instructions (``int8_isa``, from ``cpu_int8_isa``)
    and labelled images were given (``labelled``: nothing could calibrate or gate them
    otherwise): emulated arithmetic is slower than FP32 and would only lose the timing.
    """
    if precision == "bf16" and not native_bf16:
        raise TargetUnavailable("this CPU has no native bf16 arithmetic (AVX512-BF16 or AMX), or OpenVINO is not installed",
                                hint="build with --precision fp32, or on a CPU of the serving hosts' kind")
    if precision == "int8":
        require_int8_isa(int8_isa)
    if precision == "auto":
        wanted = {"fp32", *(["bf16"] if native_bf16 else []), *(["int8"] if int8_isa is not None and labelled else [])}
    else:
        wanted = {precision}
    return [c for c in CANDIDATES if c.precision in wanted and engine in ("auto", c.engine)]


def default_threads(instance_count: int) -> int:
    """Intra-op threads per model instance: the cores shared out among instances."""
    return max(1, (os.cpu_count() or 1) // max(1, instance_count))


def cpu_engine_config(num_classes: int, shape: tuple[int, ...]) -> EngineConfig:
    """The engine half of a CPU engine's config: the Python backend running ``model.py``, KIND_CPU."""
    return EngineConfig(
        backend="python",
        inputs=(TensorSpec(INPUT_NAME, "FP32", tuple(shape)),),
        outputs=(TensorSpec(OUTPUT_NAME, "FP32", (num_classes,), label_filename="labels.txt"),),
    )


def cpu_config(name: str, num_classes: int, shape: tuple[int, ...], max_batch_size: int, instance_count: int,
               max_queue_delay_us: int, parameters: dict[str, str]) -> ModelConfigSpec:
    """Model-level Triton config of a CPU engine behind the Python backend."""
    return serving_config(cpu_engine_config(num_classes, shape), name, max_batch_size, instance_count, max_queue_delay_us, parameters)


def check_available(settings: ExportSettings) -> None:
    """A forced engine needs its package here; ``auto`` plans around what is missing."""
    engine = settings.engine
    if engine != "auto" and importlib.util.find_spec(ENGINE_PACKAGES[engine]) is None:
        raise TargetUnavailable(f"engine {engine} needs the {ENGINE_PACKAGES[engine]} package, which is not installed",
                                hint=f"pip install 'sft-engine[{'openvino' if engine == 'openvino' else 'onnx'}]', or use --engine auto")


#: what ``plan_candidates`` is told instead of an instruction set under ``--allow-emulated-int8``
EMULATED_INT8 = "none (emulated: built for hosts with AVX2, VNNI or AMX-INT8)"


def plan(settings: ExportSettings) -> list[EngineCandidate]:
    p = settings.precision
    isa = None
    if p in ("auto", "int8"):
        isa = cpu_int8_isa()
        if isa is None and settings.allow_int8_without_isa:
            LOGGER.warning("--allow-emulated-int8: this CPU has no INT8 dot-product instructions; INT8 candidates are quantized "
                           "and gated here, running emulated (their timing here says nothing of the serving hosts)")
            isa = EMULATED_INT8
    return plan_candidates(settings.engine, p, cpu_has_native_bf16() if p not in ("fp32", "int8") else False,
                           isa, labelled=settings.calibration_dir is not None)


#: the file that says an engine kind's FP32 export failed, so the candidates sharing it fail with the same line
_FAILED = "EXPORT_FAILED"


def _fp32_export(ctx: ExportContext, engine: str) -> Path:
    """The directory of ``engine``'s FP32 export, made once per build; a failed export fails every candidate of that kind alike.

    OpenVINO converts the ONNX Runtime candidate's ONNX file when there is one (one
    export of a large transformer, not two).
    """
    if engine in ctx.exported:
        return ctx.exported[engine]
    src = ctx.workdir / f"_fp32-{engine}"
    failed = src / _FAILED
    if failed.is_file():
        raise ExportError(failed.read_text(), hint="the other engines were tried; see the candidates")
    src.mkdir(parents=True, exist_ok=True)
    example = torch.from_numpy(ctx.example)
    try:
        if engine == "openvino":
            onnx = ctx.exported.get("onnxruntime")
            export_openvino(ctx.model, example, src / ENGINE_FILES[engine][0], onnx=onnx / ENGINE_FILES["onnxruntime"][0] if onnx else None)
        else:
            _EXPORTERS[engine](ctx.model, example, src / ENGINE_FILES[engine][0])
    except Exception as exc:  # this engine cannot take this family: one line, and the build goes on with the others
        text = f"{type(exc).__name__}: {exc}".strip()
        line = f"{engine} export failed: {next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)[:240]}"
        failed.write_text(line)
        raise ExportError(line, hint="the other engines were tried; see the candidates") from exc
    ctx.exported[engine] = src
    return src


def export(ctx: ExportContext, candidate: EngineCandidate) -> EngineArtifact:
    """Export one candidate into its own directory: engine files, ``engine.json``, ``model.py``.

    An engine kind already exported for another candidate (OpenVINO FP32 and bf16 share
    one IR) is copied, not exported again.
    """
    packages = [ENGINE_PACKAGES[candidate.engine]] + ([INT8_PACKAGES[candidate.engine]] if candidate.precision == "int8" else [])
    for package in packages:
        if importlib.util.find_spec(package) is None:
            raise TargetUnavailable(f"{package} is not installed", hint="install it, or leave this engine out")
    s = ctx.settings
    # INT8: which images calibrate and which gate (refused, so recorded, when too few are labelled)
    split = split_for_int8(ctx.data, s.int8_calibration_images, seed=s.seed) if candidate.precision == "int8" else None
    cand_dir = ctx.workdir / candidate.name
    cand_dir.mkdir(parents=True, exist_ok=True)
    settings = engine_json(candidate, s.intra_op_threads)
    src = _fp32_export(ctx, candidate.engine)
    details: dict[str, Any] = {}
    if split is None:  # FP32 and bf16 share one export (precision is chosen at load)
        for file in ENGINE_FILES[candidate.engine]:
            shutil.copyfile(src / file, cand_dir / file)
    else:
        quantize = quantize_openvino if candidate.engine == "openvino" else quantize_onnx
        quantizer = quantize(src / ENGINE_FILES[candidate.engine][0], split.calibration, cand_dir / ENGINE_FILES[candidate.engine][0])
        isa = cpu_int8_isa()
        details["int8"] = {**quantizer, **split.describe(), "isa": isa, **({"built_emulated": True} if isa is None else {})}
    (cand_dir / "engine.json").write_text(json.dumps(settings, indent=2) + "\n")
    shutil.copyfile(SERVING_MODEL, cand_dir / "model.py")
    runner = serving_model.EngineRunner(str(cand_dir), settings, instances=s.instance_count)
    threads = s.intra_op_threads or default_threads(s.instance_count)
    names = (*ENGINE_FILES[candidate.engine], "engine.json", "model.py")
    return EngineArtifact(
        candidate=candidate, engine=candidate.engine, files={n: cand_dir / n for n in names},
        config=cpu_engine_config(s.num_classes, s.input_shape), checks=(Check(candidate.name, runner.run),),
        details={"precision": candidate.precision, "intra_op_threads": threads, **details},
        record={"intra_op_threads": threads, **details}, gate_data=split.gate if split is not None else None,
    )


TARGET = Target(name="cpu", plan=plan, export=export, precisions=PRECISIONS[1:], check_choice=check_choice,
                check_available=check_available, selects=True, label="CPU", export_hint="try --engine torchscript or --engine onnxruntime",
                serves_on_gpus=False)
