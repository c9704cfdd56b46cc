"""Helpers shared by tests (importable as ``tests.helpers``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

LABELS = ["cat", "dog", "ship", "frog"]


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (relative names): 'byte-for-byte untouched' checks."""
    path = Path(path)
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}
