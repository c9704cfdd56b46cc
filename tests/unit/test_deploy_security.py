"""Every manifest deploy writes passes the Pod Security Standard "restricted", field by field; keys and certificates stay out of them."""

from __future__ import annotations

import copy
import stat
from pathlib import Path

import pytest
import yaml

from sft_engine.cli import main
from sft_engine.errors import ConfigError
from sft_engine.ops.deploy.writer import deploy_compose, deploy_k8s
from sft_engine.ops.deploy.spec import DeployOptions
from tests.unit.test_ops_deploy import k8s_valid, load, make_repository

#: the restricted profile's volume types (Pod Security Standards, v1.latest)
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}


def restricted_violations(pod: dict, containers: list[dict]) -> list[str]:
    """The rules of the baseline and restricted profiles a pod breaks (empty: it passes), plus this project's own."""
    out: list[str] = []
    psc = pod.get("securityContext") or {}
    # baseline
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            out.append(f"pod.{key}")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"sysctl {sysctl.get('name')}")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("pod hostProcess")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            out.append(f"volume {volume['name']}: {sorted(kinds - RESTRICTED_VOLUME_TYPES)}")
    seccomp_pod = (psc.get("seccompProfile") or {}).get("type")
    if seccomp_pod not in (None, "RuntimeDefault", "Localhost"):
        out.append(f"pod seccomp {seccomp_pod}")
    for c in containers:
        name = c.get("name", "model")
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{name}: hostProcess")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            out.append(f"{name}: hostPort")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{name}: procMount")
        if (sc.get("seLinuxOptions") or {}).get("user") or (sc.get("seLinuxOptions") or {}).get("role"):
            out.append(f"{name}: seLinuxOptions")
        # restricted
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation must be false")
        if not (sc.get("runAsNonRoot") is True or (psc.get("runAsNonRoot") is True and sc.get("runAsNonRoot") is not False)):
            out.append(f"{name}: runAsNonRoot")
        if 0 in (sc.get("runAsUser"), psc.get("runAsUser")):
            out.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or seccomp_pod
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile {seccomp}")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: adds capabilities {caps.get('add')}")
        # this project's: Triton's image user, nothing writable but memory-backed scratch, the repository read-only
        if sc.get("runAsUser", psc.get("runAsUser")) != 1000:
            out.append(f"{name}: runAsUser must be 1000 (the image's triton-server)")
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{name}: readOnlyRootFilesystem")
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts") or []}
        for path in ("/tmp", "/dev/shm"):
            mount = mounts.get(path)
            if mount is None or (volumes[mount["name"]].get("emptyDir") or {}).get("medium") != "Memory":
                out.append(f"{name}: {path} must be a memory-backed emptyDir")
        for mount in mounts.values():
            if mount["mountPath"] not in ("/tmp", "/dev/shm") and not mount.get("readOnly"):
                out.append(f"{name}: {mount['mountPath']} must be read-only")
    return out


def _repo(tmp_path: Path) -> Path:
    return make_repository(tmp_path / "model_repository")


