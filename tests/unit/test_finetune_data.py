"""Datasets: the synthetic generator, image folders (mixed, broken, too small) and CIFAR-10 files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sft_engine.errors import DataError
from sft_engine.finetune import FinetuneConfig, SyntheticDataset, build_datasets, make_synthetic_images, synthetic_labels
from sft_engine.finetune.synthetic import MAX_CLASSES, synthetic_classes
from tests.unit.finetune_fixtures import CIFAR_NAMES, write_cifar, write_folder


def _config(**kw: object) -> FinetuneConfig:
    return FinetuneConfig(input_size=32, **kw).validated()  # type: ignore[arg-type]


def test_synthetic_is_deterministic_by_seed() -> None:
    a = SyntheticDataset(4, 12, 32, seed=3)
    b = SyntheticDataset(4, 12, 32, seed=3)
    c = SyntheticDataset(4, 12, 32, seed=4)
    assert all(np.array_equal(a.array(i), b.array(i)) for i in range(12))
    assert not all(np.array_equal(a.array(i), c.array(i)) for i in range(12))
    assert a.targets == [i % 4 for i in range(12)]


def test_synthetic_splits_differ_and_lazy_rendering_matches_the_cache() -> None:
    train = SyntheticDataset(4, 8, 32, seed=0, split="train")
    val = SyntheticDataset(4, 8, 32, seed=0, split="val")
    assert not np.array_equal(train.array(0), val.array(0))
    lazy = SyntheticDataset(4, 8, 32, seed=0, split="train")
    lazy._cache = None
    assert np.array_equal(lazy.array(5), train.array(5))


def test_synthetic_variants_share_vocabulary_but_not_classes() -> None:
    a, b = synthetic_classes(8, "a"), synthetic_classes(8, "b")
    assert not set(a) & set(b)
    assert len(set(synthetic_classes(MAX_CLASSES, "a"))) == MAX_CLASSES
    assert synthetic_labels(4) == ["disk-plain", "square-hstripes", "triangle-vstripes", "cross-checker"]
    assert len(set(synthetic_labels(MAX_CLASSES, "b"))) == MAX_CLASSES


def test_make_synthetic_images_writes_labelled_pngs(tmp_path: Path) -> None:
    paths = make_synthetic_images(tmp_path, count=6, num_classes=3, image_size=40, seed=1)
    assert len(paths) == 6 and all(p.suffix == ".png" and p.is_file() for p in paths)
    assert {p.parent.name for p in paths} == set(synthetic_labels(3))
    with Image.open(paths[0]) as img:
        assert img.size == (40, 40) and img.mode == "RGB"
    again = make_synthetic_images(tmp_path / "again", count=6, num_classes=3, image_size=40, seed=1)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]


def test_synthetic_bundle_normalizes_with_mean_and_std() -> None:
    bundle = build_datasets(_config(dataset="synthetic", num_classes=3, synthetic_train_size=6, synthetic_val_size=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    image, label = bundle.val[0]
    raw = torch.from_numpy(bundle.val.array(0)).permute(2, 0, 1).float() / 255
    assert image.shape == (3, 32, 32) and label == 0
    assert torch.allclose(image, (raw - 0.5) / 0.25, atol=1e-5)
    assert bundle.labels == synthetic_labels(3)


def test_mixed_sizes_and_modes_become_rgb_of_the_input_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8), "L").save(tmp_path / "a" / "gray.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8), "RGBA").save(tmp_path / "a" / "alpha.png")
    Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)).convert("CMYK").save(tmp_path / "a" / "cmyk.jpg")
    palette = Image.fromarray(rng.integers(0, 256, (17, 33, 3), dtype=np.uint8)).convert("P")
    palette.info["transparency"] = 0
    palette.save(tmp_path / "b" / "palette.png", transparency=0)
    Image.fromarray(rng.integers(0, 256, (90, 12, 3), dtype=np.uint8)).save(tmp_path / "b" / "wide.bmp")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "b" / "small.webp")
    bundle = build_datasets(_config(dataset="imagefolder", data_dir=tmp_path, val_fraction=0.34))
    assert bundle.labels == ["a", "b"]
    items = [bundle.train[i] for i in range(len(bundle.train))] + [bundle.val[i] for i in range(len(bundle.val))]
    assert len(items) == 6
    assert all(img.shape == (3, 32, 32) and img.dtype == torch.float32 for img, _ in items)


def test_train_and_val_folders_are_used_when_present(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", {"x": 3, "y": 3})
    write_folder(tmp_path / "val", {"x": 1, "y": 2})
    bundle = build_datasets(_config(dataset="imagefolder", data_dir=tmp_path))
    assert (len(bundle.train), len(bundle.val)) == (6, 3)
    assert sorted(bundle.val.targets) == [0, 1, 1]


@pytest.mark.parametrize(
    "layout, message",
    [
        ({}, "holds no class folders"),
        ({"only": 4}, "holds one class"),
        ({"x": 2, "empty": 0}, "holds no image files"),
    ],
)
def test_empty_and_one_class_folders_are_refused(tmp_path: Path, layout: dict[str, int], message: str) -> None:
    write_folder(tmp_path, layout)
    with pytest.raises(DataError, match=message):
        build_datasets(_config(dataset="imagefolder", data_dir=tmp_path))


def test_corrupt_images_fail_naming_the_files(tmp_path: Path) -> None:
    write_folder(tmp_path, {"x": 3, "y": 3})
    (tmp_path / "x" / "noise.png").write_bytes(b"not an image at all")
    good = (tmp_path / "y" / "0.png").read_bytes()
    (tmp_path / "y" / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError) as info:
        build_datasets(_config(dataset="imagefolder", data_dir=tmp_path))
    text = info.value.one_line()
    assert "2 image file(s) cannot be decoded" in text
    assert "noise.png" in text and "cut.png" in text


def test_val_folder_with_an_unknown_class_is_refused(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", {"x": 2, "y": 2})
    write_folder(tmp_path / "val", {"x": 1, "z": 1})
    with pytest.raises(DataError, match="classes the training folder lacks: z"):
        build_datasets(_config(dataset="imagefolder", data_dir=tmp_path))


def test_cifar10_format_files_are_read_through_torchvision(tmp_path: Path) -> None:
    write_cifar(tmp_path, per_batch=4)
    bundle = build_datasets(_config(dataset="cifar10", data_dir=tmp_path))
    assert bundle.labels == CIFAR_NAMES
    assert (len(bundle.train), len(bundle.val)) == (20, 4)
    image, label = bundle.train[0]
    assert image.shape == (3, 32, 32) and label == 0


def test_missing_cifar10_names_the_download_flag(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--download"):
        build_datasets(_config(dataset="cifar10", data_dir=tmp_path))


def test_num_classes_must_match_the_dataset(tmp_path: Path) -> None:
    write_folder(tmp_path, {"x": 2, "y": 2})
    with pytest.raises(DataError, match="--num-classes is 5"):
        build_datasets(_config(dataset="imagefolder", data_dir=tmp_path, num_classes=5))
