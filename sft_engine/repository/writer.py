"""Atomic, additive publishing into a Triton model repository.

Each build adds version N+1 of a model. Everything is written into a staging
directory beside the repository (same filesystem, outside Triton's view), flushed, and
made live by a journaled sequence of renames (``journal.py``): a publish killed before
its journal is written changes nothing, one killed after it is finished by the next
writer. An existing version directory is never touched. Free space is checked against
what is staged before staging and again before the commit point (``space.py``): a full
disk fails with one line and leaves the repository as it was. Builds of one repository are
serialized with a lock, so two of them cannot claim the same version number.

Layout::

    <repository>/<model>/config.pbtxt          model-level Triton config: what Triton serves every live version with
    <repository>/<model>/labels.txt            classification labels (label_filename)
    <repository>/<model>/<N>/config.pbtxt.built   the exact config version N was built and gated with
    <repository>/<model>/<N>/...               engine, model.py, engine.json, build_manifest.json

**The guarantee.** Triton has one config per model, shared by every version it serves.
Whatever the moment a publish is interrupted, each version the model-level config makes
*live* (its ``version_policy`` over the versions on disk) is either served with the
config it was built with (its ``config.pbtxt.built``, compared without the version
policy), or was already served with that very model-level config before the publish
began (versions older than this scheme carry no record and are left as they were).
So a config change is written only when no older live version would see it, and when
it is, the steps are: pin the current config to the versions it serves now
(``version_policy specific``), rename the new version in (invisible under the pin),
then replace the config by the new one. A publish whose new config would reach an
older live version (e.g. ``num_versions: 2`` and a tuned config) is refused: a model
whose versions need different configs is published under a new name.

A new version must keep the model's interface (backend/platform, tensors, labels).

Several models can be published as one unit (``publish_models``): one lock, one
staging directory, one journal, applied in the order given (a model others depend
on, e.g. an ensemble's steps, first). After a crash, the next writer or ``recover``
finishes the unit.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from tritonclient.grpc import model_config_pb2 as mc

from sft_engine.errors import RepositoryError
from sft_engine.repository.config import parse_pbtxt, validate
from sft_engine.repository.journal import Step, apply, commit, discard, locked, pause_point, recover_staging
from sft_engine.repository.journal import fsync_tree as _fsync_tree
from sft_engine.repository.space import RESERVE_BYTES, files_bytes, is_no_space, no_space, require_space, tree_bytes

__all__ = [
    "BUILT_CONFIG_NAME",
    "ModelRelease",
    "PublishedVersion",
    "publish",
    "publish_models",
    "recover",
    "list_versions",
    "live_versions",
    "built_config",
    "staging_root",
]

LOGGER = logging.getLogger(__name__)
#: beside the manifest: the config a version was built and gated with (Triton reads only <model>/config.pbtxt)
BUILT_CONFIG_NAME = "config.pbtxt.built"

#: ``(version_dir, version, unit)``: ``unit`` maps every model of the published unit to its new version
ManifestWriter = Callable[[Path, int, Mapping[str, int]], None]


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


@dataclass(frozen=True)
class ModelRelease:
    """One model's new version: its config, labels, files (copied) and manifest writer.

    ``manifest_writer(version_dir, version, unit)`` writes the manifest into the staged
    version directory, after every file of the unit is there, before anything is
    visible; ``unit`` maps each model published with it to its new version (the image
    models' manifests name the engine version they serve).
    """

    name: str
    config_text: str
    labels: tuple[str, ...]
    files: dict[str, Path]
    manifest_writer: ManifestWriter


def list_versions(model_dir: Path) -> list[int]:
    """Version numbers present in a model directory, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def staging_root(repository: Path) -> Path:
    """Where builds stage their output: beside the repository, never inside it."""
    repository = Path(repository).resolve()
    return repository.parent / f".{repository.name}.sft-staging"


def live_versions(cfg: mc.ModelConfig, versions: Sequence[int]) -> list[int]:
    """The versions Triton serves from ``versions`` under ``cfg``'s version policy."""
    present = sorted(set(versions))
    policy = cfg.version_policy
    kind = policy.WhichOneof("policy_choice") if cfg.HasField("version_policy") else None
    if kind == "all":
        return present
    if kind == "specific":
        return [v for v in present if v in set(policy.specific.versions)]
    keep = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions > 0 else 1
    return present[-keep:]


def _without_policy(cfg: mc.ModelConfig) -> mc.ModelConfig:
    out = mc.ModelConfig()
    out.CopyFrom(cfg)
    out.ClearField("version_policy")
    return out


def built_config(version_dir: Path) -> mc.ModelConfig | None:
    """The config a version was built and gated with; None for versions that predate the record."""
    path = Path(version_dir) / BUILT_CONFIG_NAME
    return parse_pbtxt(path.read_text(), f"{Path(version_dir).name}/{BUILT_CONFIG_NAME}") if path.is_file() else None


def _interface(cfg: Any) -> tuple[Any, ...]:
    return (
        cfg.backend, cfg.platform,
        tuple((t.name, t.data_type, tuple(t.dims)) for t in cfg.input),
        tuple((t.name, t.data_type, tuple(t.dims), t.label_filename) for t in cfg.output),
    )


@dataclass
class _Plan:
    release: ModelRelease
    model_dir: Path
    version: int
    steps: list[Step]
    staged_version: Path


def _plan(repository: Path, stage: Path, release: ModelRelease) -> _Plan:
    """Check one release against the repository and stage its files; returns its steps."""
    name = release.name
    new_cfg = parse_pbtxt(release.config_text)
    validate(new_cfg)
    labels_text = "".join(f"{label}\n" for label in release.labels)
    model_dir = repository / name
    versions = list_versions(model_dir)
    version = (versions[-1] + 1) if versions else 1
    staged_model = stage / name
    staged_version = staged_model / str(version)
    staged_version.mkdir(parents=True)
    for target_name, source in release.files.items():
        shutil.copyfile(source, staged_version / target_name)
    (staged_version / BUILT_CONFIG_NAME).write_text(release.config_text)
    if not model_dir.exists():
        (staged_model / "config.pbtxt").write_text(release.config_text)
        (staged_model / "labels.txt").write_text(labels_text)
        return _Plan(release, model_dir, version, [Step(str(staged_model), str(model_dir))], staged_version)

    current_path = model_dir / "config.pbtxt"
    if not current_path.is_file():
        raise RepositoryError(f"model directory {model_dir} exists but has no config.pbtxt", hint="remove it or choose another --name")
    current_text = current_path.read_text()
    current = parse_pbtxt(current_text, f"{name}/config.pbtxt")
    if _interface(current) != _interface(new_cfg):
        raise RepositoryError(
            f"model {name!r} already exists with another interface (backend, tensors or shapes differ)",
            hint="publish it under a new --name; versions of one model must be interchangeable",
        )
    labels_path = model_dir / "labels.txt"
    if labels_path.is_file() and labels_path.read_text() != labels_text:
        raise RepositoryError(f"model {name!r} already exists with other labels", hint="publish it under a new --name")
    steps: list[Step] = []
    if not labels_path.exists():
        (staged_model / "labels.txt").write_text(labels_text)
        steps.append(Step(str(staged_model / "labels.txt"), str(labels_path), replace=True))
    version_step = Step(str(staged_version), str(model_dir / str(version)))
    if current_text == release.config_text:
        # Nothing changes for the versions served now; the new one is served with its own config.
        return _Plan(release, model_dir, version, steps + [version_step], staged_version)

    target = _without_policy(new_cfg)
    for old in live_versions(new_cfg, versions + [version]):
        if old == version:
            continue
        recorded = built_config(model_dir / str(old))
        if recorded is None or _without_policy(recorded) != target:
            raise RepositoryError(
                f"the new configuration of {name!r} would also serve version {old}, which was built with another one "
                f"(version_policy keeps {len(live_versions(new_cfg, versions + [version]))} versions live)",
                hint="publish it under a new --name (and switch clients with `sft-engine rollout`), or keep the version policy at num_versions 1",
            )
    if version in live_versions(current, versions + [version]):
        # Pin the current config to what it serves now, so the new version stays invisible until its config is in.
        pinned = mc.ModelConfig()
        pinned.CopyFrom(current)
        pinned.version_policy.specific.versions[:] = live_versions(current, versions)
        (staged_model / "config.pbtxt.pinned").write_text(_render(pinned))
        steps.append(Step(str(staged_model / "config.pbtxt.pinned"), str(current_path), replace=True))
    (staged_model / "config.pbtxt").write_text(release.config_text)
    steps += [version_step, Step(str(staged_model / "config.pbtxt"), str(current_path), replace=True)]
    return _Plan(release, model_dir, version, steps, staged_version)


def _render(cfg: mc.ModelConfig) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(cfg)


def publish_models(repository: Path, releases: Sequence[ModelRelease]) -> list[PublishedVersion]:
    """Publish a new version of each model in ``releases`` as one unit, in the order given."""
    repository = Path(repository)
    names = [r.name for r in releases]
    if not releases or len(set(names)) != len(names):
        raise RepositoryError(f"nothing to publish, or a model named twice: {names}", hint="report this as a bug")
    for release in releases:
        validate(parse_pbtxt(release.config_text))
    if repository.exists() and not repository.is_dir():
        raise RepositoryError(f"repository {repository} is not a directory", hint="pass --repository DIR")
    root = staging_root(repository)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RepositoryError(f"cannot create the staging directory beside {repository}: {exc}", hint="make the repository's parent directory writable") from None
    with locked(root):
        recover_staging(root)
        repository.mkdir(parents=True, exist_ok=True)
        needed = files_bytes(p for release in releases for p in release.files.values())
        require_space(repository, needed)  # refused before a byte is written
        stage = Path(tempfile.mkdtemp(prefix="build-", dir=root))
        committed = False
        try:
            plans = [_plan(repository.resolve(), stage, release) for release in releases]
            unit = {plan.release.name: plan.version for plan in plans}
            for plan in plans:
                plan.release.manifest_writer(plan.staged_version, plan.version, unit)
            _fsync_tree(stage)
            steps = [step for plan in plans for step in plan.steps]
            pause_point(0, "staged")
            require_space(repository, 0)  # the disk may have filled since: still nothing changed
            commit(stage, steps)
            committed = True
            pause_point(1, "committed")
            apply(steps, pause_from=1)
            pause_point(len(steps) + 2, "applied")
        except OSError as exc:
            if committed:  # the journal stays: the next publish or `serve` finishes the publish
                state = "at a consistent intermediate step; the next publish or serve start finishes it"
                if is_no_space(exc):
                    raise no_space(repository, RESERVE_BYTES, state=state) from None
                raise RepositoryError(f"cannot write into repository {repository}: {exc}", hint=f"check free space and permissions; the repository is {state}") from None
            staged = tree_bytes(stage)
            discard(stage)
            if is_no_space(exc):
                raise no_space(repository, max(needed, staged) + RESERVE_BYTES) from None
            raise RepositoryError(f"cannot write into repository {repository}: {exc}", hint="check free space and permissions; the repository is unchanged") from None
        except BaseException:
            if not committed:
                discard(stage)
            raise
        discard(stage)
    for plan in plans:
        LOGGER.info("published %s version %d into %s", plan.release.name, plan.version, repository)
    return [PublishedVersion(repository, plan.release.name, plan.version) for plan in plans]


def publish(
    repository: Path,
    name: str,
    config_text: str,
    labels: list[str],
    files: dict[str, Path],
    manifest_writer: Callable[[Path, int], None],
) -> PublishedVersion:
    """Add the next version of ``name`` to ``repository`` atomically (see the module docstring).

    A unit of one model: its ``manifest_writer(version_dir, version)`` needs no other version.
    """
    def writer(version_dir: Path, version: int, unit: Mapping[str, int]) -> None:
        manifest_writer(version_dir, version)

    return publish_models(repository, [ModelRelease(name, config_text, tuple(labels), dict(files), writer)])[0]


def recover(repository: Path) -> list[str]:
    """Finish a publish that was killed after its commit point; drop unfinished staging.

    Safe to run at any time (it waits for a publish in progress). Returns the names of
    the models it changed. Nothing to do, and nothing created, when no build staged here.
    """
    root = staging_root(Path(repository))
    if not root.is_dir():
        return []
    base = Path(repository).resolve()
    with locked(root):
        changed = recover_staging(root)
    return sorted({p.relative_to(base).parts[0] for p in changed if p.is_relative_to(base) and p != base})
