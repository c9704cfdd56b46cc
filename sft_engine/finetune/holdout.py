"""A labelled sample of the validation images, kept next to the checkpoint.

Why: ``sft-engine build --from-finetune DIR`` gates every engine against the eager
model. On random tensors that gate can only compare logits; reduced-precision engines
(bf16 on CPU, FP16 on GPU) need real images with real labels, so that top-1 agreement
and the accuracy drop are measured where they matter. The run already has such images:
its validation set, which it never trains on. A balanced sample of it is written as

    DIR/holdout/<class folder>/<n>.png     (synthetic and CIFAR-style data: the raw pixels)
    DIR/holdout/<class folder>/<n>.<ext>   (image folders: a byte copy of the original file)

before any transform (no resize, no normalization): build applies the served
preprocessing itself, exactly as to any calibration image. The class folder is the
label when that is a safe file name, else the class index; ``sft_engine.verify``
resolves both back to the class index.

The sample is written into a temporary sibling directory and renamed into place, so
an interrupted run leaves no half holdout. A dataset of another kind gets no holdout
and a warning: keeping the sample is a convenience that must never fail a fine-tune.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sft_engine.finetune import writer
from sft_engine.finetune.data import FolderDataset, open_rgb
from sft_engine.finetune.synthetic import SyntheticDataset
from sft_engine.verify import CALIBRATION_SUFFIXES, class_indices

__all__ = ["DEFAULT_HOLDOUT_IMAGES", "class_folder", "folder_names", "select_balanced", "write_holdout"]

LOGGER = logging.getLogger(__name__)

DEFAULT_HOLDOUT_IMAGES = 256
#: ASCII only: non-ASCII names may be re-normalized by the file system and then no longer equal the label
_SAFE = re.compile(r"[A-Za-z0-9_\- ][A-Za-z0-9._\- ]{0,99}")
_TMP_PREFIX = f".{writer.HOLDOUT_DIR}.tmp-"

#: writes image ``index`` of a dataset to ``stem`` + a suffix; returns the path written
_Writer = Callable[[int, Path], Path]


def class_folder(label: str, index: int) -> str:
    """The folder name of class ``index``: its label when that is one safe path component, else the index."""
    if _SAFE.fullmatch(label) and label == label.strip():
        return label
    return str(index)


def folder_names(labels: Sequence[str]) -> list[str | None]:
    """The folder of each class, or None for a class that no folder name can tell apart.

    Build reads a folder named after a label as that label's class, else a decimal
    name as that class index (``sft_engine.verify.class_indices``); a name is kept only
    if it reads back as its own class, and only once even on a case-insensitive file
    system. Only odd label sets lose a class: ``["1", "a/b"]`` (class 1 would be
    folder ``1``, which reads as class 0), duplicate labels, ``Cat`` and ``cat``.
    """
    names = [class_folder(str(label), i) for i, label in enumerate(labels)]
    reads_as = class_indices(names, [str(label) for label in labels], Path(writer.HOLDOUT_DIR))
    seen: set[str] = set()
    out: list[str | None] = []
    for i, name in enumerate(names):
        if reads_as.get(name) != i or name.lower() in seen:
            out.append(None)
            continue
        seen.add(name.lower())
        out.append(name)
    return out


def select_balanced(targets: Sequence[int], max_images: int) -> list[int]:
    """Dataset indices, round-robin over the classes (ascending class index), each class in dataset order.

    Deterministic, never more than ``max_images``, and as balanced as the classes
    allow: a class with fewer images simply runs out.
    """
    by_class: dict[int, list[int]] = {}
    for i, target in enumerate(targets):
        by_class.setdefault(int(target), []).append(i)
    queues = [by_class[c] for c in sorted(by_class)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < max_images and any(depth < len(q) for q in queues):
        for queue in queues:
            if depth < len(queue) and len(chosen) < max_images:
                chosen.append(queue[depth])
        depth += 1
    return chosen


def _source(dataset: Any) -> tuple[str, list[int], _Writer] | None:
    """(kind, targets, writer of one image) for the dataset kinds a fine-tune reads; None for others."""
    from PIL import Image

    if isinstance(dataset, FolderDataset):
        def copy_file(index: int, stem: Path) -> Path:
            src = dataset.samples[index][0]
            suffix = src.suffix.lower()
            if suffix in CALIBRATION_SUFFIXES:
                dst = stem.with_suffix(suffix)
                shutil.copyfile(src, dst)
            else:  # a format build does not read (.gif, .tif ...): its decoded pixels, losslessly
                dst = stem.with_suffix(".png")
                open_rgb(src).save(dst)
            return dst

        return "image files", [label for _, label in dataset.samples], copy_file
    if isinstance(dataset, SyntheticDataset):
        def save_synthetic(index: int, stem: Path) -> Path:
            dst = stem.with_suffix(".png")
            Image.fromarray(dataset.array(index)).save(dst)
            return dst

        return "synthetic pixels", list(dataset.targets), save_synthetic
    data, targets = getattr(dataset, "data", None), getattr(dataset, "targets", None)
    if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 4 and data.shape[-1] == 3 and targets is not None and len(targets) == len(data):
        def save_array(index: int, stem: Path) -> Path:  # CIFAR-10 (torchvision): NHWC uint8
            dst = stem.with_suffix(".png")
            Image.fromarray(data[index]).save(dst)
            return dst

        return "array pixels", [int(t) for t in targets], save_array
    return None


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def write_holdout(val_dataset: Any, labels: Sequence[str], out_dir: str | Path, max_images: int = DEFAULT_HOLDOUT_IMAGES) -> dict[str, Any] | None:
    """Write up to ``max_images`` labelled validation images to ``out_dir/holdout``; return its metadata entry.

    Returns None, having written nothing, when ``max_images`` is 0, when the dataset
    is of a kind this module does not know, or when writing fails (logged as a
    warning: the fine-tune itself has succeeded and must not fail for this).
    """
    out_dir = Path(out_dir)
    if max_images <= 0:
        return None
    source = _source(val_dataset)
    if source is None:
        LOGGER.warning("no labelled holdout kept: the validation set (%s) is not an image folder, CIFAR-10 or synthetic data", type(val_dataset).__name__)
        return None
    kind, targets, write_one = source
    folders = folder_names(labels)
    for i, name in enumerate(folders):
        if name is None:
            LOGGER.warning("class %d (%r) is left out of the holdout: no folder name reads back as that class alone", i, labels[i])
    usable = [i for i, t in enumerate(targets) if 0 <= t < len(folders) and folders[t] is not None]
    chosen = [usable[j] for j in select_balanced([targets[i] for i in usable], max_images)]
    if not chosen:
        LOGGER.warning("no labelled holdout kept: the validation set has no usable images")
        return None

    final = out_dir / writer.HOLDOUT_DIR
    for stale in out_dir.glob(f"{_TMP_PREFIX}*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out_dir / f"{_TMP_PREFIX}{os.getpid()}"
    per_class: dict[str, int] = {}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        for index in chosen:
            name = folders[targets[index]]
            assert name is not None
            folder = tmp / name
            if name not in per_class:
                folder.mkdir()
            n = per_class.get(name, 0)
            _fsync(write_one(index, folder / f"{n:05d}"))
            per_class[name] = n + 1
        for folder in tmp.iterdir():
            writer.fsync_dir(folder)
        writer.fsync_dir(tmp)
        if final.exists():  # a directory cannot be renamed over a non-empty one: move the old one aside first
            old = out_dir / f"{_TMP_PREFIX}{os.getpid()}-old"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
        writer.fsync_dir(out_dir)
    except Exception as exc:  # PIL, OS errors ...: the checkpoint is still good without a holdout
        shutil.rmtree(tmp, ignore_errors=True)
        LOGGER.warning("no labelled holdout kept: writing it failed (%s: %s)", type(exc).__name__, exc)
        return None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    counts = list(per_class.values())
    LOGGER.info("kept %d labelled validation images (%d classes) in %s for build's accuracy gate", len(chosen), len(counts), final)
    return {
        "dir": writer.HOLDOUT_DIR,
        "images": len(chosen),
        "classes": len(counts),
        "per_class": {"min": min(counts), "max": max(counts)},
        "source": f"validation set ({kind})",
    }
