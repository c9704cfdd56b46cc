"""sft_engine/repository/integrity.py: a version's files against its manifest, and what serve does with a damaged one.

Versions are published through the real writer (its manifest records the sha256 and
size of every file); then a file is truncated, altered or removed, as a copy cut short
or a hand edit would, and each reader must say which file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from sft_engine.cli import main
from sft_engine.errors import RepositoryError
from sft_engine.repository.config import ModelConfigSpec, TensorSpec, parse_pbtxt, to_pbtxt
from sft_engine.repository.integrity import PIN_RECORD_NAME, exclude_damaged, require_intact, verify_repository, verify_version
from sft_engine.repository.manifest import BuildManifest, write_manifest
from sft_engine.repository.writer import live_versions, list_versions, publish

CONFIG = to_pbtxt(ModelConfigSpec(name="tiny", inputs=(TensorSpec("input", "FP32", (3, 8, 8)),),
                                  outputs=(TensorSpec("logits", "FP32", (2,)),), max_batch_size=4, backend="onnxruntime"))


def _publish(repo: Path, tmp: Path, payload: bytes, name: str = "tiny") -> Path:
    src = tmp / f"src-{payload[:8].hex()}.onnx"
    src.write_bytes(payload)
    published = publish(repo, name, CONFIG, ["a", "b"], {"model.onnx": src},
                        lambda d, v: write_manifest(d, BuildManifest(model=name, version=v)))
    return published.path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "model_repository"
    _publish(repo, tmp_path, b"engine one " * 1000)
    _publish(repo, tmp_path, b"engine two " * 1000)
    return repo


def test_published_versions_match_their_manifests(repo: Path) -> None:
    checks = verify_repository(repo)
    assert [(c.model, c.version, c.intact, c.verifiable) for c in checks] == [("tiny", 1, True, True), ("tiny", 2, True, True)]
    assert all(c.files == 2 for c in checks)  # model.onnx and config.pbtxt.built


@pytest.mark.parametrize("damage, problem", [
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "truncated"),
    (lambda p: p.write_bytes(p.read_bytes().replace(b"two", b"TWO", 1)), "altered"),
    (lambda p: p.unlink(), "missing"),
])
def test_a_damaged_file_is_named(repo: Path, damage, problem: str) -> None:
    damage(repo / "tiny" / "2" / "model.onnx")
    check = verify_version(repo / "tiny" / "2")
    assert [(d.path.name, d.problem) for d in check.damage] == [("model.onnx", problem)]
    assert verify_version(repo / "tiny" / "1").intact
    with pytest.raises(RepositoryError) as err:
        require_intact(repo / "tiny" / "2")
    assert str(repo / "tiny" / "2" / "model.onnx") in err.value.one_line() and problem in err.value.one_line()
    assert "\n" not in err.value.one_line()


def test_a_version_without_a_manifest_is_not_verifiable_and_not_refused(repo: Path) -> None:
    (repo / "tiny" / "2" / "build_manifest.json").unlink()
    check = require_intact(repo / "tiny" / "2")
    assert not check.verifiable and check.intact


def test_check_command_exit_codes(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--repository", str(repo)]) == 0
    assert "all 2 verifiable version(s) match" in capsys.readouterr().out
    (repo / "tiny" / "1" / "model.onnx").write_bytes(b"x")
    (repo / "tiny" / "2" / "config.pbtxt.built").write_text("edited\n")
    assert main(["check", "--repository", str(repo)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert "tiny/1/model.onnx: truncated" in err[0] and "tiny/2/config.pbtxt.built" in err[1]
    assert main(["check", "--repository", str(repo), "--json"]) == 1
    body = json.loads(capsys.readouterr().out)
    assert [len(v["damage"]) for v in body] == [1, 1]
    assert main(["check", "--repository", str(repo / "nope")]) == 2


def _live(repo: Path) -> list[int]:
    return live_versions(parse_pbtxt((repo / "tiny" / "config.pbtxt").read_text()), list_versions(repo / "tiny"))


def test_serve_start_keeps_a_damaged_latest_version_out_and_the_previous_one_serving(repo: Path) -> None:
    original = (repo / "tiny" / "config.pbtxt").read_text()
    assert _live(repo) == [2]
    engine = repo / "tiny" / "2" / "model.onnx"
    good = engine.read_bytes()
    engine.write_bytes(good[:10])
    lines = exclude_damaged(repo)
    assert len(lines) == 1 and "tiny version 2 is damaged" in lines[0] and "model.onnx: truncated" in lines[0]
    assert "serving version(s) 1 instead" in lines[0]
    assert _live(repo) == [1]
    cfg = parse_pbtxt((repo / "tiny" / "config.pbtxt").read_text())
    assert list(cfg.version_policy.specific.versions) == [1] and cfg.max_batch_size == 4  # only the policy changed
    assert exclude_damaged(repo) == []  # nothing more to do while it stays damaged
    engine.write_bytes(good)  # repaired: the next start puts the model's own config back
    assert "restored" in exclude_damaged(repo)[0]
    assert (repo / "tiny" / "config.pbtxt").read_text() == original and not (repo / "tiny" / PIN_RECORD_NAME).exists()
    assert _live(repo) == [2]


def test_a_publish_after_the_pin_wins_over_the_stale_record(repo: Path, tmp_path: Path) -> None:
    (repo / "tiny" / "2" / "model.onnx").write_bytes(b"bad")
    exclude_damaged(repo)
    _publish(repo, tmp_path, b"engine three " * 1000)  # the writer replaces the pinned config
    assert _live(repo) == [3]
    assert exclude_damaged(repo) == []
    assert _live(repo) == [3] and not (repo / "tiny" / PIN_RECORD_NAME).exists()


def test_no_intact_version_left_refuses_start_naming_the_file(repo: Path) -> None:
    for v in (1, 2):
        (repo / "tiny" / str(v) / "model.onnx").write_bytes(b"bad")
    with pytest.raises(RepositoryError) as err:
        exclude_damaged(repo)
    assert "tiny/2/model.onnx" in err.value.one_line() and "no intact version" in err.value.one_line()


def test_an_older_damaged_version_that_is_not_live_changes_nothing(repo: Path) -> None:
    (repo / "tiny" / "1" / "model.onnx").write_bytes(b"bad")
    before = (repo / "tiny" / "config.pbtxt").read_text()
    assert exclude_damaged(repo) == []
    assert (repo / "tiny" / "config.pbtxt").read_text() == before


def test_latest_two_keeps_two_good_versions(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    for i in range(3):
        _publish(repo, tmp_path, f"engine {i} ".encode() * 100)
    cfg = parse_pbtxt((repo / "tiny" / "config.pbtxt").read_text())
    cfg.version_policy.latest.num_versions = 2
    from google.protobuf import text_format
    (repo / "tiny" / "config.pbtxt").write_text(text_format.MessageToString(cfg))
    assert _live(repo) == [2, 3]
    (repo / "tiny" / "3" / "model.onnx").write_bytes(b"bad")
    exclude_damaged(repo)
    assert _live(repo) == [1, 2]
    assert isinstance(parse_pbtxt((repo / "tiny" / "config.pbtxt").read_text()), mc.ModelConfig)
