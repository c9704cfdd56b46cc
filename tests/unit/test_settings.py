"""The shared settings helper: every settings file fails the same way, with the file named."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from sft_engine.errors import ConfigError
from sft_engine.settings import check_keys, load_toml, resolve_relative, section, strict_updates, table, typed


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "my file .* does not exist"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"a = = 1\n", "cannot be read: not valid TOML"),
    ],
)
def test_load_toml_errors_name_the_file(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "s.toml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=match):
        load_toml(path, "my file")


def test_load_toml_directory_and_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_toml(tmp_path)
    path = tmp_path / "s.toml"
    path.write_text("[build]\narch = 'resnet18'\n")
    assert section(load_toml(path), "build", path, "spec") == {"arch": "resnet18"}
    path.write_text("arch = 'resnet18'\n")
    assert section(load_toml(path), "build", path, "spec") == {"arch": "resnet18"}
    path.write_text("build = 3\n")
    with pytest.raises(ConfigError, match=r"no \[build\] table"):
        section(load_toml(path), "build", path, "spec")


@dataclass
class _Settings:
    epochs: int = 1
    batch_size: int = 8
    source: str = ""


def test_strict_updates_refuse_unknown_and_excluded_keys() -> None:
    base = _Settings()
    assert replace(base, **strict_updates(base, {"batch-size": 4}, "flags")).batch_size == 4
    with pytest.raises(ConfigError, match="unknown key 'epoch' in x.toml"):
        strict_updates(base, {"epoch": 3}, "x.toml")
    with pytest.raises(ConfigError, match="unknown key 'source'"):
        strict_updates(base, {"source": "me"}, "x.toml", exclude=("source",))


def test_typed_checks_and_tables() -> None:
    assert typed(3, (int, float), "k") == 3
    assert typed(True, bool, "k") is True
    with pytest.raises(ConfigError, match="k must be a number, not a boolean"):
        typed(True, (int, float), "k")
    with pytest.raises(ConfigError, match="k must be str, not int"):
        typed(3, str, "k")
    with pytest.raises(ConfigError, match="must be a table"):
        table({"slo": 3}, "slo", "f")
    assert table({}, "slo", "f") == {}
    with pytest.raises(ConfigError, match="unknown key\\(s\\): b"):
        check_keys({"a": 1, "b": 2}, {"a"}, "f")


def test_resolve_relative(tmp_path: Path) -> None:
    (tmp_path / "w.pt").write_bytes(b"")
    data = resolve_relative({"weights": "w.pt", "name": "DEFAULT", "abs": "/x"}, ("weights", "name", "abs"), tmp_path, only_if_exists=("name",))
    assert data == {"weights": str((tmp_path / "w.pt").resolve()), "name": "DEFAULT", "abs": "/x"}
