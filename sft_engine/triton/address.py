"""Where a Triton server is: ``host:port`` parsing, default ports, the loopback check.

One parser for every part that takes a server address (the client, the load test,
the operations commands), so ``grpc://[::1]:8001``, ``localhost`` and ``127.0.0.1:8000``
mean the same everywhere and a malformed address fails with the same one-line message.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

from sft_engine.errors import ConfigError

__all__ = [
    "PROTOCOLS", "DEFAULT_PORTS", "DEFAULT_METRICS_PORT", "Protocol", "Address", "parse_address", "normalize_url", "is_loopback",
    "parse_local_address", "parse_metrics_url",
]

Protocol = Literal["grpc", "http"]
PROTOCOLS: tuple[str, ...] = ("grpc", "http")
#: Triton's default ports
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
#: Triton's default metrics port, next to the default HTTP/gRPC ports
DEFAULT_METRICS_PORT = 8002
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$")
_BRACKETED = re.compile(r"^\[([0-9a-fA-F:.]+)\](?::(\d*))?$")
_PLAIN = re.compile(r"^([^:\[\]]+)(?::(\d*))?$")


@dataclass(frozen=True)
class Address:
    """One server endpoint: ``host`` without brackets, the port, the protocol spoken there."""

    host: str
    port: int
    protocol: Protocol

    @property
    def url(self) -> str:
        """``host:port`` as tritonclient expects it (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """Literal loopback addresses and ``localhost`` only; names are never resolved.

    Resolving would make the check depend on DNS, and a name that resolves to
    loopback today may not tomorrow.
    """
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_address(text: str, protocol: str | None = None, *, what: str = "server URL") -> Address:
    """``host[:port]``, ``grpc://host:port`` or ``http://host:port`` -> Address.

    A scheme fixes the protocol; without one, ``protocol`` (default gRPC) applies, and
    a port left out is that protocol's default. ``what`` names the value in messages
    (``--url`` for a command-line flag).
    """
    if protocol is not None and protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}", hint="use protocol 'grpc' or 'http'")
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{what} {text!r} is empty", hint="give host:port, e.g. 127.0.0.1:8001")
    raw = text.strip()
    scheme = None
    match = _SCHEME.match(raw)
    if match:
        scheme, raw = match.group(1).lower(), match.group(2)
        if scheme in ("https", "grpcs"):
            raise ConfigError(f"{what} {text!r}: TLS endpoints are not supported", hint="use a plain http:// or grpc:// endpoint")
        if scheme not in PROTOCOLS:
            raise ConfigError(f"{what} {text!r}: unknown scheme {scheme!r}", hint="use http://host:port or grpc://host:port")
        if protocol is not None and protocol != scheme:
            raise ConfigError(f"{what} {text!r} says {scheme} but the protocol is {protocol}", hint="drop the scheme or make them agree")
    proto: Protocol = (scheme or protocol or "grpc")  # type: ignore[assignment]
    raw = raw.rstrip("/")
    if "/" in raw:
        raise ConfigError(f"{what} {text!r} has a path", hint="give only host:port")
    if raw.count(":") > 1 and not raw.startswith("["):
        raise ConfigError(f"{what} {text!r} is ambiguous", hint="write IPv6 addresses in brackets: [::1]:8001")
    host_port = _BRACKETED.match(raw) or _PLAIN.match(raw)
    if not host_port or host_port.group(2) == "":
        raise ConfigError(f"{what} {text!r} is not host:port", hint="e.g. 127.0.0.1:8001 or [::1]:8001")
    port = int(host_port.group(2)) if host_port.group(2) else DEFAULT_PORTS[proto]
    if not 1 <= port <= 65535:
        raise ConfigError(f"{what} {text!r}: port {port} is not a TCP port", hint="use 1..65535")
    return Address(host=host_port.group(1), port=port, protocol=proto)


def normalize_url(url: str, protocol: str) -> str:
    """``host:port`` as tritonclient wants it: no scheme, the protocol's default port when none is given."""
    return parse_address(url, protocol).url


def parse_local_address(text: str, protocol: str | None = None, *, allow_remote: bool = False, what: str = "--url") -> Address:
    """``parse_address``, then refuse a host that is not loopback unless ``allow_remote``.

    A command that changes or loads a server (rollout, tune, the load test) must not
    reach another machine because of a typo: a remote server is named on purpose.
    """
    address = parse_address(text, protocol, what=what)
    _refuse_remote(address, text, allow_remote, what)
    return address


def _refuse_remote(address: Address, text: str, allow_remote: bool, what: str) -> None:
    if not allow_remote and not address.is_loopback:
        raise ConfigError(f"{what} {text!r} is not a loopback address",
                          hint="pass --allow-remote to reach a server on another machine on purpose")


def parse_metrics_url(url: str, *, allow_remote: bool = False, what: str = "--metrics-url") -> str:
    """A Prometheus ``/metrics`` URL: ``http://host[:port][/path]``, its host checked as ``parse_local_address`` checks one.

    The URL is returned as given (its path is the server's business); the port left
    out is HTTP's own (80), as a browser would read it.
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip()) if isinstance(url, str) else None
        port = parts.port if parts else None
    except ValueError:  # a port that is not a number, or out of range
        parts, port = None, None
    if parts is None or parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"{what} {url!r} is not an http:// URL", hint="e.g. http://127.0.0.1:8002/metrics")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    _refuse_remote(parse_address(f"{host}:{port or 80}", "http", what=what), url, allow_remote, what)
    return url.strip()
