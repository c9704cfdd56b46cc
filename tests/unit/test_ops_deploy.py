"""deploy k8s / compose: manifests validated against the Kubernetes schemas of the ``kubernetes`` client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sft_engine.cli import main
from sft_engine.errors import ConfigError, RepositoryError
from sft_engine.ops.deploy.writer import deploy_compose, deploy_k8s
from sft_engine.ops.deploy.spec import DeployOptions, scan_repository
from sft_engine.ops.deploy.k8s import METRIC_NAMES
from sft_engine.repository.config import InstanceGroupSpec, ModelConfigSpec, TensorSpec, to_pbtxt


def make_repository(root: Path, name: str = "tiny", gpus: tuple[int, ...] = (), engine: str = "onnxruntime", tag: str | None = None) -> Path:
    """A repository as a build leaves it (config, version dir, engine.json, manifest), without building."""
    group = InstanceGroupSpec(kind="KIND_GPU", count=1, gpus=gpus) if gpus else InstanceGroupSpec()
    spec = ModelConfigSpec(name=name, inputs=(TensorSpec("input", "FP32", (3, 32, 32)),), outputs=(TensorSpec("logits", "FP32", (4,)),),
                           max_batch_size=8, backend="python", instance_groups=(group,))
    model = root / name
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(to_pbtxt(spec))
    (model / "1" / "model.py").write_text("# serving model\n")
    (model / "1" / "engine.json").write_text(json.dumps({"engine": engine, "file": "model.onnx"}))
    manifest = {"tools": {"numpy": "1.26.4", "onnxruntime": "1.20.1", "openvino": "2026.4.1", "torch": "2.5.1+cpu"}}
    if tag:
        manifest["compatibility"] = {"triton_container_tag": tag}
    (model / "1" / "build_manifest.json").write_text(json.dumps(manifest))
    return root


def k8s_valid(doc: dict, kind: str) -> None:
    """Deserialize into the client's typed model and back: required fields, types and key names must all hold.

    A misspelled or unknown key is dropped by the model, so the round trip differs.
    """
    from kubernetes.client import ApiClient

    api = ApiClient()
    try:  # kubernetes >= 35: (text, type, content type)
        obj = api.deserialize(json.dumps(doc), kind, "application/json")
    except TypeError:  # older clients read a response object
        obj = api.deserialize(type("Response", (), {"data": json.dumps(doc)})(), kind)
    assert api.sanitize_for_serialization(obj) == doc


def load(path: Path) -> dict:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 1
    return docs[0]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repository(tmp_path / "model_repository")


def test_k8s_manifests_validate_against_the_kubernetes_schemas(repo, tmp_path):
    out = tmp_path / "k8s"
    info, files = deploy_k8s(DeployOptions(repository=repo, output=out, name="vision", namespace="inference",
                                           storage_uri="pvc://models/prod", max_replicas=6))
    assert {p.name for p in files} == {"inferenceservice.yaml", "deployment.yaml", "service.yaml", "hpa.yaml", "kustomization.yaml",
                                       "prometheus-adapter-rules.yaml", "networkpolicy.yaml", "Dockerfile"}
    deployment, service, hpa = load(out / "deployment.yaml"), load(out / "service.yaml"), load(out / "hpa.yaml")
    k8s_valid(deployment, "V1Deployment")
    k8s_valid(service, "V1Service")
    k8s_valid(hpa, "V2HorizontalPodAutoscaler")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    probe = container["readinessProbe"]["exec"]["command"]  # ready and a health inference per model (docs/operations.md, Faults)
    assert probe[:2] == ["python3", "-c"] and "/v2/health/ready" in probe[2] and "/infer" in probe[2]
    assert probe[3] == "8000" and probe[4:] == [m.name for m in info.models] and probe[4:]
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert "--model-repository=/models" in container["args"] and "--strict-readiness=true" in container["args"]
    assert {"name": "model-repository", "mountPath": "/models", "readOnly": True, "subPath": "prod"} in container["volumeMounts"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert all(d["metadata"]["namespace"] == "inference" for d in (deployment, service, hpa))
    # the Service selects the Deployment's pods, the HPA scales it on the adapter's metric
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vision"}
    assert hpa["spec"]["maxReplicas"] == 6
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    rules = load(out / "prometheus-adapter-rules.yaml")["rules"]["custom"]
    assert metric == METRIC_NAMES["queue_time"] and metric in [r["name"]["as"] for r in rules]
    assert any("nv_inference_queue_duration_us" in r["metricsQuery"] and "nv_inference_request_success" in r["metricsQuery"] for r in rules)
    assert load(out / "kustomization.yaml")["resources"] == ["deployment.yaml", "service.yaml", "hpa.yaml", "networkpolicy.yaml"]
    # the image is the Dockerfile's: the Python backend needs the recorded onnxruntime
    assert container["image"] == "vision-triton:24.10"
    dockerfile = (out / "Dockerfile").read_text()
    assert "FROM nvcr.io/nvidia/tritonserver:24.10-py3" in dockerfile and '"onnxruntime==1.20.1"' in dockerfile
    assert [m.name for m in info.models] == ["tiny"]


def test_kserve_inference_service_uses_the_triton_runtime(repo, tmp_path):
    out = tmp_path / "k8s"
    deploy_k8s(DeployOptions(repository=repo, output=out, storage_uri="s3://bucket/models", image="registry.example/triton:1"))
    isvc = load(out / "inferenceservice.yaml")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "triton"} and model["protocolVersion"] == "v2"
    assert model["storageUri"] == "s3://bucket/models" and model["image"] == "registry.example/triton:1"
    assert not any(a.startswith(("--model-repository", "--http-port", "--grpc-port")) for a in model["args"])
    k8s_valid(isvc["metadata"], "V1ObjectMeta")  # the core types inside the custom resource follow the core schemas
    k8s_valid(model["resources"], "V1ResourceRequirements")
    # a cloud storage URI is handed to Triton, no volume for it
    deployment = load(out / "deployment.yaml")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--model-repository=s3://bucket/models" in container["args"]
    assert [v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]] == ["dshm", "tmp"]
    assert not (out / "Dockerfile").exists()  # an explicit image is used as given


def test_gpus_become_gpu_resources_and_gpu_models_are_checked(tmp_path):
    repo = make_repository(tmp_path / "gpu_repository", gpus=(0, 1), tag="24.08")
    out = tmp_path / "k8s"
    deploy_k8s(DeployOptions(repository=repo, output=out, gpus=(0, 1), scale_metric="pending_requests", target_pending_requests=16))
    deployment, hpa = load(out / "deployment.yaml"), load(out / "hpa.yaml")
    k8s_valid(deployment, "V1Deployment")
    k8s_valid(hpa, "V2HorizontalPodAutoscaler")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "--allow-gpu-metrics=true" in container["args"]
    assert container["image"].endswith(":24.08")  # the tag the GPU build recorded
    assert hpa["spec"]["metrics"][0]["pods"] == {"metric": {"name": METRIC_NAMES["pending_requests"]},
                                                 "target": {"type": "AverageValue", "averageValue": "16"}}
    with pytest.raises(ConfigError, match="no --gpus"):
        deploy_k8s(DeployOptions(repository=repo, output=out))
    with pytest.raises(ConfigError, match=r"GPU\(s\) \[1\].*only 1 GPU"):
        deploy_k8s(DeployOptions(repository=repo, output=out, gpus=(3,)))


def test_compose_serves_replicas_on_loopback_scraped_by_prometheus(repo, tmp_path):
    out = tmp_path / "compose"
    deploy_compose(DeployOptions(repository=repo, output=out, replicas=2, gpus=(0,)))
    compose = load(out / "docker-compose.yml")
    services = compose["services"]
    assert set(services) == {"triton-0", "triton-1", "prometheus"}
    for i in range(2):
        svc = services[f"triton-{i}"]
        assert svc["ports"] == [f"127.0.0.1:{8000 + 10 * i}:8000", f"127.0.0.1:{8001 + 10 * i}:8001", f"127.0.0.1:{8002 + 10 * i}:8002"]
        assert svc["volumes"] == ["../model_repository:/models:ro"]  # relative to the compose file
        assert svc["command"][0] == "tritonserver" and "--model-repository=/models" in svc["command"]
        assert "/v2/health/ready" in " ".join(svc["healthcheck"]["test"])
        assert svc["deploy"]["resources"]["reservations"]["devices"] == [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]
        assert svc["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    prom = load(out / "prometheus.yml")
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == ["triton-0:8002", "triton-1:8002"]
    assert services["prometheus"]["volumes"] == ["./prometheus.yml:/etc/prometheus/prometheus.yml:ro"]
    assert services["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]


def test_torchscript_models_need_torch_in_the_image(tmp_path):
    repo = make_repository(tmp_path / "ts_repository", engine="torchscript")
    info = scan_repository(repo)
    assert info.requirements == ["numpy==1.26.4", "torch==2.5.1"]


def test_openvino_models_need_openvino_in_the_image(tmp_path):
    repo = make_repository(tmp_path / "ov_repository", engine="openvino")
    info = scan_repository(repo)
    assert info.requirements == ["numpy==1.26.4", "openvino==2026.4.1"]


def test_deploy_of_a_repository_without_models_exits_2(tmp_path, capsys):
    empty = tmp_path / "empty_repository"
    (empty / "not_a_model").mkdir(parents=True)
    for target in ("k8s", "compose"):
        code = main(["deploy", target, "--repository", str(empty), "--output", str(tmp_path / target)])
        err = capsys.readouterr().err
        assert code == 2
        assert "holds no models" in err and "sft-engine build" in err
        assert not (tmp_path / target).exists()
    with pytest.raises(RepositoryError, match="does not exist"):
        scan_repository(tmp_path / "missing")


def test_deploy_cli_writes_files_and_rejects_bad_input(repo, tmp_path, capsys):
    out = tmp_path / "k8s"
    assert main(["deploy", "k8s", "--repository", str(repo), "--output", str(out), "--gpus", "0"]) == 0  # CPU models run on GPU replicas too
    printed = capsys.readouterr().out
    assert f"wrote {out / 'deployment.yaml'}" in printed and "onnxruntime==1.20.1" in printed
    k8s_valid(load(out / "deployment.yaml"), "V1Deployment")
    code = main(["deploy", "k8s", "--repository", str(repo), "--output", str(out), "--name", "Bad_Name"])
    assert code == 2 and "not a valid Kubernetes name" in capsys.readouterr().err
    code = main(["deploy", "compose", "--repository", str(repo), "--output", str(out), "--gpus", "0,0"])
    assert code == 2 and "distinct" in capsys.readouterr().err


def test_image_models_are_deployed_with_pillow_on_cpu_instances_beside_a_gpu_engine(tmp_path):
    """The build's <name>_preprocess and <name>_image go everywhere the engine goes; preprocessing stays on CPU."""
    from sft_engine.build import publish_image_models
    from sft_engine.ops.deploy.spec import triton_args
    from sft_engine.serving import docker_commands_for as docker_commands
    from sft_engine.preprocess import Preprocessing
    from sft_engine.repository.image_models import ImageServing

    root = make_repository(tmp_path / "model_repository", gpus=(0,))
    engine = ModelConfigSpec(name="tiny", inputs=(TensorSpec("input", "FP32", (3, 32, 32)),), outputs=(TensorSpec("logits", "FP32", (4,), label_filename="labels.txt"),),
                             max_batch_size=8, platform="tensorrt_plan", instance_groups=(InstanceGroupSpec(kind="KIND_GPU", count=1, gpus=(0,)),),
                             parameters=tuple(Preprocessing(input_size=32).to_parameters().items()))
    publish_image_models(root, engine, ["a", "b", "c", "d"], ImageServing(), 1)
    info = scan_repository(root)
    kinds = {m.name: m.kind for m in info.models}
    assert kinds == {"tiny": "KIND_GPU", "tiny_preprocess": "KIND_CPU", "tiny_image": "KIND_CPU"}
    assert any(r.startswith("pillow==") for r in info.requirements), info.requirements
    options = DeployOptions(repository=root, output=tmp_path / "out", gpus=(0,), model_control_mode="explicit")
    args = triton_args(info, options, "/models")
    assert {"--load-model=tiny", "--load-model=tiny_preprocess", "--load-model=tiny_image"} <= set(args)
    _, files = deploy_compose(DeployOptions(repository=root, output=tmp_path / "compose", gpus=(0,)))
    dockerfile = next(p for p in files if p.name == "Dockerfile").read_text()
    assert "pillow==" in dockerfile and "FROM nvcr.io/nvidia/tritonserver:" in dockerfile
    printed = docker_commands(root, "24.10")
    assert printed.startswith("docker build -t sft-engine-triton:24.10 - <<'EOF'") and "pillow==" in printed
    assert printed.splitlines()[-1].startswith("docker run") and "sft-engine-triton:24.10 tritonserver" in printed


