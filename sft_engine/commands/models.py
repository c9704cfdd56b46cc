"""``sft-engine models``: what ``--arch`` can name, with each model's preprocessing.

One line per model: the ``--arch`` name, then the source's eval transform as it will
be recorded and served (input size, resize and crop, interpolation, mean/std). Only
records are read: nothing is built or downloaded.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
from typing import Any, Iterator


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the architectures --arch can name, with their preprocessing",
                       description="List the classifiers sft-engine can fine-tune and build (torchvision's by their bare "
                                   "name, timm's as timm:NAME), each with the preprocessing its source trained it with.")
    p.add_argument("--source", choices=("torchvision", "timm"), default=None, help="one source only (default: both)")
    p.add_argument("--filter", default=None, metavar="TEXT",
                   help="names containing TEXT (or matching it, with * and ?), e.g. vit or convnext_*")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    p.set_defaults(func=run)


def _matches(name: str, pattern: str | None) -> bool:
    if not pattern:
        return True
    pattern = pattern.lower()
    return fnmatch.fnmatch(name.lower(), pattern) if any(c in pattern for c in "*?[") else pattern in name.lower()


def rows(source: str | None = None, pattern: str | None = None) -> Iterator[dict[str, Any]]:
    """One record per model of ``source`` (or every source) whose name matches ``pattern``."""
    from sft_engine.errors import ModelError
    from sft_engine.models import get_source
    from sft_engine.models.source import SOURCES

    for name in (source,) if source else SOURCES:
        src = get_source(name)
        for model in src.names():
            if not _matches(model, pattern):
                continue
            arch = model if name == "torchvision" else f"{name}:{model}"
            try:
                prep = src.preprocessing(model)
            except ModelError as exc:  # e.g. a non-square input: listed, with why it cannot be built
                yield {"arch": arch, "source": name, "error": exc.one_line()}
                continue
            yield {"arch": arch, "source": name, "input_size": prep.input_size, "resize_size": prep.resize_size or prep.input_size,
                   "crop_mode": prep.crop_mode, "interpolation": prep.resize, "mean": list(prep.mean), "std": list(prep.std)}


def _line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"{row['arch']:<48} cannot be built: {row['error']}"
    fmt = lambda values: ",".join(f"{v:g}" for v in values)  # noqa: E731
    resize = f"{row['crop_mode']} {row['resize_size']}->{row['input_size']}"
    return f"{row['arch']:<48} {row['input_size']:>4}  {resize:<18} {row['interpolation']:<8} mean {fmt(row['mean'])} std {fmt(row['std'])}"


def run(args: argparse.Namespace) -> int:
    found = list(rows(args.source, args.filter))
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    if not found:
        from sft_engine.errors import ConfigError

        raise ConfigError(f"no model matches {args.filter!r}", hint="try a shorter --filter, e.g. vit, or leave it out")
    print(f"{'arch':<48} {'size':>4}  {'resize->crop':<18} {'interp':<8} normalization")
    for row in found:
        print(_line(row))
    return 0
