"""Which host builds a GPU engine, and which NGC Triton container can serve it.

A TensorRT plan loads only in a runtime of the TensorRT version that built it
(server issue 3710: "Version tag does not match") and only on the GPU architecture it
was built for. So every GPU build records a compatibility manifest: TensorRT,
Torch-TensorRT, torch, CUDA, driver, GPU name and compute capability, and the NGC
``tritonserver`` tag whose TensorRT is the one that built the plan (``sft-engine serve
--print-docker`` reads that tag back).

The container table comes from NVIDIA's published release notes; it needs a new row
each month. Sources:

* Triton release notes, table "NVIDIA Triton Inference Server Container Versions":
  https://docs.nvidia.com/deeplearning/triton-inference-server/release-notes/rel-YY-MM.html
* Frameworks Support Matrix (same TensorRT in every NGC framework container of a month):
  https://docs.nvidia.com/deeplearning/frameworks/support-matrix/index.html

Rows checked against a release note's package list in this project are marked
``verified``; the others are transcribed from the support matrix and should be checked
against it before relying on them. When no row matches, the manifest says so and
names the way out: build inside the NGC PyTorch container of the month you serve
with (it ships the same TensorRT as that month's Triton container).
"""

from __future__ import annotations

import ctypes
import importlib
import logging
from dataclasses import dataclass
from typing import Any

from sft_engine.errors import ConfigError, ExportError, TargetUnavailable

__all__ = [
    "TritonRelease",
    "TRITON_RELEASES",
    "triton_tag_for_tensorrt",
    "nearest_releases",
    "unmatched_tensorrt_error",
    "check_plan_servable",
    "GpuInfo",
    "list_gpus",
    "select_gpus",
    "driver_version",
    "unavailable_reason",
    "torch_tensorrt_mismatch",
    "auto_target",
    "probe_auto_target",
    "require_cuda",
    "require_torch_tensorrt",
    "compatibility_manifest",
]

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class TritonRelease:
    """One NGC ``tritonserver:<tag>-py3`` release and the TensorRT it ships.

    ``verified``: the TensorRT version was read from the cited NVIDIA source in this
    project; unverified rows were transcribed and must be checked against the
    Frameworks Support Matrix before relying on them (the manifest note says so).
    """

    tag: str
    triton: str
    tensorrt: str
    verified: bool = False


#: NGC Triton containers (``-py3``) by release, oldest first. Each row cites the Triton
#: release note of its month, ``rel-YY-MM`` = docs.nvidia.com/deeplearning/triton-inference-server/
#: release-notes/rel-YY-MM.html (its container-versions table, and the Frameworks Support
#: Matrix it points to, list the TensorRT). The Triton version of each tag follows
#: TRITON_VERSION_MAP in the server's build.py. There is no 25.07 ``-py3`` release (the
#: release-notes index goes from 25.06 to 25.08). Not a source for this table: the
#: ``trtllm-python-py3`` containers of the server's docs/introduction/compatibility.md,
#: which ship an older TensorRT than the ``-py3`` container of the same month (26.03:
#: 10.14.1.48 against 10.16.0.72).
TRITON_RELEASES: tuple[TritonRelease, ...] = (
    TritonRelease("24.01", "2.42.0", "8.6.1.6"),     # rel-24-01; unverified
    TritonRelease("24.02", "2.43.0", "8.6.3"),       # rel-24-02; unverified
    TritonRelease("24.03", "2.44.0", "8.6.3"),       # rel-24-03; unverified
    TritonRelease("24.04", "2.45.0", "8.6.3"),       # rel-24-04; unverified
    TritonRelease("24.05", "2.46.0", "10.0.1.6", verified=True),  # rel-24-05, package list: TensorRT 10.0.1.6
    TritonRelease("24.06", "2.47.0", "10.1.0.27"),   # rel-24-06; unverified
    TritonRelease("24.07", "2.48.0", "10.2.0.19"),   # rel-24-07; unverified
    TritonRelease("24.08", "2.49.0", "10.3.0.26"),   # rel-24-08; unverified
    TritonRelease("24.09", "2.50.0", "10.4.0.26"),   # rel-24-09; unverified
    TritonRelease("24.10", "2.51.0", "10.5.0.18"),   # rel-24-10; unverified
    TritonRelease("24.11", "2.52.0", "10.6.0.26"),   # rel-24-11; unverified
    TritonRelease("24.12", "2.53.0", "10.7.0.23"),   # rel-24-12; unverified
    TritonRelease("25.01", "2.54.0", "10.8.0.43"),   # rel-25-01; unverified
    TritonRelease("25.02", "2.55.0", "10.8.0.43"),   # rel-25-02; unverified
    TritonRelease("25.03", "2.56.0", "10.9.0.34"),   # rel-25-03; unverified
    TritonRelease("25.04", "2.57.0", "10.9.0.34"),   # rel-25-04; unverified
    TritonRelease("25.05", "2.58.0", "10.10.0.31"),  # rel-25-05; unverified
    TritonRelease("25.06", "2.59.0", "10.11.0.33"),  # rel-25-06; unverified
    TritonRelease("25.08", "2.60.0", "10.13.2.6"),   # rel-25-08 (CUDA 13.0.0); unverified
    TritonRelease("25.09", "2.61.0", "10.13.3.9"),   # rel-25-09; unverified
    TritonRelease("25.10", "2.62.0", "10.13.3.9"),   # rel-25-10 (CUDA 13.0.2); unverified
    TritonRelease("25.11", "2.63.0", "10.14.1.48"),  # rel-25-11; unverified
    TritonRelease("25.12", "2.64.0", "10.14.1.48"),  # rel-25-12 (CUDA 13.1.0); unverified
    TritonRelease("26.01", "2.65.0", "10.14.1.48"),  # rel-26-01; unverified
    TritonRelease("26.02", "2.66.0", "10.15.1.29"),  # rel-26-02; unverified
    TritonRelease("26.03", "2.67.0", "10.16.0.72", verified=True),  # rel-26-03, package list: TensorRT 10.16.0.72
)

