"""Where fine-tuning starts from: torchvision weights, a checkpoint file, or a fine-tune.

``--pretrained`` is resolved once into a ``PretrainedSource``; the student (new head
for the new classes) and, for ``distill``, the frozen teacher (the pretrained model
with its original head) are both built from it. A checkpoint whose head has another
number of classes - the usual case, e.g. 1000 ImageNet classes or an earlier task -
contributes its backbone only; the new head starts from torchvision's initialisation.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sft_engine.errors import ConfigError, ModelError

__all__ = ["PretrainedSource", "resolve_pretrained", "build_student", "build_teacher"]

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainedSource:
    """A resolved ``--pretrained``: ``kind`` is ``none``, ``torchvision`` or ``checkpoint``."""

    kind: str
    name: str | None = None
    path: Path | None = None

    def describe(self) -> str:
        return self.name if self.kind == "torchvision" else (str(self.path) if self.path else "none")


def _looks_like_path(value: str) -> bool:
    from sft_engine.models.checkpoint import SUFFIXES

    return os.sep in value or "/" in value or value.endswith(SUFFIXES) or Path(value).exists()


def resolve_pretrained(arch: str, value: str | None) -> PretrainedSource:
    """Classify ``value`` (enum name, checkpoint path, fine-tune directory, or None)."""
    from sft_engine.finetune.writer import read_metadata
    from sft_engine.models import canonical_arch, get_arch

    if value is None:
        return PretrainedSource("none")
    if not _looks_like_path(value):
        spec = get_arch(arch)
        name = spec.default_weights if value.upper() == "DEFAULT" else value
        return PretrainedSource("torchvision", name=name)
    path = Path(value)
    if path.is_dir():
        meta = read_metadata(path)
        if canonical_arch(meta["arch"]) != canonical_arch(arch):
            raise ConfigError(f"--pretrained {path} is a fine-tuned {meta['arch']}, but --arch is {arch}", hint=f"pass --arch {meta['arch']}")
        path = path / meta["weights"]
    if not path.is_file():
        raise ModelError(f"pretrained checkpoint {path} does not exist", hint="pass --pretrained with a .safetensors/.pt file, a fine-tune output directory, a torchvision weights name, or none")
    return PretrainedSource("checkpoint", path=path)


def _head_classes(state: dict[str, torch.Tensor], arch: str) -> int | None:
    from sft_engine.models import head_prefix

    weight = state.get(head_prefix(arch) + "weight")
    return int(weight.shape[0]) if weight is not None and weight.ndim in (2, 4) else None  # Linear, or a 1x1 Conv2d head


def build_student(arch: str, num_classes: int, source: PretrainedSource) -> tuple[nn.Module, str]:
    """The model to fine-tune and a phrase saying what it was initialised from."""
    from sft_engine.models import align_keys, apply_state_dict, build_model, get_arch, head_prefix, load_state_dict_file

    if source.kind == "none":
        return build_model(arch, num_classes), "random initial weights"
    if source.kind == "torchvision":  # a weights name of the arch's source (torchvision enum, timm tag)
        return build_model(arch, num_classes, pretrained=source.name), f"{get_arch(arch).source} weights {source.name} (backbone; new head)"
    assert source.path is not None
    model = build_model(arch, num_classes)
    state = align_keys(model, load_state_dict_file(source.path))
    classes = _head_classes(state, arch)
    if classes == num_classes:
        apply_state_dict(model, state, source=f"pretrained checkpoint {source.path.name}")
        return model, f"checkpoint {source.path.name} (backbone and head)"
    apply_state_dict(model, state, source=f"pretrained checkpoint {source.path.name}", skip_prefix=head_prefix(arch))
    LOGGER.info("pretrained head has %s classes, the task %d: loaded the backbone only", classes, num_classes)
    return model, f"checkpoint {source.path.name} (backbone; new {num_classes}-class head)"


def build_teacher(arch: str, source: PretrainedSource) -> nn.Module:
    """The pretrained model with its own head, for ``distill`` (frozen, eval mode)."""
    from sft_engine.models import align_keys, apply_state_dict, build_model, get_arch, load_state_dict_file

    if source.kind == "torchvision":
        try:
            teacher = get_arch(arch).construct(weights=source.name)
        except (ValueError, KeyError) as exc:
            raise ModelError(f"cannot build {arch} with weights {source.name!r}: {exc}", hint="use a torchvision weights enum name") from None
    elif source.kind == "checkpoint":
        assert source.path is not None
        state = load_state_dict_file(source.path)
        classes = _head_classes(state, arch)
        if classes is None:  # perhaps under a trainer's prefix (Lightning's model., ...)
            state = align_keys(build_model(arch, 2), state)
            classes = _head_classes(state, arch)
        if classes is None:
            raise ConfigError(
                f"--reg distill needs the pretrained model's head, but {source.path.name} has none",
                hint="use a checkpoint saved with its head, or --reg l2sp",
            )
        teacher = build_model(arch, classes)
        apply_state_dict(teacher, state, source=f"pretrained checkpoint {source.path.name}")
    else:
        raise ConfigError("--reg distill needs pretrained weights", hint="pass --pretrained or --reg none")
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher
