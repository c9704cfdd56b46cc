"""A client's settings, typed and checked once, shared by ``Client`` and ``AsyncClient``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from sft_engine.client.retry import RetryPolicy
from sft_engine.errors import ConfigError
from sft_engine.triton.address import PROTOCOLS, normalize_url

__all__ = ["ClientSettings"]


@dataclass(frozen=True)
class ClientSettings:
    """``version`` "" means "the latest version the server serves"."""

    url: str
    protocol: str
    model: str
    version: str
    timeout_s: float
    retry: RetryPolicy
    shared_memory: bool
    concurrency: int
    labels: tuple[str, ...] | None

    @classmethod
    def create(cls, url: str, *, protocol: str, model: str, version: int | str | None, timeout: float,
               retries: int | RetryPolicy | None, shared_memory: bool, concurrency: int, labels: Sequence[str] | None) -> "ClientSettings":
        if protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {protocol!r}", hint="use grpc or http (--protocol grpc|http; protocol='grpc' in Python)")
        if not isinstance(model, str) or not model:
            raise ConfigError(f"model name {model!r} is not valid", hint="pass model='NAME' as published by sft-engine build")
        if version is None or version == "":
            version_text = ""
        elif (isinstance(version, int) and not isinstance(version, bool) and version > 0) or (isinstance(version, str) and version.isdigit() and int(version) > 0):
            version_text = str(int(version))
        else:
            raise ConfigError(f"model version {version!r} is not valid", hint="pass a positive integer, or None for the latest")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
            raise ConfigError(f"timeout {timeout!r} is not valid", hint="pass seconds > 0, e.g. timeout=30")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= 256:
            raise ConfigError(f"concurrency {concurrency!r} is out of range", hint="pass 1..256 requests in flight")
        return cls(
            url=normalize_url(url, protocol), protocol=protocol, model=model, version=version_text, timeout_s=float(timeout),
            retry=RetryPolicy.of(retries), shared_memory=bool(shared_memory), concurrency=concurrency,
            labels=tuple(str(x) for x in labels) if labels is not None else None,
        )


class SettingsView:
    """What a client is pointed at, read from its ``settings`` (shared by Client and AsyncClient)."""

    settings: ClientSettings

    @property
    def url(self) -> str:
        return self.settings.url

    @property
    def protocol(self) -> str:
        return self.settings.protocol

    @property
    def model(self) -> str:
        return self.settings.model

    @property
    def version(self) -> str | None:
        """The version asked for; None = the latest."""
        return self.settings.version or None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, protocol={self.protocol!r}, model={self.model!r}, version={self.version!r})"
