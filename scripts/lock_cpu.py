"""Write ``constraints-cpu.txt``: the exact versions of the CPU install that ``scripts/setup.sh`` makes.

The package's own requirements are ranges (so it installs into an NGC PyTorch container
and keeps that container's torch); the reproducible CPU install is this lock, used as a
pip constraints file by ``scripts/setup.sh``. It pins every distribution in the
dependency closure of sft-engine with the extras setup.sh installs, at the versions
installed in the environment that runs this script:

    .venv/bin/python scripts/lock_cpu.py            # rewrite constraints-cpu.txt
    .venv/bin/python scripts/lock_cpu.py --check    # exit 1 if the file is not what it would write
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints-cpu.txt"
#: the extras scripts/setup.sh installs (keep in step with it)
EXTRAS = ("server", "onnx", "openvino", "int8", "modelopt", "loadtest", "test")
HEADER = """\
# Exact CPU install of sft-engine (extras: {extras}) for Python {python} on Linux x86_64.
# Used as a pip constraints file by scripts/setup.sh; the package's own requirements
# (pyproject.toml) are ranges. Regenerate with: .venv/bin/python scripts/lock_cpu.py
"""


def project_requirements(extras: tuple[str, ...] = EXTRAS) -> list[Requirement]:
    """Requirements of pyproject.toml's dependencies plus ``extras`` (self-references expanded)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    out = [Requirement(r) for r in project["dependencies"]]
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in optional.get(extra, []):
            req = Requirement(text)
            if canonicalize_name(req.name) == canonicalize_name(project["name"]):
                pending.extend(req.extras)
            else:
                out.append(req)
    return out


def _applies(req: Requirement, extras: tuple[str, ...] = ()) -> bool:
    """Whether ``req`` applies on this platform, for a dependent that asked for ``extras``."""
    if req.marker is None:
        return True
    env = default_environment()
    return any(req.marker.evaluate({**env, "extra": extra}) for extra in ("", *extras))


def closure(roots: list[Requirement]) -> dict[str, str]:
    """Canonical name → installed version of every distribution the roots need here."""
    pins: dict[str, str] = {}
    visited: set[tuple[str, frozenset[str]]] = set()
    pending = [r for r in roots if _applies(r)]
    while pending:
        req = pending.pop()
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in visited:
            continue
        visited.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"lock_cpu: {req.name} is required but not installed in {sys.prefix}") from None
        pins[name] = dist.version
        for text in dist.requires or []:
            sub = Requirement(text)
            if _applies(sub, tuple(sorted(req.extras))):
                pending.append(sub)
    return pins


def render() -> str:
    pins = closure(project_requirements())
    python = ".".join(map(str, sys.version_info[:2]))
    lines = [HEADER.format(extras=",".join(EXTRAS), python=python)]
    lines += [f"{name}=={version}" for name, version in sorted(pins.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed file instead of writing it")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if LOCK.read_text() != text:
            print(f"lock_cpu: {LOCK.name} differs from this environment's install; rerun scripts/lock_cpu.py", file=sys.stderr)
            return 1
        return 0
    LOCK.write_text(text)
    print(f"wrote {LOCK.name} ({text.count('==')} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
