"""Training and validation data for fine-tuning: synthetic, CIFAR-10 or an image folder.

Every source ends as ``(PIL image, label)`` pairs that go through one transform, which
is the served model's own preprocessing (``sft_engine.preprocess.Preprocessing``:
convert to RGB, bilinear resize to ``input_size``×``input_size`` without cropping,
scale to [0, 1], normalize with mean/std), plus a random horizontal flip when training
with ``augment``. Training on exactly what the server feeds the model is why there is
no centre crop: images of mixed sizes and modes (grayscale, palette, RGBA, CMYK) are
all accepted and converted this way.

Image folders are checked before training starts: every file is decoded once, and
unreadable files make the run fail with a DataError naming them (never skipped
silently, so the training set is always the folder the user gave).
"""

from __future__ import annotations

import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from sft_engine.errors import DataError
from sft_engine.finetune.config import FinetuneConfig
from sft_engine.finetune.synthetic import SyntheticDataset, make_synthetic_images, synthetic_labels

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataBundle",
    "InputTransform",
    "FolderDataset",
    "build_datasets",
    "scan_image_folder",
    "check_images",
    "open_rgb",
    "make_synthetic_images",
    "synthetic_labels",
]

LOGGER = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
_VAL_DIRS = ("val", "valid", "validation")


@dataclass
class DataBundle:
    """The two datasets of a run and what the checkpoint must record about them."""

    train: Any
    val: Any
    labels: list[str]
    name: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)


class InputTransform:
    """PIL image → normalized CHW float tensor, the served preprocessing (+ optional flip)."""

    def __init__(self, input_size: int, mean: Sequence[float], std: Sequence[float], flip: bool = False, preprocessing: Any = None) -> None:
        from sft_engine.preprocess import Preprocessing

        self.pre = preprocessing or Preprocessing(input_size=int(input_size), mean=tuple(mean), std=tuple(std))  # type: ignore[arg-type]
        self.flip = flip

    def __call__(self, image: Any) -> torch.Tensor:
        tensor = torch.from_numpy(self.pre.image_to_array(image))
        if self.flip and torch.rand(()) < 0.5:
            tensor = tensor.flip(-1)
        return tensor


