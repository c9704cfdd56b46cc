"""Scenario (SLO) files: the TOML users edit to say what load, what must hold, and how to search.

A scenario says *what load* to apply (``[load]``), *what must hold* (``[slo]``),
when a run is *not trustworthy* (``[validity]``), how to *search for capacity*
(``[capacity]``) and whether the run is a *soak* judged on growth (``[soak]``). It holds only what the file sets: ``LoadTestConfig.from_scenario``
lays flags (or a caller's overrides) on top, so the CLI and ``tune`` merge the same way.
Every value is checked here, with the file and key named, before any server is contacted.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from sft_engine.errors import ConfigError
from sft_engine.loadtest.spec import (
    CapacitySpec, LoadSpec, SloSpec, SoakSpec, ValiditySpec, parse_duration, parse_number, parse_number_list, parse_percentile_key,
)
from sft_engine.settings import check_keys, load_toml, table, typed

__all__ = ["Scenario", "load_scenario", "scenario_from_mapping", "parse_target"]


@dataclass
class Scenario:
    """A parsed scenario file: load overrides (only the keys it sets) and specs."""

    path: Path | None = None
    load: dict[str, Any] = field(default_factory=dict)
    slo: SloSpec | None = None
    validity: ValiditySpec = field(default_factory=ValiditySpec)
    capacity: CapacitySpec | None = None
    soak: SoakSpec | None = None
    model: str | None = None
    description: str = ""


#: ``[load]`` keys: LoadSpec's fields, with ``rate`` for the ``rates`` tuple (a TOML list or a number)
_LOAD_KEYS = ({f.name for f in fields(LoadSpec)} - {"rates"}) | {"rate"}
_VALIDITY_KEYS = {f.name for f in fields(ValiditySpec)}
_CAPACITY_KEYS = {f.name for f in fields(CapacitySpec)}
_SOAK_KEYS = {f.name for f in fields(SoakSpec)}
_TOP_KEYS = {"load", "slo", "validity", "capacity", "soak", "model", "description"}


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario (SLO) TOML file. Any problem is a ConfigError."""
    path = Path(path)
    data = load_toml(path, "SLO file", hint="fix the syntax; see loadtest/default.toml")
    return scenario_from_mapping(data, path)


def scenario_from_mapping(data: Mapping[str, Any], path: Path | None = None) -> Scenario:
    """Validate a scenario already parsed from TOML (or built in code)."""
    where = str(path) if path else "scenario"
    check_keys(data, _TOP_KEYS, where)
    scenario = Scenario(path=path)
    if "model" in data:
        scenario.model = typed(data["model"], str, f"{where}: model")
    scenario.description = str(data.get("description", ""))
    load = table(data, "load", where)
    check_keys(load, _LOAD_KEYS, f"{where} [load]")
    scenario.load = _parse_load_table(load, where)
    slo_table = table(data, "slo", where)
    if slo_table:
        scenario.slo = _parse_slo_table(slo_table, where)
    validity = table(data, "validity", where)
    check_keys(validity, _VALIDITY_KEYS, f"{where} [validity]")
    scenario.validity = _build(ValiditySpec, validity, f"{where} [validity]")
    scenario.validity.validate()
    capacity = table(data, "capacity", where)
    if capacity:
        check_keys(capacity, _CAPACITY_KEYS, f"{where} [capacity]")
        scenario.capacity = _build(CapacitySpec, capacity, f"{where} [capacity]")
        scenario.capacity.validate()
    soak = dict(table(data, "soak", where))
    if soak:
        check_keys(soak, _SOAK_KEYS, f"{where} [soak]")
        if "duration_s" in soak:  # "30m" as well as 1800
            soak["duration_s"] = parse_duration(soak["duration_s"], f"{where} [soak] duration_s")
        scenario.soak = _build(SoakSpec, soak, f"{where} [soak]")
        try:
            scenario.soak.validate()
        except ConfigError as exc:
            raise ConfigError(f"{where} [soak]: {exc.message}", hint=exc.hint) from None
    return scenario


