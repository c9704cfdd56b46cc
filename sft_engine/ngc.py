"""Everything about the NGC containers: which ``tritonserver`` tag serves a repository, and the ``docker`` commands.

Build in the PyTorch container a Triton release is built from, serve with that release.

A TensorRT plan loads only in the TensorRT that built it, and libtorch loads TorchScript
of the same or an older torch. A ``tritonserver:<tag>-py3`` image takes both from its
upstream container ``pytorch:<upstream>-py3`` (server ``build.py``; ``triton.releases``
has the column), which is usually of the same number but not always (26.05 is built
from 26.04, 26.06 from 26.05), so ``sft-engine build --target tensorrt --print-docker
--ngc-release 26.05`` builds in ``pytorch:26.04-py3`` and serves with
``tritonserver:26.05-py3``: the plan loads by construction. It needs neither CUDA nor
docker on the machine that prints them.

The build command installs sft-engine into the PyTorch container without replacing the
container's torch, torchvision, Torch-TensorRT, TensorRT or numpy: their installed
versions become a pip constraints file, so pip keeps them or fails naming the conflict.
Input paths are mounted read-only at the same absolute paths, the repository read-write,
so the ``sft-engine build`` inside is the one given, minus ``--print-docker``.

Serving: ``container_tag`` picks the tag a repository's GPU builds recorded (their
TensorRT must match the container's), ``docker_command`` the ``docker run`` of that
container, and ``docker_commands`` precedes it with an image build: the stock container
has no Pillow (server issue 6621), which the image models (``<name>_preprocess``'s
``model.py`` is ``pixels.py``) import, so every printed serve command brings it.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from sft_engine.errors import ConfigError
from sft_engine.triton.releases import DEFAULT_RELEASE, TritonRelease, release, unknown_tensorrt_releases

__all__ = ["NgcCommands", "KEEP_PACKAGES", "DEFAULT_TRITON_TAG", "NGC_TRITON_IMAGE", "IMAGE_MODEL_REQUIREMENTS", "STOCK_MODULES",
           "release_for", "build_container", "ngc_commands", "source_root", "current_uid_gid", "container_tag", "docker_command",
           "image_models_dockerfile", "docker_commands"]

#: what the PyTorch container brings and pip must not replace
KEEP_PACKAGES = ("torch", "torchvision", "torch[-_]tensorrt", "tensorrt", "numpy")
#: NGC container whose Triton matches the embedded server (2.51 = 24.10).
DEFAULT_TRITON_TAG = "24.10"
NGC_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver"
NGC_PYTORCH_IMAGE = "nvcr.io/nvidia/pytorch"
#: what the image models import beyond the stock container (pip names; the range of pyproject's dependency)
IMAGE_MODEL_REQUIREMENTS = ("pillow>=10",)
#: modules the stock tritonserver image provides to Python models: its build.py installs numpy<2,
#: and the Python backend brings its utilities
STOCK_MODULES = ("numpy", "triton_python_backend_utils")
_TAG = re.compile(r"^\d{2}\.\d{2}$")


@dataclass(frozen=True)
class NgcCommands:
    release: str
    build: str
    serve: str
    notes: list[str] = field(default_factory=list)


def release_for(tag: str | None) -> tuple[str, TritonRelease | None]:
    """``YY.MM`` (``DEFAULT_RELEASE``, the newest with a confirmed TensorRT, by default) and its table row, None if untabulated."""
    if tag is None:
        return DEFAULT_RELEASE, release(DEFAULT_RELEASE)
    if not _TAG.match(tag):
        raise ConfigError(f"NGC release {tag!r} is not of the form YY.MM", hint=f"e.g. --ngc-release {DEFAULT_RELEASE}")
    return tag, release(tag)


def build_container(tag: str, row: TritonRelease | None) -> str:
    """The PyTorch container to build for ``tritonserver:<tag>-py3``: its upstream container, not the equal number."""
    return f"{NGC_PYTORCH_IMAGE}:{row.upstream if row is not None else tag}-py3"


def _quantized_refusal(release: str, row: TritonRelease | None, precision: str | None) -> None:
    """INT8 / FP8 need ModelOpt's Q/DQ ONNX at opset 19 (0.42 on; FP8 with FP16 21 before), which TensorRT 8.6 was not checked to parse."""
    if precision not in ("int8", "fp8") or row is None or row.tensorrt is None or int(row.tensorrt.split(".")[0]) >= 10:
        return
    raise ConfigError(f"--precision {precision} is not built for NGC release {release}: its TensorRT {row.tensorrt} parser is not known "
                      "to take the opset 19 Q/DQ ONNX that ModelOpt writes",
                      hint="use --ngc-release 24.05 or later (TensorRT 10), or --precision fp16 with this release")


