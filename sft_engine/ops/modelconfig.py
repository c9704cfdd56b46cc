"""Model configurations as the operations commands change them: version policy and serving knobs.

Everything starts from the model's ``config.pbtxt`` parsed through the protobuf
schema (``sft_engine.repository.config``) and ends as the JSON override of a load
request, so a candidate configuration is checked by the same rules as a build's
before the server ever sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc

from sft_engine.errors import ConfigError, RepositoryError
from sft_engine.repository.config import read_config, validate
from sft_engine.repository.writer import list_versions

__all__ = [
    "ServingKnobs",
    "model_dir",
    "disk_config",
    "require_version",
    "override",
    "with_versions",
    "knobs_of",
    "apply_knobs",
    "instance_groups_for",
]


def model_dir(repository: Path, model: str) -> Path:
    """``repository/model``, which must hold a config.pbtxt."""
    repository = Path(repository)
    if not repository.is_dir():
        raise RepositoryError(f"model repository {repository} does not exist", hint="pass --repository DIR (the one the server serves)")
    path = repository / model
    if not (path / "config.pbtxt").is_file():
        known = sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").is_file())
        raise RepositoryError(
            f"model {model!r} is not in repository {repository}",
            hint=f"models there: {', '.join(known)}" if known else "build one first: sft-engine build ...",
        )
    return path


def disk_config(repository: Path, model: str) -> mc.ModelConfig:
    """The model-level config.pbtxt, parsed and validated."""
    return read_config(model_dir(repository, model) / "config.pbtxt")


def require_version(repository: Path, model: str, version: int) -> Path:
    """The directory of ``version``, or a RepositoryError naming the versions that exist."""
    path = model_dir(repository, model)
    versions = list_versions(path)
    if version not in versions:
        listed = ", ".join(str(v) for v in versions) or "none"
        raise RepositoryError(f"model {model!r} has no version {version} in {Path(repository)}", hint=f"versions there: {listed}")
    return path / str(version)


def override(cfg: mc.ModelConfig, versions: Iterable[int]) -> dict[str, Any]:
    """The JSON override of a load request: ``cfg`` serving exactly ``versions``."""
    out = mc.ModelConfig()
    out.CopyFrom(cfg)
    out.version_policy.Clear()
    out.version_policy.specific.versions.extend(sorted(set(int(v) for v in versions)))
    validate(out)
    return json_format.MessageToDict(out, preserving_proto_field_name=True)


def with_versions(config: Mapping[str, Any], versions: Iterable[int]) -> dict[str, Any]:
    """A copy of a JSON config (e.g. the server's live one) serving exactly ``versions``."""
    out = dict(config)
    out["version_policy"] = {"specific": {"versions": sorted(set(int(v) for v in versions))}}
    return out


Kind = Literal["KIND_CPU", "KIND_GPU"]


@dataclass(frozen=True)
class ServingKnobs:
    """The settings tune searches. ``instances`` is per GPU when ``gpus`` is set (Triton's semantics)."""

    max_batch_size: int
    queue_delay_us: int
    instances: int
    gpus: tuple[int, ...] = ()

    @property
    def kind(self) -> Kind:
        return "KIND_GPU" if self.gpus else "KIND_CPU"

    @property
    def total_instances(self) -> int:
        return self.instances * max(1, len(self.gpus))

    def label(self) -> str:
        where = f" x gpus {','.join(map(str, self.gpus))}" if self.gpus else ""
        return f"batch<={self.max_batch_size} delay={self.queue_delay_us}us instances={self.instances}{where}"

    def to_dict(self) -> dict[str, Any]:
        return {"max_batch_size": self.max_batch_size, "max_queue_delay_us": self.queue_delay_us,
                "instances": self.instances, "kind": self.kind, "gpus": list(self.gpus)}


def knobs_of(cfg: mc.ModelConfig) -> ServingKnobs:
    """The knobs a config currently sets (instances summed over CPU groups, per GPU for GPU groups)."""
    gpus: tuple[int, ...] = ()
    instances = 0
    for group in cfg.instance_group:
        if group.kind == mc.ModelInstanceGroup.KIND_GPU:
            gpus = tuple(group.gpus)
            instances = max(instances, group.count or 1)
        else:
            instances += group.count or 1
    delay = cfg.dynamic_batching.max_queue_delay_microseconds if cfg.HasField("dynamic_batching") else 0
    return ServingKnobs(max_batch_size=cfg.max_batch_size, queue_delay_us=int(delay), instances=max(1, instances), gpus=gpus)


def instance_groups_for(instances: int, gpus: Iterable[int] = ()) -> list[mc.ModelInstanceGroup]:
    """One group: ``instances`` on CPU, or ``instances`` on each of ``gpus``."""
    gpus = tuple(int(g) for g in gpus)
    if instances < 1:
        raise ConfigError(f"instance count {instances} must be >= 1", hint="e.g. 1,2,4")
    if any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise ConfigError(f"GPU ids {list(gpus)} must be distinct and >= 0", hint="e.g. --gpus 0,1")
    if gpus:
        return [mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_GPU, count=instances, gpus=list(gpus))]
    return [mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=instances)]


def apply_knobs(cfg: mc.ModelConfig, knobs: ServingKnobs) -> mc.ModelConfig:
    """A copy of ``cfg`` with ``knobs`` applied, kept valid.

    Warmup samples and preferred batch sizes above the new ``max_batch_size`` are
    dropped (Triton refuses them), and a warmup at the new maximum is kept so the first
    full batch after a reload does not pay for lazy initialisation.
    """
    if knobs.max_batch_size < 1:
        raise ConfigError(f"max batch size {knobs.max_batch_size} must be >= 1", hint="e.g. 1,4,8")
    if knobs.queue_delay_us < 0:
        raise ConfigError(f"queue delay {knobs.queue_delay_us} us must be >= 0", hint="e.g. 0,100,1000")
    out = mc.ModelConfig()
    out.CopyFrom(cfg)
    out.max_batch_size = knobs.max_batch_size
    out.dynamic_batching.max_queue_delay_microseconds = knobs.queue_delay_us
    preferred = [b for b in out.dynamic_batching.preferred_batch_size if b <= knobs.max_batch_size]
    del out.dynamic_batching.preferred_batch_size[:]
    out.dynamic_batching.preferred_batch_size.extend(preferred)
    del out.instance_group[:]
    out.instance_group.extend(instance_groups_for(knobs.instances, knobs.gpus))
    warmups = [_copy(w) for w in cfg.model_warmup if w.batch_size <= knobs.max_batch_size]
    sizes = {w.batch_size for w in warmups}
    if cfg.model_warmup and knobs.max_batch_size not in sizes:
        template = _copy(cfg.model_warmup[0])
        template.name = f"random_batch_{knobs.max_batch_size}"
        template.batch_size = knobs.max_batch_size
        warmups.append(template)
    del out.model_warmup[:]
    out.model_warmup.extend(sorted(warmups, key=lambda w: w.batch_size))
    validate(out)
    return out


def _copy(warmup: mc.ModelWarmup) -> mc.ModelWarmup:
    out = mc.ModelWarmup()
    out.CopyFrom(warmup)
    return out