def _parse_load_table(load: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "rate" in load:
        out["rates"] = parse_number_list(load["rate"], f"{where} [load] rate")
    if "concurrency" in load:
        out["concurrency"] = tuple(int(c) for c in parse_number_list(load["concurrency"], f"{where} [load] concurrency", integer=True))
    if "mode" in load:
        out["mode"] = typed(load["mode"], str, f"{where} [load] mode")
        if out["mode"] not in ("open", "closed"):
            raise ConfigError(f"{where} [load] mode {out['mode']!r} is unknown", hint="use 'open' (rate) or 'closed' (concurrency)")
    elif "rates" in out and "concurrency" in out:
        raise ConfigError(f"{where} [load] sets both rate and concurrency", hint="add mode = 'open' or 'closed' to say which applies")
    elif "rates" in out:
        out["mode"] = "open"
    elif "concurrency" in out:
        out["mode"] = "closed"
    plain = {key: value for key, value in load.items() if key not in ("rate", "concurrency", "mode")}
    out.update(_typed_fields(LoadSpec, plain, f"{where} [load]"))
    # validate now, on a LoadSpec built from defaults + this table, so errors name the file
    probe = replace(LoadSpec(), **out)
    probe = probe if "window_s" in out else probe.window_fitted()
    if probe.mode == "open" and not probe.rates:
        raise ConfigError(f"{where} [load] mode is 'open' but no rate is set", hint="add rate = 100")
    try:
        probe.validate()
    except ConfigError as exc:
        raise ConfigError(f"{where} [load]: {exc.message}", hint=exc.hint) from None
    return out


def _parse_slo_table(entries: Mapping[str, Any], where: str) -> SloSpec:
    slo = SloSpec()
    for key, value in entries.items():
        q = parse_percentile_key(key)
        if q is not None:
            slo.latency_ms[q] = float(typed(value, (int, float), f"{where} [slo] {key}"))
        elif key in ("min_throughput", "max_error_rate", "stability_tolerance"):
            setattr(slo, key, float(typed(value, (int, float), f"{where} [slo] {key}")))
        elif key == "require_stable":
            slo.require_stable = typed(value, bool, f"{where} [slo] {key}")
        else:
            raise ConfigError(
                f"{where} [slo] has an unknown key {key!r}",
                hint="use p<N>_ms (p50_ms, p99_ms, p99_9_ms), min_throughput, max_error_rate, require_stable, stability_tolerance",
            )
    try:
        slo.validate()
    except ConfigError as exc:
        raise ConfigError(f"{where} [slo]: {exc.message}", hint=exc.hint) from None
    return slo


def parse_target(text: str, slo: SloSpec | None = None) -> SloSpec:
    """One ``--target KEY=VALUE`` (e.g. ``p99_ms=50``) applied to a copy of ``slo``."""
    if "=" not in text:
        raise ConfigError(f"--target {text!r} is not KEY=VALUE", hint="e.g. --target p99_ms=50 or --target max_error_rate=0.001")
    key, value = (s.strip() for s in text.split("=", 1))
    base = replace(slo, latency_ms=dict(slo.latency_ms)) if slo else SloSpec()
    if key == "require_stable":
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"--target {text!r}: require_stable takes true or false", hint="e.g. --target require_stable=false")
        base.require_stable = value.lower() in ("true", "1", "yes")
        return base
    number = parse_number(value, f"--target {key}")
    q = parse_percentile_key(key)
    if q is not None:
        base.latency_ms[q] = number
    elif key in ("min_throughput", "max_error_rate", "stability_tolerance"):
        setattr(base, key, number)
    else:
        raise ConfigError(f"--target {key!r} is unknown", hint="use p<N>_ms, min_throughput, max_error_rate, require_stable")
    return base


def _typed_fields(cls: type, entries: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The table's values checked against the types of ``cls``'s defaults (None: a number).

    Deriving the types from the dataclass keeps a new spec field readable from TOML
    without a second list to update.
    """
    kwargs = {}
    defaults = cls()
    for key, value in entries.items():
        expected = type(getattr(defaults, key))
        if expected in (float, type(None)):
            kwargs[key] = float(typed(value, (int, float), f"{where} {key}"))
        else:
            kwargs[key] = typed(value, expected, f"{where} {key}")
    return kwargs


def _build(cls: type, entries: Mapping[str, Any], where: str) -> Any:
    return cls(**_typed_fields(cls, entries, where))
