"""The layers docs/architecture.md draws: each part of sft_engine imports only its own layer or those below.

Read from the source (every import counts, lazy and ``TYPE_CHECKING`` ones too), so a new
import that reaches upwards fails here, with the edge named, before it becomes a cycle.
"""

from __future__ import annotations

from tests.architecture.imports import graph as _graph
from tests.architecture.imports import part as _part
from tests.architecture.imports import upward_edges, where

#: part of sft_engine (first name below the package) → layer, from the ground up
LAYERS: dict[str, int] = {
    # 1: no sft-engine imports but errors (the package root only for its version)
    "errors": 1, "timing": 1, "settings": 1, "deps": 1, "lifetime": 1, "pixels": 1, "lazy": 1, "__init__": 1,
    # 2: talking to a Triton server
    "triton": 2,
    # 3: models, preprocessing, the model repository and its manifest
    "models": 3, "preprocess": 3, "repository": 3,
    # 4: export, verification, fine-tuning
    "verify": 4, "engines": 4, "finetune": 4,
    # 5: the pipeline's stages
    "build_config": 5, "build": 5, "server": 5, "watchdog": 5, "client": 5, "loadtest": 5, "ngc": 5,
    # 6: operations and the command line
    "ops": 6, "serving": 6, "walkthrough": 6, "commands": 6, "cli": 6,
}


def _upward_edges(graph: dict[str, set[str]], sites: dict[tuple[str, str], list[str]] | None = None) -> list[str]:
    return upward_edges(graph, LAYERS, sites)


def test_every_part_has_a_layer() -> None:
    assert sorted({_part(m) for m in _graph()} - set(LAYERS)) == []


def test_no_part_imports_a_layer_above_it() -> None:
    graph = _graph()
    assert graph["sft_engine.build"], "the import graph was not read"
    assert _upward_edges(graph, where()) == []  # each edge named with the lines that draw it


def test_the_check_finds_an_upward_import() -> None:
    assert _upward_edges({"sft_engine.triton.x": {"sft_engine.client.y"}}) == [
        "sft_engine.triton.x (layer 2) imports sft_engine.client.y (layer 5)"]
