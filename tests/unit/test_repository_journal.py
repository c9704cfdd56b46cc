"""sft_engine/repository/journal.py: the publishing transaction, step by step, without a build.

The guarantees the writer rests on: the journal appears whole or not at all; applying its
steps is idempotent and in order, so a publish killed after any step is finished by the
next writer; a staging directory without a valid journal changes nothing and is removed;
one lock holder at a time. (``tests/integration/test_publish_crash.py`` kills real
publishing processes at every pause point; these tests pin the pieces one by one.)
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from sft_engine.repository import journal
from sft_engine.repository.journal import JOURNAL_NAME, Step, apply, commit, discard, locked, pause_point, recover_staging


def _publish(tmp_path: Path) -> tuple[Path, Path, list[Step]]:
    """A staged publish of version 2 plus a new config.pbtxt into ``repo/m`` (which serves version 1)."""
    repo = tmp_path / "repo" / "m"
    (repo / "1").mkdir(parents=True)
    (repo / "1" / "model.onnx").write_text("v1")
    (repo / "config.pbtxt").write_text("old config")
    stage = tmp_path / "staging" / "build-abc"
    (stage / "m" / "2").mkdir(parents=True)
    (stage / "m" / "2" / "model.onnx").write_text("v2")
    (stage / "m" / "config.pbtxt").write_text("new config")
    steps = [Step(str(stage / "m" / "2"), str(repo / "2")),
             Step(str(stage / "m" / "config.pbtxt"), str(repo / "config.pbtxt"), replace=True)]
    return repo, stage, steps


def _published(repo: Path) -> None:
    assert (repo / "2" / "model.onnx").read_text() == "v2"
    assert (repo / "config.pbtxt").read_text() == "new config"
    assert (repo / "1" / "model.onnx").read_text() == "v1"


def test_commit_writes_the_whole_journal_under_its_final_name(tmp_path: Path) -> None:
    _, stage, steps = _publish(tmp_path)
    commit(stage, steps)
    assert sorted(p.name for p in stage.iterdir()) == [JOURNAL_NAME, "m"]  # no temporary file left beside it
    body = json.loads((stage / JOURNAL_NAME).read_text())
    assert body["format"] == "sft-engine/publish-journal@1"
    assert body["steps"] == [s.to_dict() for s in steps]
    assert body["steps"][1] == {"src": steps[1].src, "dst": steps[1].dst, "replace": True}


def test_apply_moves_new_directories_in_and_replaces_files(tmp_path: Path) -> None:
    repo, stage, steps = _publish(tmp_path)
    apply(steps)
    _published(repo)
    assert not (stage / "m" / "2").exists() and not (stage / "m" / "config.pbtxt").exists()


def test_apply_is_idempotent_and_finishes_a_partly_applied_journal(tmp_path: Path) -> None:
    repo, _, steps = _publish(tmp_path)
    apply(steps[:1])  # killed after the first step
    assert (repo / "2").is_dir() and (repo / "config.pbtxt").read_text() == "old config"
    apply(steps)  # the done step is skipped, the rest is done
    _published(repo)
    apply(steps)  # and again: nothing left to do, nothing breaks
    _published(repo)


def test_a_new_directory_that_appeared_meanwhile_is_left_as_it_is(tmp_path: Path) -> None:
    repo, _, steps = _publish(tmp_path)
    (repo / "2").mkdir()
    (repo / "2" / "someone_elses").write_text("keep me")
    with pytest.raises(OSError, match="appeared while publishing"):
        apply(steps)
    assert [p.name for p in (repo / "2").iterdir()] == ["someone_elses"]
    assert (repo / "config.pbtxt").read_text() == "old config"  # the steps after it did not run


def test_recovery_rolls_a_committed_publish_forward(tmp_path: Path) -> None:
    repo, stage, steps = _publish(tmp_path)
    commit(stage, steps)
    apply(steps[:1])
    changed = recover_staging(stage.parent)
    assert changed == [Path(steps[1].dst)]  # only what recovery itself put in place
    _published(repo)
    assert not stage.exists()


def test_recovery_of_an_uncommitted_stage_changes_nothing_and_removes_it(tmp_path: Path) -> None:
    repo, stage, _ = _publish(tmp_path)
    assert recover_staging(stage.parent) == []
    assert not stage.exists()
    assert sorted(p.name for p in repo.iterdir()) == ["1", "config.pbtxt"]
    assert (repo / "config.pbtxt").read_text() == "old config"


@pytest.mark.parametrize("kind", ["torn", "another format", "not a mapping"])
def test_a_journal_that_is_not_ours_is_never_replayed(tmp_path: Path, kind: str) -> None:
    repo, stage, steps = _publish(tmp_path)
    whole = json.dumps({"format": "sft-engine/publish-journal@1", "steps": [s.to_dict() for s in steps]})
    (stage / JOURNAL_NAME).write_text({
        "torn": whole[: len(whole) // 2],
        "another format": whole.replace("publish-journal@1", "publish-journal@2"),
        "not a mapping": json.dumps([s.to_dict() for s in steps]),
    }[kind])
    assert recover_staging(stage.parent) == []
    assert not stage.exists() and not (repo / "2").exists()
    assert (repo / "config.pbtxt").read_text() == "old config"


def test_recovery_of_a_fully_applied_journal_only_cleans_up(tmp_path: Path) -> None:
    repo, stage, steps = _publish(tmp_path)
    commit(stage, steps)
    apply(steps)
    assert recover_staging(stage.parent) == []
    assert not stage.exists()
    _published(repo)


def test_recovery_that_cannot_finish_drops_the_stage_and_leaves_the_repository(tmp_path: Path, caplog) -> None:
    repo, stage, steps = _publish(tmp_path)
    commit(stage, steps)
    (repo / "2").mkdir()  # the directory it would create exists
    recover_staging(stage.parent)
    assert "could not finish an interrupted publish" in caplog.text
    assert not stage.exists()
    assert list((repo / "2").iterdir()) == [] and (repo / "config.pbtxt").read_text() == "old config"


def test_recovery_touches_only_staging_directories(tmp_path: Path) -> None:
    root = tmp_path / "staging"
    (root / "notes").mkdir(parents=True)
    (root / "lock").write_text("")
    (root / "build-file").write_text("a file, not a stage")
    assert recover_staging(root) == []
    assert sorted(p.name for p in root.iterdir()) == ["build-file", "lock", "notes"]
    assert recover_staging(tmp_path / "absent") == []


def test_discard_removes_the_journal_before_anything_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, stage, steps = _publish(tmp_path)
    commit(stage, steps)
    seen: list[bool] = []
    monkeypatch.setattr(journal.shutil, "rmtree", lambda path, ignore_errors=False: seen.append((Path(path) / JOURNAL_NAME).exists()))
    discard(stage)
    assert seen == [False]  # a stage half removed is never replayed
    monkeypatch.undo()
    discard(stage)
    assert not stage.exists()
    discard(stage)  # already gone: fine


def test_the_lock_is_held_by_one_holder_at_a_time(tmp_path: Path) -> None:
    root = tmp_path / "staging"

    def try_lock() -> bool:
        with open(root / "lock", "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(fh, fcntl.LOCK_UN)
            return True

    with locked(root):  # creates the staging root
        assert not try_lock()
    assert try_lock()


def test_pause_points_stop_only_where_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "paused"
    pause_point(1, "committed")  # no test hook set: returns at once
    monkeypatch.setenv("SFT_ENGINE_PUBLISH_PAUSE_AT", "2")
    monkeypatch.setenv("SFT_ENGINE_PUBLISH_PAUSE_FILE", str(marker))
    pause_point(1, "committed")
    assert not marker.exists()
    Path(str(marker) + ".go").write_text("")  # released already: it reports and goes on
    pause_point(2, "after step 1")
    assert marker.read_text() == "2 after step 1\n"


def test_apply_reports_each_step_to_its_pause_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, _, steps = _publish(tmp_path)
    points: list[tuple[int, str, bool]] = []
    monkeypatch.setattr(journal, "pause_point",
                        lambda i, name: points.append((i, name, os.path.exists(steps[i - 2].dst) and not os.path.exists(steps[i - 2].src))))
    apply(steps, pause_from=1)
    assert points == [(2, "after step 1: m/2", True), (3, "after step 2: m/config.pbtxt", True)]