def _all_pods(out: Path) -> list[tuple[str, dict, list[dict]]]:
    deployment = load(out / "deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    predictor = load(out / "inferenceservice.yaml")["spec"]["predictor"]
    return [("deployment", pod, pod["containers"]), ("inferenceservice", predictor, [predictor["model"]])]


@pytest.mark.parametrize("extra", [
    {},
    {"model_control_mode": "explicit", "tls_secret": "grpc-cert", "tls_mutual": True},
    {"storage_uri": "s3://bucket/models", "gpus": (0,)},
], ids=["default", "explicit-tls", "s3-gpu"])
def test_every_k8s_pod_passes_the_restricted_profile(tmp_path, extra):
    out = tmp_path / "k8s"
    deploy_k8s(DeployOptions(repository=_repo(tmp_path), output=out, namespace="inference", **extra))
    for what, pod, containers in _all_pods(out):
        assert restricted_violations(pod, containers) == [], what
        assert pod["automountServiceAccountToken"] is False
        sizes = {v["name"]: v["emptyDir"]["sizeLimit"] for v in pod["volumes"] if "emptyDir" in v}
        assert sizes == {"dshm": "1Gi", "tmp": "256Mi"}  # /dev/shm far above Docker's 64 MB: the Python backend's tensors
    deployment = load(out / "deployment.yaml")
    k8s_valid(deployment, "V1Deployment")  # the schema check holds with the security fields
    predictor = load(out / "inferenceservice.yaml")["spec"]["predictor"]
    k8s_valid(predictor["securityContext"], "V1PodSecurityContext")
    k8s_valid(predictor["model"]["securityContext"], "V1SecurityContext")
    for volume in predictor["volumes"]:
        k8s_valid(volume, "V1Volume")
    assert "--disable-auto-complete-config" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def test_the_checker_finds_what_a_pod_lacks(tmp_path):
    out = tmp_path / "k8s"
    deploy_k8s(DeployOptions(repository=_repo(tmp_path), output=out, storage_uri="pvc://models"))
    _, pod, containers = _all_pods(out)[0]
    for breaks, expected in [
        (lambda p, c: c.pop("securityContext"), "allowPrivilegeEscalation"),
        (lambda p, c: c["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "adds capabilities"),
        (lambda p, c: c["securityContext"].update(readOnlyRootFilesystem=False), "readOnlyRootFilesystem"),
        (lambda p, c: c["securityContext"].update(runAsUser=0), "runAsUser 0"),
        (lambda p, c: p["volumes"].append({"name": "host", "hostPath": {"path": "/"}}), "hostPath"),
        (lambda p, c: p["volumes"][1]["emptyDir"].pop("medium"), "/tmp must be a memory-backed"),
        (lambda p, c: c["volumeMounts"][-1].pop("readOnly"), "/models must be read-only"),
    ]:
        p = copy.deepcopy(pod)
        breaks(p, p["containers"][0])
        assert any(expected in v for v in restricted_violations(p, p["containers"])), expected


def test_network_policy_admits_inference_from_the_namespace_and_metrics_from_monitoring(tmp_path):
    out = tmp_path / "k8s"
    deploy_k8s(DeployOptions(repository=_repo(tmp_path), output=out, namespace="inference", monitoring_namespace="observability"))
    policy = load(out / "networkpolicy.yaml")
    k8s_valid(policy, "V1NetworkPolicy")
    pod_labels = load(out / "deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    inference, metrics = policy["spec"]["ingress"]
    assert inference == {"from": [{"podSelector": {}}], "ports": [{"port": "http", "protocol": "TCP"}, {"port": "grpc", "protocol": "TCP"}]}
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}]
    assert metrics["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert "networkpolicy.yaml" in load(out / "kustomization.yaml")["resources"]


def test_explicit_mode_puts_the_admin_key_in_a_secret_and_never_in_the_manifests(tmp_path):
    out = tmp_path / "k8s"
    key_file = tmp_path / "admin.key"
    repo = _repo(tmp_path)
    deploy_k8s(DeployOptions(repository=repo, output=out, model_control_mode="explicit", admin_key_file=key_file,
                             tls_secret="grpc-cert"))
    key = key_file.read_text().strip()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    secret = load(out / "admin-key-secret.yaml")
    k8s_valid(secret, "V1Secret")
    assert secret["stringData"] == {"admin-key": key}
    assert stat.S_IMODE((out / "admin-key-secret.yaml").stat().st_mode) == 0o600
    assert "admin-key-secret.yaml" in load(out / "kustomization.yaml")["resources"]
    for name in ("deployment.yaml", "inferenceservice.yaml", "service.yaml", "networkpolicy.yaml", "kustomization.yaml"):
        assert key not in (out / name).read_text(), name
    container = load(out / "deployment.yaml")["spec"]["template"]["spec"]["containers"][0]
    ref = "$(SFT_ENGINE_ADMIN_KEY)"
    assert {"name": "SFT_ENGINE_ADMIN_KEY", "valueFrom": {"secretKeyRef": {"name": "sft-engine-admin-key", "key": "admin-key"}}} in container["env"]
    group = "model-repository,shared-memory,statistics,trace,logging"
    assert f"--http-restricted-api={group}:sft-engine-admin-key={ref}" in container["args"]
    assert f"--grpc-restricted-protocol={group}:sft-engine-admin-key={ref}" in container["args"]
    # the certificate Secret, mounted read-only, named by Triton's gRPC SSL flags
    assert {"name": "grpc-tls", "mountPath": "/etc/sft-engine/tls", "readOnly": True} in container["volumeMounts"]
    assert {"--grpc-use-ssl=true", "--grpc-server-cert=/etc/sft-engine/tls/tls.crt", "--grpc-server-key=/etc/sft-engine/tls/tls.key"} <= set(container["args"])
    model = load(out / "inferenceservice.yaml")["spec"]["predictor"]["model"]
    assert f"--http-restricted-api={group}:sft-engine-admin-key={ref}" in model["args"]
    # the key file is kept: a second deploy writes the same key
    deploy_k8s(DeployOptions(repository=repo, output=out, model_control_mode="explicit", admin_key_file=key_file))
    assert load(out / "admin-key-secret.yaml")["stringData"] == {"admin-key": key}


def test_default_mode_needs_no_key(tmp_path):
    out = tmp_path / "k8s"
    deploy_k8s(DeployOptions(repository=_repo(tmp_path), output=out))
    assert not (out / "admin-key-secret.yaml").exists() and not (out / "admin-key").exists()
    container = load(out / "deployment.yaml")["spec"]["template"]["spec"]["containers"][0]
    assert not any("restricted" in a for a in container["args"])


def test_compose_services_are_hardened_and_read_the_key_from_an_env_file(tmp_path):
    out = tmp_path / "compose"
    cert, key_pem, ca = (tmp_path / n for n in ("server.crt", "server.key", "ca.crt"))
    for f in (cert, key_pem, ca):
        f.write_text("PEM\n")
    deploy_compose(DeployOptions(repository=_repo(tmp_path), output=out, replicas=2, model_control_mode="explicit",
                                 tls_cert=cert, tls_key=key_pem, tls_client_ca=ca))
    compose_text = (out / "docker-compose.yml").read_text()
    services = yaml.safe_load(compose_text)["services"]
    key = (out / "admin-key").read_text().strip()
    assert key not in compose_text
    env = (out / "admin-key.env").read_text()
    assert f"SFT_ENGINE_ADMIN_KEY={key}\n" in env and stat.S_IMODE((out / "admin-key.env").stat().st_mode) == 0o600
    for name in ("triton-0", "triton-1"):
        svc = services[name]
        assert svc["user"] == "1000:1000" and svc["read_only"] is True
        assert svc["cap_drop"] == ["ALL"] and svc["security_opt"] == ["no-new-privileges:true"]
        assert any(t.startswith("/tmp:") for t in svc["tmpfs"]) and svc["shm_size"] == "1g"
        assert svc["env_file"] == ["admin-key.env"]
        assert all(v.endswith(":ro") for v in svc["volumes"])
        assert "../server.crt:/etc/sft-engine/tls/tls.crt:ro" in svc["volumes"]
        command = svc["command"]
        assert command[:2] == ["sh", "-c"] and command[3:5] == ["sh", "tritonserver"]
        assert '"$$SFT_ENGINE_ADMIN_KEY"' in command[2] and "--grpc-restricted-protocol=" in command[2]
        assert "--grpc-use-ssl-mutual=true" in command and "--grpc-root-cert=/etc/sft-engine/tls/ca.crt" in command
        assert "--disable-auto-complete-config" in command
    assert services["prometheus"]["cap_drop"] == ["ALL"]


def test_deploy_cli_refuses_half_a_tls_setup(tmp_path, capsys):
    repo = _repo(tmp_path)
    code = main(["deploy", "compose", "--repository", str(repo), "--output", str(tmp_path / "c"), "--tls-cert", str(repo)])
    assert code == 2 and "--tls-cert and --tls-key" in capsys.readouterr().err
    code = main(["deploy", "k8s", "--repository", str(repo), "--output", str(tmp_path / "k"), "--tls-mutual"])
    assert code == 2 and "--tls-mutual needs --tls-secret" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="is not a file"):
        deploy_compose(DeployOptions(repository=repo, output=tmp_path / "c", tls_cert=tmp_path / "no.crt", tls_key=tmp_path / "no.key"))
