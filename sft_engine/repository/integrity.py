"""Is a version on disk the version that was built? Every file against its manifest's sha256.

A truncated copy, a disk error or a hand edit leaves an engine file (``.onnx``,
``.xml``/``.bin``, ``.ts``, ``model.plan``) or a ``model.py`` that Triton may still
load - and then serve wrong answers, or fail every request. The build records the
size and sha256 of every file of a version in its ``build_manifest.json``; this module
is the one place that compares them, for the three parts that must never hand a
damaged version to clients:

- ``sft-engine check --repository DIR`` lists every mismatching file (``verify_repository``);
- ``serve`` keeps a damaged version out of what Triton loads at start
  (``exclude_damaged``: the model's config is pinned to the good versions, the way the
  writer pins it while publishing, so the previous version keeps serving);
- ``rollout`` refuses a damaged version before it changes anything (``require_intact``).

A version without a manifest (not built by sft-engine) cannot be verified: it is
reported as such and never refused, as before.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from sft_engine.errors import RepositoryError
from sft_engine.models.checkpoint import sha256_file
from sft_engine.repository.config import parse_pbtxt
from sft_engine.repository.journal import locked
from sft_engine.repository.manifest import MANIFEST_NAME, find_manifest, read_manifest
from sft_engine.repository.writer import list_versions, live_versions, staging_root

__all__ = ["FileDamage", "VersionCheck", "verify_version", "verify_model", "verify_repository", "require_intact",
           "exclude_damaged", "PIN_RECORD_NAME"]

LOGGER = logging.getLogger(__name__)
#: beside config.pbtxt while ``serve`` keeps damaged versions out: the config as it was before
PIN_RECORD_NAME = "config.pbtxt.before-integrity-pin"


@dataclass(frozen=True)
class FileDamage:
    """One file of a version that is not what its manifest recorded."""

    path: Path
    problem: str  # "missing", "truncated", "size differs", "altered"
    detail: str

    def line(self) -> str:
        return f"{self.path}: {self.problem} ({self.detail})"


@dataclass
class VersionCheck:
    model: str
    version: int
    path: Path
    #: False when the version has no (readable) manifest: nothing to compare with
    verifiable: bool = True
    damage: list[FileDamage] = field(default_factory=list)
    files: int = 0

    @property
    def intact(self) -> bool:
        return not self.damage

    def line(self) -> str:
        """One line naming the first damaged file (and how many more), for refusals."""
        if not self.damage:
            return f"{self.model} version {self.version}: {self.files} files match {MANIFEST_NAME}"
        more = f" (and {len(self.damage) - 1} more file(s))" if len(self.damage) > 1 else ""
        return f"{self.model} version {self.version} is damaged: {self.damage[0].line()}{more}"


def verify_version(version_dir: Path) -> VersionCheck:
    """Compare every file the manifest lists with what is on disk (size first, then sha256)."""
    version_dir = Path(version_dir)
    check = VersionCheck(version_dir.parent.name, int(version_dir.name), version_dir)
    if not (version_dir / MANIFEST_NAME).is_file():
        check.verifiable = False
        return check
    try:
        manifest = read_manifest(version_dir)
    except RepositoryError as exc:
        check.damage.append(FileDamage(version_dir / MANIFEST_NAME, "unreadable", exc.message))
        return check
    if not manifest.outputs:
        check.verifiable = False
        return check
    for name, record in sorted(manifest.outputs.items()):
        if name == MANIFEST_NAME:  # a manifest rewritten in place by an older sft-engine recorded itself
            continue
        path = version_dir / name
        check.files += 1
        expected_size = record.get("bytes") if isinstance(record, dict) else None
        expected_sha = record.get("sha256") if isinstance(record, dict) else None
        if not path.is_file():
            check.damage.append(FileDamage(path, "missing", f"{MANIFEST_NAME} records {expected_size} bytes"))
            continue
        size = path.stat().st_size
        if isinstance(expected_size, int) and size != expected_size:
            problem = "truncated" if size < expected_size else "size differs"
            check.damage.append(FileDamage(path, problem, f"{size} bytes, {MANIFEST_NAME} records {expected_size}"))
            continue
        if expected_sha and sha256_file(path) != expected_sha:
            check.damage.append(FileDamage(path, "altered", f"sha256 differs from {MANIFEST_NAME}"))
    return check


def verify_model(model_dir: Path) -> list[VersionCheck]:
    model_dir = Path(model_dir)
    return [verify_version(model_dir / str(v)) for v in list_versions(model_dir)]


def verify_repository(repository: Path) -> list[VersionCheck]:
    """Every version of every model (folders with a config.pbtxt), models in name order."""
    repository = Path(repository)
    if not repository.is_dir():
        raise RepositoryError(f"model repository {repository} does not exist", hint="pass --repository DIR")
    out: list[VersionCheck] = []
    for model in sorted(p for p in repository.iterdir() if (p / "config.pbtxt").is_file()):
        out.extend(verify_model(model))
    return out


def require_intact(version_dir: Path) -> VersionCheck:
    """The check of a version that is about to be served; RepositoryError naming the file when damaged."""
    check = verify_version(version_dir)
    if not check.intact:
        raise RepositoryError(check.line(), hint="rebuild the version (sft-engine build); the served version is left as it is")
    return check


# -- serve: keep damaged versions out of what Triton loads ------------------------------------
def _choose(cfg: mc.ModelConfig, versions: list[int], damaged: set[int]) -> list[int]:
    """The versions to serve instead: as many good ones as the policy asked for, the newest first."""
    good = [v for v in versions if v not in damaged]
    live = live_versions(cfg, versions)
    kind = cfg.version_policy.WhichOneof("policy_choice") if cfg.HasField("version_policy") else None
    if kind == "all":
        return good
    if kind == "specific":
        kept = [v for v in live if v not in damaged]
        return kept or [v for v in good if v < max(live, default=0)][-1:]
    return [v for v in good if v <= max(live, default=0)][-len(live):] if live else []


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_record(record: Path) -> tuple[str, str] | None:
    """(the config before the pin, the pinned config) of a pin record; None when unreadable."""
    try:
        body = json.loads(record.read_text())
        return str(body["original"]), str(body["pinned"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _render(cfg: mc.ModelConfig) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(cfg)


def exclude_damaged(repository: Path) -> list[str]:
    """Before a server reads ``repository``: no damaged version is live; returns one line per change.

    A model whose live versions include a damaged one gets its ``config.pbtxt`` pinned
    (``version_policy specific``) to the good versions it would otherwise serve - the
    previous version keeps serving - and the config it had is kept beside it
    (``PIN_RECORD_NAME``); once every version it names is intact again, the next start
    puts it back. Runs under the publish lock, so it never races a build. A model with
    no intact version left raises RepositoryError naming the file (nothing to serve).
    """
    repository = Path(repository)
    if not repository.is_dir():
        return []
    lines: list[str] = []
    with locked(staging_root(repository)):
        for model_dir in sorted(p for p in repository.iterdir() if (p / "config.pbtxt").is_file()):
            lines.extend(_exclude_in_model(model_dir))
    return lines


def _exclude_in_model(model_dir: Path) -> list[str]:
    config_path, record = model_dir / "config.pbtxt", model_dir / PIN_RECORD_NAME
    versions = list_versions(model_dir)
    checks = {c.version: c for c in verify_model(model_dir)}
    damaged = {v for v, c in checks.items() if not c.intact}
    lines: list[str] = []
    kept = None
    if record.is_file():  # a pin of an earlier start: undo it when the versions it kept out are intact again
        kept = _read_record(record)
        if kept is None or kept[1] != config_path.read_text():
            record.unlink()  # a publish replaced the pinned config since: the record is stale
        elif not damaged & set(live_versions(parse_pbtxt(kept[0], str(record)), versions)):
            _write_atomically(config_path, kept[0])
            record.unlink()
            lines.append(f"{model_dir.name}: the versions kept out are intact again; {config_path.name} restored")
    cfg = parse_pbtxt(config_path.read_text(), str(config_path))
    hit = sorted(damaged & set(live_versions(cfg, versions)))
    if not hit:
        return lines
    chosen = _choose(cfg, versions, damaged)
    first = checks[hit[0]]
    if not chosen:
        raise RepositoryError(f"{first.line()}; no intact version of {model_dir.name} is left to serve",
                              hint="rebuild it (sft-engine build), or restore the file")
    pinned = mc.ModelConfig()
    pinned.CopyFrom(cfg)
    pinned.version_policy.Clear()
    pinned.version_policy.specific.versions[:] = chosen
    pinned_text = _render(pinned)
    original = kept[0] if kept is not None and record.is_file() else config_path.read_text()
    _write_atomically(record, json.dumps({"original": original, "pinned": pinned_text}) + "\n")
    _write_atomically(config_path, pinned_text)
    for version in hit:
        lines.append(f"{checks[version].line()}; serving version(s) {', '.join(map(str, chosen))} instead")
    LOGGER.info("%s", "; ".join(lines))
    return lines
