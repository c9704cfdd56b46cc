"""Kubernetes manifests for serving a model repository with the NGC Triton container.

Two ways to run it, pick one:

* ``inferenceservice.yaml`` - a KServe ``InferenceService`` with the Triton runtime
  (``modelFormat: triton``, open inference protocol v2), for clusters that run KServe;
* ``deployment.yaml`` + ``service.yaml`` + ``hpa.yaml`` (and ``kustomization.yaml``) -
  plain Kubernetes, autoscaled by a HorizontalPodAutoscaler on a metric Triton exports
  (average queue time per request, or pending requests), made available to the HPA by
  prometheus-adapter with the rule in ``prometheus-adapter-rules.yaml``.

Why these choices: readiness is Triton's ``/v2/health/ready`` with strict readiness
plus one health inference per model (an exec probe, ``triton.health.PROBE_SCRIPT``),
so a pod receives traffic only once every model has loaded (and warmed up), and stops
receiving it while a model fails every request - Triton 24.10's model readiness stays
READY after a Python-backend stub died (docs/operations.md, "Faults"); liveness
is ``/v2/health/live`` behind a startup probe, so a slow model load is not mistaken
for a hung server; rolling updates add a pod before removing one (``maxUnavailable:
0``) and the grace period outlasts Triton's exit timeout, so requests in flight finish.
Queue time is the autoscaling signal because it grows as soon as a replica is past
its capacity, before latency SLOs break, and falls back when a replica is added;
CPU utilisation says little for a server whose work is on an accelerator or batched.
"""

from __future__ import annotations

from typing import Any

from sft_engine.ops.deploy import k8s_security as sec
from sft_engine.ops.deploy.spec import DeployOptions, DeployedRepository, dump_yaml, triton_args
from sft_engine.triton.health import PROBE_SCRIPT

__all__ = ["readiness_command", "render", "labels", "deployment", "service", "hpa", "inference_service", "adapter_rules", "kustomization", "METRIC_NAMES"]

#: the custom metrics prometheus-adapter derives from Triton's, as the HPA asks for them
METRIC_NAMES = {"queue_time": "triton_queue_time_us_per_request", "pending_requests": "triton_pending_requests"}
_MOUNT = "/models"


def labels(options: DeployOptions) -> dict[str, str]:
    return {"app.kubernetes.io/name": options.name, "app.kubernetes.io/component": "triton", "app.kubernetes.io/managed-by": "sft-engine"}


def _metadata(options: DeployOptions, name: str | None = None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name or options.name}
    if options.namespace:
        meta["namespace"] = options.namespace
    meta["labels"] = labels(options)
    meta.update(extra)
    return meta


def _resources(options: DeployOptions) -> dict[str, Any]:
    requests = {"cpu": options.cpu, "memory": options.memory}
    limits: dict[str, Any] = {"memory": options.memory}
    if options.gpus:
        limits["nvidia.com/gpu"] = str(len(options.gpus))
    return {"requests": requests, "limits": limits}


def readiness_command(models: list[str]) -> list[str]:
    """The exec readiness probe: server ready and every model answering a health inference."""
    return ["python3", "-c", PROBE_SCRIPT, "8000", *models]


