"""How to ask Torch-TensorRT for FP16, per version (the gates by precision are in ``sft_engine.verify``).

Torch-TensorRT's FP16 switch moved three times, and the wrong form fails silently:

* up to 2.9: ``enabled_precisions={torch.half}`` lets TensorRT pick FP16 kernels
  (weak typing: ``use_explicit_typing``, added in 2.6, defaults to False up to 2.9);
* 2.10 to 2.12: explicit (strong) typing is the default, and passing any
  ``enabled_precisions`` other than FP32 raises. Precision follows the dtypes of the
  PyTorch graph: a ``model.half()`` with half inputs, or, in ``dynamo.compile``,
  ``enable_autocast=True, autocast_low_precision_type=torch.float16``;
* from 2.13: ``enabled_precisions`` is gone from the dynamo path;
  ``torch_tensorrt.compile(..., enabled_precisions=...)`` still accepts it and drops it,
  so the engine comes out FP32. FP16 comes from the half model (or autocast, in
  ``compile`` only: ``convert_exported_program_to_serialized_trt_engine`` has no
  autocast argument in any version).

``fp16_recipe`` encodes that table as data, tested without torch_tensorrt by passing a
version string. The serialized-engine path always compiles the half model with half
inputs (the one form every version honours); ≤ 2.9 additionally needs the FP16 builder
flag, because under weak typing TensorRT may otherwise run half tensors in FP32 kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from sft_engine.deps import require_minor
from sft_engine.errors import TargetUnavailable

__all__ = [
    "MIN_TORCH_TENSORRT",
    "Fp16Recipe",
    "fp16_recipe",
]

#: first release with ``dynamo.convert_exported_program_to_serialized_trt_engine``
MIN_TORCH_TENSORRT = (2, 5)

Entry = Literal["serialized_engine", "compile"]


@dataclass(frozen=True)
class Fp16Recipe:
    """What to do to the model, the inputs and the compile call to get an FP16 engine.

    ``half_model``: cast the weights with ``.half()`` before tracing; ``input_dtype``: the
    dtype of ``torch_tensorrt.Input`` (and of the engine's input binding);
    ``compile_kwargs``: extra keyword arguments for the compile call (copy before use).
    """

    version: tuple[int, int]
    api: str
    half_model: bool
    input_dtype: torch.dtype
    compile_kwargs: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def describe(self) -> dict[str, Any]:
        """JSON-ready, for the build manifest."""
        return {
            "torch_tensorrt": ".".join(map(str, self.version)),
            "api": self.api,
            "half_model": self.half_model,
            "input_dtype": str(self.input_dtype).replace("torch.", ""),
            "compile_kwargs": {k: _jsonable(v) for k, v in sorted(self.compile_kwargs.items())},
            "note": self.note,
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple, list)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    return value


def fp16_recipe(version: str, entry: Entry = "serialized_engine", autocast: bool = False) -> Fp16Recipe:
    """The FP16 compile arguments for Torch-TensorRT ``version``.

    ``entry``: ``serialized_engine`` (``dynamo.convert_exported_program_to_serialized_trt_engine``,
    what the ``tensorrt`` target uses) or ``compile`` (``dynamo.compile``). ``autocast``
    asks for the FP32-model + autocast form, which only ``compile`` ≥ 2.10 offers.
    """
    ver = require_minor(version)
    if ver < MIN_TORCH_TENSORRT:
        raise TargetUnavailable(
            f"torch_tensorrt {version} is older than {MIN_TORCH_TENSORRT[0]}.{MIN_TORCH_TENSORRT[1]}, the first release that serializes dynamo engines",
            hint="install the torch-tensorrt release built for the installed torch",
        )
    if autocast:
        if entry != "compile":
            raise ValueError("autocast FP16 exists only for dynamo.compile, not for serialized engines")
        if ver < (2, 10):
            raise ValueError(f"torch_tensorrt {version} has no enable_autocast (added in 2.10)")
        return Fp16Recipe(
            ver, "autocast", half_model=False, input_dtype=torch.float32,
            compile_kwargs={"enable_autocast": True, "autocast_low_precision_type": torch.float16},
            note="FP32 model and inputs; Torch-TensorRT inserts the casts (explicit typing is switched on by autocast)",
        )
    if ver < (2, 10):
        return Fp16Recipe(
            ver, "enabled_precisions", half_model=True, input_dtype=torch.float16,
            compile_kwargs={"enabled_precisions": {torch.float16}},
            note="weak typing: the FP16 builder flag lets TensorRT choose FP16 kernels; the half model keeps weights and inputs FP16",
        )
    if ver < (2, 13):
        return Fp16Recipe(
            ver, "explicit_typing", half_model=True, input_dtype=torch.float16,
            note="explicit typing is the default and enabled_precisions must not be passed; precision follows the half model's dtypes",
        )
    return Fp16Recipe(
        ver, "half_model", half_model=True, input_dtype=torch.float16,
        note="enabled_precisions no longer exists (torch_tensorrt.compile would drop it silently); precision follows the half model's dtypes",
    )
