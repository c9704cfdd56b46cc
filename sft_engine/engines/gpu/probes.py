"""Can this host build a GPU target, and what does ``--target auto`` build here?

Pure functions take the probes as arguments (so every combination is testable on any
machine); the ``probe_``/``require_`` ones ask torch and the installed torch_tensorrt.
"""

from __future__ import annotations

import importlib
import logging

from sft_engine.errors import TargetUnavailable

__all__ = ["torch_tensorrt_mismatch", "auto_target", "probe_auto_target", "unavailable_reason", "require_cuda", "require_torch_tensorrt"]

LOGGER = logging.getLogger(__name__)


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
