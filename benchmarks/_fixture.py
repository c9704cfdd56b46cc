"""The setup the serving benchmarks share: a random model, built, served on free ports.

Every serving benchmark measures something on top of the same three steps - seeded
random weights for an architecture, ``sft-engine build`` into a scratch repository,
an embedded tritonserver bound to loopback on ports the OS picks - so they are written
once here and the benchmarks differ only in what they measure. Random weights are
enough: throughput and latency do not depend on what the weights are, and a seed
keeps every run's model the same.

Run the benchmarks as scripts (``python benchmarks/bench_x.py``): the folder is then
first on ``sys.path`` and ``from _fixture import ...`` finds this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["random_weights", "build_random", "build_without_gate", "embedded_server"]


def random_weights(path: Path, arch: str = "resnet18", num_classes: int = 10, seed: int = 0, jitter: float = 0.0) -> Any:
    """Seeded random weights for ``arch`` saved at ``path`` (safetensors); returns the model, in eval mode.

    ``jitter``: add seeded noise of this scale to every parameter. A family's own init
    (zeroed heads, LayerScale near zero) can answer one class for every image; moved off
    it, labels vary from image to image, so agreement with eager measures something.
    """
    import torch

    from sft_engine.models import build_model, save_state_dict

    torch.manual_seed(seed)
    model = build_model(arch, num_classes).eval()
    if jitter:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * jitter)
    save_state_dict(model, path)
    return model


def build_random(repository: Path, weights: Path | None = None, *, arch: str = "resnet18", num_classes: int = 10, **settings: Any) -> Any:
    """``sft-engine build`` of ``weights`` (None: the build's own seeded random initialization) into
    ``repository``; ``settings`` are further BuildConfig fields (name, input size, engine, ...).
    Returns the BuildResult."""
    from sft_engine.build import build
    from sft_engine.build_config import BuildConfig

    return build(BuildConfig(arch=arch, num_classes=num_classes, weights=weights, allow_random_weights=weights is None,
                             repository=repository, **settings))


def build_without_gate(cfg: Any, **settings: Any) -> Any:
    """``sft-engine build`` of ``cfg`` (a BuildConfig) with every gate opened, for timing an engine its gate refused.

    A refused candidate is never timed by the build, so a benchmark that wants its speed
    (INT8 against a bf16 that narrowly failed) builds it again this way; ``settings``
    are further fields (name, repository, precision). Returns the BuildResult; never a
    choice to publish.
    """
    from sft_engine.build import build

    return build(cfg.merged({"parity_atol": 1e9, "parity_rtol": 1e9, "parity_min_top1_agreement": 1e-6,
                             "accuracy_max_drop": 100.0, **settings}, "flags"))


def embedded_server(repository: Path, **settings: Any) -> Any:
    """An embedded tritonserver for ``repository`` on free loopback ports (use it as a context manager);
    ``settings`` are further ServerConfig fields (e.g. ``model_control_mode="explicit"``)."""
    from sft_engine.server import ServerConfig, TritonServer

    return TritonServer(ServerConfig(repository=repository, http_port=0, grpc_port=0, metrics_port=0, **settings))
