"""Publish a tuned configuration as a new version: same engine files, new config.pbtxt.

A tuned configuration is published the way a build is (``repository.writer.publish``:
staged beside the repository, renamed into place, serialized by the lock), as version
N+1 holding copies of the tuned version's files. No existing version directory is
touched, so the previous version stays available for ``sft-engine rollout`` back to it,
and the tuned version goes live through the same gated rollout as any other.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from sft_engine.errors import RepositoryError
from sft_engine.ops.modelconfig import model_dir, require_version
from sft_engine.repository.config import to_pbtxt
from sft_engine.repository.manifest import MANIFEST_NAME, BuildManifest, find_manifest, write_manifest
from sft_engine.repository.writer import BUILT_CONFIG_NAME, PublishedVersion, publish

__all__ = ["publish_tuned", "render_config"]

LOGGER = logging.getLogger(__name__)


def render_config(cfg: mc.ModelConfig, policy_from: mc.ModelConfig) -> str:
    """``cfg`` as config.pbtxt text, with the version policy of ``policy_from`` (the one on disk)."""
    out = mc.ModelConfig()
    out.CopyFrom(cfg)
    out.version_policy.CopyFrom(policy_from.version_policy)
    if not policy_from.HasField("version_policy"):
        out.ClearField("version_policy")
    return to_pbtxt(out)


def _labels(path: Path) -> list[str]:
    labels_file = path / "labels.txt"
    if not labels_file.is_file():
        return []
    lines = labels_file.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def publish_tuned(repository: Path, model: str, from_version: int, config_text: str, tune: dict[str, Any]) -> PublishedVersion:
    """Version N+1 of ``model``: the files of ``from_version`` and ``config_text`` as config.pbtxt."""
    source = require_version(repository, model, from_version)
    files: dict[str, Path] = {}
    for item in sorted(source.iterdir()):
        if item.name in (MANIFEST_NAME, BUILT_CONFIG_NAME, "__pycache__"):
            continue
        if not item.is_file():
            raise RepositoryError(f"version {from_version} of {model!r} holds a directory ({item.name})",
                                  hint="tune publishes versions whose files sit directly in the version directory")
        files[item.name] = item
    previous = find_manifest(source) or BuildManifest()
    config_sha = hashlib.sha256(config_text.encode()).hexdigest()

    def manifest(version_dir: Path, version: int) -> None:
        write_manifest(version_dir, replace(previous, model=model, version=version, config_pbtxt_sha256=config_sha,
                                            tuned={"from_version": from_version, **tune}))

    published = publish(Path(repository), model, config_text, _labels(model_dir(repository, model)), files, manifest)
    LOGGER.info("published the tuned configuration of %s as version %d", model, published.version)
    return published
