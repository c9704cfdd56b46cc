"""``build_manifest.json``: what went into a version and what came out, with hashes.

Enough to answer later "which weights, which tools, which parity figures produced
this engine?" and to detect a modified file (sha256 of every output).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sft_engine.models.checkpoint import sha256_file

__all__ = ["MANIFEST_NAME", "MANIFEST_FORMAT", "tool_versions", "write_manifest", "read_manifest"]

MANIFEST_NAME = "build_manifest.json"
MANIFEST_FORMAT = "sft-engine/build-manifest@1"
_PACKAGES = ("sft-engine", "torch", "torchvision", "onnx", "onnxruntime", "openvino", "torch-tensorrt", "tensorrt", "tritonclient", "nvidia-pytriton", "numpy", "protobuf")


def tool_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def write_manifest(version_dir: Path, body: dict[str, Any]) -> Path:
    """Write the manifest, adding sha256 of every file already in ``version_dir``."""
    outputs = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(version_dir.iterdir()) if p.is_file()}
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **body,
        "outputs": outputs,
        "tools": tool_versions(),
        "host": {"machine": platform.machine(), "system": platform.system(), "cpu_count": os.cpu_count(), "python_executable": Path(sys.executable).name},
    }
    path = version_dir / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
    return path


def read_manifest(version_dir: Path) -> dict[str, Any]:
    return json.loads((Path(version_dir) / MANIFEST_NAME).read_text())
