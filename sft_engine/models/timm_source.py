"""timm's classifiers as a model source (``--arch timm:NAME``).

``timm.create_model(name, num_classes=k)`` builds; ``get_classifier()`` names the head
(found by identity among the sub-modules, so ``head.fc`` of ConvNeXt and ``head`` of
ViT alike); ``pretrained_cfg`` through ``resolve_data_config`` is the preprocessing
(input size, interpolation, ``crop_pct``, ``crop_mode``, mean, std), the same record
timm's own ``create_transform`` is made from. ``--pretrained DEFAULT`` (or a tag,
``augreg_in21k_ft_in1k``) is fetched by timm from the Hugging Face Hub into its cache;
offline and not cached it is one ModelError naming the cache and the local-file way.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Iterator

import torch
from torch import nn

from sft_engine.errors import ModelError
from sft_engine.models.heads import module_path
from sft_engine.models.source import ArchInfo

__all__ = ["TimmSource", "TIMM", "preprocessing_of_data_config"]

LOGGER = logging.getLogger(__name__)


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ModelError("timm is not installed, and --arch timm:NAME needs it", hint="pip install 'timm>=1.0,<2'") from None
    return timm


def preprocessing_of_data_config(config: dict[str, Any], what: str = "model") -> Any:
    """timm's ``resolve_data_config`` result as a ``Preprocessing`` record."""
    from sft_engine.preprocess import Preprocessing, resize_size_for

    _, height, width = config["input_size"]
    if height != width:
        raise ModelError(f"{what} takes {height}x{width} inputs; sft-engine serves square inputs only", hint="pick a model with a square input size")
    if config.get("crop_border_pixels"):
        raise ModelError(f"{what} trims a {config['crop_border_pixels']}-pixel border, which sft-engine does not reproduce", hint="pick another model")
    return Preprocessing(
        input_size=int(height), resize_size=resize_size_for(int(height), float(config.get("crop_pct") or 0.875)),
        crop_mode=config.get("crop_mode") or "center", resize=str(config.get("interpolation") or "bilinear"),
        mean=tuple(config["mean"]), std=tuple(config["std"]),  # type: ignore[arg-type]
    )


class TimmSource:
    name = "timm"

    def names(self) -> Iterator[str]:
        return iter(_timm().list_models())

    def _check(self, model: str) -> None:
        if not _timm().is_model(model.split(".", 1)[0]):
            raise ModelError(f"unknown timm model {model!r}", hint="list them with: sft-engine models --source timm --filter NAME")

    def preprocessing(self, model: str) -> Any:
        self._check(model)
        timm = _timm()
        cfg = timm.models.get_pretrained_cfg(model)
        return preprocessing_of_data_config(timm.data.resolve_data_config({}, pretrained_cfg=cfg.to_dict() if cfg else {}), f"timm:{model}")

    def info(self, model: str) -> ArchInfo:
        self._check(model)
        return _info(model)

    def construct(self, model: str, weights: str | None = None) -> nn.Module:
        return self._create(model, weights)

    def build(self, model: str, num_classes: int, weights: str | None = None) -> nn.Module:
        return self._create(model, weights, num_classes=num_classes)

    def _create(self, model: str, weights: str | None, **kwargs: Any) -> nn.Module:
        self._check(model)
        timm = _timm()
        if weights is None:
            return timm.create_model(model, pretrained=False, **kwargs)
        name = model if weights.upper() == "DEFAULT" else f"{model.split('.', 1)[0]}.{weights}"
        try:
            cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
        except RuntimeError as exc:
            raise ModelError(f"unknown timm weights {name!r}: {exc}", hint=f"pass --pretrained DEFAULT or a tag of {model} (timm.list_pretrained('{model}*'))") from None
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as exc:  # hub, network, cache, disk: all say the same to the user
            from huggingface_hub import constants

            reason = " ".join(str(exc).split())[:160] or type(exc).__name__
            hub = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or name
            raise ModelError(
                f"cannot download the timm weights {name} from {hub}: {reason}",
                hint=f"put them into the Hugging Face cache {constants.HF_HUB_CACHE} (set by HF_HOME; "
                     f"huggingface-cli download {hub} on a machine that is online), "
                     f"or pass --pretrained PATH to a local .safetensors, .pth or .bin file",
            ) from None


def _skeleton(model: str, **kwargs: Any) -> nn.Module:
    """The model without weights (on the meta device where it can be built there)."""
    timm = _timm()
    try:
        with torch.device("meta"):
            return timm.create_model(model, pretrained=False, **kwargs)
    except (NotImplementedError, RuntimeError):
        return timm.create_model(model, pretrained=False, **kwargs)


@functools.lru_cache(maxsize=None)
def _info(model: str) -> ArchInfo:
    timm = _timm()
    net = _skeleton(model)
    if getattr(net, "num_classes", None) == 0:  # a backbone by default (DINOv2, CLIP towers): the head exists once classes are asked for
        net = _skeleton(model, num_classes=2)
    head = net.get_classifier()
    if isinstance(head, (tuple, list)):
        raise ModelError(f"timm:{model} has {len(head)} classifier heads (a distilled model)", hint="pick the model without distillation heads")
    if not isinstance(head, (nn.Linear, nn.Conv2d)):
        raise ModelError(f"timm:{model}'s classifier is a {type(head).__name__}, not a layer sft-engine can re-head", hint="pick another model")
    data = timm.data.resolve_data_config({}, model=net)
    tags = timm.models.get_pretrained_cfg(model)
    return ArchInfo(name=f"timm:{model}", source="timm", model=model, head=module_path(net, head, f"timm:{model}"),
                     default_weights="DEFAULT" if tags is not None else "", preprocessing=preprocessing_of_data_config(data, f"timm:{model}"))


TIMM = TimmSource()
