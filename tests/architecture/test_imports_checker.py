"""The import checker itself, on small packages written to a temporary folder.

Each way of writing an import that once slipped past it (the ``else:`` of ``if TYPE_CHECKING:``,
``if not TYPE_CHECKING:``, ``from . import x``) must draw its edge, so a cycle or an upward
import written that way fails the layer and cycle tests; a clean tree must pass them.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.architecture.imports import cycles, graph, upward_edges, where

LAYERS = {"__init__": 1, "low": 1, "high": 2}


def _tree(root: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (path below ``root`` → source) and return the package folder ``root/pkg``."""
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root / "pkg"


TYPING_ELSE = textwrap.dedent("""
    from typing import TYPE_CHECKING

    if TYPE_CHECKING:
        pass
    else:
        {stmt}
""")
NOT_TYPING = textwrap.dedent("""
    from typing import TYPE_CHECKING

    if not TYPE_CHECKING:
        {stmt}
""")
TYPING = textwrap.dedent("""
    from typing import TYPE_CHECKING

    if TYPE_CHECKING:
        {stmt}
""")
LAZY = textwrap.dedent("""
    def f():
        {stmt}
""")
PLAIN = "{stmt}\n"

#: (wrapper, statement in pkg/a.py that imports pkg/b.py)
CYCLE_FORMS = {
    "else-of-type-checking": (TYPING_ELSE, "from pkg import b"),
    "not-type-checking": (NOT_TYPING, "from pkg.b import thing"),
    "type-checking": (TYPING, "from pkg.b import Thing"),
    "relative-module": (PLAIN, "from . import b"),
    "relative-member": (PLAIN, "from .b import thing"),
    "relative-under-type-checking-else": (TYPING_ELSE, "from . import b"),
    "lazy-import": (LAZY, "import pkg.b"),
}


@pytest.mark.parametrize("wrapper, stmt", CYCLE_FORMS.values(), ids=CYCLE_FORMS)
def test_a_cycle_through_each_form_is_found(tmp_path: Path, wrapper: str, stmt: str) -> None:
    package = _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": wrapper.format(stmt=stmt),
        "pkg/b.py": "from pkg.a import thing\n",
    })
    assert cycles(graph(package)) == [["pkg.a", "pkg.b"]]


def test_relative_imports_climb_out_of_a_subpackage(tmp_path: Path) -> None:
    package = _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.sub import c\nimport pkg.sub\n",
        "pkg/sub/__init__.py": "from .. import a\n",  # in a package's __init__, one dot is the package itself
        "pkg/sub/c.py": "from ..a import thing\n",
    })
    assert cycles(graph(package)) == [["pkg.a", "pkg.sub", "pkg.sub.c"]]


#: (wrapper, statement in pkg/low/x.py that reaches pkg/high, the modules it reaches: a package and its module both run)
UPWARD_FORMS = {
    "else-of-type-checking": (TYPING_ELSE, "from pkg.high import y", ["pkg.high", "pkg.high.y"]),
    "not-type-checking": (NOT_TYPING, "from pkg.high.y import Y", ["pkg.high.y"]),
    "type-checking": (TYPING, "from pkg.high.y import Y", ["pkg.high.y"]),
    "relative-module": (PLAIN, "from ..high import y", ["pkg.high", "pkg.high.y"]),
    "relative-package": (PLAIN, "from .. import high", ["pkg.high"]),
    "lazy-import": (LAZY, "import pkg.high.y", ["pkg.high.y"]),
}


@pytest.mark.parametrize("wrapper, stmt, targets", UPWARD_FORMS.values(), ids=UPWARD_FORMS)
def test_an_upward_import_through_each_form_is_found(tmp_path: Path, wrapper: str, stmt: str, targets: list[str]) -> None:
    package = _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low/__init__.py": "",
        "pkg/low/x.py": wrapper.format(stmt=stmt),
        "pkg/high/__init__.py": "",
        "pkg/high/y.py": "Y = 1\n",
    })
    assert upward_edges(graph(package), LAYERS) == [f"pkg.low.x (layer 1) imports {t} (layer 2)" for t in targets]


def test_a_clean_tree_passes_and_every_edge_is_read(tmp_path: Path) -> None:
    package = _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low/__init__.py": "from . import x\n",
        "pkg/low/x.py": "import json\n",  # outside the package: no edge
        "pkg/low/z.py": LAZY.format(stmt="from .x import thing"),
        "pkg/high/__init__.py": "",
        "pkg/high/y.py": TYPING_ELSE.format(stmt="from ..low import x"),
        "pkg/high/w.py": TYPING.format(stmt="from pkg.high.y import Y") + "from pkg import low\n",
    })
    edges = graph(package)
    assert edges == {
        "pkg": set(), "pkg.low": {"pkg.low.x"}, "pkg.low.x": set(), "pkg.low.z": {"pkg.low.x"},
        "pkg.high": set(), "pkg.high.y": {"pkg.low", "pkg.low.x"}, "pkg.high.w": {"pkg.high.y", "pkg", "pkg.low"},
    }
    assert cycles(edges) == []
    assert upward_edges(edges, LAYERS) == []


def test_an_edge_names_the_lines_that_draw_it(tmp_path: Path) -> None:
    package = _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low/__init__.py": "",
        "pkg/low/x.py": "import os\nfrom pkg.high.y import Y\n" + LAZY.format(stmt="from ..high.y import Y"),
        "pkg/high/__init__.py": "",
        "pkg/high/y.py": "",
    })
    assert where(package)[("pkg.low.x", "pkg.high.y")] == ["pkg/low/x.py:2", "pkg/low/x.py:5"]
    assert upward_edges(graph(package), LAYERS, where(package)) == [
        "pkg.low.x (layer 1) imports pkg.high.y (layer 2) at pkg/low/x.py:2, pkg/low/x.py:5"]
