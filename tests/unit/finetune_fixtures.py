"""Small datasets written on the fly for the fine-tuning tests (no downloads)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar(root: Path, per_batch: int = 8, seed: int = 0) -> Path:
    """CIFAR-10's python format (5 training batches, a test batch, batches.meta) with tiny batches."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for n, name in enumerate(names):
        labels = [int(v) for v in (np.arange(per_batch) + n) % 10]
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as fh:
            pickle.dump({"batch_label": name, "labels": labels, "data": data, "filenames": [f"{i}.png" for i in range(per_batch)]}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": CIFAR_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}, fh)
    return root


def write_folder(root: Path, classes: dict[str, int], size: int = 24, seed: int = 0) -> Path:
    """``root/<class>/<i>.png`` with ``classes[name]`` random RGB images each."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root
