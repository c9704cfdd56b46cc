"""The publishing transaction: a journal of renames, applied and rolled forward.

A publish stages everything in one directory beside the repository, flushes it, and
then writes ``journal.json`` into that directory (written to a temporary name, flushed
and renamed: the **commit point**). The journal lists the renames that make the staged
files live, in order. Each step is idempotent: a rename whose source is gone was
already done. So a process killed at any moment leaves either

- no journal: nothing in the repository changed; the staging directory is garbage, or
- a journal: every step before the kill is done, the rest are not; the next writer (or
  ``recover``) applies the remaining steps, in order, before doing anything else.

Every prefix of the steps is itself a state the writer allows (see ``writer.py``).
Only one process at a time applies or recovers journals: all of this runs under the
staging root's lock, which is why a staging directory found while holding the lock
belongs to a dead process.

``SFT_ENGINE_PUBLISH_PAUSE_AT=<k>`` with ``SFT_ENGINE_PUBLISH_PAUSE_FILE=<path>`` make
the writer stop at pause point ``k`` (0: staged, 1: committed, 1+i: after step i, then
applied), write ``<path>`` and wait until ``<path>.go`` exists. Tests use it to SIGKILL a
real publishing process at every point of a publish and to hold one publish while
another waits for the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

__all__ = ["Step", "JOURNAL_NAME", "locked", "commit", "apply", "recover_staging", "pause_point"]

LOGGER = logging.getLogger(__name__)
JOURNAL_NAME = "journal.json"
_FORMAT = "sft-engine/publish-journal@1"
_STAGE_PREFIX = "build-"


@dataclass(frozen=True)
class Step:
    """Rename ``src`` (staged) onto ``dst`` (in the repository).

    ``replace``: ``dst`` is a file that may exist and is replaced atomically
    (``config.pbtxt``); otherwise ``dst`` is a new directory and must not exist.
    """

    src: str
    dst: str
    replace: bool = False

    def to_dict(self) -> dict[str, object]:
        return {"src": self.src, "dst": self.dst, "replace": self.replace}


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold the staging root's lock; says so when another publish holds it."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            LOGGER.info("waiting for another publish into the same repository to finish")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def pause_point(index: int, name: str) -> None:
    """Test hook: stop here when ``SFT_ENGINE_PUBLISH_PAUSE_AT`` names this point."""
    wanted = os.environ.get("SFT_ENGINE_PUBLISH_PAUSE_AT")
    marker = os.environ.get("SFT_ENGINE_PUBLISH_PAUSE_FILE")
    if wanted is None or marker is None or wanted.strip() != str(index):
        return
    Path(marker).write_text(f"{index} {name}\n")
    LOGGER.info("publish paused at point %d (%s)", index, name)
    go = Path(marker + ".go")
    while not go.exists():
        time.sleep(0.05)


def commit(stage: Path, steps: list[Step]) -> None:
    """Write the journal: from here on the publish happens, even if this process dies."""
    body = {"format": _FORMAT, "steps": [s.to_dict() for s in steps]}
    tmp = stage / (JOURNAL_NAME + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(body, indent=1) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, stage / JOURNAL_NAME)
    _fsync_dir(stage)


def apply(steps: list[Step], pause_from: int | None = None) -> None:
    """Do each step not done yet, in order, flushing the directory it changes."""
    for i, step in enumerate(steps, start=1):
        src, dst = Path(step.src), Path(step.dst)
        if src.exists() or src.is_symlink():
            if not step.replace and dst.exists():
                raise OSError(f"{dst} appeared while publishing; it is left as it is")
            os.replace(src, dst) if step.replace else os.rename(src, dst)
            _fsync_dir(dst.parent)
        if pause_from is not None:
            pause_point(pause_from + i, f"after step {i}: {dst.parent.name}/{dst.name}")


def _read(journal: Path) -> list[Step] | None:
    try:
        body = json.loads(journal.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("format") != _FORMAT:
        return None
    return [Step(str(s["src"]), str(s["dst"]), bool(s.get("replace"))) for s in body.get("steps", [])]


def recover_staging(root: Path) -> list[Path]:
    """Finish committed publishes and remove every other staging directory.

    The caller holds the lock, so every staging directory here is a dead process's.
    Returns the paths that recovery put in place.
    """
    changed: list[Path] = []
    if not root.is_dir():
        return changed
    for entry in sorted(root.iterdir()):
        if not (entry.is_dir() and entry.name.startswith(_STAGE_PREFIX)):
            continue
        steps = _read(entry / JOURNAL_NAME)
        if steps:
            pending = [s for s in steps if Path(s.src).exists()]
            if pending:
                LOGGER.warning("finishing a publish that was interrupted: %d of %d steps left", len(pending), len(steps))
                try:
                    apply(steps)
                except OSError as exc:
                    LOGGER.warning("could not finish an interrupted publish (%s); its staged files are dropped", exc)
                changed.extend(Path(s.dst) for s in pending)
        else:
            LOGGER.info("removing the staging directory %s of a build that did not finish", entry.name)
        discard(entry)
    return changed


def discard(stage: Path) -> None:
    """Remove a staging directory, its journal first (a half-removed stage is never replayed)."""
    with contextlib.suppress(FileNotFoundError):
        (stage / JOURNAL_NAME).unlink()
        _fsync_dir(stage)
    shutil.rmtree(stage, ignore_errors=True)


def fsync_tree(path: Path) -> None:
    """Flush staged files and directories so a crash after the rename cannot expose empty files."""
    for item in sorted(path.rglob("*")):
        if item.is_file():
            with open(item, "rb") as fh:
                os.fsync(fh.fileno())
    for item in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        _fsync_dir(item)
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
