"""docker-compose: Triton replicas serving the repository, and Prometheus scraping them.

One host, several replicas (``--replicas N``: services ``triton-0`` ... with HTTP on
host port 8000+10i, gRPC 8001+10i, metrics 8002+10i), each with the GPUs of
``--gpus``. The load-test harness measures them as one service with one ``--url``
per replica. Ports are published on ``--host`` (loopback by default): exposing a
server is a decision to make on purpose. The health check asks Triton's
``/v2/health/ready`` with the container's own Python (the image has no curl), so
``depends_on: service_healthy`` and ``docker compose ps`` mean "models loaded".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sft_engine.ops.deploy.spec import TLS_MOUNT, DeployOptions, DeployedRepository, dump_yaml, triton_args
from sft_engine.triton.security import ADMIN_KEY_ENV, restricted_api_args

__all__ = ["render", "compose_file", "prometheus_config", "replica_ports"]

_HEALTH = (
    "import sys, urllib.request; "
    "sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status == 200 else 1)"
)


def replica_ports(index: int) -> tuple[int, int, int]:
    """Host ports (HTTP, gRPC, metrics) of replica ``index``."""
    base = 8000 + 10 * index
    return base, base + 1, base + 2


def _repository_mount(info: DeployedRepository, options: DeployOptions) -> str:
    """The repository as a bind mount, relative to the compose file when possible (compose resolves it so)."""
    repo = Path(info.path).resolve()
    out = Path(options.output).resolve()
    try:
        rel = os.path.relpath(repo, out)
    except ValueError:  # another drive (Windows)
        rel = str(repo)
    source = rel if rel.startswith(".") else f"./{rel}"
    return f"{source}:/models:ro"


def _relative(path: Path, options: DeployOptions) -> str:
    """``path`` as compose resolves a bind mount's source: relative to the compose file when possible."""
    try:
        rel = os.path.relpath(Path(path).resolve(), Path(options.output).resolve())
    except ValueError:  # another drive (Windows)
        return str(Path(path).resolve())
    return rel if rel.startswith(".") else f"./{rel}"


#: what every Triton service runs with: the image's non-root user, nothing writable but memory-backed scratch
_HARDENING: dict[str, Any] = {
    "user": "1000:1000",
    "read_only": True,
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges:true"],
    "tmpfs": ["/tmp:size=256m,mode=1777"],
}


def _command(info: DeployedRepository, options: DeployOptions) -> list[str]:
    """tritonserver's argv; with an admin key, through ``sh`` so that the key comes from the env file, never from this file."""
    args = triton_args(info, options, "/models")
    if not options.admin_key:
        return args
    keyed = restricted_api_args(f'"$${ADMIN_KEY_ENV}"')  # $$: a literal $ for sh, not compose's interpolation
    return ["sh", "-c", 'exec "$$@" ' + " ".join(keyed), "sh", *args]


def _tls_volumes(options: DeployOptions) -> list[str]:
    if options.tls_cert is None or options.tls_key is None:
        return []
    out = [f"{_relative(options.tls_cert, options)}:{TLS_MOUNT}/tls.crt:ro", f"{_relative(options.tls_key, options)}:{TLS_MOUNT}/tls.key:ro"]
    if options.tls_client_ca is not None:
        out.append(f"{_relative(options.tls_client_ca, options)}:{TLS_MOUNT}/ca.crt:ro")
    return out


def compose_file(info: DeployedRepository, options: DeployOptions, image: str, build: bool) -> dict[str, Any]:
    services: dict[str, Any] = {}
    names = [f"triton-{i}" for i in range(options.replicas)]
    for i, name in enumerate(names):
        http, grpc, metrics = replica_ports(i)
        svc: dict[str, Any] = {"image": image}
        if build:  # every replica names the build: compose builds the image once (layer cache) and never pulls it
            svc["build"] = {"context": ".", "dockerfile": "Dockerfile"}
        svc.update({
            "command": _command(info, options),
            "ports": [f"{options.host}:{http}:8000", f"{options.host}:{grpc}:8001", f"{options.host}:{metrics}:8002"],
            "volumes": [_repository_mount(info, options)] + _tls_volumes(options),
            **_HARDENING,
            "environment": {"PYTHONDONTWRITEBYTECODE": "1"},
            "shm_size": "1g",
            "ulimits": {"memlock": -1, "stack": 67108864},
            "healthcheck": {"test": ["CMD", "python3", "-c", _HEALTH], "interval": "5s", "timeout": "3s", "retries": 3, "start_period": "300s"},
            "stop_grace_period": "45s",
            "restart": "unless-stopped",
        })
        if options.admin_key:
            svc["env_file"] = ["admin-key.env"]
        if options.gpus:
            svc["deploy"] = {"resources": {"reservations": {"devices": [
                {"driver": "nvidia", "device_ids": [str(g) for g in options.gpus], "capabilities": ["gpu"]},
            ]}}}
        services[name] = svc
    services["prometheus"] = {
        "image": options.prometheus_image,
        "command": ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.retention.time=7d"],
        "ports": [f"{options.host}:9090:9090"],
        "volumes": ["./prometheus.yml:/etc/prometheus/prometheus.yml:ro"],
        "depends_on": {name: {"condition": "service_started"} for name in names},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "restart": "unless-stopped",
    }
    return {"name": options.name, "services": services}


def prometheus_config(options: DeployOptions) -> dict[str, Any]:
    targets = [f"triton-{i}:8002" for i in range(options.replicas)]
    return {
        "global": {"scrape_interval": "5s", "evaluation_interval": "15s"},
        "scrape_configs": [{
            "job_name": "triton",
            "metrics_path": "/metrics",
            "static_configs": [{"targets": targets, "labels": {"service": options.name}}],
        }],
    }


def render(info: DeployedRepository, options: DeployOptions, image: str, build: bool) -> dict[str, str]:
    host = "127.0.0.1" if options.host in ("0.0.0.0", "::") else options.host
    grpc_urls = " ".join(f"--url {host}:{replica_ports(i)[1]}" for i in range(options.replicas))
    header = (
        f"# Generated by sft-engine deploy compose for the models: {', '.join(m.name for m in info.models)}.\n"
        "#   docker compose up -d" + (" --build" if build else "") + "\n"
        f"#   sft-engine loadtest {grpc_urls} --model {info.models[0].name} --rate 100\n"
        f"# Prometheus: http://{host}:9090 (job 'triton')\n"
    )
    files = {
        "docker-compose.yml": header + dump_yaml([compose_file(info, options, image, build)]),
        "prometheus.yml": "# Scrapes every Triton replica of docker-compose.yml.\n" + dump_yaml([prometheus_config(options)]),
    }
    if options.admin_key:
        files["admin-key.env"] = (f"# The admin key of the model-repository API (header sft-engine-admin-key); keep it private.\n"
                                  f"{ADMIN_KEY_ENV}={options.admin_key}\n")
    return files
