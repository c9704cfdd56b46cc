"""A separate process that publishes one version (``python -m tests.publish_worker SPEC.json``).

Tests start it, let it stop at a publishing pause point (``SFT_ENGINE_PUBLISH_PAUSE_AT``)
and SIGKILL it there, or run two at once against one repository.
SPEC: {"repository", "name", "config_text", "labels", "files": {name: path}}.
Prints ``published <version>`` on success.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from sft_engine.repository.manifest import BuildManifest, write_manifest
from sft_engine.repository.writer import publish


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    spec = json.loads(Path(argv[0]).read_text())

    def manifest(version_dir: Path, version: int) -> None:
        write_manifest(version_dir, BuildManifest(model=spec["name"], version=version))

    published = publish(Path(spec["repository"]), spec["name"], spec["config_text"], spec["labels"],
                        {k: Path(v) for k, v in spec["files"].items()}, manifest)
    print(f"published {published.version}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
