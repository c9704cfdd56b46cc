"""What a GPU build records about the host that built it, and whether an NGC container can serve the plan.

Every GPU build records a compatibility manifest: TensorRT, Torch-TensorRT, torch, CUDA,
driver, GPU name and compute capability, and the NGC ``tritonserver`` tag whose
TensorRT is the one that built the plan (``sft-engine serve --print-docker`` reads
that tag back; the table is ``triton.releases``). When no row matches, the build
refuses the plan and names the way out: build inside the NGC PyTorch container a Triton
release is built from (its upstream container, which ships the same TensorRT). A
``torchscript-gpu`` build records the release whose libtorch loads it, and is refused
when its torch is newer than every tabulated libtorch.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
from typing import Any

from sft_engine.engines.gpu.devices import GpuInfo
from sft_engine.errors import ExportError
from sft_engine.triton.releases import (
    NEWEST_TABULATED, TRITON_RELEASES, nearest_releases, triton_tag_for_tensorrt, triton_tag_for_torch, unknown_tensorrt_releases,
)

__all__ = ["unmatched_tensorrt_error", "check_plan_servable", "newer_torch_error", "check_torchscript_servable", "torchscript_container", "driver_version", "compatibility_manifest"]

LOGGER = logging.getLogger(__name__)


def unmatched_tensorrt_error(tensorrt_version: str | None) -> ExportError:
    """The one-line refusal to publish a plan that no known NGC Triton container can load."""
    if not tensorrt_version:
        return ExportError("the TensorRT version that built the plan is unknown (tensorrt does not report one)",
                           hint="build inside nvcr.io/nvidia/pytorch:<yy.mm>-py3 (sft-engine build --target tensorrt --print-docker), "
                                "or pass --allow-unmatched-tensorrt to publish it anyway")
    older, newer = nearest_releases(tensorrt_version)
    near = ", ".join(r.describe_tensorrt() for r in (older, newer) if r is not None)
    unknown = [r.tag for r in unknown_tensorrt_releases()]
    lacks = f"; the table does not know the TensorRT of {', '.join(unknown)}: no source confirms it" if unknown else ""
    return ExportError(
        f"no NGC Triton container in sft-engine's table (up to {NEWEST_TABULATED}) is known to ship TensorRT {tensorrt_version}, "
        f"so no known server would load this plan (nearest: {near or 'none'}{lacks})",
        hint="build inside the PyTorch container a Triton release is built from (sft-engine build --target tensorrt --print-docker "
             "--ngc-release YY.MM prints both commands), or pass --allow-unmatched-tensorrt when you know a container that ships it",
    )


def check_plan_servable(compatibility: dict[str, Any], allow_unmatched: bool) -> None:
    """Refuse (ExportError) a plan whose TensorRT matches no known Triton container, unless allowed.

    Runs before anything is published, so a refused plan never reaches the repository.
    """
    tag = compatibility.get("triton_container_tag")
    if tag is not None:
        row = triton_tag_for_tensorrt(str(compatibility.get("tensorrt"))) if compatibility.get("tensorrt") else None
        if row is not None and not row.verified:
            LOGGER.warning("TensorRT %s matches NGC release %s by an unverified row of sft-engine's table (%s): check it before serving",
                           row.tensorrt, row.tag, row.tensorrt_source)
        return
    problem = unmatched_tensorrt_error(compatibility.get("tensorrt"))
    if not allow_unmatched:
        raise problem
    LOGGER.warning("publishing anyway (--allow-unmatched-tensorrt): %s", problem.message)


def newer_torch_error(torch_version: str) -> ExportError:
    """The one-line refusal of TorchScript saved by a torch newer than every tabulated container's libtorch."""
    newest = [r for r in TRITON_RELEASES if r.torch][-1]
    return ExportError(
        f"torch {torch_version} saved this TorchScript, newer than the libtorch of every NGC Triton container in sft-engine's table "
        f"(newest: {newest.tag} with torch {newest.torch}): libtorch loads TorchScript of the same or an older torch only",
        hint="build inside nvcr.io/nvidia/pytorch:<upstream>-py3 (sft-engine build --target torchscript-gpu --print-docker), "
             "or pass --allow-unmatched-tensorrt when you know a container whose PyTorch is at least this one",
    )


def torchscript_container(torch_version: str) -> dict[str, Any]:
    """The container fields of a ``torchscript-gpu`` manifest: the release whose libtorch loads this torch's TorchScript."""
    row = triton_tag_for_torch(torch_version)
    base = torch_version.split("+")[0]
    if row is None:
        return {"triton_container_tag": None, "triton_container": None,
                "triton_container_note": f"no NGC Triton container in sft-engine's table has a libtorch of torch {base} or newer"}
    return {"triton_container_tag": row.tag, "triton_container": f"nvcr.io/nvidia/tritonserver:{row.tag}-py3",
            "triton_container_note": f"Triton {row.triton} is built from pytorch:{row.upstream}-py3 (torch {row.torch}); "
                                     f"TorchScript of torch {base} loads in a container whose PyTorch is that or newer"}


def check_torchscript_servable(compatibility: dict[str, Any], allow_unmatched: bool) -> None:
    """Refuse (ExportError) TorchScript that no tabulated container's libtorch can load, unless allowed; before publishing."""
    if compatibility.get("triton_container_tag") is not None:
        return
    problem = newer_torch_error(str(compatibility.get("torch")))
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
                f"Triton {release.triton} ships TensorRT {release.tensorrt} (built from pytorch:{release.upstream}-py3)"
                + ("" if release.verified else " (unverified: from the Frameworks Support Matrix; check it)")
                + "; the plan loads only on compute capability " + ", ".join(sorted(plans))
            )
        else:
            out["triton_container_note"] = (
                f"no NGC Triton release in sft-engine's table is known to ship TensorRT {tensorrt_version}: build inside "
                "nvcr.io/nvidia/pytorch:<upstream>-py3 and serve with the nvcr.io/nvidia/tritonserver:<yy.mm>-py3 built from it "
                "(sft-engine build --target tensorrt --print-docker --ngc-release YY.MM)"
            )
    return out
