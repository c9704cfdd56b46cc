"""Publishing onto a filesystem that is, or becomes, full: a real size-limited tmpfs.

The repository and its staging directory live on a 16 MB tmpfs. Version 1 is the
identity model; version 2 adds a blob that does not fit, or fits only until a filler
takes the rest of the disk while the publish stages, or right before its commit point,
or after it. Whatever the moment: the error is one line (``no space left on ... need
about N MB``), the repository is byte for byte what it was (or, after the commit point,
finished by the journal once there is room), and a real tritonserver serves version 1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sft_engine.errors import RepositoryError
from sft_engine.repository.manifest import BuildManifest, write_manifest
from sft_engine.repository.writer import list_versions, publish, recover, staging_root
from sft_engine.server import ServerConfig, TritonServer
from tests.helpers import tree_digest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODELS = Path(__file__).parent / "models"
MB = 1 << 20


@pytest.fixture
def disk(tmp_path: Path):
    """A 16 MB tmpfs mounted at ``tmp_path/disk`` (the tests run as root in CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _release(tmp: Path, blob_mb: float) -> dict[str, Path]:
    """The identity model's files plus a blob of ``blob_mb`` MB (random: tmpfs stores every byte)."""
    blob = tmp / f"blob-{blob_mb}.bin"
    blob.write_bytes(os.urandom(int(blob_mb * MB)))
    return {"model.py": MODELS / "lt_identity" / "1" / "model.py", "weights.bin": blob}


def _publish(repo: Path, files: dict[str, Path], on_manifest=None) -> int:
    def manifest(version_dir: Path, version: int) -> None:
        if on_manifest is not None:
            on_manifest()
        write_manifest(version_dir, BuildManifest(model="lt_identity", version=version))

    config = (MODELS / "lt_identity" / "config.pbtxt").read_text()
    return publish(repo, "lt_identity", config, [], files, manifest).version


@pytest.fixture
def repo(disk: Path, tmp_path: Path) -> Path:
    repo = disk / "model_repository"
    assert _publish(repo, _release(tmp_path, 0.5)) == 1
    return repo


def _fill(disk: Path, leave_bytes: int = 0) -> Path:
    """Take all the free space of ``disk`` but ``leave_bytes``."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free - leave_bytes
    with open(filler, "wb") as fh:
        with contextlib.suppress(OSError):
            while free > 0:
                chunk = min(free, 4 * MB)
                fh.write(b"\0" * chunk)
                fh.flush()
                free -= chunk
    return filler


def _assert_one_line(err: RepositoryError, mb: int | None = None) -> None:
    line = err.one_line()
    assert "\n" not in line
    assert line.startswith("no space left on ") and "need about " in line and " MB" in line, line
    if mb is not None:
        assert f"need about {mb} MB" in line, line


def _serves_only_version_1(repo: Path) -> None:
    with TritonServer(ServerConfig(repository=repo, http_port=0, grpc_port=0, metrics_port=0)) as srv:
        for version, expected in ((1, True), (2, False)):
            try:
                with urllib.request.urlopen(f"http://{srv.http_url}/v2/models/lt_identity/versions/{version}/ready", timeout=5) as r:
                    ready = r.status == 200
            except urllib.error.HTTPError:
                ready = False
            assert ready is expected, f"version {version}"


def test_a_version_that_cannot_fit_is_refused_before_anything_is_written(repo: Path, disk: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    before = tree_digest(repo)
    used = shutil.disk_usage(disk).used
    copied: list[str] = []
    real_copy = shutil.copyfile
    monkeypatch.setattr(shutil, "copyfile", lambda src, dst, **kw: (copied.append(str(dst)), real_copy(src, dst, **kw))[1])
    with pytest.raises(RepositoryError) as err:
        _publish(repo, _release(tmp_path, 20))
    assert copied == []  # refused before staging: not one byte written
    _assert_one_line(err.value, mb=22)  # 20 MB blob + model.py + the 1 MB reserve, rounded up
    assert str(disk) in err.value.one_line() and "unchanged" in err.value.one_line()
    assert tree_digest(repo) == before
    assert shutil.disk_usage(disk).used <= used + 64 * 1024  # nothing was staged
    assert [p.name for p in staging_root(repo).iterdir()] == ["lock"]
    _serves_only_version_1(repo)


def test_a_disk_that_fills_while_staging_leaves_the_repository_as_it_was(repo: Path, disk: Path, tmp_path: Path) -> None:
    before = tree_digest(repo)
    with pytest.raises(RepositoryError) as err:
        _publish(repo, _release(tmp_path, 6), on_manifest=lambda: _fill(disk))  # another writer takes the rest meanwhile
    _assert_one_line(err.value)
    assert "unchanged" in err.value.one_line()
    assert tree_digest(repo) == before
    assert [p.name for p in staging_root(repo).iterdir()] == ["lock"]  # the partial stage is gone
    (disk / "filler").unlink()
    _serves_only_version_1(repo)
    assert _publish(repo, _release(tmp_path, 6)) == 2  # once there is room, the same publish succeeds


def _publish_paused_at(repo: Path, files: dict[str, Path], point: int, monkeypatch: pytest.MonkeyPatch, marker: Path):
    monkeypatch.setenv("SFT_ENGINE_PUBLISH_PAUSE_AT", str(point))
    monkeypatch.setenv("SFT_ENGINE_PUBLISH_PAUSE_FILE", str(marker))
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["version"] = _publish(repo, files)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    import time

    deadline = time.monotonic() + 60
    while not marker.exists():
        assert thread.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.02)
    return thread, outcome


def test_a_disk_full_at_the_commit_point_leaves_the_repository_as_it_was(repo: Path, disk: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    before = tree_digest(repo)
    marker = tmp_path / "paused"
    thread, outcome = _publish_paused_at(repo, _release(tmp_path, 6), 0, monkeypatch, marker)  # staged, not committed
    _fill(disk)
    Path(str(marker) + ".go").touch()
    thread.join(60)
    err = outcome.get("error")
    assert isinstance(err, RepositoryError), outcome
    _assert_one_line(err, mb=1)  # what the commit still needs: the reserve
    assert tree_digest(repo) == before
    assert [p.name for p in staging_root(repo).iterdir()] == ["lock"]
    (disk / "filler").unlink()
    _serves_only_version_1(repo)


def test_a_disk_full_after_the_commit_point_is_finished_by_the_journal(repo: Path, disk: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Committed: the renames need no data space, and a publish interrupted there is finished by ``recover``."""
    marker = tmp_path / "paused"
    thread, outcome = _publish_paused_at(repo, _release(tmp_path, 6), 1, monkeypatch, marker)  # journal written
    _fill(disk)
    # the renames of a committed publish need no data blocks: it completes on the full disk
    Path(str(marker) + ".go").touch()
    thread.join(60)
    assert outcome.get("version") == 2, outcome
    assert list_versions(repo / "lt_identity") == [1, 2]
    assert recover(repo) == []
    assert shutil.disk_usage(disk).free < 1 * MB  # still full


def test_a_journal_left_on_a_full_disk_is_finished_at_the_next_start(repo: Path, disk: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The publisher stops after its commit point with the disk full (its journal stays); ``recover`` finishes it."""
    from sft_engine.repository import journal

    marker = tmp_path / "paused"
    thread, outcome = _publish_paused_at(repo, _release(tmp_path, 6), 1, monkeypatch, marker)
    _fill(disk)
    real_apply = journal.apply

    def full_disk_apply(steps, pause_from=None):  # what ext4 does when a rename needs a new directory block
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("sft_engine.repository.writer.apply", full_disk_apply)
    Path(str(marker) + ".go").touch()
    thread.join(60)
    err = outcome.get("error")
    assert isinstance(err, RepositoryError), outcome
    _assert_one_line(err)
    assert "next publish or serve start finishes it" in err.one_line()
    assert list_versions(repo / "lt_identity") == [1]
    assert any((p / journal.JOURNAL_NAME).is_file() for p in staging_root(repo).iterdir() if p.is_dir())  # journal kept
    monkeypatch.setattr("sft_engine.repository.writer.apply", real_apply)
    (disk / "filler").unlink()
    assert recover(repo) == ["lt_identity"]
    assert list_versions(repo / "lt_identity") == [1, 2]
    assert [p.name for p in staging_root(repo).iterdir()] == ["lock"]
