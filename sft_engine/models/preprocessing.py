"""Which preprocessing a build serves: a file that names every step, the arch's source, or the plain resize; then the given fields.

The model sources answer what an arch was trained with (``source_preprocessing``); an
exported program carries nothing, so its preprocessing comes from a file
(``load_preprocess_config``), never from a guess. Fields given on top (flags, a spec, a
fine-tune's record) override the base, and what they changed is said, for the manifest.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

from sft_engine.errors import ConfigError
from sft_engine.models.registry import canonical_arch, get_arch, list_archs, source_preprocessing
from sft_engine.preprocess import Preprocessing, parse_floats, resize_size_for
from sft_engine.settings import load_toml, section

__all__ = ["PREPROCESS_MODES", "OVERRIDES", "resolve_preprocessing", "load_preprocess_config"]

#: ``auto``: the arch's source for any arch beyond the six CNNs the path began with, the plain resize for those
PREPROCESS_MODES = ("auto", "source", "plain")
#: the setting names that override a record, and the record's field of each
OVERRIDES = {"input_size": "input_size", "resize_size": "resize_size", "crop_mode": "crop_mode", "interpolation": "resize",
             "mean": "mean", "std": "std"}
#: keys of a --preprocess-config file (timm's data-config names: ``crop_pct`` for ``resize_size``)
FILE_KEYS = ("input_size", "resize_size", "crop_pct", "crop_mode", "interpolation", "mean", "std")


def resolve_preprocessing(arch: str, mode: str = "auto", file: str | Path | None = None,
                          given: Mapping[str, Any] | None = None) -> tuple[Preprocessing, str]:
    """The preprocessing and where it came from (``timm:test_vit's source, overridden: input_size``).

    ``given`` maps names of ``OVERRIDES`` to values (None: not given). An overridden
    ``input_size`` keeps the base's ``crop_pct`` (as timm's ``resolve_data_config`` does
    with an ``input_size`` argument) unless ``resize_size`` is given as well.
    """
    if mode not in PREPROCESS_MODES:
        raise ConfigError(f"unknown --preprocess {mode!r}", hint="choose source (the model's own eval transform) or plain (resize to the input size)")
    if file is not None:
        base, origin = load_preprocess_config(file), f"file {Path(file).name}"
    else:
        if mode == "auto":
            mode = "plain" if canonical_arch(arch) in list_archs() else "source"
        if mode == "source":
            base, origin = source_preprocessing(arch), f"{canonical_arch(arch)}'s source"
        else:
            base, origin = Preprocessing(input_size=get_arch(arch).default_input_size), "plain resize"
    values = {k: v for k, v in (given or {}).items() if v is not None}
    unknown = sorted(set(values) - set(OVERRIDES))
    if unknown:
        raise ValueError(f"not preprocessing settings: {unknown}")
    for key in ("mean", "std"):
        if key in values:
            values[key] = parse_floats(values[key], f"--{key}")
    if "input_size" in values and (isinstance(values["input_size"], bool) or not isinstance(values["input_size"], int)):
        raise ConfigError(f"input size {values['input_size']!r} is not an integer", hint="pass --input-size 224")
    changes = {OVERRIDES[k]: v for k, v in values.items()}
    if "input_size" in changes and "resize_size" not in changes and base.resize_size is not None:
        changes["resize_size"] = resize_size_for(int(changes["input_size"]), base.crop_pct)
    prep = replace(base, **changes)
    overridden = sorted(k for k in values if getattr(prep, OVERRIDES[k]) != getattr(base, OVERRIDES[k]))
    return prep, origin + (f", overridden: {', '.join(overridden)}" if overridden else "")


def _read(path: Path) -> Any:
    if path.suffix.lower() != ".json":
        return section(load_toml(path, "preprocessing file", hint="fix the TOML syntax"), "preprocess", path, "preprocessing file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"preprocessing file {path} does not exist", hint="pass --preprocess-config with a TOML or JSON file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"preprocessing file {path} cannot be read: {exc}", hint="write it as JSON") from None
    return data["preprocess"] if isinstance(data, dict) and isinstance(data.get("preprocess"), dict) else data


def load_preprocess_config(path: str | Path) -> Preprocessing:
    """The whole preprocessing from a TOML or JSON file: every step named, nothing guessed.

    Keys: ``input_size`` (an integer, or timm's ``[3, H, W]``), ``crop_mode`` (squash,
    center, border), ``resize_size`` or timm's ``crop_pct`` (not needed for squash),
    ``interpolation`` (bilinear, bicubic, ...), ``mean`` and ``std``; at the top level or
    under ``[preprocess]``. timm's ``resolve_data_config(model=...)`` dumped as JSON is
    such a file.
    """
    path = Path(path)
    data = _read(path)
    if not isinstance(data, dict):
        raise ConfigError(f"preprocessing file {path} holds no table of settings", hint=f"write the keys {', '.join(FILE_KEYS)}")
    unknown = sorted(set(data) - set(FILE_KEYS))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {path}", hint=f"known keys: {', '.join(FILE_KEYS)}")
    missing = [k for k in ("input_size", "crop_mode", "interpolation", "mean", "std") if k not in data]
    mode = data.get("crop_mode")
    if mode not in (None, "squash") and "resize_size" not in data and "crop_pct" not in data:
        missing.append("resize_size (or crop_pct)")
    if missing:
        raise ConfigError(f"preprocessing file {path} does not say {', '.join(missing)}; preprocessing is never guessed",
                          hint="give input_size, crop_mode, resize_size or crop_pct, interpolation, mean and std")
    size = data["input_size"]
    if isinstance(size, (list, tuple)):
        if len(size) != 3 or size[1] != size[2]:
            raise ConfigError(f"input_size {size!r} in {path} is not [3, N, N]", hint="sft-engine serves square inputs: input_size = 224")
        size = size[1]
    if isinstance(size, bool) or not isinstance(size, int):
        raise ConfigError(f"input_size {size!r} in {path} is not an integer", hint="e.g. input_size = 224")
    if "resize_size" in data and "crop_pct" in data:
        raise ConfigError(f"{path} gives both resize_size and crop_pct", hint="keep one of them")
    resize = resize_size_for(size, float(data["crop_pct"])) if "crop_pct" in data else data.get("resize_size")
    return Preprocessing(input_size=size, resize_size=resize, crop_mode=str(mode), resize=str(data["interpolation"]),
                         mean=parse_floats(data["mean"], "mean"), std=parse_floats(data["std"], "std"))  # type: ignore[arg-type]
