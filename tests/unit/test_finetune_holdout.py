"""The labelled holdout a fine-tune keeps, and build's accuracy gate on it through --from-finetune."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sft_engine.build import build
from sft_engine.cli import build_parser, main
from sft_engine.commands.build import config_from_args
from sft_engine.build_config import BuildConfig, load_finetune_dir
from sft_engine.finetune import FinetuneConfig, SyntheticDataset, finetune, synthetic_labels
from sft_engine.finetune.data import FolderDataset, _cifar_class, scan_image_folder
from sft_engine.finetune.holdout import class_folder, folder_names, select_balanced, write_holdout
from sft_engine.models import build_model, load_weights
from sft_engine.preprocess import Preprocessing
from sft_engine.repository.manifest import read_manifest
from sft_engine.verify import parity_inputs
from tests.unit.finetune_fixtures import CIFAR_NAMES, write_cifar, write_folder

# 4 classes: the synthetic labels are then not in sorted order (cross-checker is class 3)
TINY: dict[str, Any] = dict(
    arch="resnet18", dataset="synthetic", num_classes=4, input_size=32, synthetic_train_size=48,
    synthetic_val_size=22, batch_size=16, progress=False, lr=2e-3,
)
FAST = ["--arch", "resnet18", "--input-size", "32", "--batch-size", "16", "--no-progress",
        "--num-classes", "3", "--synthetic-train-size", "24", "--synthetic-val-size", "9", "--epochs", "1"]


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _holdout_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("holdout-run") / "out"
    return finetune(FinetuneConfig(epochs=2, output=out, holdout_images=10, **TINY))


def test_synthetic_run_keeps_a_balanced_capped_holdout_of_raw_pixels(finished: Any) -> None:
    out, labels = finished.output_dir, synthetic_labels(4)
    assert labels.index("cross-checker") == 3 and sorted(labels) != labels
    root = out / "holdout"
    assert sorted(p.name for p in root.iterdir()) == sorted(labels)
    counts = {label: len(list((root / label).iterdir())) for label in labels}
    assert counts == {labels[0]: 3, labels[1]: 3, labels[2]: 2, labels[3]: 2}  # 10 images, round-robin
    # the validation set's own images, before any transform: class c's n-th image is val image 4n + c
    val = SyntheticDataset(4, 22, 32, seed=0, split="val")
    for c, label in enumerate(labels):
        files = sorted((root / label).iterdir())
        assert [f.name for f in files] == [f"{n:05d}.png" for n in range(counts[label])]
        for n, path in enumerate(files):
            assert val.targets[4 * n + c] == c
            assert np.array_equal(_pixels(path), val.array(4 * n + c))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_metadata_records_the_holdout_and_build_reads_it_as_calibration(finished: Any) -> None:
    out = finished.output_dir
    meta = json.loads((out / "metadata.json").read_text())
    holdout = meta["holdout"]
    assert holdout["dir"] == "holdout" and holdout["images"] == 10 and holdout["classes"] == 4
    assert holdout["per_class"] == {"min": 2, "max": 3}
    assert finished.metadata["holdout"] == holdout
    settings = load_finetune_dir(out)
    assert settings["calibration_dir"] == (out / "holdout").resolve()


def test_calibration_flag_overrides_the_holdout(finished: Any, tmp_path: Path) -> None:
    out = finished.output_dir
    parser = build_parser()
    cfg = config_from_args(parser.parse_args(["build", "--from-finetune", str(out)]))
    assert cfg.calibration_dir == (out / "holdout").resolve()
    other = tmp_path / "cal"
    cfg = config_from_args(parser.parse_args(["build", "--from-finetune", str(out), "--calibration", str(other)]))
    assert cfg.calibration_dir == str(other)
    spec = tmp_path / "spec.toml"
    spec.write_text(f'[build]\nfrom_finetune = "{out}"\ncalibration_dir = "cal"\n')
    cfg = config_from_args(parser.parse_args(["build", "--spec", str(spec)]))
    assert Path(cfg.calibration_dir) == other.resolve()


def test_build_from_finetune_gates_accuracy_on_the_holdout(finished: Any, tmp_path: Path) -> None:
    out, labels = finished.output_dir, synthetic_labels(4)
    cfg = BuildConfig().merged(load_finetune_dir(out), "fine-tuning metadata").merged(
        {"repository": tmp_path / "repo", "name": "ft", "engine": "onnxruntime", "precision": "fp32", "max_batch_size": 8}, "test")
    result = build(cfg)
    manifest = read_manifest(result.published.path).to_dict()
    parity = manifest["parity"]
    assert parity["passed"] and parity["samples"] == 10  # the labelled images replace the random tensors
    assert parity["eager_accuracy"] is not None and parity["engine_accuracy"] is not None
    assert manifest["settings"]["calibration_dir"] == str((out / "holdout").resolve())
    # the accuracy build recorded is the eager model's on the holdout with its true labels
    files = _holdout_files(out / "holdout")
    truth = np.array([labels.index(p.parent.name) for p in files])
    model = load_weights(build_model("resnet18", 4), finished.weights_path).eval()
    prep = Preprocessing(input_size=32)
    with torch.no_grad():
        predicted = model(torch.from_numpy(prep.batch(files))).argmax(1).numpy()
    assert parity["eager_accuracy"] == pytest.approx(float((predicted == truth).mean()), abs=1.01 / len(files))


def test_holdout_images_0_keeps_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["finetune", *FAST, "--holdout-images", "0", "--output", str(out)]) == 0
    assert "holdout:" not in capsys.readouterr().out
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["holdout"] is None and not (out / "holdout").exists()
    assert "calibration_dir" not in load_finetune_dir(out)
    code = main(["finetune", *FAST, "--holdout-images", "-1", "--output", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and "holdout_images is out of range" in err and not (tmp_path / "bad").exists()


def test_cli_run_reports_its_holdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["finetune", *FAST, "--holdout-images", "5", "--output", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["holdout"]["images"] == 5 and len(_holdout_files(out / "holdout")) == 5


def test_overwrite_replaces_the_old_holdout(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["finetune", *FAST, "--holdout-images", "6", "--output", str(out)]) == 0
    assert len(_holdout_files(out / "holdout")) == 6
    assert main(["finetune", *FAST, "--holdout-images", "0", "--output", str(out), "--overwrite"]) == 0
    assert not (out / "holdout").exists()


# -- write_holdout on each dataset kind -----------------------------------------------------
def test_class_folder_names() -> None:
    assert class_folder("cat", 0) == "cat"
    assert class_folder("sea lion_2.b-x", 1) == "sea lion_2.b-x"
    for unsafe in ("a/b", "..", ".hidden", "", "x\\y", "café", " padded", "a" * 101, "tab\tname"):
        assert class_folder(unsafe, 7) == "7", unsafe
    # a name must read back as its own class: index names that are another class's label are refused
    assert folder_names(["1", "a/b", "c"]) == ["1", None, "c"]
    assert folder_names(["Cat", "cat", "dog"]) == ["Cat", None, "dog"]
    assert folder_names(["dog", "dog"]) == ["dog", None]


def test_select_balanced_is_round_robin_and_capped() -> None:
    targets = [0, 0, 0, 0, 0, 1, 2, 2, 2]
    assert select_balanced(targets, 6) == [0, 5, 6, 1, 7, 2]
    assert select_balanced(targets, 100) == [0, 5, 6, 1, 7, 2, 8, 3, 4]
    assert select_balanced(targets, 0) == []


def test_image_folder_holdout_copies_files_and_names_unsafe_labels_by_index(tmp_path: Path) -> None:
    write_folder(tmp_path / "data", {"cat": 5, "dog": 1, "odd": 3})
    samples, _ = scan_image_folder(tmp_path / "data")
    labels = ["cat", "a/b", ".hidden"]  # labels of classes 0, 1, 2 (folders cat, dog, odd)
    entry = write_holdout(FolderDataset(samples, labels), labels, tmp_path / "out", max_images=6)
    assert entry is not None and entry["images"] == 6 and entry["per_class"] == {"min": 1, "max": 3}
    root = tmp_path / "out" / "holdout"
    assert sorted(p.name for p in root.iterdir()) == ["1", "2", "cat"]
    assert [len(list((root / d).iterdir())) for d in ("cat", "1", "2")] == [3, 1, 2]
    by_class = {c: [p for p, t in samples if t == c] for c in range(3)}
    for folder, c in (("cat", 0), ("1", 1), ("2", 2)):
        for n, path in enumerate(sorted((root / folder).iterdir())):
            assert path.name == f"{n:05d}.png" and path.read_bytes() == by_class[c][n].read_bytes()
    # and build reads each folder back as its class
    data = parity_inputs(Preprocessing(input_size=24), 4, root, labels=labels)
    files = _holdout_files(root)
    assert data.labels is not None and data.labels.tolist() == [{"cat": 0, "1": 1, "2": 2}[p.parent.name] for p in files]


def test_image_folder_holdout_decodes_formats_build_does_not_read(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
    gif, jpg = tmp_path / "a.gif", tmp_path / "b.JPG"
    Image.fromarray(pixels).convert("P").save(gif)
    Image.fromarray(pixels).save(jpg, format="JPEG")
    entry = write_holdout(FolderDataset([(gif, 0), (jpg, 1)], ["x", "y"]), ["x", "y"], tmp_path / "out")
    assert entry is not None and entry["images"] == 2
    assert np.array_equal(_pixels(tmp_path / "out" / "holdout" / "x" / "00000.png"), _pixels(gif))
    assert (tmp_path / "out" / "holdout" / "y" / "00000.jpg").read_bytes() == jpg.read_bytes()


def test_cifar_holdout_is_the_test_batch_pixels(tmp_path: Path) -> None:
    val = _cifar_class()(str(write_cifar(tmp_path / "cifar", per_batch=8)), train=False)
    entry = write_holdout(val, CIFAR_NAMES, tmp_path / "out", max_images=5)
    assert entry is not None and entry["images"] == 5
    chosen = select_balanced(val.targets, 5)
    for index in chosen:
        label = CIFAR_NAMES[val.targets[index]]
        (path,) = sorted((tmp_path / "out" / "holdout" / label).iterdir())
        assert np.array_equal(_pixels(path), val.data[index])


def test_unknown_dataset_kind_gets_no_holdout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sft_engine.finetune.holdout"):
        assert write_holdout([(torch.zeros(3, 8, 8), 0)], ["a", "b"], tmp_path) is None
    assert "no labelled holdout kept" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_no_half_holdout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_folder(tmp_path / "data", {"a": 2, "b": 2})
    samples, classes = scan_image_folder(tmp_path / "data")
    samples[-1][0].unlink()  # the last image to copy is gone
    out = tmp_path / "out"
    out.mkdir()
    with caplog.at_level(logging.WARNING, logger="sft_engine.finetune.holdout"):
        assert write_holdout(FolderDataset(samples, classes), classes, out) is None
    assert "writing it failed" in caplog.text
    assert list(out.iterdir()) == []
