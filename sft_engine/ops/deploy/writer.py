"""``sft-engine deploy``: write what a cluster or a compose host needs to serve a model repository.

The repository is scanned and checked first (``spec``: which models, engines,
instance groups, which Python packages and GPUs they need), then rendered by ``k8s``
or ``compose``, then written here - all files or a one-line error, never a guess left
for pod start.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from sft_engine.errors import ConfigError
from sft_engine.ops.deploy import compose, k8s
from sft_engine.ops.deploy.spec import DeployOptions, DeployedRepository, check_gpus, dockerfile, image_for, scan_repository
from sft_engine.triton.security import ensure_admin_key_file

#: files that hold the admin key: written mode 0600
PRIVATE_FILES = ("admin-key-secret.yaml", "admin-key.env")

__all__ = ["deploy_k8s", "deploy_compose", "write_files"]


def write_files(output: Path, files: dict[str, str]) -> list[Path]:
    """Write ``files`` into ``output`` (created); existing files of the same names are replaced."""
    output = Path(output)
    try:
        output.mkdir(parents=True, exist_ok=True)
        written = []
        for name, text in files.items():
            path = output / name
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if name in PRIVATE_FILES else 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
            written.append(path)
    except OSError as exc:
        raise ConfigError(f"cannot write into {output}: {exc.strerror or exc}", hint="choose a writable --output directory") from None
    return written


def _resolve_admin_key(options: DeployOptions) -> None:
    """Explicit model control gets an admin key always: the cluster network is never only the operator's."""
    if options.model_control_mode == "none" or options.admin_key:
        return
    path = options.admin_key_file or Path(options.output) / "admin-key"
    options.admin_key, _ = ensure_admin_key_file(path)
    options.admin_key_file = path


def deploy_k8s(options: DeployOptions) -> tuple[DeployedRepository, list[Path]]:
    """Write the Kubernetes manifests; returns what was found and the files written."""
    return _deploy(options, lambda info, image, built: k8s.render(info, options, image))


def deploy_compose(options: DeployOptions) -> tuple[DeployedRepository, list[Path]]:
    """Write docker-compose.yml and prometheus.yml; returns what was found and the files written."""
    return _deploy(options, lambda info, image, built: compose.render(info, options, image, build=built))


def _deploy(options: DeployOptions, render: Callable[[DeployedRepository, str, bool], dict[str, str]]) -> tuple[DeployedRepository, list[Path]]:
    """The steps every deployment shares: check, scan, key, image; ``render`` writes the kind's own files."""
    options.validate()
    info = scan_repository(options.repository)
    check_gpus(info, options.gpus)
    _resolve_admin_key(options)
    image, built = image_for(info, options)
    files = render(info, image, built)
    if built:
        files["Dockerfile"] = dockerfile(info, options.triton_tag or info.triton_tag)
    return info, write_files(options.output, files)
