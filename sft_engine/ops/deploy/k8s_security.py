"""What makes the Kubernetes manifests pass the Pod Security Standard "restricted", and who may reach the pods.

Triton's secure-deployment guidance, applied to what ``deploy k8s`` writes:

* the NGC image's non-root user (``triton-server``, uid 1000), no privilege escalation,
  every capability dropped, the runtime's default seccomp profile, a read-only root
  filesystem with memory-backed ``emptyDir`` volumes for ``/tmp`` and ``/dev/shm`` (the
  Python backend passes tensors through ``/dev/shm``: the 64 MB a container gets by
  default is too small), the model repository read-only, no service-account token;
* a ``NetworkPolicy`` admitting the inference ports (HTTP, gRPC) from pods of the same
  namespace and the metrics port from the monitoring namespace, nothing else;
* with explicit model control, the admin key in a ``Secret`` handed to the container
  as ``SFT_ENGINE_ADMIN_KEY``, which the restricted-API flags read as ``$(SFT_ENGINE_ADMIN_KEY)``;
* with a certificate Secret (``kubernetes.io/tls``: ``tls.crt``, ``tls.key``, and
  ``ca.crt`` for mutual TLS), gRPC over TLS with the Secret mounted read-only.
"""

from __future__ import annotations

from typing import Any

from sft_engine.ops.deploy.spec import TLS_MOUNT, DeployOptions
from sft_engine.triton.security import ADMIN_KEY_ENV

__all__ = [
    "UID", "KEY_REF", "pod_security_context", "container_security_context", "scratch_volumes", "secret_env", "tls_volume",
    "admin_key_secret", "admin_key_secret_name", "network_policy",
]

#: the NGC Triton image's non-root user (triton-server)
UID = 1000
#: where the restricted-API flags take the key from: Kubernetes expands $(VAR) in args from the container's env
KEY_REF = f"$({ADMIN_KEY_ENV})"


def pod_security_context() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID, "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
        "runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
    }


def scratch_volumes(options: DeployOptions) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts): memory-backed /dev/shm and /tmp, the only writable places of the container."""
    volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": options.shm_size}},
               {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": options.tmp_size}}]
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "tmp", "mountPath": "/tmp"}]
    return volumes, mounts


def admin_key_secret_name(options: DeployOptions) -> str:
    return f"{options.name}-admin-key"


def secret_env(options: DeployOptions) -> list[dict[str, Any]]:
    """The container's environment: no bytecode written next to model.py (read-only), and the admin key when there is one."""
    env: list[dict[str, Any]] = [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}]
    if options.admin_key:
        env.append({"name": ADMIN_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": admin_key_secret_name(options), "key": "admin-key"}}})
    return env


def tls_volume(options: DeployOptions) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts) of the certificate Secret, when one is given."""
    if not options.tls_secret:
        return [], []
    return ([{"name": "grpc-tls", "secret": {"secretName": options.tls_secret, "defaultMode": 0o440}}],
            [{"name": "grpc-tls", "mountPath": TLS_MOUNT, "readOnly": True}])


def admin_key_secret(options: DeployOptions, metadata: dict[str, Any]) -> dict[str, Any]:
    """The Secret holding the admin key (``stringData``: the API server stores it encoded)."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "Opaque", "stringData": {"admin-key": options.admin_key}}


def network_policy(options: DeployOptions, metadata: dict[str, Any], pod_labels: dict[str, str]) -> dict[str, Any]:
    """Inference ports from the namespace's pods; the metrics port from the monitoring namespace; nothing else."""
    selector = {k: v for k, v in pod_labels.items() if k != "app.kubernetes.io/managed-by"}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {}}],
                 "ports": [{"port": "http", "protocol": "TCP"}, {"port": "grpc", "protocol": "TCP"}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": options.monitoring_namespace}}}],
                 "ports": [{"port": "metrics", "protocol": "TCP"}]},
            ],
        },
    }