def test_deploy_a_repository_a_real_build_produced(tiny_weights, tmp_path):
    """Not a hand-made layout: what `sft-engine build` writes (engine.json, manifest, recorded config, labels)."""
    import importlib.metadata

    from sft_engine.build import build
    from sft_engine.build_config import BuildConfig

    repo = tmp_path / "model_repository"
    build(BuildConfig(arch="resnet18", num_classes=4, weights=tiny_weights, input_size=32, max_batch_size=8, repository=repo,
                      name="built", engine="onnxruntime", labels=["cat", "dog", "ship", "frog"], parity_samples=4))
    info = scan_repository(repo)
    assert sorted(m.name for m in info.models) == ["built", "built_image", "built_preprocess"]  # the engine and its image path
    assert f"onnxruntime=={importlib.metadata.version('onnxruntime')}" in info.requirements  # the version the build recorded
    out = tmp_path / "k8s"
    _, files = deploy_k8s(DeployOptions(repository=repo, output=out, storage_uri="pvc://models"))
    deployment = load(out / "deployment.yaml")
    k8s_valid(deployment, "V1Deployment")
    assert f'"onnxruntime=={importlib.metadata.version("onnxruntime")}"' in (out / "Dockerfile").read_text()
    compose_out = tmp_path / "compose"
    deploy_compose(DeployOptions(repository=repo, output=compose_out, replicas=1))
    assert set(load(compose_out / "docker-compose.yml")["services"]) == {"triton-0", "prometheus"}
