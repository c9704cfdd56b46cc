"""The torch / torchvision pair: checked before torchvision is imported.

The package's requirements are ranges (so it installs into an NGC PyTorch container and
keeps that container's torch), which lets pip combine a torchvision with a torch it was
not built for. Such a torchvision fails late and obscurely (``operator torchvision::nms
does not exist``, undefined symbols), so the pair is checked from the installed
distributions' metadata, without importing either, and a mismatch is one line naming
both versions.

torchvision's minor follows torch's: torchvision ``0.(m + 15)`` is built for torch
``2.m`` (0.20 ↔ 2.5, 0.23 ↔ 2.8, 0.29 ↔ 2.14; torchvision's README compatibility table).
"""

from __future__ import annotations

import re
from importlib import metadata

from sft_engine.errors import DependencyError

__all__ = ["minor_of", "require_minor", "torchvision_for_torch", "torch_pair_problem", "check_torch_pair"]

#: torchvision minor = torch minor + this, for torch 2.x
_TORCHVISION_MINOR_OFFSET = 15


def minor_of(version: str) -> tuple[int, int] | None:
    """``"2.8.0a0+5228986c39.nv25.06"`` → ``(2, 8)``; None when it is not a version."""
    match = re.match(r"\s*v?(\d+)\.(\d+)", str(version))
    return (int(match.group(1)), int(match.group(2))) if match else None


def require_minor(version: str) -> tuple[int, int]:
    """``minor_of`` for a version that must be one (``"2.13.0.dev20250101"`` → ``(2, 13)``); ValueError otherwise."""
    found = minor_of(version)
    if found is None:
        raise ValueError(f"cannot read a version from {version!r}")
    return found


def torchvision_for_torch(torch_version: str) -> tuple[int, int] | None:
    """The torchvision (major, minor) built for ``torch_version``, or None outside torch 2.x."""
    torch_minor = minor_of(torch_version)
    if torch_minor is None or torch_minor[0] != 2:
        return None
    return 0, torch_minor[1] + _TORCHVISION_MINOR_OFFSET


def torch_pair_problem(torch_version: str | None, torchvision_version: str | None) -> DependencyError | None:
    """The error for a torchvision not built for this torch, or None (also when either is absent)."""
    if not torch_version or not torchvision_version:
        return None
    wanted = torchvision_for_torch(torch_version)
    found = minor_of(torchvision_version)
    if wanted is None or found is None or found == wanted:
        return None
    torch_minor = ".".join(map(str, minor_of(torch_version) or ()))
    want = f"{wanted[0]}.{wanted[1]}"
    return DependencyError(
        f"torchvision {torchvision_version} is not the release built for torch {torch_version} (torch {torch_minor} needs torchvision {want}.x)",
        hint=f"install the matching pair, e.g. pip install 'torchvision=={want}.*' for this torch, or use the exact CPU install of scripts/setup.sh (constraints-cpu.txt)",
    )


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_torch_pair() -> None:
    """Raise DependencyError when the installed torchvision was built for another torch."""
    problem = torch_pair_problem(_installed("torch"), _installed("torchvision"))
    if problem is not None:
        raise problem
