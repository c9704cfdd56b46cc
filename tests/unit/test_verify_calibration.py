"""Calibration directories for the parity gate: which class each folder of images is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sft_engine.cli import main
from sft_engine.errors import ConfigError
from sft_engine.preprocess import Preprocessing
from sft_engine.verify import parity_inputs
from tests.helpers import LABELS
from tests.unit.finetune_fixtures import write_folder

PREP = Preprocessing(input_size=16)


def _labels(root: Path, **kw) -> list[int]:
    data = parity_inputs(PREP, 3, root, **kw)
    assert data.labels is not None and len(data.labels) == len(data.inputs)
    return data.labels.tolist()


def test_folders_named_after_labels_map_to_their_label_index_when_a_class_is_missing(tmp_path: Path) -> None:
    write_folder(tmp_path, {"bird": 2, "dog": 1})  # no "cat": sorted order would make bird 0, dog 1
    assert _labels(tmp_path, labels=["cat", "dog", "bird"]) == [2, 2, 1]


def test_folders_named_by_class_index(tmp_path: Path) -> None:
    write_folder(tmp_path, {"0": 1, "2": 2})
    assert _labels(tmp_path, labels=["a/b", "c:d", "e|f"]) == [0, 2, 2]
    assert _labels(tmp_path, labels=["x", "y", "z"]) == [0, 2, 2]


def test_label_names_win_over_index_names(tmp_path: Path) -> None:
    write_folder(tmp_path, {"1": 1, "0": 1})
    assert _labels(tmp_path, labels=["1", "0"]) == [1, 0]  # folder "0" is label "0" (class 1), "1" is class 0


def test_unknown_folder_is_refused_with_the_fix(tmp_path: Path) -> None:
    write_folder(tmp_path, {"cat": 1, "fish": 1})
    with pytest.raises(ConfigError, match="'fish'") as info:
        parity_inputs(PREP, 3, tmp_path, labels=["cat", "dog", "bird"])
    assert "not a label and not a class index 0..2" in str(info.value) and "label" in (info.value.hint or "")
    write_folder(tmp_path / "more", {"7": 1, "dog": 1})
    with pytest.raises(ConfigError, match="'7'"):  # out of range
        parity_inputs(PREP, 3, tmp_path / "more", labels=["cat", "dog", "bird"])


def test_unnamed_folders_fall_back_to_sorted_order_only_one_per_class(tmp_path: Path) -> None:
    write_folder(tmp_path / "full", {"b": 1, "a": 1, "c": 1})
    assert _labels(tmp_path / "full", labels=["class_0", "class_1", "class_2"]) == [0, 1, 2]
    write_folder(tmp_path / "short", {"b": 1, "a": 1})
    with pytest.raises(ConfigError, match="names no class"):
        parity_inputs(PREP, 3, tmp_path / "short", labels=["class_0", "class_1", "class_2"])
    assert _labels(tmp_path / "short") == [0, 1]  # no labels given: sorted order, as before


def test_nested_images_belong_to_their_top_level_class_folder(tmp_path: Path) -> None:
    write_folder(tmp_path / "dog" / "sub", {"x": 2})
    write_folder(tmp_path, {"cat": 1})
    assert _labels(tmp_path, labels=["cat", "dog"]) == [0, 1, 1]


def test_top_level_images_stay_unlabelled_after_the_random_inputs(tmp_path: Path) -> None:
    write_folder(tmp_path, {"cat": 1})
    (tmp_path / "cat" / "0.png").rename(tmp_path / "top.png")
    (tmp_path / "cat").rmdir()
    write_folder(tmp_path, {"dog": 1})
    data = parity_inputs(PREP, 3, tmp_path, labels=["cat"])
    assert data.labels is None and data.inputs.shape == (5, 3, 16, 16)
    random = parity_inputs(PREP, 3, None).inputs
    assert np.array_equal(data.inputs[:3], random)


def test_build_cli_refuses_an_unknown_calibration_folder(tmp_path: Path, tiny_weights: Path, labels_file: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    write_folder(tmp_path / "cal", {LABELS[0]: 1, "not-a-class": 1}, size=32)
    code = main(["build", "--arch", "resnet18", "--weights", str(tiny_weights), "--labels", str(labels_file),
                 "--input-size", "32", "--engine", "onnxruntime", "--repository", str(tmp_path / "repo"),
                 "--calibration", str(tmp_path / "cal"), "--json"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "'not-a-class'" in err
    assert not (tmp_path / "repo").exists()
