"""What a cluster or a compose host needs to serve a model repository, and the options of a deployment.

The repository is read first - which models, which versions, which engines, which
instance groups - because the manifests depend on it:

* models served by the Python backend (the CPU engines) need their engine's runtime
  (onnxruntime, openvino, or torch for TorchScript) in the container's Python, which the stock
  NGC image lacks: a ``Dockerfile`` adding exactly the versions the build recorded is
  written, and the manifests use the image it builds;
* a model whose instance groups are on GPUs needs GPUs, and its GPU ids must exist in
  the container (``--gpus``: ids 0..n-1 inside it) - checked here, not at pod start;
* the NGC tag is the one a GPU build recorded (its TensorRT must match the container's).

This module holds the options and gathers and checks those facts, with the pieces both
renderers share (tritonserver's arguments, the Dockerfile, YAML); ``k8s`` and ``compose``
render from them and ``deploy`` writes the files, so the renderers never import the
module that calls them.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tritonclient.grpc import model_config_pb2 as mc

from sft_engine.errors import ConfigError, RepositoryError
from sft_engine.repository.config import read_config
from sft_engine.repository.manifest import find_manifest, read_manifest, MANIFEST_NAME
from sft_engine.repository.writer import list_versions
from sft_engine.server import DEFAULT_TRITON_TAG

__all__ = [
    "ModelInfo", "RepositoryInfo", "DeployOptions", "scan_repository", "check_gpus", "image_for", "triton_args",
    "dockerfile", "docker_commands", "dump_yaml", "NGC_IMAGE",
]

LOGGER = logging.getLogger(__name__)

NGC_IMAGE = "nvcr.io/nvidia/tritonserver"
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    versions: tuple[int, ...]
    backend: str
    platform: str
    kind: str  # KIND_CPU / KIND_GPU
    gpu_ids: tuple[int, ...]
    #: pip requirements of the Python backend's engines (empty for other backends)
    requirements: tuple[str, ...] = ()


@dataclass
class RepositoryInfo:
    path: Path
    models: list[ModelInfo]
    triton_tag: str

    @property
    def requirements(self) -> list[str]:
        return sorted({r for m in self.models for r in m.requirements})


@dataclass
class DeployOptions:
    """Settings of ``sft-engine deploy``; the defaults serve one CPU replica on loopback (compose)."""

    repository: Path
    output: Path
    name: str = "sft-engine"
    namespace: str | None = None
    #: container image; None: NGC's, or the Dockerfile's image when the models need Python packages
    image: str | None = None
    triton_tag: str | None = None
    #: where the cluster finds the repository: pvc://CLAIM[/PATH], s3://..., gs://..., as://...
    storage_uri: str | None = None
    replicas: int = 1
    min_replicas: int = 1
    max_replicas: int = 4
    gpus: tuple[int, ...] = ()
    cpu: str = "2"
    memory: str = "4Gi"
    #: the HPA's metric: Triton's average queue time per request, or its pending requests per pod
    scale_metric: Literal["queue_time", "pending_requests"] = "queue_time"
    target_queue_time_us: int = 20_000
    target_pending_requests: int = 8
    model_control_mode: Literal["none", "explicit"] = "none"
    #: compose: the host address the ports are published on
    host: str = "127.0.0.1"
    prometheus_image: str = "prom/prometheus:v2.54.1"

    def validate(self) -> None:
        if not _DNS_LABEL.match(self.name):
            raise ConfigError(f"--name {self.name!r} is not a valid Kubernetes name",
                              hint="use lowercase letters, digits and '-', starting with a letter, at most 63 characters")
        if self.namespace is not None and not _DNS_LABEL.match(self.namespace):
            raise ConfigError(f"--namespace {self.namespace!r} is not a valid Kubernetes namespace", hint="e.g. --namespace inference")
        if not 1 <= self.replicas <= 64:
            raise ConfigError(f"--replicas {self.replicas} is out of range", hint="use 1..64")
        if not 1 <= self.min_replicas <= self.max_replicas <= 1000:
            raise ConfigError(f"--min-replicas {self.min_replicas} / --max-replicas {self.max_replicas} are inconsistent",
                              hint="use 1 <= min <= max")
        if self.target_queue_time_us < 1 or self.target_pending_requests < 1:
            raise ConfigError("the autoscaling target must be >= 1", hint="e.g. --target-queue-time-us 20000")
        if len(set(self.gpus)) != len(self.gpus) or any(g < 0 for g in self.gpus):
            raise ConfigError(f"--gpus {list(self.gpus)} must be distinct ids >= 0", hint="e.g. --gpus 0,1")
        if self.storage_uri is not None and not re.match(r"^(pvc|s3|gs|as|https?)://\S+$", self.storage_uri):
            raise ConfigError(f"--storage-uri {self.storage_uri!r} is not pvc://, s3://, gs://, as:// or http(s)://",
                              hint="e.g. pvc://model-repository or s3://bucket/models")

    @property
    def default_storage_uri(self) -> str:
        return self.storage_uri or f"pvc://{self.name}-model-repository"


# -- reading the repository ----------------------------------------------------------------
def _version_requirements(version_dir: Path) -> set[str]:
    """pip requirements of one Python-backend version: its engine's runtime (or Pillow for a preprocessing model), at the built version."""
    engine_file = version_dir / "engine.json"
    if not engine_file.is_file():
        manifest = find_manifest(version_dir)
        if manifest is not None and manifest.engine == "preprocess":  # <name>_preprocess decodes with Pillow
            tools = manifest.tools
            return {f"numpy=={tools['numpy']}" if tools.get("numpy") else "numpy<2",
                    f"pillow=={tools['pillow']}" if tools.get("pillow") else "pillow"}
        return set()
    try:
        engine = json.loads(engine_file.read_text()).get("engine")
        tools = read_manifest(version_dir).tools if (version_dir / MANIFEST_NAME).is_file() else {}
    except (OSError, ValueError, RepositoryError) as exc:
        raise RepositoryError(f"{version_dir} has an unreadable engine.json or manifest: {exc}", hint="rebuild that version") from None
    reqs = {f"numpy=={tools['numpy']}" if tools.get("numpy") else "numpy<2"}
    if engine == "onnxruntime":
        reqs.add(f"onnxruntime=={tools['onnxruntime']}" if tools.get("onnxruntime") else "onnxruntime")
    elif engine == "openvino":
        reqs.add(f"openvino=={tools['openvino']}" if tools.get("openvino") else "openvino")
    elif engine == "torchscript":
        torch_version = str(tools.get("torch") or "").split("+")[0]
        reqs.add(f"torch=={torch_version}" if torch_version else "torch")
    return reqs