def _probes(models: list[str]) -> dict[str, Any]:
    def get(path: str) -> dict[str, Any]:
        return {"path": path, "port": "http"}

    return {
        # a model load (TensorRT engines, warmup) may take minutes: up to 10 minutes to start
        "startupProbe": {"httpGet": get("/v2/health/live"), "periodSeconds": 5, "failureThreshold": 120},
        "livenessProbe": {"httpGet": get("/v2/health/live"), "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3},
        "readinessProbe": {"exec": {"command": readiness_command(models)}, "periodSeconds": 5, "timeoutSeconds": 4, "failureThreshold": 2},
    }


def _repository_source(options: DeployOptions) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """(--model-repository value, volumes, volume mounts) for the storage URI."""
    uri = options.default_storage_uri
    volumes, mounts = sec.scratch_volumes(options)
    tls_volumes, tls_mounts = sec.tls_volume(options)
    volumes += tls_volumes
    mounts += tls_mounts
    if uri.startswith("pvc://"):
        claim, _, sub = uri[len("pvc://"):].partition("/")
        volumes.append({"name": "model-repository", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mount: dict[str, Any] = {"name": "model-repository", "mountPath": _MOUNT, "readOnly": True}
        if sub.strip("/"):
            mount["subPath"] = sub.strip("/")
        mounts.append(mount)
        return _MOUNT, volumes, mounts
    return uri, volumes, mounts  # s3://, gs://, as://: Triton reads the cloud repository itself


def deployment(info: DeployedRepository, options: DeployOptions, image: str) -> dict[str, Any]:
    repository, volumes, mounts = _repository_source(options)
    container: dict[str, Any] = {
        "name": "triton",
        "image": image,
        "args": triton_args(info, options, repository, sec.KEY_REF if options.admin_key else None),
        "env": sec.secret_env(options),
        "ports": [
            {"name": "http", "containerPort": 8000, "protocol": "TCP"},
            {"name": "grpc", "containerPort": 8001, "protocol": "TCP"},
            {"name": "metrics", "containerPort": 8002, "protocol": "TCP"},
        ],
        **_probes([m.name for m in info.models]),
        "resources": _resources(options),
        "volumeMounts": mounts,
        "securityContext": sec.container_security_context(),
    }
    pod_labels = labels(options)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(options),
        "spec": {
            "replicas": options.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": options.name, "app.kubernetes.io/component": "triton"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    # for Prometheus' usual pod discovery (kubernetes_sd_configs, role: pod)
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "8002", "prometheus.io/path": "/metrics"},
                },
                "spec": {
                    "terminationGracePeriodSeconds": 45,
                    "automountServiceAccountToken": False,
                    "securityContext": sec.pod_security_context(),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def service(options: DeployOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(options),
        "spec": {
            "type": "ClusterIP",
            "selector": {"app.kubernetes.io/name": options.name, "app.kubernetes.io/component": "triton"},
            "ports": [
                {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": 8001, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "metrics", "port": 8002, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def hpa(options: DeployOptions) -> dict[str, Any]:
    if options.scale_metric == "queue_time":
        target = str(options.target_queue_time_us)
    else:
        target = str(options.target_pending_requests)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(options),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": options.name},
            "minReplicas": options.min_replicas,
            "maxReplicas": options.max_replicas,
            "metrics": [{
                "type": "Pods",
                "pods": {
                    "metric": {"name": METRIC_NAMES[options.scale_metric]},
                    "target": {"type": "AverageValue", "averageValue": target},
                },
            }],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 30, "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]},
                "scaleDown": {"stabilizationWindowSeconds": 300, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}]},
            },
        },
    }


def inference_service(info: DeployedRepository, options: DeployOptions, image: str) -> dict[str, Any]:
    """KServe v1beta1 with the Triton runtime; the image is set only when it is not the runtime's own.

    The predictor is a pod spec: the same security contexts, scratch volumes and Secrets as
    the Deployment (KServe mounts the model itself at /mnt/models, read-only).
    """
    volumes, mounts = sec.scratch_volumes(options)
    tls_volumes, tls_mounts = sec.tls_volume(options)
    model: dict[str, Any] = {
        "modelFormat": {"name": "triton"},
        "protocolVersion": "v2",
        "storageUri": options.default_storage_uri,
        "args": [a for a in triton_args(info, options, "/mnt/models", sec.KEY_REF if options.admin_key else None)[1:]
                 if not a.startswith(("--model-repository", "--http-port", "--grpc-port"))],
        "env": sec.secret_env(options),
        "resources": _resources(options),
        "securityContext": sec.container_security_context(),
        "volumeMounts": mounts + tls_mounts,
    }
    tag = options.triton_tag or info.triton_tag
    if image.startswith("nvcr.io/nvidia/tritonserver:"):
        model["runtimeVersion"] = f"{tag}-py3"
    else:
        model["image"] = image
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": _metadata(options),
        "spec": {"predictor": {
            "minReplicas": options.min_replicas, "maxReplicas": options.max_replicas,
            "automountServiceAccountToken": False, "securityContext": sec.pod_security_context(),
            "volumes": volumes + tls_volumes, "model": model,
        }},
    }


def adapter_rules(options: DeployOptions) -> dict[str, Any]:
    """prometheus-adapter ``rules.custom`` (Helm values) deriving the HPA's metrics from Triton's."""
    selector = '{namespace!="",pod!=""}'
    resources = {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}}
    return {
        "rules": {
            "custom": [
                {
                    "seriesQuery": f"nv_inference_queue_duration_us{selector}",
                    "resources": resources,
                    "name": {"matches": "^nv_inference_queue_duration_us$", "as": METRIC_NAMES["queue_time"]},
                    # microseconds spent queued per successful request, over the last minute, per pod
                    "metricsQuery": (
                        "sum by (<<.GroupBy>>) (rate(nv_inference_queue_duration_us{<<.LabelMatchers>>}[1m]))"
                        " / clamp_min(sum by (<<.GroupBy>>) (rate(nv_inference_request_success{<<.LabelMatchers>>}[1m])), 1e-9)"
                    ),
                },
                {
                    "seriesQuery": f"nv_inference_pending_request_count{selector}",
                    "resources": resources,
                    "name": {"matches": "^nv_inference_pending_request_count$", "as": METRIC_NAMES["pending_requests"]},
                    "metricsQuery": "sum by (<<.GroupBy>>) (avg_over_time(nv_inference_pending_request_count{<<.LabelMatchers>>}[1m]))",
                },
            ],
        },
    }


