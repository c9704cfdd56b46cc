"""Two rules the architecture document states for every module of sft_engine, read from the source.

A module stays small enough to read in one sitting, and a public class name means one
thing: a reader who meets ``ModelInfo`` should not have to ask which one. Triton's Python
backend requires every served model file to define ``TritonPythonModel``; that name alone
may repeat.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.architecture.imports import PACKAGE, module_name

MAX_LINES = 450
#: names a framework makes every module of a kind define
REQUIRED_NAMES = {"TritonPythonModel"}


def module_sizes(package: Path = PACKAGE) -> dict[str, int]:
    return {module_name(p, package): len(p.read_text(encoding="utf-8").splitlines()) for p in package.rglob("*.py")}


def public_classes(path: Path) -> list[tuple[str, int]]:
    """(name, line) of every public class a module defines at its top level (under ``if`` / ``try`` too)."""
    found: list[tuple[str, int]] = []
    pending: list[ast.AST] = [ast.parse(path.read_text(encoding="utf-8"), filename=str(path))]
    while pending:
        node = pending.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                if not child.name.startswith("_"):
                    found.append((child.name, child.lineno))
            elif not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                pending.append(child)
    return found


def duplicate_classes(package: Path = PACKAGE) -> dict[str, list[str]]:
    """Public class name → the ``path:line`` of each definition, for the names defined more than once."""
    sites: dict[str, list[str]] = {}
    for path in sorted(package.rglob("*.py")):
        for name, line in public_classes(path):
            sites.setdefault(name, []).append(f"{path.relative_to(package.parent)}:{line}")
    return {name: where for name, where in sorted(sites.items()) if len(where) > 1 and name not in REQUIRED_NAMES}


def test_modules_stay_small() -> None:
    assert {m: n for m, n in module_sizes().items() if n > MAX_LINES} == {}


def test_no_public_class_name_is_defined_twice() -> None:
    assert duplicate_classes() == {}


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(source)
    return root / "pkg"


def test_the_checks_find_a_repeated_class_and_a_long_module(tmp_path: Path) -> None:
    package = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "class Info:\n    class Nested: ...\n\nclass TritonPythonModel: ...\n",
        "pkg/b/__init__.py": "",
        "pkg/b/c.py": "import sys\nif sys.version_info >= (3, 11):\n    class Info: ...\nclass TritonPythonModel: ...\n"
                      "class _Private: ...\ndef f():\n    class Nested: ...\n",
        "pkg/d.py": "x = 1\n" * (MAX_LINES + 1),
    })
    assert duplicate_classes(package) == {"Info": ["pkg/a.py:1", "pkg/b/c.py:3"]}
    assert {m: n for m, n in module_sizes(package).items() if n > MAX_LINES} == {"pkg.d": MAX_LINES + 1}