def source_root() -> Path | None:
    """The checkout this sft-engine runs from (it has a pyproject.toml), or None for an installed wheel."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "sft_engine").is_dir() else None


def _mount_dir(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def ngc_commands(target: str, build_args: list[str], inputs: list[Path], repository: Path, tag: str | None = None,
                 source: Path | None = None, uid_gid: tuple[int, int] | None = None, precision: str | None = None) -> NgcCommands:
    """The build and serve commands of one NGC release: build in its upstream PyTorch container, serve with it.

    ``build_args``: the ``sft-engine build`` arguments to run inside (absolute paths);
    ``inputs``: files or folders the build reads (mounted read-only); ``repository``: the
    model repository (mounted read-write, then handed back to ``uid_gid``).
    """
    from sft_engine.engines.registry import TARGETS  # torch and the targets: only when a build command is wanted

    tied = [t.name for t in TARGETS.values() if t.ngc_container]  # the engine is tied to the container's TensorRT or libtorch
    if target not in tied:
        raise ConfigError(f"--print-docker builds in an NGC container for --target {' or '.join(tied)}, not {target}",
                          hint="pass --target tensorrt (or torchscript-gpu)")
    release, row = release_for(tag)
    _quantized_refusal(release, row, precision)
    notes: list[str] = []
    args = list(build_args)
    unmatched = None
    if row is None:
        unmatched = (f"release {release} is not in sft-engine's container table, so the build inside would refuse its engine: "
                     f"the command builds in pytorch:{release}-py3 (the upstream container of most releases is of the same number; "
                     "check the server's build.py) and passes --allow-unmatched-tensorrt")
    elif target == "tensorrt" and row.tensorrt is None:
        unmatched = (f"no source gives the TensorRT of release {release} ({', '.join(r.tag for r in unknown_tensorrt_releases())} are "
                     f"unknown to sft-engine's table), so the build inside would refuse its plan: the command passes "
                     f"--allow-unmatched-tensorrt; the plan still loads by construction (tritonserver:{release} is built from "
                     f"pytorch:{row.upstream})")
    elif target == "tensorrt" and not row.verified:
        notes.append(f"release {release}: TensorRT {row.tensorrt} per sft-engine's table (unverified; the match holds because "
                     f"tritonserver:{release} is built from pytorch:{row.upstream})")
    if unmatched is not None:
        notes.append(unmatched)
        if "--allow-unmatched-tensorrt" not in args:
            args.append("--allow-unmatched-tensorrt")
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
        build_container(release, row), "bash", "-c", shlex.quote("; ".join(steps[:1]) + "; " + " && ".join(steps[1:])),
    ])
    return NgcCommands(release, build, docker_commands(repository, tag=release), notes)


def current_uid_gid() -> tuple[int, int] | None:
    """The caller's uid/gid, so files the container writes as root are handed back (None where unsupported)."""
    return (os.getuid(), os.getgid()) if hasattr(os, "getuid") else None


def _has_gpu_engines(repository: Path) -> bool:
    return any(repository.glob("*/*/model.plan")) or any(repository.glob("*/*/model.pt"))


def _tag_from_manifests(repository: Path) -> str | None:
    """The NGC tag a GPU build recorded (its TensorRT must match the container's)."""
    from sft_engine.repository.manifest import MANIFEST_NAME, find_manifest

    tags = set()
    for path in repository.glob(f"*/*/{MANIFEST_NAME}"):
        manifest = find_manifest(path.parent)
        if manifest is not None and manifest.triton_container_tag:
            tags.add(manifest.triton_container_tag)
    return sorted(tags)[-1] if tags else None


def container_tag(repository: Path, given: str | None = None) -> tuple[str, str | None]:
    """The NGC container tag to serve ``repository`` in, and a warning when it is a guess.

    ``given`` wins; else the newest tag a build manifest recorded; else the default,
    with a warning when GPU engines are present (their TensorRT may not match it).
    """
    repository = Path(repository)
    tag = given or _tag_from_manifests(repository)
    if tag is not None:
        return tag, None
    warning = None
    if _has_gpu_engines(repository):
        warning = (f"no build manifest names an NGC container whose TensorRT matches; using {DEFAULT_TRITON_TAG} "
                   "(pass --triton-tag; see docs/gpu.md)")
    return DEFAULT_TRITON_TAG, warning


def docker_command(repository: Path, tag: str = DEFAULT_TRITON_TAG, gpus: bool = True, image: str | None = None) -> str:
    """The equivalent ``docker run`` of the NGC Triton container (or ``image`` built on it) for a GPU host."""
    repo = Path(repository).resolve()
    parts = ["docker", "run", "--rm"]
    if gpus:
        parts += ["--gpus=all"]
    parts += [
        "--shm-size=1g", "-p", "127.0.0.1:8000:8000", "-p", "127.0.0.1:8001:8001", "-p", "127.0.0.1:8002:8002",
        "-v", f"{repo}:/models:ro",
        image or f"{NGC_TRITON_IMAGE}:{tag}-py3",
        "tritonserver", "--model-repository=/models",
    ]
    return " ".join(shlex.quote(p) for p in parts)


def image_models_dockerfile(tag: str) -> str:
    """The stock container plus what the image models import (Pillow), for a repository that recorded no versions yet."""
    reqs = " ".join(f'"{r}"' for r in IMAGE_MODEL_REQUIREMENTS)
    return (f"# Triton {tag} with Pillow, which the <name>_preprocess models decode with (the stock image has none).\n"
            f"FROM {NGC_TRITON_IMAGE}:{tag}-py3\n"
            f"RUN python3 -m pip install --no-cache-dir {reqs}\n")


def docker_commands(repository: Path, tag: str, gpus: bool = True, dockerfile: str | None = None) -> str:
    """``--print-docker``'s serve lines: an image built from a Dockerfile on stdin (no files needed), then its ``docker run``.

    The stock container has no Pillow (the preprocessing model's decoder) and no CPU
    engine runtimes: ``dockerfile`` adds what the repository's Python-backend models
    recorded; without one (nothing built yet, or no versions recorded), Pillow at
    ``IMAGE_MODEL_REQUIREMENTS``.
    """
    dockerfile = dockerfile if dockerfile is not None else image_models_dockerfile(tag)
    image = f"sft-engine-triton:{tag}"  # the image `deploy` builds under its default --name: one name for one image
    build = f"docker build -t {image} - <<'EOF'\n{dockerfile}EOF"
    return build + "\n" + docker_command(Path(repository), tag=tag, gpus=gpus, image=image)
