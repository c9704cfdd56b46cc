"""torchvision's pretrained weights: found in its cache, or downloaded with a clear failure.

torchvision downloads ``--pretrained DEFAULT`` (a weights enum) on first use into
``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()``) and prints a urllib
traceback when it cannot: no network, a proxy, a blocked host. Here the download is
made first, with a timeout, and a failure is one ``ModelError`` naming the file, the
directory torchvision looks in, and both fixes: put the file there, or pass
``--pretrained PATH`` to a local torchvision ``.pth`` / ``.safetensors`` file.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from sft_engine.errors import ModelError

__all__ = ["weights_cache_dir", "ensure_torchvision_weights"]

LOGGER = logging.getLogger(__name__)
#: seconds without an answer before a download is given up
DOWNLOAD_TIMEOUT_S = 30.0


def weights_cache_dir() -> Path:
    """Where torchvision looks for (and puts) downloaded weights."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def ensure_torchvision_weights(name: str, arch: str | None = None) -> Path:
    """The cached file of weights enum ``name`` (``ResNet18_Weights.IMAGENET1K_V1``, or ``IMAGENET1K_V1`` of ``arch``), downloaded if missing."""
    import torch
    import torchvision

    try:
        weights = torchvision.models.get_weight(name) if "." in name or arch is None else torchvision.models.get_model_weights(arch)[name]
    except (ValueError, KeyError, AttributeError) as exc:
        raise ModelError(f"unknown torchvision weights {name!r}: {exc}", hint="use a weights enum name such as ResNet18_Weights.IMAGENET1K_V1, or DEFAULT") from None
    url = weights.url
    filename = url.rsplit("/", 1)[-1]
    cache = weights_cache_dir()
    target = cache / filename
    if target.is_file():
        return target
    LOGGER.info("downloading torchvision weights %s from %s into %s", name, url, cache)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), hash_prefix=_hash_prefix(filename), progress=False)
    except Exception as exc:  # urllib, socket, ssl, hash mismatch, disk: all say the same to the user
        reason = " ".join(str(getattr(exc, "reason", exc)).split())[:160] or type(exc).__name__
        raise ModelError(
            f"cannot download the torchvision weights {name} ({filename}) from {url}: {reason}",
            hint=f"put {filename} into {cache} (torchvision's cache, set by TORCH_HOME), "
                 f"or pass --pretrained PATH to a local torchvision .pth or .safetensors file",
        ) from None
    finally:
        socket.setdefaulttimeout(previous)
    return target


def _hash_prefix(filename: str) -> str | None:
    """torchvision names its files ``<model>-<sha256 prefix>.pth``; the download is checked against it."""
    stem = filename.rsplit(".", 1)[0]
    tail = stem.rsplit("-", 1)[-1]
    return tail if len(tail) >= 8 and all(c in "0123456789abcdef" for c in tail) else None
