"""No two modules of sft_engine import each other, directly or through others.

Every import counts (see ``tests/architecture/imports.py``): a lazy one in a function
still ties the two modules together, and one under ``TYPE_CHECKING`` is followed by
every reader; either breaks the layering the architecture document draws.
"""

from __future__ import annotations

from tests.architecture.imports import cycles, graph, where


def test_no_import_cycles() -> None:
    edges = graph()
    assert edges["sft_engine.ops.deploy.writer"], "the import graph was not read"  # the check sees imports at all
    sites = where()
    found = cycles(edges)
    assert found == [], "\n".join(
        " ⇄ ".join(cycle) + ": " + ", ".join(s for a in cycle for b in sorted(edges[a] & set(cycle)) for s in sites[(a, b)])
        for cycle in found)


def test_the_check_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
