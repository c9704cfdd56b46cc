"""One NGC release for both containers: build inside ``pytorch:YY.MM``, serve with ``tritonserver:YY.MM``.

A TensorRT plan loads only in the TensorRT that built it. NVIDIA's monthly containers of
one release number ship the same TensorRT (and the same libtorch) in
``nvcr.io/nvidia/pytorch:YY.MM-py3`` and ``nvcr.io/nvidia/tritonserver:YY.MM-py3``, so a
plan built in the first loads in the second by construction. ``sft-engine build --target
tensorrt --print-docker`` prints the two ``docker run`` commands of one release; it needs
neither CUDA nor docker on the machine that prints them.

The build command installs sft-engine into the PyTorch container without replacing the
container's torch, torchvision, Torch-TensorRT, TensorRT or numpy: their installed
versions become a pip constraints file, so pip keeps them or fails naming the conflict.
Input paths are mounted read-only at the same absolute paths, the repository read-write,
so the ``sft-engine build`` inside is the one given, minus ``--print-docker``.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from sft_engine.engines.compat import TRITON_RELEASES, TritonRelease
from sft_engine.errors import ConfigError

__all__ = ["NgcCommands", "KEEP_PACKAGES", "release_for", "ngc_commands", "source_root"]

#: what the PyTorch container brings and pip must not replace
KEEP_PACKAGES = ("torch", "torchvision", "torch[-_]tensorrt", "tensorrt", "numpy")
#: targets whose engine is tied to the container's TensorRT (plan) or libtorch (TorchScript)
TARGETS = ("tensorrt", "torchscript-gpu")
_TAG = re.compile(r"^\d{2}\.\d{2}$")


@dataclass(frozen=True)
class NgcCommands:
    release: str
    build: str
    serve: str
    notes: list[str] = field(default_factory=list)


def release_for(tag: str | None) -> tuple[str, TritonRelease | None]:
    """``YY.MM`` (the newest tabulated release by default) and its table row, None if untabulated."""
    if tag is None:
        newest = TRITON_RELEASES[-1]
        return newest.tag, newest
    if not _TAG.match(tag):
        raise ConfigError(f"NGC release {tag!r} is not of the form YY.MM", hint="e.g. --ngc-release 26.03")
    return tag, next((r for r in TRITON_RELEASES if r.tag == tag), None)


def source_root() -> Path | None:
    """The checkout this sft-engine runs from (it has a pyproject.toml), or None for an installed wheel."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "sft_engine").is_dir() else None


def _mount_dir(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def ngc_commands(target: str, build_args: list[str], inputs: list[Path], repository: Path, tag: str | None = None,
                 source: Path | None = None, uid_gid: tuple[int, int] | None = None) -> NgcCommands:
    """The build and serve commands of one NGC release.

    ``build_args``: the ``sft-engine build`` arguments to run inside (absolute paths);
    ``inputs``: files or folders the build reads (mounted read-only); ``repository``: the
    model repository (mounted read-write, then handed back to ``uid_gid``).
    """
    if target not in TARGETS:
        raise ConfigError(f"--print-docker builds in an NGC container for --target {' or '.join(TARGETS)}, not {target}",
                          hint="pass --target tensorrt (or torchscript-gpu)")
    release, row = release_for(tag)
    notes: list[str] = []
    args = list(build_args)
    if target == "tensorrt" and row is None:
        notes.append(f"release {release} is not in sft-engine's container table, so the build inside would refuse its plan: "
                     "the command passes --allow-unmatched-tensorrt (the serve container is of the same release)")
        if "--allow-unmatched-tensorrt" not in args:
            args.append("--allow-unmatched-tensorrt")
    elif row is not None and not row.verified:
        notes.append(f"release {release}: TensorRT {row.tensorrt} per sft-engine's table (unverified; the match holds by release number)")
    repository = repository.resolve()
    volumes: list[str] = []
    if source is not None:
        volumes += ["-v", f"{source}:/opt/sft-engine-src:ro"]
    for path in dict.fromkeys(_mount_dir(p.resolve()) for p in inputs):
        volumes += ["-v", f"{path}:{path}:ro"]
    volumes += ["-v", f"{repository}:{repository}"]
    keep = "|".join(KEEP_PACKAGES)
    extra = "[tensorrt]" if target == "tensorrt" else ""
    if source is not None:
        install = ("mkdir -p /tmp/sft-engine && cp -r /opt/sft-engine-src/pyproject.toml /opt/sft-engine-src/README.md "
                   "/opt/sft-engine-src/sft_engine /tmp/sft-engine/ && "
                   f"python -m pip install --quiet --no-cache-dir -c /tmp/ngc-keep.txt '/tmp/sft-engine{extra}'")
    else:
        from sft_engine import __version__

        install = f"python -m pip install --quiet --no-cache-dir -c /tmp/ngc-keep.txt 'sft-engine{extra}=={__version__}'"
    steps = [
        "set -e",
        f"python -m pip list --format=freeze | grep -iE '^({keep})==' > /tmp/ngc-keep.txt",
        install,
        " ".join(shlex.quote(a) for a in ["sft-engine", "build", *args]),
    ]
    if uid_gid is not None:
        steps.append(f"chown -R {uid_gid[0]}:{uid_gid[1]} {shlex.quote(str(repository))}")
    build = " ".join([
        "docker", "run", "--rm", "--gpus=all", "--shm-size=1g", *(shlex.quote(v) for v in volumes),
        f"nvcr.io/nvidia/pytorch:{release}-py3", "bash", "-c", shlex.quote("; ".join(steps[:1]) + "; " + " && ".join(steps[1:])),
    ])
    from sft_engine.server import docker_command

    return NgcCommands(release, build, docker_command(repository, tag=release), notes)


def current_uid_gid() -> tuple[int, int] | None:
    """The caller's uid/gid, so files the container writes as root are handed back (None where unsupported)."""
    return (os.getuid(), os.getgid()) if hasattr(os, "getuid") else None
