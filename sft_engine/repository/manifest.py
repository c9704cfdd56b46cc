"""``build_manifest.json``: what went into a version and what came out, with hashes.

Enough to answer later "which weights, which tools, which parity figures produced
this engine?" and to detect a modified file (sha256 of every output). ``BuildManifest``
is the one typed form of it: the build writes one (``write_manifest``), and every part
that reads a version back (the rollout check, ``tune``, ``deploy``, ``serve
--print-docker``) reads it with ``read_manifest`` or ``find_manifest``, never by digging
through the JSON. Manifests written before the format was versioned (no ``format``
key), or by hand with only some keys, read as version 0 with the missing parts empty.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import re
import sys
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from sft_engine.errors import RepositoryError
from sft_engine.models.checkpoint import sha256_file

__all__ = ["MANIFEST_NAME", "MANIFEST_FORMAT", "FORMAT_VERSION", "BuildManifest", "tool_versions", "write_manifest",
           "read_manifest", "find_manifest"]

LOGGER = logging.getLogger(__name__)

MANIFEST_NAME = "build_manifest.json"
#: the format this version of sft-engine writes; it reads this one and every older one
FORMAT_VERSION = 1
MANIFEST_FORMAT = f"sft-engine/build-manifest@{FORMAT_VERSION}"
_FORMAT = re.compile(r"^sft-engine/build-manifest@(\d+)$")
_PACKAGES = ("sft-engine", "torch", "torchvision", "onnx", "onnxruntime", "openvino", "nncf", "torch-tensorrt", "nvidia-modelopt", "tensorrt", "tritonclient", "nvidia-pytriton", "numpy", "protobuf", "pillow")


def tool_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


@dataclass
class BuildManifest:
    """One version's build record. ``to_dict`` gives the JSON keys in the order they are written.

    ``settings`` is the build's ``BuildConfig.describe()``; ``engine_details`` what the
    target's exporter and the gates recorded (precision, tolerance, FP16 checks, ...);
    ``candidates`` the figures of every engine × precision a selecting target tried.
    ``outputs``, ``tools``, ``host`` and ``created`` are filled in by ``write_manifest``.
    """

    model: str | None = None
    version: int | None = None
    target: str | None = None
    engine: str | None = None
    arch: str | None = None
    num_classes: int | None = None
    preprocessing: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] | None = None
    engine_details: dict[str, Any] = field(default_factory=dict)
    compatibility: dict[str, Any] | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    config_pbtxt_sha256: str | None = None
    #: set on versions ``sft-engine tune`` published (the tuned settings and the version they came from)
    tuned: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION
    created: str | None = None
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    tools: dict[str, str | None] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)
    #: keys this version of sft-engine does not know, kept so a rewrite loses nothing
    extra: dict[str, Any] = field(default_factory=dict)

    # -- conversion --------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = MANIFEST_NAME) -> "BuildManifest":
        """Read any format up to ``FORMAT_VERSION``; a newer one is refused (its meaning may have changed)."""
        if not isinstance(data, Mapping):
            raise RepositoryError(f"{source} is not a JSON object", hint="rebuild that version")
        fmt = data.get("format")
        version = 0
        if fmt is not None:
            match = _FORMAT.match(str(fmt))
            if not match:
                raise RepositoryError(f"{source} has format {fmt!r}, not a build manifest", hint="rebuild that version")
            version = int(match.group(1))
            if version > FORMAT_VERSION:
                raise RepositoryError(f"{source} is build-manifest format {version}, newer than this sft-engine reads ({FORMAT_VERSION})",
                                      hint="upgrade sft-engine")
        known = {f.name for f in fields(cls)} - {"format_version", "extra"}
        values: dict[str, Any] = {k: data[k] for k in known if k in data and data[k] is not None}
        for key in ("preprocessing", "inputs", "settings", "engine_details", "outputs", "tools", "host"):
            if key in values:
                values[key] = _dict(values[key])
        if "candidates" in values:
            values["candidates"] = [dict(c) for c in values["candidates"] if isinstance(c, Mapping)]
        extra = {k: v for k, v in data.items() if k not in known and k != "format"}
        return cls(**values, format_version=version, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, always in the current format."""
        out: dict[str, Any] = {"format": MANIFEST_FORMAT, "created": self.created}
        for key in ("model", "version", "target", "engine", "arch", "num_classes", "preprocessing", "inputs", "settings",
                    "parity", "engine_details", "compatibility", "candidates", "config_pbtxt_sha256"):
            out[key] = getattr(self, key)
        if self.tuned is not None:
            out["tuned"] = self.tuned
        out.update(self.extra)
        out.update({"outputs": self.outputs, "tools": self.tools, "host": self.host})
        return out

    # -- what readers ask --------------------------------------------------------------
    def setting(self, key: str, default: Any = None) -> Any:
        """One build setting as recorded (``BuildConfig`` field name), ``default`` when absent or null."""
        value = self.settings.get(key)
        return default if value is None else value

    @property
    def weights_sha256(self) -> str | None:
        """The sha256 of the weights the version was built from (None for random or pretrained weights)."""
        weights = self.inputs.get("weights")
        return weights.get("sha256") if isinstance(weights, Mapping) else None

    @property
    def triton_container_tag(self) -> str | None:
        """The NGC Triton tag a GPU build recorded (its TensorRT must match the container's)."""
        tag = (self.compatibility or {}).get("triton_container_tag")
        return str(tag) if tag else None

    @property
    def parity_tolerance(self) -> dict[str, Any] | None:
        """The tolerance the build's gate judged the engine by, as recorded with its parity report."""
        recorded = (self.parity or {}).get("tolerance")
        return dict(recorded) if isinstance(recorded, Mapping) else None


def write_manifest(version_dir: Path, manifest: BuildManifest) -> Path:
    """Write ``manifest`` into ``version_dir``, adding sha256 of every file already there, the tools and the host."""
    version_dir = Path(version_dir)
    manifest.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest.outputs = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                        for p in sorted(version_dir.iterdir()) if p.is_file() and p.name != MANIFEST_NAME}  # a rewrite never records itself
    manifest.tools = tool_versions()
    manifest.host = {"machine": platform.machine(), "system": platform.system(), "cpu_count": os.cpu_count(), "python_executable": Path(sys.executable).name}
    manifest.format_version = FORMAT_VERSION
    path = version_dir / MANIFEST_NAME
    path.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=False, default=str) + "\n")
    return path


def read_manifest(version_dir: Path) -> BuildManifest:
    """The manifest of a version; RepositoryError naming the file when it is missing or unreadable."""
    path = Path(version_dir) / MANIFEST_NAME
    if not path.is_file():
        raise RepositoryError(f"{path} does not exist", hint="the version was not built by sft-engine; rebuild it")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RepositoryError(f"{path} cannot be read: {exc}", hint="rebuild that version") from None
    return BuildManifest.from_dict(data, source=str(path))


def find_manifest(version_dir: Path) -> BuildManifest | None:
    """The manifest of a version, or None when it has none (a version sft-engine did not build) or it is unreadable (logged)."""
    if not (Path(version_dir) / MANIFEST_NAME).is_file():
        return None
    try:
        return read_manifest(version_dir)
    except RepositoryError as exc:
        LOGGER.warning("%s; treating the version as one without a manifest", exc.message)
        return None
