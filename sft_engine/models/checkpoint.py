"""Safe loading of fine-tuned weights.

Only tensors are ever read: ``.safetensors`` files, or ``.pt``/``.pth``/``.bin``/``.ckpt`` files through
``torch.load(weights_only=True)``, so a checkpoint can never run code on load (as
timm's ``_helpers.py`` does it). Wrapper keys (``state_dict``, ``model``) and the
``module.`` (DDP) / ``_orig_mod.`` (torch.compile) prefixes are removed, and a
mismatch names every missing, unexpected and mis-shaped key.

Checkpoints fine-tuned elsewhere: timm's ``train.py`` (``{"state_dict", "args",
...}``; ``args`` is an ``argparse.Namespace``, the one non-tensor class allowed, as it
only holds values), Hugging Face (``model.safetensors`` / ``pytorch_model.bin``, a
``timm_model.`` prefix from transformers' timm wrapper) and Lightning (``.ckpt``: ``state_dict``
with the module's attribute as prefix, ``model.``, beside loss or metric buffers, and
optimizer, scheduler, callback and loop states that are plain values and tensors).
A wrapper prefix is removed only where the model's own keys do not start with it and
removing it makes the keys fit (``align_keys``).
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sft_engine.errors import ModelError

__all__ = ["load_state_dict_file", "align_keys", "apply_state_dict", "load_weights", "save_state_dict", "sha256_file", "KeyReport"]

LOGGER = logging.getLogger(__name__)

_PREFIXES = ("module.", "_orig_mod.")
_WRAPPERS = ("state_dict", "model_state_dict", "model", "weights")
SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (engines can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                changed = True
    return key


def _safe_globals() -> list[object]:
    import argparse

    return [argparse.Namespace]


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist", hint="pass --weights with the path of a .safetensors or .pt file")
    if path.suffix not in SUFFIXES:
        raise ModelError(f"checkpoint {path} has unsupported suffix {path.suffix!r}", hint=f"use one of {', '.join(SUFFIXES)}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: object = load_file(str(path), device="cpu")
        else:
            with torch.serialization.safe_globals(_safe_globals()):
                raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"checkpoint {path} holds pickled Python objects, not only tensors, and is refused ({first[:160]})",
            hint="re-save it with torch.save(model.state_dict(), ...) or safetensors.torch.save_file",
        ) from None
    except Exception as exc:  # truncated zip, bad header, wrong format
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"checkpoint {path} cannot be read, it is truncated or not a checkpoint ({first[:160]})",
            hint="copy the file again or re-export the weights",
        ) from None
    for key in _WRAPPERS:
        if isinstance(raw, dict) and key in raw and isinstance(raw[key], dict):
            raw = raw[key]
            break
    if not isinstance(raw, dict) or not raw:
        raise ModelError(f"checkpoint {path} holds no state dict", hint="save model.state_dict()")
    tensors = {_strip(k): v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelError(f"checkpoint {path} holds no tensors", hint="save model.state_dict()")
    return tensors


@dataclass
class KeyReport:
    """What differs between a state dict and a model."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 6) -> str:
        parts = []
        for name, keys in (("missing", self.missing), ("unexpected", self.unexpected), ("mis-shaped", self.mismatched)):
            if keys:
                more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
                parts.append(f"{len(keys)} {name}: {', '.join(keys[:limit])}{more}")
        return "; ".join(parts)


def compare_keys(model: nn.Module, state: dict[str, torch.Tensor], skip_prefix: str | None = None) -> KeyReport:
    """Missing, unexpected and mis-shaped keys of ``state`` against ``model``."""
    expected = model.state_dict()
    report = KeyReport()
    for key, tensor in expected.items():
        if skip_prefix and key.startswith(skip_prefix):
            continue
        if key not in state:
            report.missing.append(key)
        elif tuple(state[key].shape) != tuple(tensor.shape):
            report.mismatched.append(f"{key} {tuple(state[key].shape)} vs model {tuple(tensor.shape)}")
    for key in state:
        if key not in expected and not (skip_prefix and key.startswith(skip_prefix)):
            report.unexpected.append(key)
    return report


def align_keys(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with a trainer's wrapper prefix (``model.``, ``timm_model.``, ``net.``) removed where that makes it fit.

    Kept as it is when its keys already name the model's (at least half of them); else
    the first dotted component shared by the most keys that, removed, fit the model
    best is taken, and the keys outside it (a loss's or a metric's buffers) dropped.
    """
    expected = set(model.state_dict())
    if not expected or sum(k in expected for k in state) * 2 >= len(expected):
        return state
    best, best_hits = None, 0
    for prefix in sorted({k.split(".", 1)[0] + "." for k in state if "." in k}):
        if any(k.startswith(prefix) for k in expected):
            continue
        hits = sum(k[len(prefix):] in expected for k in state if k.startswith(prefix))
        if hits > best_hits:
            best, best_hits = prefix, hits
    if best is None or best_hits * 2 < len(expected):
        return state
    dropped = [k for k in state if not k.startswith(best)]
    if dropped:
        LOGGER.info("checkpoint: took the %r sub-tree; left out %d other keys (%s)", best, len(dropped), ", ".join(dropped[:4]))
    return {k[len(best):]: v for k, v in state.items() if k.startswith(best)}


def apply_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint", skip_prefix: str | None = None) -> nn.Module:
    """Load ``state`` into ``model`` strictly; on any difference raise a ModelError listing it.

    ``skip_prefix`` leaves one sub-tree (the head) out on both sides: used to start
    fine-tuning from a backbone trained for another number of classes.
    """
    state = align_keys(model, state)
    report = compare_keys(model, state, skip_prefix)
    if not report.ok:
        hint = "check --arch and --num-classes against the checkpoint"
        if any(k.startswith(("fc.", "classifier.", "head.", "heads.")) for k in report.mismatched):
            hint = "the head has another number of classes: pass the --num-classes it was trained with"
        raise ModelError(f"{source} does not fit the model: {report.describe()}", hint=hint)
    subset = {k: v for k, v in state.items() if not (skip_prefix and k.startswith(skip_prefix))}
    model.load_state_dict(subset, strict=skip_prefix is None)
    return model


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load the fine-tuned weights at ``path`` into ``model`` (strict, safe)."""
    state = load_state_dict_file(path)
    LOGGER.info("loaded %d tensors from %s", len(state), path)
    return apply_state_dict(model, state, source=f"checkpoint {Path(path).name}")


def save_state_dict(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model``'s weights as safetensors (contiguous CPU copies)."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=metadata)
    return path
