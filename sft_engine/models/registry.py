"""Registry of the torchvision classifiers sft-engine can fine-tune, build and serve.

Modelled on torchvision's own ``register_model``/``get_model``: one table, names
refused twice, and each entry knows where its classification head lives so the
head can be replaced for N classes (and excluded from L2-SP).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from sft_engine.errors import ModelError

__all__ = ["ArchSpec", "register_arch", "get_arch", "list_archs", "build_model", "head_prefix"]

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchSpec:
    """How to build one architecture and where its classification head is.

    ``head`` is the dotted path of the final ``nn.Linear`` (``fc``,
    ``classifier.3`` ...): replacing it gives the new task's head, and its
    parameters are the ones L2-SP does not pull towards their pretrained values.
    """

    name: str
    head: str
    default_weights: str
    default_input_size: int = 224
    factory: Callable[..., nn.Module] | None = None

    def construct(self, weights: str | None = None) -> nn.Module:
        """Build the torchvision model with its original head (and optional torchvision weights)."""
        import torchvision

        if weights is not None:
            from sft_engine.models.hub import ensure_torchvision_weights

            ensure_torchvision_weights(weights, self.name)  # one-line error, not a traceback, when it cannot be had
        if self.factory is not None:
            return self.factory(weights=weights)
        return torchvision.models.get_model(self.name, weights=weights)


_REGISTRY: dict[str, ArchSpec] = {}


def register_arch(spec: ArchSpec) -> ArchSpec:
    """Add an architecture; a name can be registered only once."""
    if spec.name in _REGISTRY:
        raise ValueError(f"architecture {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


for _spec in (
    ArchSpec("resnet18", "fc", "ResNet18_Weights.IMAGENET1K_V1"),
    ArchSpec("resnet34", "fc", "ResNet34_Weights.IMAGENET1K_V1"),
    ArchSpec("resnet50", "fc", "ResNet50_Weights.IMAGENET1K_V2"),
    ArchSpec("mobilenet_v3_small", "classifier.3", "MobileNet_V3_Small_Weights.IMAGENET1K_V1"),
    ArchSpec("mobilenet_v3_large", "classifier.3", "MobileNet_V3_Large_Weights.IMAGENET1K_V2"),
    ArchSpec("efficientnet_b0", "classifier.1", "EfficientNet_B0_Weights.IMAGENET1K_V1"),
):
    register_arch(_spec)


def list_archs() -> list[str]:
    """Names of every registered architecture, sorted."""
    return sorted(_REGISTRY)


def get_arch(name: str) -> ArchSpec:
    """The spec of ``name``, or a ModelError listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(
            f"unknown architecture {name!r}",
            hint=f"choose one of: {', '.join(list_archs())}",
        ) from None


def head_prefix(arch: str) -> str:
    """State-dict prefix of the classification head, e.g. ``fc.`` for ResNets."""
    return get_arch(arch).head + "."


def _replace_head(model: nn.Module, path: str, num_classes: int) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, leaf) if not leaf.isdigit() else parent[int(leaf)]
    if not isinstance(old, nn.Linear):
        raise ModelError(f"head {path!r} is a {type(old).__name__}, not nn.Linear", hint="fix the registry entry")
    new = nn.Linear(old.in_features, num_classes)
    if leaf.isdigit():
        parent[int(leaf)] = new
    else:
        setattr(parent, leaf, new)


def build_model(arch: str, num_classes: int, pretrained: str | None = None) -> nn.Module:
    """Build ``arch`` with a fresh ``num_classes`` head, in eval mode.

    ``pretrained`` is a torchvision weights-enum name (``ResNet18_Weights.IMAGENET1K_V1``,
    or ``DEFAULT`` for the entry's default), downloaded by torchvision on a user's
    machine. Checkpoint files are loaded separately (``load_weights``) so that the
    safe-loading rules live in one place.
    """
    spec = get_arch(arch)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ModelError(f"num_classes must be an integer >= 2, got {num_classes!r}", hint="pass --num-classes N")
    weights = None
    if pretrained:
        weights = spec.default_weights if pretrained.upper() == "DEFAULT" else pretrained
        LOGGER.info("building %s with torchvision weights %s", arch, weights)
    try:
        model = spec.construct(weights=weights)
    except (ValueError, KeyError) as exc:
        raise ModelError(f"cannot build {arch} with weights {weights!r}: {exc}", hint="use a weights enum name such as " + spec.default_weights) from exc
    _replace_head(model, spec.head, num_classes)
    return model.eval()
