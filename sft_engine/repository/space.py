"""Free space for a publish: asked before anything is written, and again before the commit point.

A publish copies every file of the new version into the staging directory beside the
repository (same filesystem) and then only renames. So what it needs is known up front:
the bytes it stages, plus a little for the journal and the directories the renames grow
(``RESERVE_BYTES``). Checking before staging refuses a publish that cannot fit without
writing a byte; checking again right before the journal is written (the commit point)
catches a disk that another process filled meanwhile, while the repository is still
untouched. A disk that fills even later (after the commit) leaves the journal, which
the next writer or ``serve`` finishes once there is room again (``journal.py``).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Iterable

from sft_engine.errors import RepositoryError

__all__ = ["RESERVE_BYTES", "files_bytes", "tree_bytes", "require_space", "is_no_space", "no_space"]

#: what the commit needs beyond the staged files: the journal, directory blocks the renames may add
RESERVE_BYTES = 1 << 20
_MB = 1 << 20


def files_bytes(paths: Iterable[Path]) -> int:
    return sum(Path(p).stat().st_size for p in paths)


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _mount_point(path: Path) -> Path:
    path = Path(path).resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _mb(n: int) -> int:
    return max(1, -(-n // _MB))


def no_space(where: Path, needed: int, free: int | None = None, *, state: str = "unchanged") -> RepositoryError:
    """The one-line error of a full disk: which filesystem, about how much the publish needs."""
    free_text = f", {free // _MB} MB free" if free is not None else ""
    return RepositoryError(
        f"no space left on {_mount_point(where)} (for {where}): need about {_mb(needed)} MB{free_text}",
        hint=f"free space there or publish into a repository on another filesystem; the repository is {state}",
    )


def require_space(where: Path, needed: int) -> None:
    """RepositoryError (``no_space``) unless ``where``'s filesystem has ``needed`` bytes plus the reserve free."""
    free = shutil.disk_usage(where).free
    if free < needed + RESERVE_BYTES:
        raise no_space(where, needed + RESERVE_BYTES, free)


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
