"""The import graph of a package, read from its source: the one checker behind the layer and cycle tests.

Every import statement counts, wherever it stands: at the top, inside a function (a lazy
import still ties two modules together), under ``if TYPE_CHECKING:``, in its ``else:``
branch, under ``if not TYPE_CHECKING:``. A typing-only import never runs, but a reader
follows it too, and a type that must be imported from above is a layer drawn wrong.
Relative imports (``from . import x``, ``from ..m import y``) resolve to the modules
they name.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "sft_engine"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """``package/a/b.py`` → ``package.a.b``; a package's ``__init__.py`` is the package itself."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    """The module a ``from ... import`` names, its dots resolved against the importing module ``name``."""
    if not node.level:
        return node.module or ""
    package = name.split(".") if is_package else name.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that the source of ``path`` (module ``name``) imports, itself left out."""
    return set(import_lines(path, name, modules))


def import_lines(path: Path, name: str, modules: set[str]) -> dict[str, list[int]]:
    """Imported module → the lines of ``path`` that import it (for a failure message that names the spot)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: dict[str, list[int]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = _absolute(node, name, path.name == "__init__.py")
            prefix = f"{base}." if base else ""
            candidates = [base, *(f"{prefix}{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for c in candidates:
            if c in modules and c != name and node.lineno not in found.setdefault(c, []):
                found[c].append(node.lineno)
    return {c: sorted(lines) for c, lines in found.items()}


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module → the modules of the same package it imports."""
    paths = {module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    modules = set(paths)
    return {name: imports(path, name, modules) for name, path in paths.items()}


def where(package: Path = PACKAGE) -> dict[tuple[str, str], list[str]]:
    """(importer, imported) → ``path:line`` of each import statement that draws the edge."""
    paths = {module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    modules = set(paths)
    return {
        (name, target): [f"{path.relative_to(package.parent)}:{line}" for line in lines]
        for name, path in paths.items() for target, lines in import_lines(path, name, modules).items()
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan; recursion is fine for ~100 modules)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def part(module: str) -> str:
    """The part of the package a module belongs to: its first name below the package (``__init__`` for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward_edges(edges: dict[str, set[str]], layers: dict[str, int],
                 sites: dict[tuple[str, str], list[str]] | None = None) -> list[str]:
    """Every import from one part into a part of a higher layer, named (with its ``path:line`` when ``sites`` is given)."""
    return sorted(
        f"{a} (layer {layers[part(a)]}) imports {b} (layer {layers[part(b)]})"
        + (f" at {', '.join(sites[(a, b)])}" if sites else "")
        for a, deps in edges.items() for b in deps
        if part(a) != part(b) and layers[part(b)] > layers[part(a)]
    )
