"""Every classifier sft-engine can fine-tune, build and serve, by ``--arch`` name.

Modelled on torchvision's own ``register_model``/``get_model``: a table of the
architectures the whole path is gated for (names refused twice), and behind it the
model sources (``sft_engine.models.source``): any other torchvision classifier by its
bare name (or ``torchvision:NAME``), any timm model as ``timm:NAME``. Each spec knows
where its classification head lives, so the head can be replaced for N classes (and
excluded from L2-SP, and left trainable by ``--freeze-backbone``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from sft_engine.errors import ModelError
from sft_engine.models.heads import replace_head
from sft_engine.models.source import SOURCES, ModelSource, split_name

__all__ = ["ArchSpec", "register_arch", "get_arch", "list_archs", "build_model", "head_prefix", "canonical_arch", "source_preprocessing", "get_source"]

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
    source: str = "torchvision"
    #: the name inside its source (``convnext_tiny`` of ``timm:convnext_tiny``)
    model: str = ""

    def construct(self, weights: str | None = None) -> nn.Module:
        """Build the model with its original head (and optional weights of its source)."""
        if self.factory is not None:
            if weights is not None:
                from sft_engine.models.hub import ensure_torchvision_weights

                ensure_torchvision_weights(weights, self.name)  # one-line error, not a traceback, when it cannot be had
            return self.factory(weights=weights)
        return get_source(self.source).construct(self.model or self.name, weights)


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


def get_source(name: str) -> ModelSource:
    """The source called ``name`` (imported on first use: timm is only loaded for ``timm:`` names)."""
    if name == "torchvision":
        from sft_engine.models.torchvision_source import TORCHVISION

        return TORCHVISION
    if name == "timm":
        from sft_engine.models.timm_source import TIMM

        return TIMM
    raise ModelError(f"unknown model source {name!r}", hint=f"use one of: {', '.join(SOURCES)}")


def canonical_arch(name: str) -> str:
    """The name a spec, a fine-tune's metadata and a manifest record: ``torchvision:x`` is ``x``."""
    source, model = split_name(name)
    return model if source == "torchvision" else f"{source}:{model}"


def get_arch(name: str) -> ArchSpec:
    """The spec of ``name`` (registered, or from its model source), or a ModelError saying what exists."""
    canonical = canonical_arch(name)
    if canonical in _REGISTRY:
        return _REGISTRY[canonical]
    return _source_spec(canonical)


@functools.lru_cache(maxsize=None)
def _source_spec(canonical: str) -> ArchSpec:
    source, model = split_name(canonical)
    info = get_source(source).info(model)
    return ArchSpec(canonical, info.head, info.default_weights, info.default_input_size, source=source, model=model)


def source_preprocessing(name: str) -> Any:
    """The preprocessing ``name``'s source trained it with (a ``Preprocessing``; nothing is built)."""
    source, model = split_name(name)
    return get_source(source).preprocessing(model)


def head_prefix(arch: str) -> str:
    """State-dict prefix of the classification head, e.g. ``fc.`` for ResNets."""
    return get_arch(arch).head + "."


def build_model(arch: str, num_classes: int, pretrained: str | None = None) -> nn.Module:
    """Build ``arch`` with a fresh ``num_classes`` head, in eval mode.

    ``pretrained`` is a weights name of the arch's source: a torchvision weights enum
    (``ResNet18_Weights.IMAGENET1K_V1``), a timm pretrained tag (``in1k``), or
    ``DEFAULT`` for the entry's default, downloaded on a user's machine. Checkpoint
    files are loaded separately (``load_weights``) so that the safe-loading rules
    live in one place.
    """
    spec = get_arch(arch)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ModelError(f"num_classes must be an integer >= 2, got {num_classes!r}", hint="pass --num-classes N")
    if spec.source != "torchvision":
        LOGGER.info("building %s with %s weights %s", arch, spec.source, pretrained)
        return get_source(spec.source).build(spec.model, num_classes, pretrained or None).eval()
    weights = None
    if pretrained:
        weights = spec.default_weights if pretrained.upper() == "DEFAULT" else pretrained
        LOGGER.info("building %s with torchvision weights %s", arch, weights)
    try:
        model = spec.construct(weights=weights)
    except (ValueError, KeyError) as exc:
        raise ModelError(f"cannot build {arch} with weights {weights!r}: {exc}", hint="use a weights enum name such as " + spec.default_weights) from exc
    replace_head(model, spec.head, num_classes)
    return model.eval()
