"""One way to read settings: TOML in, a strict merge, typed checks.

Build specs, fine-tuning configs and load-test scenarios are all TOML files that users
edit by hand, and all of them end up in typed dataclasses. The rules are the same for
each, so they live here once:

* a missing, unreadable or malformed file is a one-line ``ConfigError`` naming the file;
* a file may put its keys at the top level or under one named table (``[build]``);
* a key the dataclass does not have is an error, never silently dropped (a typo such as
  ``learning_rate`` for ``lr`` would otherwise run with the default);
* a value of the wrong type is refused with the key's name, and a boolean is never
  taken for a number (TOML's ``true`` is a Python ``int``).

This module sits at the bottom of the package: it imports nothing of sft_engine but
its errors, so every layer may use it.
"""

from __future__ import annotations

import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

from sft_engine.errors import ConfigError

__all__ = [
    "load_toml",
    "section",
    "table",
    "check_keys",
    "typed",
    "strict_updates",
    "resolve_relative",
]


def load_toml(path: str | Path, what: str = "settings file", hint: str = "fix the TOML syntax") -> dict[str, Any]:
    """Read a TOML file; every way it can fail is a ConfigError naming ``what`` and the path.

    ``hint`` is the fix offered for a syntax error (e.g. which shipped file to copy).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist", hint="check the path") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory", hint="give a .toml file") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror or exc}", hint="check its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text and cannot be read", hint="save it as UTF-8 TOML") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} cannot be read: not valid TOML: {exc}", hint=hint) from None


def section(data: Mapping[str, Any], name: str, path: str | Path, what: str) -> dict[str, Any]:
    """The settings of a file that holds them at the top level or under ``[name]``."""
    inner = data.get(name, data)
    if not isinstance(inner, dict):
        raise ConfigError(f"{what} {path} has no [{name}] table", hint=f"put the settings at the top level or under [{name}]")
    return dict(inner)


def table(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    """The sub-table ``key`` of ``data`` (empty when absent); anything else there is an error."""
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: {key} must be a table ([{key}])", hint=f"write a [{key}] section")
    return value


def check_keys(data: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Refuse every key of ``data`` outside ``allowed``, naming them all and the allowed ones."""
    allowed = set(allowed)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{where} has unknown key(s): {', '.join(unknown)}", hint=f"allowed: {', '.join(sorted(allowed))}")


def typed(value: Any, types: type | tuple[type, ...], where: str) -> Any:
    """``value`` if it is one of ``types``; a boolean passes only where ``bool`` is asked for."""
    wanted = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in wanted:
        raise ConfigError(f"{where} must be a number, not a boolean", hint="remove the true/false")
    if not isinstance(value, wanted):
        names = " or ".join(t.__name__ for t in wanted)
        raise ConfigError(f"{where} must be {names}, not {type(value).__name__}", hint="fix the value's type")
    return value


def strict_updates(obj: Any, data: Mapping[str, Any], origin: str, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """``data`` as field updates of the dataclass ``obj``: ``-`` in a key reads as ``_``, and an
    unknown key (or one of ``exclude``, fields that are not settings) is a ConfigError.

    Returns the updates for ``dataclasses.replace``; type checks stay with the dataclass's
    own validation, which knows the ranges as well.
    """
    if not is_dataclass(obj):
        raise TypeError(f"{type(obj).__name__} is not a dataclass")
    excluded = set(exclude)
    known = {f.name for f in fields(obj)} - excluded
    updates: dict[str, Any] = {}
    for key, value in data.items():
        attr = key.replace("-", "_")
        if attr not in known:
            raise ConfigError(f"unknown key {key!r} in {origin}", hint=f"known keys: {', '.join(sorted(known))}")
        updates[attr] = value
    return updates


def resolve_relative(
    data: dict[str, Any], keys: Iterable[str], base: Path, only_if_exists: Iterable[str] = (), absolute: bool = True
) -> dict[str, Any]:
    """Make the relative paths under ``keys`` relative to ``base`` (a settings file's folder),
    so a file works from any directory. Keys in ``only_if_exists`` are changed only when the
    resolved path exists (a value that may also be a name, such as a weights enum);
    ``absolute=False`` keeps ``base / value`` as it is instead of resolving it."""
    maybe = set(only_if_exists)
    for key in keys:
        value = data.get(key)
        if isinstance(value, (str, Path)) and str(value) and not Path(value).is_absolute():
            candidate = base / value
            candidate = candidate.resolve() if absolute else candidate
            if key not in maybe or candidate.exists():
                data[key] = str(candidate)
    return data
