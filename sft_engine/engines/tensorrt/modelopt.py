"""INT8 / FP8 TensorRT plans by NVIDIA ModelOpt post-training quantization: the pieces of that path.

``--target tensorrt --precision int8|fp8`` (``tensorrt.target.export`` chains these pieces,
with the calibration/gate split of the CPU INT8 engines and the gate
``verify.INT8_TOLERANCE`` / ``FP8_TOLERANCE``). The quantizer call, the plan build and the
checks below are written against ModelOpt's and TensorRT's APIs; their
version-dependent parts are pure functions, unit-tested without a GPU, and ModelOpt's
ONNX quantizer itself runs on CPU (``calibration_eps=["cpu"]``), so its output is
tested wherever nvidia-modelopt is installed.

The pipeline (explicit quantization, the form TensorRT ≥ 10 builds from):

1. the eager model exported to ONNX (FP32, dynamic batch);
2. ``modelopt.onnx.quantization.quantize`` inserts Q/DQ nodes, with activation ranges
   from the build's calibration images (never random data: ModelOpt calibrates on
   random inputs when given none, so the calibration array is always passed). INT8
   uses entropy calibration, FP8 max calibration, as ModelOpt recommends for each;
3. TensorRT's ONNX parser builds the plan: strongly typed on TensorRT ≥ 10 (the Q/DQ
   and cast nodes fix every layer's precision), weakly typed with the INT8/FP16 builder
   flags on 8.6 and 9.x;
4. the plan is checked with the engine inspector (most convolutions must really run in
   INT8 / FP8, as the FP16 check does for FP16), then gated against eager FP32 on the
   held-out gate images with ``INT8_TOLERANCE``.

The version-dependent parts are pure functions (``modelopt_quantize_kwargs``,
``tensorrt_build_flags``, ``fp8_unavailable_reason``, ``assess_quantized``) tested
without a GPU; the rest runs in ``scripts/gpu_check.sh``.

FP8: ModelOpt's ONNX path quantizes Conv, Gemm and MatMul in FP8 mode; TensorRT runs
FP8 convolutions only on compute capability ≥ 8.9 (Ada, Hopper) and from TensorRT 10,
so ``fp8`` is refused elsewhere. Whether TensorRT picks FP8 kernels for every
convolution of a given model is its decision: the inspector check reports the share.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Collection, Iterable

import numpy as np

from sft_engine.engines.calibration import Received
from sft_engine.deps import require_minor
from sft_engine.engines.precision import PRECISIONS
from sft_engine.engines.tensorrt.verdict import layer_precision_counts
from sft_engine.errors import ExportError, TargetUnavailable
from sft_engine.triton.releases import TRITON_RELEASES

__all__ = [
    "QUANT_MODES", "MIN_MODELOPT", "MIN_TENSORRT", "TrtBuildFlags", "QuantVerdict",
    "modelopt_quantize_kwargs", "tensorrt_build_flags", "fp8_unavailable_reason", "assess_quantized",
    "QUANTIZER_MODULES", "quantizer_problem", "quantization_stack_problem", "require_modelopt", "require_quantization_stack",
    "quantize_with_modelopt", "build_plan",
]

LOGGER = logging.getLogger(__name__)

#: first nvidia-modelopt with ``modelopt.onnx.quantization.quantize(quantize_mode=..., calibration_data=...)`` for int8 and fp8
MIN_MODELOPT = (0, 11)
#: explicit-quantization ONNX (Q/DQ) builds from TensorRT 8.6 on
MIN_TENSORRT = (8, 6)
#: share of the plan's convolution/matmul layers that must run in the quantized type
MIN_QUANTIZED_SHARE = 0.5
#: calibration method per mode (ModelOpt's recommendations: entropy for INT8, max for FP8)
CALIBRATION_METHOD = {"int8": "entropy", "fp8": "max"}
#: the precisions ModelOpt quantizes to: those of the table calibrated on labelled images that it has a method for
QUANT_MODES = tuple(mode for mode in CALIBRATION_METHOD if PRECISIONS[mode].needs_labelled_images)
_INSPECTOR_NAME = {"int8": "INT8", "fp8": "FP8"}


def modelopt_quantize_kwargs(mode: str, accepted: Collection[str], calibration: np.ndarray, output_path: str,
                             input_name: str = "input") -> dict[str, Any]:
    """Keyword arguments for ``modelopt.onnx.quantization.quantize`` as the installed release accepts them.

    ``accepted``: the parameter names of the installed ``quantize`` (its signature).
    Required everywhere: ``quantize_mode``, ``calibration_data`` and ``output_path``;
    a release lacking one is refused rather than called in a way that would silently
    calibrate on random data or write elsewhere. Optional ones are passed only where
    they exist: ``calibration_eps`` (``["cpu"]``: calibration runs anywhere and the
    ranges do not depend on the device), ``high_precision_dtype`` (``fp16`` for the
    layers left unquantized), ``dq_only=False`` (explicit Q/DQ pairs, which every
    TensorRT release parses; the default flipped between releases), ``log_level``.
    """
    if mode not in QUANT_MODES:
        raise ValueError(f"unknown quantization mode {mode!r}")
    missing = [name for name in ("quantize_mode", "calibration_data", "output_path") if name not in accepted]
    if missing:
        raise TargetUnavailable(
            f"the installed nvidia-modelopt's onnx quantize() has no {', '.join(missing)} argument",
            hint=f"install nvidia-modelopt >= {MIN_MODELOPT[0]}.{MIN_MODELOPT[1]} (pip install 'nvidia-modelopt[onnx]')",
        )
    kwargs: dict[str, Any] = {
        "quantize_mode": mode,
        "calibration_data": {input_name: np.ascontiguousarray(calibration, dtype=np.float32)},
        "output_path": output_path,
    }
    if "calibration_method" in accepted:
        kwargs["calibration_method"] = CALIBRATION_METHOD[mode]
    if "calibration_eps" in accepted:
        kwargs["calibration_eps"] = ["cpu"]
    if "high_precision_dtype" in accepted:
        kwargs["high_precision_dtype"] = "fp16"
    if "dq_only" in accepted:
        kwargs["dq_only"] = False
    if "log_level" in accepted:
        kwargs["log_level"] = "WARNING"
    return kwargs


@dataclass(frozen=True)
class TrtBuildFlags:
    """How to build a Q/DQ ONNX model with one TensorRT release."""

    version: tuple[int, int]
    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]
    note: str

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out["version"] = ".".join(map(str, self.version))
        out["network_flags"], out["builder_flags"] = list(self.network_flags), list(self.builder_flags)
        return out


def tensorrt_build_flags(version: str, mode: str) -> TrtBuildFlags:
    """Network-creation and builder flags (names in ``trt.NetworkDefinitionCreationFlag`` / ``trt.BuilderFlag``)."""
    ver = require_minor(version)
    if ver < MIN_TENSORRT:
        raise TargetUnavailable(f"TensorRT {version} cannot build explicitly quantized (Q/DQ) networks",
                                hint=f"install TensorRT >= {MIN_TENSORRT[0]}.{MIN_TENSORRT[1]}")
    if ver < (9, 0):  # the TensorRT 8.6 releases of the container table
        tags = [r.tag for r in TRITON_RELEASES if r.tensorrt and require_minor(r.tensorrt) == ver]
        where = f" (NGC {tags[0]}–{tags[-1]})" if tags else ""
        raise TargetUnavailable(f"--precision {mode} is not built with TensorRT {version}{where}: ModelOpt writes opset 19 Q/DQ ONNX "
                                "(from 0.42; FP8 with FP16 opset 21 before), which this parser is not known to take",
                                hint="build in NGC 24.05 or later (TensorRT 10): sft-engine build --print-docker --ngc-release 24.05, or --precision fp16")
    if mode == "fp8" and ver < (10, 0):
        raise TargetUnavailable(f"TensorRT {version} has no FP8 convolutions", hint="install TensorRT >= 10, or build --precision int8")
    if ver >= (10, 0):
        return TrtBuildFlags(ver, ("STRONGLY_TYPED",), (),
                             "strongly typed: the Q/DQ nodes and the FP16 casts ModelOpt inserted decide every layer's precision "
                             "(TensorRT 11 has no precision builder flags)")
    flags = ("INT8", "FP16")
    return TrtBuildFlags(ver, ("EXPLICIT_BATCH",), flags,
                         "weakly typed: the INT8 flag lets TensorRT honour the Q/DQ nodes, FP16 covers the unquantized layers")


def fp8_unavailable_reason(compute_capabilities: Iterable[str]) -> str | None:
    """Why FP8 cannot be built for these GPUs (FP8 tensor cores: compute capability ≥ 8.9), or None."""
    low = sorted(cc for cc in set(compute_capabilities) if tuple(int(p) for p in cc.split(".")) < (8, 9))
    if low:
        return f"FP8 needs compute capability 8.9 or later (Ada, Hopper); this build's GPUs include {', '.join(low)}"
    return None


@dataclass
class QuantVerdict:
    passed: bool
    mode: str
    layer_precisions: dict[str, dict[str, int]] | None
    quantized_share: float | None
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def assess_quantized(layers: list[Any] | None, mode: str) -> QuantVerdict:
    """Does the plan really run its convolutions in ``mode``? From the inspector's per-layer formats.

    Without layer information (a plan built without detailed profiling) the verdict
    fails: here the plan is always built with detailed profiling, so missing layers
    mean the check could not be made, and an unverified INT8 claim is not published.
    """
    want = _INSPECTOR_NAME[mode]
    counts = layer_precision_counts(layers) if layers else None
    pool = (counts["compute"] or counts["all"]) if counts else {}
    known = sum(pool.values())
    if not known:
        return QuantVerdict(False, mode, counts, None, ["the engine inspector reported no layer precisions"])
    share = pool.get(want, 0) / known
    reasons = [] if share >= MIN_QUANTIZED_SHARE else [f"only {share:.0%} of the plan's compute layers run in {want} ({pool})"]
    return QuantVerdict(not reasons, mode, counts, share, reasons)


#: what ``import modelopt.onnx.quantization`` needs beyond ModelOpt's core, module → pip name (its module-level imports,
#: 0.23 – 0.47; ``modelopt/onnx/__init__.py`` turns any of them missing into one generic ImportError, so each is probed)
QUANTIZER_MODULES = {
    "onnx": "onnx", "onnx_graphsurgeon": "onnx-graphsurgeon", "onnxruntime": "onnxruntime-gpu", "onnxslim": "onnxslim",
    "onnxscript": "onnxscript", "ml_dtypes": "ml_dtypes", "lief": "lief", "pynvml": "nvidia-ml-py",
}
_INSTALL = "pip install 'nvidia-modelopt[onnx]'"


def _missing_module_names(exc: BaseException) -> list[str]:
    """Module names of the ModuleNotFoundErrors in ``exc``'s chain (ModelOpt re-raises them as a plain ImportError)."""
    names, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            names.append(exc.name.split(".")[0])
        exc = exc.__cause__ or exc.__context__
    return names


