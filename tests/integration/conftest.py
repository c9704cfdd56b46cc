"""Fixtures the integration tests share: one real tritonserver per test module, random images on disk.

A module defines its own ``repo`` fixture (the repository its assertions are about); the
``server`` here serves it for the whole module, on free ports, and stops it afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pytest

from sft_engine.server import ServerConfig, TritonServer

#: (height, width) of each image → its file suffix by index → the written paths
WriteImages = Callable[..., list[Path]]


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[TritonServer]:
    """A tritonserver over the module's ``repo`` (every model loaded), HTTP, gRPC and metrics on free ports."""
    with TritonServer(ServerConfig(repository=repo, http_port=0, grpc_port=0, metrics_port=0)) as srv:
        yield srv


@pytest.fixture(scope="module")
def write_images(tmp_path_factory: pytest.TempPathFactory) -> WriteImages:
    """Write random-pixel RGB images to a new folder: ``write_images(folder, shapes, seed=, names=)``.

    ``shapes`` is one (height, width) per image; ``names(i)`` gives the file name of image
    ``i``, whose suffix picks the format (JPEGs at quality 90). The pixels come from one
    generator seeded with ``seed``, drawn image after image, so a module's images are the
    same in every run.
    """
    from PIL import Image

    def write(folder: str, shapes: Sequence[tuple[int, int]], *, seed: int, names: Callable[[int], str]) -> list[Path]:
        root = tmp_path_factory.mktemp(folder)
        rng = np.random.default_rng(seed)
        paths = []
        for i, (height, width) in enumerate(shapes):
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            path = root / names(i)
            if path.suffix == ".jpg":
                Image.fromarray(pixels).save(path, quality=90)
            else:
                Image.fromarray(pixels).save(path)
            paths.append(path)
        return paths

    return write