def kustomization(options: DeployOptions) -> dict[str, Any]:
    out: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["deployment.yaml", "service.yaml", "hpa.yaml", "networkpolicy.yaml"]
                     + (["admin-key-secret.yaml"] if options.admin_key else []),
    }
    if options.namespace:
        out["namespace"] = options.namespace
    return out


def render(info: DeployedRepository, options: DeployOptions, image: str) -> dict[str, str]:
    """File name -> YAML text."""
    header = (
        f"# Generated by sft-engine deploy k8s for the models: {', '.join(m.name for m in info.models)}.\n"
        f"# Repository: {options.default_storage_uri} (copy the model repository there before applying).\n"
    )
    rules_header = (
        "# prometheus-adapter Helm values (rules.custom): exposes Triton's queue time and pending requests as\n"
        f"# custom metrics {METRIC_NAMES['queue_time']} and {METRIC_NAMES['pending_requests']} for hpa.yaml.\n"
        "# Assumes Prometheus scrapes the pods (annotations in deployment.yaml) and labels series with\n"
        "# 'namespace' and 'pod'; adapt the label names to your scrape config's relabeling.\n"
        "#   helm upgrade --install prometheus-adapter prometheus-community/prometheus-adapter -f prometheus-adapter-rules.yaml\n"
    )
    files = {
        "inferenceservice.yaml": header + dump_yaml([inference_service(info, options, image)]),
        "deployment.yaml": header + dump_yaml([deployment(info, options, image)]),
        "service.yaml": header + dump_yaml([service(options)]),
        "hpa.yaml": header + dump_yaml([hpa(options)]),
        "kustomization.yaml": dump_yaml([kustomization(options)]),
        "prometheus-adapter-rules.yaml": rules_header + dump_yaml([adapter_rules(options)]),
        "networkpolicy.yaml": header + dump_yaml([sec.network_policy(options, _metadata(options), labels(options))]),
    }
    if options.admin_key:
        files["admin-key-secret.yaml"] = (
            "# The admin key of the model-repository API (header sft-engine-admin-key). Keep this file out of version control;\n"
            "# rotate: write a new key, kubectl apply -f admin-key-secret.yaml, kubectl rollout restart deployment/" + options.name + "\n"
            + dump_yaml([sec.admin_key_secret(options, _metadata(options, sec.admin_key_secret_name(options)))]))
    return files
