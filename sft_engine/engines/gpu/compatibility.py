"""What a GPU build records about the host that built it, and whether an NGC container can serve the plan.

Every GPU build records a compatibility manifest: TensorRT, Torch-TensorRT, torch, CUDA,
driver, GPU name and compute capability, and the NGC ``tritonserver`` tag whose
TensorRT is the one that built the plan (``sft-engine serve --print-docker`` reads
that tag back; the table is ``triton.releases``). When no row matches, the manifest
says so and names the way out: build inside the NGC PyTorch container of the month you
serve with (it ships the same TensorRT as that month's Triton container).
"""

from __future__ import annotations

import ctypes
import importlib
import logging
from typing import Any

from sft_engine.engines.gpu.devices import GpuInfo
from sft_engine.errors import ExportError
from sft_engine.triton.releases import NEWEST_TABULATED, nearest_releases, triton_tag_for_tensorrt

__all__ = ["unmatched_tensorrt_error", "check_plan_servable", "driver_version", "compatibility_manifest"]

LOGGER = logging.getLogger(__name__)


def unmatched_tensorrt_error(tensorrt_version: str | None) -> ExportError:
    """The one-line refusal to publish a plan that no known NGC Triton container can load."""
    if not tensorrt_version:
        return ExportError("the TensorRT version that built the plan is unknown (tensorrt does not report one)",
                           hint="build inside nvcr.io/nvidia/pytorch:<yy.mm>-py3 (sft-engine build --target tensorrt --print-docker), "
                                "or pass --allow-unmatched-tensorrt to publish it anyway")
    older, newer = nearest_releases(tensorrt_version)
    near = ", ".join(f"{r.tag} ships TensorRT {r.tensorrt}" for r in (older, newer) if r is not None)
    return ExportError(
        f"no NGC Triton container in sft-engine's table (up to {NEWEST_TABULATED}) ships TensorRT {tensorrt_version}, "
        f"so no server would load this plan (nearest: {near or 'none'})",
        hint="build inside nvcr.io/nvidia/pytorch:<yy.mm>-py3 and serve with nvcr.io/nvidia/tritonserver:<yy.mm>-py3 of the same month "
             "(sft-engine build --target tensorrt --print-docker prints both), or pass --allow-unmatched-tensorrt when you know a container that ships it",
    )


def check_plan_servable(compatibility: dict[str, Any], allow_unmatched: bool) -> None:
    """Refuse (ExportError) a plan whose TensorRT matches no known Triton container, unless allowed.

    Runs before anything is published, so a refused plan never reaches the repository.
    """
    if compatibility.get("triton_container_tag") is not None:
        return
    problem = unmatched_tensorrt_error(compatibility.get("tensorrt"))
    if not allow_unmatched:
        raise problem
    LOGGER.warning("publishing anyway (--allow-unmatched-tensorrt): %s", problem.message)


def driver_version() -> str | None:
    """The NVIDIA driver version through NVML (no nvidia-smi needed), or None."""
    for name in ("libnvidia-ml.so.1", "libnvidia-ml.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.nvmlInit_v2() != 0:
                return None
            buf = ctypes.create_string_buffer(96)
            ok = lib.nvmlSystemGetDriverVersion(buf, ctypes.c_uint(len(buf))) == 0
            lib.nvmlShutdown()
            return buf.value.decode() if ok else None
        except (AttributeError, OSError):
            return None
    return None


def _version(module: str) -> str | None:
    try:
        return str(importlib.import_module(module).__version__)
    except Exception:  # absent or broken: the manifest records None
        return None


def compatibility_manifest(engine: str, gpus: list[GpuInfo], plans: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``compatibility`` block of a GPU build manifest.

    ``plans`` maps compute capability → file, for TensorRT targets (the plan's
    TensorRT version decides the container tag); other engines record no tag.
    """
    import torch

    tensorrt_version = _version("tensorrt") if plans else None
    release = triton_tag_for_tensorrt(tensorrt_version) if tensorrt_version else None
    out: dict[str, Any] = {
        "engine": engine,
        "tensorrt": tensorrt_version,
        "torch_tensorrt": _version("torch_tensorrt") if plans else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "driver": driver_version(),
        "gpus": [{"index": g.index, "name": g.name, "compute_capability": g.compute_capability, "memory_gib": g.memory_gib} for g in gpus],
        "compute_capabilities": sorted({g.compute_capability for g in gpus}),
    }
    if plans is not None:
        out["plans"] = dict(sorted(plans.items()))
        out["triton_container_tag"] = release.tag if release else None
        out["triton_container"] = f"nvcr.io/nvidia/tritonserver:{release.tag}-py3" if release else None
        if release:
            out["triton_container_note"] = (
                f"Triton {release.triton} ships TensorRT {release.tensorrt}"
                + ("" if release.verified else " (from the Frameworks Support Matrix; check it)")
                + "; the plan loads only on compute capability " + ", ".join(sorted(plans))
            )
        else:
            out["triton_container_note"] = (
                f"no NGC Triton release in sft-engine's table ships TensorRT {tensorrt_version}: build inside "
                "nvcr.io/nvidia/pytorch:<yy.mm>-py3 and serve with nvcr.io/nvidia/tritonserver:<yy.mm>-py3 of the same month"
            )
    return out