def quantizer_problem(import_module=importlib.import_module, find_spec=None) -> str | None:
    """None when ModelOpt's ONNX quantizer really imports, else what is missing by name and how to install it.

    The probe is the import itself (``modelopt.onnx.quantization``): NGC PyTorch containers ship
    ModelOpt, possibly without its ``[onnx]`` dependencies, which only that import needs.
    """
    import importlib.util

    find_spec = find_spec or importlib.util.find_spec
    try:
        modelopt = import_module("modelopt")
    except Exception as exc:  # absent or broken
        return f"nvidia-modelopt is not installed ({type(exc).__name__}: {str(exc)[:120]}); {_INSTALL}"
    version = str(getattr(modelopt, "__version__", "?"))
    try:
        import_module("modelopt.onnx.quantization")
        return None
    except Exception as exc:  # a missing optional dependency, or a broken one
        missing = [m for m in QUANTIZER_MODULES if _spec_missing(find_spec, m)]
        missing += [m for m in _missing_module_names(exc) if m not in missing and not m.startswith("modelopt")]
        if not missing:
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            return f"nvidia-modelopt {version}: modelopt.onnx.quantization does not import ({type(exc).__name__}: {first}); {_INSTALL}"
        pip = " ".join(QUANTIZER_MODULES.get(m, m.replace("_", "-")) for m in missing)
        return (f"nvidia-modelopt {version} lacks its ONNX quantizer's dependencies: missing {', '.join(missing)} "
                f"(pip install {pip}, or {_INSTALL})")


