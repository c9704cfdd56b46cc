"""OpenVINO engines (FP32 and bf16) built, served by a real tritonserver, and gated on accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sft_engine.build import build
from sft_engine.build_config import BuildConfig
from sft_engine.engines.cpu.isa import cpu_has_native_bf16
from sft_engine.errors import ParityError
from sft_engine.models import build_model, load_weights
from sft_engine.repository.manifest import read_manifest
from sft_engine.server import ServerConfig, TritonServer
from tests.helpers import LABELS, rollout_second_version, tree_digest

pytestmark = pytest.mark.integration

needs_bf16 = pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")


def _cfg(weights, repo, **kw) -> BuildConfig:
    base = dict(arch="resnet18", num_classes=4, weights=weights, input_size=32, max_batch_size=8, repository=repo,
                name="ov", engine="openvino", labels=list(LABELS), parity_samples=8)
    return BuildConfig().merged({**base, **kw}, "flags")


@pytest.fixture(scope="module")
def repo(tiny_weights, tmp_path_factory):
    repo = tmp_path_factory.mktemp("openvino") / "model_repository"
    build(_cfg(tiny_weights, repo, precision="fp32"))
    if cpu_has_native_bf16():
        build(_cfg(tiny_weights, repo, precision="bf16", name="ov_bf16"))
    return repo


@pytest.fixture(scope="module")
def server(repo):
    with TritonServer(ServerConfig(repository=repo, http_port=0, grpc_port=0, metrics_port=0)) as srv:
        yield srv


def _served(server, x, name):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    try:
        return client.infer(name, [inp]).as_numpy("logits")
    finally:
        client.close()


def _eager(weights, x):
    model = load_weights(build_model("resnet18", 4), weights).eval()
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def test_fp32_openvino_served_matches_eager(server, repo, tiny_weights):
    version_dir = repo / "ov" / "1"
    manifest = read_manifest(version_dir).to_dict()
    assert manifest["engine"] == "openvino" and manifest["engine_details"]["precision"] == "fp32"
    assert {"model.xml", "model.bin", "engine.json", "model.py"} <= {p.name for p in version_dir.iterdir()}
    x = np.random.default_rng(3).standard_normal((5, 3, 32, 32)).astype(np.float32)
    got = _served(server, x, "ov")
    assert np.abs(got - _eager(tiny_weights, x)).max() <= manifest["parity"]["allowed_abs_diff"]


@needs_bf16
def test_bf16_openvino_served_within_its_gate(server, repo, tiny_weights):
    manifest = read_manifest(repo / "ov_bf16" / "1").to_dict()
    assert manifest["engine_details"]["precision"] == "bf16"
    parity = manifest["parity"]
    assert parity["passed"] and parity["top1_agreement"] >= 0.995
    x = np.random.default_rng(4).standard_normal((6, 3, 32, 32)).astype(np.float32)
    got, ref = _served(server, x, "ov_bf16"), _eager(tiny_weights, x)
    # really reduced precision (an FP32 engine would match to ~1e-5), yet within the bf16 gate
    assert 1e-4 < np.abs(got - ref).max() <= parity["allowed_abs_diff"]


@needs_bf16
def test_bf16_failing_its_gate_publishes_nothing(tiny_weights, tmp_path):
    repo = tmp_path / "repo"
    build(_cfg(tiny_weights, repo, precision="fp32"))
    before = tree_digest(repo)
    # the user's tolerance is kept by the bf16 gate: bf16 cannot match logits to 1e-6
    with pytest.raises(ParityError, match="openvino-bf16"):
        build(_cfg(tiny_weights, repo, precision="bf16", parity_atol=1e-6, parity_rtol=0.0))
    assert tree_digest(repo) == before


@needs_bf16
def test_rollout_of_a_bf16_rebuild_over_fp32_passes_the_parity_check(tiny_weights, tmp_path):
    """Same weights, bf16 engine over an FP32 one: the check applies the bf16 version's recorded gate."""
    from sft_engine.ops.rollout.runner import SWITCHED

    repo = tmp_path / "model_repository"
    build(_cfg(tiny_weights, repo, engine="onnxruntime", precision="fp32", name="roll"))
    build(_cfg(tiny_weights, repo, precision="bf16", name="roll"))
    result = rollout_second_version(repo, "roll")
    assert result.outcome == SWITCHED, result.reason
    check = result.check
    assert check is not None and check.passed and check.mode == "parity"
    assert check.max_abs_diff > 1e-4  # the versions really differ in arithmetic
    assert check.allowed_abs_diff is not None and check.allowed_abs_diff > check.max_abs_diff
