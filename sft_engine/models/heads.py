"""Finding and replacing a classifier's head, however its family nests it.

The head is the last layer, in module order, that maps features to the source's
classes: an ``nn.Linear`` (ResNet ``fc``, MobileNet ``classifier.3``, ViT
``heads.head``, Swin ``head``, MaxViT ``classifier.5``) or a 1×1 ``nn.Conv2d``
(SqueezeNet ``classifier.1``). Auxiliary heads (GoogLeNet, Inception) come earlier
in module order and are not chosen.
"""

from __future__ import annotations

from torch import nn

from sft_engine.errors import ModelError

__all__ = ["find_head", "replace_head", "module_path"]


def _outputs(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1):
        return module.out_channels
    return None


def find_head(model: nn.Module, num_classes: int, what: str) -> str:
    """Dotted path of ``model``'s last layer with ``num_classes`` outputs."""
    found = [name for name, module in model.named_modules() if name and _outputs(module) == num_classes]
    if not found:
        raise ModelError(f"{what} has no final nn.Linear with {num_classes} outputs", hint="this family is not a classifier sft-engine can re-head; pick another --arch")
    return found[-1]


def module_path(model: nn.Module, target: nn.Module, what: str) -> str:
    """Dotted path of ``target`` inside ``model`` (by identity)."""
    for name, module in model.named_modules():
        if module is target and name:
            return name
    raise ModelError(f"{what}'s classifier is not one of its sub-modules", hint="pick another --arch")


def replace_head(model: nn.Module, path: str, num_classes: int) -> None:
    """Put a fresh ``num_classes`` layer of the same kind at ``path``."""
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = parent[int(leaf)] if leaf.isdigit() else getattr(parent, leaf)  # type: ignore[index]
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    elif isinstance(old, nn.Conv2d) and old.kernel_size == (1, 1):
        new = nn.Conv2d(old.in_channels, num_classes, 1, bias=old.bias is not None)
    else:
        raise ModelError(f"head {path!r} is a {type(old).__name__}, not nn.Linear", hint="fix the registry entry")
    new = new.to(old.weight.device)
    if leaf.isdigit():
        parent[int(leaf)] = new  # type: ignore[index]
    else:
        setattr(parent, leaf, new)
