"""Atomic, additive publishing into a Triton model repository.

Each build adds version N+1 of a model. Everything is written into a staging
directory beside the repository (same filesystem, outside Triton's view) and renamed
into place, so a failed or killed build leaves the repository exactly as it was, and
an existing version directory is never touched. Builds of the same repository are
serialized with a lock so two of them cannot claim the same version number.

Layout::

    <repository>/<model>/config.pbtxt      model-level Triton config (replaced atomically)
    <repository>/<model>/labels.txt        classification labels (label_filename)
    <repository>/<model>/<N>/...           engine, model.py, engine.json, build_manifest.json

A new version must keep the model's interface (backend/platform, tensors, labels): a
model whose interface changes is a new model, and the error says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sft_engine.errors import RepositoryError
from sft_engine.repository.config import parse_pbtxt, validate

__all__ = ["PublishedVersion", "publish", "list_versions", "staging_root"]

LOGGER = logging.getLogger(__name__)
_STALE_S = 24 * 3600


@dataclass(frozen=True)
class PublishedVersion:
    repository: Path
    name: str
    version: int

    @property
    def model_dir(self) -> Path:
        return self.repository / self.name

    @property
    def path(self) -> Path:
        return self.model_dir / str(self.version)


def list_versions(model_dir: Path) -> list[int]:
    """Version numbers present in a model directory, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def staging_root(repository: Path) -> Path:
    """Where builds stage their output: beside the repository, never inside it."""
    repository = repository.resolve()
    return repository.parent / f".{repository.name}.sft-staging"


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            _clean_stale(root)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _clean_stale(root: Path) -> None:
    """Remove staging directories that killed builds left behind (we hold the lock)."""
    now = time.time()
    for entry in root.iterdir():
        if entry.is_dir() and entry.name.startswith("build-") and now - entry.stat().st_mtime > 60:
            shutil.rmtree(entry, ignore_errors=True)


def _interface(cfg: Any) -> tuple[Any, ...]:
    return (
        cfg.backend, cfg.platform,
        tuple((t.name, t.data_type, tuple(t.dims)) for t in cfg.input),
        tuple((t.name, t.data_type, tuple(t.dims), t.label_filename) for t in cfg.output),
    )


def _check_compatible(model_dir: Path, config_text: str, labels_text: str) -> bool:
    """True when the model-level config changes; raises when the interface would."""
    current_text = (model_dir / "config.pbtxt").read_text() if (model_dir / "config.pbtxt").is_file() else None
    if current_text is None:
        raise RepositoryError(f"model directory {model_dir} exists but has no config.pbtxt", hint="remove it or choose another --name")
    current = parse_pbtxt(current_text, f"{model_dir.name}/config.pbtxt")
    new = parse_pbtxt(config_text)
    if _interface(current) != _interface(new):
        raise RepositoryError(
            f"model {model_dir.name!r} already exists with another interface (backend, tensors or shapes differ)",
            hint="publish it under a new --name; versions of one model must be interchangeable",
        )
    labels_path = model_dir / "labels.txt"
    if labels_path.is_file() and labels_path.read_text() != labels_text:
        raise RepositoryError(f"model {model_dir.name!r} already exists with other labels", hint="publish it under a new --name")
    return current_text != config_text


def publish(
    repository: Path,
    name: str,
    config_text: str,
    labels: list[str],
    files: dict[str, Path],
    manifest_writer: Any,
) -> PublishedVersion:
    """Add the next version of ``name`` to ``repository`` atomically.

    ``files`` maps names inside the version directory to existing files (copied).
    ``manifest_writer(version_dir, version) -> None`` writes the manifest into the
    staged version directory before it becomes visible.
    """
    repository = Path(repository)
    validate(parse_pbtxt(config_text))
    if repository.exists() and not repository.is_dir():
        raise RepositoryError(f"repository {repository} is not a directory", hint="pass --repository DIR")
    labels_text = "".join(f"{label}\n" for label in labels)
    root = staging_root(repository)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RepositoryError(f"cannot create the staging directory beside {repository}: {exc}", hint="make the repository's parent directory writable") from None
    with _locked(root):
        repository.mkdir(parents=True, exist_ok=True)
        model_dir = repository / name
        versions = list_versions(model_dir)
        exists = model_dir.exists()
        config_changed = _check_compatible(model_dir, config_text, labels_text) if exists else True
        version = (versions[-1] + 1) if versions else 1
        stage = Path(tempfile.mkdtemp(prefix="build-", dir=root))
        try:
            staged_model = stage / name
            staged_version = staged_model / str(version)
            staged_version.mkdir(parents=True)
            for target_name, source in files.items():
                shutil.copyfile(source, staged_version / target_name)
            manifest_writer(staged_version, version)
            (staged_model / "config.pbtxt").write_text(config_text)
            (staged_model / "labels.txt").write_text(labels_text)
            _fsync_tree(staged_model)
            if not exists:
                os.rename(staged_model, model_dir)
            else:
                os.rename(staged_version, model_dir / str(version))
                if config_changed:
                    os.replace(staged_model / "config.pbtxt", model_dir / "config.pbtxt")
                if not (model_dir / "labels.txt").exists():
                    os.replace(staged_model / "labels.txt", model_dir / "labels.txt")
        except OSError as exc:
            raise RepositoryError(f"cannot write into repository {repository}: {exc}", hint="check free space and permissions; the repository is unchanged") from None
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    LOGGER.info("published %s version %d into %s", name, version, repository)
    return PublishedVersion(repository, name, version)


def _fsync_tree(path: Path) -> None:
    """Flush staged files so a crash right after the rename cannot expose empty files."""
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