#: the table has no row for a release after this one; a newer TensorRT may be served by a
#: container published since (the refusal says so)
NEWEST_TABULATED = TRITON_RELEASES[-1].tag


def _release_key(version: str) -> tuple[int, ...]:
    """TensorRT identity that must match: major.minor.patch (the build number is not compared)."""
    parts = []
    for piece in str(version).split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)


def triton_tag_for_tensorrt(tensorrt_version: str) -> TritonRelease | None:
    """The newest NGC Triton release whose TensorRT matches ``tensorrt_version``, or None."""
    key = _release_key(tensorrt_version)
    matches = [r for r in TRITON_RELEASES if _release_key(r.tensorrt) == key]
    return matches[-1] if matches else None


def nearest_releases(tensorrt_version: str) -> tuple[TritonRelease | None, TritonRelease | None]:
    """The newest release whose TensorRT is older than ``tensorrt_version`` and the oldest newer one."""
    key = _release_key(tensorrt_version)
    older = [r for r in TRITON_RELEASES if _release_key(r.tensorrt) < key]
    newer = [r for r in TRITON_RELEASES if _release_key(r.tensorrt) > key]
    return (older[-1] if older else None), (newer[0] if newer else None)


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


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: str
    memory_gib: float

    @property
    def sm(self) -> str:
        """``"9.0"`` → ``"sm90"`` (file names)."""
        return "sm" + self.compute_capability.replace(".", "")


