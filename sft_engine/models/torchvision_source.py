"""torchvision's classifiers as a model source.

Every model of ``torchvision.models.list_models(module=torchvision.models)`` (the
classification ones; detection, segmentation, video and quantized models live in
sub-modules). Head: found on a meta-device copy (no memory, no init cost, nothing
downloaded). Preprocessing: the ``DEFAULT`` weights' ``transforms()``
(``ImageClassification``: resize the shorter edge to ``resize_size``, centre-crop
``crop_size``, its interpolation, antialiased), recorded as a ``Preprocessing``.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Iterator

import torch
from torch import nn

from sft_engine.errors import ModelError
from sft_engine.models.heads import find_head, replace_head
from sft_engine.models.source import ArchInfo

__all__ = ["TorchvisionSource", "TORCHVISION", "preprocessing_of_weights"]

LOGGER = logging.getLogger(__name__)
#: built without their auxiliary classifiers: one output, in training too
_KWARGS: dict[str, dict[str, Any]] = {"googlenet": {"aux_logits": False, "init_weights": True}, "inception_v3": {"aux_logits": False, "init_weights": True}}


def preprocessing_of_weights(weights: Any) -> Any:
    """A torchvision weights enum's ``transforms()`` as a ``Preprocessing`` record."""
    from sft_engine.preprocess import Preprocessing

    t = weights.transforms()
    for attr in ("crop_size", "resize_size", "mean", "std", "interpolation"):
        if not hasattr(t, attr):
            raise ModelError(f"torchvision weights {weights} have no classification transforms ({type(t).__name__})", hint="pick a classification model")
    return Preprocessing(
        input_size=int(t.crop_size[0]), resize_size=int(t.resize_size[0]), crop_mode="center",
        resize=str(t.interpolation.value), mean=tuple(t.mean), std=tuple(t.std),
        antialias=t.antialias is not False,
    )


class TorchvisionSource:
    name = "torchvision"

    def names(self) -> Iterator[str]:
        import torchvision

        return iter(torchvision.models.list_models(module=torchvision.models))

    def _check(self, model: str) -> None:
        if model not in set(self.names()):
            import difflib

            close = difflib.get_close_matches(model, list(self.names()), n=4, cutoff=0.6)
            raise ModelError(
                f"unknown architecture {model!r}",
                hint=f"choose one of: {', '.join(close or ('resnet18', 'resnet50', 'vit_b_16'))}, any name of "
                     "'sft-engine models --source torchvision', or timm:NAME",
            )

    def info(self, model: str) -> ArchInfo:
        self._check(model)
        return _info(model)

    def preprocessing(self, model: str) -> Any:
        """The ``DEFAULT`` weights' eval transform, without building the model (for listings)."""
        self._check(model)
        return preprocessing_of_weights(_default_weights(model))

    def construct(self, model: str, weights: str | None = None) -> nn.Module:
        import torchvision

        self._check(model)
        if weights is not None:
            from sft_engine.models.hub import ensure_torchvision_weights

            ensure_torchvision_weights(weights, model)  # one-line error, not a traceback, when it cannot be had
        return torchvision.models.get_model(model, weights=weights, **_KWARGS.get(model, {}))

    def build(self, model: str, num_classes: int, weights: str | None = None) -> nn.Module:
        net = self.construct(model, weights)
        replace_head(net, _info(model).head, num_classes)
        return net


def _default_weights(model: str) -> Any:
    import torchvision

    return torchvision.models.get_model_weights(model).DEFAULT


@functools.lru_cache(maxsize=None)
def _info(model: str) -> ArchInfo:
    import torchvision

    default = _default_weights(model)
    try:  # a meta-device copy costs neither memory nor init time
        with torch.device("meta"):
            net = torchvision.models.get_model(model, **_KWARGS.get(model, {}))
    except NotImplementedError:  # RegNet computes its widths with tensors while building
        net = torchvision.models.get_model(model, **_KWARGS.get(model, {}))
    head = find_head(net, len(default.meta["categories"]), model)
    return ArchInfo(name=model, source="torchvision", model=model, head=head, default_weights=str(default),
                     preprocessing=preprocessing_of_weights(default))


TORCHVISION = TorchvisionSource()