def open_rgb(path: str | Path) -> Any:
    """Open an image file of any mode as RGB (palette transparency handled without warnings)."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        return image.convert("RGB")


class FolderDataset:
    """``(path, label)`` samples read as RGB PIL images and passed through ``transform``."""

    def __init__(self, samples: list[tuple[Path, int]], classes: list[str], transform: Callable[[Any], Any] | None = None) -> None:
        self.samples = samples
        self.classes = classes
        self.targets = [label for _, label in samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = open_rgb(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, label


# -- image folders ----------------------------------------------------------------------
def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_under(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / name)
    return found


def scan_image_folder(root: str | Path, classes: list[str] | None = None) -> tuple[list[tuple[Path, int]], list[str]]:
    """``root/<class>/**/<image>`` → samples and class names (sorted directory names).

    With ``classes`` given (the training set's), the folder may hold a subset of them
    but no other class. Raises DataError for a missing or empty folder, a class folder
    without images, or fewer than two classes.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist", hint="pass --data-dir DIR laid out as DIR/<class>/<image>")
    dirs = _class_dirs(root)
    if not dirs:
        raise DataError(f"image folder {root} holds no class folders", hint="lay the images out as DIR/<class name>/<image file>")
    names = [d.name for d in dirs]
    if classes is None:
        classes = names
        if len(classes) < 2:
            raise DataError(
                f"image folder {root} holds one class ({classes[0]!r}); classification needs at least 2",
                hint="add a folder of images for every other class",
            )
    else:
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise DataError(f"validation folder {root} has classes the training folder lacks: {', '.join(unknown)}", hint="use the same class folders in train/ and val/")
    index = {name: i for i, name in enumerate(classes)}
    samples: list[tuple[Path, int]] = []
    for folder in dirs:
        files = _images_under(folder)
        if not files:
            raise DataError(
                f"class folder {folder} holds no image files",
                hint=f"add images ({', '.join(IMAGE_EXTENSIONS[:4])} ...) or remove the folder",
            )
        samples.extend((path, index[folder.name]) for path in files)
    return samples, list(classes)


def _check_one(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft("RGB", (64, 64))  # JPEG: decode at reduced scale, still reads every byte
            image.load()
    except Exception as exc:  # PIL raises many types for broken files
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
    return None


def check_images(paths: Sequence[Path], workers: int | None = None) -> None:
    """Decode every file once; raise a DataError naming the unreadable ones.

    The whole run fails rather than skipping them: a silently smaller dataset would
    make two runs on "the same" folder incomparable.
    """
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(_check_one, paths, chunksize=64))
    bad = [(path, why) for path, why in zip(paths, results) if why]
    if bad:
        first, why = bad[0]
        more = f" and {len(bad) - 1} more ({', '.join(str(p) for p, _ in bad[1:4])}{' ...' if len(bad) > 4 else ''})" if len(bad) > 1 else ""
        raise DataError(
            f"{len(bad)} image file(s) cannot be decoded: {first} ({why}){more}",
            hint="delete or replace the broken files, then run again",
        )


def _split(samples: list[tuple[Path, int]], fraction: float, seed: int) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Stratified, seeded split: each class with 2+ images gives round(n·fraction) (at least 1) to validation."""
    by_class: dict[int, list[tuple[Path, int]]] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_class):
        items = list(by_class[label])
        rng.shuffle(items)
        n_val = 0 if len(items) < 2 else min(len(items) - 1, max(1, round(len(items) * fraction)))
        val.extend(items[:n_val])
        train.extend(items[n_val:])
    return train, val


def _imagefolder(config: FinetuneConfig, train_tf: Callable, val_tf: Callable) -> DataBundle:
    assert config.data_dir is not None
    root = config.data_dir
    if (root / "train").is_dir():
        train_root = root / "train"
        val_root = next((root / d for d in _VAL_DIRS if (root / d).is_dir()), None)
    else:
        train_root, val_root = root, None
    train_samples, classes = scan_image_folder(train_root)
    if val_root is not None:
        val_samples, _ = scan_image_folder(val_root, classes)
        split = f"{val_root.name}/ folder"
    else:
        train_samples, val_samples = _split(train_samples, config.val_fraction, config.seed)
        split = f"{config.val_fraction:g} of each class"
        if not val_samples:
            raise DataError(f"image folder {root} is too small to hold out validation images", hint="add images (2+ per class) or a val/ folder")
    if config.check_images:
        check_images([p for p, _ in train_samples + val_samples])
    LOGGER.info("image folder %s: %d classes, %d train / %d val images (validation: %s)", root, len(classes), len(train_samples), len(val_samples), split)
    return DataBundle(
        train=FolderDataset(train_samples, classes, train_tf),
        val=FolderDataset(val_samples, classes, val_tf),
        labels=classes,
        name="imagefolder",
        details={"data_dir": str(root), "validation": split},
    )


# -- CIFAR-10 ---------------------------------------------------------------------------
def _cifar_class() -> type:
    """torchvision's CIFAR10 reading files without md5 checks.

    The md5 sums only match the official archive; checking them would refuse any
    CIFAR-format subset. The pickles are still fully read and parsed, so a broken
    file fails loudly.
    """
    from torchvision.datasets import CIFAR10

    class CIFAR10Files(CIFAR10):
        train_list = [[name, None] for name, _ in CIFAR10.train_list]
        test_list = [[name, None] for name, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": None}

    return CIFAR10Files


def _cifar10(config: FinetuneConfig, train_tf: Callable, val_tf: Callable, rank: int) -> DataBundle:
    assert config.data_dir is not None
    root = config.data_dir
    if config.download and rank == 0:
        from torchvision.datasets import CIFAR10

        try:
            CIFAR10(str(root), train=True, download=True)
        except Exception as exc:
            raise DataError(f"CIFAR-10 download into {root} failed: {exc}", hint="check the network, or download it by hand into DIR/cifar-10-batches-py") from None
    if config.download:
        from sft_engine.finetune.distributed import barrier

        barrier()
    cls = _cifar_class()
    try:
        train = cls(str(root), train=True, transform=train_tf)
        val = cls(str(root), train=False, transform=val_tf)
    except RuntimeError:
        raise DataError(
            f"CIFAR-10 is not in {root} (no complete cifar-10-batches-py folder)",
            hint="pass --download to fetch it, or --data-dir pointing at the folder that holds cifar-10-batches-py",
        ) from None
    except Exception as exc:
        raise DataError(f"CIFAR-10 files in {root} cannot be read: {type(exc).__name__}: {exc}", hint="delete the folder and pass --download") from None
    labels = list(train.classes)
    n_labels = len(set(train.targets))
    if len(train) == 0 or n_labels < 2:
        raise DataError(f"CIFAR-10 files in {root} hold {len(train)} training images of {n_labels} class(es)", hint="use the complete dataset (--download)")
    return DataBundle(train=train, val=val, labels=labels, name="cifar10", details={"data_dir": str(root)})


# -- synthetic --------------------------------------------------------------------------
def _synthetic(config: FinetuneConfig, train_tf: Callable, val_tf: Callable) -> DataBundle:
    num_classes = config.num_classes or 4
    common = dict(num_classes=num_classes, image_size=config.input_size, seed=config.seed, variant=config.synthetic_variant)
    train = SyntheticDataset(size=config.synthetic_train_size, split="train", transform=train_tf, **common)  # type: ignore[arg-type]
    val = SyntheticDataset(size=config.synthetic_val_size, split="val", transform=val_tf, **common)  # type: ignore[arg-type]
    for part, size in (("training", len(train)), ("validation", len(val))):
        if size < num_classes:
            raise DataError(
                f"a synthetic {part} set of {size} images cannot hold all {num_classes} classes",
                hint=f"pass --synthetic-{'train' if part == 'training' else 'val'}-size of at least {num_classes}",
            )
    return DataBundle(
        train=train,
        val=val,
        labels=list(train.classes),
        name="synthetic",
        details={"variant": config.synthetic_variant, "train_size": len(train), "val_size": len(val)},
    )


def build_datasets(config: FinetuneConfig, rank: int = 0) -> DataBundle:
    """The training and validation sets of a validated ``config``; all checks happen here."""
    assert config.input_size is not None
    prep = config.preprocessing  # the record the run trains and evaluates with, and that is served
    train_tf = InputTransform(config.input_size, config.mean, config.std, flip=config.augment, preprocessing=prep)
    val_tf = InputTransform(config.input_size, config.mean, config.std, flip=False, preprocessing=prep)
    if config.dataset == "synthetic":
        bundle = _synthetic(config, train_tf, val_tf)
    elif config.dataset == "cifar10":
        bundle = _cifar10(config, train_tf, val_tf, rank)
    else:
        bundle = _imagefolder(config, train_tf, val_tf)
    if config.num_classes is not None and config.num_classes != bundle.num_classes:
        raise DataError(
            f"--num-classes is {config.num_classes} but the {bundle.name} dataset has {bundle.num_classes} classes ({', '.join(bundle.labels[:6])}{' ...' if bundle.num_classes > 6 else ''})",
            hint="leave --num-classes out to take it from the dataset",
        )
    if len(bundle.val) == 0:
        raise DataError(f"the {bundle.name} dataset has no validation images", hint="add validation images")
    bundle.details.setdefault("train_size", len(bundle.train))
    bundle.details.setdefault("val_size", len(bundle.val))
    return bundle


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: derive numpy/random seeds from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
