"""Helpers shared by tests (importable as ``tests.helpers``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

LABELS = ["cat", "dog", "ship", "frog"]


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (relative names): 'byte-for-byte untouched' checks."""
    path = Path(path)
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def build_two_versions(tmp: Path, tiny_weights: Path, name: str, seed: int, **overrides: object) -> Path:
    """A repository holding two ONNX Runtime versions of a 4-class resnet18@32: ``tiny_weights``, then random weights of ``seed``."""
    import torch

    from sft_engine.build import build
    from sft_engine.build_config import BuildConfig
    from sft_engine.models import build_model, save_state_dict

    repo = tmp / "model_repository"
    torch.manual_seed(seed)
    other = tmp / "v2.safetensors"
    save_state_dict(build_model("resnet18", 4), other)
    for weights in (tiny_weights, other):
        build(BuildConfig(arch="resnet18", num_classes=4, weights=weights, input_size=32, max_batch_size=8, repository=repo,
                          name=name, engine="onnxruntime", labels=list(LABELS), parity_samples=4, **overrides))  # type: ignore[arg-type]
    return repo


def rollout_second_version(repo: Path, name: str):  # -> sft_engine.ops.rollout.runner.RolloutResult
    """Serve version 1 of ``name`` on a real server (explicit mode), then roll out version 2 over it."""
    from sft_engine.ops.model_control import ModelControl
    from sft_engine.ops.modelconfig import disk_config, override
    from sft_engine.ops.rollout.runner import RolloutPlan, rollout
    from sft_engine.server import ServerConfig, TritonServer

    with TritonServer(ServerConfig(repository=repo, http_port=0, grpc_port=0, metrics_port=0, model_control_mode="explicit")) as srv:
        with ModelControl(srv.http_url) as control:
            control.load(name, override(disk_config(repo, name), [1]))
            return rollout(RolloutPlan(repo, name, 2), control)