def _recorded_tags(version_dirs: list[Path]) -> set[str]:
    tags = set()
    for version_dir in version_dirs:
        manifest = find_manifest(version_dir)
        if manifest is not None and manifest.triton_container_tag:
            tags.add(manifest.triton_container_tag)
    return tags


def scan_repository(repository: Path) -> RepositoryInfo:
    """The models of a repository and what serving them needs; RepositoryError when there are none."""
    repository = Path(repository)
    if not repository.is_dir():
        raise RepositoryError(f"model repository {repository} does not exist", hint="build a model first: sft-engine build ...")
    models: list[ModelInfo] = []
    all_versions: list[Path] = []
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (model_dir / "config.pbtxt").is_file():
            continue
        cfg = read_config(model_dir / "config.pbtxt")
        versions = list_versions(model_dir)
        if not versions:
            LOGGER.warning("model %s has no version directory; Triton will not load it", model_dir.name)
            continue
        version_dirs = [model_dir / str(v) for v in versions]
        all_versions += version_dirs
        gpu_groups = [g for g in cfg.instance_group if g.kind == mc.ModelInstanceGroup.KIND_GPU]
        requirements: set[str] = set()
        if cfg.backend == "python":
            for version_dir in version_dirs:
                requirements |= _version_requirements(version_dir)
        models.append(ModelInfo(
            name=model_dir.name, versions=tuple(versions), backend=cfg.backend, platform=cfg.platform,
            kind="KIND_GPU" if gpu_groups else "KIND_CPU",
            gpu_ids=tuple(sorted({int(g) for group in gpu_groups for g in group.gpus})),
            requirements=tuple(sorted(requirements)),
        ))
    if not models:
        raise RepositoryError(f"model repository {repository} holds no models (no <model>/config.pbtxt with a version directory)",
                              hint="build one first: sft-engine build --repository " + str(repository) + " ...")
    tags = _recorded_tags(all_versions)
    if len(tags) > 1:
        raise RepositoryError(f"the repository's GPU builds were made for different Triton containers: {sorted(tags)}",
                              hint="rebuild them for one container, or deploy them from separate repositories")
    return RepositoryInfo(path=repository, models=models, triton_tag=tags.pop() if tags else DEFAULT_TRITON_TAG)


