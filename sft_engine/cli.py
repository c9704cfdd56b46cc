"""The ``sft-engine`` command line: parse, call one function, print.

Each command lives in its own module exposing ``register(subparsers)``, which adds
its parser and sets ``func`` to a function ``(args) -> int``. Errors of the
sft-engine hierarchy become one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from sft_engine.errors import SftEngineError

__all__ = ["main", "build_parser"]

#: command modules, in the order ``--help`` lists them
COMMANDS = (
    "sft_engine.commands.finetune",
    "sft_engine.commands.build",
    "sft_engine.commands.models",
    "sft_engine.commands.serve",
    "sft_engine.commands.classify",
    "sft_engine.commands.loadtest",
    "sft_engine.commands.demo",
    "sft_engine.commands.ops",
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sft-engine", description="Fine-tune, build, serve and load-test vision models on Triton.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # command not part of this build yet
                continue
            raise
        module.register(sub)
    return parser


def _drop_cuda_notice(record: logging.LogRecord) -> bool:
    """torch logs "No CUDA runtime is found, using CUDA_HOME=..." whenever a CPU machine has a
    CUDA toolkit folder; sft-engine picks CPU or GPU targets itself, so the notice only alarms."""
    return "No CUDA runtime is found" not in record.getMessage()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    cuda_logger = logging.getLogger("torch.utils.cpp_extension")
    if _drop_cuda_notice not in cuda_logger.filters:
        cuda_logger.addFilter(_drop_cuda_notice)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SftEngineError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