def _spec_missing(find_spec, module: str) -> bool:
    try:
        return find_spec(module) is None
    except (ImportError, ValueError):
        return True


def quantization_stack_problem(cuda: bool, import_module=importlib.import_module, find_spec=None) -> str | None:
    """Why ``--precision int8|fp8`` cannot build here (no CUDA, no TensorRT Python API, no ModelOpt quantizer), or None."""
    if not cuda:
        return "PyTorch sees no CUDA device"
    try:
        import_module("tensorrt")
    except Exception as exc:  # absent, or a wheel for another CUDA
        return f"the TensorRT Python package does not import ({type(exc).__name__}: {str(exc)[:120]}); pip install tensorrt"
    return quantizer_problem(import_module, find_spec)


def require_modelopt() -> tuple[Any, str]:
    """``(quantize function, version)`` of the installed nvidia-modelopt; refuses in one line without it."""
    problem = quantizer_problem()
    if problem is not None:
        raise TargetUnavailable(f"--target tensorrt --precision int8/fp8 needs nvidia-modelopt's ONNX quantizer: {problem}"[:400],
                                hint="install what is named, or build --precision fp16 (the default)")
    modelopt = importlib.import_module("modelopt")
    module = importlib.import_module("modelopt.onnx.quantization")
    version = str(getattr(modelopt, "__version__", "0"))
    if require_minor(version) < MIN_MODELOPT:
        raise TargetUnavailable(f"nvidia-modelopt {version} is older than {MIN_MODELOPT[0]}.{MIN_MODELOPT[1]}",
                                hint="pip install -U 'nvidia-modelopt[onnx]'")
    return module.quantize, version


def require_quantization_stack(mode: str = "int8", cuda: bool | None = None) -> None:
    """Refuse in one line unless a CUDA GPU, the TensorRT Python API and ModelOpt's ONNX quantizer are all here.

    Unlike the FP16 plan this path needs no torch_tensorrt: ModelOpt writes a Q/DQ ONNX
    model and TensorRT's own parser builds it. ``cuda``: whether PyTorch sees a CUDA
    device (probed when None).
    """
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if not cuda:
        raise TargetUnavailable(f"--target tensorrt --precision {mode} needs a CUDA GPU: PyTorch sees no CUDA device",
                                hint="build on a GPU host, or --target cpu --precision int8 for an INT8 engine on this CPU")
    try:
        importlib.import_module("tensorrt")
    except Exception as exc:  # absent, or a wheel for another CUDA
        raise TargetUnavailable(f"--target tensorrt --precision {mode} needs the TensorRT Python package ({type(exc).__name__}: {exc})"[:300],
                                hint="pip install tensorrt, or build --precision fp16 (the default)") from None
    require_modelopt()


def quantize_with_modelopt(onnx_path: Path, calibration: np.ndarray, out_path: Path, mode: str) -> dict[str, Any]:
    """Q/DQ ONNX of ``onnx_path`` into ``out_path``; returns what the manifest records."""
    quantize, version = require_modelopt()
    accepted = set(inspect.signature(quantize).parameters)
    kwargs = modelopt_quantize_kwargs(mode, accepted, calibration, str(out_path))
    try:
        quantize(str(onnx_path), **kwargs)
    except Exception as exc:  # the library's failure is this build's, reported with its message
        raise ExportError(f"modelopt quantize failed: {type(exc).__name__}: {exc}"[:400], hint="build --precision fp16") from exc
    if not out_path.is_file():
        raise ExportError(f"modelopt quantize wrote no {out_path.name}", hint="report this with the ModelOpt log")
    recorded = {k: v for k, v in kwargs.items() if k not in ("calibration_data", "output_path")}
    received = Received()  # the arrays the library was handed, image by image (``calibration.Received``)
    for array in kwargs["calibration_data"].values():
        received.batch(array)
    return {"quantizer": "nvidia-modelopt", "version": version, "calibration_images": int(len(calibration)), **recorded,
            **received.describe()}


def build_plan(onnx_path: Path, flags: TrtBuildFlags, input_name: str, shape: tuple[int, ...], profile: tuple[int, int, int]) -> bytes:
    """Serialized plan of a Q/DQ ONNX model, built with detailed profiling (for the inspector check)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network_flags = 0
    for name in flags.network_flags:
        network_flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(network_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse the quantized ONNX model: {errors}"[:400], hint="build --precision fp16")
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    for name in flags.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    lo, opt, hi = profile
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(input_name, (lo, *shape), (opt, *shape), (hi, *shape))
    config.add_optimization_profile(opt_profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError("TensorRT could not build the quantized plan", hint="see the TensorRT log above; build --precision fp16")
    return bytes(plan)

