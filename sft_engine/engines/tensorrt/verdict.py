"""Is a built TensorRT engine really FP16? A verdict from what the engine itself reports.

A silently FP32 engine (the Torch-TensorRT ≥ 2.13 trap: ``enabled_precisions`` dropped
without a word) computes the right answers, so parity alone never catches it. Three
pieces of evidence, strongest first:

1. layer precisions from TensorRT's engine inspector (``Format/Datatype`` of each
   layer's input) when the engine was built with detailed profiling verbosity: the
   convolution / matmul layers must mostly run in FP16;
2. the input binding's dtype: the served network was compiled from the half model,
   so its input must be FP16 (an FP32 input means the half model never reached TensorRT);
3. when layer precisions are unavailable, the plan's size per parameter: FP16 weights
   take ~2 bytes each, FP32 ~4, and for a CNN the weights dominate the plan.

Pure functions over plain data, so the rules are tested without a GPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

__all__ = ["Fp16Verdict", "normalize_precision", "layer_precision_counts", "assess_fp16", "MIN_HALF_SHARE", "FP32_BYTES_PER_PARAM"]

#: share of conv/matmul layers that must run in FP16 (or lower)
MIN_HALF_SHARE = 0.5
#: above this many plan bytes per parameter the weights look FP32
FP32_BYTES_PER_PARAM = 3.0
#: below this many parameters the size rule says nothing (kernels and metadata dominate)
_MIN_PARAMS_FOR_SIZE_RULE = 1_000_000

_COMPUTE_HINTS = ("conv", "gemm", "matrixmultiply", "matmul", "fullyconnected", "myelin", "kgen")
_LOW_PRECISION = {"FP16", "BF16", "INT8", "FP8"}


def normalize_precision(text: str) -> str:
    """``"Channel major FP16 format where channel % 8 == 0"`` → ``FP16``; ``"Float"`` → ``FP32``."""
    low = str(text).lower()
    if not low or "n/a" in low:
        return "unknown"
    if "fp16" in low or "half" in low or "float16" in low:
        return "FP16"
    if "bf16" in low or "bfloat16" in low:
        return "BF16"
    if "fp8" in low:
        return "FP8"
    if "int8" in low:
        return "INT8"
    if "int32" in low or "int64" in low or "bool" in low:
        return "INT"
    if "fp32" in low or "float" in low:
        return "FP32"
    return "unknown"


def _is_compute(layer: Mapping[str, Any]) -> bool:
    kind = str(layer.get("LayerType", "")).lower()
    return any(hint in kind for hint in _COMPUTE_HINTS)


def layer_precision_counts(layers: Iterable[Any]) -> dict[str, dict[str, int]]:
    """Precision of each layer's first input, counted for compute layers and for all layers.

    Layers given as plain names (``LAYER_NAMES_ONLY`` verbosity) carry no precision
    and are skipped.
    """
    compute: dict[str, int] = {}
    every: dict[str, int] = {}
    for layer in layers:
        if not isinstance(layer, Mapping):
            continue
        inputs = layer.get("Inputs") or []
        if not inputs or not isinstance(inputs[0], Mapping):
            continue
        precision = normalize_precision(inputs[0].get("Format/Datatype", ""))
        if precision == "unknown":
            continue
        every[precision] = every.get(precision, 0) + 1
        if _is_compute(layer):
            compute[precision] = compute.get(precision, 0) + 1
    return {"compute": compute, "all": every}


@dataclass
class Fp16Verdict:
    passed: bool
    evidence: str
    input_dtypes: dict[str, str]
    output_dtypes: dict[str, str]
    layer_precisions: dict[str, dict[str, int]] | None
    half_share: float | None
    plan_bytes: int
    parameters: int
    bytes_per_parameter: float | None
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def assess_fp16(
    io: Mapping[str, Mapping[str, Any]],
    layers: list[Any] | None,
    plan_bytes: int,
    parameters: int,
    expected_input: str = "FP16",
) -> Fp16Verdict:
    """Judge the engine. ``io`` maps tensor name → ``{"mode": "INPUT"|"OUTPUT", "dtype": "FP16"|...}``."""
    inputs = {n: str(t["dtype"]) for n, t in io.items() if t.get("mode") == "INPUT"}
    outputs = {n: str(t["dtype"]) for n, t in io.items() if t.get("mode") == "OUTPUT"}
    reasons: list[str] = []
    wrong = {n: d for n, d in inputs.items() if d != expected_input}
    if not inputs:
        reasons.append("the engine reports no input tensor")
    if wrong:
        reasons.append(f"engine input {', '.join(f'{n} is {d}' for n, d in wrong.items())}, expected {expected_input}: the half-precision model did not reach TensorRT")
    counts = layer_precision_counts(layers) if layers else None
    share = None
    pool = {}
    if counts:
        pool = counts["compute"] or counts["all"]
    known = sum(pool.values())
    bytes_per_param = plan_bytes / parameters if parameters else None
    if known:
        share = sum(v for k, v in pool.items() if k in _LOW_PRECISION) / known
        evidence = "layer precisions from the engine inspector"
        if share < MIN_HALF_SHARE:
            reasons.append(f"only {share:.0%} of the engine's {'conv/matmul ' if counts and counts['compute'] else ''}layers run in FP16 ({pool})")
    elif bytes_per_param is not None and parameters >= _MIN_PARAMS_FOR_SIZE_RULE:
        evidence = "input dtype and plan size (layer precisions unavailable)"
        if bytes_per_param >= FP32_BYTES_PER_PARAM:
            reasons.append(f"the plan holds {bytes_per_param:.2f} bytes per parameter: its weights look FP32")
    else:
        evidence = "input dtype only (layer precisions unavailable, model too small for the size rule)"
    return Fp16Verdict(
        passed=not reasons, evidence=evidence, input_dtypes=inputs, output_dtypes=outputs,
        layer_precisions=counts, half_share=share, plan_bytes=int(plan_bytes), parameters=int(parameters),
        bytes_per_parameter=round(bytes_per_param, 3) if bytes_per_param is not None else None, reasons=reasons,
    )
