"""What a host without TensorRT can still verify of the ``tensorrt`` target: its torch.export.

``torch_tensorrt.dynamo.trace`` is ``torch.export.export(module, args, dynamic_shapes=...,
strict=False)`` with one ``Dim(min=min_shape, max=max_shape)`` per dynamic axis
(``py/torch_tensorrt/dynamo/_tracer.py``, v2.13). Everything TensorRT then sees comes from
that exported program, so checking it checks the target's front half on any host, CPU
included:

* the half-precision serving module exports with a dynamic batch dimension whose range
  is exactly 1 … ``max_batch_size`` (the plan's optimization profile);
* its one input is named after ``forward``'s argument, which becomes the engine's input
  binding and so must be the config's input name (``tensorrt.target.INPUT_NAME``), FP16;
* it has exactly one output, FP32 (Triton's classification extension needs it);
* ``ep.module()`` agrees with eager FP32 at batch 1 and at ``max_batch_size`` within the
  FP16 tolerance.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from sft_engine.engines.gpu.half import half_module
from sft_engine.verify import FP16_TOLERANCE

__all__ = ["ExportCheck", "export_half_module", "check_half_export"]

LOGGER = logging.getLogger(__name__)


@dataclass
class ExportCheck:
    passed: bool
    device: str
    input_name: str | None
    input_dtype: str | None
    batch_range: list[int] | None
    outputs: list[str]
    output_dtypes: list[str]
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    top1_agreement: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_half_module(module: nn.Module, shape: tuple[int, ...], max_batch_size: int, device: torch.device):
    """``torch.export`` the half module as ``torch_tensorrt.dynamo.trace`` does for profile (1, max, max)."""
    from torch.export import Dim, export

    example = torch.zeros((max_batch_size, *shape), dtype=torch.float16, device=device)
    dynamic = {"images": {0: Dim("images_0", min=1, max=max_batch_size)}} if max_batch_size > 1 else None
    with torch.no_grad():
        return export(module, (example,), dynamic_shapes=dynamic, strict=False)


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float16: "FP16", torch.float32: "FP32", torch.bfloat16: "BF16"}.get(dtype, str(dtype).replace("torch.", ""))


def check_half_export(model: nn.Module, shape: tuple[int, ...], max_batch_size: int, device: torch.device,
                      expected_input: str = "images", seed: int = 0) -> ExportCheck:
    """Export the half module of ``model`` (FP32, eval) on ``device`` and check what TensorRT would receive."""
    module = half_module(model, device)
    ep = export_half_module(module, shape, max_batch_size, device)
    signature = ep.graph_signature
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    (output_node,) = [n for n in ep.graph.nodes if n.op == "output"]
    values = output_node.args[0] if isinstance(output_node.args[0], (list, tuple)) else [output_node.args[0]]
    out_dtypes = [_dtype_name(v.meta["val"].dtype) for v in values if hasattr(v, "meta") and "val" in v.meta]
    reasons: list[str] = []
    inputs = list(signature.user_inputs)
    name = inputs[0] if len(inputs) == 1 else None
    if len(inputs) != 1:
        reasons.append(f"the exported program has inputs {inputs}, expected one")
    elif name != expected_input:
        reasons.append(f"the exported input is named {name!r}, but the config names it {expected_input!r}")
    in_dtype = _dtype_name(placeholders[name].meta["val"].dtype) if name in placeholders else None
    if in_dtype != "FP16":
        reasons.append(f"the exported input is {in_dtype}, expected FP16")
    batch_range = None
    if name in placeholders:
        batch = placeholders[name].meta["val"].shape[0]
        if isinstance(batch, int):
            batch_range = [batch, batch]
        else:
            constraint = ep.range_constraints.get(batch.node.expr)
            batch_range = [int(constraint.lower), int(constraint.upper)] if constraint is not None else None
    if batch_range != [1, max_batch_size]:
        reasons.append(f"the batch dimension ranges over {batch_range}, expected [1, {max_batch_size}]")
    if len(signature.user_outputs) != 1 or out_dtypes != ["FP32"]:
        reasons.append(f"the exported program has outputs {list(signature.user_outputs)} of {out_dtypes}, expected one FP32 output")
    exported = ep.module()
    rng = np.random.default_rng(seed)
    diffs, agreement = {}, {}
    for batch in sorted({1, max_batch_size}):
        x = torch.from_numpy(rng.standard_normal((batch, *shape)).astype(np.float32))
        with torch.no_grad():
            reference = model(x).float()
            got = exported(x.to(device, torch.float16)).float().cpu()
        diff = float((got - reference).abs().max())
        allowed = FP16_TOLERANCE.atol + FP16_TOLERANCE.rtol * float(reference.abs().max())
        diffs[str(batch)] = diff
        agreement[str(batch)] = float((got.argmax(1) == reference.argmax(1)).float().mean())
        if tuple(got.shape) != (batch, reference.shape[1]):
            reasons.append(f"ep.module() returned shape {tuple(got.shape)} at batch {batch}")
        elif diff > allowed:
            reasons.append(f"ep.module() differs from eager FP32 by {diff:.3g} at batch {batch} (allowed {allowed:.3g})")
    LOGGER.info("torch.export of the half module on %s: %s", device, "passed" if not reasons else "; ".join(reasons))
    return ExportCheck(not reasons, str(device), name, in_dtype, batch_range, list(signature.user_outputs), out_dtypes,
                       diffs, agreement, reasons)
