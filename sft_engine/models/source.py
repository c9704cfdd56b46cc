"""The one seam between sft-engine and the model zoos it builds from.

Like torchvision's ``models/_api.py`` and timm's ``_registry``: a *source* answers the
four questions every later stage asks of an architecture, whichever zoo it comes from:

* build it for ``k`` classes, optionally with the source's pretrained weights;
* where its classification head is (the dotted prefix L2-SP leaves out and
  ``--freeze-backbone`` leaves trainable), however deeply the family nests it;
* which preprocessing it was trained with (a ``Preprocessing`` record, never guessed);
* which checkpoint layouts it accepts (handled for all sources by ``checkpoint.py``).

Names: ``resnet50`` (a bare name is torchvision's, as always), ``torchvision:vit_b_16``
or ``timm:convnext_tiny``. ``split_name`` is the only parser of that syntax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Protocol

from sft_engine.errors import ModelError

if TYPE_CHECKING:
    from torch import nn

    from sft_engine.preprocess import Preprocessing

__all__ = ["ModelSource", "ArchInfo", "split_name", "SOURCES"]

#: sources by prefix; a bare name is torchvision's
SOURCES = ("torchvision", "timm")


@dataclass(frozen=True)
class ArchInfo:
    """What a source says about one architecture (cheap: nothing is downloaded).

    ``name`` is the canonical ``--arch`` (torchvision's bare, timm's prefixed);
    ``head`` the dotted path of the final classifier layer; ``default_weights`` what
    ``--pretrained DEFAULT`` means; ``preprocessing`` the source's eval transform.
    """

    name: str
    source: str
    model: str
    head: str
    default_weights: str
    preprocessing: "Preprocessing"

    @property
    def default_input_size(self) -> int:
        return self.preprocessing.input_size


class ModelSource(Protocol):
    """A zoo of classifiers (torchvision, timm)."""

    name: str

    def names(self) -> Iterator[str]:
        """Every model name it can build (without the prefix)."""

    def info(self, model: str) -> ArchInfo:
        """Head, default weights and preprocessing of ``model``; ModelError if unknown."""

    def preprocessing(self, model: str) -> "Preprocessing":
        """The source's eval transform of ``model``, without building it (for listings)."""

    def construct(self, model: str, weights: str | None = None) -> "nn.Module":
        """The model with its original head, with the source's ``weights`` (a name) or none."""

    def build(self, model: str, num_classes: int, weights: str | None = None) -> "nn.Module":
        """The model with a fresh ``num_classes`` head (the backbone from ``weights`` if given)."""


def split_name(arch: str) -> tuple[str, str]:
    """``timm:convnext_tiny`` → ``("timm", "convnext_tiny")``; a bare name is torchvision's."""
    if not isinstance(arch, str) or not arch.strip():
        raise ModelError(f"architecture {arch!r} is not a name", hint="pass --arch NAME, e.g. resnet50 or timm:convnext_tiny")
    prefix, sep, model = arch.strip().partition(":")
    if not sep:
        return "torchvision", prefix
    if prefix not in SOURCES or not model:
        raise ModelError(f"unknown model source {prefix!r} in {arch!r}", hint=f"use one of {', '.join(p + ':NAME' for p in SOURCES)}, or a bare torchvision name")
    return prefix, model
