"""A client's settings, typed and checked once, shared by ``Client`` and ``AsyncClient``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, TypeVar

from sft_engine.client.retry import RetryPolicy
from sft_engine.errors import ConfigError
from sft_engine.triton.address import PROTOCOLS, normalize_url
from sft_engine.triton.security import GrpcTls

__all__ = ["ClientSettings", "SettingsView", "check_transport"]

T = TypeVar("T")


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
    #: gRPC over TLS (None: plaintext)
    tls: GrpcTls | None = None
    #: the server's admin key, for the restricted calls a client makes (shared memory, the repository index)
    admin_key: str | None = field(default=None, repr=False)

    @classmethod
    def create(cls, url: str, *, protocol: str, model: str, version: int | str | None, timeout: float,
               retries: int | RetryPolicy | None, shared_memory: bool, concurrency: int, labels: Sequence[str] | None,
               ssl: bool | GrpcTls = False, root_certificates: str | Path | None = None, private_key: str | Path | None = None,
               certificate_chain: str | Path | None = None, admin_key: str | None = None) -> "ClientSettings":
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
            tls=tls_of(protocol, ssl, root_certificates, private_key, certificate_chain), admin_key=admin_key or None,
        )


def tls_of(protocol: str, ssl: bool | GrpcTls, root_certificates: str | Path | None, private_key: str | Path | None,
           certificate_chain: str | Path | None) -> GrpcTls | None:
    """tritonclient's ``ssl`` / ``root_certificates`` / ``private_key`` / ``certificate_chain`` → one checked ``GrpcTls``.

    Any certificate argument implies ``ssl``; Triton serves TLS on gRPC only, so HTTP with
    TLS is refused rather than silently sent in clear.
    """
    paths = (root_certificates, private_key, certificate_chain)
    if isinstance(ssl, GrpcTls):
        if any(p is not None for p in paths):
            raise ConfigError("ssl=GrpcTls(...) already names the certificates", hint="pass either ssl=GrpcTls(...) or the certificate arguments")
        tls: GrpcTls | None = ssl
    elif ssl or any(p is not None for p in paths):
        as_path = lambda p: None if p is None else Path(p)  # noqa: E731
        tls = GrpcTls(root_certificates=as_path(root_certificates), certificate_chain=as_path(certificate_chain),
                      private_key=as_path(private_key))
    else:
        return None
    if protocol != "grpc":
        raise ConfigError("TLS is served on gRPC only", hint="use protocol='grpc' with ssl=True, or drop the certificates")
    tls.validate()
    return tls


def check_transport(transport: Any, kind: type[T], client: str) -> T | None:
    """A ``transport=`` argument, checked: None, or an instance of ``kind`` (a sync one for Client, ...)."""
    if transport is None or isinstance(transport, kind):
        return transport
    raise ConfigError(f"transport={type(transport).__name__} is not an instance of {kind.__name__}",
                      hint=f"pass an instance of sft_engine.client.{kind.__name__} to {client}, or leave transport out")


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
