"""Who may change a Triton server, and how its gRPC traffic is encrypted.

Triton's secure-deployment guidance: dynamic model control (explicit or poll mode)
lets a caller load arbitrary code (the Python backend runs the repository's
``model.py``), so the APIs that change or inspect the server - model repository,
shared memory, statistics, trace, logging - are restricted to requests carrying a
shared secret in one header (``--http-restricted-api`` / ``--grpc-restricted-protocol``).
Inference, health, metadata and model config stay open: every client reads the
preprocessing from the model's config.

This module holds what the server launcher, the control client, the client's
transports, the load test and the deployment writers share about it: the header
name, the admin key file (created with a random key, mode 0600), the key from a
file or ``SFT_ENGINE_ADMIN_KEY``, the server's flags, and the gRPC TLS settings of a
caller (``GrpcTls``: root certificates, and a client certificate for mutual TLS).
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from sft_engine.errors import ConfigError

__all__ = [
    "ADMIN_KEY_HEADER", "ADMIN_KEY_ENV", "GRPC_HEADER_PREFIX", "RESTRICTED_APIS", "admin_headers", "ensure_admin_key_file", "read_admin_key_file",
    "resolve_admin_key", "restricted_api_args", "redact", "GrpcTls", "ServerTls",
]

#: the header Triton checks on the restricted APIs (gRPC metadata keys must be lowercase)
ADMIN_KEY_HEADER = "sft-engine-admin-key"
#: Triton's gRPC endpoint looks for the restricted key under this prefix (``--grpc-restricted-protocol`` docs)
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
#: where the operations commands look for the key when no --admin-key-file is given
ADMIN_KEY_ENV = "SFT_ENGINE_ADMIN_KEY"
#: Triton's API groups that change or inspect the server; inference, health, metadata and model-config stay open
RESTRICTED_APIS = ("model-repository", "shared-memory", "statistics", "trace", "logging")
_MIN_KEY_CHARS = 16


def admin_headers(key: str | None, protocol: str = "http") -> dict[str, str]:
    """The header that opens the restricted APIs ({} without a key); gRPC's carries Triton's prefix."""
    if not key:
        return {}
    return {(GRPC_HEADER_PREFIX + ADMIN_KEY_HEADER) if protocol == "grpc" else ADMIN_KEY_HEADER: key}


def _check_key(key: str, where: str) -> str:
    key = key.strip()
    if len(key) < _MIN_KEY_CHARS or not all(c.isalnum() or c in "-_." for c in key):
        raise ConfigError(f"the admin key in {where} is not usable (at least {_MIN_KEY_CHARS} characters of A-Z a-z 0-9 - _ .)",
                          hint="delete the file and let sft-engine create a random one")
    return key


def read_admin_key_file(path: Path) -> str:
    """The key in ``path``; ConfigError when it is missing, unreadable, malformed, or readable by others."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the admin key file {path}: {exc.strerror or exc}",
                          hint="pass the file sft-engine serve created (--admin-key-file), or set " + ADMIN_KEY_ENV) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"the admin key file {path} is readable by other users", hint=f"chmod 600 {path}")
    return _check_key(text, str(path))


def ensure_admin_key_file(path: Path) -> tuple[str, bool]:
    """(key, created): read ``path``, or create it with a random key, mode 0600 from the first byte on."""
    path = Path(path)
    if path.exists():
        return read_admin_key_file(path), False
    key = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # created meanwhile by another process: use that one
        return read_admin_key_file(path), False
    except OSError as exc:
        raise ConfigError(f"cannot create the admin key file {path}: {exc.strerror or exc}", hint="choose a writable --admin-key-file") from None
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key, True


def resolve_admin_key(path: Path | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The key of ``--admin-key-file`` if given, else ``SFT_ENGINE_ADMIN_KEY``, else None."""
    if path is not None:
        return read_admin_key_file(Path(path))
    value = (os.environ if environ is None else environ).get(ADMIN_KEY_ENV, "").strip()
    return _check_key(value, ADMIN_KEY_ENV) if value else None


def restricted_api_args(key: str) -> list[str]:
    """tritonserver's flags restricting ``RESTRICTED_APIS`` to requests with the key, on both protocols."""
    group = ",".join(RESTRICTED_APIS)
    return [f"--http-restricted-api={group}:{ADMIN_KEY_HEADER}={key}",
            f"--grpc-restricted-protocol={group}:{ADMIN_KEY_HEADER}={key}"]


def redact(argv: list[str], key: str | None) -> list[str]:
    """``argv`` with the key replaced, for logs."""
    if not key:
        return list(argv)
    return [a.replace(key, "***") for a in argv]


@dataclass(frozen=True)
class ServerTls:
    """A server's gRPC TLS: its certificate and key (PEM files), and the CA its clients' certificates must chain to (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def validate(self) -> None:
        for flag, path in (("--tls-cert", self.cert), ("--tls-key", self.key), ("--tls-client-ca", self.client_ca)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{flag} {path} is not a file", hint="pass PEM files: the server certificate, its key, and the client CA")

    def args(self, cert: str | None = None, key: str | None = None, client_ca: str | None = None) -> list[str]:
        """tritonserver's gRPC SSL flags; the paths may be given as the server sees them (a container's mounts)."""
        out = [f"--grpc-server-cert={cert or Path(self.cert).resolve()}", f"--grpc-server-key={key or Path(self.key).resolve()}"]
        if self.client_ca is not None:
            out = ["--grpc-use-ssl-mutual=true"] + out + [f"--grpc-root-cert={client_ca or Path(self.client_ca).resolve()}"]
        else:
            out = ["--grpc-use-ssl=true"] + out
        return out


@dataclass(frozen=True)
class GrpcTls:
    """A caller's gRPC TLS: the CA to trust (None: the system's), and a certificate and key for mutual TLS."""

    root_certificates: Path | None = None
    certificate_chain: Path | None = None
    private_key: Path | None = None

    def validate(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ConfigError("a client certificate needs its key (and the key its certificate)",
                              hint="pass both --tls-client-cert and --tls-client-key, or neither")
        for path in (self.root_certificates, self.certificate_chain, self.private_key):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"TLS file {path} does not exist", hint="pass PEM files")

    def tritonclient_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``tritonclient.grpc(.aio).InferenceServerClient`` (file paths)."""
        return {"ssl": True, "root_certificates": _str(self.root_certificates), "private_key": _str(self.private_key),
                "certificate_chain": _str(self.certificate_chain)}

    def channel_credentials(self) -> Any:
        """``grpc.ssl_channel_credentials`` for a raw channel (the load test's hot path)."""
        import grpc

        return grpc.ssl_channel_credentials(root_certificates=_bytes(self.root_certificates), private_key=_bytes(self.private_key),
                                            certificate_chain=_bytes(self.certificate_chain))


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _bytes(path: Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()