def check_gpus(info: RepositoryInfo, gpus: tuple[int, ...]) -> None:
    """GPU models need ``--gpus``, and their instance groups' ids must exist in the container."""
    for model in info.models:
        if model.kind != "KIND_GPU":
            continue
        if not gpus:
            raise ConfigError(f"model {model.name!r} runs on GPUs (instance_group KIND_GPU) but no --gpus was given",
                              hint="pass --gpus with the GPU ids each replica gets, e.g. --gpus 0")
        missing = [g for g in model.gpu_ids if g >= len(gpus)]
        if missing:
            raise ConfigError(
                f"model {model.name!r} places instances on GPU(s) {missing}, but a replica sees only {len(gpus)} GPU(s) (ids 0..{len(gpus) - 1})",
                hint=f"give each replica more GPUs (--gpus), or rebuild with --gpus within 0..{len(gpus) - 1}",
            )


# -- rendering and writing -----------------------------------------------------------------
def dockerfile(info: RepositoryInfo, tag: str) -> str:
    """An image adding the Python backend's engine runtimes to the NGC Triton container."""
    reqs = " ".join(f'"{r}"' for r in info.requirements)
    users = ", ".join(m.name for m in info.models if m.requirements)
    return (
        f"# Triton {tag} with the Python packages the repository's Python-backend models import ({users}).\n"
        "# Versions are the ones their builds recorded in build_manifest.json.\n"
        f"FROM {NGC_IMAGE}:{tag}-py3\n"
        f"RUN python3 -m pip install --no-cache-dir {reqs}\n"
    )


def docker_commands(repository: Path, tag: str, gpus: bool = True) -> str:
    """``serve --print-docker``: the NGC container command, preceded by an image build when Python models need packages.

    The stock container has no Pillow (the preprocessing model's decoder) and no CPU
    engine runtimes, so a repository with Python-backend models gets an image built
    from ``dockerfile`` (from stdin, no files needed) and run instead of the stock one.
    """
    from sft_engine.server import docker_command

    try:
        info = scan_repository(Path(repository))
    except RepositoryError:  # nothing servable yet: the plain command still says how
        return docker_command(Path(repository), tag=tag, gpus=gpus)
    if not info.requirements:
        return docker_command(Path(repository), tag=tag, gpus=gpus)
    image = f"{DeployOptions.name}-triton:{tag}"  # the image `deploy` builds under its default --name: one name for one image
    build = f"docker build -t {image} - <<'EOF'\n{dockerfile(info, tag)}EOF"
    return build + "\n" + docker_command(Path(repository), tag=tag, gpus=gpus, image=image)


def image_for(info: RepositoryInfo, options: DeployOptions) -> tuple[str, bool]:
    """(image, built here): the NGC image, or the Dockerfile's when Python packages are needed."""
    if options.image:
        return options.image, False
    tag = options.triton_tag or info.triton_tag
    if info.requirements:
        return f"{options.name}-triton:{tag}", True
    return f"{NGC_IMAGE}:{tag}-py3", False


def triton_args(info: RepositoryInfo, options: DeployOptions, repository: str) -> list[str]:
    """tritonserver's command line inside the container (all interfaces: the pod/container network)."""
    args = [
        "tritonserver",
        f"--model-repository={repository}",
        f"--model-control-mode={options.model_control_mode}",
        "--strict-readiness=true",
        "--exit-timeout-secs=30",
        "--http-port=8000",
        "--grpc-port=8001",
        "--metrics-port=8002",
        "--allow-metrics=true",
        f"--allow-gpu-metrics={'true' if options.gpus else 'false'}",
        "--allow-cpu-metrics=true",
    ]
    if options.model_control_mode == "explicit":
        args += [f"--load-model={m.name}" for m in info.models]
    return args


def dump_yaml(documents: list[dict[str, Any]]) -> str:
    """One or more YAML documents, keys in the order written (PyYAML)."""
    import yaml

    return yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False, width=1 << 16)