def list_gpus() -> list[GpuInfo]:
    """The CUDA devices PyTorch sees (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        out.append(GpuInfo(index, props.name, f"{props.major}.{props.minor}", round(props.total_memory / 2**30, 1)))
    return out


def select_gpus(requested: tuple[int, ...], available: list[GpuInfo]) -> list[GpuInfo]:
    """The GPUs to build on: ``--build-gpu`` if given (validated), else every visible one."""
    if not requested:
        return list(available)
    by_index = {g.index: g for g in available}
    missing = [i for i in requested if i not in by_index]
    if missing:
        raise ConfigError(
            f"--build-gpu names GPU {missing[0]} but this host has {len(available)} CUDA device(s)",
            hint=f"use ids between 0 and {len(available) - 1}" if available else "run the build on a GPU host",
        )
    return [by_index[i] for i in dict.fromkeys(requested)]


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


def torch_tensorrt_mismatch(torch_tensorrt_version: str | None, torch_version: str) -> str | None:
    """Why an installed Torch-TensorRT cannot work with this torch, from the versions alone, or None.

    Each Torch-TensorRT 2.m is built against torch 2.m (its pyproject pins one torch minor:
    v2.13.0 needs ``torch>=2.13.0,<2.14.0``); NGC builds (``2.8.0a0``) follow the same rule.
    """
    if not torch_tensorrt_version:
        return None
    from sft_engine.deps import minor_of

    trt_minor, torch_minor = minor_of(torch_tensorrt_version), minor_of(torch_version)
    if trt_minor is None or torch_minor is None or trt_minor == torch_minor:
        return None
    return (f"torch_tensorrt {torch_tensorrt_version} is built for torch {trt_minor[0]}.{trt_minor[1]}, "
            f"not the installed torch {torch_version}")


def _torch_tensorrt_problem() -> str | None:
    """None when torch_tensorrt imports and fits this torch, else what is wrong, in a few words."""
    from importlib import metadata

    import torch

    try:
        installed = metadata.version("torch_tensorrt")
    except metadata.PackageNotFoundError:
        installed = None
    mismatch = torch_tensorrt_mismatch(installed, torch.__version__)
    if mismatch:  # importing it may crash the process or leave torch half-registered: do not try
        return mismatch
    try:
        importlib.import_module("torch_tensorrt")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "torch_tensorrt":
            return "torch_tensorrt is not installed"
        return f"torch_tensorrt cannot be imported ({exc})"
    except Exception as exc:  # a wheel built for another torch fails with OSError/ImportError/RuntimeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"torch_tensorrt cannot be imported ({first[:160]})"
    return None


def auto_target(cuda: bool, torch_tensorrt_problem: str | None) -> tuple[str, str]:
    """What ``--target auto`` builds on a host, and why (pure: the probes are arguments).

    ``tensorrt`` with CUDA and a working torch_tensorrt; ``torchscript-gpu`` with CUDA
    alone (FP16 on the GPU needs no TensorRT); ``cpu`` without CUDA.
    """
    if cuda and torch_tensorrt_problem is None:
        return "tensorrt", "CUDA and torch_tensorrt are available"
    if cuda:
        return "torchscript-gpu", f"CUDA is available but {torch_tensorrt_problem}"
    return "cpu", "PyTorch sees no CUDA device"


def probe_auto_target() -> tuple[str, str]:
    """``auto_target`` for this host: CUDA through torch, torch_tensorrt by importing it.

    torch_tensorrt is probed only where CUDA exists (without CUDA the answer is ``cpu``
    whatever it is).
    """
    import torch

    cuda = torch.cuda.is_available()
    return auto_target(cuda, _torch_tensorrt_problem() if cuda else None)


def unavailable_reason(target: str, cuda: bool, torch_tensorrt_problem: str | None = None, needs_torch_tensorrt: bool = False) -> TargetUnavailable | None:
    """The one-line error for a GPU target this host cannot build, or None when it can.

    Pure (the probes are arguments) so every combination is testable on any machine.
    """
    needs, found = [], []
    if not cuda:
        needs.append("a CUDA GPU")
        found.append("PyTorch sees no CUDA device")
    if needs_torch_tensorrt and torch_tensorrt_problem:
        needs.append("torch_tensorrt")
        found.append(torch_tensorrt_problem)
    if not needs:
        return None
    if cuda:  # only torch_tensorrt is missing: the GPU still serves FP16 TorchScript
        import torch

        minor = ".".join(torch.__version__.split("+")[0].split(".")[:2])
        hint = f"use --target torchscript-gpu for FP16 TorchScript without TensorRT, or install the torch-tensorrt release built for torch {minor}"
    else:
        hint = "use --target onnx for the NGC container on CPU or GPU hosts, or --target cpu to serve it here"
    return TargetUnavailable(f"target {target} needs {' and '.join(needs)}: {', and '.join(found)}", hint=hint)


def require_cuda(target: str) -> None:
    import torch

    problem = unavailable_reason(target, cuda=torch.cuda.is_available())
    if problem:
        raise problem


def require_torch_tensorrt(target: str = "tensorrt") -> None:
    """Raise TargetUnavailable unless CUDA and an importable torch_tensorrt are both here."""
    import torch

    cuda = torch.cuda.is_available()
    problem = unavailable_reason(target, cuda=cuda, torch_tensorrt_problem=_torch_tensorrt_problem(), needs_torch_tensorrt=True)
    if problem:
        raise problem


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
